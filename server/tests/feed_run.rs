//! The feed as the server runs it: `[feed]` in `server.toml` starts the feed task in
//! `start_with_clock`, which pushes the closed nights to the platform on its own and shows
//! its counters on `/metrics`; a bad `[feed]` stops the start with the key named.

mod common;
mod feed_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use feed_support::Receiver;
use qingnuan_server::config::Config;
use qingnuan_server::engine::Engine;
use qingnuan_server::store::{IngestTx, NewReading, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::clock::ScaledClock;
use qingnuan_shared::policy::Policy;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
/// 2025-11-02 09:30 +08:00: night Nov 1 is due.
const START: i64 = NOV1_20 + 13 * 3600 + 1800;

fn config(dir: &std::path::Path, feed: &str) -> Config {
    Config::from_toml_str(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nembedded_listen = \"127.0.0.1:0\"\n\
         [store]\nurl = \"sqlite://{}/s.db\"\n[feed]\n{feed}",
        dir.display()
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pushes_closed_nights_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy::beijing_2018();
    {
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .unwrap();
        registry::import(
            &store,
            common::registry_csv(3).as_bytes(),
            &policy,
            "test",
            NOV1_20,
        )
        .await
        .unwrap();
        let readings = (0..3)
            .flat_map(|k| {
                [NOV1_20, NOV1_20 + 12 * 3600].map(|ts| NewReading {
                    meter: format!("m{k}"),
                    ts,
                    e_wh: common::e_wh(k, ts),
                    e_valley_wh: None,
                    p_w: None,
                    meter_ts: None,
                    gateway: "gw-1".into(),
                })
            })
            .collect();
        let tx = IngestTx {
            readings,
            received: START,
            ..Default::default()
        };
        store
            .commit_ingest(&tx, |r, out| {
                out.insert((r.meter.replace('m', "hh-"), "2025-2026".into()));
            })
            .await
            .unwrap();
        recompute::drain(&store, &mut Engine::new(policy), START)
            .await
            .unwrap();
        store.close().await;
    }
    let receiver = Receiver::start(b"run-key").await;
    std::fs::write(dir.path().join("k"), "run-key\n").unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "url = \"{}\"\nkey_file = \"{}/k\"\npoll_s = 30\ninitial_backoff_s = 30\n",
            receiver.url,
            dir.path().display()
        ),
    );
    // 60 simulated seconds a second: a pass every half second.
    let clock = Arc::new(ScaledClock::new(START * 1000, 60));
    let running = qingnuan_server::start_with_clock(cfg, clock).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Night Oct 31 and Nov 1, one village and one district each.
    while receiver.accepted().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = receiver.accepted();
    let nights: Vec<&str> = accepted
        .values()
        .map(|v| v["night"].as_str().unwrap())
        .collect();
    assert_eq!(accepted.len(), 4, "{:?}", accepted.keys());
    assert!(nights.contains(&"2025-11-01") && nights.contains(&"2025-10-31"));
    let village = accepted
        .values()
        .find(|v| v["kind"] == "village" && v["night"] == "2025-11-01")
        .unwrap();
    // 12 h at 20 + k Wh a minute for k = 0, 1, 2.
    assert_eq!(
        village["night_totals"]["offpeak_wh"].as_i64().unwrap(),
        720 * (20 + 21 + 22)
    );
    assert_eq!(
        receiver
            .seen
            .duplicates
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let (status, metrics) = common::http_get(running.addr.port(), "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\nqingnuan_feed_delivered_total 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nqingnuan_feed_pending 0\n"), "{metrics}");
    running.stop().await;
}

#[tokio::test]
async fn a_bad_feed_table_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ScaledClock::new(START * 1000, 1));
    for (feed, key) in [
        ("url = \"ftp://x\"\nkey_file = \"/k\"\n", "feed.url:"),
        ("url = \"http://127.0.0.1:1/\"\n", "feed.key_file:"),
        (
            "url = \"http://127.0.0.1:1/\"\nkey_file = \"/nonexistent/qingnuan.key\"\n",
            "feed.key_file: /nonexistent/qingnuan.key",
        ),
    ] {
        let err = match qingnuan_server::start_with_clock(config(dir.path(), feed), clock.clone())
            .await
        {
            Ok(r) => {
                r.stop().await;
                panic!("{feed} was accepted");
            }
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(key), "{feed}: {err}");
    }
}
