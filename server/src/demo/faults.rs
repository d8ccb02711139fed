//! The demo's faults, a pure function of the simulated instant: every third night one
//! gateway loses its uplink from 22:00 to 01:00 (the agent keeps reading into its spool
//! and replays it), and every day one DL/T 645 meter is silent from 10:00 to 15:00.
//!
//! Both are chosen so that the money stays exact: an uplink cut loses nothing, and a
//! daytime silence is far from the 20:00 and 08:00 boundaries.

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::UnixTime;

/// Local hour at which a gateway's uplink is cut, and how long it stays cut, hours.
const CUT_AT_H: i64 = 22;
const CUT_FOR_H: i64 = 3;
/// Local hour at which a meter falls silent, and how long, hours.
const SILENT_AT_H: i64 = 10;
const SILENT_FOR_H: i64 = 5;

/// The fault plan of one village.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Local midnight of the village's first day, UTC Unix seconds.
    pub epoch: UnixTime,
    /// Gateway ids, in order.
    pub gateways: Vec<String>,
    /// Meters that may fall silent (DL/T 645 only: the silence is served by their line).
    pub meters: Vec<String>,
    /// Days planned.
    pub days: i64,
}

/// One fault: what, and the simulated interval `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A gateway's uplink is cut.
    UplinkCut {
        /// Gateway id.
        gateway: String,
        /// From, UTC Unix seconds.
        from: UnixTime,
        /// To (restored), UTC Unix seconds.
        to: UnixTime,
    },
    /// A meter does not answer.
    MeterSilent {
        /// Meter id.
        meter: String,
        /// From, UTC Unix seconds.
        from: UnixTime,
        /// To, UTC Unix seconds.
        to: UnixTime,
    },
}

impl Fault {
    /// Whether the fault is on at `t`.
    pub fn active(&self, t: UnixTime) -> bool {
        let (Fault::UplinkCut { from, to, .. } | Fault::MeterSilent { from, to, .. }) = self;
        *from <= t && t < *to
    }
}

impl Faults {
    /// Every fault of the plan, in order of start.
    pub fn plan(&self) -> Vec<Fault> {
        let mut out = Vec::new();
        for k in 0..self.days.max(0) {
            let day = self.epoch + k * 86_400;
            let idx = usize::try_from(k).unwrap_or(0);
            if !self.meters.is_empty() {
                let m = self.meters.get((idx * 7 + 3) % self.meters.len());
                if let Some(m) = m {
                    let from = day + SILENT_AT_H * 3600;
                    out.push(Fault::MeterSilent {
                        meter: m.clone(),
                        from,
                        to: from + SILENT_FOR_H * 3600,
                    });
                }
            }
            if k % 3 == 0 && !self.gateways.is_empty() {
                if let Some(g) = self.gateways.get((idx / 3) % self.gateways.len()) {
                    let from = day + CUT_AT_H * 3600;
                    out.push(Fault::UplinkCut {
                        gateway: g.clone(),
                        from,
                        to: from + CUT_FOR_H * 3600,
                    });
                }
            }
        }
        out
    }
}

/// `HH:MM` local of `t`.
pub fn hhmm(cal: &Calendar, t: UnixTime) -> String {
    let s = t - cal.local_midnight(cal.local_date(t));
    format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_keeps_faults_away_from_the_boundaries() {
        let f = Faults {
            epoch: 1_765_296_000, // 2025-12-10 00:00 +08:00
            gateways: vec!["gw-0001".into(), "gw-0002".into()],
            meters: vec!["a".into(), "b".into(), "c".into()],
            days: 7,
        };
        let plan = f.plan();
        let cuts: Vec<_> = plan
            .iter()
            .filter(|x| matches!(x, Fault::UplinkCut { .. }))
            .collect();
        assert_eq!(cuts.len(), 3); // days 0, 3, 6
        assert_eq!(plan.len(), 7 + 3);
        let cal = crate::demo::state::calendar();
        for x in &plan {
            let (Fault::UplinkCut { from, to, .. } | Fault::MeterSilent { from, to, .. }) = x;
            assert!(x.active(*from) && !x.active(*to));
            // No fault is on near a boundary (20:00 or 08:00 local, within the meters'
            // quiet margin).
            let m = crate::demo::village::QUIET_S;
            for t in (*from - m..*to + m).step_by(60) {
                let h = hhmm(&cal, t);
                assert!(!["08:00", "20:00"].contains(&h.as_str()), "{x:?} near {h}");
            }
        }
        assert_eq!(hhmm(&cal, 1_765_296_000 + 22 * 3600 + 5 * 60), "22:05");
    }
}
