//! Support of the city feed tests: a platform receiver (axum on an ephemeral port) that
//! checks signatures on its own, fails every third request and records batches by
//! idempotency key; and a small JSON Schema checker for `docs/city-feed.schema.json`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// The signing key it checks with.
    pub key: Vec<u8>,
    /// Requests received (all answers).
    pub requests: AtomicU64,
    /// Answered 503 because down.
    pub refused_down: AtomicU64,
    /// Answered 503 because every third request fails.
    pub refused_third: AtomicU64,
    /// Bad or missing signatures (answered 401).
    pub bad_signatures: AtomicU64,
    /// Key header absent or not the body's key (answered 400).
    pub bad_keys: AtomicU64,
    /// A key accepted before arrived again (answered 200, not stored again).
    pub duplicates: AtomicU64,
    /// Accepted batches by idempotency key.
    pub accepted: Mutex<BTreeMap<String, Value>>,
    /// While true, every request gets 503.
    pub down: AtomicBool,
}

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:port/feed`
    pub url: String,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = seen.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if seen.down.load(Ordering::SeqCst) {
        seen.refused_down.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if n % 3 == 0 {
        seen.refused_third.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sig_ok = header("x-qingnuan-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|sig| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&seen.key).unwrap();
            mac.update(&body);
            mac.verify_slice(&sig).is_ok()
        });
    if !sig_ok {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let key = v["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if header("idempotency-key") != Some(key.as_str()) || key.is_empty() {
        seen.bad_keys.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    let mut acc = seen.accepted.lock().unwrap();
    match acc.entry(key) {
        std::collections::btree_map::Entry::Occupied(_) => {
            seen.duplicates.fetch_add(1, Ordering::SeqCst);
        }
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(v);
        }
    }
    StatusCode::OK
}

impl Receiver {
    /// Starts a receiver checking signatures with `key`.
    pub async fn start(key: &[u8]) -> Receiver {
        let seen = Arc::new(Seen {
            key: key.to_vec(),
            ..Seen::default()
        });
        let app = Router::new()
            .route("/feed", post(handle))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/feed"),
            seen,
            task,
        }
    }

    /// The accepted batches.
    pub fn accepted(&self) -> BTreeMap<String, Value> {
        self.seen.accepted.lock().unwrap().clone()
    }
}

/// Checks `v` against `schema` (resolving `#/$defs/…` in `root`); returns the errors.
/// Supports the keywords the feed schema uses and panics on any other, so the schema
/// cannot promise something this check does not verify.
pub fn check_schema(root: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        panic!("schema at {at} is not an object");
    };
    for (k, s) in obj {
        match k.as_str() {
            "$schema" | "$id" | "title" | "description" | "$defs" => {}
            "$ref" => {
                let path = s.as_str().unwrap().strip_prefix("#/$defs/").unwrap();
                check_schema(root, &root["$defs"][path], v, at, errs);
            }
            "oneOf" => {
                let ok = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|alt| {
                        let mut e = Vec::new();
                        check_schema(root, alt, v, at, &mut e);
                        e.is_empty()
                    })
                    .count();
                if ok != 1 {
                    errs.push(format!("{at}: matches {ok} of oneOf"));
                }
            }
            "type" => {
                let types: Vec<&str> = match s {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
                    _ => panic!("type at {at}"),
                };
                let is = |t: &str| match t {
                    "object" => v.is_object(),
                    "array" => v.is_array(),
                    "string" => v.is_string(),
                    "integer" => v.is_i64() || v.is_u64(),
                    "null" => v.is_null(),
                    "boolean" => v.is_boolean(),
                    other => panic!("type {other} at {at}"),
                };
                if !types.iter().any(|t| is(t)) {
                    errs.push(format!("{at}: {v} is not {types:?}"));
                }
            }
            "required" => {
                for r in s.as_array().unwrap() {
                    if v.get(r.as_str().unwrap()).is_none() {
                        errs.push(format!("{at}: {r} is required"));
                    }
                }
            }
            "properties" => {
                for (p, ps) in s.as_object().unwrap() {
                    if let Some(x) = v.get(p) {
                        check_schema(root, ps, x, &format!("{at}.{p}"), errs);
                    }
                }
            }
            "additionalProperties" => {
                assert_eq!(s, &Value::Bool(false), "only additionalProperties: false");
                if let Some(o) = v.as_object() {
                    let known = obj["properties"].as_object().unwrap();
                    for k in o.keys().filter(|k| !known.contains_key(*k)) {
                        errs.push(format!("{at}: unexpected property {k}"));
                    }
                }
            }
            "items" => {
                for (i, x) in v.as_array().into_iter().flatten().enumerate() {
                    check_schema(root, s, x, &format!("{at}[{i}]"), errs);
                }
            }
            "enum" => {
                if !s.as_array().unwrap().contains(v) {
                    errs.push(format!("{at}: {v} not in {s}"));
                }
            }
            "const" => {
                if s != v {
                    errs.push(format!("{at}: {v} is not {s}"));
                }
            }
            "minimum" => {
                if v.as_i64().is_some_and(|x| x < s.as_i64().unwrap()) {
                    errs.push(format!("{at}: {v} below {s}"));
                }
            }
            other => panic!("schema keyword {other} at {at} is not checked by this test"),
        }
    }
}
