//! The HTTP API through the router itself (`tower::ServiceExt::oneshot`): every endpoint,
//! its 404/400 bodies, the CSV with its BOM, and the registry upload.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use qingnuan_server::engine::Engine;
use qingnuan_server::http::{app, App, AppState};
use qingnuan_server::ingest::IngestStats;
use qingnuan_server::store::{IngestTx, NewReading, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::clock::Clock;
use qingnuan_shared::policy::Policy;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tower::ServiceExt;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
const H12: i64 = 12 * 3600;
/// 2025-11-04 12:00 +08:00: nights Oct 31 .. Nov 3 have closed.
const NOW: i64 = NOV1_20 + 2 * 86_400 + 16 * 3600;

#[derive(Debug)]
struct Fixed(i64);

impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        self.0 * 1000
    }
    fn real_until(&self, _t_ms: i64) -> Duration {
        Duration::ZERO
    }
}

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m1,2025-10-01,,gw-1,\n\
    hh-2,怀柔区,雁栖镇,上辛庄村,90,air_source_heat_pump,m2,2025-10-01,,gw-1,\n\
    hh-3,延庆区,康庄镇,小丰营村,100,air_source_heat_pump,m3,2025-10-01,,gw-2,\n";

fn reading(meter: &str, ts: i64, e_wh: i64) -> NewReading {
    NewReading {
        meter: meter.into(),
        ts,
        e_wh,
        e_valley_wh: None,
        p_w: None,
        meter_ts: None,
        gateway: "gw-1".into(),
    }
}

async fn setup() -> (tempfile::TempDir, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/api.db", dir.path().display()))
        .await
        .unwrap();
    let policy = Policy::beijing_2018();
    registry::import(&store, REGISTRY.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let readings = vec![
        // hh-1: exact boundary reads: night Nov 1 = 30.000 kWh, Nov 2 = 35.500 kWh, daytime 10 kWh between
        reading("m1", NOV1_20, 1_000_000),
        reading("m1", NOV1_20 + H12, 1_030_000),
        reading("m1", NOV1_20 + 2 * H12, 1_040_000),
        reading("m1", NOV1_20 + 3 * H12, 1_075_500),
        // hh-3: reads 10 min either side of 20:00: E(20:00) = 500000 + 999 * 600 / 1200 = 500499.5 -> 500500
        reading("m3", NOV1_20 - 600, 500_000),
        reading("m3", NOV1_20 + 600, 500_999),
        reading("m3", NOV1_20 + H12, 520_500),
    ];
    let tx = IngestTx {
        readings,
        received: NOW,
        ..Default::default()
    };
    store
        .commit_ingest(&tx, |r, out| {
            let hh = if r.meter == "m1" { "hh-1" } else { "hh-3" };
            out.insert((hh.into(), "2025-2026".into()));
        })
        .await
        .unwrap();
    recompute::drain(&store, &mut Engine::new(policy), NOW)
        .await
        .unwrap();
    let state = AppState(Arc::new(App {
        store,
        policy,
        clock: Arc::new(Fixed(NOW)),
        recompute: Arc::new(Notify::new()),
        stats: Arc::new(IngestStats::default()),
        feed: None,
        sink: None,
    }));
    (dir, app(state))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ctype, bytes)
}

async fn get_json(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let (status, _, body) = call(app, "GET", uri, "").await;
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body))),
    )
}

#[tokio::test]
async fn health() {
    let (_d, app) = setup().await;
    // no ingest runs here: the broker subscription is not there
    assert_eq!(
        get_json(&app, "/api/v1/health").await,
        (
            StatusCode::OK,
            json!({"status": "ok", "mqtt": "connecting"})
        )
    );
}

#[tokio::test]
async fn household_statement_is_exact() {
    let (_d, app) = setup().await;
    let (status, v) = get_json(&app, "/api/v1/households/hh-1/seasons/2025-2026").await;
    assert_eq!(status, StatusCode::OK);
    // 65.5 kWh: city and district 65.5 x 0.10 = 6.55 yuan, valley charge 65.5 x 0.30 = 19.65 yuan;
    // nights Oct 31 (no reading before Nov 1 00:00) and Nov 3 (none after 20:00) are missing.
    assert_eq!(
        v,
        json!({"household": "hh-1", "season": "2025-2026",
               "offpeak_kwh": "65.500", "subsidised_kwh": "65.500", "cap_kwh": "10000.000",
               "cap_reached_on": null,
               "city_subsidy_yuan": "6.55", "district_subsidy_yuan": "6.55", "valley_charge_yuan": "19.65",
               "nights": {"actual": 2, "estimated": 0, "missing": 2},
               "flags": []})
    );
}

#[tokio::test]
async fn nights_list_and_detail() {
    let (_d, app) = setup().await;
    let (status, v) = get_json(&app, "/api/v1/households/hh-1/nights?season=2025-2026").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v,
        json!([
            {"night": "2025-10-31", "kwh": "0.000", "quality": "missing", "flags": []},
            {"night": "2025-11-01", "kwh": "30.000", "quality": "actual", "flags": []},
            {"night": "2025-11-02", "kwh": "35.500", "quality": "actual", "flags": []},
            {"night": "2025-11-03", "kwh": "0.000", "quality": "missing", "flags": []},
        ])
    );
    // without ?season= the running season
    assert_eq!(get_json(&app, "/api/v1/households/hh-1/nights").await.1, v);
    let (status, d) = get_json(&app, "/api/v1/households/hh-3/nights/2025-11-01").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["kwh"], "20.000");
    assert_eq!(d["quality"], "estimated");
    let start = &d["detail"]["parts"][0]["start"];
    assert_eq!(start["e_wh"], 500_500);
    assert_eq!(start["quality"], "estimated");
    assert_eq!(
        (start["r1"]["ts"].as_i64(), start["r2"]["ts"].as_i64()),
        (Some(NOV1_20 - 600), Some(NOV1_20 + 600))
    );
    assert!(
        start["method"]
            .as_str()
            .unwrap()
            .starts_with("E1 + (E2 - E1)"),
        "{start}"
    );
    assert_eq!(start["at"], "2025-11-01T20:00:00+08:00");
    assert_eq!(
        d["detail"]["parts"][0]["end"]["method"],
        "a reading at the boundary"
    );
}

#[tokio::test]
async fn explain_lists_every_night_with_its_boundaries() {
    let (_d, app) = setup().await;
    let (status, v) = get_json(&app, "/api/v1/households/hh-1/seasons/2025-2026?explain=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["offpeak_kwh"], "65.500");
    let nights = v["explain"].as_array().unwrap();
    assert_eq!(nights.len(), 4);
    let nov2 = &nights[2];
    assert_eq!(nov2["night"], "2025-11-02");
    assert_eq!(nov2["detail"]["parts"][0]["start"]["e_wh"], 1_040_000);
    assert_eq!(nov2["detail"]["parts"][0]["end"]["e_wh"], 1_075_500);
    assert_eq!(nov2["detail"]["cumulative_kwh"], "65.500");
}

#[tokio::test]
async fn a_household_without_readings_has_a_statement_of_missing_nights() {
    let (_d, app) = setup().await;
    let (status, v) = get_json(&app, "/api/v1/households/hh-2/seasons/2025-2026").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["offpeak_kwh"], "0.000");
    assert_eq!(
        v["nights"],
        json!({"actual": 0, "estimated": 0, "missing": 4})
    );
}

#[tokio::test]
async fn not_found_and_bad_request_bodies() {
    let (_d, app) = setup().await;
    let cases = [
        (
            "/api/v1/households/hh-404/seasons/2025-2026",
            StatusCode::NOT_FOUND,
            "hh-404",
        ),
        (
            "/api/v1/households/hh-404/nights?season=2025-2026",
            StatusCode::NOT_FOUND,
            "hh-404",
        ),
        (
            "/api/v1/households/hh-1/seasons/2030-2031",
            StatusCode::NOT_FOUND,
            "has not started",
        ),
        (
            "/api/v1/seasons/2030-2031/statements",
            StatusCode::NOT_FOUND,
            "has not started",
        ),
        (
            "/api/v1/households/hh-1/nights/2025-11-20",
            StatusCode::NOT_FOUND,
            "not listed",
        ),
        (
            "/api/v1/households/hh-1/nights/2025-07-01",
            StatusCode::NOT_FOUND,
            "outside every heating season",
        ),
        ("/api/v1/nowhere", StatusCode::NOT_FOUND, "no such endpoint"),
        (
            "/api/v1/households/hh-1/seasons/2025-2027",
            StatusCode::BAD_REQUEST,
            "YYYY-YYYY",
        ),
        (
            "/api/v1/households/hh-1/seasons/last",
            StatusCode::BAD_REQUEST,
            "season \"last\"",
        ),
        (
            "/api/v1/households/hh-1/nights?season=25-26",
            StatusCode::BAD_REQUEST,
            "season",
        ),
        (
            "/api/v1/households/hh-1/nights/2025-13-01",
            StatusCode::BAD_REQUEST,
            "YYYY-MM-DD",
        ),
        (
            "/api/v1/households/hh-1/seasons/2025-2026?explain=yes",
            StatusCode::BAD_REQUEST,
            "explain",
        ),
        (
            "/api/v1/seasons/2025-2026/statements?format=xml",
            StatusCode::BAD_REQUEST,
            "format",
        ),
    ];
    for (uri, want, text) in cases {
        let (status, v) = get_json(&app, uri).await;
        assert_eq!(status, want, "{uri}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{uri}: no error string in {v}"));
        assert!(msg.contains(text), "{uri}: {msg:?} lacks {text:?}");
    }
}

#[tokio::test]
async fn season_statements_json_with_filters() {
    let (_d, app) = setup().await;
    let (status, v) = get_json(&app, "/api/v1/seasons/2025-2026/statements").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["household"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["hh-1", "hh-2", "hh-3"]);
    assert_eq!(v[0]["offpeak_kwh"], "65.500");
    assert_eq!(v[2]["offpeak_kwh"], "20.000");
    let by_district = get_json(
        &app,
        "/api/v1/seasons/2025-2026/statements?district=%E5%BB%B6%E5%BA%86%E5%8C%BA",
    )
    .await
    .1;
    assert_eq!(by_district.as_array().unwrap().len(), 1);
    assert_eq!(by_district[0]["household"], "hh-3");
    let by_village =
        get_json(&app, "/api/v1/seasons/2025-2026/statements?district=&village=%E4%B8%8A%E8%BE%9B%E5%BA%84%E6%9D%91&format=json")
            .await
            .1;
    assert_eq!(
        by_village
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["household"].clone())
            .collect::<Vec<_>>(),
        vec![json!("hh-2")]
    );
}

#[tokio::test]
async fn season_statements_csv_has_bom_and_exact_figures() {
    let (_d, app) = setup().await;
    let (status, ctype, body) = call(
        &app,
        "GET",
        "/api/v1/seasons/2025-2026/statements?format=csv",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "text/csv; charset=utf-8");
    assert_eq!(&body[..3], b"\xEF\xBB\xBF");
    let text = String::from_utf8(body[3..].to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], "household,district,town,village,season,offpeak_kwh,subsidised_kwh,cap_kwh,cap_reached_on,city_subsidy_yuan,district_subsidy_yuan,valley_charge_yuan,nights_actual,nights_estimated,nights_missing,flags");
    assert_eq!(
        lines[1],
        "hh-1,怀柔区,雁栖镇,下辛庄村,2025-2026,65.500,65.500,10000.000,,6.55,6.55,19.65,2,0,2,"
    );
    // 20 kWh: 2.00 + 2.00 yuan subsidy, 6.00 yuan charge; one estimated night (Nov 1)
    assert!(
        lines[3].starts_with(
            "hh-3,延庆区,康庄镇,小丰营村,2025-2026,20.000,20.000,10000.000,,2.00,2.00,6.00,0,1,"
        ),
        "{}",
        lines[3]
    );
}

#[tokio::test]
async fn registry_upload_updates_and_reports_row_errors() {
    let (_d, app) = setup().await;
    let again = call(&app, "POST", "/api/v1/registry", REGISTRY).await;
    assert_eq!(again.0, StatusCode::OK);
    let v: Value = serde_json::from_slice(&again.2).unwrap();
    assert_eq!(v["unchanged"], 6);
    assert_eq!(v["households_added"], 0);
    let more = format!(
        "{REGISTRY}hh-4,延庆区,康庄镇,小丰营村,100,air_source_heat_pump,m4,2025-10-01,,gw-2,\n"
    );
    let (status, _, body) = call(&app, "POST", "/api/v1/registry", &more).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["households_added"].as_i64(), v["meters_added"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        get_json(&app, "/api/v1/households/hh-4/seasons/2025-2026")
            .await
            .0,
        StatusCode::OK
    );
    let bad = format!(
        "{REGISTRY}hh-5,延庆区,康庄镇,小丰营村,100,air_source_heat_pump,m5,2025-10-01,,gw-2,lots\n"
    );
    let (status, _, body) = call(&app, "POST", "/api/v1/registry", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["rows"][0],
        json!({"row": 5, "column": "max_power_w", "message": "\"lots\" is not a positive whole number of watts"})
    );
    assert!(v["error"]
        .as_str()
        .unwrap()
        .starts_with("row 5, column max_power_w"));
    assert_eq!(
        get_json(&app, "/api/v1/households/hh-5/seasons/2025-2026")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn quarantine_counts_endpoint() {
    let (_d, app) = setup().await;
    let (status, v) = get_json(&app, "/api/v1/quarantine").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["total"], 0);
}
