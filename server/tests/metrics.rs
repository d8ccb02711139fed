//! `/metrics` on the running server (real Mosquitto, real VictoriaMetrics as the
//! `[influxdb]` bucket, both started here): no auth, valid Prometheus text, and figures
//! that follow what happened — readings accepted, quarantine by reason, ingest lag, sink
//! points written, and an InfluxDB outage showing as write errors and a queue that drains.

mod common;
mod vm_support;

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
use vm_support::Vm;

/// Samples by `name{labels}` as written, after checking every sample belongs to a family
/// announced by `# TYPE` (counter or gauge) with a `# HELP`, each announced once.
fn parse(text: &str) -> BTreeMap<String, i64> {
    let mut typed = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "twice: {line}"
            );
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_once(' ').unwrap().0.to_string());
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                typed.contains_key(name) && helped.contains(name),
                "undeclared: {line}"
            );
            if typed[name] == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            let v: i64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not an integer: {line}"));
            assert!(out.insert(series.to_string(), v).is_none(), "twice: {line}");
        }
    }
    out
}

async fn metrics(port: u16) -> BTreeMap<String, i64> {
    let (status, body) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_ingest_quarantine_and_the_sink_through_an_outage() {
    let broker = Broker::start().unwrap();
    let mut vm = Vm::start();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), 0, "qingnuan-metrics-test");
    let token = dir.path().join("influx-token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[influxdb]\nurl = \"{}\"\norg = \"qingnuan\"\nbucket = \"qn\"\ntoken_file = \"{}\"\n\
         poll_ms = 50\nretry_max_s = 1\nstatus_interval_s = 0\n",
        vm.url(),
        token.display()
    ));
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    registry::import(
        &store,
        registry_csv(2).as_bytes(),
        &Policy::beijing_2018(),
        "test",
        NOW,
    )
    .await
    .unwrap();
    let running =
        qingnuan_server::start_with_clock(config, Arc::new(ScaledClock::new(NOW * 1000, 1)))
            .await
            .unwrap();
    let port = running.addr.port();
    wait_subscribed(port).await;

    let publisher = Publisher::connect(broker.port(), "gw-1").await;
    let topic = "qn/v1/gw/gw-1/readings";
    let (t0, t1) = (NOV1_20, NOV1_20 + 12 * 3600);
    let good = [
        ("m0".to_string(), t0, e_wh(0, t0)),
        ("m0".into(), t1, e_wh(0, t1)),
        ("m1".into(), t0, e_wh(1, t0)),
    ];
    publisher.publish(topic, batch("gw-1", 1, &good)).await;
    publisher.publish(topic, "not JSON").await;
    publisher.publish(topic, "still not JSON").await;
    publisher
        .publish(topic, batch("gw-1", 2, &[("m-unknown".into(), t0, 5)]))
        .await;
    publisher.wait_acked(4).await;

    wait_until(
        Duration::from_secs(30),
        "3 readings in the bucket",
        || async {
            vm.export("qn_reading_e_wh")
                .await
                .iter()
                .map(|s| s.samples.len())
                .sum::<usize>()
                == 3
        },
    )
    .await;
    let quarantine = store.quarantine_counts().await.unwrap();
    assert!(quarantine.len() >= 2, "{quarantine:?}");
    let m = metrics(port).await;
    assert_eq!(m["qingnuan_ingest_readings_total{outcome=\"accepted\"}"], 3);
    assert_eq!(m["qingnuan_ingest_readings_total{outcome=\"conflict\"}"], 0);
    // The household's season was computed (a first compute is whole).
    assert!(m["qingnuan_recompute_pairs_total{mode=\"whole\"}"] >= 1);
    assert!(m.contains_key("qingnuan_recompute_pairs_total{mode=\"resumed\"}"));
    // A round read readings and saved figures: both took some time.
    for phase in ["read", "compute", "save"] {
        assert!(m.contains_key(&format!(
            "qingnuan_recompute_microseconds_total{{phase=\"{phase}\"}}"
        )));
    }
    assert!(m["qingnuan_recompute_microseconds_total{phase=\"read\"}"] > 0);
    assert!(m["qingnuan_recompute_microseconds_total{phase=\"save\"}"] > 0);
    let mut quarantined = 0;
    for (reason, n) in &quarantine {
        assert_eq!(
            m[&format!("qingnuan_quarantine_rows{{reason=\"{reason}\"}}")],
            *n,
            "{reason}"
        );
        quarantined += n;
    }
    assert_eq!(m["qingnuan_ingest_quarantined_total"], quarantined);
    assert_eq!(m["qingnuan_ingest_subscribed"], 1);
    assert_eq!(m["qingnuan_ingest_behind"], 0, "idle: caught up");
    // Ingest lag: the newest reading is t1, and the server clock started at NOW.
    let age = m["qingnuan_ingest_newest_reading_age_seconds"];
    assert!((NOW - t1..NOW - t1 + 120).contains(&age), "{age}");
    assert!((0..120).contains(&m["qingnuan_ingest_last_heard_age_seconds"]));
    assert_eq!(m["qingnuan_gateways_online"], 1);
    assert_eq!(
        m["qingnuan_sink_points_written_total{measurement=\"qn_reading\"}"],
        3
    );
    assert_eq!(
        m["qingnuan_sink_dropped_total{measurement=\"qn_reading\"}"],
        0
    );
    assert_eq!(m["qingnuan_queue_depth{queue=\"sink_readings\"}"], 0);
    assert_eq!(m["qingnuan_sink_up"], 1);
    for (kind, n) in store.open_alarms_by_kind().await.unwrap() {
        assert_eq!(
            m[&format!("qingnuan_alarms_open{{rule=\"{kind}\"}}")],
            n,
            "{kind}"
        );
    }

    // InfluxDB down: the readings wait in the queue and the failures show.
    vm.stop();
    let t2 = t1 + 600;
    publisher
        .publish(
            topic,
            batch(
                "gw-1",
                3,
                &[
                    ("m0".into(), t2, e_wh(0, t2)),
                    ("m1".into(), t2, e_wh(1, t2)),
                ],
            ),
        )
        .await;
    publisher.wait_acked(5).await;
    wait_until(
        Duration::from_secs(30),
        "write errors and a queue of 2 in /metrics",
        || async {
            let m = metrics(port).await;
            m["qingnuan_sink_errors_total{kind=\"write\"}"] >= 1
                && m["qingnuan_queue_depth{queue=\"sink_readings\"}"] == 2
                && m["qingnuan_sink_up"] == 0
        },
    )
    .await;
    vm.launch();
    wait_until(Duration::from_secs(30), "the queue drained", || async {
        let m = metrics(port).await;
        m["qingnuan_queue_depth{queue=\"sink_readings\"}"] == 0
            && m["qingnuan_sink_points_written_total{measurement=\"qn_reading\"}"] == 5
            && m["qingnuan_sink_up"] == 1
    })
    .await;
    assert_eq!(
        vm.export("qn_reading_e_wh")
            .await
            .iter()
            .map(|s| s.samples.len())
            .sum::<usize>(),
        5
    );
    running.stop().await;
}
