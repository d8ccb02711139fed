//! The agent's TOML configuration (CONTRACT.md "Agent"): the structs whose `///`
//! comments are the installer's documentation, defaults from named functions, and
//! errors that name the key and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use qingnuan_shared::units::GatewayId;
use serde::Deserialize;

mod bus;
pub use bus::{BusConfig, BusKind, MeterSpec, Parity};

/// Smallest `spool.max_bytes` accepted, bytes. A batch is at most 64 KiB, so a spool
/// smaller than that refuses (and logs) the batches of very large sweeps.
pub const MIN_SPOOL_BYTES: u64 = 16 * 1024;

/// The whole `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway id, `[a-z0-9][a-z0-9-]{0,63}`; also the MQTT topic segment and username.
    pub gateway_id: GatewayId,
    /// Subsidy policy file; without it the built-in Beijing 2018 policy.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// The broker.
    pub mqtt: MqttConfig,
    /// When to read.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// The disk spool.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Meter buses (`[[bus]]` tables), read in parallel.
    #[serde(default, rename = "bus")]
    pub buses: Vec<BusConfig>,
}

/// `[mqtt]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS, port 8883 by default).
    pub url: String,
    /// Username; the gateway id is the usual choice.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line, trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) that signed the broker's certificate (`mqtts://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT client id; default `qn-agent-{gateway_id}`. Keep it stable: the broker keeps
    /// the persistent session under it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// After a boundary sweep, publishing waits a random delay up to this many seconds so
    /// that a city of gateways does not hit the broker in the same second. 0 = no delay.
    #[serde(default = "default_publish_delay_max_s")]
    pub publish_delay_max_s: u64,
    /// Longest wait between reconnect attempts, seconds (the backoff doubles up to it, jittered).
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: u64,
}

/// `[schedule]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Seconds between sweeps inside the off-peak window (and always, with `always`).
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// Seconds between status heartbeats.
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    /// Read every `interval_s` around the clock, not only inside the window.
    #[serde(default)]
    pub always: bool,
    /// Read the meter's clock every this many sweeps (and at every boundary sweep).
    #[serde(default = "default_clock_every")]
    pub clock_every: u32,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool (created if missing).
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Size bound, bytes; when full the oldest records are dropped (and counted).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_keep_alive_s() -> u64 {
    30
}
fn default_publish_delay_max_s() -> u64 {
    60
}
fn default_reconnect_max_s() -> u64 {
    300
}
fn default_interval_s() -> u64 {
    900
}
fn default_heartbeat_s() -> u64 {
    3600
}
fn default_clock_every() -> u32 {
    4
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/qingnuan-agent")
}
fn default_max_bytes() -> u64 {
    64 << 20
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            interval_s: default_interval_s(),
            heartbeat_s: default_heartbeat_s(),
            always: false,
            clock_every: default_clock_every(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: default_spool_dir(),
            max_bytes: default_max_bytes(),
        }
    }
}

/// A configuration error with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path (`schedule.interval_s`, `bus[1].meters`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}: ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Config {
    /// Parses and checks a config text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate(text, refine(text, span.start, e.message())),
                None => (None, None),
            };
            ConfigError {
                line,
                key,
                message: e.message().trim().to_owned(),
            }
        })?;
        cfg.check(text)?;
        Ok(cfg)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            line: None,
            key: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks that need the whole file.
    fn check(&self, text: &str) -> Result<(), ConfigError> {
        let at = |needle: &str, key: &str, message: String| {
            let line = text
                .find(needle)
                .map(|o| text.get(..o).unwrap_or("").matches('\n').count() + 1);
            ConfigError {
                line,
                key: Some(key.into()),
                message,
            }
        };
        let url = &self.mqtt.url;
        if !(url.starts_with("mqtt://") || url.starts_with("mqtts://")) {
            return Err(at(
                "url",
                "mqtt.url",
                format!("{url:?}: expected mqtt://host:port or mqtts://host:port"),
            ));
        }
        if self.schedule.interval_s == 0 {
            return Err(at(
                "interval_s",
                "schedule.interval_s",
                "must be at least 1".into(),
            ));
        }
        if self.schedule.heartbeat_s == 0 {
            return Err(at(
                "heartbeat_s",
                "schedule.heartbeat_s",
                "must be at least 1".into(),
            ));
        }
        if self.spool.max_bytes < MIN_SPOOL_BYTES {
            return Err(at(
                "max_bytes",
                "spool.max_bytes",
                format!("must be at least {MIN_SPOOL_BYTES} (16 KiB); 8-64 MiB suits a gateway"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, bus) in self.buses.iter().enumerate() {
            for m in &bus.meters {
                if !seen.insert(m.id.as_str().to_owned()) {
                    return Err(at(
                        m.id.as_str(),
                        &format!("bus[{i}].meters"),
                        format!("meter {} appears twice", m.id),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("qn-agent-{}", self.gateway_id))
    }

    /// Every meter, in bus order.
    pub fn meter_count(&self) -> usize {
        self.buses.iter().map(|b| b.meters.len()).sum()
    }

    /// The one-paragraph summary `check-config` prints.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "gateway {} (client id {})",
            self.gateway_id,
            self.client_id()
        );
        let _ = writeln!(
            s,
            "mqtt {}{}{}",
            self.mqtt.url,
            self.mqtt
                .username
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default(),
            self.mqtt
                .ca_file
                .as_deref()
                .map(|c| format!(", ca {}", c.display()))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "schedule: every {} s {}, heartbeat {} s; policy {}",
            self.schedule.interval_s,
            if self.schedule.always {
                "around the clock"
            } else {
                "inside the off-peak window"
            },
            self.schedule.heartbeat_s,
            self.policy_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in Beijing 2018".into())
        );
        let _ = writeln!(
            s,
            "spool {} (max {} bytes)",
            self.spool.dir.display(),
            self.spool.max_bytes
        );
        for (i, b) in self.buses.iter().enumerate() {
            let link = match (&b.address, &b.device) {
                (Some(a), _) => a.clone(),
                (None, Some(d)) => format!(
                    "{} {} {}{}{}",
                    d.display(),
                    b.baud,
                    b.data_bits,
                    parity_char(b.parity),
                    b.stop_bits
                ),
                (None, None) => String::new(),
            };
            let ids: Vec<&str> = b.meters.iter().map(|m| m.id.as_str()).collect();
            let _ = writeln!(
                s,
                "bus[{i}] {} {link}: {} meters {}",
                b.kind.name(),
                b.meters.len(),
                ids.join(" ")
            );
        }
        s
    }
}

fn parity_char(p: Parity) -> char {
    match p {
        Parity::None => 'N',
        Parity::Even => 'E',
        Parity::Odd => 'O',
    }
}

/// toml points a bad `[[bus]]` element at the array's first header; when the message
/// quotes the offending value, point at that value instead.
fn refine(text: &str, offset: usize, message: &str) -> usize {
    let quoted = message.split('"').nth(1).filter(|q| !q.is_empty());
    match quoted {
        Some(q) => text
            .get(offset..)
            .and_then(|rest| rest.find(q))
            .map_or(offset, |o| offset + o),
        None => offset,
    }
}

/// The 1-based line of `offset` and the dotted key written on that line, with its table.
fn locate(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no - 1).copied().unwrap_or("").trim();
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned());
    // The table the line belongs to: the last header at or above it.
    let mut table = None;
    let mut bus_index = 0usize;
    for l in lines.iter().take(line_no) {
        let l = l.trim();
        if l.starts_with("[[bus]]") {
            table = Some(format!("bus[{bus_index}]"));
            bus_index += 1;
        } else if let Some(h) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = Some(h.trim().to_owned());
        }
    }
    let path = match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (Some(t), None) => Some(t),
        (None, k) => k,
    };
    (Some(line_no), path)
}

#[cfg(test)]
mod tests;
