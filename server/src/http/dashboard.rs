//! The operator dashboard at `/`: an HTML shell, one small script and one stylesheet,
//! compiled into the binary (`include_str!`) so it works offline with no CDN.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(ctype: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The shell, in Chinese unless `?lang=en` (the script keeps the choice afterwards).
async fn index(Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let lang = match q.get("lang").map(String::as_str) {
        Some("en") => "en",
        _ => "zh",
    };
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(INDEX_HTML.replace("{{lang}}", lang)),
    )
}
