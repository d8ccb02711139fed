//! Property tests: the output is a function of the *set* of readings (any order, any
//! repeats), matches the reference rules on random schedules, and a constant power
//! read at the boundaries gives power × hours.

use proptest::collection::vec;
use proptest::prelude::*;
use qingnuan_shared::policy::Policy;

use super::sim::*;
use crate::engine::{HouseholdSeason, RawReading};

/// Ten days of a two-meter household (swapped at 02:00 on Nov 5), readings on a
/// 15-minute grid kept by `keep`, plus `glitches` (grid index, offset Wh, seconds off
/// the grid: 0 makes a same-`ts` conflict, which the engine settles by the smaller value).
pub(super) fn scenario(
    seed: u64,
    keep: &[bool],
    glitches: &[(usize, i64, i64)],
) -> (crate::engine::HouseholdInput, Vec<(usize, RawReading)>) {
    let (s0, _) = season_span();
    let curve = Curve::heating(s0 - 48 * H, s0 + 12 * 24 * H, 3000, 2000, seed);
    let mut a = SimMeter::new(
        "a",
        curve.clone(),
        999_990_000 - i64::try_from(seed % 1000).unwrap() * 1000,
    );
    a.valley_tou = Some((23 * 60, 7 * 60));
    let b = SimMeter::new("b", curve, 5_000);
    let swap = at("2025-11-05", 2, 0);
    let grid = every(s0 - 24 * H, 15 * 60, s0 + 11 * 24 * H);
    let mut reads = Vec::new();
    for (i, &t) in grid.iter().enumerate() {
        if !keep.get(i % keep.len().max(1)).copied().unwrap_or(true) {
            continue;
        }
        if t <= swap {
            reads.push((0, a.read(t)));
        }
        if t >= swap {
            reads.push((1, b.read(t)));
        }
    }
    for &(i, delta, off) in glitches {
        let t = grid[i % grid.len()] + off;
        let (which, m) = if t <= swap { (0, &a) } else { (1, &b) };
        let r = m.read(t);
        reads.push((
            which,
            RawReading {
                e_wh: (r.e_wh + delta).max(0),
                ..r
            },
        ));
    }
    let hh = household(&[(&a, s0 - 30 * 24 * H, Some(swap)), (&b, swap, None)]);
    (hh, reads)
}

fn compute(hh: &crate::engine::HouseholdInput, reads: &[(usize, RawReading)]) -> HouseholdSeason {
    let ids: Vec<_> = hh.meters.iter().map(|s| s.meter.clone()).collect();
    let mut src = std::collections::HashMap::new();
    for &(i, r) in reads {
        src.entry(ids[i].clone()).or_insert_with(Vec::new).push(r);
    }
    let (s0, _) = season_span();
    run_with(&Policy::beijing_2018(), s0 + 10 * 24 * H, hh, &src)
}

/// Fisher-Yates with a fixed LCG.
fn shuffle<T>(v: &mut [T], mut x: u64) {
    for i in (1..v.len()).rev() {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from((x >> 33) % (i as u64 + 1)).unwrap();
        v.swap(i, j);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_permutation_with_any_repeats_gives_the_same_output(
        seed in any::<u64>(),
        keep in vec(prop::bool::weighted(0.8), 1..40),
        glitches in vec((0usize..2000, -600_000i64..600_000, 0i64..2), 0..6),
        order in any::<u64>(),
        repeats in vec(0usize..5000, 0..80),
    ) {
        let (hh, reads) = scenario(seed, &keep, &glitches);
        let reference = compute(&hh, &reads);
        let mut mixed = reads.clone();
        for &i in &repeats {
            if let Some(r) = reads.get(i % reads.len().max(1)) {
                mixed.push(*r);
            }
        }
        shuffle(&mut mixed, order);
        prop_assert_eq!(&compute(&hh, &mixed), &reference);
        // Feeding everything twice changes nothing.
        let twice: Vec<_> = reads.iter().chain(reads.iter()).copied().collect();
        prop_assert_eq!(&compute(&hh, &twice), &reference);
        // And the registry's row order does not matter either.
        let mut swapped = hh.clone();
        swapped.meters.reverse();
        let flipped: Vec<_> = reads.iter().map(|&(i, r)| (1 - i, r)).collect();
        let other = compute(&swapped, &flipped);
        prop_assert_eq!(&other.statement, &reference.statement);
        prop_assert_eq!(
            other.nights.iter().map(|n| (n.night, n.wh, n.quality, n.flags)).collect::<Vec<_>>(),
            reference.nights.iter().map(|n| (n.night, n.wh, n.quality, n.flags)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn random_schedules_match_the_reference_rules(seed in any::<u64>(), keep in vec(prop::bool::weighted(0.3), 1..200)) {
        let (s0, _) = season_span();
        let m = SimMeter::new("m", Curve::heating(s0 - 48 * H, s0 + 12 * 24 * H, 3000, 2000, seed), 123_450);
        let grid = every(s0 - 24 * H + 37, 5 * 60 + 11, s0 + 11 * 24 * H);
        let times: Vec<_> = grid.iter().enumerate().filter(|(i, _)| keep[i % keep.len()]).map(|(_, &t)| t).collect();
        let src = source(vec![(&m, m.reads(&times))]);
        let out = run_with(&Policy::beijing_2018(), s0 + 10 * 24 * H, &household(&[(&m, s0 - 30 * 24 * H, None)]), &src);
        let spans: Vec<_> = night_spans().into_iter().filter(|&(_, _, c)| c <= s0 + 10 * 24 * H).collect();
        prop_assert_eq!(out.nights.len(), spans.len());
        let mut sum = 0;
        for (fig, &(n, a, c)) in out.nights.iter().zip(&spans) {
            let expect = reference_night(&times, |t| m.register(t), a, c);
            prop_assert_eq!((fig.night, fig.quality, fig.wh.0), (n, expect.0, expect.1));
            sum += expect.1;
        }
        prop_assert_eq!(out.statement.offpeak_wh.0, sum);
    }

    #[test]
    fn constant_power_read_at_the_boundaries_gives_power_times_hours(p5 in 0i64..1200, p in 0i64..30_000) {
        let (s0, _) = season_span();
        let hours = 8 + 150 * 12 + 4;
        for (watts, exact) in [(p5 * 5, true), (p, false)] {
            let m = SimMeter::new("m", Curve::constant(s0 - 48 * H, watts), 10_000);
            let times = boundary_times();
            let out = run(&household(&[(&m, s0 - 30 * 24 * H, None)]), &source(vec![(&m, m.reads(&times))]));
            let total = out.statement.offpeak_wh.0;
            prop_assert_eq!(out.statement.nights.actual, 152);
            if exact {
                // A multiple of 5 W makes every boundary a whole 10 Wh step.
                prop_assert_eq!(total, watts * hours);
            } else {
                // Otherwise each night is within one register step.
                prop_assert!((total - watts * hours).abs() < 152 * 10, "{} vs {}", total, watts * hours);
            }
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_nights_are_never_negative(
        raw in vec((any::<i64>(), any::<i64>(), proptest::option::of(any::<i64>())), 0..40),
        near in vec((0i64..20 * 24 * 3600, 0i64..2_000_000, proptest::option::of(0i64..1_000_000)), 0..60),
        spans in vec((any::<i64>(), proptest::option::of(any::<i64>())), 1..4),
        max_power in proptest::option::of(any::<i64>()),
    ) {
        let (s0, _) = season_span();
        let mut readings: Vec<RawReading> =
            raw.iter().map(|&(ts, e, v)| RawReading { ts, e_wh: e, e_valley_wh: v }).collect();
        readings.extend(near.iter().map(|&(dt, e, v)| RawReading { ts: s0 - 24 * H + dt, e_wh: e, e_valley_wh: v }));
        let meter = qingnuan_shared::units::MeterId::new("m").unwrap();
        let mut meters: Vec<_> = spans
            .iter()
            .map(|&(from, to)| crate::engine::MeterSpan { meter: meter.clone(), from, to })
            .collect();
        meters.push(crate::engine::MeterSpan { meter: meter.clone(), from: s0 - 48 * H, to: None });
        let hh = crate::engine::HouseholdInput { id: "x".into(), max_power_w: max_power, meters };
        let src = std::collections::HashMap::from([(meter, readings)]);
        for now in [s0 + 20 * 24 * H, i64::MAX] {
            let out = run_with(&Policy::beijing_2018(), now, &hh, &src);
            for n in &out.nights {
                prop_assert!(n.wh.0 >= 0);
            }
            let c = qingnuan_shared::calendar::Calendar::new(Policy::beijing_2018());
            for n in out.nights.iter().take(3) {
                let _ = crate::engine::explain_night(&c, &hh, &out, n);
            }
        }
    }
}
