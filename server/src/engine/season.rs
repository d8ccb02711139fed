//! The season statement: nights summed, the cap consumed in night order (naming the
//! night it was reached on), and money rounded half up to the fen once per figure.

use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::Wh;

use super::model::{Flags, NightCounts, NightFigure, Quality, Statement};

/// Fills each night's `subsidised_wh` and `cumulative_wh` and returns the statement.
pub(crate) fn settle(nights: &mut [NightFigure], policy: &Policy) -> Statement {
    let cap = policy.cap.0.max(0);
    let mut running: i64 = 0;
    let mut counts = NightCounts::default();
    let mut flags = Flags::empty();
    let mut cap_reached_on = None;
    for n in nights.iter_mut() {
        let before = running;
        running = running.saturating_add(n.wh.0);
        // What is left of the cap before this night, taken by this night up to its figure.
        n.subsidised_wh = Wh(n.wh.0.min((cap - before).max(0)).max(0));
        n.cumulative_wh = Wh(running);
        if cap_reached_on.is_none() && before < cap && running >= cap {
            cap_reached_on = Some(n.night);
        }
        match n.quality {
            Quality::Actual => counts.actual += 1,
            Quality::Estimated => counts.estimated += 1,
            Quality::Missing => counts.missing += 1,
        }
        flags.insert(n.flags);
    }
    if cap_reached_on.is_some() {
        flags.insert(Flags::CAP_REACHED);
    }
    let offpeak = Wh(running);
    let subsidised = Wh(running.min(cap).max(0));
    Statement {
        offpeak_wh: offpeak,
        subsidised_wh: subsidised,
        cap_wh: Wh(cap),
        cap_reached_on,
        city_fen: subsidised.at_rate(policy.city_fen_per_kwh),
        district_fen: subsidised.at_rate(policy.district_fen_per_kwh),
        valley_charge_fen: offpeak.at_rate(policy.price_fen_per_kwh),
        nights: counts,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::calendar::Night;

    fn nights(whs: &[(i64, Quality)]) -> Vec<NightFigure> {
        let mut n: Night = "2025-11-01".parse().unwrap();
        whs.iter()
            .map(|&(wh, quality)| {
                let f = NightFigure {
                    night: n,
                    span: (0, 0),
                    wh: Wh(wh),
                    quality,
                    flags: Flags::empty(),
                    total_wh: Some(Wh(wh)),
                    valley_wh: None,
                    subsidised_wh: Wh(0),
                    cumulative_wh: Wh(0),
                    parts: 0..0,
                };
                n = n.next();
                f
            })
            .collect()
    }

    #[test]
    fn the_cap_is_reached_on_the_night_the_running_sum_gets_there() {
        let mut p = Policy::beijing_2018();
        p.cap = Wh(10_000);
        let mut n = nights(&[
            (4_000, Quality::Actual),
            (6_000, Quality::Estimated),
            (3_000, Quality::Actual),
            (0, Quality::Missing),
        ]);
        let st = settle(&mut n, &p);
        assert_eq!(
            st.cap_reached_on,
            Some(n[1].night),
            "exactly reaching the cap counts"
        );
        assert_eq!((st.offpeak_wh, st.subsidised_wh), (Wh(13_000), Wh(10_000)));
        assert_eq!(
            n.iter().map(|x| x.subsidised_wh.0).collect::<Vec<_>>(),
            [4_000, 6_000, 0, 0]
        );
        assert_eq!(
            n.iter().map(|x| x.cumulative_wh.0).collect::<Vec<_>>(),
            [4_000, 10_000, 13_000, 13_000]
        );
        assert_eq!(
            (st.nights.actual, st.nights.estimated, st.nights.missing),
            (2, 1, 1)
        );
        // 10 kWh at 10 fen = 100 fen; 13 kWh at 30 fen = 390 fen.
        assert_eq!(
            (st.city_fen.0, st.district_fen.0, st.valley_charge_fen.0),
            (100, 100, 390)
        );
        assert!(st.flags.contains(Flags::CAP_REACHED));
        let mut n = nights(&[(4_000, Quality::Actual), (5_999, Quality::Actual)]);
        let st = settle(&mut n, &p);
        assert_eq!((st.cap_reached_on, st.subsidised_wh), (None, Wh(9_999)));
        assert!(!st.flags.contains(Flags::CAP_REACHED));
        // 9.999 kWh at 10 fen = 99.99 fen -> 100; at 30 fen = 299.97 -> 300.
        assert_eq!((st.city_fen.0, st.valley_charge_fen.0), (100, 300));
    }
}
