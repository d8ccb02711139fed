//! Scenarios of the season: the cap reached in March and the money, and the valley
//! register cross-check (`tou_mismatch`, and paying from the valley register).

use qingnuan_shared::policy::{EnergySource, Policy};

use super::sim::*;
use crate::engine::{Flags, Quality};

#[test]
fn the_cap_is_reached_in_march_and_consumed_in_night_order() {
    let (s0, s1) = season_span();
    // About 6 kW through every night: ~72 kWh a night, ~10,900 kWh a season.
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 6000, 500, 21),
        2_000_000,
    );
    let times = boundary_times();
    let out = run(
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, m.reads(&times))]),
    );
    let total = check_single(&out, &m, &times);
    let p = Policy::beijing_2018();
    let cap = p.cap.0;
    assert!(total > cap, "the scenario exceeds the cap: {total}");
    // The test's own running sum names the night.
    let mut running = 0;
    let mut reached = None;
    for &(n, a, c) in &night_spans() {
        running += m.register(c) - m.register(a);
        if running >= cap && reached.is_none() {
            reached = Some(n);
        }
    }
    let reached = reached.unwrap();
    assert!(reached.to_string().starts_with("2026-03-"), "{reached}");
    let st = &out.statement;
    assert_eq!(st.cap_reached_on, Some(reached));
    assert_eq!((st.offpeak_wh.0, st.subsidised_wh.0), (total, cap));
    assert_eq!(st.city_fen.0, cap * p.city_fen_per_kwh / 1000);
    assert_eq!(st.district_fen.0, cap * p.district_fen_per_kwh / 1000);
    check_money(st, &p);
    assert!(st.flags.contains(Flags::CAP_REACHED));
    // Per night: the cap is used up in order; the night it is reached takes the rest.
    let sub: i64 = out.nights.iter().map(|n| n.subsidised_wh.0).sum();
    assert_eq!(sub, cap);
    for n in &out.nights {
        if n.night < reached {
            assert_eq!(n.subsidised_wh, n.wh);
        } else if n.night > reached {
            assert_eq!(n.subsidised_wh.0, 0);
        } else {
            assert!(n.cumulative_wh.0 >= cap && n.cumulative_wh.0 - n.wh.0 < cap);
            assert_eq!(n.subsidised_wh.0, cap - (n.cumulative_wh.0 - n.wh.0));
        }
    }
    // Before the cap is reached, nobody names a night.
    let early = run_with(
        &p,
        at("2026-02-01", 9, 0),
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, m.reads(&times))]),
    );
    assert_eq!(early.statement.cap_reached_on, None);
    assert_eq!(early.statement.subsidised_wh, early.statement.offpeak_wh);
}

/// A meter whose own valley tariff runs `[start, end)` local hours.
fn tou_meter(id: &str, start_h: i64, end_h: i64, seed: u64) -> SimMeter {
    let (s0, s1) = season_span();
    let mut m = SimMeter::new(
        id,
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1500, seed),
        7_000_000,
    );
    m.valley_tou = Some((start_h * 60, end_h * 60));
    m
}

#[test]
fn a_valley_register_on_another_tariff_is_flagged_tou_mismatch() {
    let (s0, _) = season_span();
    let times = boundary_times();
    let spans = night_spans();
    // The meter's own valley tariff runs 23:00-07:00, not the policy's 20:00-08:00.
    let wrong = tou_meter("wrong", 23, 7, 31);
    let out = run(
        &household(&[(&wrong, s0 - 30 * 24 * H, None)]),
        &source(vec![(&wrong, wrong.reads(&times))]),
    );
    check_single(&out, &wrong, &times);
    for (fig, &(n, a, c)) in out.nights.iter().zip(&spans) {
        let valley = wrong.valley(c).unwrap() - wrong.valley(a).unwrap();
        assert_eq!(fig.valley_wh.map(|v| v.0), Some(valley), "{n}");
        assert_eq!(fig.total_wh, Some(fig.wh));
        let d = (fig.wh.0 - valley).abs();
        let expect = d > 100 && d * 1000 > 20 * fig.wh.0;
        assert_eq!(fig.flags.contains(Flags::TOU_MISMATCH), expect, "{n}");
    }
    let flagged = out
        .nights
        .iter()
        .filter(|n| n.flags.contains(Flags::TOU_MISMATCH))
        .count();
    assert!(flagged > 140, "{flagged}");
    assert!(out.statement.flags.contains(Flags::TOU_MISMATCH));

    // A meter on the policy's tariff agrees to the register step: no flag.
    let right = tou_meter("right", 20, 8, 32);
    let out = run(
        &household(&[(&right, s0 - 30 * 24 * H, None)]),
        &source(vec![(&right, right.reads(&times))]),
    );
    check_single(&out, &right, &times);
    for fig in &out.nights {
        let v = fig.valley_wh.unwrap().0;
        assert!(
            (fig.wh.0 - v).abs() <= 10,
            "{}: {} vs {v}",
            fig.night,
            fig.wh.0
        );
        assert!(!fig.flags.contains(Flags::TOU_MISMATCH));
    }
    assert!(out.statement.flags.is_empty());
}

#[test]
fn the_policy_can_pay_from_the_valley_register() {
    let (s0, _) = season_span();
    let times = boundary_times();
    let m = tou_meter("m1", 23, 7, 33);
    let mut policy = Policy::beijing_2018();
    policy.energy_source = EnergySource::ValleyRegister;
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    // One night's closing read lacks the valley register: that night cannot be paid.
    let gap = at("2025-12-02", 8, 0);
    let reads: Vec<_> = m
        .reads(&times)
        .into_iter()
        .map(|r| {
            if r.ts == gap {
                crate::engine::RawReading {
                    e_valley_wh: None,
                    ..r
                }
            } else {
                r
            }
        })
        .collect();
    let out = run_with(&policy, season_span().1, &hh, &source(vec![(&m, reads)]));
    let mut sum = 0;
    for (fig, &(n, a, c)) in out.nights.iter().zip(&night_spans()) {
        if n == night("2025-12-01") {
            assert_eq!(
                (fig.quality, fig.wh.0, fig.valley_wh),
                (Quality::Missing, 0, None)
            );
            assert!(fig.flags.contains(Flags::VALLEY_UNAVAILABLE));
            assert_eq!(
                fig.total_wh.map(|w| w.0),
                Some(m.register(c) - m.register(a))
            );
            continue;
        }
        let valley = m.valley(c).unwrap() - m.valley(a).unwrap();
        assert_eq!((fig.quality, fig.wh.0), (Quality::Actual, valley), "{n}");
        assert_eq!(
            fig.total_wh.map(|w| w.0),
            Some(m.register(c) - m.register(a))
        );
        sum += valley;
    }
    assert_eq!(out.statement.offpeak_wh.0, sum);
    assert_eq!(out.statement.nights.missing, 1);
    check_money(&out.statement, &policy);
}
