//! The one error type of the API: 404 and 400 carry `{"error": …}` with the reason;
//! 5xx bodies stay generic while the cause is logged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::registry::{ImportError, RowError};
use crate::store::StoreError;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Unknown household, season, night or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// Malformed input, with the reason.
    #[error("{0}")]
    BadRequest(String),
    /// A registry CSV with row/column errors.
    #[error("the registry CSV has errors")]
    BadCsv(Vec<RowError>),
    /// The server failed (logged, not shown).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Invalid(rows) => ApiError::BadCsv(rows),
            ImportError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::BadCsv(rows) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": rows.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "rows": rows.iter().map(|r| json!({"row": r.row, "column": r.column, "message": r.message})).collect::<Vec<_>>(),
                }),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
