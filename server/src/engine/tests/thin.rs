//! Bounded state: the readings `Engine::thin` keeps give exactly the figures of all
//! readings, a 15-minute season shrinks to the few readings that decide it, and a late
//! reading inside a thinned range shows why the store must refuse one there.

use std::collections::HashMap;

use proptest::collection::vec;
use proptest::prelude::*;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::MeterId;
use qingnuan_shared::UnixTime;

use super::props::scenario;
use super::sim::*;
use crate::engine::{Engine, HouseholdInput, HouseholdSeason, RawReading, Thinning, Verdict};

/// A household of the one meter `meter`, valid from a day before the season, limited to
/// `max_power_w` W.
fn one_meter(meter: &MeterId, max_power_w: i64) -> HouseholdInput {
    let (s0, _) = season_span();
    HouseholdInput {
        id: "hh".into(),
        max_power_w: Some(max_power_w),
        meters: vec![crate::engine::MeterSpan {
            meter: meter.clone(),
            from: s0 - 24 * H,
            to: None,
        }],
    }
}

/// The readings of `src` without the instants `t` dropped.
fn kept(
    src: &HashMap<MeterId, Vec<RawReading>>,
    t: &Thinning,
) -> HashMap<MeterId, Vec<RawReading>> {
    src.iter()
        .map(|(m, rs)| {
            let gone = t.drop.get(m).map_or(&[][..], Vec::as_slice);
            (
                m.clone(),
                rs.iter()
                    .filter(|r| gone.binary_search(&r.ts).is_err())
                    .copied()
                    .collect(),
            )
        })
        .collect()
}

/// `later` arriving after the thinning `t` of `src`: (all readings, the kept ones).
#[allow(clippy::type_complexity)]
fn arrive(
    src: &HashMap<MeterId, Vec<RawReading>>,
    t: &Thinning,
    later: &HashMap<MeterId, Vec<RawReading>>,
) -> (
    HashMap<MeterId, Vec<RawReading>>,
    HashMap<MeterId, Vec<RawReading>>,
) {
    let (mut all, mut thinned) = (src.clone(), kept(src, t));
    for (m, rs) in later {
        all.entry(m.clone()).or_default().extend(rs);
        thinned.entry(m.clone()).or_default().extend(rs);
    }
    (all, thinned)
}

/// Thins `hh` as of `now` with cut `before`; returns the thinning, the full result and
/// the result from the kept readings, computed by a fresh engine.
fn thin(
    hh: &HouseholdInput,
    src: &HashMap<MeterId, Vec<RawReading>>,
    now: UnixTime,
    before: UnixTime,
) -> (Thinning, HouseholdSeason, HouseholdSeason) {
    let mut engine = Engine::new(Policy::beijing_2018());
    let frame = engine.frame(SEASON, now);
    let t = engine.thin(&frame, hh, src, before);
    let full = run_with(&Policy::beijing_2018(), now, hh, src);
    let after = run_with(&Policy::beijing_2018(), now, hh, &kept(src, &t));
    (t, full, after)
}

#[test]
fn a_fifteen_minute_season_keeps_only_the_readings_around_each_boundary() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "m",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 1500, 7),
        40_000,
    );
    // Every 15 minutes around the clock, 7 s off the grid (every boundary `estimated`),
    // plus a glitch read of 0 and a spike.
    let mut times = every(s0 - 24 * H + 7, 900, s1 + 24 * H);
    let mut reads = m.reads(&times);
    let glitch = at("2025-12-10", 23, 0) + 100;
    let spike = at("2026-01-15", 2, 0) + 100;
    reads.push(RawReading {
        ts: glitch,
        e_wh: 0,
        e_valley_wh: None,
    });
    reads.push(RawReading {
        ts: spike,
        e_wh: m.register(spike) + 500_000,
        e_valley_wh: None,
    });
    times.extend([glitch, spike]);
    let src = source(vec![(&m, reads)]);
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let (t, full, after) = thin(&hh, &src, s1, s1);
    assert!(t.verified);
    assert_eq!(after, full);
    // The figures are the true ones, not merely equal to each other.
    let sum = check_single(&full, &m, &{
        let mut v = times.clone();
        v.retain(|&x| x != glitch && x != spike);
        v.sort_unstable();
        v
    });
    assert_eq!(full.statement.offpeak_wh.0, sum);
    assert_eq!(
        full.judged
            .iter()
            .filter(|j| j.verdict != Verdict::Wrap)
            .count(),
        2
    );
    // 151 days × 96 reads in the season; each of the 303 boundaries needs its two
    // neighbours, the two rejected readings and their baselines stay.
    let in_season = times.iter().filter(|&&x| s0 <= x && x < s1).count();
    assert_eq!(t.considered, in_season);
    let left = t.considered - t.dropped();
    assert!(left <= 2 * 303 + 8, "{left} of {in_season} kept");
    assert!(
        left >= 2 * 303 - 2,
        "{left} kept: fewer than the boundaries need"
    );
    // Nothing at or after the cut, nor outside the season, is dropped.
    for ts in t.drop.values().flatten() {
        assert!(s0 <= *ts && *ts < s1);
    }
    // A cut in mid-season thins only before it, and readings after it decide the rest.
    let mid = at("2026-01-01", 12, 0);
    let (t2, full2, after2) = thin(&hh, &src, s1, mid);
    assert!(t2.verified && t2.dropped() > 0 && t2.dropped() < t.dropped());
    assert!(t2.drop.values().flatten().all(|&ts| ts < mid));
    assert_eq!(after2, full2);
}

#[test]
fn a_reading_needed_only_as_the_next_ones_baseline_is_kept() {
    // The 10 Wh register resolution is allowed per step, so two steps can be accepted
    // where one step over both would be a spike: 1,000 W, a read every second rising
    // 10 Wh (the resolution), across the night of Nov 10.
    let (s0, _) = season_span();
    let open = at("2025-11-10", 20, 0);
    let meter = MeterId::new("m").unwrap();
    let mut reads = vec![
        RawReading {
            ts: s0 - 3600,
            e_wh: 1_000,
            e_valley_wh: None,
        },
        RawReading {
            ts: open - 7200,
            e_wh: 2_000,
            e_valley_wh: None,
        },
    ];
    for k in 0..40 {
        reads.push(RawReading {
            ts: open + 1_000 + k,
            e_wh: 3_000 + 10 * k,
            e_valley_wh: None,
        });
    }
    reads.push(RawReading {
        ts: open + 20 * H,
        e_wh: 9_000,
        e_valley_wh: None,
    });
    let hh = one_meter(&meter, 1_000);
    let src = HashMap::from([(meter.clone(), reads)]);
    let now = at("2025-11-12", 9, 0);
    let (t, full, after) = thin(&hh, &src, now, now);
    assert!(t.verified);
    assert_eq!(after, full);
    // Each of the 40 one-second reads is the only baseline from which the next is not a
    // spike: none can go although no boundary uses them.
    let gone = t.drop.get(&meter).map_or(0, Vec::len);
    assert_eq!(gone, 0, "{:?}", t.drop);
    // With 100 kW the same reads are judged the same whichever baseline: all but the
    // boundaries' neighbours go.
    let hh2 = HouseholdInput {
        max_power_w: Some(100_000),
        ..hh
    };
    let (t2, full2, after2) = thin(&hh2, &src, now, now);
    assert!(t2.verified && t2.dropped() > 30, "{:?}", t2.drop);
    assert_eq!(after2, full2);
}

#[test]
fn the_valley_registers_own_chain_keeps_its_baselines_too() {
    // The total register stands still while the valley register rises 10 Wh a second
    // (the resolution allowed per step at 1,000 W): the total chain could lose every
    // read, the valley chain none of them.
    let open = at("2025-11-10", 20, 0);
    let meter = MeterId::new("m").unwrap();
    let mut reads = vec![RawReading {
        ts: open - 7200,
        e_wh: 2_000,
        e_valley_wh: Some(500),
    }];
    for k in 0..40 {
        reads.push(RawReading {
            ts: open + 1_000 + k,
            e_wh: 2_000,
            e_valley_wh: Some(600 + 10 * k),
        });
    }
    reads.push(RawReading {
        ts: open + 20 * H,
        e_wh: 9_000,
        e_valley_wh: Some(5_000),
    });
    let hh = one_meter(&meter, 1_000);
    let src = HashMap::from([(meter.clone(), reads)]);
    let now = at("2025-11-12", 9, 0);
    let (t, full, after) = thin(&hh, &src, now, now);
    assert!(t.verified);
    assert_eq!(after, full);
    assert!(!full
        .judged
        .iter()
        .any(|j| j.verdict == Verdict::ValleySpike));
    assert_eq!(t.dropped(), 0, "{:?}", t.drop);
    // Without a valley register the same reads go.
    let flat: Vec<RawReading> = src[&meter]
        .iter()
        .map(|r| RawReading {
            e_valley_wh: None,
            ..*r
        })
        .collect();
    let src2 = HashMap::from([(meter.clone(), flat)]);
    let (t2, full2, after2) = thin(&hh, &src2, now, now);
    assert!(t2.verified && t2.dropped() >= 38, "{:?}", t2.drop);
    assert_eq!(after2, full2);
}

#[test]
fn the_judging_state_at_the_cut_stays_for_readings_still_to_come() {
    // At 1,000 W a valley rise of 10 Wh is allowed in 3 s from the 13:00:01 read but
    // not in 4 s from the 13:00:00 one. The 13:00:01 read is the latest below the cut
    // with a valley register (the 13:00:02 read has none): a valley read arriving at
    // 13:00:04 is judged against it, so it must stay although nothing present needs it.
    let (s0, _) = season_span();
    let t0 = at("2025-11-10", 13, 0);
    let open = at("2025-11-10", 20, 0);
    let meter = MeterId::new("m").unwrap();
    let r = |ts, e_wh, e_valley_wh| RawReading {
        ts,
        e_wh,
        e_valley_wh,
    };
    let reads = vec![
        r(s0 - 3600, 2_000, Some(400)),
        r(t0, 2_000, Some(500)),
        r(t0 + 1, 2_000, Some(510)),
        r(t0 + 2, 2_000, None),
        r(t0 + 3600, 2_000, Some(520)),
        r(open - 60, 2_100, Some(600)),
        r(open + 12 * H, 9_000, Some(5_000)),
    ];
    let hh = one_meter(&meter, 1_000);
    let src = HashMap::from([(meter.clone(), reads)]);
    let now = at("2025-11-12", 9, 0);
    let (t, full, after) = thin(&hh, &src, now, t0 + 3);
    assert!(t.verified);
    assert_eq!(after, full);
    let gone = t.drop.get(&meter).cloned().unwrap_or_default();
    assert!(gone.binary_search(&(t0 + 1)).is_err(), "{gone:?}");
    assert!(gone.binary_search(&(t0 + 2)).is_err(), "{gone:?}");
    let late = r(t0 + 4, 2_000, Some(520));
    let mut all = src.clone();
    all.get_mut(&meter).unwrap().push(late);
    let mut thinned = kept(&src, &t);
    thinned.get_mut(&meter).unwrap().push(late);
    let with_all = run_with(&Policy::beijing_2018(), now, &hh, &all);
    assert!(!with_all.judged.iter().any(|j| j.reading == late));
    assert_eq!(
        run_with(&Policy::beijing_2018(), now, &hh, &thinned),
        with_all
    );
}

#[test]
fn a_late_reading_inside_a_thinned_range_is_judged_against_a_different_baseline() {
    // Why the store must refuse readings before its cut once it has thinned there.
    let (s0, s1) = season_span();
    let m = SimMeter::new("m", Curve::constant(s0 - 48 * H, 2_000), 10_000);
    let times = every(s0 - 24 * H, 900, s1);
    let src = source(vec![(&m, m.reads(&times))]);
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let (t, full, _) = thin(&hh, &src, s1, s1);
    assert!(t.verified);
    // A late read at 13:05 on Dec 1, 30 Wh below the true register: against the dropped
    // 13:00 read it is a negative delta; against the kept 08:00 read it looks fine, and
    // then the 20:00 read would be judged against it.
    let late_ts = at("2025-12-01", 13, 5);
    assert!(t.drop[&m.id]
        .binary_search(&at("2025-12-01", 13, 0))
        .is_ok());
    let late = RawReading {
        ts: late_ts,
        e_wh: m.register(late_ts) - 200,
        e_valley_wh: None,
    };
    let mut all = src.clone();
    all.get_mut(&m.id).unwrap().push(late);
    let mut thinned = kept(&src, &t);
    thinned.get_mut(&m.id).unwrap().push(late);
    let with_all = run_with(&Policy::beijing_2018(), s1, &hh, &all);
    let with_thinned = run_with(&Policy::beijing_2018(), s1, &hh, &thinned);
    assert_eq!(with_all.statement, full.statement);
    assert!(with_all
        .judged
        .iter()
        .any(|j| j.reading == late && j.verdict == Verdict::NegativeDelta));
    assert!(!with_thinned.judged.iter().any(|j| j.reading == late));
    assert_ne!(with_all.judged, with_thinned.judged);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn thinning_never_changes_a_figure_or_a_judgement(
        seed in any::<u64>(),
        keep in vec(prop::bool::weighted(0.8), 1..40),
        glitches in vec((0usize..2000, -600_000i64..600_000, 0i64..2), 0..6),
        cut_h in 0i64..(11 * 24),
    ) {
        let (hh, reads) = scenario(seed, &keep, &glitches);
        let ids: Vec<_> = hh.meters.iter().map(|s| s.meter.clone()).collect();
        let (s0, _) = season_span();
        let cut = s0 + cut_h * H;
        // Readings at or after the cut arrive later, in two parts: thinning must leave
        // the judging state at the cut as all readings had it.
        let mut src: HashMap<MeterId, Vec<RawReading>> = HashMap::new();
        let mut later: HashMap<MeterId, Vec<RawReading>> = HashMap::new();
        for (k, &(i, r)) in reads.iter().enumerate() {
            let to = if r.ts >= cut && k % 3 == 0 { &mut later } else { &mut src };
            to.entry(ids[i].clone()).or_default().push(r);
        }
        let now = s0 + 10 * 24 * H;
        let (t, full, after) = thin(&hh, &src, now, cut);
        // The check inside never has to refuse what the rule chose.
        prop_assert!(t.verified);
        prop_assert_eq!(&after, &full);
        let (all, thinned) = arrive(&src, &t, &later);
        prop_assert_eq!(
            run_with(&Policy::beijing_2018(), now, &hh, &thinned),
            run_with(&Policy::beijing_2018(), now, &hh, &all)
        );
        for ts in t.drop.values().flatten() {
            prop_assert!(s0 <= *ts && *ts < s0 + cut_h * H);
        }
        // Judged readings and their baselines stay, so they are still shown.
        for j in &full.judged {
            let m = &hh.meters[j.span].meter;
            let gone = t.drop.get(m).map_or(&[][..], Vec::as_slice);
            prop_assert!(gone.binary_search(&j.reading.ts).is_err());
            prop_assert!(gone.binary_search(&j.baseline.0).is_err());
        }
        // With a cut late enough there is something to drop on a dense grid.
        if cut_h > 3 * 24 && keep.iter().filter(|&&k| k).count() * 2 > keep.len() {
            prop_assert!(t.dropped() > 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Irregular reads (1 s to 6 h apart) at a low `max_power_w`, where steps near the
    /// limit make the judging rule's lack of transitivity matter, with glitches, wraps
    /// near the modulus and a valley register that comes and goes.
    #[test]
    fn thinning_irregular_reads_near_the_power_limit_changes_nothing(
        steps in vec((prop_oneof![1i64..90, 90i64..6 * 3600], 0u32..1300, 0u8..20, proptest::option::of(0u32..1300)), 2..400),
        max_power in 500i64..5_000,
        start in prop_oneof![Just(999_990_000i64), 0i64..1_000_000],
        cut_h in 0i64..(11 * 24),
    ) {
        let (s0, _) = season_span();
        let meter = MeterId::new("m").unwrap();
        let (mut t, mut e, mut v) = (s0 - 12 * H, start, 0i64);
        let mut reads = Vec::new();
        for &(dt, permille, glitch, valley) in &steps {
            t += dt;
            // A rise of `permille`/1000 of what `max_power` allows in `dt`, plus the 10 Wh resolution.
            let allowed = (max_power * dt + 36_000) / 3600;
            let rise = allowed * i64::from(permille) / 1000;
            e = (e + rise) % 1_000_000_000;
            let read = match glitch {
                0 => 0,
                1 => e + 3 * allowed + 50,
                _ => e,
            };
            let valley = valley.map(|p| {
                v += allowed * i64::from(p) / 1000;
                v
            });
            reads.push(RawReading { ts: t, e_wh: read, e_valley_wh: valley });
        }
        let hh = one_meter(&meter, max_power);
        let cut = s0 + cut_h * H;
        let (mut now_reads, mut later) = (Vec::new(), Vec::new());
        for (k, r) in reads.iter().enumerate() {
            if r.ts < cut || k % 3 != 0 {
                now_reads.push(*r);
            } else {
                later.push(*r);
            }
        }
        let src = HashMap::from([(meter.clone(), now_reads)]);
        let now = s0 + 10 * 24 * H;
        let (th, full, after) = thin(&hh, &src, now, cut);
        prop_assert!(th.verified);
        prop_assert_eq!(&after, &full);
        // Readings at or after the cut that arrive after the thinning.
        let (all, thinned) = arrive(&src, &th, &HashMap::from([(meter.clone(), later)]));
        prop_assert_eq!(
            run_with(&Policy::beijing_2018(), now, &hh, &thinned),
            run_with(&Policy::beijing_2018(), now, &hh, &all)
        );
    }
}
