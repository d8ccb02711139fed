//! API protection (`[auth]`): bearer tokens stored as SHA-256 hashes with a role each,
//! a per-client rate limit, request body limits and timeouts, as one axum middleware.
//!
//! Without `tokens_file` the API is open, so the server refuses a non-loopback
//! `[http] listen` (see [`Guard::from_config`]). `/api/v1/health`, `/metrics` and the
//! dashboard's shell and assets stay open; the dashboard sends the token it is given.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::limit::RateLimiter;
use super::tokens::parse_hex32;
pub use super::tokens::{add_token, hash_token, load_tokens, Role, TokenEntry, TokenError};
use crate::config::{Config, ConfigError};

/// Largest body of the registry upload, bytes (a district of 100,000 households is ~10 MB).
pub const REGISTRY_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Largest body of any other request, bytes.
pub const OTHER_MAX_BYTES: usize = 64 * 1024;

/// `[auth]` of `server.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of `[[token]]` entries (`name`, `role`, `sha256`); without it the API
    /// is open and the server listens on loopback only.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Requests per second each client IP may make on average; 0 disables the limit.
    #[serde(default = "default_rate_per_s")]
    pub rate_per_s: u32,
    /// Requests a client may make at once before the rate applies.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Longest time a request may take, seconds (the registry upload gets ten times this).
    #[serde(default = "default_request_timeout_s")]
    pub request_timeout_s: u64,
}

fn default_rate_per_s() -> u32 {
    50
}
fn default_rate_burst() -> u32 {
    200
}
fn default_request_timeout_s() -> u64 {
    30
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            rate_per_s: default_rate_per_s(),
            rate_burst: default_rate_burst(),
            request_timeout_s: default_request_timeout_s(),
        }
    }
}

impl AuthConfig {
    /// The `[auth]` table of `config` (defaults when absent); unknown keys are named.
    pub fn of(config: &Config) -> Result<Self, ConfigError> {
        match &config.auth {
            None => Ok(Self::default()),
            Some(t) => toml::Value::Table(t.clone())
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "auth",
                    message: e.message().to_string(),
                }),
        }
    }
}

/// Who made a request (inserted as a request extension when tokens are configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

/// The middleware's state: tokens, rate limiter, limits.
pub struct Guard {
    /// `None`: the API is open (loopback only).
    tokens: Option<Vec<([u8; 32], Caller)>>,
    limiter: Option<RateLimiter>,
    timeout: Duration,
    started: Instant,
}

impl Guard {
    /// The guard of `config`'s `[auth]`. Without `tokens_file`, a non-loopback `[http]
    /// listen` is refused and a warning says the API is open on loopback.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let auth = AuthConfig::of(config)?;
        if auth.tokens_file.is_none() {
            if !config.http.listen.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    key: "http.listen",
                    message: format!(
                        "{}: without auth.tokens_file the API has no authentication; \
                         listen on a loopback address or set auth.tokens_file",
                        config.http.listen
                    ),
                });
            }
            warn!(listen = %config.http.listen, "no auth.tokens_file: the API is open, on loopback only");
        }
        Self::new(&auth)
    }

    /// The guard of an `[auth]` table (no listen check).
    pub fn new(auth: &AuthConfig) -> Result<Self, ConfigError> {
        let tokens = match &auth.tokens_file {
            None => None,
            Some(path) => {
                let entries = load_tokens(path).map_err(|e| ConfigError::Invalid {
                    key: "auth.tokens_file",
                    message: e.to_string(),
                })?;
                if entries.is_empty() {
                    warn!(file = %path.display(), "auth.tokens_file has no tokens: every protected request is refused");
                }
                Some(
                    entries
                        .into_iter()
                        .map(|t| {
                            (
                                parse_hex32(&t.sha256).unwrap_or([0; 32]),
                                Caller {
                                    name: t.name,
                                    role: t.role,
                                },
                            )
                        })
                        .collect(),
                )
            }
        };
        Ok(Self {
            tokens,
            limiter: (auth.rate_per_s > 0)
                .then(|| RateLimiter::new(auth.rate_per_s, auth.rate_burst.max(1))),
            timeout: Duration::from_secs(auth.request_timeout_s.max(1)),
            started: Instant::now(),
        })
    }

    /// The caller holding `token`, compared in constant time against every stored hash.
    fn caller(&self, token: &str) -> Option<&Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, caller) in self.tokens.iter().flatten() {
            let diff = hash
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(caller);
            }
        }
        found
    }
}

/// The role a request needs; `None` for the open paths.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    let asset = path.starts_with("/assets/") && !path.contains("..") && !path.contains('%');
    if path == "/" || path == "/api/v1/health" || path == "/metrics" || asset {
        return None;
    }
    if path == "/api/v1/registry" {
        return Some(if method == Method::GET || method == Method::HEAD {
            Role::Viewer
        } else {
            Role::Admin
        });
    }
    Some(if method == Method::GET || method == Method::HEAD {
        Role::Viewer
    } else {
        Role::Operator
    })
}

/// Wraps `router` in the guard (the outermost layer).
pub fn protect(router: Router, guard: Arc<Guard>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(guard, guard_layer))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({"error": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn guard_layer(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    if let (Some(limiter), Some(ip)) = (&g.limiter, client_ip(&req)) {
        let now_ms = u64::try_from(g.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !limiter.allow(ip, now_ms) {
            return refuse(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        }
    }
    let path = req.uri().path().to_owned();
    if let (Some(need), Some(_)) = (required_role(req.method(), &path), &g.tokens) {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "an Authorization: Bearer token is required",
            );
        };
        let Some(caller) = g.caller(token).cloned() else {
            return refuse(StatusCode::UNAUTHORIZED, "unknown token");
        };
        if caller.role < need {
            return refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "this needs the {need} role; token {} is {}",
                    caller.name, caller.role
                ),
            );
        }
        req.extensions_mut().insert(caller);
    }
    let (limit, timeout) = if path == "/api/v1/registry" {
        (REGISTRY_MAX_BYTES, g.timeout.saturating_mul(10))
    } else {
        (OTHER_MAX_BYTES, g.timeout)
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {limit} bytes"),
        );
    }
    // A chunked body has no length to check up front: it is cut off at `limit` as read
    // (the extractors answer 413).
    let req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, limit)));
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "the request timed out"),
    }
}

/// The peer's IP (the server is started with connect info; tests may insert it).
fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_open_paths() {
        assert_eq!(required_role(&Method::GET, "/api/v1/health"), None);
        assert_eq!(required_role(&Method::GET, "/assets/app.js"), None);
        assert_eq!(required_role(&Method::GET, "/"), None);
        assert_eq!(
            required_role(&Method::GET, "/assets/../api/v1/alarms"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role(&Method::GET, "/api/v1/alarms"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/registry"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::POST, "/api/v1/alarms"),
            Some(Role::Operator)
        );
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn tokens_added_are_found_by_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let a = add_token(&path, "alice", Role::Admin).unwrap();
        let v = add_token(&path, "vic", Role::Viewer).unwrap();
        assert_ne!(a, v);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&a) && text.contains(&hash_token(&a)),
            "{text}"
        );
        assert!(add_token(&path, "alice", Role::Viewer).is_err());
        let g = Guard::new(&AuthConfig {
            tokens_file: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(g.caller(&a).map(|c| c.role), Some(Role::Admin));
        assert_eq!(g.caller(&v).map(|c| c.name.as_str()), Some("vic"));
        assert!(g.caller("qn_nope").is_none());
    }

    #[test]
    fn no_tokens_means_loopback_only() {
        let c = Config::from_toml_str("[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        let e = Guard::from_config(&c).err().unwrap().to_string();
        assert!(
            e.contains("http.listen") && e.contains("auth.tokens_file"),
            "{e}"
        );
        let c = Config::from_toml_str("[http]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert!(Guard::from_config(&c).is_ok());
        // A misspelt key is refused when the config is loaded, naming it.
        let e = Config::from_toml_str("[auth]\ntoken_file = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("auth:") && e.contains("token_file"), "{e}");
    }
}
