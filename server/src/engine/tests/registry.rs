//! Scenarios of meter validity: a meter swapped by day, one swapped in the middle of a
//! night, a household converted mid-season, and two meters in one household.

use qingnuan_shared::policy::Policy;

use super::sim::*;
use crate::engine::{EdgeKind, Flags, Quality};

#[test]
fn a_meter_swapped_by_day_hands_over_at_the_next_night() {
    let (s0, s1) = season_span();
    let curve = Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1200, 11);
    let old = SimMeter::new("old", curve.clone(), 3_000_000);
    let new = SimMeter::new("new", curve, 20_000);
    let swap = at("2025-12-01", 12, 0);
    let all = boundary_times();
    let old_times: Vec<_> = all
        .iter()
        .copied()
        .filter(|&t| t < swap)
        .chain([swap])
        .collect();
    let new_times: Vec<_> = [swap]
        .into_iter()
        .chain(all.iter().copied().filter(|&t| t > swap))
        .collect();
    let hh = household(&[(&new, swap, None), (&old, s0 - 30 * 24 * H, Some(swap))]);
    let out = run(
        &hh,
        &source(vec![
            (&old, old.reads(&old_times)),
            (&new, new.reads(&new_times)),
        ]),
    );
    assert_eq!(out.nights.len(), 152);
    let mut sum = 0;
    for (fig, &(n, a, c)) in out.nights.iter().zip(&night_spans()) {
        let (m, times, span) = if c <= swap {
            (&old, &old_times, 1)
        } else {
            (&new, &new_times, 0)
        };
        let (q, wh) = reference_night(times, |t| m.register_unwrapped(t), a, c);
        assert_eq!((fig.night, fig.quality, fig.wh.0), (n, q, wh));
        assert_eq!(q, Quality::Actual);
        let parts = out.parts_of(fig);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].span, span, "the part names the registry row");
        assert!(fig.flags.is_empty());
        sum += wh;
    }
    assert_eq!(out.statement.offpeak_wh.0, sum);
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn a_meter_swapped_in_the_middle_of_a_night_splits_the_night() {
    let (s0, s1) = season_span();
    let curve = Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1200, 12);
    let old = SimMeter::new("old", curve.clone(), 3_000_000);
    let new = SimMeter::new("new", curve, 0);
    let swap = at("2025-12-01", 2, 0); // in the night labelled Nov 30
    let all = boundary_times();
    let old_times: Vec<_> = all
        .iter()
        .copied()
        .filter(|&t| t < swap)
        .chain([swap])
        .collect();
    // The new meter's first read comes 5 minutes after it was installed.
    let new_times: Vec<_> = [swap + 300]
        .into_iter()
        .chain(all.iter().copied().filter(|&t| t > swap))
        .collect();
    let hh = household(&[(&old, s0 - 30 * 24 * H, Some(swap)), (&new, swap, None)]);
    let out = run(
        &hh,
        &source(vec![
            (&old, old.reads(&old_times)),
            (&new, new.reads(&new_times)),
        ]),
    );
    assert_eq!(out.nights.len(), 152);
    let fig = out.night(night("2025-11-30")).unwrap();
    let (open, close) = (at("2025-11-30", 20, 0), at("2025-12-01", 8, 0));
    let parts = out.parts_of(fig);
    assert_eq!(parts.len(), 2);
    let (a, b) = (&parts[0], &parts[1]);
    assert_eq!(
        (a.span, a.start.t, a.start.kind, a.end.t, a.end.kind),
        (0, open, EdgeKind::Open, swap, EdgeKind::Removal)
    );
    assert_eq!(
        (b.span, b.start.t, b.start.kind, b.end.t, b.end.kind),
        (1, swap, EdgeKind::Install, close, EdgeKind::Close)
    );
    // No extrapolation: the new meter's value at the swap is its first reading, 5 minutes on.
    assert_eq!(b.start.e_wh.map(|e| e.0), Some(new.register(swap + 300)));
    assert_eq!(b.start.quality, Quality::Estimated);
    assert_eq!(a.end.quality, Quality::Actual);
    let expect = (old.register(swap) - old.register(open))
        + (new.register(close) - new.register(swap + 300));
    assert_eq!((fig.wh.0, fig.quality), (expect, Quality::Estimated));
    assert!(!fig.flags.contains(Flags::PARTIAL));
    // Every other night is one meter's register difference.
    for (fig, &(n, a, c)) in out.nights.iter().zip(&night_spans()) {
        if n == night("2025-11-30") {
            continue;
        }
        let m = if c <= swap { &old } else { &new };
        assert_eq!(
            (fig.quality, fig.wh.0),
            (Quality::Actual, m.register(c) - m.register(a)),
            "{n}"
        );
    }
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn a_household_converted_mid_season_starts_at_its_install_instant() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1200, 13),
        0,
    );
    // Registered from 2026-01-15 (local midnight, inside the night labelled Jan 14);
    // the first read came 61 s later; earlier readings (commissioning tests) are not the household's.
    let install = at("2026-01-15", 0, 0);
    let mut times: Vec<_> = boundary_times()
        .into_iter()
        .filter(|&t| t > install)
        .collect();
    times.insert(0, install + 61);
    let mut reads = m.reads(&times);
    reads.extend(m.reads(&[at("2026-01-10", 20, 0), at("2026-01-11", 8, 0)]));
    let out = run(
        &household(&[(&m, install, None)]),
        &source(vec![(&m, reads)]),
    );
    let listed: Vec<_> = night_spans()
        .into_iter()
        .filter(|&(_, _, c)| c > install)
        .collect();
    assert_eq!(out.nights.len(), listed.len());
    let first = &out.nights[0];
    assert_eq!(first.night, night("2026-01-14"));
    let p = &out.parts_of(first)[0];
    assert_eq!(
        (p.start.t, p.start.kind, p.start.quality),
        (install, EdgeKind::Install, Quality::Actual)
    );
    assert_eq!(
        first.wh.0,
        m.register(at("2026-01-15", 8, 0)) - m.register(install + 61)
    );
    assert!(first.flags.contains(Flags::PARTIAL));
    let mut sum = first.wh.0;
    for (fig, &(n, a, c)) in out.nights.iter().zip(&listed).skip(1) {
        assert_eq!(
            (fig.night, fig.quality, fig.wh.0),
            (n, Quality::Actual, m.register(c) - m.register(a))
        );
        assert!(fig.flags.is_empty());
        sum += fig.wh.0;
    }
    assert_eq!(out.statement.offpeak_wh.0, sum);
    assert!(out.statement.flags.contains(Flags::PARTIAL));
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn two_meters_in_one_household_add_up_and_the_worst_quality_wins() {
    let (s0, s1) = season_span();
    let pump = SimMeter::new(
        "pump",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1000, 14),
        1_230_000,
    );
    let heater = SimMeter::new(
        "heater",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 1500, 200, 15),
        45_670,
    );
    let at_boundaries = boundary_times();
    let off = every(s0 - 24 * H + 7 * 60, 15 * 60, s1 + 24 * H);
    let hh = household(&[
        (&pump, s0 - 30 * 24 * H, None),
        (&heater, s0 - 30 * 24 * H, None),
    ]);
    let out = run(
        &hh,
        &source(vec![
            (&pump, pump.reads(&at_boundaries)),
            (&heater, heater.reads(&off)),
        ]),
    );
    assert_eq!(out.nights.len(), 152);
    let mut sum = 0;
    for (fig, &(n, a, c)) in out.nights.iter().zip(&night_spans()) {
        let (q1, w1) = reference_night(&at_boundaries, |t| pump.register(t), a, c);
        let (q2, w2) = reference_night(&off, |t| heater.register(t), a, c);
        assert_eq!((q1, q2), (Quality::Actual, Quality::Estimated));
        assert_eq!(
            (fig.quality, fig.wh.0),
            (Quality::Estimated, w1 + w2),
            "{n}"
        );
        let parts = out.parts_of(fig);
        // Parts come in (from, to, meter id) order: "heater" (span 1) before "pump" (span 0).
        assert_eq!(
            parts
                .iter()
                .map(|p| (p.span, p.wh.map(|w| w.0)))
                .collect::<Vec<_>>(),
            [(1, Some(w2)), (0, Some(w1))]
        );
        sum += w1 + w2;
    }
    assert_eq!(out.statement.offpeak_wh.0, sum);
    assert_eq!(out.statement.nights.estimated, 152);
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn a_night_is_partial_when_the_union_of_its_parts_leaves_a_gap() {
    let (s0, s1) = season_span();
    let curve = Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1200, 16);
    let a = SimMeter::new("a", curve.clone(), 100_000);
    let b = SimMeter::new("b", curve, 200_000);
    // Both meters leave at 02:00 in the night labelled Nov 30: 12 h of parts, 6 h covered.
    let out_at = at("2025-12-01", 2, 0);
    let times: Vec<_> = boundary_times()
        .into_iter()
        .filter(|&t| t < out_at)
        .chain([out_at])
        .collect();
    let hh = household(&[
        (&a, s0 - 30 * 24 * H, Some(out_at)),
        (&b, s0 - 30 * 24 * H, Some(out_at)),
    ]);
    let out = run(
        &hh,
        &source(vec![(&a, a.reads(&times)), (&b, b.reads(&times))]),
    );
    let last = out.nights.last().unwrap();
    assert_eq!(last.night, night("2025-11-30"));
    assert!(last.flags.contains(Flags::PARTIAL));
    let open = at("2025-11-30", 20, 0);
    assert_eq!(
        last.wh.0,
        (a.register(out_at) - a.register(open)) + (b.register(out_at) - b.register(open))
    );
    assert!(out
        .nights
        .iter()
        .rev()
        .skip(1)
        .all(|n| !n.flags.contains(Flags::PARTIAL)));
}

#[test]
fn a_meter_moved_to_another_household_pays_each_for_its_own_nights() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1200, 17),
        555_000,
    );
    let moved = at("2026-01-20", 3, 0); // in the night labelled Jan 19
    let mut times = boundary_times();
    times.push(moved);
    times.sort_unstable();
    let src = source(vec![(&m, m.reads(&times))]);
    let first = run(&household(&[(&m, s0 - 30 * 24 * H, Some(moved))]), &src);
    let second = run(&household(&[(&m, moved, None)]), &src);
    let whole = run(&household(&[(&m, s0 - 30 * 24 * H, None)]), &src);
    assert_eq!(
        first.statement.offpeak_wh.0 + second.statement.offpeak_wh.0,
        whole.statement.offpeak_wh.0
    );
    let split = night("2026-01-19");
    let (a, b, w) = (
        first.night(split).unwrap(),
        second.night(split).unwrap(),
        whole.night(split).unwrap(),
    );
    assert_eq!(a.wh.0 + b.wh.0, w.wh.0);
    assert!(
        a.flags.contains(Flags::PARTIAL)
            && b.flags.contains(Flags::PARTIAL)
            && !w.flags.contains(Flags::PARTIAL)
    );
    assert_eq!(first.nights.last().unwrap().night, split);
    assert_eq!(second.nights[0].night, split);
    assert_eq!(
        first.nights.len() + second.nights.len(),
        whole.nights.len() + 1
    );
}
