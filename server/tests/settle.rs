//! Bounded state end to end through the store (docs/bounded-state.md): `settle` thins
//! the readings below the cut and every figure and explanation stays the same; then a
//! late reading below the cut is quarantined `settled`, registry changes that reach
//! before it are refused, settling again changes nothing. On SQLite and PostgreSQL.
//! And a server with `[store] settle_after_days` settles by itself.

#[macro_use]
mod pg_support;

use std::collections::BTreeSet;

use qingnuan_server::engine::Engine;
use qingnuan_server::store::{IngestTx, MeterRow, NewReading, Store, StoreError};
use qingnuan_server::{recompute, registry, settle};
use qingnuan_shared::calendar::Season;
use qingnuan_shared::policy::Policy;

/// 2025-11-01 20:00 +08:00.
const NOV1_20: i64 = 1_761_998_400;
/// 2025-11-11 12:00 +08:00: ten nights have closed.
const NOW: i64 = NOV1_20 + 10 * 86_400 - 8 * 3600;
const SEASON: Season = Season { start_year: 2025 };

const CSV: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
                   hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-1,\n\
                   hh-2,d,t,v,100,hp,m2,2025-10-01,,gw-1,\n";

/// The register of meter `m` (`p` W from Nov 1 20:00) at `t`, Wh.
fn register(p: i64, t: i64) -> i64 {
    1_000_000 + p * (t - NOV1_20) / 3600
}

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

/// Ten nights read every 15 minutes from 20:00 to 08:00 and once at noon, and for
/// `m1` a glitch read of 0 on Nov 3 at 23:01:40 (rejected, shown).
fn readings() -> Vec<NewReading> {
    let mut out = Vec::new();
    for (meter, p) in [("m1", 2_000), ("m2", 3_000)] {
        for k in 0..10 {
            let open = NOV1_20 + k * 86_400;
            for q in 0..=48 {
                let t = open + q * 900;
                out.push(reading(meter, t, register(p, t)));
            }
            let noon = open + 16 * 3600;
            out.push(reading(meter, noon, register(p, noon)));
        }
    }
    out.push(reading("m1", NOV1_20 + 2 * 86_400 + 3 * 3600 + 100, 0));
    out
}

fn mark(r: &NewReading, out: &mut BTreeSet<(String, String)>) {
    let hh = if r.meter == "m1" { "hh-1" } else { "hh-2" };
    out.insert((hh.into(), "2025-2026".into()));
}

async fn settling_thins_readings_and_changes_no_figure(kind: pg_support::Kind) {
    let (_guard, url) = pg_support::url(kind);
    let store = Store::open(&url).await.unwrap();
    let policy = Policy::beijing_2018();
    registry::import(&store, CSV.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let all = readings();
    for chunk in all.chunks(400) {
        let tx = IngestTx {
            readings: chunk.to_vec(),
            received: NOW,
            ..Default::default()
        };
        store.commit_ingest(&tx, mark).await.unwrap();
    }
    let mut engine = Engine::new(policy);
    recompute::drain(&store, &mut engine, NOW).await.unwrap();
    let mut before = Vec::new();
    for hh in ["hh-1", "hh-2"] {
        let stored = store.statement(hh, "2025-2026").await.unwrap().unwrap();
        let explained = recompute::compute(&store, &mut engine, hh, SEASON, NOW, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(explained.0, stored);
        before.push(explained);
    }
    // The ten nights at 2 kW for twelve hours, the glitch rejected.
    assert_eq!(before[0].0.offpeak_wh, 10 * 24_000);
    assert!(before[0]
        .1
        .iter()
        .any(|n| n.flags.iter().any(|f| f == "rejected_reading")));
    let rows_before = store.reading_count_of("m1").await.unwrap();
    assert_eq!(rows_before, 10 * 50 + 1);

    // Nights labelled before Nov 6 are settled: the cut is Nov 6 08:00.
    let cut = settle::cut_of(&engine, "2025-11-06".parse().unwrap());
    assert_eq!(cut, NOV1_20 + 4 * 86_400 + 12 * 3600);
    // While the InfluxDB sink has not exported the readings, none goes.
    store.sink_enable(1_000_000).await.unwrap();
    let waiting = settle::settle(&store, &mut engine, cut, NOW).await.unwrap();
    assert_eq!(
        (waiting.waiting_export, waiting.deleted, waiting.pairs),
        (2, 0, 0)
    );
    assert_eq!(store.reading_count_of("m1").await.unwrap(), rows_before);
    while let (_, Some(head)) = store.sink_readings(1_000).await.unwrap() {
        store.sink_ack_readings(&head, false).await.unwrap();
    }
    let sum = settle::settle(&store, &mut engine, cut, NOW).await.unwrap();
    assert_eq!(
        (
            sum.cut,
            sum.households,
            sum.pairs,
            sum.unverified,
            sum.shared_meters,
            sum.waiting_export
        ),
        (cut, 2, 2, 0, 0, 0)
    );
    // Below the cut m1 had 4 nights × 49 reads, 48 of the fifth (its 08:00 read is at
    // the cut), 4 noon reads and the glitch: 249. It keeps one read per boundary (Nov 1
    // 20:00 … Nov 5 20:00: 9), the glitch and its baseline, and the latest read before
    // the cut (Nov 6 07:45): 12. m2 has no glitch: 248 and 10.
    assert_eq!(sum.considered, 249 + 248, "{sum:?}");
    let rows_after = store.reading_count_of("m1").await.unwrap();
    assert_eq!(rows_before - rows_after, 249 - 12, "{sum:?}");
    assert_eq!(sum.deleted, (249 - 12) + (248 - 10), "{sum:?}");
    assert_eq!(store.settled_before().await.unwrap(), Some(cut));
    // Every figure and every explanation is what all readings gave.
    for (hh, was) in ["hh-1", "hh-2"].iter().zip(&before) {
        let now = recompute::compute(&store, &mut engine, hh, SEASON, NOW, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&now, was, "{hh}");
    }

    // A late reading below the cut is set aside with its reason; one after it counts.
    let late = IngestTx {
        readings: vec![
            reading("m1", cut - 600, register(2_000, cut - 600)),
            reading("m1", cut + 600, register(2_000, cut + 600)),
        ],
        received: NOW,
        ..Default::default()
    };
    let s = store.commit_ingest(&late, mark).await.unwrap();
    assert_eq!((s.new_readings, s.quarantined), (1, 1));
    let counts = store.quarantine_counts().await.unwrap();
    assert!(counts.contains(&("settled".to_string(), 1)), "{counts:?}");
    // Redelivered: nothing new, the quarantine row is not written twice.
    let s = store.commit_ingest(&late, mark).await.unwrap();
    assert_eq!((s.new_readings, s.repeats, s.quarantined), (0, 1, 0));
    // The new reading's round recomputes hh-1 whole (its resume state went with the
    // thinning) from the thinned readings: the stored figures are what they were.
    recompute::drain(&store, &mut engine, NOW).await.unwrap();
    let stored = store.statement("hh-1", "2025-2026").await.unwrap().unwrap();
    assert_eq!(stored, before[0].0);

    // Registry changes that reach before the cut are refused, naming what; the rest pass.
    let moved = CSV.replace(
        "hh-1,d,t,v,100,hp,m1,2025-10-01",
        "hh-1,d,t,v,100,hp,m1,2025-10-15",
    );
    let e = registry::import(&store, moved.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 2, column meter_from") && e.contains("m1") && e.contains("settled cut"),
        "{e}"
    );
    let power = CSV.replace("m1,2025-10-01,,gw-1,", "m1,2025-10-01,,gw-1,5000");
    let e = registry::import(&store, power.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 2, column max_power_w") && e.contains("hh-1"),
        "{e}"
    );
    let new_meter = format!("{CSV}hh-3,d,t,v,100,hp,m3,2025-11-02,,gw-1,\n");
    let e = registry::import(&store, new_meter.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 4, column meter_from") && e.contains("m3"),
        "{e}"
    );
    // The store checks again inside the import's transaction (a cut raised meanwhile).
    let moved_row = MeterRow {
        household: "hh-1".into(),
        meter: "m1".into(),
        valid_from: NOV1_20,
        valid_to: None,
        gateway: "gw-1".into(),
    };
    let e = store
        .upsert_registry(&[], &[moved_row], &[], "test", NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Settled(m) if m.contains("column meter_from") && m.contains("m1")),
        "{e}"
    );
    let removed_later = CSV.replace("m2,2025-10-01,,gw-1,", "m2,2025-10-01,2025-11-09,gw-1,");
    registry::import(&store, removed_later.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let regateway = removed_later.replace("gw-1", "gw-2");
    registry::import(&store, regateway.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();

    // Settling again at the same cut drops nothing more and changes nothing.
    let again = settle::settle(&store, &mut engine, cut, NOW).await.unwrap();
    assert_eq!(again.deleted, 0, "{again:?}");
    let now1 = recompute::compute(&store, &mut engine, "hh-1", SEASON, NOW, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now1.1, before[0].1);
    // An earlier cut never lowers it.
    let lower = settle::settle(&store, &mut engine, cut - 86_400, NOW)
        .await
        .unwrap();
    assert_eq!(lower.cut, cut);

    // A policy that judges otherwise cannot settle on these readings.
    let mut other = policy;
    other.rules.default_max_power_w += 1;
    let e = settle::settle(&store, &mut Engine::new(other), cut, NOW)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Settled(_)), "{e}");
    store.close().await;
}

on_both_backends!(settling_thins_readings_and_changes_no_figure);

/// The body of `GET path` on `addr` (HTTP/1.0, the API open on loopback).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A clock standing still at `0` (UTC Unix seconds).
#[derive(Debug)]
struct Fixed(i64);

impl qingnuan_shared::clock::Clock for Fixed {
    fn now_ms(&self) -> i64 {
        self.0 * 1000
    }
    fn real_until(&self, _t_ms: i64) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// On PostgreSQL another replica may hold the settle lease (here the test holds it): the
/// server then settles nothing until it is given up.
async fn a_server_with_settle_after_days_settles_by_itself(kind: pg_support::Kind) {
    let (_guard, db) = pg_support::url(kind);
    {
        let store = Store::open(&db).await.unwrap();
        registry::import(&store, CSV.as_bytes(), &Policy::beijing_2018(), "test", NOW)
            .await
            .unwrap();
        let tx = IngestTx {
            readings: readings(),
            received: NOW,
            ..Default::default()
        };
        store.commit_ingest(&tx, mark).await.unwrap();
        store.close().await;
    }
    let other = Store::open(&db).await.unwrap();
    let mut lease = other.lease(qingnuan_server::store::LeaseKind::Settle);
    assert!(lease.held().await.unwrap());
    // Nov 11 12:00 less five days: nights labelled before Nov 6 are settled.
    let port = qingnuan_tests::broker::free_port().unwrap();
    let cfg = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[mqtt]\nembedded_listen = \"127.0.0.1:{}\"\n\n\
         [store]\nurl = \"{db}\"\nsettle_after_days = 5\n",
        qingnuan_tests::broker::free_port().unwrap()
    );
    let cfg = qingnuan_server::config::Config::from_toml_str(&cfg).unwrap();
    let running = qingnuan_server::start_with_clock(cfg, std::sync::Arc::new(Fixed(NOW)))
        .await
        .unwrap();
    let store = Store::open(&db).await.unwrap();
    if kind == pg_support::Kind::Postgres {
        // The server looks every second (the fixed clock): three looks, none settles.
        tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
        assert_eq!(
            store.settled_before().await.unwrap(),
            None,
            "another holds the lease"
        );
        assert_eq!(store.reading_count_of("m1").await.unwrap(), 10 * 50 + 1);
    }
    lease.release().await;
    let cut = NOV1_20 + 4 * 86_400 + 12 * 3600;
    let mut left = 0;
    for _ in 0..200 {
        left = store.reading_count_of("m1").await.unwrap();
        if store.settled_before().await.unwrap() == Some(cut) && left == 10 * 50 + 1 - (249 - 12) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(store.settled_before().await.unwrap(), Some(cut));
    assert_eq!(left, 10 * 50 + 1 - (249 - 12));
    // Operators see the cut in /metrics.
    let metrics = http_get(running.addr, "/metrics").await;
    assert!(
        metrics.contains(&format!("qingnuan_settled_before_seconds {cut}")),
        "{metrics}"
    );
    running.stop().await;
    store.close().await;
}

on_both_backends!(a_server_with_settle_after_days_settles_by_itself);
