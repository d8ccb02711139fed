//! Scenarios of reading validity: a register wrap at 1,000,000 kWh, a glitch read of 0
//! (rejected, not a wrap), and a spike (rejected, baseline unchanged).

use qingnuan_shared::policy::Policy;

use super::sim::*;
use crate::engine::{Flags, HouseholdSeason, Quality, RawReading, Verdict};

/// Boundary reads plus a daytime read at 12:00 and an in-window read at 02:00 every day.
fn schedule() -> Vec<i64> {
    let (s0, s1) = season_span();
    let mut t = boundary_times();
    t.extend(every(s0 + 12 * H, 24 * H, s1));
    t.extend(every(s0 + 2 * H, 24 * H, s1));
    t.sort_unstable();
    t
}

/// The nights' figures, without flags (which name the rejected readings).
fn figures(out: &HouseholdSeason) -> Vec<(String, Quality, i64)> {
    out.nights
        .iter()
        .map(|n| (n.night.to_string(), n.quality, n.wh.0))
        .collect()
}

#[test]
fn a_register_wrap_at_one_million_kwh_is_unwrapped() {
    let (s0, s1) = season_span();
    // 999,700 kWh at the start: the register passes 999,999.99 kWh in the first days.
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 4000, 5),
        999_700_000,
    );
    let times = schedule();
    let reads = m.reads(&times);
    assert!(
        reads.last().unwrap().e_wh < reads[0].e_wh,
        "the scenario wraps"
    );
    let out = run(
        &household(&[(&m, s0 - 30 * 24 * H, None)]),
        &source(vec![(&m, reads.clone())]),
    );
    check_single(&out, &m, &times);
    assert_eq!(out.statement.nights.actual, 152);
    assert_eq!(out.judged.len(), 1);
    let j = out.judged[0];
    assert_eq!(j.verdict, Verdict::Wrap);
    assert!(j.reading.e_wh < j.baseline.1);
    // The night around the wrap is flagged when the wrapping read is among its readings.
    let wrapped_in = out
        .nights
        .iter()
        .filter(|n| n.flags.contains(Flags::REGISTER_WRAP))
        .count();
    let in_window = out
        .nights
        .iter()
        .any(|n| n.span.0 <= j.reading.ts && j.reading.ts <= n.span.1);
    assert_eq!(wrapped_in, usize::from(in_window));
    check_money(&out.statement, &Policy::beijing_2018());
}

#[test]
fn a_glitch_read_of_zero_past_500_000_kwh_is_rejected_not_a_wrap() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1000, 6),
        512_345_670,
    );
    let times = schedule();
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let clean = run(&hh, &source(vec![(&m, m.reads(&times))]));
    let glitch = RawReading {
        ts: at("2025-12-05", 23, 0),
        e_wh: 0,
        e_valley_wh: None,
    };
    let mut reads = m.reads(&times);
    reads.push(glitch);
    // A glitch weeks before the season is judged too, but is not this season's story.
    let (early, early_glitch) = (at("2025-10-10", 12, 0), at("2025-10-11", 12, 0));
    reads.extend([
        m.read(early),
        RawReading {
            ts: early_glitch,
            e_wh: 0,
            e_valley_wh: None,
        },
    ]);
    let out = run(&hh, &source(vec![(&m, reads)]));
    assert_eq!(figures(&out), figures(&clean));
    assert_eq!(out.statement.offpeak_wh, clean.statement.offpeak_wh);
    assert_eq!(out.judged.len(), 1);
    let j = out.judged[0];
    assert_eq!((j.verdict, j.reading), (Verdict::NegativeDelta, glitch));
    assert_eq!(
        j.baseline,
        (at("2025-12-05", 20, 0), m.register(at("2025-12-05", 20, 0)))
    );
    let flagged: Vec<_> = out
        .nights
        .iter()
        .filter(|n| n.flags.contains(Flags::REJECTED_READING))
        .map(|n| n.night.to_string())
        .collect();
    assert_eq!(flagged, ["2025-12-05"]);
    assert!(out.statement.flags.contains(Flags::REJECTED_READING));
}

#[test]
fn a_spike_is_rejected_and_the_readings_after_it_still_count() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1000, 7),
        40_000_000,
    );
    let times = schedule();
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let clean = run(&hh, &source(vec![(&m, m.reads(&times))]));
    // +100 kWh in the 3 h since the 20:00 baseline would need over 33 kW.
    let t = at("2026-02-02", 23, 0);
    let spike = RawReading {
        ts: t,
        e_wh: m.register(t) + 100_000,
        e_valley_wh: None,
    };
    let mut reads = m.reads(&times);
    reads.push(spike);
    let out = run(&hh, &source(vec![(&m, reads)]));
    assert_eq!(figures(&out), figures(&clean));
    assert_eq!(out.judged.len(), 1);
    let j = out.judged[0];
    assert_eq!((j.verdict, j.reading), (Verdict::Spike, spike));
    assert_eq!(j.baseline.0, at("2026-02-02", 20, 0));
    // The 02:00 and 08:00 reads after the spike are accepted and used.
    let fig = out.night(night("2026-02-02")).unwrap();
    let p = &out.parts_of(fig)[0];
    assert_eq!(p.end.r1.map(|r| r.ts), Some(at("2026-02-03", 8, 0)));
    assert_eq!(fig.quality, Quality::Actual);
    assert!(fig.flags.contains(Flags::REJECTED_READING));
    // A rise just inside 30 kW (90 kWh in 3 h, plus one register step) is not a spike.
    let fast = RawReading {
        ts: t,
        e_wh: m.register(at("2026-02-02", 20, 0)) + 90_010,
        e_valley_wh: None,
    };
    let mut reads = m.reads(&times);
    reads.push(fast);
    let out = run(&hh, &source(vec![(&m, reads)]));
    assert!(
        out.judged.iter().all(|j| j.reading != fast),
        "{:?}",
        out.judged
    );
    let mut reads = m.reads(&times);
    reads.push(RawReading {
        e_wh: fast.e_wh + 1,
        ..fast
    });
    let out = run(&hh, &source(vec![(&m, reads)]));
    assert_eq!(out.judged[0].verdict, Verdict::Spike);
}

#[test]
fn a_glitch_as_the_span_s_first_reading_is_rejected_by_the_readings_after_it() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m1",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1000, 8),
        612_345_670,
    );
    let times = schedule();
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let clean = run(&hh, &source(vec![(&m, m.reads(&times))]));
    let glitch = RawReading {
        ts: s0 - 24 * H,
        e_wh: 0,
        e_valley_wh: None,
    };
    let mut reads = m.reads(&times);
    reads.push(glitch);
    let out = run(&hh, &source(vec![(&m, reads)]));
    assert_eq!(figures(&out), figures(&clean));
    assert_eq!(out.statement.nights.actual, 152);
    assert_eq!(out.judged.len(), 1);
    assert_eq!(
        (out.judged[0].reading, out.judged[0].verdict),
        (glitch, Verdict::NegativeDelta)
    );
    assert_eq!(out.judged[0].baseline, (s0, m.register(s0)));
}
