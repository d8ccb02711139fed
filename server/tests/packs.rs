//! Reading packs (store/packs.rs) change nothing but speed: whatever was packed when, and
//! whatever arrived late into packed chunks, a round reads exactly the stored readings and
//! the figures equal those of a store that never packed. SQLite and PostgreSQL, and on
//! PostgreSQL packing racing with late ingest.

mod pg_support;

use proptest::prelude::*;
use qingnuan_server::engine::Engine;
use qingnuan_server::store::packs::{chunk_of, chunk_start};
use qingnuan_server::store::{IngestTx, NewReading, NightRow, StatementRow, Store, StoredReading};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::policy::Policy;

/// 2025-10-05 00:00 +08:00, the first reading.
const FIRST: i64 = 1_759_593_600;
/// Readings a meter: every 6 hours (and 7 s) for 70 days, across five 16-day chunks.
const PER_METER: i64 = 280;
/// Readings of both meters.
const READINGS: usize = 560;
/// 2025-12-20 12:00 +08:00: every night of the data has closed.
const NOW: i64 = 1_766_203_200;
/// Past every reading: the season's readings are read up to here.
const UNTIL: i64 = NOW;

/// Both meters' readings, index order = time order per meter. m1 has a glitch read of 0
/// and a spike (both rejected by the engine); m2 carries the valley register.
fn readings() -> Vec<NewReading> {
    let mut out = Vec::with_capacity(READINGS);
    for (meter, base, step) in [("m1", 5_000_000, 9_000), ("m2", 40_000, 4_500)] {
        for i in 0..PER_METER {
            let mut e = base + i * step;
            if meter == "m1" && i == 77 {
                e = 0;
            }
            if meter == "m1" && i == 160 {
                e += 900_000;
            }
            out.push(NewReading {
                meter: meter.into(),
                ts: FIRST + 7 + i * 21_600,
                e_wh: e,
                e_valley_wh: (meter == "m2").then_some(i * 1_000),
                p_w: None,
                meter_ts: None,
                gateway: "gw-1".into(),
            });
        }
    }
    assert_eq!(out.len(), READINGS);
    out
}

/// The last reading's instant.
const LAST: i64 = FIRST + 7 + (PER_METER - 1) * 21_600;

/// Chunks holding readings of a meter.
fn chunks() -> i64 {
    chunk_of(LAST) - chunk_of(FIRST) + 1
}

/// Packing horizons from before the first reading to after the last: each chunk's start,
/// and an instant inside it (a pack that covers part of its chunk is rewritten later).
fn horizons() -> Vec<i64> {
    let mut out = Vec::new();
    for c in chunk_of(FIRST)..=chunk_of(LAST) {
        out.extend([chunk_start(c), chunk_start(c) + 5 * 86_400 + 7]);
    }
    out.push(chunk_start(chunk_of(LAST) + 1));
    out
}

async fn open(url: &str) -> Store {
    let store = Store::open(url).await.unwrap();
    let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
               hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-1,\nhh-1,d,t,v,100,hp,m2,2025-10-01,,gw-1,\n";
    registry::import(&store, csv.as_bytes(), &Policy::beijing_2018(), "test", NOW)
        .await
        .unwrap();
    store
}

async fn commit(store: &Store, batch: &[NewReading]) {
    let tx = IngestTx {
        readings: batch.to_vec(),
        received: NOW,
        ..Default::default()
    };
    store
        .commit_ingest(&tx, |_, out| {
            out.insert(("hh-1".into(), "2025-2026".into()));
        })
        .await
        .unwrap();
}

/// Every meter read as a round reads it, for several lower bounds, against the table.
async fn assert_rounds_read_the_table(store: &Store) {
    let bounds = [
        None,
        Some(FIRST - 1),
        Some(FIRST + 7),
        Some(FIRST + 20 * 86_400),
        Some(chunk_start(chunk_of(FIRST) + 2) - 1),
        Some(chunk_start(chunk_of(FIRST) + 2)),
        Some(FIRST + 69 * 86_400),
    ];
    for until in [UNTIL, FIRST + 33 * 86_400, chunk_start(chunk_of(FIRST) + 3)] {
        for lower in bounds {
            let ask: Vec<(String, Option<i64>)> = ["m1", "m2"]
                .iter()
                .map(|m| (m.to_string(), lower))
                .collect();
            let (got, _) = store.round_readings(&ask, until).await.unwrap();
            for m in ["m1", "m2"] {
                let want: Vec<StoredReading> = store
                    .readings_of(m, until)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|r| lower.is_none_or(|l| r.ts > l))
                    .collect();
                let have = got.get(m).cloned().unwrap_or_default();
                assert_eq!(have, want, "{m}, after {lower:?}, before {until}");
            }
        }
    }
}

/// Commits the readings in `order`, split at `splits`, packing up to `horizons[k]` after
/// the batches `packs` names; then checks what rounds read and returns the figures.
async fn figures_in(
    url: &str,
    order: &[usize],
    splits: &[usize],
    packs: &[(usize, usize)],
) -> (StatementRow, Vec<NightRow>) {
    let store = open(url).await;
    let all = readings();
    let hs = horizons();
    let seq: Vec<NewReading> = order.iter().map(|&i| all[i % all.len()].clone()).collect();
    let mut engine = Engine::new(Policy::beijing_2018());
    let mut rest = seq.as_slice();
    let mut cut = splits.iter().cycle();
    let mut batch = 0;
    while !rest.is_empty() {
        let n = (*cut.next().unwrap_or(&50)).clamp(1, rest.len());
        let (now, later) = rest.split_at(n);
        commit(&store, now).await;
        for &(at, k) in packs {
            if at == batch {
                store.pack_all(hs[k % hs.len()]).await.unwrap();
            }
        }
        if batch % 3 == 1 {
            recompute::drain(&store, &mut engine, NOW).await.unwrap();
        }
        batch += 1;
        rest = later;
    }
    assert_rounds_read_the_table(&store).await;
    recompute::drain(&store, &mut engine, NOW).await.unwrap();
    let st = store.statement("hh-1", "2025-2026").await.unwrap().unwrap();
    let nights = store.nights("hh-1", "2025-2026").await.unwrap();
    store.close().await;
    (st, nights)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/p.db", dir.path().display())
}

/// The figures of a store that never packed, the readings in time order in one batch.
fn reference() -> (StatementRow, Vec<NightRow>) {
    static ONCE: std::sync::OnceLock<(StatementRow, Vec<NightRow>)> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let n = readings().len();
        rt().block_on(figures_in(
            &sqlite_url(&dir),
            &(0..n).collect::<Vec<_>>(),
            &[n],
            &[],
        ))
    })
    .clone()
}

#[test]
fn packed_in_order_the_figures_are_the_unpacked_ones() {
    let reference = reference();
    // The engine saw the glitch and the spike, and counted energy over many nights.
    assert!(reference.0.offpeak_wh > 0);
    assert!(reference
        .1
        .iter()
        .any(|n| n.flags.iter().any(|f| f == "rejected_reading")));
    let n = readings().len();
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    // Packed at every chunk as the data comes in, then everything packed.
    let packs: Vec<(usize, usize)> = (0..12).map(|b| (b, b)).collect();
    let got = rt().block_on(async {
        let got = figures_in(&url, &(0..n).collect::<Vec<_>>(), &[50], &packs).await;
        // The packs are really there, and really what rounds read from.
        let store = Store::open(&url).await.unwrap();
        store.pack_all(*horizons().last().unwrap()).await.unwrap();
        assert_rounds_read_the_table(&store).await;
        let counts = store.pack_counts().await.unwrap();
        assert_eq!(counts, (2, 2 * chunks()));
        store.close().await;
        got
    });
    assert_eq!(got, reference);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn any_order_packed_at_any_time_gives_the_unpacked_figures(
        perm in Just((0..READINGS).collect::<Vec<_>>()).prop_shuffle(),
        repeats in proptest::collection::vec(0..READINGS, 0..60),
        splits in proptest::collection::vec(1..120usize, 1..6),
        packs in proptest::collection::vec((0..12usize, 0..12usize), 0..6),
    ) {
        let reference = reference();
        let mut order = perm;
        order.extend(repeats);
        let dir = tempfile::tempdir().unwrap();
        let got = rt().block_on(figures_in(&sqlite_url(&dir), &order, &splits, &packs));
        prop_assert_eq!(got, reference);
    }
}

/// PostgreSQL: the same, a few cases on one server.
#[test]
fn on_postgres_any_order_packed_at_any_time_gives_the_unpacked_figures() {
    use proptest::test_runner::{Config, TestRunner};
    let pg = pg_support::PgServer::start(false);
    let reference = reference();
    let strategy = (
        Just((0..READINGS).collect::<Vec<_>>()).prop_shuffle(),
        proptest::collection::vec(1..120usize, 1..6),
        proptest::collection::vec((0..12usize, 0..12usize), 1..6),
    );
    let mut runner = TestRunner::new(Config {
        cases: 3,
        ..Config::default()
    });
    runner
        .run(&strategy, |(order, splits, packs)| {
            let got = rt().block_on(figures_in(&pg.fresh_url(), &order, &splits, &packs));
            prop_assert_eq!(got, reference.clone());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
}

/// PostgreSQL: packing runs again and again while other connections commit late readings
/// into the chunks being packed; afterwards every pack still holds exactly the table.
#[test]
fn on_postgres_packing_racing_late_readings_loses_none() {
    let pg = pg_support::PgServer::start(false);
    let url = pg.fresh_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open(&url).await;
        let all = readings();
        // Every other reading first, in order; packed to the end.
        let (early, late): (Vec<_>, Vec<_>) =
            all.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let early: Vec<NewReading> = early.into_iter().map(|(_, r)| r).collect();
        let late: Vec<NewReading> = late.into_iter().map(|(_, r)| r).collect();
        commit(&store, &early).await;
        let hs = horizons();
        let top = *hs.last().unwrap();
        store.pack_all(top).await.unwrap();
        // Three ingesters commit the rest one reading at a time, while one packs in a loop.
        let mut tasks = Vec::new();
        for part in 0..3 {
            let store = Store::open(&url).await.unwrap();
            let mine: Vec<NewReading> = late.iter().skip(part).step_by(3).cloned().collect();
            tasks.push(tokio::spawn(async move {
                for r in mine {
                    commit(&store, std::slice::from_ref(&r)).await;
                }
            }));
        }
        let packer = {
            let store = Store::open(&url).await.unwrap();
            tokio::spawn(async move {
                let mut passes = 0;
                for _ in 0..400 {
                    store.pack_all(top).await.unwrap();
                    passes += 1;
                }
                passes
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        let passes = packer.await.unwrap();
        assert_eq!(passes, 400);
        // Some late readings fell into packs: dropped and packed again by later passes.
        store.pack_all(top).await.unwrap();
        assert_rounds_read_the_table(&store).await;
        let (covered, packs) = store.pack_counts().await.unwrap();
        assert_eq!((covered, packs), (2, 2 * chunks()));
        store.close().await;
    });
}

/// A round of many meters, read as two halves at once, on SQLite and on PostgreSQL: every
/// meter's readings (from packs and from the table) and conflicts come back, whichever
/// half it fell in, exactly as the table holds them.
async fn a_round_of_many_meters_reads_each_exactly(url: &str) {
    /// More meters than a round reads in one piece (`SPLIT_READ_MIN`, 256).
    const METERS: i64 = 600;
    let store = Store::open(url).await.unwrap();
    let meter = |i: i64| format!("m{i:04}");
    // Meter i: 3 + i % 7 readings a day apart; one meter in ten conflicts on its first.
    let batch: Vec<NewReading> = (0..METERS)
        .flat_map(|i| {
            (0..3 + i % 7).map(move |k| NewReading {
                meter: meter(i),
                ts: FIRST + k * 86_400 + i,
                e_wh: 1_000 * i + 500 * k,
                e_valley_wh: (i % 2 == 0).then_some(100 * k),
                p_w: None,
                meter_ts: None,
                gateway: "gw-1".into(),
            })
        })
        .collect();
    commit(&store, &batch).await;
    let clash: Vec<NewReading> = batch
        .iter()
        .filter(|r| r.ts == FIRST + r.e_wh / 1_000 && (r.e_wh / 1_000) % 10 == 3)
        .map(|r| NewReading {
            e_wh: r.e_wh + 1,
            ..r.clone()
        })
        .collect();
    assert_eq!(clash.len(), 60);
    commit(&store, &clash).await;
    // The first chunks packed: each meter is read below its cover and above it.
    store
        .pack_all(chunk_start(chunk_of(FIRST) + 1))
        .await
        .unwrap();
    let ask: Vec<(String, Option<i64>)> = (0..METERS).map(|i| (meter(i), None)).collect();
    let (got, conflicts) = store.round_readings(&ask, UNTIL).await.unwrap();
    assert_eq!(got.len() as i64, METERS);
    for i in 0..METERS {
        let m = meter(i);
        let want = store.readings_of(&m, UNTIL).await.unwrap();
        assert_eq!(want.len() as i64, 3 + i % 7, "{m}");
        assert_eq!(got.get(&m), Some(&want), "{m}");
        let at = store.conflicts_of(&m).await.unwrap();
        assert_eq!(at.len(), usize::from(i % 10 == 3), "{m}");
        assert_eq!(conflicts.get(&m).cloned().unwrap_or_default(), at, "{m}");
    }
    store.close().await;
}

#[test]
fn a_round_of_many_meters_reads_each_exactly_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(a_round_of_many_meters_reads_each_exactly(&sqlite_url(&dir)));
}

#[test]
fn a_round_of_many_meters_reads_each_exactly_on_postgres() {
    let pg = pg_support::PgServer::start(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(a_round_of_many_meters_reads_each_exactly(&pg.fresh_url()));
}
