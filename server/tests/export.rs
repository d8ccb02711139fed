//! Finance exports read back with a real CSV parser (the `csv` crate): the season
//! statements (English and Chinese headers, district/village filters) and the
//! per-household statement (a row per night with its quality, then the total) carry the
//! API's figures; the CLI writes the same bytes as the API.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use qingnuan_server::engine::Engine;
use qingnuan_server::export::{CSV_COLUMNS, CSV_COLUMNS_ZH, HOUSEHOLD_CSV_COLUMNS_ZH};
use qingnuan_server::http::{app, App, AppState};
use qingnuan_server::ingest::IngestStats;
use qingnuan_server::store::{IngestTx, NewReading, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::clock::Clock;
use qingnuan_shared::policy::Policy;
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

const BIN: &str = env!("CARGO_BIN_EXE_qingnuan-server");
/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
const H12: i64 = 12 * 3600;
/// 2025-11-05 12:00 +08:00: nights up to Nov 4 have closed.
const NOW: i64 = NOV1_20 + 3 * 86_400 + 16 * 3600;

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m1,2025-10-01,,gw-1,\n\
    hh-2,怀柔区,雁栖镇,上辛庄村,90,air_source_heat_pump,m2,2025-10-01,,gw-1,\n\
    hh-3,延庆区,康庄镇,小丰营村,100,air_source_heat_pump,m3,2025-10-01,,gw-2,\n\
    hh-4,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,m4,2025-10-01,,gw-1,\n";

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

struct Fixture {
    dir: tempfile::TempDir,
    router: axum::Router,
}

async fn setup() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("export.db");
    std::fs::write(
        dir.path().join("server.toml"),
        format!("[store]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .unwrap();
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let policy = Policy::beijing_2018();
    registry::import(&store, REGISTRY.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let mut readings = Vec::new();
    // hh-1, hh-4: boundary reads every 12 h (different draws by day and night); hh-3:
    // Nov 1 and Nov 3 only (Nov 2 estimated or missing); hh-2: nothing.
    for (meter, k) in [("m1", 1), ("m4", 4)] {
        let mut e = 1_000_000 * k;
        for i in 0..8 {
            readings.push(NewReading {
                meter: meter.into(),
                ts: NOV1_20 + i * H12,
                e_wh: e,
                e_valley_wh: None,
                p_w: None,
                meter_ts: None,
                gateway: "gw-1".into(),
            });
            e += if i % 2 == 0 { 30_123 * k } else { 7_001 };
        }
    }
    for (ts, e) in [
        (NOV1_20, 500_000),
        (NOV1_20 + H12, 520_500),
        (NOV1_20 + 4 * H12, 560_000),
        (NOV1_20 + 5 * H12, 581_234),
    ] {
        readings.push(NewReading {
            meter: "m3".into(),
            ts,
            e_wh: e,
            e_valley_wh: None,
            p_w: None,
            meter_ts: None,
            gateway: "gw-2".into(),
        });
    }
    let tx = IngestTx {
        readings,
        received: NOW,
        ..Default::default()
    };
    store
        .commit_ingest(&tx, |r, out| {
            out.insert((r.meter.replace('m', "hh-"), "2025-2026".into()));
        })
        .await
        .unwrap();
    recompute::drain(&store, &mut Engine::new(policy), NOW)
        .await
        .unwrap();
    let router = app(AppState(Arc::new(App {
        store,
        policy,
        clock: Arc::new(Fixed(NOW)),
        recompute: Arc::new(Notify::new()),
        stats: Arc::new(IngestStats::default()),
        feed: None,
        sink: None,
    })));
    Fixture { dir, router }
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes)
}

async fn json(router: &axum::Router, uri: &str) -> Value {
    let (status, bytes) = get(router, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}");
    serde_json::from_slice(&bytes).unwrap()
}

/// Parses a CSV with its BOM: (headers, rows).
fn parse(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let body = bytes
        .strip_prefix("\u{feff}".as_bytes())
        .expect("UTF-8 BOM");
    let mut r = csv::Reader::from_reader(body);
    let headers = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect();
    (headers, rows)
}

fn url(s: &str) -> String {
    qingnuan_server::feed::payload::pct(s)
}

#[tokio::test]
async fn statements_csv_in_both_languages_equals_the_api() {
    let f = setup().await;
    let api = json(&f.router, "/api/v1/seasons/2025-2026/statements").await;
    let api: BTreeMap<String, Value> = api
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["household"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    assert_eq!(api.len(), 4);
    let (status, en) = get(&f.router, "/api/v1/seasons/2025-2026/statements?format=csv").await;
    assert_eq!(status, StatusCode::OK);
    let (_, zh) = get(
        &f.router,
        "/api/v1/seasons/2025-2026/statements?format=csv&lang=zh",
    )
    .await;
    let (h_en, rows_en) = parse(&en);
    let (h_zh, rows_zh) = parse(&zh);
    assert_eq!(h_en, CSV_COLUMNS);
    assert_eq!(h_zh, CSV_COLUMNS_ZH);
    assert_eq!(h_zh[5], "低谷电量(千瓦时)");
    assert_eq!(rows_en, rows_zh, "only the headers differ");
    assert_eq!(rows_en.len(), 4);
    for row in &rows_en {
        let cell = |name: &str| &row[CSV_COLUMNS.iter().position(|c| *c == name).unwrap()];
        let s = &api[cell("household")];
        for col in [
            "season",
            "offpeak_kwh",
            "subsidised_kwh",
            "cap_kwh",
            "city_subsidy_yuan",
            "district_subsidy_yuan",
            "valley_charge_yuan",
        ] {
            assert_eq!(cell(col), s[col].as_str().unwrap(), "{col}");
        }
        for q in ["actual", "estimated", "missing"] {
            assert_eq!(cell(&format!("nights_{q}")), &s["nights"][q].to_string());
        }
    }
    let hh1 = &api["hh-1"];
    assert_ne!(hh1["offpeak_kwh"], "0.000", "hh-1 has figures");
    // Filters: one district, one village.
    let (_, d) = get(
        &f.router,
        &format!(
            "/api/v1/seasons/2025-2026/statements?format=csv&district={}",
            url("怀柔区")
        ),
    )
    .await;
    let ids: Vec<String> = parse(&d).1.into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["hh-1", "hh-2", "hh-4"]);
    let (_, v) = get(
        &f.router,
        &format!(
            "/api/v1/seasons/2025-2026/statements?format=csv&lang=zh&village={}",
            url("下辛庄村")
        ),
    )
    .await;
    let ids: Vec<String> = parse(&v).1.into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["hh-1", "hh-4"]);
    let (status, body) = get(
        &f.router,
        "/api/v1/seasons/2025-2026/statements?format=csv&lang=fr",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("lang"));
}

#[tokio::test]
async fn household_statement_csv_has_each_night_and_its_quality() {
    let f = setup().await;
    for id in ["hh-1", "hh-3"] {
        let st = json(
            &f.router,
            &format!("/api/v1/households/{id}/seasons/2025-2026"),
        )
        .await;
        let nights = json(
            &f.router,
            &format!("/api/v1/households/{id}/nights?season=2025-2026"),
        )
        .await;
        let nights = nights.as_array().unwrap();
        let with = json(
            &f.router,
            &format!("/api/v1/households/{id}/seasons/2025-2026?nights=1"),
        )
        .await;
        assert_eq!(with["each_night"].as_array().unwrap(), nights);
        assert_eq!(with["offpeak_kwh"], st["offpeak_kwh"]);
        let (status, en) = get(
            &f.router,
            &format!("/api/v1/households/{id}/seasons/2025-2026?format=csv"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (headers, rows) = parse(&en);
        assert_eq!(headers[5], "night");
        assert_eq!(rows.len(), nights.len() + 1);
        let mut cumulative = 0;
        for (row, n) in rows.iter().zip(nights) {
            assert_eq!(row[0], id);
            assert_eq!(row[5], n["night"].as_str().unwrap());
            assert_eq!(row[6], n["kwh"].as_str().unwrap());
            assert_eq!(row[7], n["quality"].as_str().unwrap());
            cumulative += row[6].replace('.', "").parse::<i64>().unwrap();
            assert_eq!(row[9].replace('.', "").parse::<i64>().unwrap(), cumulative);
        }
        let total = rows.last().unwrap();
        assert_eq!(total[5], "total");
        assert_eq!(total[6], st["offpeak_kwh"].as_str().unwrap());
        assert_eq!(total[10], st["subsidised_kwh"].as_str().unwrap());
        assert_eq!(total[11], st["city_subsidy_yuan"].as_str().unwrap());
        assert_eq!(total[12], st["district_subsidy_yuan"].as_str().unwrap());
        // Chinese: headers and qualities translated, figures the same.
        let (_, zh) = get(
            &f.router,
            &format!("/api/v1/households/{id}/seasons/2025-2026?format=csv&lang=zh"),
        )
        .await;
        let (headers, rows_zh) = parse(&zh);
        assert_eq!(headers, HOUSEHOLD_CSV_COLUMNS_ZH);
        for (a, b) in rows.iter().zip(&rows_zh) {
            let want = match a[7].as_str() {
                "actual" => "实测",
                "estimated" => "估算",
                "missing" => "缺失",
                other => other,
            };
            assert_eq!(b[7], want);
            assert_eq!(a[6], b[6]);
        }
        assert_eq!(rows_zh.last().unwrap()[5], "合计");
    }
    // hh-3 has nights of more than one quality, so the column carries information.
    let (_, bytes) = get(
        &f.router,
        "/api/v1/households/hh-3/seasons/2025-2026?format=csv",
    )
    .await;
    let qualities: std::collections::BTreeSet<String> =
        parse(&bytes).1.iter().map(|r| r[7].clone()).collect();
    assert!(
        qualities.contains("actual") && qualities.len() >= 3,
        "{qualities:?}"
    );
    let (status, _) = get(
        &f.router,
        "/api/v1/households/hh-1/seasons/2025-2026?format=xml",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_cli_writes_the_same_bytes_as_the_api() {
    let f = setup().await;
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["export", "--config", "server.toml", "--season", "2025-2026"])
            .args(args)
            .current_dir(f.dir.path())
            .env("QINGNUAN_CLOCK", format!("start={NOW},speed=1"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let district = url("怀柔区");
    for (args, uri) in [
        (
            vec!["--lang", "zh", "--district", "怀柔区"],
            format!("/api/v1/seasons/2025-2026/statements?format=csv&lang=zh&district={district}"),
        ),
        (
            vec!["--household", "hh-3", "--lang", "zh"],
            "/api/v1/households/hh-3/seasons/2025-2026?format=csv&lang=zh".to_string(),
        ),
        (
            vec!["--household", "hh-1"],
            "/api/v1/households/hh-1/seasons/2025-2026?format=csv".to_string(),
        ),
    ] {
        let (status, api) = get(&f.router, &uri).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            String::from_utf8(cli(&args)).unwrap(),
            String::from_utf8(api).unwrap(),
            "{args:?}"
        );
    }
    let json_cli: Value =
        serde_json::from_slice(&cli(&["--household", "hh-1", "--format", "json"])).unwrap();
    let json_api = json(
        &f.router,
        "/api/v1/households/hh-1/seasons/2025-2026?nights=1",
    )
    .await;
    assert_eq!(json_cli, json_api);
}
