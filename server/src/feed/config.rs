//! `[feed]` of `server.toml`: where the city platform listens, the signing key, and the
//! push and retry timing. `url` and `key_file` are CONTRACT.md names; the rest are optional.

use std::path::PathBuf;

use serde::Deserialize;

/// `[feed]`, parsed by [`FeedConfig::from_table`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The platform's endpoint, `http://…` or `https://…`; every batch is a POST here.
    pub url: String,
    /// File holding the shared HMAC-SHA256 key (its first line, surrounding blanks trimmed).
    pub key_file: PathBuf,
    /// Local hour (0–23) from which a closed night is pushed, on the day its window closes
    /// (never before the window closes at 08:00). Default 9: recompute has had an hour.
    #[serde(default = "default_push_hour")]
    pub push_hour: u8,
    /// Nights before the latest pushed one that are re-checked for corrections (late
    /// readings), and pushed if never sent (backfill after the feed is switched on).
    #[serde(default = "default_correction_days")]
    pub correction_days: u16,
    /// Seconds between delivery passes (simulated seconds under a test clock).
    #[serde(default = "default_poll_s")]
    pub poll_s: u64,
    /// Seconds between two generation passes (new nights, corrections).
    #[serde(default = "default_regenerate_s")]
    pub regenerate_s: u64,
    /// Timeout of one POST, seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Wait after a first failed attempt, seconds; doubled per further failure.
    #[serde(default = "default_initial_backoff_s")]
    pub initial_backoff_s: u64,
    /// Longest wait between two attempts, seconds. Attempts never stop: a batch leaves the
    /// outbox only delivered.
    #[serde(default = "default_max_backoff_s")]
    pub max_backoff_s: u64,
    /// Whether village batches list every household's night (default true).
    #[serde(default = "default_true")]
    pub households: bool,
}

fn default_push_hour() -> u8 {
    9
}
fn default_correction_days() -> u16 {
    7
}
fn default_poll_s() -> u64 {
    30
}
fn default_regenerate_s() -> u64 {
    900
}
fn default_timeout_s() -> u64 {
    30
}
fn default_initial_backoff_s() -> u64 {
    30
}
fn default_max_backoff_s() -> u64 {
    3600
}
fn default_true() -> bool {
    true
}

/// A `[feed]` table that cannot be used; the message starts with the dotted key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feed.{key}: {message}")]
pub struct FeedConfigError {
    /// The key under `[feed]` (`url`, `key_file`, …), or `*` for the table as a whole.
    pub key: String,
    /// Why.
    pub message: String,
}

impl FeedConfig {
    /// Parses and checks the `[feed]` table.
    pub fn from_table(table: &toml::Table) -> Result<Self, FeedConfigError> {
        let err = |key: &str, message: String| FeedConfigError {
            key: key.into(),
            message,
        };
        for k in ["url", "key_file"] {
            if !table.contains_key(k) {
                return Err(err(k, "is required".into()));
            }
        }
        let cfg: FeedConfig =
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let msg = e.message().to_string();
                    // serde names the offending field in its message: "unknown field `x`", …
                    let key = msg
                        .split('`')
                        .nth(1)
                        .filter(|k| table.contains_key(*k))
                        .unwrap_or("*")
                        .to_string();
                    err(&key, msg)
                })?;
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://"))
            || cfg.url.len() <= "https://".len()
        {
            return Err(err(
                "url",
                format!(
                    "{:?}: expected http://host/path or https://host/path",
                    cfg.url
                ),
            ));
        }
        if cfg.key_file.as_os_str().is_empty() {
            return Err(err("key_file", "must name a file".into()));
        }
        if cfg.push_hour > 23 {
            return Err(err(
                "push_hour",
                format!("{}: expected 0..=23", cfg.push_hour),
            ));
        }
        for (k, v) in [
            ("poll_s", cfg.poll_s),
            ("regenerate_s", cfg.regenerate_s),
            ("timeout_s", cfg.timeout_s),
            ("initial_backoff_s", cfg.initial_backoff_s),
        ] {
            if v == 0 {
                return Err(err(k, "must be at least 1".into()));
            }
        }
        if cfg.max_backoff_s < cfg.initial_backoff_s {
            return Err(err(
                "max_backoff_s",
                "must not be below initial_backoff_s".into(),
            ));
        }
        Ok(cfg)
    }

    /// Reads the signing key from `key_file`: its first line, trimmed, non-empty.
    pub fn load_key(&self) -> Result<Vec<u8>, FeedConfigError> {
        let err = |message: String| FeedConfigError {
            key: "key_file".into(),
            message: format!("{}: {message}", self.key_file.display()),
        };
        let text = std::fs::read_to_string(&self.key_file).map_err(|e| err(e.to_string()))?;
        let key = text.lines().next().unwrap_or("").trim();
        if key.is_empty() {
            return Err(err("the key (first line) is empty".into()));
        }
        Ok(key.as_bytes().to_vec())
    }

    /// Wait before the attempt after `attempts` failed ones (≥ 1), seconds:
    /// `initial_backoff_s · 2^(attempts−1)`, at most `max_backoff_s`.
    pub fn backoff_s(&self, attempts: i64) -> i64 {
        let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 62)).unwrap_or(62);
        let wait = self
            .initial_backoff_s
            .saturating_mul(1u64.checked_shl(exp).unwrap_or(u64::MAX))
            .min(self.max_backoff_s);
        i64::try_from(wait).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FeedConfig, FeedConfigError> {
        FeedConfig::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = parse("url = \"https://city.example/feed\"\nkey_file = \"/k\"\n").unwrap();
        assert_eq!(
            (c.push_hour, c.correction_days, c.max_backoff_s),
            (9, 7, 3600)
        );
        assert!(c.households);
        for (text, key) in [
            ("key_file = \"/k\"", "feed.url:"),
            ("url = \"https://x/\"", "feed.key_file:"),
            ("url = \"ftp://x\"\nkey_file = \"/k\"", "feed.url:"),
            (
                "url = \"http://x/\"\nkey_file = \"/k\"\npush_hour = 24",
                "feed.push_hour:",
            ),
            (
                "url = \"http://x/\"\nkey_file = \"/k\"\nspeed = 1",
                "feed.speed:",
            ),
            (
                "url = \"http://x/\"\nkey_file = \"/k\"\npoll_s = \"x\"",
                "feed.",
            ),
            (
                "url = \"http://x/\"\nkey_file = \"/k\"\ntimeout_s = 0",
                "feed.timeout_s:",
            ),
            (
                "url = \"http://x/\"\nkey_file = \"/k\"\nmax_backoff_s = 1",
                "feed.max_backoff_s:",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = parse(
            "url = \"http://x/\"\nkey_file = \"/k\"\ninitial_backoff_s = 10\nmax_backoff_s = 100\n",
        )
        .unwrap();
        let waits: Vec<i64> = (1..=6).map(|a| c.backoff_s(a)).collect();
        assert_eq!(waits, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(c.backoff_s(10_000), 100);
    }

    #[test]
    fn the_key_is_the_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "  s3cret \nignored\n").unwrap();
        let mut c = parse("url = \"http://x/\"\nkey_file = \"/k\"\n").unwrap();
        c.key_file = path.clone();
        assert_eq!(c.load_key().unwrap(), b"s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(c
            .load_key()
            .unwrap_err()
            .to_string()
            .starts_with("feed.key_file:"));
    }
}
