//! A meter's state from the readings of its gateway: last good read, failed reads in a
//! row and their kinds, its power (heat pump running), its clock against the gateway's,
//! and tonight's energy so far. Pure; events may arrive late and out of order.

use std::collections::BTreeMap;

use qingnuan_shared::calendar::Calendar;
use serde::{Deserialize, Serialize};

use super::MonitorConfig;

/// One read of a meter as the gateway reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterEvent<'a> {
    /// A good read.
    Good {
        /// Read at, UTC Unix seconds (gateway clock).
        ts: i64,
        /// Cumulative forward active energy, Wh.
        e_wh: i64,
        /// Active power, W.
        p_w: Option<i64>,
        /// The meter's own clock, UTC Unix seconds.
        meter_ts: Option<i64>,
    },
    /// A failed read (`err` of the contract: `timeout`, `meter_error:<code>`, …).
    Failed {
        /// Tried at, UTC Unix seconds (gateway clock).
        ts: i64,
        /// The gateway's reason.
        err: &'a str,
    },
}

impl MeterEvent<'_> {
    /// When the read was made, UTC Unix seconds.
    pub fn ts(&self) -> i64 {
        match *self {
            MeterEvent::Good { ts, .. } | MeterEvent::Failed { ts, .. } => ts,
        }
    }
}

/// What the server knows of one meter. Instants are UTC Unix seconds, gateway clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterState {
    /// `ts` of the latest good read.
    pub last_good: Option<i64>,
    /// Register of the latest good read, Wh.
    pub last_e_wh: Option<i64>,
    /// Power of the latest good read that carried it, W.
    pub last_p_w: Option<i64>,
    /// `ts` of the latest failed read.
    pub last_failure: Option<i64>,
    /// Failed reads after the latest good read.
    pub consecutive_failures: u32,
    /// The latest failure's reason.
    pub last_error: Option<String>,
    /// Failed reads by kind (`timeout`, `bad_frame`, `meter_error`, …).
    pub errors: BTreeMap<String, u64>,
    /// `meter_ts - ts` of the latest good read that carried `meter_ts`, seconds.
    pub clock_offset_s: Option<i64>,
    /// The night (`YYYY-MM-DD`) of `night_first`/`night_last`.
    pub night: Option<String>,
    /// Earliest good read of that night inside its off-peak span: (ts, e_wh).
    pub night_first: Option<(i64, i64)>,
    /// Latest good read of that night inside its off-peak span: (ts, e_wh).
    pub night_last: Option<(i64, i64)>,
}

/// The kind of a failure reason: the part before `:` (`meter_error:51` → `meter_error`).
pub fn error_kind(err: &str) -> &str {
    err.split(':').next().unwrap_or(err)
}

impl MeterState {
    /// Folds in one read. A read older than the latest good one only counts towards the
    /// error kinds and tonight's span, never towards the failure streak.
    pub fn apply(&mut self, ev: MeterEvent<'_>, cal: &Calendar) {
        match ev {
            MeterEvent::Good {
                ts,
                e_wh,
                p_w,
                meter_ts,
            } => {
                if self.last_good.is_none_or(|t| ts >= t) {
                    self.last_good = Some(ts);
                    self.last_e_wh = Some(e_wh);
                    if p_w.is_some() {
                        self.last_p_w = p_w;
                    }
                    if let Some(m) = meter_ts {
                        self.clock_offset_s = Some(m.saturating_sub(ts));
                    }
                    if self.last_failure.is_none_or(|f| f < ts) {
                        self.consecutive_failures = 0;
                    }
                }
                self.fold_night(ts, e_wh, cal);
            }
            MeterEvent::Failed { ts, err } => {
                if self.last_failure.is_some_and(|f| f >= ts) {
                    // A repeat or an old failure replayed late: counted already, or stale.
                    return;
                }
                self.last_failure = Some(ts);
                self.last_error = Some(err.to_string());
                *self.errors.entry(error_kind(err).to_string()).or_default() += 1;
                if self.last_good.is_none_or(|g| ts > g) {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                }
            }
        }
    }

    fn fold_night(&mut self, ts: i64, e_wh: i64, cal: &Calendar) {
        let Some(night) = cal.night_of(ts).map(|n| n.to_string()) else {
            return;
        };
        match self.night.as_deref() {
            Some(cur) if cur > night.as_str() => {}
            Some(cur) if cur == night.as_str() => {
                if self.night_first.is_none_or(|(t, _)| ts < t) {
                    self.night_first = Some((ts, e_wh));
                }
                if self.night_last.is_none_or(|(t, _)| ts > t) {
                    self.night_last = Some((ts, e_wh));
                }
            }
            _ => {
                self.night = Some(night);
                self.night_first = Some((ts, e_wh));
                self.night_last = Some((ts, e_wh));
            }
        }
    }

    /// Energy between the first and the latest read of `night` so far, Wh: a provisional
    /// figure for the dashboard (the paid figure is interpolated at the boundaries once
    /// the night has closed). 0 for another night or a falling register.
    pub fn night_so_far_wh(&self, night: &str) -> i64 {
        match (self.night.as_deref(), self.night_first, self.night_last) {
            (Some(n), Some((_, a)), Some((_, b))) if n == night => b.saturating_sub(a).max(0),
            _ => 0,
        }
    }

    /// Whether the heat pump behind this meter runs at `now`: the latest power reading
    /// is above the device's threshold and at most `running_fresh_s` old.
    pub fn running(&self, device: &str, now: i64, cfg: &MonitorConfig) -> bool {
        match (self.last_p_w, self.last_good) {
            (Some(p), Some(t)) => {
                p > cfg.running_threshold_w(device) && now.saturating_sub(t) <= cfg.running_fresh_s
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::policy::Policy;

    /// 2025-11-01 20:00 +08:00
    const NOV1_20: i64 = 1_761_998_400;

    fn good(ts: i64, e_wh: i64, p_w: i64) -> MeterEvent<'static> {
        MeterEvent::Good {
            ts,
            e_wh,
            p_w: Some(p_w),
            meter_ts: Some(ts + 7),
        }
    }

    #[test]
    fn failures_count_in_a_row_until_a_newer_good_read() {
        let cal = Calendar::new(Policy::beijing_2018());
        let mut m = MeterState::default();
        m.apply(good(NOV1_20, 1_000, 1500), &cal);
        for (i, err) in ["timeout", "meter_error:51", "timeout"].iter().enumerate() {
            m.apply(
                MeterEvent::Failed {
                    ts: NOV1_20 + 900 * (i as i64 + 1),
                    err,
                },
                &cal,
            );
        }
        assert_eq!(m.consecutive_failures, 3);
        assert_eq!(m.errors.get("timeout"), Some(&2));
        assert_eq!(m.errors.get("meter_error"), Some(&1));
        assert_eq!(m.last_error.as_deref(), Some("timeout"));
        // A redelivered failure is not counted twice.
        m.apply(
            MeterEvent::Failed {
                ts: NOV1_20 + 2700,
                err: "timeout",
            },
            &cal,
        );
        assert_eq!(
            (m.consecutive_failures, m.errors.get("timeout")),
            (3, Some(&2))
        );
        // A late good read from before the failures does not end the streak.
        m.apply(good(NOV1_20 - 60, 990, 1400), &cal);
        assert_eq!((m.consecutive_failures, m.last_good), (3, Some(NOV1_20)));
        m.apply(good(NOV1_20 + 3600, 2_000, 1600), &cal);
        assert_eq!(
            (m.consecutive_failures, m.last_good, m.last_e_wh),
            (0, Some(NOV1_20 + 3600), Some(2_000))
        );
        assert_eq!(m.clock_offset_s, Some(7));
    }

    #[test]
    fn tonight_so_far_and_running() {
        let cal = Calendar::new(Policy::beijing_2018());
        let cfg = MonitorConfig::default();
        let mut m = MeterState::default();
        m.apply(good(NOV1_20 - 600, 500, 100), &cal); // daytime: not tonight
        m.apply(good(NOV1_20 + 1800, 1_900, 2000), &cal);
        m.apply(good(NOV1_20, 1_000, 2000), &cal);
        m.apply(good(NOV1_20 + 900, 1_450, 2000), &cal);
        assert_eq!(m.night.as_deref(), Some("2025-11-01"));
        assert_eq!(m.night_so_far_wh("2025-11-01"), 900);
        assert_eq!(m.night_so_far_wh("2025-11-02"), 0);
        assert!(m.running("air_source_heat_pump", NOV1_20 + 1800, &cfg));
        assert!(!m.running(
            "air_source_heat_pump",
            NOV1_20 + 1800 + cfg.running_fresh_s + 1,
            &cfg
        ));
        m.apply(good(NOV1_20 + 2700, 1_950, 250), &cal);
        assert!(!m.running("air_source_heat_pump", NOV1_20 + 2700, &cfg));
        assert!(m.running("unknown_device", NOV1_20 + 2700, &cfg));
        // The next night starts a new span.
        m.apply(good(NOV1_20 + 86_400, 9_000, 250), &cal);
        assert_eq!(
            (m.night.as_deref(), m.night_so_far_wh("2025-11-02")),
            (Some("2025-11-02"), 0)
        );
    }
}
