//! Every household's statement of a season, as JSON or as the finance CSV (`lang=zh|en`
//! headers).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::export;

/// `lang=zh|en` (CSV headers), default `en`.
pub(super) fn lang_of(q: &HashMap<String, String>) -> Result<export::Lang, ApiError> {
    q.get("lang")
        .filter(|v| !v.is_empty())
        .map_or(Ok(export::Lang::En), |v| {
            v.parse().map_err(ApiError::BadRequest)
        })
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/api/v1/seasons/{season}/statements", get(statements))
}

async fn statements(
    State(s): State<AppState>,
    Path(season): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let app = &s.0;
    let season = app.season(&season)?;
    let filter = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let rows = app
        .store
        .statements(&season.to_string(), filter("district"), filter("village"))
        .await?;
    let lang = lang_of(&q)?;
    match q.get("format").map(String::as_str) {
        None | Some("json") => Ok(Json(export::statements_json(&rows)).into_response()),
        Some("csv") => {
            let body = export::statements_csv_lang(&rows, lang)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let disposition = format!("attachment; filename=\"statements-{season}.csv\"");
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                body,
            )
                .into_response())
        }
        Some(other) => Err(ApiError::BadRequest(format!(
            "format={other:?}: expected json or csv"
        ))),
    }
}
