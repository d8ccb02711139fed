/*!
`qingnuan-server demo`: a whole village with nothing installed. One process runs the
embedded MQTT broker, the real server (SQLite store in the demo directory, ingest,
recompute, HTTP), simulated DL/T 645 and Modbus meters on loopback TCP that follow the
fleet model, and the real agent code (one per gateway) reading them, all under one
accelerated clock, with a fault now and then.

# Layout
- [`state`]: `demo-state.json`: which village, and the simulated instant reached (resume).
- [`village`]: meter lines, uplink relays and in-process agents.
- [`faults`]: the fault plan (uplink cuts at night, silent meters by day).
- [`narrate`]: what is printed as the demo runs.

**Invariant:** the faults never touch a boundary read, so every night's figure equals the
fleet's truth within the meters' 10 Wh resolution per boundary (`server/tests/demo.rs`).
**Boundary:** the demo only uses the server's public API ([`crate::start_with_clock`],
[`crate::store`], [`crate::registry`]) and the agent's [`qingnuan_agent::run`].
*/

pub mod faults;
pub mod narrate;
pub mod state;
pub mod village;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qingnuan_shared::calendar::Night;
use qingnuan_shared::clock::{Clock, ScaledClock, SharedClock, SystemClock};
use qingnuan_shared::policy::Policy;
use tracing::warn;

use crate::broker::{BrokerSettings, EmbeddedBroker};
use crate::store::Store;
use faults::{Fault, Faults};
use narrate::Narrator;
use state::{DemoState, STORE_FILE};
use village::Village;

/// Default speed-up: a 12-hour night in one minute.
pub const DEFAULT_SPEED: u32 = 720;
/// Real time between two looks at the clock (faults, nights closing).
const TICK: Duration = Duration::from_millis(100);
/// Real time between two pulse lines.
const PULSE: Duration = Duration::from_secs(15);
/// Real time between two saves of the simulated instant.
const SAVE: Duration = Duration::from_secs(2);

/// How to run the demo (`qingnuan-server demo [--speed N] [--listen ADDR] [--fresh] [--dir PATH]`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Directory of the store, the agents' spools and the state; created if missing.
    pub dir: PathBuf,
    /// HTTP API and dashboard listen address.
    pub listen: SocketAddr,
    /// Embedded MQTT broker listen address (loopback; port 0 picks a free one).
    pub mqtt_listen: SocketAddr,
    /// Simulated seconds per real second.
    pub speed: u32,
    /// Start over instead of resuming what `dir` holds.
    pub fresh: bool,
    /// First simulated day (local) of a new village; default today in a season, else Dec 1.
    pub start: Option<Night>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("qingnuan-demo"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            speed: DEFAULT_SPEED,
            fresh: false,
            start: None,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file or directory of the demo.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `demo-state.json` is unreadable.
    #[error("demo state: {0}")]
    State(String),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The simulated registry was refused.
    #[error("importing the demo registry: {0}")]
    Import(String),
    /// The server's configuration or start failed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The server did not start.
    #[error(transparent)]
    Server(#[from] crate::RunError),
    /// An agent's configuration was refused.
    #[error("demo agent: {0}")]
    Agent(String),
    /// A meter simulator or uplink relay did not start.
    #[error("demo simulator: {0}")]
    Sim(String),
}

/// Runs the demo until `shutdown` completes, then stops agents, server and broker in that
/// order and saves the simulated instant so that the next run resumes there.
pub async fn run(opts: DemoOptions, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let dir = opts.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Io {
        path: dir.clone(),
        source,
    })?;
    let cal = state::calendar();
    let previous = DemoState::load(&dir)?;
    if opts.fresh {
        let gateways = previous
            .as_ref()
            .map(|s| village::gateway_ids(&s.fleet()))
            .unwrap_or_default();
        state::wipe(&dir, &gateways)?;
    }
    let (mut st, resumed) = match previous.filter(|_| !opts.fresh) {
        Some(s) => (s, true),
        None => {
            let day = opts
                .start
                .unwrap_or_else(|| state::default_start(SystemClock.now()));
            (DemoState::new(day), false)
        }
    };
    if resumed && opts.start.is_some() {
        warn!("--start is ignored when resuming; add --fresh to start over");
    }
    let fleet = Arc::new(st.fleet());
    let broker = EmbeddedBroker::start(BrokerSettings::with_listen(opts.mqtt_listen))?;
    let store_url = format!("sqlite://{}", dir.join(STORE_FILE).display());
    let store = Store::open(&store_url).await?;
    if !resumed {
        let csv = fleet.registry_csv(&st.registry_from);
        let policy = Policy::beijing_2018();
        crate::registry::import(
            &store,
            csv.as_bytes(),
            &policy,
            "demo",
            st.sim_now_ms / 1000,
        )
        .await
        .map_err(|e| DemoError::Import(e.to_string()))?;
    }
    st.save(&dir)?;
    let config = crate::config::Config::from_toml_str(&format!(
        "[http]\nlisten = \"{}\"\n\n[mqtt]\nurl = \"{}\"\nclient_id = \"qingnuan-demo-server\"\n\n[store]\nurl = {}\n",
        opts.listen,
        broker.url(),
        toml::Value::String(store_url.clone()),
    ))?;
    let clock = Arc::new(ScaledClock::new(st.sim_now_ms, opts.speed));
    let shared: SharedClock = clock.clone();
    let server = crate::start_with_clock(config, shared.clone()).await?;
    let village = match Village::start(fleet.clone(), shared, broker.addr().port(), &dir).await {
        Ok(v) => v,
        Err(e) => {
            server.stop().await;
            return Err(e);
        }
    };
    let gateways = village.gateway_ids();
    let plan = Faults {
        epoch: st.epoch,
        gateways: gateways.clone(),
        meters: fleet
            .households
            .iter()
            .filter(|h| village.modbus_household.as_ref() != Some(&h.id))
            .map(|h| h.meter.clone())
            .collect(),
        days: st.days,
    }
    .plan();
    for f in &plan {
        if let Fault::MeterSilent { meter, from, to } = f {
            village.board.silence(meter, *from, *to);
        }
    }
    let households: Vec<String> = fleet.households.iter().map(|h| h.id.clone()).collect();
    let mut narrator = Narrator::new(
        store.clone(),
        cal,
        households,
        gateways.clone(),
        clock.now(),
    );
    banner(
        &narrator,
        &opts,
        &st,
        &fleet,
        &village,
        &server.addr,
        &broker,
        resumed,
        clock.now(),
    );

    let mut active = vec![false; plan.len()];
    let mut shutdown = std::pin::pin!(shutdown);
    let (mut last_pulse, mut last_save) = (Instant::now(), Instant::now());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = clock.now();
        for (f, on) in plan.iter().zip(active.iter_mut()) {
            let is = f.active(now);
            if is == *on {
                continue;
            }
            *on = is;
            announce(&narrator, &village, f, is, now);
        }
        narrator.nights(now).await;
        if last_pulse.elapsed() >= PULSE {
            last_pulse = Instant::now();
            narrator.pulse(now).await;
        }
        if last_save.elapsed() >= SAVE {
            last_save = Instant::now();
            st.sim_now_ms = clock.now_ms();
            if let Err(e) = st.save(&dir) {
                warn!(error = %e, "saving the demo state");
            }
        }
    }
    narrator.say("stopping: agents, then server, then broker …");
    village.stop().await;
    server.stop().await;
    broker.shutdown();
    st.sim_now_ms = clock.now_ms();
    st.save(&dir)?;
    store.close().await;
    narrator.say(&format!(
        "stopped at {}; run `qingnuan-server demo` again to resume (--fresh to start over)",
        narrator.stamp(clock.now())
    ));
    Ok(())
}

/// Turns a fault on or off and says so.
fn announce(n: &Narrator, village: &Village, f: &Fault, on: bool, now: i64) {
    match f {
        Fault::UplinkCut { gateway, to, .. } => {
            village.set_uplink_cut(gateway, on);
            if on {
                n.say(&format!(
                    "{} fault: {gateway} loses its uplink until {} (its agent keeps reading into the spool)",
                    n.stamp(now),
                    faults::hhmm(&state::calendar(), *to)
                ));
            } else {
                n.say(&format!(
                    "{} {gateway} is back online and replays its spool",
                    n.stamp(now)
                ));
            }
        }
        Fault::MeterSilent { meter, to, .. } => {
            if on {
                n.say(&format!(
                    "{} fault: meter {meter} stops answering until {}",
                    n.stamp(now),
                    faults::hhmm(&state::calendar(), *to)
                ));
            } else {
                n.say(&format!("{} meter {meter} answers again", n.stamp(now)));
            }
        }
    }
}

/// The opening lines: where to look, what runs.
#[allow(clippy::too_many_arguments)]
fn banner(
    n: &Narrator,
    opts: &DemoOptions,
    st: &DemoState,
    fleet: &qingnuan_tests::fleet::Fleet,
    village: &Village,
    http: &SocketAddr,
    broker: &EmbeddedBroker,
    resumed: bool,
    now: i64,
) {
    let mut places: Vec<String> = fleet
        .households
        .iter()
        .map(|h| format!("{} {} {}", h.place.0, h.place.1, h.place.2))
        .collect();
    places.dedup();
    places.sort();
    places.dedup();
    n.say("清暖 Qingnuan demo: a simulated village, real agents, real server");
    n.say(&format!(
        "  dashboard and API: http://{http}/  (e.g. http://{http}/api/v1/gateways)"
    ));
    n.say(&format!(
        "  MQTT broker: {}  (watch: mosquitto_sub -h {} -p {} -t 'qn/v1/gw/+/readings' -v)",
        broker.url(),
        broker.addr().ip(),
        broker.addr().port()
    ));
    n.say(&format!(
        "  {} households on {} gateways in {}; {} meter speaks Modbus (SDM120), the rest DL/T 645",
        fleet.households.len(),
        village.gateway_ids().len(),
        places.join(", "),
        village.modbus_household.as_deref().unwrap_or("no"),
    ));
    n.say(&format!(
        "  clock: {}× ({}), {} at {}; data in {}",
        opts.speed,
        if opts.speed >= 60 {
            format!(
                "a 12-hour night in {} s",
                43_200 / u64::from(opts.speed.max(1))
            )
        } else {
            "slow".into()
        },
        if resumed { "resumed" } else { "started" },
        n.stamp(now),
        opts.dir.display(),
    ));
    n.say(&format!(
        "  registry from {}; Ctrl-C stops, running again resumes",
        st.registry_from
    ));
}
