//! The HTTP API (CONTRACT.md "HTTP API") with axum: `app(state)` builds the router so
//! tests call it directly; every route module has its own `router()`.

pub mod auth;
mod dashboard;
mod error;
mod households;
mod limit;
mod metrics;
mod monitor;
mod operations;
mod seasons;
pub mod serve;
mod tokens;

use std::sync::Arc;

use axum::Router;
use qingnuan_shared::calendar::{Calendar, Season};
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::policy::Policy;
use tokio::sync::Notify;

use crate::ingest::IngestStats;
use crate::store::Store;

pub use error::ApiError;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

/// The shared parts of the running server.
pub struct App {
    /// The store.
    pub store: Store,
    /// The subsidy policy.
    pub policy: Policy,
    /// Now.
    pub clock: SharedClock,
    /// Woken after a registry import so its figures are recomputed at once.
    pub recompute: Arc<Notify>,
    /// Ingest counters.
    pub stats: Arc<IngestStats>,
    /// City feed counters, when `[feed]` is configured.
    pub feed: Option<Arc<crate::feed::FeedStats>>,
    /// InfluxDB sink counters, when `[influxdb]` is configured.
    pub sink: Option<Arc<crate::sink::SinkStats>>,
}

impl App {
    fn calendar(&self) -> Calendar {
        Calendar::new(self.policy)
    }

    /// A season name from a path or query: 400 if malformed, 404 if it has not started.
    fn season(&self, name: &str) -> Result<Season, ApiError> {
        let season: Season = name
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("season {name:?}: {e}")))?;
        let (start, _) = self.calendar().season_span(season);
        if start > self.clock.now() {
            return Err(ApiError::NotFound(format!(
                "season {season} has not started"
            )));
        }
        Ok(season)
    }
}

/// The API router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(operations::router())
        .merge(households::router())
        .merge(seasons::router())
        .merge(monitor::router())
        .merge(dashboard::router())
        .merge(metrics::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}
