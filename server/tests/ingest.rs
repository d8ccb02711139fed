//! Ingest through a real Mosquitto started by the test: readings published as a gateway
//! would arrive in the statements; bad messages are quarantined with reasons and counted
//! while the good readings of the same batch still count.

mod common;

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

const T: Duration = Duration::from_secs(30);

async fn start(
    broker: &Broker,
    dir: &std::path::Path,
    households: usize,
) -> (qingnuan_server::Running, Store) {
    let path = write_config(dir, &broker.url(), 0, "qingnuan-server-test");
    let config = Config::load(&path).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    registry::import(
        &store,
        registry_csv(households).as_bytes(),
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
    (running, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_published_by_a_gateway_arrive_in_the_statements() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start(&broker, dir.path(), 3).await;
    let port = running.addr.port();
    wait_subscribed(port).await;
    let publisher = Publisher::connect(broker.port(), "gw-1").await;
    // one reading a minute of each meter through the night of Nov 1, 10 minutes a message
    let mut seq = 0;
    for chunk_start in (NOV1_20..=NOV1_20 + 12 * 3600).step_by(600) {
        let mut rs = Vec::new();
        for t in (chunk_start..chunk_start + 600)
            .step_by(60)
            .filter(|&t| t <= NOV1_20 + 12 * 3600)
        {
            for k in 0..3 {
                rs.push((format!("m{k}"), t, e_wh(k, t)));
            }
        }
        seq += 1;
        publisher
            .publish("qn/v1/gw/gw-1/readings", batch("gw-1", seq, &rs))
            .await;
    }
    // the statement of hh-2: 720 minutes x 22 Wh = 15.840 kWh
    wait_until(T, "hh-2's statement", || async move {
        let Some((200, body)) = http_get(port, "/api/v1/households/hh-2/seasons/2025-2026").await
        else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        v["offpeak_kwh"] == "15.840"
    })
    .await;
    let (_, body) = http_get(port, "/api/v1/households/hh-2/seasons/2025-2026")
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    // 15.84 kWh x 0.10 = 1.584 -> 1.58 yuan; x 0.30 = 4.752 -> 4.75 yuan
    assert_eq!(
        (
            v["city_subsidy_yuan"].as_str(),
            v["valley_charge_yuan"].as_str()
        ),
        (Some("1.58"), Some("4.75"))
    );
    assert_eq!(v["nights"]["actual"], 1);
    // each household is recomputed in its own turn: wait for hh-0's too
    wait_until(T, "hh-0's night", || async move {
        let Some((200, body)) =
            http_get(port, "/api/v1/households/hh-0/nights?season=2025-2026").await
        else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        v[1]["kwh"] != "0.000"
    })
    .await;
    let (_, body) = http_get(port, "/api/v1/households/hh-0/nights?season=2025-2026")
        .await
        .unwrap();
    let nights: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(nights[1]["night"], "2025-11-01");
    assert_eq!(nights[1]["kwh"], "14.400");
    assert_eq!(store.reading_counts().await.unwrap(), (3 * 721, 0));
    // a gateway replaying the same batches changes nothing
    let seq_again = seq;
    for s in 1..=2u64 {
        let t = NOV1_20 + (s as i64 - 1) * 600;
        let rs: Vec<_> = (0..3).map(|k| (format!("m{k}"), t, e_wh(k, t))).collect();
        publisher
            .publish("qn/v1/gw/gw-1/readings", batch("gw-1", seq_again + s, &rs))
            .await;
    }
    // a status message updates the gateway
    publisher
        .publish(
            "qn/v1/gw/gw-1/status",
            r#"{"v":1,"gw":"gw-1","state":"online","ts":1762200000}"#,
        )
        .await;
    let st = store.clone();
    wait_until(T, "gateway online", move || {
        let st = st.clone();
        async move {
            st.gateway_state("gw-1")
                .await
                .unwrap()
                .and_then(|s| s.0)
                .as_deref()
                == Some("online")
        }
    })
    .await;
    // the running server's monitor follows the same commits: the operators' API shows
    // the gateway's reported state and the batches it has seen
    wait_until(T, "gateway online in the monitor API", || async move {
        let Some((200, body)) = http_get(port, "/api/v1/gateways/gw-1").await else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        v["reported_state"] == "online" && v["batches"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(store.reading_counts().await.unwrap(), (3 * 721, 0));
    assert_eq!(
        store
            .statement("hh-2", "2025-2026")
            .await
            .unwrap()
            .unwrap()
            .offpeak_wh,
        15_840
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_quarantined_and_counted_while_good_readings_count() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start(&broker, dir.path(), 2).await;
    let port = running.addr.port();
    wait_subscribed(port).await;
    let publisher = Publisher::connect(broker.port(), "gw-1").await;
    let topic = "qn/v1/gw/gw-1/readings";
    let t0 = NOV1_20;
    let t1 = NOV1_20 + 12 * 3600;
    publisher
        .publish(topic, "garbage, not JSON \u{1F4A9}")
        .await;
    publisher
        .publish(
            topic,
            format!(
                r#"{{"v":1,"gw":"gw-1","seq":1,"boot":"b","pad":"{}","readings":[]}}"#,
                "x".repeat(70_000)
            ),
        )
        .await;
    publisher
        .publish(
            topic,
            r#"{"v":1,"gw":"gw-1","seq":"two","boot":"b","readings":[]}"#,
        )
        .await;
    publisher
        .publish(
            "qn/v1/gw/gw-999/readings",
            batch("gw-999", 1, &[("m0".into(), t0, 5)]),
        )
        .await;
    publisher.publish("qn/v1/gw/GW_BAD/readings", "{}").await;
    // one batch: good, wrong-typed, negative, unknown meter, from the future, good
    let mixed = format!(
        r#"{{"v":1,"gw":"gw-1","seq":3,"boot":"b","readings":[
            {{"meter":"m0","ts":{t0},"e_wh":{e0}}},
            {{"meter":"m0","ts":{tx},"e_wh":"12kWh"}},
            {{"meter":"m1","ts":{tx},"e_wh":-1}},
            {{"meter":"m7","ts":{t0},"e_wh":1}},
            {{"meter":"m1","ts":{future},"e_wh":1}},
            {{"meter":"m0","ts":{t1},"e_wh":{e1}}}]}}"#,
        e0 = e_wh(0, t0),
        e1 = e_wh(0, t1),
        tx = t0 + 60,
        future = NOW + 86_400
    );
    publisher.publish(topic, mixed).await;
    publisher.wait_acked(6).await;
    wait_until(T, "hh-0's night from the mixed batch", || async move {
        let Some((200, body)) = http_get(port, "/api/v1/households/hh-0/seasons/2025-2026").await
        else {
            return false;
        };
        serde_json::from_str::<Value>(&body).unwrap()["offpeak_kwh"] == "14.400"
    })
    .await;
    let st = store.clone();
    wait_until(T, "9 quarantine rows", move || {
        let st = st.clone();
        async move {
            st.quarantine_counts()
                .await
                .unwrap()
                .iter()
                .map(|(_, n)| n)
                .sum::<i64>()
                == 9
        }
    })
    .await;
    let (status, body) = http_get(port, "/api/v1/quarantine").await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["by_reason"],
        serde_json::json!({"not_json": 1, "too_large": 1, "bad_envelope": 1, "unknown_gateway": 1, "bad_topic": 1,
                           "bad_reading": 1, "negative": 1, "unbound_meter": 1, "future_ts": 1})
    );
    assert_eq!(v["total"], 9);
    let rows = store.quarantine_rows().await.unwrap();
    let typed = rows.iter().find(|r| r.2 == "bad_reading").unwrap();
    assert_eq!(typed.1, 1);
    assert!(
        typed
            .3
            .starts_with("readings[1]: invalid type: string \"12kWh\""),
        "{}",
        typed.3
    );
    assert_eq!(store.reading_counts().await.unwrap(), (2, 0));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_night_is_listed_when_it_closes_without_new_readings() {
    use qingnuan_server::store::{IngestTx, NewReading};
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), 0, "qingnuan-close-test");
    let config = Config::load(&path).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    let close = NOV1_20 + 12 * 3600; // Nov 2 08:00
    registry::import(
        &store,
        registry_csv(1).as_bytes(),
        &Policy::beijing_2018(),
        "test",
        close - 10,
    )
    .await
    .unwrap();
    let r = |ts, e_wh| NewReading {
        meter: "m0".into(),
        ts,
        e_wh,
        e_valley_wh: None,
        p_w: None,
        meter_ts: None,
        gateway: "gw-1".into(),
    };
    let tx = IngestTx {
        readings: vec![r(NOV1_20, 1_000_000), r(close, 1_030_000)],
        received: close,
        ..Default::default()
    };
    store.commit_ingest(&tx, |_, _| {}).await.unwrap();
    // 10 simulated seconds before the close, 20 times faster than real time
    let clock = Arc::new(ScaledClock::new((close - 10) * 1000, 20));
    let running = qingnuan_server::start_with_clock(config, clock)
        .await
        .unwrap();
    let st = store.clone();
    wait_until(T, "night Nov 1 listed after 08:00", move || {
        let st = st.clone();
        async move {
            st.statement("hh-0", "2025-2026")
                .await
                .unwrap()
                .is_some_and(|s| s.offpeak_wh == 30_000)
        }
    })
    .await;
    let nights = store.nights("hh-0", "2025-2026").await.unwrap();
    assert_eq!(
        nights
            .iter()
            .map(|n| (n.night.as_str(), n.wh))
            .collect::<Vec<_>>(),
        vec![("2025-10-31", 0), ("2025-11-01", 30_000)]
    );
    running.stop().await;
}

/// Regression: with a backlog of unacknowledged messages larger than the client's request
/// channel, the poller waited on the worker and the worker's acks on the poller: ingest
/// stopped for good after a few hundred messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_on_the_persistent_session_does_not_stall_ingest() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start(&broker, dir.path(), 1).await;
    wait_subscribed(running.addr.port()).await;
    running.stop().await;
    // 1,500 messages queued for the stopped server's session
    let publisher = Publisher::connect(broker.port(), "gw-1").await;
    let n = 1_500i64;
    for i in 0..n {
        let t = NOV1_20 + i * 20;
        publisher
            .publish(
                "qn/v1/gw/gw-1/readings",
                batch("gw-1", i as u64 + 1, &[("m0".into(), t, 1_000_000 + i)]),
            )
            .await;
    }
    publisher.wait_acked(n as u64).await;
    let path = dir.path().join("server.toml");
    let clock = Arc::new(ScaledClock::new(NOW * 1000, 1));
    let running = qingnuan_server::start_with_clock(Config::load(&path).unwrap(), clock)
        .await
        .unwrap();
    let st = store.clone();
    wait_until(T, "the whole backlog stored", move || {
        let st = st.clone();
        async move { st.reading_counts().await.unwrap().0 == n }
    })
    .await;
    running.stop().await;
}

/// The value of a `/metrics` sample line that starts with `series`.
async fn metric(port: u16, series: &str) -> Option<i64> {
    let (_, body) = http_get(port, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An installer's agents run before the registry knows them: a gateway not in the registry
/// (`gw-7`) and a meter not registered on a known gateway (`m8` on `gw-1`). Their
/// messages are quarantined with their reasons and the readings held; once the registry
/// import binds them, every held reading is stored and the households' statements count
/// the whole night, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_readings_count_once_the_registry_binds_them() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (running, store) = start(&broker, dir.path(), 3).await;
    let port = running.addr.port();
    wait_subscribed(port).await;
    let early = Publisher::connect(broker.port(), "gw-7").await;
    let known = Publisher::connect(broker.port(), "gw-1").await;
    // One reading a minute through the night of Nov 1, ten minutes a message.
    let mut seq = 0;
    for start in (NOV1_20..=NOV1_20 + 12 * 3600).step_by(600) {
        let minutes = (start..start + 600)
            .step_by(60)
            .filter(|&t| t <= NOV1_20 + 12 * 3600);
        let (m7, m8): (Vec<_>, Vec<_>) = minutes
            .map(|t| {
                (
                    ("m7".to_string(), t, e_wh(7, t)),
                    ("m8".to_string(), t, e_wh(8, t)),
                )
            })
            .unzip();
        seq += 1;
        early
            .publish("qn/v1/gw/gw-7/readings", batch("gw-7", seq, &m7))
            .await;
        known
            .publish("qn/v1/gw/gw-1/readings", batch("gw-1", seq, &m8))
            .await;
    }
    wait_until(T, "721 + 721 readings held", || async move {
        metric(port, "qingnuan_held_readings{reason=\"unknown_gateway\"}").await == Some(721)
            && metric(port, "qingnuan_held_readings{reason=\"unbound_meter\"}").await == Some(721)
    })
    .await;
    assert_eq!(store.reading_counts().await.unwrap(), (0, 0));
    let quarantined: Vec<String> = store
        .quarantine_counts()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    assert_eq!(quarantined, ["unbound_meter 721", "unknown_gateway 73"]);

    // The registry import, as `qingnuan-server registry import` does it.
    let csv = format!(
        "{}hh-7,怀柔区,雁栖镇,下辛庄村,90,air_source_heat_pump,m7,2025-10-01,,gw-7,\n\
         hh-8,怀柔区,雁栖镇,下辛庄村,90,air_source_heat_pump,m8,2025-10-01,,gw-1,\n",
        registry_csv(3)
    );
    registry::import(&store, csv.as_bytes(), &Policy::beijing_2018(), "test", NOW)
        .await
        .unwrap();
    // 720 minutes at 27 and 28 Wh a minute.
    for (hh, kwh) in [("hh-7", "19.440"), ("hh-8", "20.160")] {
        let path = format!("/api/v1/households/{hh}/seasons/2025-2026");
        wait_until(T, "the held night in the statement", || {
            let path = path.clone();
            async move {
                let Some((200, body)) = http_get(port, &path).await else {
                    return false;
                };
                let v: Value = serde_json::from_str(&body).unwrap();
                v["offpeak_kwh"] == kwh && v["nights"]["actual"] == 1
            }
        })
        .await;
    }
    assert_eq!(store.reading_counts().await.unwrap(), (2 * 721, 0));
    assert!(store.held_counts().await.unwrap().is_empty());
    assert_eq!(
        metric(port, "qingnuan_held_admitted_total").await,
        Some(2 * 721)
    );
    running.stop().await;
}
