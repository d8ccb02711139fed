//! Sending one stored batch to the city platform: an HTTPS POST of the stored body,
//! signed with HMAC-SHA256 over exactly those bytes. The header names are the
//! contract with the platform (`docs/city-feed.md`).
//!
//! Boundary: the one HTTP *client* of the server (the API in `http` is the server side).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the idempotency key.
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Header carrying `sha256=<hex HMAC-SHA256(key, body)>`.
pub const HEADER_SIGNATURE: &str = "X-Qingnuan-Signature";
/// Header carrying the attempt's send time, UTC Unix seconds (not signed: informative).
pub const HEADER_TIMESTAMP: &str = "X-Qingnuan-Timestamp";
/// Header carrying the attempt number, 1 for the first.
pub const HEADER_ATTEMPT: &str = "X-Qingnuan-Attempt";

/// `sha256=<lowercase hex>` of HMAC-SHA256(`key`, `body`).
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is the signature of `body` under `key` (constant-time compare);
/// for receivers and tests.
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Why an attempt failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer: connection refused, timeout, TLS.
    #[error("transport: {0}")]
    Transport(String),
    /// An answer other than 2xx or 409.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
}

/// The platform's HTTP client.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
}

impl Sender {
    /// A client for `url` signing with `key`, each POST bounded by `timeout`.
    pub fn new(url: &str, key: Vec<u8>, timeout: Duration) -> Result<Self, SendError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("qingnuan-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SendError::Transport(e.to_string()))?;
        Ok(Self {
            client,
            url: url.into(),
            key,
        })
    }

    /// POSTs one batch. `Ok` on 2xx, and on 409 (the platform already has this key).
    pub async fn send(
        &self,
        key: &str,
        body: &str,
        attempt: i64,
        now: i64,
    ) -> Result<(), SendError> {
        let resp = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_IDEMPOTENCY_KEY, key)
            .header(HEADER_SIGNATURE, signature(&self.key, body.as_bytes()))
            .header(HEADER_TIMESTAMP, now.to_string())
            .header(HEADER_ATTEMPT, attempt.to_string())
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| SendError::Transport(e.to_string()))?;
        let status = resp.status();
        if status.is_success() || status == reqwest::StatusCode::CONFLICT {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(SendError::Status {
            status: status.as_u16(),
            body: text.chars().take(200).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let s = signature(b"k", b"{}");
        assert!(verify(b"k", b"{}", &s));
        assert!(!verify(b"k", b"{} ", &s));
        assert!(!verify(b"other", b"{}", &s));
        assert!(!verify(b"k", b"{}", "sha1=00"));
    }
}
