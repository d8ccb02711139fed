//! A whole village under one accelerated clock: the fleet's meters on TCP lines, real
//! Mosquitto, one real `qingnuan-agent` per gateway (each behind a switchable uplink),
//! one real `qingnuan-server`, and a persistent MQTT capture of every readings batch
//! the agents published — with the knobs to break each of them.
//!
//! # Layout
//! - [`meters`]: the fleet's registers at the simulated instant, served as DL/T 645 over
//!   TCP; silent meters and meter clocks off.
//! - [`uplink`]: a TCP relay per gateway that can be cut.
//! - [`server_proc`]: the server binary, its config, start / SIGKILL / HTTP GET.
//!
//! Every process gets `QINGNUAN_CLOCK=start=<village now>,speed=<n>` when it is
//! (re)started, so all clocks agree to within process start-up time (which the
//! meters' quiet margin absorbs, see [`meters::MeterModel`], and [`skew`] learns).
//! With [`VillageSpec::warp`] every process gets the same warped clock instead
//! ([`WarpedClock`]: slow around boundaries, still at them, racing elsewhere), anchored
//! at one wall-clock epoch, so all clocks agree exactly and nothing needs learning.

pub mod meters;
pub mod server_proc;
pub mod skew;
pub mod uplink;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::{Clock, ScaledClock, SharedClock, SystemClock, WarpedClock};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::wire::ReadingsBatch;
use qingnuan_shared::UnixTime;

use crate::agent_proc::{AgentConfig, AgentProcess, Collector};
use crate::broker::{free_port, Broker};
use crate::fleet::{Fleet, FleetSpec};
use meters::{MeterBoard, MeterLine, MeterModel};
use server_proc::ServerProcess;
use skew::Skews;
use uplink::Uplink;

/// What village to build.
#[derive(Debug, Clone)]
pub struct VillageSpec {
    /// Seed of the fleet.
    pub seed: u64,
    /// Households (one meter each).
    pub households: usize,
    /// Gateways (households dealt round-robin).
    pub gateways: usize,
    /// Simulated instant at which the village starts, UTC Unix seconds.
    pub start: UnixTime,
    /// Days the fleet model covers from the local midnight before `start`.
    pub days: i64,
    /// Simulated seconds per real second.
    pub speed: u32,
    /// Agents read every meter every `interval_s` around the clock (and at each boundary).
    pub interval_s: u64,
    /// Half-width of the meters' quiet margin around boundaries, simulated seconds.
    pub quiet_s: i64,
    /// Meters per DL/T 645 TCP bus of a gateway (buses are read in parallel; a sweep of
    /// one long bus takes longer than the 120 s an `actual` boundary allows at a
    /// speed-up of thousands).
    pub meters_per_bus: usize,
    /// Reply timeout of each meter read, real ms (the agent waits in real time: at a
    /// speed-up of 3600 the usual 1500 ms would be 90 simulated minutes per dead meter).
    pub timeout_ms: u64,
    /// First day of every meter's validity in the registry (`YYYY-MM-DD`, local).
    pub registry_from: String,
    /// Simulated seconds between the agents' heartbeats.
    pub heartbeat_s: u64,
    /// A warped clock (`speed` is then its slow factor) instead of a scaled one.
    pub warp: Option<Warp>,
}

/// The warped clock of a village: `speed`× within `slow_within_s` of every boundary,
/// still for `hold_ms` at each, `fast`× elsewhere (see [`WarpedClock`]).
#[derive(Debug, Clone, Copy)]
pub struct Warp {
    /// Speed-up away from boundaries.
    pub fast: u32,
    /// Half-width of the slow stretch around each boundary, simulated seconds.
    pub slow_within_s: i64,
    /// Real ms the clock stands still at each boundary.
    pub hold_ms: u64,
    /// Real ms from building the village to the epoch at which its clock starts from
    /// `start` (the processes start meanwhile; before the epoch every clock reads `start`).
    pub lead_ms: u64,
}

/// The village clock and how processes get the same one.
#[derive(Debug, Clone)]
enum VillageClock {
    /// Scaled from each process's own start (`start=<now>,speed=<n>`).
    Scaled(Arc<ScaledClock>),
    /// One warped mapping for everybody, with its `QINGNUAN_CLOCK` value.
    Warped(Arc<WarpedClock>, String),
}

/// The running village; every process and server is stopped on drop.
pub struct Village {
    /// The fleet model (truth).
    pub fleet: Arc<Fleet>,
    /// What the meters show.
    pub model: Arc<MeterModel>,
    /// Faults and the log of what each meter gave.
    pub board: Arc<MeterBoard>,
    /// Every message on `qn/v1/gw/+/readings`, from a persistent session.
    pub capture: Collector,
    /// The broker.
    pub broker: Broker,
    /// The server.
    pub server: ServerProcess,
    /// Gateway ids, in order.
    pub gateways: Vec<String>,
    clock: VillageClock,
    lines: Vec<MeterLine>,
    uplinks: Vec<Uplink>,
    agents: Vec<Option<AgentProcess>>,
    agent_configs: Vec<PathBuf>,
    skews: Skews,
    skew_task: Option<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Village {
    /// Builds the fleet, starts the broker, meter lines, uplinks, the server (after
    /// importing the registry) and one agent per gateway, at `spec.start`.
    pub async fn start(spec: &VillageSpec) -> anyhow::Result<Self> {
        // Build both binaries before the clock starts: a cold build takes minutes.
        let _ = crate::agent_proc::agent_bin()?;
        let _ = server_proc::server_bin()?;
        let cal = Calendar::new(Policy::beijing_2018());
        let epoch = cal.local_midnight(cal.local_date(spec.start));
        let fleet = Arc::new(Fleet::new(
            &FleetSpec {
                seed: spec.seed,
                households: spec.households,
                gateways: spec.gateways,
                epoch,
                days: spec.days,
            },
            cal,
        ));
        let model = Arc::new(MeterModel {
            fleet: fleet.clone(),
            quiet_s: spec.quiet_s,
        });
        let board = Arc::new(MeterBoard::default());
        // A warped clock races through fsyncs: keep spools and store off a busy disk.
        let shm = std::path::Path::new("/dev/shm");
        let dir = match spec.warp {
            Some(_) if shm.is_dir() => tempfile::tempdir_in(shm)?,
            _ => tempfile::tempdir()?,
        };
        let broker = Broker::start()?;
        let capture = Collector::start_persistent(&broker.url(), "qn/v1/gw/+/readings").await?;
        let csv = dir.path().join("registry.csv");
        std::fs::write(&csv, fleet.registry_csv(&spec.registry_from))?;
        let (clock, epoch_ms) = match spec.warp {
            None => (
                VillageClock::Scaled(Arc::new(ScaledClock::new(
                    spec.start.saturating_mul(1000),
                    spec.speed,
                ))),
                None,
            ),
            Some(w) => {
                let epoch = SystemClock
                    .now_ms()
                    .saturating_add(i64::try_from(w.lead_ms).unwrap_or(i64::MAX));
                let text = format!(
                    "start={},speed={},fast={},slow_within={},hold_ms={},epoch={epoch}",
                    spec.start, spec.speed, w.fast, w.slow_within_s, w.hold_ms
                );
                let c = WarpedClock::parse(&text).map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
                (VillageClock::Warped(Arc::new(c), text), Some(epoch))
            }
        };
        let shared: SharedClock = clock.shared();
        let mut server = ServerProcess::configure(dir.path(), &broker.url(), free_port()?)?;
        server.import_registry(&csv, &clock.spec())?;
        server.start(&clock.spec()).await?;
        let gateways: Vec<String> = (1..=spec.gateways).map(|g| format!("gw-{g:04}")).collect();
        let skews = Skews::new(&gateways);
        // A warped clock is the same in every process: there is no offset to learn.
        let skew_task = match &clock {
            VillageClock::Scaled(_) => Some(skews.follow(broker.port(), shared.clone()).await?),
            VillageClock::Warped(..) => None,
        };
        let mut v = Self {
            fleet,
            model,
            board,
            capture,
            broker,
            server,
            gateways: gateways.clone(),
            clock,
            lines: Vec::new(),
            uplinks: Vec::new(),
            agents: Vec::new(),
            agent_configs: Vec::new(),
            skews,
            skew_task,
            dir,
        };
        for (i, gw) in gateways.iter().enumerate() {
            let line = meters::serve_line(
                v.model.clone(),
                v.board.clone(),
                shared.clone(),
                v.skews.clone(),
                i,
                gw,
            )
            .await?;
            let up = Uplink::start(v.broker.port()).await?;
            let gdir = v.dir.path().join(gw);
            std::fs::create_dir_all(&gdir)?;
            let refs: Vec<&str> = line.meters.iter().map(String::as_str).collect();
            let bus: String = refs
                .chunks(spec.meters_per_bus.max(1))
                .map(|c| bus_table(line.port, c, spec.timeout_ms))
                .collect::<Vec<_>>()
                .join("\n");
            let mut cfg = AgentConfig::new(gw, &up.url(), &gdir.join("spool"), &bus);
            cfg.interval_s = spec.interval_s;
            cfg.heartbeat_s = spec.heartbeat_s;
            cfg.always = true;
            cfg.max_bytes = 16 << 20;
            v.agent_configs.push(cfg.write(&gdir)?);
            v.lines.push(line);
            v.uplinks.push(up);
            v.agents.push(None);
        }
        for i in 0..gateways.len() {
            v.start_agent(i)?;
        }
        if let Some(epoch) = epoch_ms {
            let late = SystemClock.now_ms() - epoch;
            anyhow::ensure!(
                late <= 0,
                "the village took {late} ms longer to start than its clock's lead: raise lead_ms"
            );
        }
        Ok(v)
    }

    /// The village's simulated now, UTC Unix seconds.
    pub fn now(&self) -> UnixTime {
        self.clock.shared().now()
    }

    /// The `QINGNUAN_CLOCK` value for a process started now: `start=<now>,speed=<n>`,
    /// or the village's one warped clock.
    pub fn clock_spec(&self) -> String {
        self.clock.spec()
    }

    /// Sleeps (really) until the simulated instant `t`.
    pub async fn sleep_until(&self, t: UnixTime) {
        tokio::time::sleep(self.clock.shared().real_until(t.saturating_mul(1000))).await;
    }

    /// Real time that `sim_s` simulated seconds take from now.
    pub fn real_for(&self, sim_s: u64) -> Duration {
        self.clock.shared().real_for(Duration::from_secs(sim_s))
    }

    /// The simulated instant `real` of real time after the clock read `t` (seconds).
    pub fn sim_after_real(&self, t: UnixTime, real: Duration) -> UnixTime {
        let real_ns = i128::try_from(real.as_nanos()).unwrap_or(i128::MAX / 4);
        match &self.clock {
            VillageClock::Scaled(c) => {
                let sim_ms = real_ns * i128::from(c.speed()) / 1_000_000;
                t.saturating_add(i64::try_from(sim_ms / 1000).unwrap_or(i64::MAX))
            }
            VillageClock::Warped(c, _) => {
                let at = c.real_ns_at(t.saturating_mul(1000));
                c.sim_ms_at(at.saturating_add(real_ns)).div_euclid(1000)
            }
        }
    }

    /// The village clock minus gateway `i`'s agent clock, simulated seconds.
    pub fn agent_offset(&self, i: usize) -> i64 {
        self.skews.offset(i)
    }

    /// The test's temporary directory (configs, logs, spools, store).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts (or restarts) the agent of gateway `i` on its spool.
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let cfg = self
            .agent_configs
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("no gateway {i}"))?;
        self.skews.reset(i);
        let p = AgentProcess::start(cfg, Some(&self.clock_spec()))?;
        if let Some(slot) = self.agents.get_mut(i) {
            *slot = Some(p);
        }
        Ok(())
    }

    /// SIGKILL of gateway `i`'s agent (a power cut).
    pub fn kill9_agent(&mut self, i: usize) {
        if let Some(Some(mut a)) = self.agents.get_mut(i).map(Option::take) {
            a.kill9();
        }
    }

    /// SIGTERM of every agent (they flush their spools while the uplinks are up).
    pub fn stop_agents(&mut self) {
        for a in self
            .agents
            .iter_mut()
            .filter_map(Option::take)
            .collect::<Vec<_>>()
            .iter_mut()
        {
            a.terminate();
        }
    }

    /// The log of gateway `i`'s agent (all its runs).
    pub fn agent_log(&self, i: usize) -> String {
        self.agent_configs
            .get(i)
            .and_then(|c| std::fs::read_to_string(c.with_extension("log")).ok())
            .unwrap_or_default()
    }

    /// Cuts gateway `i`'s uplink (the agent keeps reading into its spool).
    pub fn cut_uplink(&self, i: usize) {
        if let Some(u) = self.uplinks.get(i) {
            u.cut();
        }
    }

    /// Restores gateway `i`'s uplink.
    pub fn restore_uplink(&self, i: usize) {
        if let Some(u) = self.uplinks.get(i) {
            u.restore();
        }
    }

    /// SIGKILL of the server.
    pub fn kill9_server(&mut self) {
        self.server.kill9();
    }

    /// Starts the server again on its store, with the village clock.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let spec = self.clock_spec();
        self.server.start(&spec).await
    }

    /// `GET path` on the server, parsed as JSON: (status, value).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, body) = self.server.get(path).await?;
        let v = serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("{path}: {e}: {body}"))?;
        Ok((status, v))
    }

    /// The readings batches captured so far (with any duplicates), in arrival order.
    pub fn published(&self) -> Vec<ReadingsBatch> {
        self.capture.batches()
    }

    /// Waits until no new batch has been captured for `quiet` of real time (at most `max`).
    pub async fn settle(&self, quiet: Duration, max: Duration) {
        let end = tokio::time::Instant::now() + max;
        let mut last = self.capture.all().len();
        loop {
            tokio::time::sleep(quiet).await;
            let n = self.capture.all().len();
            if n == last || tokio::time::Instant::now() > end {
                return;
            }
            last = n;
        }
    }
}

impl VillageClock {
    fn shared(&self) -> SharedClock {
        match self {
            VillageClock::Scaled(c) => c.clone(),
            VillageClock::Warped(c, _) => c.clone(),
        }
    }

    /// `QINGNUAN_CLOCK` for a process started now.
    fn spec(&self) -> String {
        match self {
            VillageClock::Scaled(c) => format!("start={},speed={}", c.now(), c.speed()),
            VillageClock::Warped(_, text) => text.clone(),
        }
    }
}

impl Drop for Village {
    fn drop(&mut self) {
        if let Some(t) = &self.skew_task {
            t.abort();
        }
    }
}

/// A `[[bus]]` table: DL/T 645 over TCP to the line on `port`, one retry, no pause.
fn bus_table(port: u16, meters: &[&str], timeout_ms: u64) -> String {
    let list: Vec<String> = meters.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[bus]]\nkind = \"dlt645-tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout_ms = {timeout_ms}\n\
         gap_ms = 200\npause_ms = 0\nretries = 1\nmeters = [{}]\n",
        list.join(", ")
    )
}
