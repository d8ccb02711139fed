//! Through the store: the same readings committed in any order, split into any batches,
//! with any repeats, give identical stored nights and statements, on SQLite and on
//! PostgreSQL alike.

mod pg_support;

use proptest::prelude::*;
use qingnuan_server::engine::Engine;
use qingnuan_server::store::{IngestTx, NewReading, NightRow, StatementRow, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::policy::Policy;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
/// 2025-11-06 12:00 +08:00
const NOW: i64 = NOV1_20 + 4 * 86_400 + 16 * 3600;

/// Two meters of one household, 15-minute reads over four nights with a glitch and a spike.
fn readings() -> Vec<NewReading> {
    let mut out = Vec::new();
    for (meter, base, per_q) in [("m1", 5_000_000, 700), ("m2", 999_990_000, 450)] {
        for q in 0..(4 * 96) {
            let ts = NOV1_20 + 7 + q * 900;
            let mut e = base + q * per_q;
            if meter == "m2" {
                e %= 1_000_000_000; // the register wraps
            }
            if meter == "m1" && q == 50 {
                e = 0; // glitch: rejected
            }
            if meter == "m1" && q == 120 {
                e += 900_000; // spike: rejected
            }
            out.push(NewReading {
                meter: meter.into(),
                ts,
                e_wh: e,
                e_valley_wh: None,
                p_w: None,
                meter_ts: None,
                gateway: "gw-1".into(),
            });
        }
    }
    out
}

async fn figures(order: &[usize], splits: &[usize]) -> (StatementRow, Vec<NightRow>) {
    let dir = tempfile::tempdir().unwrap();
    figures_in(
        &format!("sqlite://{}/o.db", dir.path().display()),
        order,
        splits,
    )
    .await
}

/// [`figures`] in the (empty) store at `url`.
async fn figures_in(url: &str, order: &[usize], splits: &[usize]) -> (StatementRow, Vec<NightRow>) {
    let store = Store::open(url).await.unwrap();
    let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
               hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-1,\nhh-1,d,t,v,100,hp,m2,2025-10-01,,gw-1,\n";
    let policy = Policy::beijing_2018();
    registry::import(&store, csv.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let all = readings();
    let seq: Vec<NewReading> = order
        .iter()
        .filter_map(|&i| all.get(i % all.len()).cloned())
        .collect();
    let mut engine = Engine::new(policy);
    let mut rest = seq.as_slice();
    let mut cut = splits.iter().cycle();
    while !rest.is_empty() {
        let n = (*cut.next().unwrap_or(&50)).clamp(1, rest.len());
        let (now, later) = rest.split_at(n);
        let tx = IngestTx {
            readings: now.to_vec(),
            received: NOW,
            ..Default::default()
        };
        store
            .commit_ingest(&tx, |_, out| {
                out.insert(("hh-1".into(), "2025-2026".into()));
            })
            .await
            .unwrap();
        // recompute between some batches, as the running server does
        if n % 3 == 0 {
            recompute::drain(&store, &mut engine, NOW).await.unwrap();
        }
        rest = later;
    }
    recompute::drain(&store, &mut engine, NOW).await.unwrap();
    let st = store.statement("hh-1", "2025-2026").await.unwrap().unwrap();
    let nights = store.nights("hh-1", "2025-2026").await.unwrap();
    (st, nights)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn in_time_order_the_figures_are_the_expected_ones() {
    let n = readings().len();
    let (st, nights) = rt().block_on(figures(&(0..n).collect::<Vec<_>>(), &[n]));
    // both meters are read every 15 min, 7 s after the quarter: a boundary with readings
    // on both sides is `actual` (within 120 s), interpolated; the glitch (a 0 read, not a
    // plausible wrap), the spike are set aside, m2's wrap past 10^9 Wh is followed.
    let listed: Vec<&str> = nights.iter().map(|n| n.quality.as_str()).collect();
    // Oct 31 and Nov 1: nothing before Nov 1 20:00 (the first read is 7 s after it);
    // Nov 5: nothing after 20:00
    assert_eq!(
        listed,
        vec!["missing", "missing", "actual", "actual", "actual", "missing"]
    );
    // a night is 48 quarters: m1 700 Wh and m2 450 Wh a quarter -> 55.200 kWh
    let wh: Vec<i64> = nights.iter().map(|n| n.wh).collect();
    assert_eq!(wh, vec![0, 0, 48 * 1150, 48 * 1150, 48 * 1150, 0]);
    assert_eq!(st.offpeak_wh, 3 * 48 * 1150);
    assert!(nights
        .iter()
        .any(|n| n.flags.iter().any(|f| f == "rejected_reading")));
    assert!(nights
        .iter()
        .any(|n| n.flags.iter().any(|f| f == "register_wrap")));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_order_any_batches_any_repeats_same_figures(
        perm in Just((0..768usize).collect::<Vec<_>>()).prop_shuffle(),
        repeats in proptest::collection::vec(0..768usize, 0..200),
        splits in proptest::collection::vec(1..300usize, 1..8),
    ) {
        let rt = rt();
        let n = readings().len();
        let reference = rt.block_on(figures(&(0..n).collect::<Vec<_>>(), &[n]));
        let mut order = perm;
        order.extend(repeats);
        let got = rt.block_on(figures(&order, &splits));
        prop_assert_eq!(got, reference);
    }
}

/// PostgreSQL: the same readings in any order, batches and repeats give the figures
/// SQLite gives in time order (one server, a database per case).
#[test]
fn on_postgres_any_order_gives_the_sqlite_figures() {
    use proptest::test_runner::{Config, TestRunner};
    let pg = pg_support::PgServer::start(false);
    let rt = rt();
    let n = readings().len();
    let reference = rt.block_on(figures(&(0..n).collect::<Vec<_>>(), &[n]));
    let in_order = rt.block_on(figures_in(
        &pg.fresh_url(),
        &(0..n).collect::<Vec<_>>(),
        &[n],
    ));
    assert_eq!(in_order, reference);
    let strategy = (
        Just((0..768usize).collect::<Vec<_>>()).prop_shuffle(),
        proptest::collection::vec(0..768usize, 0..200),
        proptest::collection::vec(1..300usize, 1..8),
    );
    let mut runner = TestRunner::new(Config {
        cases: 4,
        ..Config::default()
    });
    runner
        .run(&strategy, |(perm, repeats, splits)| {
            let mut order = perm;
            order.extend(repeats);
            let got = rt.block_on(figures_in(&pg.fresh_url(), &order, &splits));
            prop_assert_eq!(got, reference.clone());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
}
