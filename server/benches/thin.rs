//! Thinning benchmark (bounded state, engine/thin.rs): a season read as the agent reads
//! by default (every 15 minutes inside 20:00–08:00 plus the boundaries), how many readings
//! a settled season keeps and what deciding that costs per household, one core.
//!
//! `cargo bench -p qingnuan-server --bench thin` (env `BENCH_HOUSEHOLDS`, default 2000).
//! Every household's nights are checked against the closed form of its register, from
//! all readings and from the kept ones, so a fast wrong answer fails.

use std::collections::HashMap;
use std::time::Instant;

use qingnuan_server::engine::{Engine, HouseholdInput, MeterSpan, RawReading};
use qingnuan_shared::calendar::Season;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::{div_round_half_up, MeterId};

/// 2025-10-31 20:00 +08:00, the first night of the 2025-2026 season opens.
const FIRST_OPEN: i64 = 1_761_912_000;
/// Nights in the 2025-2026 season (Oct 31 … Mar 31).
const NIGHTS: i64 = 152;
/// 2026-04-01 00:00 +08:00, the season's end.
const SEASON_END: i64 = 1_774_972_800;

/// Household `h`'s register at `t`, Wh: `1000 + h` W from FIRST_OPEN − 1 day on, read
/// in whole Wh (floor).
fn register(h: i64, t: i64) -> i64 {
    1_000_000 + (1000 + h) * (t - (FIRST_OPEN - 86_400)) / 3600
}

fn main() {
    let n: i64 = std::env::var("BENCH_HOUSEHOLDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let policy = Policy::beijing_2018();
    let mut engine = Engine::new(policy);
    let frame = engine.frame(Season { start_year: 2025 }, SEASON_END);
    // Every 15 minutes from 20:00 to 08:00 (49 reads a night, both boundaries included).
    let times: Vec<i64> = (0..NIGHTS)
        .flat_map(|k| (0..=48).map(move |q| FIRST_OPEN + k * 86_400 + q * 900))
        .collect();
    let (mut considered, mut kept, mut fill_s, mut thin_s) = (0usize, 0usize, 0f64, 0f64);
    let (mut all_s, mut kept_s) = (0f64, 0f64);
    for h in 0..n {
        let t0 = Instant::now();
        let meter = MeterId::new(&format!("{:012}", 100_000_000_000 + h)).expect("id");
        let hh = HouseholdInput {
            id: format!("hh-{h}"),
            max_power_w: None,
            meters: vec![MeterSpan {
                meter: meter.clone(),
                from: FIRST_OPEN - 30 * 86_400,
                to: None,
            }],
        };
        let reads: Vec<RawReading> = times
            .iter()
            .map(|&t| RawReading {
                ts: t,
                e_wh: register(h, t),
                e_valley_wh: None,
            })
            .collect();
        let src = HashMap::from([(meter.clone(), reads)]);
        let t1 = Instant::now();
        let th = engine.thin(&frame, &hh, &src, SEASON_END);
        let t2 = Instant::now();
        fill_s += (t1 - t0).as_secs_f64();
        thin_s += (t2 - t1).as_secs_f64();
        assert!(th.verified, "household {h}: thinning not verified");
        considered += th.considered;
        kept += th.considered - th.dropped();
        // The figures from the kept readings against the closed form.
        let gone = th.drop.get(&meter).cloned().unwrap_or_default();
        let left: Vec<RawReading> = src[&meter]
            .iter()
            .filter(|r| gone.binary_search(&r.ts).is_err())
            .copied()
            .collect();
        let left = HashMap::from([(meter, left)]);
        let t3 = Instant::now();
        let whole = engine.household(&frame, &hh, &src);
        let t4 = Instant::now();
        let out = engine.household(&frame, &hh, &left);
        kept_s += t4.elapsed().as_secs_f64();
        all_s += (t4 - t3).as_secs_f64();
        assert_eq!(out, whole);
        let mut expect = 0;
        for (night, (_, open, close)) in out.nights.iter().zip(frame.nights()) {
            let wh = register(h, *close) - register(h, *open);
            assert_eq!(night.wh.0, wh, "household {h} night {}", night.night);
            expect += wh;
        }
        assert_eq!(out.statement.offpeak_wh.0, expect);
        assert_eq!(
            i128::from(out.statement.city_fen.0),
            div_round_half_up(i128::from(expect.min(10_000_000)) * 10, 1000),
        );
    }
    let per_hh_us = thin_s * 1e6 / n as f64;
    println!(
        "thin: {n} households, {considered} readings in the season ({} a household), {kept} kept ({:.2} %, {:.1} a night)",
        considered / usize::try_from(n).unwrap_or(1),
        100.0 * kept as f64 / considered as f64,
        kept as f64 / n as f64 / NIGHTS as f64,
    );
    println!(
        "thin: {per_hh_us:.0} µs a household on one core (two computations and the choice), {:.1} s for 100,000 on one core; filling the inputs took {fill_s:.2} s",
        per_hh_us * 100_000.0 / 1e6,
    );
    println!(
        "thin: the season computed from all readings {:.0} µs a household, from the kept ones {:.0} µs",
        all_s * 1e6 / n as f64,
        kept_s * 1e6 / n as f64,
    );
}
