//! The warped clock (test-only): simulated time that runs slowly around the tariff
//! calendar's boundary instants, stands still at each of them for a while, and races
//! elsewhere, on one mapping every process computes alike from a shared wall-clock epoch.
//!
//! # The mapping
//! Simulated time `x` (UTC Unix ms, `x >= start`) is reached `real(x)` real nanoseconds
//! after `epoch`:
//!
//! ```text
//! real(x) = slow_ms(x) · 10⁶ / speed + fast_ms(x) · 10⁶ / fast + holds(x) · hold_ns
//! ```
//!
//! where `slow_ms(x)` is the part of `[start, x)` within `slow_within` of a boundary,
//! `fast_ms(x)` the rest, and `holds(x)` the number of boundaries in `[start, x)`. Each
//! term is non-decreasing in `x`, so `real` is monotonic, and the clock reads
//! `now = max { x : real(x) <= elapsed }`: at a boundary `b` it reads exactly `b` for
//! `hold_ms` of real time. Before `epoch` it reads `start`. Sleeping
//! `real_until(t) = real(t) - elapsed` always wakes at or after `t`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Clock, ClockSpecError};
use crate::calendar::Calendar;
use crate::policy::Policy;

/// Keys that only a warped clock takes.
pub(super) const WARP_KEYS: [&str; 4] = ["fast", "slow_within", "hold_ms", "epoch"];

/// Days after `start` for which boundaries are laid out (beyond: no boundaries, all fast).
const HORIZON_DAYS: i64 = 800;

const NS_PER_MS: i128 = 1_000_000;

/// Simulated time on a piecewise-linear ("warped") mapping from the wall clock.
/// Test-only, selected through [`super::CLOCK_ENV`] as
/// `start=<UTC Unix s>,speed=<slow factor>,fast=<factor>,slow_within=<simulated s>,hold_ms=<real ms>,epoch=<wall UTC Unix ms>`:
///
/// - the boundaries are those of the compiled-in tariff calendar (Beijing 2018): every
///   20:00 and 08:00 local inside a season, and the season edges (Nov 1 00:00, Apr 1
///   00:00) — the instants an agent reads at;
/// - within `slow_within` simulated seconds of a boundary time runs `speed` times faster
///   than the wall clock, elsewhere `fast` times; at each boundary it stands still for
///   `hold_ms` real milliseconds, so a read started there is stamped with the boundary
///   itself however loaded the machine;
/// - `epoch` is the wall-clock instant (UTC Unix ms) at which the clock reads `start`
///   (before it, the clock reads `start`): every process given the same value computes
///   the same simulated now, whenever it was started.
///
/// Defaults: `fast = speed`, `slow_within = 0`, `hold_ms = 0`, `epoch` = when parsed.
#[derive(Debug, Clone)]
pub struct WarpedClock {
    start_ms: i64,
    slow: u32,
    fast: u32,
    hold_ns: i128,
    /// Boundaries at or after `start`, simulated ms, increasing.
    anchors: Vec<i64>,
    /// Disjoint slow stretches `[from, to)` at or after `start`, simulated ms, increasing.
    slow_spans: Vec<(i64, i64)>,
    /// Slow ms before each stretch of `slow_spans`.
    slow_before: Vec<i64>,
    /// Real ns after `epoch` at `origin`.
    origin_ns: i128,
    origin: Instant,
}

impl WarpedClock {
    /// A clock reading `start_ms` at the wall-clock instant `epoch_ms` (both UTC Unix ms),
    /// `slow`× within `slow_within_s` of a boundary, `fast`× elsewhere, holding each
    /// boundary for `hold_ms` real ms. Factors below 1 count as 1.
    pub fn new(
        start_ms: i64,
        slow: u32,
        fast: u32,
        slow_within_s: i64,
        hold_ms: u64,
        epoch_ms: i64,
    ) -> Self {
        let cal = Calendar::new(Policy::beijing_2018());
        let w = slow_within_s.max(0).saturating_mul(1000);
        let from_s = start_ms.div_euclid(1000);
        let bounds: Vec<i64> = cal
            .boundaries(
                from_s.saturating_sub(slow_within_s.max(0) + 1),
                from_s.saturating_add(HORIZON_DAYS * 86_400),
            )
            .map(|b| b.t.saturating_mul(1000))
            .collect();
        let mut slow_spans: Vec<(i64, i64)> = Vec::new();
        for &b in &bounds {
            let (a, z) = (b.saturating_sub(w).max(start_ms), b.saturating_add(w));
            if z <= a {
                continue;
            }
            match slow_spans.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(z),
                _ => slow_spans.push((a, z)),
            }
        }
        let mut slow_before = Vec::with_capacity(slow_spans.len());
        let mut acc = 0i64;
        for &(a, z) in &slow_spans {
            slow_before.push(acc);
            acc += z - a;
        }
        let origin = Instant::now();
        let wall_ns = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX / 4),
            Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX / 4),
        };
        Self {
            start_ms,
            slow: slow.max(1),
            fast: fast.max(1),
            hold_ns: i128::from(hold_ms) * NS_PER_MS,
            anchors: bounds.into_iter().filter(|&b| b >= start_ms).collect(),
            slow_spans,
            slow_before,
            origin_ns: wall_ns - i128::from(epoch_ms) * NS_PER_MS,
            origin,
        }
    }

    /// Parses `start=<UTC Unix s>,speed=<n>[,fast=<n>][,slow_within=<s>][,hold_ms=<ms>][,epoch=<ms>]`.
    pub fn parse(spec: &str) -> Result<Self, ClockSpecError> {
        let (mut start, mut speed, mut fast) = (None, 1u32, None);
        let (mut within, mut hold, mut epoch) = (0i64, 0u64, None);
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or(ClockSpecError::Malformed)?;
            let v = v.trim();
            match k.trim() {
                "start" => start = Some(v.parse::<i64>().map_err(|_| ClockSpecError::Start)?),
                "speed" => speed = v.parse::<u32>().map_err(|_| ClockSpecError::Speed)?,
                "fast" => fast = Some(v.parse::<u32>().map_err(|_| ClockSpecError::Fast)?),
                "slow_within" => {
                    within = v
                        .parse::<i64>()
                        .ok()
                        .filter(|w| *w >= 0)
                        .ok_or(ClockSpecError::SlowWithin)?;
                }
                "hold_ms" => hold = v.parse::<u64>().map_err(|_| ClockSpecError::Hold)?,
                "epoch" => epoch = Some(v.parse::<i64>().map_err(|_| ClockSpecError::Epoch)?),
                _ => return Err(ClockSpecError::UnknownKey),
            }
        }
        let start = start.ok_or(ClockSpecError::Start)?;
        let epoch = epoch.unwrap_or_else(|| super::SystemClock.now_ms());
        Ok(Self::new(
            start.saturating_mul(1000),
            speed,
            fast.unwrap_or(speed),
            within,
            hold,
            epoch,
        ))
    }

    /// Real nanoseconds after `epoch` at which the clock reaches `t_ms` (0 up to `start`).
    pub fn real_ns_at(&self, t_ms: i64) -> i128 {
        if t_ms <= self.start_ms {
            return 0;
        }
        let idx = self.slow_spans.partition_point(|&(a, _)| a < t_ms);
        let slow_ms = match idx.checked_sub(1) {
            Some(k) => match (self.slow_spans.get(k), self.slow_before.get(k)) {
                (Some(&(a, z)), Some(&before)) => before + t_ms.min(z) - a,
                _ => 0,
            },
            None => 0,
        };
        let fast_ms = (t_ms - self.start_ms) - slow_ms;
        let holds = self.anchors.partition_point(|&b| b < t_ms);
        i128::from(slow_ms) * NS_PER_MS / i128::from(self.slow)
            + i128::from(fast_ms) * NS_PER_MS / i128::from(self.fast)
            + i128::try_from(holds).unwrap_or(0) * self.hold_ns
    }

    /// The simulated instant (UTC Unix ms) the clock reads `real_ns` after `epoch`: the
    /// greatest `t` with `real_ns_at(t) <= real_ns` (`start` before the epoch).
    pub fn sim_ms_at(&self, real_ns: i128) -> i64 {
        if real_ns <= 0 {
            return self.start_ms;
        }
        // real_ns_at(t) >= (t - start) · 10⁶ / max(speed, fast) - 2: t is at most this far on.
        let top = i128::from(self.slow.max(self.fast));
        let reach = real_ns.saturating_add(3).saturating_mul(top) / NS_PER_MS + 2;
        let (mut lo, mut hi) = (
            self.start_ms,
            self.start_ms
                .saturating_add(i64::try_from(reach).unwrap_or(i64::MAX)),
        );
        // Invariant: real_ns_at(lo) <= real_ns < real_ns_at(hi) (or hi unreachable).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.real_ns_at(mid) <= real_ns {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Real ns elapsed since `epoch` (negative before it).
    fn elapsed_ns(&self) -> i128 {
        self.origin_ns + i128::try_from(self.origin.elapsed().as_nanos()).unwrap_or(0)
    }

    /// The slow factor (`speed`).
    pub fn speed(&self) -> u32 {
        self.slow
    }
}

impl Clock for WarpedClock {
    fn now_ms(&self) -> i64 {
        self.sim_ms_at(self.elapsed_ns())
    }

    fn real_until(&self, t_ms: i64) -> Duration {
        let elapsed = self.elapsed_ns();
        if t_ms <= self.sim_ms_at(elapsed) {
            return Duration::ZERO;
        }
        let ns = self.real_ns_at(t_ms) - elapsed;
        Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-10-31 19:00 +08:00.
    const OCT31_19: i64 = 1_761_908_400;
    const NOV1_00: i64 = OCT31_19 + 5 * 3600;
    const NOV1_08: i64 = NOV1_00 + 8 * 3600;
    const NOV1_20: i64 = NOV1_00 + 20 * 3600;

    fn warped() -> WarpedClock {
        // 28800x within an hour of a boundary, 10⁶x elsewhere, 300 ms still at each.
        WarpedClock::parse(&format!(
            "start={OCT31_19},speed=28800,fast=1000000,slow_within=3600,hold_ms=300,epoch=0"
        ))
        .unwrap()
    }

    #[test]
    fn segment_edges_take_the_real_time_of_their_speed() {
        let c = warped();
        let r = |s: i64| c.real_ns_at(s * 1000);
        // Oct 31 20:00 is no boundary (not in season): fast until Nov 1 00:00 - 1 h.
        assert_eq!(r(NOV1_00 - 3600), 4 * 3600 * 1000 * NS_PER_MS / 1_000_000);
        // The slow hour before the boundary: 3600 s / 28800 = 125 ms.
        assert_eq!(r(NOV1_00) - r(NOV1_00 - 3600), 125 * NS_PER_MS);
        // Standing still at the boundary: one ms later costs the hold plus 1/28800 ms.
        assert_eq!(
            r(NOV1_00) + 300 * NS_PER_MS + NS_PER_MS / 28_800,
            c.real_ns_at(NOV1_00 * 1000 + 1)
        );
        assert_eq!(
            r(NOV1_00 + 3600) - r(NOV1_00),
            300 * NS_PER_MS + 125 * NS_PER_MS
        );
        // Fast between 01:00 and 07:00: 6 h at 10⁶x = 21.6 ms.
        assert_eq!(r(NOV1_08 - 3600) - r(NOV1_00 + 3600), 21_600_000);
        // Fast through the day, 09:00 to 19:00: 36 ms; then slow again.
        assert_eq!(r(NOV1_20 - 3600) - r(NOV1_08 + 3600), 36_000_000);
        assert_eq!(r(NOV1_20) - r(NOV1_20 - 3600), 125 * NS_PER_MS);
    }

    #[test]
    fn the_clock_stands_still_at_a_boundary_for_the_hold() {
        let c = warped();
        let at = c.real_ns_at(NOV1_08 * 1000);
        assert_eq!(c.sim_ms_at(at), NOV1_08 * 1000);
        assert_eq!(c.sim_ms_at(at + 150 * NS_PER_MS), NOV1_08 * 1000);
        assert_eq!(c.sim_ms_at(at + 300 * NS_PER_MS), NOV1_08 * 1000);
        assert_eq!(c.sim_ms_at(at + 301 * NS_PER_MS), NOV1_08 * 1000 + 28_800);
        // Just before: still short of the boundary.
        assert!(c.sim_ms_at(at - 1) < NOV1_08 * 1000);
    }

    #[test]
    fn the_inverse_round_trips_and_the_mapping_is_monotonic() {
        let c = warped();
        // Every simulated instant on a grid across the season's start and a day.
        let mut prev = -1i128;
        let mut t = OCT31_19 * 1000 + 1;
        while t < (NOV1_20 + 7200) * 1000 {
            let r = c.real_ns_at(t);
            assert!(r >= prev, "not monotonic at {t}");
            assert!(r > prev || prev < 0, "two instants at one real time: {t}");
            prev = r;
            // The clock reads t at real(t) and not before.
            assert_eq!(c.sim_ms_at(r), t, "at {t}");
            assert!(c.sim_ms_at(r - 1) < t, "before {t}");
            t += 9_973;
        }
        // And real time → simulated → real never goes past the real instant.
        for r in (0..200_000_000_000i128).step_by(77_777_777) {
            let s = c.sim_ms_at(r);
            assert!(c.real_ns_at(s) <= r && c.real_ns_at(s + 1) > r, "{r}");
        }
    }

    #[test]
    fn before_the_epoch_it_reads_start_and_a_season_takes_minutes() {
        let c = warped();
        assert_eq!(c.sim_ms_at(-5 * NS_PER_MS), OCT31_19 * 1000);
        assert_eq!(c.real_ns_at(OCT31_19 * 1000 - 10), 0);
        // Oct 31 19:00 to Apr 1 09:00: 304 boundaries of 0.55 s, the rest at 10⁶x.
        let apr1_09 = NOV1_00 + 151 * 86_400 + 9 * 3600;
        let real_s = c.real_ns_at(apr1_09 * 1000) / 1_000_000_000;
        assert!((170..=180).contains(&real_s), "{real_s} s");
    }

    #[test]
    fn without_warp_keys_it_is_a_scaled_clock_anchored_at_the_epoch() {
        let c = WarpedClock::parse("start=1700000000,speed=3600,epoch=0").unwrap();
        assert_eq!(c.real_ns_at(1_700_000_000_000 + 3_600_000), 1_000_000_000);
        // Started long after its epoch, it is far on.
        assert!(c.now_ms() > 1_700_000_000_000 + 3_600_000 * 1000);
        // A clock whose epoch is in an hour reads its start until then.
        let later = super::super::SystemClock.now_ms() + 3_600_000;
        let c = WarpedClock::parse(&format!("start=1700000000,speed=3600,epoch={later}")).unwrap();
        assert_eq!(c.now_ms(), 1_700_000_000_000);
        let wait = c.real_until(1_700_000_000_000 + 3600);
        assert!(wait > Duration::from_secs(3599) && wait <= Duration::from_secs(3601));
        assert_eq!(c.real_until(1_700_000_000_000), Duration::ZERO);
    }
}
