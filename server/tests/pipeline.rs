//! Recompute rounds in a pipeline (recompute.rs `Pipeline`: a round's save in flight while
//! the next round is read and computed): with more pairs than a round, and readings that
//! arrive and re-mark pairs while a save is in flight, every pair ends with exactly the
//! figures a fresh computation from the stored readings gives, and no mark is left. On
//! SQLite (the cursor past the round in flight) and PostgreSQL (claims).

mod pg_support;

use qingnuan_server::engine::Engine;
use qingnuan_server::recompute::{self, Pipeline};
use qingnuan_server::registry;
use qingnuan_server::store::{IngestTx, NewReading, Store};
use qingnuan_shared::policy::Policy;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
/// 2025-11-07 12:00 +08:00: the nights of Nov 1 to Nov 6 have closed.
const NOW: i64 = NOV1_20 + 5 * 86_400 + 16 * 3600;
/// Households: more than two rounds of 1,024.
const HOUSEHOLDS: usize = 2_300;

fn household(i: usize) -> String {
    format!("hh-{i:05}")
}

/// Household `i`'s reads at 20:00 and 08:00 of nights `nights`, a different draw each.
fn reads(i: usize, nights: std::ops::Range<i64>) -> Vec<NewReading> {
    let i = i as i64;
    nights
        .flat_map(|n| {
            [0, 1].map(|k| NewReading {
                meter: format!("m-{i:05}"),
                ts: NOV1_20 + n * 86_400 + k * 12 * 3600,
                e_wh: 1_000_000 + n * 40_000 + k * (10_000 + (i * 7 + n * 13) % 9_000),
                e_valley_wh: None,
                p_w: None,
                meter_ts: None,
                gateway: "gw-1".into(),
            })
        })
        .collect()
}

/// Commits `readings`, marking their households' season dirty as ingest does.
async fn commit(store: &Store, readings: Vec<NewReading>) {
    let tx = IngestTx {
        readings,
        received: NOW,
        ..Default::default()
    };
    store
        .commit_ingest(&tx, |r, out| {
            let i = r.meter.trim_start_matches("m-");
            out.insert((format!("hh-{i}"), "2025-2026".into()));
        })
        .await
        .unwrap();
}

async fn run(url: &str) {
    let store = Store::open(url).await.unwrap();
    let policy = Policy::beijing_2018();
    let mut csv = String::from(
        "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n",
    );
    for i in 0..HOUSEHOLDS {
        csv += &format!("{},d,t,v,100,hp,m-{i:05},2025-10-01,,gw-1,\n", household(i));
    }
    registry::import(&store, csv.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    // Nights Nov 1-3 for everyone; marks made by the registry import and the readings.
    let all: Vec<NewReading> = (0..HOUSEHOLDS).flat_map(|i| reads(i, 0..3)).collect();
    for part in all.chunks(5_000) {
        commit(&store, part.to_vec()).await;
    }
    let mut engine = Engine::new(policy);
    let mut rounds = Pipeline::default();
    let mut taken = 0;
    let mut late = 0;
    loop {
        let n = rounds.step(&store, &mut engine, NOW).await.unwrap();
        if n == 0 {
            break;
        }
        taken += n;
        // While the round just taken is saving: later nights arrive for households of
        // every round so far (re-marking pairs of the round in flight, and of those done).
        if late < 3 {
            let hs = (0..HOUSEHOLDS).step_by(97).filter(|i| i % 3 == late);
            commit(&store, hs.flat_map(|i| reads(i, 3..5)).collect()).await;
            late += 1;
        }
    }
    assert!(
        taken >= HOUSEHOLDS,
        "every pair taken at least once: {taken}"
    );
    assert_eq!(store.dirty_count().await.unwrap(), 0, "no mark is left");
    for i in 0..HOUSEHOLDS {
        let hh = household(i);
        let (want, want_nights) = recompute::compute(
            &store,
            &mut engine,
            &hh,
            "2025-2026".parse().unwrap(),
            NOW,
            false,
        )
        .await
        .unwrap()
        .unwrap();
        let got = store.statement(&hh, "2025-2026").await.unwrap();
        assert_eq!(got.as_ref(), Some(&want), "{hh}");
        let nights = store.nights(&hh, "2025-2026").await.unwrap();
        assert_eq!(nights, want_nights, "{hh}");
        // Nov 1-3 for all; Nov 4 and 5 only for the late ones (Nov 6 has no reads: missing).
        let late = i % 97 == 0;
        let paid = nights.iter().filter(|n| n.wh > 0).count();
        assert_eq!(paid, if late { 5 } else { 3 }, "{hh}: {nights:?}");
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn on_sqlite_pipelined_rounds_leave_every_pair_exact() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(run(&format!("sqlite://{}/p.db", dir.path().display())));
}

#[test]
fn on_postgres_pipelined_rounds_leave_every_pair_exact() {
    let pg = pg_support::PgServer::start(false);
    rt().block_on(run(&pg.fresh_url()));
}
