//! Calendar cases from the season edges, and properties of the boundaries.

use super::*;
use crate::policy::Policy;
use proptest::prelude::*;
use time::macros::date;

const CAL: Calendar = Calendar::new(Policy::beijing_2018());
const H: i64 = 3600;

fn at(d: Date, hh: i64, mm: i64) -> UnixTime {
    CAL.local_midnight(d) + hh * H + mm * 60
}

fn night(s: &str) -> Night {
    s.parse().unwrap()
}

#[test]
fn local_time_is_utc_plus_eight() {
    // 2025-11-01 00:00 +08:00 == 2025-10-31T16:00:00Z == 1761926400
    assert_eq!(at(date!(2025 - 11 - 01), 0, 0), 1_761_926_400);
    assert_eq!(CAL.local_date(1_761_926_400), date!(2025 - 11 - 01));
    assert_eq!(CAL.local_date(1_761_926_399), date!(2025 - 10 - 31));
}

#[test]
fn seasons_and_their_names() {
    let s: Season = "2025-2026".parse().unwrap();
    assert_eq!(s, Season { start_year: 2025 });
    assert_eq!(s.to_string(), "2025-2026");
    assert!("2025-2027".parse::<Season>().is_err());
    assert!("25-26".parse::<Season>().is_err());
    assert_eq!(
        CAL.season_span(s),
        (
            at(date!(2025 - 11 - 01), 0, 0),
            at(date!(2026 - 04 - 01), 0, 0)
        )
    );
    assert_eq!(CAL.season_of(at(date!(2025 - 11 - 01), 0, 0)), Some(s));
    assert_eq!(CAL.season_of(at(date!(2025 - 10 - 31), 23, 59)), None);
    assert_eq!(CAL.season_of(at(date!(2026 - 03 - 31), 23, 59)), Some(s));
    assert_eq!(CAL.season_of(at(date!(2026 - 04 - 01), 0, 0)), None);
    assert_eq!(CAL.season_of(at(date!(2026 - 01 - 15), 12, 0)), Some(s));
}

#[test]
fn night_labelled_oct_31_contributes_only_nov_1_morning() {
    let n = night("2025-10-31");
    assert_eq!(
        CAL.night_span(n),
        Some((
            at(date!(2025 - 11 - 01), 0, 0),
            at(date!(2025 - 11 - 01), 8, 0)
        ))
    );
    assert_eq!(CAL.night_of(at(date!(2025 - 10 - 31), 21, 0)), None);
    assert_eq!(CAL.night_of(at(date!(2025 - 11 - 01), 3, 0)), Some(n));
    assert!(CAL.in_window(at(date!(2025 - 10 - 31), 21, 0)));
}

#[test]
fn night_labelled_mar_31_contributes_only_until_midnight() {
    let n = night("2026-03-31");
    assert_eq!(
        CAL.night_span(n),
        Some((
            at(date!(2026 - 03 - 31), 20, 0),
            at(date!(2026 - 04 - 01), 0, 0)
        ))
    );
    assert_eq!(CAL.night_of(at(date!(2026 - 04 - 01), 1, 0)), None);
    assert_eq!(CAL.night_span(night("2026-04-01")), None);
    assert_eq!(CAL.night_span(night("2025-10-30")), None);
}

#[test]
fn a_night_runs_from_eight_in_the_evening_to_eight_in_the_morning() {
    let n = night("2025-12-10");
    assert_eq!(
        CAL.night_span(n),
        Some((
            at(date!(2025 - 12 - 10), 20, 0),
            at(date!(2025 - 12 - 11), 8, 0)
        ))
    );
    assert_eq!(CAL.night_of(at(date!(2025 - 12 - 10), 19, 59)), None);
    assert_eq!(CAL.night_of(at(date!(2025 - 12 - 10), 20, 0)), Some(n));
    assert_eq!(CAL.night_of(at(date!(2025 - 12 - 11), 7, 59)), Some(n));
    assert_eq!(CAL.night_of(at(date!(2025 - 12 - 11), 8, 0)), None);
    assert_eq!(n.to_string(), "2025-12-10");
}

#[test]
fn season_nights_are_counted_with_the_leap_day() {
    let count = |y| CAL.nights(Season { start_year: y }).count();
    // Oct 31 .. Mar 31: 1 + 30 + 31 + 31 + 28 + 31 = 152; with Feb 29: 153.
    assert_eq!(count(2025), 152);
    assert_eq!(count(2027), 153, "2028 is a leap year");
    let nights: Vec<Night> = CAL.nights(Season { start_year: 2027 }).collect();
    assert_eq!(nights.first().copied(), Some(night("2027-10-31")));
    assert_eq!(nights.last().copied(), Some(night("2028-03-31")));
    assert!(nights.contains(&night("2028-02-29")));
    assert_eq!(
        CAL.season_of(at(date!(2028 - 02 - 29), 22, 0)),
        Some(Season { start_year: 2027 })
    );
}

#[test]
fn boundaries_of_a_season_edge() {
    let from = at(date!(2025 - 10 - 31), 0, 0);
    let to = at(date!(2025 - 11 - 02), 12, 0);
    let got: Vec<(UnixTime, BoundaryKind, String)> = CAL
        .boundaries(from, to)
        .map(|b| (b.t, b.kind, b.night.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                at(date!(2025 - 11 - 01), 0, 0),
                BoundaryKind::Open,
                "2025-10-31".into()
            ),
            (
                at(date!(2025 - 11 - 01), 8, 0),
                BoundaryKind::Close,
                "2025-10-31".into()
            ),
            (
                at(date!(2025 - 11 - 01), 20, 0),
                BoundaryKind::Open,
                "2025-11-01".into()
            ),
            (
                at(date!(2025 - 11 - 02), 8, 0),
                BoundaryKind::Close,
                "2025-11-01".into()
            ),
        ]
    );
    let end: Vec<_> = CAL
        .boundaries(
            at(date!(2026 - 03 - 31), 0, 0),
            at(date!(2026 - 04 - 02), 0, 0),
        )
        .map(|b| (b.t, b.kind))
        .collect();
    assert_eq!(
        end,
        vec![
            (at(date!(2026 - 03 - 31), 8, 0), BoundaryKind::Close),
            (at(date!(2026 - 03 - 31), 20, 0), BoundaryKind::Open),
            (at(date!(2026 - 04 - 01), 0, 0), BoundaryKind::Close),
        ]
    );
    assert_eq!(
        CAL.next_boundary(at(date!(2026 - 04 - 01), 0, 0))
            .map(|b| b.t),
        Some(at(date!(2026 - 11 - 01), 0, 0))
    );
}

#[test]
fn a_daytime_window_policy_works_too() {
    let mut p = Policy::beijing_2018();
    p.offpeak_start_min = 60; // 01:00–05:00, not spanning midnight
    p.offpeak_end_min = 300;
    let cal = Calendar::new(p);
    let n = night("2025-12-01");
    let m = cal.local_midnight(date!(2025 - 12 - 01));
    assert_eq!(cal.night_span(n), Some((m + H, m + 5 * H)));
    assert_eq!(cal.night_of(m + 2 * H), Some(n));
}

proptest! {
    #[test]
    fn boundaries_are_ordered_unique_and_separate_uniform_stretches(
        from in 1_600_000_000i64..1_900_000_000, len in 0i64..(40 * 86_400), probes in prop::collection::vec(0u32..1000, 8)
    ) {
        let to = from + len;
        let bs: Vec<Boundary> = CAL.boundaries(from, to).collect();
        for w in bs.windows(2) {
            prop_assert!(w[0].t < w[1].t);
            prop_assert_ne!(w[0].kind, w[1].kind);
        }
        for b in &bs {
            prop_assert!(b.t >= from && b.t < to);
            // membership changes at b
            prop_assert_eq!(CAL.is_offpeak(b.t), b.kind == BoundaryKind::Open);
            prop_assert_eq!(CAL.is_offpeak(b.t - 1), b.kind == BoundaryKind::Close);
        }
        // every instant between consecutive cut points has the same status as the first
        let mut cuts = vec![from];
        cuts.extend(bs.iter().map(|b| b.t));
        cuts.push(to);
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b <= a { continue; }
            let status = CAL.is_offpeak(a);
            for p in &probes {
                let t = a + (b - a) * i64::from(*p) / 1000;
                prop_assert_eq!(CAL.is_offpeak(t), status, "t={} in [{}, {})", t, a, b);
            }
        }
    }

    #[test]
    fn night_of_agrees_with_night_span(t in 1_600_000_000i64..1_900_000_000) {
        match CAL.night_of(t) {
            Some(n) => {
                let (a, b) = CAL.night_span(n).unwrap();
                prop_assert!(a <= t && t < b);
                prop_assert!(CAL.season_of(t).is_some());
            }
            None => prop_assert!(!CAL.in_window(t) || CAL.season_of(t).is_none()),
        }
    }

    #[test]
    fn night_names_round_trip(days in 0i64..40_000) {
        let n = Night(date_from_days(days));
        prop_assert_eq!(n.to_string().parse::<Night>().unwrap(), n);
    }
}
