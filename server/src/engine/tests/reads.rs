//! Scenarios on read schedules: boundary reads, 15-minute reads off the boundaries,
//! outages, daytime reads around the clock, and the season's edge nights.

use qingnuan_shared::policy::Policy;

use super::sim::*;
use crate::engine::{EdgeKind, Quality};

#[test]
fn boundary_reads_are_all_actual_and_equal_the_truth_to_the_register_step() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 24 * H, 3000, 1500, 1),
        12_345_670,
    );
    let mut times = boundary_times();
    times.extend(every(at("2025-11-01", 12, 0), 24 * H, s1)); // a daytime read too
    times.sort_unstable();
    let out = run(
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, m.reads(&times))]),
    );
    let total = check_single(&out, &m, &times);
    assert_eq!(out.nights.len(), 152);
    assert_eq!(out.statement.nights.actual, 152);
    for (fig, &(_, a, c)) in out.nights.iter().zip(&night_spans()) {
        // Reads at the boundaries: the night is the register difference, within one
        // 10 Wh step of the true energy.
        assert_eq!(fig.wh.0, m.register_unwrapped(c) - m.register_unwrapped(a));
        let truth_ws = m.curve.ws(c) - m.curve.ws(a);
        assert!(
            (i128::from(fig.wh.0) * 3600 - truth_ws).abs() < 10 * 3600,
            "{}",
            fig.night
        );
        let p = &out.parts_of(fig)[0];
        assert_eq!(
            (p.start.r1.map(|r| r.ts), p.end.r2.map(|r| r.ts)),
            (Some(a), Some(c))
        );
    }
    assert!(total > 152 * 20_000, "the curve heats: {total}");
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn fifteen_minute_reads_off_the_boundaries_are_estimated_by_exact_interpolation() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 800, 2),
        1_000_000,
    );
    // Around the clock at :07, :22, :37, :52: 7 and 8 minutes from every boundary.
    let times = every(s0 - 24 * H + 7 * 60, 15 * 60, s1 + 24 * H);
    let out = run(
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, m.reads(&times))]),
    );
    check_single(&out, &m, &times);
    assert_eq!(out.statement.nights.estimated, 152);
    let fig = out.night(night("2025-12-24")).unwrap();
    let p = &out.parts_of(fig)[0];
    let b = at("2025-12-24", 20, 0);
    assert_eq!(
        (p.start.t, p.start.kind, p.start.quality),
        (b, EdgeKind::Open, Quality::Estimated)
    );
    assert_eq!(
        p.start.r1.map(|r| (r.ts, r.e_wh)),
        Some((b - 8 * 60, m.register(b - 8 * 60)))
    );
    assert_eq!(
        p.start.r2.map(|r| (r.ts, r.e_wh)),
        Some((b + 7 * 60, m.register(b + 7 * 60)))
    );
    assert_eq!(
        p.start.e_wh.map(|e| e.0),
        Some(reference_e(&times, |t| m.register_unwrapped(t), b).0)
    );
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn a_two_day_outage_is_estimated_and_a_five_day_outage_is_missing() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 2500, 1000, 3),
        77_000_000,
    );
    let two = (at("2025-12-10", 21, 0), at("2025-12-12", 21, 0));
    let five = (at("2026-01-10", 21, 0), at("2026-01-15", 21, 0));
    let times: Vec<_> = every(s0 - 24 * H, 15 * 60, s1 + 24 * H)
        .into_iter()
        .filter(|&t| !(two.0 + 1..two.1).contains(&t) && !(five.0 + 1..five.1).contains(&t))
        .collect();
    let out = run(
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, m.reads(&times))]),
    );
    check_single(&out, &m, &times);
    let q = |d: &str| out.night(night(d)).map(|n| (n.quality, n.wh.0));
    for d in ["2025-12-10", "2025-12-11", "2025-12-12"] {
        assert_eq!(q(d).map(|x| x.0), Some(Quality::Estimated), "{d}");
    }
    for d in [
        "2026-01-10",
        "2026-01-11",
        "2026-01-12",
        "2026-01-13",
        "2026-01-14",
        "2026-01-15",
    ] {
        assert_eq!(q(d), Some((Quality::Missing, 0)), "{d}");
    }
    assert_eq!(q("2025-12-09").map(|x| x.0), Some(Quality::Actual));
    assert_eq!(q("2026-01-16").map(|x| x.0), Some(Quality::Actual));
    let c = out.statement.nights;
    assert_eq!((c.actual, c.estimated, c.missing), (152 - 9, 3, 6));
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn daytime_never_counts_with_reads_around_the_clock() {
    let (s0, s1) = season_span();
    // 10 kW by day, 1 kW at night: most of the energy is daytime.
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 1000, 10_000, 4),
        5_000,
    );
    let times = every(s0 - 24 * H, 15 * 60, s1 + 24 * H);
    let out = run(
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, m.reads(&times))]),
    );
    let total = check_single(&out, &m, &times);
    assert_eq!(out.statement.nights.actual, 152);
    let all_day = m.register_unwrapped(s1) - m.register_unwrapped(s0);
    assert!(total * 5 < all_day, "off-peak {total} Wh of {all_day} Wh");
    let truth_ws: i128 = night_spans()
        .iter()
        .map(|&(_, a, c)| m.curve.ws(c) - m.curve.ws(a))
        .sum();
    assert!((i128::from(total) * 3600 - truth_ws).abs() < 152 * 10 * 3600);
}

#[test]
fn the_season_edge_nights_are_clipped_to_the_season() {
    let (s0, s1) = season_span();
    let m = SimMeter::new("m1", Curve::constant(s0 - 48 * H, 2000), 10_000);
    let times = boundary_times();
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let src = source(vec![(&m, m.reads(&times))]);
    let out = run(&hh, &src);
    check_single(&out, &m, &times);
    let first = &out.nights[0];
    assert_eq!(
        (first.night, first.span),
        (night("2025-10-31"), (s0, s0 + 8 * H))
    );
    assert_eq!(first.wh.0, 2000 * 8);
    let last = out.nights.last().unwrap();
    assert_eq!(
        (last.night, last.span),
        (night("2026-03-31"), (s1 - 4 * H, s1))
    );
    assert_eq!(last.wh.0, 2000 * 4);
    assert_eq!(out.statement.offpeak_wh.0, 2000 * (8 + 150 * 12 + 4));
    // A night is listed once its window has closed.
    let early = run_with(&Policy::beijing_2018(), s1 - 1, &hh, &src);
    assert_eq!(early.nights.len(), 151);
    assert_eq!(early.statement.offpeak_wh.0, 2000 * (8 + 150 * 12));
    let none = run_with(&Policy::beijing_2018(), s0 + 8 * H - 1, &hh, &src);
    assert!(none.nights.is_empty());
    assert_eq!(none.statement.offpeak_wh.0, 0);
}
