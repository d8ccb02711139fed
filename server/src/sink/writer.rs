//! One write of points to InfluxDB 2's `/api/v2/write` (the `influxdb2` crate: rustls,
//! gzip-compressed bodies, second precision), bounded by a timeout, with the failure
//! classified: a refused batch is dropped, anything else is retried.

use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::DataPoint;

use super::InfluxConfig;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database refused the points themselves (HTTP 400, 413, 422): sending them
    /// again cannot succeed, so the batch is dropped and counted.
    #[error("influxdb refused the batch: HTTP {status}: {text}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The database's message.
        text: String,
    },
    /// Unreachable, timed out, 5xx, 401/403/404 (a token or bucket an operator can fix):
    /// retried with backoff.
    #[error("influxdb write failed: {0}")]
    Failed(String),
}

/// A client for one bucket.
#[derive(Clone)]
pub struct Writer {
    client: influxdb2::Client,
    bucket: String,
    timeout: Duration,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the client: it holds the token.
        f.debug_struct("Writer")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer for `cfg`'s url, org and bucket with `token`.
    pub fn new(cfg: &InfluxConfig, token: &str) -> Result<Self, WriteError> {
        // The URL was checked when the config was parsed (the crate panics on a bad one).
        let client = influxdb2::ClientBuilder::new(cfg.url.as_str(), cfg.org.as_str(), token)
            .gzip(true)
            .build()
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        Ok(Self {
            client,
            bucket: cfg.bucket.clone(),
            timeout: Duration::from_secs(cfg.timeout_s),
        })
    }

    /// Writes `points` (timestamps in seconds); nothing to write is a success.
    pub async fn write(&self, points: Vec<DataPoint>) -> Result<(), WriteError> {
        if points.is_empty() {
            return Ok(());
        }
        let write = self.client.write_with_precision(
            &self.bucket,
            futures_util::stream::iter(points),
            TimestampPrecision::Seconds,
        );
        match tokio::time::timeout(self.timeout, write).await {
            Err(_) => Err(WriteError::Failed(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(influxdb2::RequestError::Http { status, text }))
                if matches!(status.as_u16(), 400 | 413 | 422) =>
            {
                Err(WriteError::Refused {
                    status: status.as_u16(),
                    text,
                })
            }
            Ok(Err(e)) => Err(WriteError::Failed(e.to_string())),
        }
    }
}
