//! The server's TOML configuration (CONTRACT.md "Server"): structs whose `///` comments
//! are the operator's documentation, defaults from named functions, errors naming key and line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qingnuan_shared::policy::Policy;
use serde::Deserialize;

/// The whole `server.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[http]`: the API listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[mqtt]`: the broker the gateways publish to.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// `[store]`: where registry, readings and statements live.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[policy]`: the subsidy policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[ingest]`: validation and batching of incoming readings.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// `[influxdb]`: the InfluxDB 2 sink, parsed and checked by [`crate::sink::InfluxConfig`].
    #[serde(default)]
    pub influxdb: Option<toml::Table>,
    /// `[feed]`: the city platform feed, parsed and checked by
    /// [`crate::feed::FeedConfig::from_table`] when the server starts (`url`, `key_file`, …).
    #[serde(default)]
    pub feed: Option<toml::Table>,
    /// `[auth]`: API tokens, rate limit and request timeout, parsed by
    /// [`crate::http::auth::AuthConfig`] (`tokens_file`, `rate_per_s`, `rate_burst`,
    /// `request_timeout_s`); without `tokens_file` the API listens on loopback only.
    #[serde(default)]
    pub auth: Option<toml::Table>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the API listens on; port 0 picks a free one (tests).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

/// `[mqtt]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`; absent means the embedded broker.
    #[serde(default)]
    pub url: Option<String>,
    /// Listen address of the embedded broker (used when `url` is absent), a loopback
    /// `IP:PORT` unless `embedded_passwd_file` is set (without it the embedded broker has no
    /// authentication); default `127.0.0.1:1883`.
    #[serde(default)]
    pub embedded_listen: Option<String>,
    /// Users of the embedded broker: a Mosquitto password file (`mosquitto_passwd`; the
    /// same file `deploy/mosquitto/` uses). With it every client must log in (the server
    /// too, with `username` and `password_file`) and `embedded_listen` may be any address.
    #[serde(default)]
    pub embedded_passwd_file: Option<PathBuf>,
    /// Topic rules of the embedded broker: a Mosquitto ACL file (`user`, `topic`, `pattern`
    /// with `%u`/`%c`; no `deny`). Used only with `embedded_passwd_file`; without it the
    /// built-in copy of `deploy/mosquitto/acl` applies (each gateway publishes only under
    /// `qn/v1/gw/<its user name>/` and reads only its config topic; `qingnuan-server` reads all).
    #[serde(default)]
    pub embedded_acl_file: Option<PathBuf>,
    /// MQTT client id, default `qingnuan-server`. Keep it stable: the broker keeps the
    /// persistent session (and the readings not yet acknowledged) under it.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username at the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) of the broker (`mqtts://`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Shared-subscription group: with it the server subscribes to
    /// `$share/{group}/qn/v1/gw/+/readings` so several replicas split the load.
    #[serde(default)]
    pub share_group: Option<String>,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (created with its directory on start), or
    /// `postgres://user@host/db` (the database must exist; migrated on start).
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Settle the nights older than this many days every morning (docs/bounded-state.md:
    /// their readings are thinned to those the figures rest on, and readings or registry
    /// changes reaching before them are refused). 0, the default: never (settle by hand
    /// with `qingnuan-server settle`).
    #[serde(default)]
    pub settle_after_days: u32,
}

/// `[policy]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy TOML file; without it the built-in Beijing 2018 policy.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// A reading stamped further in the future than this (seconds, server clock) is quarantined.
    #[serde(default = "default_future_tolerance_s")]
    pub future_tolerance_s: i64,
    /// Most MQTT messages committed in one store transaction.
    #[serde(default = "default_batch_messages")]
    pub batch_messages: usize,
    /// Longest wait for more messages before a partial batch is committed, milliseconds;
    /// 0 (the default) commits what has arrived, and batches grow while a commit runs.
    #[serde(default = "default_batch_wait_ms")]
    pub batch_wait_ms: u64,
    /// Most readings held for want of a registry binding (an unknown gateway, an
    /// unregistered meter); beyond it the earliest received are dropped and counted.
    #[serde(default = "default_held_max")]
    pub held_max: i64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_store_url() -> String {
    "sqlite://./data/qingnuan.db".into()
}
fn default_future_tolerance_s() -> i64 {
    300
}
fn default_batch_messages() -> usize {
    200
}
fn default_batch_wait_ms() -> u64 {
    0
}
fn default_held_max() -> i64 {
    1_000_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}
impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
            settle_after_days: 0,
        }
    }
}
impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            future_tolerance_s: default_future_tolerance_s(),
            batch_messages: default_batch_messages(),
            batch_wait_ms: default_batch_wait_ms(),
            held_max: default_held_max(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key; `line` is 1-based.
    #[error("{}line {line}: {message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Line of the offending key or value.
        line: usize,
        /// What the parser said (it names the key).
        message: String,
    },
    /// A value that parses but cannot be used.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `mqtt.url`.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// The policy file is unusable.
    #[error("policy.file {path}: {message}")]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

impl Config {
    /// Parses and checks a configuration text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: None,
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { line, message, .. } => ConfigError::Parse {
                path: Some(path.into()),
                line,
                message,
            },
            other => other,
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        match &self.mqtt.url {
            Some(url) => {
                BrokerUrl::parse(url).map_err(|m| invalid("mqtt.url", &m))?;
            }
            None => {
                self.embedded_listen()?;
            }
        }
        if let Some(g) = &self.mqtt.share_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(invalid(
                    "mqtt.share_group",
                    "must be non-empty without '/', '+' or '#'",
                ));
            }
        }
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| self.store.url.starts_with(p))
        {
            return Err(invalid("store.url", "must be sqlite://… or postgres://…"));
        }
        if self.ingest.future_tolerance_s < 0 {
            return Err(invalid("ingest.future_tolerance_s", "must not be negative"));
        }
        if self.ingest.held_max < 0 {
            return Err(invalid("ingest.held_max", "must not be negative"));
        }
        if let Some(t) = &self.influxdb {
            crate::sink::InfluxConfig::from_table(t)?;
        }
        crate::http::auth::AuthConfig::of(self)?;
        if self.ingest.batch_messages == 0 {
            return Err(invalid("ingest.batch_messages", "must be at least 1"));
        }
        Ok(())
    }

    /// The broker to connect to: `[mqtt] url`, or else the embedded broker's listen address
    /// (which [`crate::start`] starts when `url` is absent).
    pub fn broker(&self) -> Result<BrokerUrl, ConfigError> {
        match &self.mqtt.url {
            Some(url) => BrokerUrl::parse(url).map_err(|message| ConfigError::Invalid {
                key: "mqtt.url",
                message,
            }),
            None => {
                let listen = self.embedded_listen()?;
                Ok(BrokerUrl {
                    host: listen.ip().to_string(),
                    port: listen.port(),
                    tls: false,
                })
            }
        }
    }

    /// `[mqtt] embedded_listen`, or `127.0.0.1:1883`; only loopback addresses.
    pub fn embedded_listen(&self) -> Result<SocketAddr, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "mqtt.embedded_listen",
            message,
        };
        let addr = match &self.mqtt.embedded_listen {
            None => crate::broker::DEFAULT_LISTEN,
            Some(s) => s.parse::<SocketAddr>().map_err(|_| {
                invalid(format!("{s:?}: expected IP:PORT, e.g. \"127.0.0.1:1883\""))
            })?,
        };
        if !addr.ip().is_loopback() && self.mqtt.embedded_passwd_file.is_none() {
            return Err(invalid(format!(
                "{addr}: the embedded broker has no authentication, use a loopback address \
                 (or set embedded_passwd_file, or url to a real broker)"
            )));
        }
        Ok(addr)
    }

    /// The MQTT client id (stable, so the broker keeps the session).
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| "qingnuan-server".into())
    }

    /// The subsidy policy: `[policy] file` or the built-in Beijing 2018.
    pub fn load_policy(&self) -> Result<Policy, ConfigError> {
        match &self.policy.file {
            None => Ok(Policy::beijing_2018()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Policy {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Policy::from_toml_str(&text).map_err(|e| ConfigError::Policy {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// A parsed `[mqtt] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port (1883 for `mqtt://`, 8883 for `mqtts://` by default).
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "{url:?}: expected mqtt://host:port or mqtts://host:port"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: port {p:?} is not a number 0..65535"))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Self {
            host: host.into(),
            port,
            tls,
        })
    }
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at.min(text.len()))
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/server.example.toml");

    #[test]
    fn the_example_parses_with_its_values() {
        let c = Config::from_toml_str(EXAMPLE).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            c.broker().unwrap(),
            BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(c.store.url, "sqlite://./data/qingnuan.db");
        assert_eq!(c.client_id(), "qingnuan-server");
        assert_eq!(c.ingest.future_tolerance_s, 300);
        assert_eq!(c.ingest.held_max, 1_000_000);
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let e = Config::from_toml_str(
            "[http]\nlisten = \"127.0.0.1:1\"\n\n[mqtt]\nurl = \"mqtt://h\"\nqos = 2\n",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("line 6:") && s.contains("qos"), "{s}");
        let e = Config::from_toml_str("[http]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn later_sections_are_accepted() {
        let c = Config::from_toml_str(
            "[influxdb]\nurl = \"http://x\"\norg = \"o\"\nbucket = \"b\"\ntoken_file = \"t\"\n[feed]\nurl = \"y\"\n[auth]\ntokens_file = \"t\"\n",
        )
        .unwrap();
        assert!(c.influxdb.is_some() && c.feed.is_some() && c.auth.is_some());
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtts://broker.example").unwrap().port,
            8883
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://10.0.0.1:1999").unwrap(),
            BrokerUrl {
                host: "10.0.0.1".into(),
                port: 1999,
                tls: false
            }
        );
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://x:99999").is_err());
        let e = Config::from_toml_str("[mqtt]\nurl = \"tcp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mqtt.url:"), "{e}");
    }

    #[test]
    fn no_broker_url_means_the_embedded_broker() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(
            c.broker().unwrap(),
            BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        let c = Config::from_toml_str("[mqtt]\nembedded_listen = \"127.0.0.1:1999\"\n").unwrap();
        assert_eq!(c.embedded_listen().unwrap().port(), 1999);
        for bad in ["0.0.0.0:1883", "localhost"] {
            let e = Config::from_toml_str(&format!("[mqtt]\nembedded_listen = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("mqtt.embedded_listen:"), "{bad}: {e}");
        }
        // With a url, embedded_listen is not used (nor checked).
        let c =
            Config::from_toml_str("[mqtt]\nurl = \"mqtt://h\"\nembedded_listen = \"x\"\n").unwrap();
        assert_eq!(c.broker().unwrap().host, "h");
    }
}
