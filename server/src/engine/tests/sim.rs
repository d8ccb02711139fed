//! A simulated meter driven by a true power curve: piecewise-constant W integrated
//! exactly (W·s, i128) into a total register and a time-of-use valley register with
//! the meter's 10 Wh resolution, plus an independent reference for expected figures.

use std::collections::HashMap;

use qingnuan_shared::calendar::{Calendar, Night, Season};
use qingnuan_shared::policy::{Policy, Rules};
use qingnuan_shared::units::MeterId;
use qingnuan_shared::UnixTime;

use crate::engine::{HouseholdInput, HouseholdSeason, MeterSpan, Quality, RawReading, Statement};

/// Seconds per hour.
pub const H: i64 = 3600;
/// The season of every scenario.
pub const SEASON: Season = Season { start_year: 2025 };

/// The calendar of Beijing 2018.
pub fn cal() -> Calendar {
    Calendar::new(Policy::beijing_2018())
}

/// A night label from `YYYY-MM-DD`.
pub fn night(s: &str) -> Night {
    s.parse().unwrap()
}

/// Local `date` at `hh:mm`, UTC Unix seconds.
pub fn at(date: &str, hh: i64, mm: i64) -> UnixTime {
    cal().local_midnight(night(date).0) + hh * H + mm * 60
}

/// `[start, end)` of the scenario season.
pub fn season_span() -> (UnixTime, UnixTime) {
    cal().season_span(SEASON)
}

/// Every night span of the season, `(night, open, close)`, from the calendar.
pub fn night_spans() -> Vec<(Night, UnixTime, UnixTime)> {
    let c = cal();
    c.nights(SEASON)
        .map(|n| (n, c.night_span(n).unwrap().0, c.night_span(n).unwrap().1))
        .collect()
}

/// Piecewise-constant power: `steps[i].1` W from `steps[i].0` until the next step.
#[derive(Clone, Debug)]
pub struct Curve {
    steps: Vec<(UnixTime, i64)>,
    /// W·s accumulated from the first step to each step.
    prefix: Vec<i128>,
}

impl Curve {
    /// A curve from `(from, watts)` steps in increasing time.
    pub fn new(steps: Vec<(UnixTime, i64)>) -> Self {
        let mut prefix = vec![0i128];
        for w in steps.windows(2) {
            let last = *prefix.last().unwrap();
            prefix.push(last + i128::from(w[0].1) * i128::from(w[1].0 - w[0].0));
        }
        Self { steps, prefix }
    }

    /// Constant `watts` from `origin` on.
    pub fn constant(origin: UnixTime, watts: i64) -> Self {
        Self::new(vec![(origin, watts)])
    }

    /// A heating household: a new level every 7 min 13 s (never aligned to a boundary),
    /// `night_w` ± half at night and `day_w` ± half by day, from a fixed LCG `seed`.
    pub fn heating(from: UnixTime, to: UnixTime, night_w: i64, day_w: i64, seed: u64) -> Self {
        let c = cal();
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut steps = Vec::new();
        let mut t = from;
        while t < to {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let base = if c.in_window(t) { night_w } else { day_w };
            let jitter = i64::try_from((x >> 33) % 1001).unwrap(); // 0..=1000 per mille
            steps.push((t, base / 2 + base * jitter / 1000));
            t += 7 * 60 + 13;
        }
        Self::new(steps)
    }

    /// W·s from the first step to `t` (0 before it).
    pub fn ws(&self, t: UnixTime) -> i128 {
        let i = self.steps.partition_point(|s| s.0 <= t);
        if i == 0 {
            return 0;
        }
        let (t0, w) = self.steps[i - 1];
        self.prefix[i - 1] + i128::from(w) * i128::from(t - t0)
    }
}

/// A meter on a curve.
#[derive(Clone, Debug)]
pub struct SimMeter {
    /// The meter's id.
    pub id: MeterId,
    /// True power through the meter.
    pub curve: Curve,
    /// Total register at the curve's origin, Wh.
    pub start_wh: i64,
    /// The register rolls over here, Wh.
    pub modulus: i64,
    /// The meter's own valley tariff, local minutes `[start, end)` (wrapping midnight),
    /// when it reports a valley register.
    pub valley_tou: Option<(i64, i64)>,
}

impl SimMeter {
    /// A meter with a 10^9 Wh register and no valley register.
    pub fn new(id: &str, curve: Curve, start_wh: i64) -> Self {
        Self {
            id: MeterId::new(id).unwrap(),
            curve,
            start_wh,
            modulus: 1_000_000_000,
            valley_tou: None,
        }
    }

    /// The true energy through the meter up to `t`, W·s, plus its start value.
    pub fn true_ws(&self, t: UnixTime) -> i128 {
        i128::from(self.start_wh) * 3600 + self.curve.ws(t)
    }

    /// The total register, unwrapped, as the meter shows it at `t` (10 Wh steps), Wh.
    pub fn register_unwrapped(&self, t: UnixTime) -> i64 {
        i64::try_from(self.true_ws(t).div_euclid(36_000) * 10).unwrap()
    }

    /// The total register as read at `t`, Wh.
    pub fn register(&self, t: UnixTime) -> i64 {
        self.register_unwrapped(t).rem_euclid(self.modulus)
    }

    /// The valley register at `t` (10 Wh steps), Wh: energy inside the meter's own
    /// valley tariff since the curve's origin.
    pub fn valley(&self, t: UnixTime) -> Option<i64> {
        let (vs, ve) = self.valley_tou?;
        let origin = self.curve.steps.first().map_or(t, |s| s.0);
        let day0 = (origin + 8 * H).div_euclid(24 * H) * 24 * H - 8 * H - 24 * H;
        let mut ws: i128 = 0;
        let mut day = day0;
        while day <= t {
            let open = day + vs * 60;
            let close = if ve > vs {
                day + ve * 60
            } else {
                day + 24 * H + ve * 60
            };
            let (lo, hi) = (open.max(origin), close.min(t));
            if lo < hi {
                ws += self.curve.ws(hi) - self.curve.ws(lo);
            }
            day += 24 * H;
        }
        Some(i64::try_from(ws.div_euclid(36_000) * 10).unwrap())
    }

    /// The reading this meter gives at `t`.
    pub fn read(&self, t: UnixTime) -> RawReading {
        RawReading {
            ts: t,
            e_wh: self.register(t),
            e_valley_wh: self.valley(t),
        }
    }

    /// Readings at each of `times`.
    pub fn reads(&self, times: &[UnixTime]) -> Vec<RawReading> {
        times.iter().map(|&t| self.read(t)).collect()
    }
}

/// Every night boundary of the season (opens and closes, with the two season edges).
pub fn boundary_times() -> Vec<UnixTime> {
    let mut v: Vec<_> = night_spans().iter().flat_map(|&(_, a, c)| [a, c]).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `first, first + step, …` while `< end`.
pub fn every(first: UnixTime, step: i64, end: UnixTime) -> Vec<UnixTime> {
    (0..)
        .map(|k| first + k * step)
        .take_while(|&t| t < end)
        .collect()
}

/// A household of `spans` `(meter, from, to)`.
pub fn household(spans: &[(&SimMeter, UnixTime, Option<UnixTime>)]) -> HouseholdInput {
    HouseholdInput {
        id: "hh-0001".into(),
        max_power_w: None,
        meters: spans
            .iter()
            .map(|(m, from, to)| MeterSpan {
                meter: m.id.clone(),
                from: *from,
                to: *to,
            })
            .collect(),
    }
}

/// A reading map from `(meter, readings)`.
pub fn source(list: Vec<(&SimMeter, Vec<RawReading>)>) -> HashMap<MeterId, Vec<RawReading>> {
    let mut map: HashMap<MeterId, Vec<RawReading>> = HashMap::new();
    for (m, r) in list {
        map.entry(m.id.clone()).or_default().extend(r);
    }
    map
}

/// Reference `E(b)` from an unwrapped `register` sampled at `times` (sorted):
/// interpolation written out with integer floor arithmetic, independent of the engine.
/// Returns `(value, distance to the nearest reading)`.
pub fn reference_e(
    times: &[UnixTime],
    register: impl Fn(UnixTime) -> i64,
    b: UnixTime,
) -> (i64, i64) {
    let i = times.partition_point(|&t| t <= b);
    let t1 = times[i - 1];
    if t1 == b {
        return (register(b), 0);
    }
    let t2 = times[i];
    let (e1, e2) = (i128::from(register(t1)), i128::from(register(t2)));
    // e1 + (e2 - e1)(b - t1)/(t2 - t1), + 1/2 then floor: half up for non-negative values.
    let num = 2 * (e2 - e1) * i128::from(b - t1) + i128::from(t2 - t1);
    let v = e1 + num / (2 * i128::from(t2 - t1));
    (i64::try_from(v).unwrap(), (b - t1).min(t2 - b))
}

/// `x * rate / 1000` rounded half up, for `x >= 0`: the test's own fen arithmetic.
pub fn fen(wh: i64, fen_per_kwh: i64) -> i64 {
    (wh * fen_per_kwh * 2 + 1000) / 2000
}

/// Reference night of one meter read at `times` (sorted, unwrapped `register`), with
/// two-sided boundaries `a`, `c`: `(quality, Wh)` by DESIGN's rules written out again.
pub fn reference_night(
    times: &[UnixTime],
    register: impl Fn(UnixTime) -> i64,
    a: UnixTime,
    c: UnixTime,
) -> (Quality, i64) {
    let rules = Rules::DEFAULT;
    let mut worst = Quality::Actual;
    for b in [a, c] {
        let i = times.partition_point(|&t| t <= b);
        let t1 = if i == 0 { None } else { Some(times[i - 1]) };
        let t2 = if t1 == Some(b) {
            t1
        } else {
            times.get(i).copied()
        };
        let q = match (t1, t2) {
            (Some(t1), Some(t2)) if t2 - t1 <= rules.max_gap_s => {
                if (b - t1).min(t2 - b) <= rules.actual_within_s {
                    Quality::Actual
                } else {
                    Quality::Estimated
                }
            }
            _ => Quality::Missing,
        };
        worst = worst.max(q);
    }
    if worst == Quality::Missing {
        return (worst, 0);
    }
    let e = |b| reference_e(times, &register, b).0;
    (worst, e(c) - e(a))
}

/// Checks every listed night of `out` against [`reference_night`] for a single meter
/// valid the whole season, and that the nights are exactly the season's closed ones.
/// Returns the expected season total, Wh.
pub fn check_single(out: &HouseholdSeason, m: &SimMeter, times: &[UnixTime]) -> i64 {
    let spans = night_spans();
    assert_eq!(out.nights.len(), spans.len());
    let mut sum = 0;
    for (fig, &(n, a, c)) in out.nights.iter().zip(&spans) {
        assert_eq!((fig.night, fig.span), (n, (a, c)));
        let (q, wh) = reference_night(times, |t| m.register_unwrapped(t), a, c);
        assert_eq!((fig.quality, fig.wh.0), (q, wh), "night {n}");
        sum += wh;
    }
    assert_eq!(out.statement.offpeak_wh.0, sum);
    sum
}

/// Checks the statement's money and cap against the test's own arithmetic.
pub fn check_money(st: &Statement, policy: &Policy) {
    let sub = st.offpeak_wh.0.min(policy.cap.0);
    assert_eq!(st.subsidised_wh.0, sub);
    assert_eq!(st.cap_wh, policy.cap);
    assert_eq!(st.city_fen.0, fen(sub, policy.city_fen_per_kwh));
    assert_eq!(st.district_fen.0, fen(sub, policy.district_fen_per_kwh));
    assert_eq!(
        st.valley_charge_fen.0,
        fen(st.offpeak_wh.0, policy.price_fen_per_kwh)
    );
}

/// The engine on Beijing 2018 with the whole season closed.
pub fn run(hh: &HouseholdInput, src: &HashMap<MeterId, Vec<RawReading>>) -> HouseholdSeason {
    run_with(&Policy::beijing_2018(), season_span().1, hh, src)
}

/// The engine on `policy` as of `now`.
pub fn run_with(
    policy: &Policy,
    now: UnixTime,
    hh: &HouseholdInput,
    src: &HashMap<MeterId, Vec<RawReading>>,
) -> HouseholdSeason {
    crate::engine::compute_household_season(policy, SEASON, now, hh, src)
}
