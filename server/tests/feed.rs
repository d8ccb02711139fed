//! The city feed against a local platform receiver that checks HMAC signatures, fails
//! every third request and is down for a while: over four nights (one corrected by late
//! readings) every batch arrives exactly once by idempotency key, every body matches the
//! JSON Schema, and the figures equal the API's.

mod feed_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use feed_support::{check_schema, Receiver};
use http_body_util::BodyExt;
use qingnuan_server::engine::Engine;
use qingnuan_server::feed::{Feed, FeedConfig};
use qingnuan_server::http::{app, App, AppState};
use qingnuan_server::ingest::IngestStats;
use qingnuan_server::monitor::{Monitor, MonitorConfig};
use qingnuan_server::store::{IngestTx, NewReading, ReadFailure, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::clock::Clock;
use qingnuan_shared::policy::Policy;
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
/// First reading: Nov 1 19:00.
const T0: i64 = NOV1_20 - 3600;
const DAY: i64 = 86_400;
const KEY: &[u8] = b"city-feed-test-key";

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-0,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m0,2025-10-01,,gw-1,\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,90,air_source_heat_pump,m1,2025-10-01,,gw-1,\n\
    hh-2,怀柔区,雁栖镇,上辛庄村,100,air_source_heat_pump,m2,2025-10-01,,gw-1,\n\
    hh-3,怀柔区,雁栖镇,上辛庄村,100,air_source_heat_pump,m3,2025-10-01,,gw-1,\n\
    hh-4,延庆区,康庄镇,小丰营村,100,air_source_heat_pump,m4,2025-10-01,,gw-2,\n\
    hh-5,延庆区,康庄镇,小丰营村,100,air_source_heat_pump,m5,2025-10-01,,gw-2,\n";

/// Meter `k` draws a constant `(20 + 7k)` Wh a minute from T0.
fn e_wh(k: i64, t: i64) -> i64 {
    1_000_000 * (k + 1) + (t - T0) / 60 * (20 + 7 * k)
}

/// When night `i` (Nov 1 + i) is pushed: 09:00 the next day.
fn push(i: i64) -> i64 {
    NOV1_20 + i * DAY + 13 * 3600
}

/// m5's readings from Nov 2 19:00 to Nov 3 19:00 arrive late, on the last day.
fn withheld(k: i64, t: i64) -> bool {
    k == 5 && (T0 + DAY..T0 + 2 * DAY).contains(&t)
}

#[derive(Debug)]
struct Manual(AtomicI64);

impl Clock for Manual {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst) * 1000
    }
    fn real_until(&self, _t_ms: i64) -> Duration {
        Duration::from_millis(1)
    }
}

async fn get(router: &axum::Router, uri: &str) -> Value {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// "12.345" → 12345 (kWh with 3 decimals → Wh; yuan with 2 decimals → fen).
fn scaled(s: &str) -> i64 {
    s.replace('.', "").parse().unwrap()
}

fn enc(s: &str) -> String {
    qingnuan_server::feed::payload::pct(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_arrives_exactly_once_and_equals_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/feed.db", dir.path().display()))
        .await
        .unwrap();
    let policy = Policy::beijing_2018();
    registry::import(&store, REGISTRY.as_bytes(), &policy, "test", T0)
        .await
        .unwrap();
    let receiver = Receiver::start(KEY).await;
    let key_file = dir.path().join("feed.key");
    std::fs::write(
        &key_file,
        format!("{}\n", std::str::from_utf8(KEY).unwrap()),
    )
    .unwrap();
    let table: toml::Table = format!(
        "url = \"{}\"\nkey_file = \"{}\"\npush_hour = 9\ncorrection_days = 7\npoll_s = 60\n\
         regenerate_s = 3600\ninitial_backoff_s = 60\nmax_backoff_s = 600\ntimeout_s = 5\n",
        receiver.url,
        key_file.display()
    )
    .parse()
    .unwrap();
    let monitor = Monitor::new(store.clone(), policy, MonitorConfig::default());
    let feed = Feed::new(
        FeedConfig::from_table(&table).unwrap(),
        store.clone(),
        monitor.clone(),
    )
    .unwrap();
    let stats = feed.stats();
    let mut engine = Engine::new(policy);
    let mut ingested_until = T0 - 1;
    let mut saw_outage = false;
    for day in 0..4 {
        let mut t = push(day);
        // What arrived since the last day (and, on the last day, m5's late readings).
        let mut readings = Vec::new();
        for k in 0..6 {
            let mut ts = T0;
            while ts <= t {
                let new = ts > ingested_until && !withheld(k, ts);
                let late = day == 3 && withheld(k, ts);
                if new || late {
                    readings.push(NewReading {
                        meter: format!("m{k}"),
                        ts,
                        e_wh: e_wh(k, ts),
                        e_valley_wh: None,
                        p_w: Some(1200 + 420 * k),
                        meter_ts: Some(ts),
                        gateway: if k < 4 { "gw-1" } else { "gw-2" }.into(),
                    });
                }
                ts += 900;
            }
        }
        ingested_until = t;
        // On the last day m3 fails three reads in a row: a meter_silent alarm, which the
        // batches count as maintenance outstanding.
        let failures = (1..=3)
            .filter(|_| day == 3)
            .map(|i| ReadFailure {
                meter: "m3".into(),
                ts: t + i,
                err: "timeout".into(),
                gateway: "gw-1".into(),
            })
            .collect();
        let tx = IngestTx {
            readings,
            failures,
            received: t,
            ..Default::default()
        };
        store
            .commit_ingest(&tx, |r, out| {
                out.insert((r.meter.replace('m', "hh-"), "2025-2026".into()));
            })
            .await
            .unwrap();
        monitor.on_ingest(&tx, &[]).await.unwrap();
        recompute::drain(&store, &mut engine, t).await.unwrap();
        // Alarms (maintenance outstanding) as the monitor task would raise them.
        monitor.tick(t).await.unwrap();
        // The platform is down for the first 20 minutes of the third day.
        receiver.seen.down.store(day == 2, Ordering::SeqCst);
        for step in 0..240 {
            if day == 2 && step == 20 {
                let (pending, _) = store.feed_pending().await.unwrap();
                assert!(pending > 0, "an outage leaves batches pending");
                assert!(stats.oldest_pending_age_s.load(Ordering::SeqCst) >= 19 * 60);
                saw_outage = true;
                receiver.seen.down.store(false, Ordering::SeqCst);
            }
            feed.tick(t).await.unwrap();
            if store.feed_pending().await.unwrap().0 == 0 && !(day == 2 && step < 20) {
                break;
            }
            t += 60;
        }
        assert_eq!(
            store.feed_pending().await.unwrap().0,
            0,
            "day {day}: all delivered"
        );
        // Building the same nights again enqueues nothing.
        assert_eq!(feed.generate(t).await.unwrap(), 0, "day {day}");
    }
    assert!(saw_outage);
    eprintln!(
        "feed test: {} requests, {} refused (every third), {} refused (down), {} batches",
        receiver.seen.requests.load(Ordering::SeqCst),
        receiver.seen.refused_third.load(Ordering::SeqCst),
        receiver.seen.refused_down.load(Ordering::SeqCst),
        store.feed_outbox().await.unwrap().len()
    );
    let seen = &receiver.seen;
    assert_eq!(seen.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(seen.bad_keys.load(Ordering::SeqCst), 0);
    assert_eq!(
        seen.duplicates.load(Ordering::SeqCst),
        0,
        "nothing arrived twice"
    );
    assert!(seen.refused_third.load(Ordering::SeqCst) > 3);
    assert!(seen.refused_down.load(Ordering::SeqCst) > 0);

    // Exactly once: the accepted keys are the outbox's keys, bodies byte-for-byte.
    let outbox = store.feed_outbox().await.unwrap();
    let accepted = receiver.accepted();
    assert_eq!(
        outbox
            .iter()
            .map(|r| r.key.clone())
            .collect::<BTreeSet<_>>(),
        accepted.keys().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(outbox.len(), accepted.len());
    for r in &outbox {
        assert!(r.delivered.is_some(), "{}", r.key);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(accepted[&r.key], body, "{}", r.key);
    }
    let failed =
        seen.refused_third.load(Ordering::SeqCst) + seen.refused_down.load(Ordering::SeqCst);
    assert_eq!(stats.failed_attempts.load(Ordering::SeqCst), failed);
    assert_eq!(
        stats.delivered.load(Ordering::SeqCst),
        u64::try_from(outbox.len()).unwrap()
    );
    assert_eq!(
        outbox.iter().map(|r| r.attempts).sum::<i64>(),
        i64::try_from(seen.requests.load(Ordering::SeqCst)).unwrap()
    );

    // Every body matches the published schema.
    let schema: Value =
        serde_json::from_str(include_str!("../../docs/city-feed.schema.json")).unwrap();
    for (k, v) in &accepted {
        let mut errs = Vec::new();
        check_schema(&schema, &schema, v, "$", &mut errs);
        assert!(errs.is_empty(), "{k}: {errs:?}");
    }
    // ... and the check would see a broken one.
    let sample = accepted.values().next().unwrap();
    for (path, bad) in [
        ("/night_totals/offpeak_wh", serde_json::json!(-1)),
        ("/kind", serde_json::json!("town")),
        ("/operation/gateways_online", serde_json::json!("1")),
    ] {
        let mut broken = sample.clone();
        *broken.pointer_mut(path).unwrap() = bad;
        let mut errs = Vec::new();
        check_schema(&schema, &schema, &broken, "$", &mut errs);
        assert!(!errs.is_empty(), "{path}");
    }
    let mut extra = sample.clone();
    extra["unexpected"] = Value::Null;
    let mut errs = Vec::new();
    check_schema(&schema, &schema, &extra, "$", &mut errs);
    assert!(!errs.is_empty());

    // Nights Oct 31 .. Nov 4 were pushed, 3 villages and 2 districts each; hh-5's late
    // readings corrected Nov 2 of 小丰营村 and 延庆区.
    let first: Vec<&Value> = accepted.values().filter(|v| v["revision"] == 0).collect();
    let nights: BTreeSet<&str> = first.iter().map(|v| v["night"].as_str().unwrap()).collect();
    assert_eq!(
        nights.into_iter().collect::<Vec<_>>(),
        vec![
            "2025-10-31",
            "2025-11-01",
            "2025-11-02",
            "2025-11-03",
            "2025-11-04"
        ]
    );
    assert_eq!(first.len(), 5 * 5);
    let xiaofeng = format!(
        "village:{}/{}/{}",
        enc("延庆区"),
        enc("康庄镇"),
        enc("小丰营村")
    );
    let corrections: Vec<&Value> = accepted
        .values()
        .filter(|v| v["revision"].as_i64() > Some(0))
        .collect();
    assert!(
        corrections.iter().any(|v| v["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{xiaofeng}:2025-11-02:r"))),
        "{:?}",
        corrections
            .iter()
            .map(|v| &v["idempotency_key"])
            .collect::<Vec<_>>()
    );
    for c in &corrections {
        let prev = c["corrects"].as_str().unwrap();
        assert_eq!(
            accepted[prev]["revision"].as_i64().unwrap() + 1,
            c["revision"].as_i64().unwrap()
        );
        assert_eq!(accepted[prev]["night"], c["night"]);
    }

    // The newest revision of each (subject, night) carries the API's figures.
    let now = push(3);
    let clock = Arc::new(Manual(AtomicI64::new(now)));
    let router = app(AppState(Arc::new(App {
        store: store.clone(),
        policy,
        clock: clock.clone(),
        recompute: Arc::new(Notify::new()),
        stats: Arc::new(IngestStats::default()),
        feed: Some(stats.clone()),
        sink: None,
    })));
    let mut newest: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for v in accepted.values() {
        let k = v["idempotency_key"].as_str().unwrap();
        let subject = k.rsplitn(3, ':').nth(2).unwrap().to_string();
        let e = newest
            .entry((subject, v["night"].as_str().unwrap().into()))
            .or_insert(v);
        if v["revision"].as_i64() > e["revision"].as_i64() {
            *e = v;
        }
    }
    let mut api_nights = BTreeMap::new();
    for k in 0..6 {
        let hh = format!("hh-{k}");
        let list = get(
            &router,
            &format!("/api/v1/households/{hh}/nights?season=2025-2026"),
        )
        .await;
        for n in list.as_array().unwrap() {
            api_nights.insert(
                (hh.clone(), n["night"].as_str().unwrap().to_string()),
                n.clone(),
            );
        }
    }
    let mut checked = 0;
    for ((_, night), v) in &newest {
        if v["kind"] != "village" {
            continue;
        }
        let mut sum = 0;
        for h in v["households"].as_array().unwrap() {
            let api = &api_nights[&(h["household"].as_str().unwrap().to_string(), night.clone())];
            assert_eq!(h["offpeak_kwh"], api["kwh"]);
            assert_eq!(h["quality"], api["quality"]);
            assert_eq!(
                h["offpeak_wh"].as_i64().unwrap(),
                scaled(api["kwh"].as_str().unwrap())
            );
            sum += h["offpeak_wh"].as_i64().unwrap();
            checked += 1;
        }
        assert_eq!(v["night_totals"]["offpeak_wh"].as_i64().unwrap(), sum);
    }
    assert_eq!(checked, 5 * 6);
    let hh5 = &api_nights[&("hh-5".to_string(), "2025-11-02".to_string())];
    assert_eq!(
        hh5["quality"], "actual",
        "the late readings made Nov 2 actual"
    );
    assert_eq!(scaled(hh5["kwh"].as_str().unwrap()), 12 * 60 * (20 + 35));

    // Season to date (Nov 4's batches, built after the last readings) and operation (at
    // the instant they were built) equal the statements and progress endpoints.
    let progress = get(&router, "/api/v1/progress").await;
    let mut total_alarms = 0;
    for ((_, night), v) in newest.iter().filter(|(k, _)| k.1 == "2025-11-04") {
        assert_eq!(night, "2025-11-04");
        let q = match v["kind"].as_str().unwrap() {
            "village" => format!("village={}", enc(v["village"].as_str().unwrap())),
            _ => format!("district={}", enc(v["district"].as_str().unwrap())),
        };
        let st = get(
            &router,
            &format!("/api/v1/seasons/2025-2026/statements?{q}"),
        )
        .await;
        let st = st.as_array().unwrap();
        let sum = |f: &str| {
            st.iter()
                .map(|s| scaled(s[f].as_str().unwrap()))
                .sum::<i64>()
        };
        let s = &v["season_to_date"];
        assert_eq!(s["households"].as_u64().unwrap(), st.len() as u64);
        assert_eq!(s["offpeak_wh"].as_i64().unwrap(), sum("offpeak_kwh"));
        assert_eq!(s["subsidised_wh"].as_i64().unwrap(), sum("subsidised_kwh"));
        assert_eq!(
            s["city_subsidy_fen"].as_i64().unwrap(),
            sum("city_subsidy_yuan")
        );
        assert_eq!(
            s["district_subsidy_fen"].as_i64().unwrap(),
            sum("district_subsidy_yuan")
        );
        assert_eq!(
            s["subsidy_fen"].as_i64().unwrap(),
            sum("city_subsidy_yuan") + sum("district_subsidy_yuan")
        );
        assert!(s["subsidy_fen"].as_i64().unwrap() > 0);
        let district = progress["districts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["district"] == v["district"])
            .unwrap();
        let (want, got) = if v["kind"] == "village" {
            let vil = district["villages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["village"] == v["village"])
                .unwrap();
            (
                [&vil["enrolled"], &vil["live"], &vil["running"]],
                &v["operation"],
            )
        } else {
            (
                [
                    &district["households_enrolled"],
                    &district["households_live"],
                    &district["households_running"],
                ],
                &v["operation"],
            )
        };
        assert_eq!(
            [
                &got["households_enrolled"],
                &got["households_live"],
                &got["heat_pumps_running"]
            ],
            want,
            "{}",
            v["idempotency_key"]
        );
        assert!(got["households_enrolled"].as_u64().unwrap() >= 2);
        let alarms = get(&router, &format!("/api/v1/alarms?state=open&{q}")).await;
        let alarms = alarms.as_array().unwrap().len() as u64;
        assert_eq!(got["alarms_open"].as_u64().unwrap(), alarms, "{q}");
        total_alarms += alarms;
    }
    // 上辛庄村 and 怀柔区 each count m3's alarm.
    assert_eq!(total_alarms, 2);
}
