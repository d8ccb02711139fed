//! One household: its season statement (with `?explain=1`, every night and how it was
//! obtained; `?nights=1`, every night as `each_night`; `?format=csv[&lang=zh]`, the
//! per-household finance CSV), its nights, and one night's detail.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use qingnuan_shared::calendar::{Night, Season};
use serde_json::Value;

use super::{ApiError, App, AppState};
use crate::engine::Engine;
use crate::export;
use crate::store::{NightRow, StatementRow};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/households/{id}/seasons/{season}", get(statement))
        .route("/api/v1/households/{id}/nights", get(nights))
        .route("/api/v1/households/{id}/nights/{night}", get(night))
}

type Params = Query<HashMap<String, String>>;

async fn statement(
    State(s): State<AppState>,
    Path((id, season)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let app = &s.0;
    let season = app.season(&season)?;
    let lang = super::seasons::lang_of(&q)?;
    let with_nights = match q.get("nights").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "nights={other:?}: expected 1 or 0"
            )))
        }
    };
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format={other:?}: expected json or csv"
            )))
        }
    };
    let explain = match q.get("explain").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "explain={other:?}: expected 1 or 0"
            )))
        }
    };
    let (st, nights) = figures(app, &id, season).await?;
    if csv {
        let place = match app.store.household(&id).await? {
            Some(h) => [h.district, h.town, h.village],
            None => Default::default(),
        };
        let body = export::household_csv(&st, &place, &nights, lang)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let disposition = format!("attachment; filename=\"statement-{id}-{season}.csv\"");
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            body,
        )
            .into_response());
    }
    let mut v = if with_nights {
        export::household_json(&st, &nights)
    } else {
        export::statement_json(&st)
    };
    if let (true, Some(obj)) = (explain, v.as_object_mut()) {
        let (_, explained) = explained(app, &id, season).await?;
        let detail = explained.iter().map(export::night_detail_json).collect();
        obj.insert("explain".into(), Value::Array(detail));
    }
    Ok(Json(v).into_response())
}

async fn nights(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Json<Value>, ApiError> {
    let app = &s.0;
    let season = match q.get("season") {
        Some(name) => app.season(name)?,
        None => latest_season(app),
    };
    let (_, nights) = figures(app, &id, season).await?;
    Ok(Json(Value::Array(
        nights.iter().map(export::night_json).collect(),
    )))
}

async fn night(
    State(s): State<AppState>,
    Path((id, night)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let app = &s.0;
    let n: Night = night
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("night {night:?}: {e}")))?;
    let cal = app.calendar();
    let season = cal
        .season_of_night(n)
        .ok_or_else(|| ApiError::NotFound(format!("night {n} is outside every heating season")))?;
    let season = app.season(&season.to_string())?;
    let (_, nights) = explained(app, &id, season).await?;
    let row = nights
        .iter()
        .find(|r| r.night == n.to_string())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "night {n} of household {id} is not listed (not closed, or no meter)"
            ))
        })?;
    Ok(Json(export::night_detail_json(row)))
}

/// The figures with every night's explanation, computed on demand from the stored
/// readings by the same pure function that made the stored figures (recompute stores
/// figures only; the explanation is as large as the rest of the store together).
async fn explained(
    app: &App,
    id: &str,
    season: Season,
) -> Result<(StatementRow, Vec<NightRow>), ApiError> {
    let mut engine = Engine::new(app.policy);
    crate::recompute::compute(&app.store, &mut engine, id, season, app.clock.now(), true)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("household {id} is not in the registry")))
}

/// The stored figures, or (before the first recompute) computed on the spot.
async fn figures(
    app: &App,
    id: &str,
    season: Season,
) -> Result<(StatementRow, Vec<NightRow>), ApiError> {
    if app.store.household(id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "household {id} is not in the registry"
        )));
    }
    if let Some(st) = app.store.statement(id, &season.to_string()).await? {
        let nights = app.store.nights(id, &season.to_string()).await?;
        return Ok((st, nights));
    }
    let mut engine = Engine::new(app.policy);
    crate::recompute::compute(&app.store, &mut engine, id, season, app.clock.now(), false)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("household {id} is not in the registry")))
}

/// The running season, or the last one that started.
pub(super) fn latest_season(app: &App) -> Season {
    let cal = app.calendar();
    let now = app.clock.now();
    let year = cal.local_date(now).year();
    let s = Season { start_year: year };
    if cal.season_span(s).0 <= now {
        s
    } else {
        Season {
            start_year: year - 1,
        }
    }
}
