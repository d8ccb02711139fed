//! `[influxdb]` in `server.toml` (CONTRACT.md "Server": url, org, bucket, token_file), parsed
//! from the raw table the server config keeps, with errors naming the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The InfluxDB 2 sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfluxConfig {
    /// Base URL of the InfluxDB 2 API, `http://host:8086` or `https://…`.
    pub url: String,
    /// Organisation.
    pub org: String,
    /// Bucket the points go to.
    pub bucket: String,
    /// File holding the API token (first line).
    pub token_file: PathBuf,
    /// Most readings (queue rows) in one write.
    pub batch_readings: i64,
    /// Pause when there is nothing to write, milliseconds.
    pub poll_ms: u64,
    /// Back-pressure bound: with more readings than this waiting (database down for long),
    /// the oldest are skipped and counted as dropped.
    pub max_lag_readings: i64,
    /// Period of the per-village status points, seconds (0: none).
    pub status_interval_s: u64,
    /// Longest pause between retries, seconds (the pause doubles from 1 s up to it).
    pub retry_max_s: u64,
    /// Longest wait for one write, seconds.
    pub timeout_s: u64,
}

/// The table as written; every key optional so that a missing one is named by us.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    org: Option<String>,
    bucket: Option<String>,
    token_file: Option<PathBuf>,
    batch_readings: Option<i64>,
    poll_ms: Option<u64>,
    max_lag_readings: Option<i64>,
    status_interval_s: Option<u64>,
    retry_max_s: Option<u64>,
    timeout_s: Option<u64>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn required(v: Option<String>, key: &'static str) -> Result<String, ConfigError> {
    match v {
        None => Err(invalid(key, "missing")),
        Some(s) if s.trim().is_empty() => Err(invalid(key, "must not be empty")),
        Some(s) => Ok(s),
    }
}

impl InfluxConfig {
    /// Parses and checks `[influxdb]` (no I/O: the token file is read on start).
    pub fn from_table(table: &toml::Table) -> Result<Self, ConfigError> {
        let raw: Raw = table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid("influxdb", e.message().to_string()))?;
        let url = required(raw.url, "influxdb.url")?;
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return Err(invalid(
                    "influxdb.url",
                    format!("{url:?}: expected http://host:port or https://host:port"),
                ))
            }
        }
        let cfg = Self {
            url,
            org: required(raw.org, "influxdb.org")?,
            bucket: required(raw.bucket, "influxdb.bucket")?,
            token_file: raw
                .token_file
                .ok_or_else(|| invalid("influxdb.token_file", "missing"))?,
            batch_readings: raw.batch_readings.unwrap_or(5_000),
            poll_ms: raw.poll_ms.unwrap_or(1_000),
            max_lag_readings: raw.max_lag_readings.unwrap_or(1_000_000),
            status_interval_s: raw.status_interval_s.unwrap_or(60),
            retry_max_s: raw.retry_max_s.unwrap_or(60),
            timeout_s: raw.timeout_s.unwrap_or(30),
        };
        if cfg.batch_readings < 1 {
            return Err(invalid("influxdb.batch_readings", "must be at least 1"));
        }
        if cfg.max_lag_readings < cfg.batch_readings {
            return Err(invalid(
                "influxdb.max_lag_readings",
                "must be at least batch_readings",
            ));
        }
        if cfg.retry_max_s < 1 {
            return Err(invalid("influxdb.retry_max_s", "must be at least 1"));
        }
        if cfg.timeout_s < 1 {
            return Err(invalid("influxdb.timeout_s", "must be at least 1"));
        }
        Ok(cfg)
    }

    /// The token: the first line of `token_file`, trimmed.
    pub fn read_token(&self) -> Result<String, ConfigError> {
        read_first_line(&self.token_file).map_err(|m| {
            invalid(
                "influxdb.token_file",
                format!("{}: {m}", self.token_file.display()),
            )
        })
    }

    /// Pause between retries after `failures` consecutive failures: 1 s, 2 s, 4 s, … up
    /// to `retry_max_s`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let s = 1u64
            .checked_shl(failures.saturating_sub(1).min(32))
            .unwrap_or(u64::MAX);
        Duration::from_secs(s.min(self.retry_max_s))
    }
}

fn read_first_line(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err("empty".into());
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<InfluxConfig, String> {
        let t: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        InfluxConfig::from_table(&t).map_err(|e| e.to_string())
    }

    const OK: &str =
        "url = \"http://127.0.0.1:8086\"\norg = \"qn\"\nbucket = \"b\"\ntoken_file = \"/t\"\n";

    #[test]
    fn contract_keys_with_defaults() {
        let c = parse(OK).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:8086");
        assert_eq!((c.org.as_str(), c.bucket.as_str()), ("qn", "b"));
        assert_eq!(c.token_file, PathBuf::from("/t"));
        assert_eq!(c.max_lag_readings, 1_000_000);
        let c = parse(&format!("{OK}batch_readings = 7\nmax_lag_readings = 9\n")).unwrap();
        assert_eq!((c.batch_readings, c.max_lag_readings), (7, 9));
    }

    #[test]
    fn errors_name_the_key() {
        for (key, text) in [
            (
                "influxdb.url",
                OK.replace("url = \"http://127.0.0.1:8086\"\n", ""),
            ),
            (
                "influxdb.url",
                OK.replace("http://127.0.0.1:8086", "ftp://x"),
            ),
            ("influxdb.org", OK.replace("org = \"qn\"\n", "")),
            ("influxdb.bucket", OK.replace("bucket = \"b\"\n", "")),
            ("influxdb.bucket", OK.replace("\"b\"", "\"\"")),
            (
                "influxdb.token_file",
                OK.replace("token_file = \"/t\"\n", ""),
            ),
            (
                "influxdb.batch_readings",
                format!("{OK}batch_readings = 0\n"),
            ),
            (
                "influxdb.max_lag_readings",
                format!("{OK}max_lag_readings = 10\n"),
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.starts_with(&format!("{key}:")), "{key}: {e}");
        }
        assert_eq!(
            parse(&OK.replace("bucket = \"b\"\n", "")).unwrap_err(),
            "influxdb.bucket: missing"
        );
        let e = parse(&format!("{OK}buckett = \"x\"\n")).unwrap_err();
        assert!(e.starts_with("influxdb:") && e.contains("buckett"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = parse(&format!("{OK}retry_max_s = 10\n")).unwrap();
        let s: Vec<u64> = (1..=6).map(|f| c.backoff(f).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 10, 10]);
        assert_eq!(c.backoff(200).as_secs(), 10);
    }

    #[test]
    fn the_token_is_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "  s3cret \nrest\n").unwrap();
        let mut c = parse(OK).unwrap();
        c.token_file = p.clone();
        assert_eq!(c.read_token().unwrap(), "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(c
            .read_token()
            .unwrap_err()
            .to_string()
            .starts_with("influxdb.token_file:"));
    }
}
