//! The simulated village: per gateway a DL/T 645 line on loopback TCP (and one Modbus TCP
//! meter), a switchable uplink relay to the broker, and the real agent code running
//! in-process on the demo's clock.

use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::modbus::SDM120;
use qingnuan_tests::fleet::{Fleet, SimHousehold};
use qingnuan_tests::modbus_sim::{ModbusSim, ModbusTcpSim};
use qingnuan_tests::village::meters::{self, MeterBoard, MeterLine, MeterModel};
use qingnuan_tests::village::skew::Skews;
use qingnuan_tests::village::uplink::Uplink;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use super::DemoError;

/// Simulated seconds between sweeps (around the clock, and at every boundary).
pub const INTERVAL_S: u64 = 600;
/// Half-width of the meters' quiet margin around each boundary, simulated seconds: more
/// than [`INTERVAL_S`], so a read on each side of a boundary shows the boundary's value
/// even when the accelerated clock makes a read land minutes "late" (a debug build reads a
/// meter in about 12 ms, 45 simulated seconds at 3600×, so the eighth meter of a line is
/// read some 400 s after the boundary; the margin leaves room for a loaded machine).
pub const QUIET_S: i64 = 1800;
/// Modbus unit id of the village's Modbus meter.
const MODBUS_UNIT: u8 = 1;
/// How often the Modbus meter's registers follow the model, real time.
const MODBUS_REFRESH: Duration = Duration::from_millis(5);
/// How long an agent gets to flush and say goodbye on shutdown, real time.
const AGENT_STOP: Duration = Duration::from_secs(10);

/// One gateway: its meters' line(s), its uplink and its agent task.
struct Gateway {
    id: String,
    _line: MeterLine,
    _modbus: Option<ModbusTcpSim>,
    uplink: Uplink,
    agent: JoinHandle<()>,
}

/// The running village; [`Village::stop`] ends it (dropping it aborts the tasks).
pub struct Village {
    /// The fleet (truth).
    pub fleet: Arc<Fleet>,
    /// Faults of the DL/T 645 meters.
    pub board: Arc<MeterBoard>,
    /// The household whose meter speaks Modbus (SDM120) instead of DL/T 645.
    pub modbus_household: Option<String>,
    gateways: Vec<Gateway>,
    stop: watch::Sender<bool>,
    modbus_task: Option<JoinHandle<()>>,
}

impl Village {
    /// Starts the meter lines, uplinks to `broker_port` and one agent per gateway, with
    /// spools under `dir/{gw}/spool`.
    pub async fn start(
        fleet: Arc<Fleet>,
        clock: SharedClock,
        broker_port: u16,
        dir: &std::path::Path,
    ) -> Result<Self, DemoError> {
        let model = Arc::new(MeterModel {
            fleet: fleet.clone(),
            quiet_s: QUIET_S,
        });
        let board = Arc::new(MeterBoard::default());
        let (stop, stopped) = watch::channel(false);
        let ids = gateway_ids(&fleet);
        // The last household of the last gateway gets the Modbus meter.
        let modbus_hh: Option<SimHousehold> = ids
            .last()
            .and_then(|gw| fleet.on_gateway(gw).last().cloned());
        let modbus = ModbusSim::new();
        // One process, one clock: agents and meters agree exactly, every skew stays 0.
        let skews = Skews::new(&ids);
        let mut gateways = Vec::new();
        for (i, gw) in ids.iter().enumerate() {
            let line = meters::serve_line(
                model.clone(),
                board.clone(),
                clock.clone(),
                skews.clone(),
                i,
                gw,
            )
            .await
            .map_err(sim)?;
            let dlt: Vec<&str> = line
                .meters
                .iter()
                .map(String::as_str)
                .filter(|m| modbus_hh.as_ref().is_none_or(|h| h.meter != *m))
                .collect();
            let mut buses = dlt645_bus(&format!("127.0.0.1:{}", line.port), &dlt);
            let mut modbus_served = None;
            if let Some(h) = modbus_hh.as_ref().filter(|h| &h.gateway == gw) {
                let served = modbus.serve_tcp().await.map_err(sim)?;
                buses.push_str(&modbus_bus(&served.address(), &h.meter));
                modbus_served = Some(served);
            }
            let uplink = Uplink::start(broker_port).await.map_err(sim)?;
            let spool = dir.join(gw).join("spool");
            let config = agent_config(gw, &uplink.url(), &spool, &buses)?;
            let (clock, rx) = (clock.clone(), stopped.clone());
            let name = gw.clone();
            let agent = tokio::spawn(async move {
                if let Err(e) = qingnuan_agent::run(config, clock, rx).await {
                    warn!(gateway = %name, error = %e, "demo agent stopped");
                }
            });
            gateways.push(Gateway {
                id: gw.clone(),
                _line: line,
                _modbus: modbus_served,
                uplink,
                agent,
            });
        }
        let modbus_task = modbus_hh.as_ref().map(|h| {
            let (h, model, clock) = (h.clone(), model.clone(), clock.clone());
            tokio::spawn(async move {
                loop {
                    let t = clock.now();
                    let shown = model.shown_instant(t);
                    modbus.set_meter(
                        MODBUS_UNIT,
                        &SDM120,
                        model.register_wh(&h, t),
                        h.power_w(shown),
                    );
                    tokio::time::sleep(MODBUS_REFRESH).await;
                }
            })
        });
        Ok(Self {
            fleet,
            board,
            modbus_household: modbus_hh.map(|h| h.id),
            gateways,
            stop,
            modbus_task,
        })
    }

    /// Gateway ids, in order.
    pub fn gateway_ids(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.id.clone()).collect()
    }

    /// Cuts (`true`) or restores gateway `gw`'s uplink; the agent keeps reading and spools.
    pub fn set_uplink_cut(&self, gw: &str, cut: bool) {
        if let Some(g) = self.gateways.iter().find(|g| g.id == gw) {
            if cut {
                g.uplink.cut();
            } else {
                g.uplink.restore();
            }
        }
    }

    /// Restores every uplink, asks every agent to stop (each flushes what its uplink can
    /// take and publishes its offline status), waits for them, then stops the meters.
    pub async fn stop(self) {
        for g in &self.gateways {
            g.uplink.restore();
        }
        let _ = self.stop.send(true);
        for g in self.gateways {
            let abort = g.agent.abort_handle();
            if tokio::time::timeout(AGENT_STOP, g.agent).await.is_err() {
                warn!(gateway = %g.id, "agent did not stop in time; aborted");
                abort.abort();
            }
        }
        if let Some(t) = self.modbus_task {
            t.abort();
        }
    }
}

/// The fleet's gateway ids, in order of first appearance.
pub fn gateway_ids(fleet: &Fleet) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for h in &fleet.households {
        if !ids.contains(&h.gateway) {
            ids.push(h.gateway.clone());
        }
    }
    ids
}

/// The agent configuration of one demo gateway, parsed as the agent would parse its file.
/// The reconnect backoff is real time: capped at 1 s, or a restored uplink would stay
/// unused for simulated hours.
fn agent_config(
    gw: &str,
    url: &str,
    spool: &std::path::Path,
    buses: &str,
) -> Result<qingnuan_agent::config::Config, DemoError> {
    let text = format!(
        "gateway_id = {gw}\n\n[mqtt]\nurl = {url}\npublish_delay_max_s = 30\nreconnect_max_s = 1\nkeep_alive_s = 5\n\n\
         [schedule]\ninterval_s = {INTERVAL_S}\nheartbeat_s = 3600\nalways = true\n\n\
         [spool]\ndir = {dir}\nmax_bytes = {max}\n\n{buses}",
        gw = quote(gw),
        url = quote(url),
        dir = quote(&spool.display().to_string()),
        max = 16u64 << 20,
    );
    qingnuan_agent::config::Config::from_toml_str(&text)
        .map_err(|e| DemoError::Agent(format!("{gw}: {e}")))
}

/// A DL/T 645 TCP `[[bus]]`: short timeouts, because one real millisecond is seconds of
/// simulated time and a silent meter must not hold the line for simulated hours.
fn dlt645_bus(address: &str, meters: &[&str]) -> String {
    let list: Vec<String> = meters.iter().map(|m| quote(m)).collect();
    format!(
        "[[bus]]\nkind = \"dlt645-tcp\"\naddress = {}\ntimeout_ms = 250\ngap_ms = 100\npause_ms = 0\nretries = 1\nmeters = [{}]\n\n",
        quote(address),
        list.join(", ")
    )
}

/// A Modbus TCP `[[bus]]` with one SDM120 whose id is the registry's meter id.
fn modbus_bus(address: &str, meter: &str) -> String {
    format!(
        "[[bus]]\nkind = \"modbus-tcp\"\naddress = {}\ntimeout_ms = 250\ngap_ms = 100\npause_ms = 0\nretries = 1\nmeters = [{}]\n\n",
        quote(address),
        quote(&format!("{MODBUS_UNIT}:sdm120:{meter}"))
    )
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn sim(e: anyhow::Error) -> DemoError {
    DemoError::Sim(format!("{e:#}"))
}
