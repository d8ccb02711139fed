//! 10,000 malformed MQTT messages through a real Mosquitto, with a good reading after
//! every hundredth: the server stays up, every bad message is quarantined exactly once
//! with its reason and counted, and the good readings still make the night's figure.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use qingnuan_server::config::Config;
use qingnuan_server::registry;
use qingnuan_server::store::Store;
use qingnuan_shared::clock::ScaledClock;
use qingnuan_shared::policy::Policy;
use qingnuan_tests::broker::Broker;
use serde_json::Value;

const BAD: usize = 10_000;
const GOOD: usize = 100;

/// The `i`-th malformed message (each distinct) and the one quarantine reason it earns.
fn malformed(i: usize) -> (String, Vec<u8>, &'static str) {
    let readings = "qn/v1/gw/gw-1/readings".to_string();
    let env =
        |rs: &str| format!(r#"{{"v":1,"gw":"gw-1","seq":{i},"boot":"hostile","readings":[{rs}]}}"#);
    match i % 12 {
        0 => (
            readings,
            format!("garbage {i} \u{7f}").into_bytes(),
            "not_json",
        ),
        1 => (
            readings,
            format!(r#"{{"v":1,"gw":"gw-1","seq":{i},"boot":"b","readings":["#).into_bytes(),
            "not_json",
        ),
        2 => (
            readings,
            format!(r#"{{"v":"one","gw":"gw-1","seq":{i},"boot":"b","readings":[]}}"#).into_bytes(),
            "bad_envelope",
        ),
        3 => (
            format!("qn/v1/gw/gw-zz{i}/readings"),
            format!(r#"{{"v":1,"gw":"gw-zz{i}","seq":1,"boot":"b","readings":[]}}"#).into_bytes(),
            "unknown_gateway",
        ),
        4 => (
            format!("qn/v1/gw/Bad_{i}/readings"),
            b"{}".to_vec(),
            "bad_topic",
        ),
        5 => (
            readings,
            env(&format!(r#"{{"meter":"m0","ts":{},"e_wh":-{i}}}"#, NOV1_20)).into_bytes(),
            "negative",
        ),
        6 => (
            readings,
            env(&format!(r#"{{"meter":"x{i}","ts":{},"e_wh":5}}"#, NOV1_20)).into_bytes(),
            "unbound_meter",
        ),
        7 => {
            let deep = format!("{}{i}{}", "[".repeat(400), "]".repeat(400));
            (
                readings,
                format!(r#"{{"v":1,"gw":"gw-1","seq":{i},"boot":"b","readings":{deep}}}"#)
                    .into_bytes(),
                "not_json",
            )
        }
        8 if i % 1000 == 8 => {
            let mut p = env("").into_bytes();
            p.extend(std::iter::repeat_n(b' ', 70 * 1024));
            (readings, p, "too_large")
        }
        8 => (
            "qn/v1/gw/gw-1/status".to_string(),
            format!(r#"{{"v":1,"gw":"gw-1","state":"exploded{i}"}}"#).into_bytes(),
            "bad_envelope",
        ),
        9 => (
            readings,
            env(&format!(
                r#"{{"meter":"m0","ts":{},"e_wh":{i}}}"#,
                NOW + 10_000_000
            ))
            .into_bytes(),
            "future_ts",
        ),
        10 => {
            let mut p = format!(r#"{{"v":1,"gw":"gw-1","seq":{i},"boot":""#).into_bytes();
            p.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
            (readings, p, "not_json")
        }
        _ => (
            readings,
            env(&format!(
                r#"{{"meter":"m0","ts":{},"e_wh":"lots{i}"}}"#,
                NOV1_20
            ))
            .into_bytes(),
            "bad_reading",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_messages_and_the_good_ones_still_count() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), 0, "qingnuan-server-hostile");
    let config = Config::load(&path).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    registry::import(
        &store,
        registry_csv(1).as_bytes(),
        &Policy::beijing_2018(),
        "test",
        NOW,
    )
    .await
    .unwrap();
    let clock = Arc::new(ScaledClock::new(NOW * 1000, 1));
    let running = qingnuan_server::start_with_clock(config, clock)
        .await
        .unwrap();
    let port = running.addr.port();
    wait_subscribed(port).await;
    let p = Publisher::connect(broker.port(), "gw-1").await;
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    let mut good = 0usize;
    for i in 0..BAD {
        let (topic, payload, reason) = malformed(i);
        *expected.entry(reason).or_default() += 1;
        p.publish(&topic, payload).await;
        if i % (BAD / GOOD) == BAD / GOOD - 1 {
            // Reads spread over the night Nov 1, the last exactly at 08:00.
            let t = NOV1_20 + i64::try_from(good * 43_200 / (GOOD - 1)).unwrap();
            let b = batch("gw-1", good as u64, &[("m0".into(), t, e_wh(0, t))]);
            p.publish("qn/v1/gw/gw-1/readings", b).await;
            good += 1;
        }
    }
    assert_eq!(good, GOOD);
    p.wait_acked((BAD + GOOD) as u64).await;
    wait_until(
        Duration::from_secs(120),
        "every message committed",
        || async move {
            let Some((200, body)) = http_get(port, "/api/v1/quarantine").await else {
                return false;
            };
            let v: Value = serde_json::from_str(&body).unwrap();
            v["since_start"]["messages"] == (BAD + GOOD) as u64
        },
    )
    .await;
    let (_, body) = http_get(port, "/api/v1/quarantine").await.unwrap();
    let q: Value = serde_json::from_str(&body).unwrap();
    let by_reason: BTreeMap<String, i64> = serde_json::from_value(q["by_reason"].clone()).unwrap();
    let expected: BTreeMap<String, i64> = expected
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(
        by_reason, expected,
        "each bad message quarantined once, with its reason"
    );
    assert_eq!(q["total"], BAD as u64);
    assert_eq!(q["since_start"]["quarantined"], BAD as u64);
    assert_eq!(q["since_start"]["new_readings"], GOOD as u64);
    assert_eq!(store.reading_counts().await.unwrap(), (GOOD as i64, 0));
    // The night from the good readings: 720 minutes at 20 Wh a minute.
    wait_until(Duration::from_secs(30), "hh-0's statement", || async move {
        let Some((200, body)) = http_get(port, "/api/v1/households/hh-0/seasons/2025-2026").await
        else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        v["offpeak_kwh"] == "14.400" && v["nights"]["actual"] == 1
    })
    .await;
    assert_eq!(
        http_get(port, "/api/v1/health").await.map(|r| r.0),
        Some(200),
        "still up"
    );
    running.stop().await;
}
