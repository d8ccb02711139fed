//! Health, the registry upload and the quarantine counts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use super::auth::Caller;
use super::{ApiError, AppState};

/// Largest registry CSV accepted, bytes (a district of 100,000 households is ~10 MB).
const REGISTRY_MAX_BYTES: usize = super::auth::REGISTRY_MAX_BYTES;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/health", get(health))
        .route(
            "/api/v1/registry",
            post(registry).layer(DefaultBodyLimit::max(REGISTRY_MAX_BYTES)),
        )
        .route("/api/v1/quarantine", get(quarantine))
}

/// `{"status": "ok"}` while the store answers, with `mqtt`: `subscribed` once the broker
/// has acknowledged the subscriptions (`connecting` before).
async fn health(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    s.0.store.ping().await?;
    let mqtt = if s.0.stats.subscribed.load(Ordering::Relaxed) {
        "subscribed"
    } else {
        "connecting"
    };
    Ok(Json(json!({"status": "ok", "mqtt": mqtt})))
}

/// The audit log's `source` is `api:<token name>` when tokens are configured, else `api`.
async fn registry(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let app = &s.0;
    let source = match &caller {
        Some(Extension(c)) => format!("api:{}", c.name),
        None => "api".to_owned(),
    };
    let sum =
        crate::registry::import(&app.store, &body, &app.policy, &source, app.clock.now()).await?;
    app.recompute.notify_one();
    Ok(Json(json!(sum)))
}

async fn quarantine(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let counts: BTreeMap<String, i64> = s.0.store.quarantine_counts().await?.into_iter().collect();
    let total: i64 = counts.values().sum();
    let st = &s.0.stats;
    Ok(Json(json!({
        "total": total,
        "by_reason": counts,
        "since_start": {
            "messages": st.messages.load(Ordering::Relaxed),
            "new_readings": st.new_readings.load(Ordering::Relaxed),
            "repeats": st.repeats.load(Ordering::Relaxed),
            "conflicts": st.conflicts.load(Ordering::Relaxed),
            "quarantined": st.quarantined.load(Ordering::Relaxed),
        },
    })))
}
