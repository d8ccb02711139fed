//! Process helpers for the agent: build the real `qingnuan-agent` binary once, write
//! a config, run it (with an accelerated clock when asked), SIGTERM or SIGKILL it;
//! and an MQTT collector that records what reaches the broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use qingnuan_shared::wire::{ReadingsBatch, Status};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// Builds `qingnuan-agent` (debug) once per test process and returns its path.
///
/// Runs `cargo build -p qingnuan-agent` with the cargo that runs the tests, so a clean
/// clone works; the build is a no-op when the binary is fresh.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_agent("dev"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Builds `qingnuan-agent` with a cargo profile (`dev`, `release`, `gateway`) and
/// returns the path of the binary.
pub fn build_agent(profile: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "qingnuan-agent",
        "--bin",
        "qingnuan-agent",
        "--profile",
        profile,
    ])
    .current_dir(&root);
    // Variables cargo set for this test process would make build scripts (ring's)
    // think their environment changed and rebuild: give the build a clean one.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep = matches!(
            k.as_str(),
            "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_BUILD_JOBS"
        );
        if (k.starts_with("CARGO_") && !keep)
            || k == "LD_LIBRARY_PATH"
            || k == "OUT_DIR"
            || k == "RUST_TEST_THREADS"
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p qingnuan-agent --profile {profile} failed: {status}"
        ));
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = if profile == "dev" { "debug" } else { profile };
    let bin = target.join(dir).join("qingnuan-agent");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} missing after the build", bin.display()))
    }
}

/// Settings of a test agent, written as `agent.toml`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Gateway id.
    pub gw: String,
    /// Broker URL.
    pub url: String,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound, bytes.
    pub max_bytes: u64,
    /// Sweep interval, s.
    pub interval_s: u64,
    /// Heartbeat, s.
    pub heartbeat_s: u64,
    /// Read around the clock.
    pub always: bool,
    /// `[[bus]]` tables, verbatim TOML.
    pub buses: String,
    /// Extra lines for `[mqtt]` (username, password_file, ca_file, …).
    pub mqtt_extra: String,
}

impl AgentConfig {
    /// Reads every second around the clock, 1 MiB spool, no publish delay.
    pub fn new(gw: &str, url: &str, spool_dir: &Path, buses: &str) -> Self {
        Self {
            gw: gw.into(),
            url: url.into(),
            spool_dir: spool_dir.to_path_buf(),
            max_bytes: 1 << 20,
            interval_s: 1,
            heartbeat_s: 3600,
            always: true,
            buses: buses.into(),
            mqtt_extra: String::new(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        format!(
            "gateway_id = \"{gw}\"\n\n[mqtt]\nurl = \"{url}\"\n{extra}\npublish_delay_max_s = 0\nreconnect_max_s = 1\nkeep_alive_s = 5\n\n\
             [schedule]\ninterval_s = {iv}\nheartbeat_s = {hb}\nalways = {always}\n\n[spool]\ndir = \"{dir}\"\nmax_bytes = {max}\n\n{buses}\n",
            gw = self.gw,
            url = self.url,
            extra = self.mqtt_extra,
            iv = self.interval_s,
            hb = self.heartbeat_s,
            always = self.always,
            dir = self.spool_dir.display(),
            max = self.max_bytes,
            buses = self.buses
        )
    }

    /// Parsed as the agent would.
    pub fn parse(&self) -> anyhow::Result<qingnuan_agent::config::Config> {
        qingnuan_agent::config::Config::from_toml_str(&self.to_toml())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Writes `agent.toml` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let p = dir.join("agent.toml");
        std::fs::write(&p, self.to_toml())?;
        Ok(p)
    }
}

/// A `[[bus]]` table for a DL/T 645 TCP bus.
pub fn dlt645_tcp_bus(address: &str, meters: &[&str]) -> String {
    let list: Vec<String> = meters.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "[[bus]]\nkind = \"dlt645-tcp\"\naddress = \"{address}\"\ntimeout_ms = 500\ngap_ms = 200\npause_ms = 0\nretries = 1\nmeters = [{}]\n",
        list.join(", ")
    )
}

/// A running agent process; SIGKILLed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `qingnuan-agent run --config FILE`, logging to `FILE.log`; `clock` is the
    /// `QINGNUAN_CLOCK` value, if any.
    pub fn start(config: &Path, clock: Option<&str>) -> anyhow::Result<Self> {
        Self::start_bin(&agent_bin()?, config, clock)
    }

    /// As [`AgentProcess::start`] with a given binary (e.g. a release build).
    pub fn start_bin(bin: &Path, config: &Path, clock: Option<&str>) -> anyhow::Result<Self> {
        let log = config.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out);
        cmd.env("RUST_LOG", "info,qingnuan_agent=debug");
        match clock {
            Some(c) => cmd.env(qingnuan_shared::clock::CLOCK_ENV, c),
            None => cmd.env_remove(qingnuan_shared::clock::CLOCK_ENV),
        };
        let child = cmd.spawn().context("spawning qingnuan-agent")?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to 10 s for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One message seen by the collector.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retain flag as delivered.
    pub retain: bool,
}

/// Subscribes to a topic filter and records every message (resubscribing after reconnects).
#[derive(Debug, Clone)]
pub struct Collector {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Connects to `url` (`mqtt://host:port`) and subscribes to `filter` at QoS 1.
    pub async fn start(url: &str, filter: &str) -> anyhow::Result<Self> {
        Self::start_session(url, filter, false).await
    }

    /// As [`Collector::start`], with a persistent session: the broker queues messages
    /// for it while it (or the broker) is down, so nothing published is missed.
    pub async fn start_persistent(url: &str, filter: &str) -> anyhow::Result<Self> {
        Self::start_session(url, filter, true).await
    }

    async fn start_session(url: &str, filter: &str, persistent: bool) -> anyhow::Result<Self> {
        let (host, port, _) = qingnuan_agent::publish::parse_url(url)?;
        let id = format!("collector-{:08x}", rand::random::<u32>());
        let mut o = MqttOptions::new(id, host, port);
        o.set_clean_session(!persistent);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let filter = filter.to_owned();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut v) = s2.lock() {
                            v.push(Seen {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("collector subscribe")?
            .ok();
        Ok(Self {
            seen,
            task: Arc::new(task),
        })
    }

    /// Everything seen so far.
    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The readings batches seen so far, in arrival order.
    pub fn batches(&self) -> Vec<ReadingsBatch> {
        self.all()
            .iter()
            .filter(|s| s.topic.ends_with("/readings"))
            .filter_map(|s| serde_json::from_slice(&s.payload).ok())
            .collect()
    }

    /// The status messages seen so far.
    pub fn statuses(&self) -> Vec<(Status, bool)> {
        self.all()
            .iter()
            .filter(|s| s.topic.ends_with("/status"))
            .filter_map(|s| {
                serde_json::from_slice(&s.payload)
                    .ok()
                    .map(|st| (st, s.retain))
            })
            .collect()
    }

    /// Waits until `pred` holds on the collector, polling every 50 ms.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Collector) -> bool,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        while !pred(self) {
            if Instant::now() > end {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}
