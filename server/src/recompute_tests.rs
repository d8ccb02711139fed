//! Resumed recompute equals the whole one: random households (a meter swap, wraps,
//! glitches, valley glitches, gaps, conflicts) get readings in two arrivals; the figures
//! resumed from the first arrival's saved state must equal a whole recompute of
//! everything, and the nights it leaves alone must be exactly as stored.

use std::collections::HashMap;

use proptest::prelude::*;
use qingnuan_shared::calendar::Season;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::MeterId;

use super::*;

const H: i64 = 3600;
const D: i64 = 86_400;
const SEASON: Season = Season { start_year: 2025 };

fn policy() -> Policy {
    let mut p = Policy::beijing_2018();
    // A small register so that wraps happen within the test's weeks.
    p.rules.register_modulus_wh = 100_000_000;
    p
}

/// A deterministic stream of numbers from a seed (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> i64 {
        i64::try_from(self.next() % n.max(1)).unwrap_or(0)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Case {
    input: HouseholdInput,
    /// (span index, reading, arrives in the second batch)
    reads: Vec<(usize, RawReading, bool)>,
    /// (span index, instant) of conflicting values.
    conflicts: Vec<(usize, i64)>,
    since: i64,
    now_old: i64,
    now_new: i64,
}

/// A household over the first `days` nights of the 2025-2026 season.
fn case(seed: u64, days: i64, recent: Option<bool>) -> Case {
    let mut rng = Rng(seed);
    let cal = Calendar::new(policy());
    let (s0, _) = cal.season_span(SEASON);
    let swap = if rng.chance(60) {
        Some(s0 + (2 + rng.below((days - 4).max(1) as u64)) * D + rng.below(D as u64))
    } else {
        None
    };
    let ids = [
        MeterId::new("000000000001").unwrap(),
        MeterId::new("000000000002").unwrap(),
    ];
    let mut spans = vec![MeterSpan {
        meter: ids[0].clone(),
        from: s0 - 30 * D,
        to: swap,
    }];
    if let Some(t) = swap {
        spans.push(MeterSpan {
            meter: ids[1].clone(),
            from: t,
            to: None,
        });
    }
    // Read instants: each 20:00 and 08:00 (+08:00 is 12:00 and 00:00 UTC) with jitter,
    // some dropped, some days of outage, and reads in between.
    let mut times = Vec::new();
    let mut t = s0 - 2 * D;
    let end = s0 + (days + 1) * D;
    while t < end {
        let outage = rng.chance(4);
        for half in [0, 12 * H] {
            if !outage && rng.chance(85) {
                times.push(t + half + rng.below(600) - 300);
            }
        }
        for _ in 0..rng.below(4) {
            times.push(t + rng.below(D as u64));
        }
        t += D;
    }
    // Sometimes a long outage (3 to 6 days without a reading) in the last two weeks.
    if rng.chance(40) {
        let start = s0 + (days - 14 + rng.below(12)) * D + rng.below(D as u64);
        let end = start + (3 + rng.below(4)) * D;
        times.retain(|&t| t < start || t >= end);
    }
    times.sort_unstable();
    times.dedup();
    let modulus = policy().rules.register_modulus_wh;
    let mut reads = Vec::new();
    let mut meter_e = [modulus - 40_000 - rng.below(40_000), rng.below(1_000_000)];
    let mut meter_v = [rng.below(1_000), rng.below(1_000)];
    let mut last_t = [None::<i64>, None];
    for &t in &times {
        for (i, span) in spans.iter().enumerate() {
            if t < span.from || span.to.is_some_and(|to| t > to) {
                continue;
            }
            let dt = last_t[i].map_or(0, |l| t - l);
            let rise = rng.below(u64::try_from(dt * 5_000 / H).unwrap_or(0) + 1);
            meter_e[i] += rise;
            meter_v[i] += rise * 7 / 10;
            last_t[i] = Some(t);
            let mut e = meter_e[i] % modulus;
            let mut v = Some(meter_v[i] % modulus);
            if rng.chance(3) {
                e = 0; // a glitch read of 0
            } else if rng.chance(3) {
                e = (e + 20_000_000) % modulus; // a spike
            }
            if rng.chance(5) {
                v = None;
            } else if rng.chance(3) {
                v = Some(0);
            }
            reads.push((
                i,
                RawReading {
                    ts: t,
                    e_wh: e,
                    e_valley_wh: v,
                },
                false,
            ));
        }
    }
    let frame_len = |now: i64| SeasonFrame::new(&cal, SEASON, now).nights().len();
    let now_new = s0 + (days - 1) * D + 8 * H;
    let now_old = now_new - rng.below(3) * D;
    // New readings: a random share of those from `since` on (usually a night close).
    let since = if recent.unwrap_or_else(|| rng.chance(50)) {
        now_new - 12 * H - rng.below(2 * D as u64)
    } else {
        now_new - rng.below((days * D) as u64)
    };
    for r in &mut reads {
        r.2 = r.1.ts >= since && rng.chance(60);
    }
    let mut conflicts = Vec::new();
    for _ in 0..rng.below(3) {
        if let Some(r) = usize::try_from(rng.below(reads.len() as u64))
            .ok()
            .and_then(|i| reads.get(i))
        {
            conflicts.push((r.0, r.1.ts));
        }
    }
    assert!(frame_len(now_old) <= frame_len(now_new));
    Case {
        input: HouseholdInput {
            id: "hh-1".into(),
            max_power_w: None,
            meters: spans,
        },
        reads,
        conflicts,
        since,
        now_old,
        now_new,
    }
}

/// Engine inputs from the readings `keep` selects, those of span `i` only with `ts > lower[i]`.
fn data(
    c: &Case,
    keep: impl Fn(&(usize, RawReading, bool)) -> bool,
    lower: &[Option<i64>],
    conflicts_before: Option<i64>,
) -> EngineReadings {
    let mut readings: HashMap<MeterId, Vec<RawReading>> = HashMap::new();
    let mut conflicts: HashMap<MeterId, Vec<i64>> = HashMap::new();
    for r in c.reads.iter().filter(|r| keep(r)) {
        let lo = lower.get(r.0).copied().flatten();
        if lo.is_some_and(|lo| r.1.ts <= lo) {
            continue;
        }
        readings
            .entry(c.input.meters[r.0].meter.clone())
            .or_default()
            .push(r.1);
    }
    for &(i, t) in &c.conflicts {
        if conflicts_before.is_some_and(|s| t >= s) {
            continue;
        }
        conflicts
            .entry(c.input.meters[i].meter.clone())
            .or_default()
            .push(t);
    }
    for v in conflicts.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    (readings, conflicts)
}

/// Runs one case; returns whether it was resumed (rather than recomputed whole).
fn check(seed: u64, days: i64, recent: Option<bool>) -> bool {
    let c = case(seed, days, recent);
    let mut engine = Engine::new(policy());
    let fp = resume::fingerprint(engine.policy(), &c.input);
    let frame_old = engine.frame(SEASON, c.now_old);
    let frame_new = engine.frame(SEASON, c.now_new);
    // Readings of the second batch, and conflicts at instants from `since` on, are new.
    let since = c.since;
    assert!(c.reads.iter().filter(|r| r.2).all(|r| r.1.ts >= since));
    let old_data = data(&c, |r| !r.2, &[], Some(since));
    let (_, rows_old, _, state_old) = compute_pair(
        &mut engine,
        &frame_old,
        &c.input,
        fp,
        &old_data.0,
        &old_data.1,
        None,
    );
    let all = data(&c, |_| true, &[], None);
    let (st_ref, rows_ref, _, state_ref) =
        compute_pair(&mut engine, &frame_new, &c.input, fp, &all.0, &all.1, None);
    let old = SeasonState::from_bytes(&state_old.to_bytes()).expect("state reads back");
    assert_eq!(old, state_old);
    let max_gap = engine.policy().rules.max_gap_s;
    let Some(plan) = resume::plan(&frame_new, &c.input, &old, since, max_gap) else {
        return false;
    };
    // The store reads a meter from the lowest bound of its spans.
    let lower: Vec<Option<i64>> = plan.lower.clone();
    let resumed_data = data(&c, |_| true, &lower, None);
    let (st, rows, from, state) = compute_pair(
        &mut engine,
        &frame_new,
        &c.input,
        fp,
        &resumed_data.0,
        &resumed_data.1,
        Some((plan.clone(), old)),
    );
    let from = from.expect("a resumed run names its first night");
    assert_eq!(st, st_ref, "statement, seed {seed}, plan {plan:?}");
    let tail: Vec<_> = rows_ref
        .iter()
        .filter(|n| n.night >= from)
        .cloned()
        .collect();
    assert_eq!(rows, tail, "recomputed nights, seed {seed}, plan {plan:?}");
    let head_ref: Vec<_> = rows_ref.iter().filter(|n| n.night < from).collect();
    let head_old: Vec<_> = rows_old.iter().filter(|n| n.night < from).collect();
    for (a, b) in head_ref.iter().zip(&head_old) {
        if a != b {
            eprintln!(
                "DIFF since={since} now_old={} now_new={}\nREF {a:?}\nOLD {b:?}",
                c.now_old, c.now_new
            );
        }
    }
    assert_eq!(
        head_ref, head_old,
        "nights left alone, seed {seed}, plan {plan:?}"
    );
    assert_eq!(state, state_ref, "saved state, seed {seed}, plan {plan:?}");
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn resumed_figures_equal_the_whole_recompute(seed in any::<u64>(), days in 6i64..40) {
        check(seed, days, None);
    }
}

#[test]
fn most_arrivals_are_resumed_and_a_night_close_recomputes_a_few_nights() {
    // New readings from the last two days (a night close, a spool replayed after an
    // outage) resume; only older ones than the saved states recompute whole.
    let resumed = (0..300u64).filter(|&s| check(s, 30, Some(true))).count();
    assert!(
        resumed >= 285,
        "only {resumed} of 300 recent arrivals resumed"
    );
    // A night close of a clean household: its two boundary reads arrive.
    let cal = Calendar::new(policy());
    let (s0, _) = cal.season_span(SEASON);
    let m = MeterId::new("000000000009").unwrap();
    let input = HouseholdInput {
        id: "hh-2".into(),
        max_power_w: None,
        meters: vec![MeterSpan {
            meter: m.clone(),
            from: s0 - D,
            to: None,
        }],
    };
    let mut reads = Vec::new();
    for k in -1..30 {
        reads.push(RawReading {
            ts: s0 + k * D + 12 * H,
            e_wh: 1_000_000 + k * 40_000,
            e_valley_wh: None,
        });
        reads.push(RawReading {
            ts: s0 + (k + 1) * D,
            e_wh: 1_000_000 + k * 40_000 + 30_000,
            e_valley_wh: None,
        });
    }
    let mut engine = Engine::new(policy());
    let fp = resume::fingerprint(engine.policy(), &input);
    let last_open = s0 + 29 * D + 12 * H;
    let old: HashMap<MeterId, Vec<RawReading>> = [(
        m.clone(),
        reads.iter().copied().filter(|r| r.ts < last_open).collect(),
    )]
    .into();
    let frame_old = engine.frame(SEASON, s0 + 29 * D);
    let (_, _, _, state) = compute_pair(
        &mut engine,
        &frame_old,
        &input,
        fp,
        &old,
        &HashMap::new(),
        None,
    );
    let frame_new = engine.frame(SEASON, s0 + 30 * D);
    let plan = resume::plan(
        &frame_new,
        &input,
        &state,
        last_open,
        engine.policy().rules.max_gap_s,
    )
    .expect("a night close resumes");
    let n = frame_new.nights().len();
    assert!(
        n - plan.from <= 5,
        "recomputes {} of {n} nights",
        n - plan.from
    );
    assert!(
        plan.lower[0].is_some_and(|lo| lo >= s0 + 20 * D),
        "reads from {:?}",
        plan.lower
    );
}

#[test]
fn regression_seed_7524023276621536652() {
    check(7_524_023_276_621_536_652, 27, None);
}
