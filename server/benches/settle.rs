//! Settle benchmark (bounded state): N households read every 15 minutes inside
//! 20:00–08:00 for D nights, stored through the store's own ingest commit into SQLite;
//! then `qingnuan-server settle` of all D nights: seconds, rows deleted, rows left. Every
//! household's statement computed from the thinned store must equal the stored one.
//!
//! `cargo bench -p qingnuan-server --bench settle` (env `BENCH_HOUSEHOLDS`, default 1000;
//! `BENCH_NIGHTS`, default 30).

use std::collections::BTreeSet;
use std::time::Instant;

use qingnuan_server::engine::Engine;
use qingnuan_server::store::{IngestTx, NewReading, Store};
use qingnuan_server::{recompute, registry, settle};
use qingnuan_shared::calendar::{Night, Season};
use qingnuan_shared::policy::Policy;

/// 2025-11-01 20:00 +08:00.
const NOV1_20: i64 = 1_761_998_400;

fn env(key: &str, default: i64) -> i64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Stores nights `nights` of every household (a read every 15 minutes, 20:00–08:00)
/// through the store's ingest commit; returns the readings stored.
async fn ingest(store: &Store, n: i64, nights: std::ops::Range<i64>, now: i64) -> u64 {
    let mut batch = Vec::with_capacity(20_000);
    let mut stored = 0u64;
    let last = nights.end - 1;
    for k in nights {
        for h in 0..n {
            for q in 0..=48 {
                let ts = NOV1_20 + k * 86_400 + q * 900;
                batch.push(NewReading {
                    meter: format!("{h:012}"),
                    ts,
                    e_wh: 1_000_000 + (1000 + h) * (ts - NOV1_20) / 3600,
                    e_valley_wh: None,
                    p_w: None,
                    meter_ts: None,
                    gateway: format!("gw-{}", h / 40),
                });
            }
        }
        if batch.len() >= 20_000 || k == last {
            let tx = IngestTx {
                readings: std::mem::take(&mut batch),
                received: now,
                ..Default::default()
            };
            let mark = |r: &NewReading, out: &mut BTreeSet<(String, String)>| {
                let h: i64 = r.meter.parse().unwrap_or(0);
                out.insert((format!("hh-{h:05}"), "2025-2026".into()));
            };
            stored += store
                .commit_ingest(&tx, mark)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .new_readings;
        }
    }
    stored
}

fn main() {
    let n = env("BENCH_HOUSEHOLDS", 1000);
    let nights = env("BENCH_NIGHTS", 30);
    let now = NOV1_20 + nights * 86_400;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}/settle.db", dir.path().display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let store = Store::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        let policy = Policy::beijing_2018();
        let mut csv = String::from(
            "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n",
        );
        for h in 0..n {
            csv.push_str(&format!("hh-{h:05},d,t,v,100,hp,{h:012},2025-10-01,,gw-{},\n", h / 40));
        }
        registry::import(&store, csv.as_bytes(), &policy, "bench", now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t0 = Instant::now();
        let stored = ingest(&store, n, 0..nights, now).await;
        let fill_s = t0.elapsed().as_secs_f64();
        let mut engine = Engine::new(policy);
        recompute::drain(&store, &mut engine, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Every stored night settled: the cut is the last night's 08:00.
        let last_close = NOV1_20 + (nights - 1) * 86_400 + 12 * 3600;
        let cut = settle::cut_of(&engine, Night(engine.calendar().local_date(last_close)));
        assert_eq!(cut, last_close);
        let t1 = Instant::now();
        let sum = settle::settle(&store, &mut engine, cut, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let settle_s = t1.elapsed().as_secs_f64();
        let (left, _) = store.reading_counts().await.unwrap_or_else(|e| panic!("{e}"));
        // The figures from the thinned store are the stored ones (computed from all).
        for h in (0..n).step_by(usize::try_from((n / 50).max(1)).unwrap_or(1)) {
            let id = format!("hh-{h:05}");
            let was = store
                .statement(&id, "2025-2026")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no statement for {id}"));
            let (now_st, _) = recompute::compute(&store, &mut engine, &id, Season { start_year: 2025 }, now, false)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("{id} unknown"));
            assert_eq!(now_st, was, "{id}");
            assert_eq!(was.offpeak_wh, nights * 12 * (1000 + h), "{id}");
        }
        // A day later: one more night stored, settled the next morning.
        let day = now + 86_400;
        ingest(&store, n, nights..nights + 1, day).await;
        recompute::drain(&store, &mut engine, day)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t2 = Instant::now();
        let daily = settle::settle(&store, &mut engine, cut + 86_400, day)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let daily_s = t2.elapsed().as_secs_f64();
        assert_eq!(daily.deleted, u64::try_from(n * 47).unwrap_or(0), "{daily:?}");
        println!(
            "settle: {n} households × {nights} nights, {stored} readings stored through ingest in {fill_s:.1} s"
        );
        println!(
            "settle: {settle_s:.2} s ({:.0} households/s, {:.0} readings deleted/s): {} deleted, {left} left ({:.1} a household-night), unverified {}, waiting_export {}",
            n as f64 / settle_s,
            sum.deleted as f64 / settle_s,
            sum.deleted,
            left as f64 / (n * nights) as f64,
            sum.unverified,
            sum.waiting_export,
        );
        println!(
            "settle: the next day's night settled in {daily_s:.2} s ({:.0} households/s): {} deleted",
            n as f64 / daily_s,
            daily.deleted,
        );
    });
}
