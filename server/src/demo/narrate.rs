//! What the demo prints as it goes: each night as it closes (kWh, quality, the season's
//! subsidy so far), the faults as they start and end, and a short pulse now and then.
//! Figures are read back from the store, so what is printed is what the API serves.

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::UnixTime;

use crate::store::Store;

/// Simulated seconds after a night's window closes before it is reported (ingest and
/// recompute catch up meanwhile).
const REPORT_AFTER_S: i64 = 1800;
/// Simulated seconds after which a night is reported even if some households have no
/// figure for it yet.
const REPORT_LATEST_S: i64 = 4 * 3600;

/// Prints the demo's progress on standard output.
pub struct Narrator {
    store: Store,
    cal: Calendar,
    households: Vec<String>,
    gateways: Vec<String>,
    /// The last night reported (or closed before the demo started).
    reported: Option<Night>,
}

impl Narrator {
    /// A narrator that reports the nights closing after `now`.
    pub fn new(
        store: Store,
        cal: Calendar,
        households: Vec<String>,
        gateways: Vec<String>,
        now: UnixTime,
    ) -> Self {
        let reported = last_closed(&cal, now);
        Self {
            store,
            cal,
            households,
            gateways,
            reported,
        }
    }

    /// A line of output.
    pub fn say(&self, line: &str) {
        println!("{line}");
    }

    /// `[YYYY-MM-DD HH:MM]` of the simulated instant.
    pub fn stamp(&self, t: UnixTime) -> String {
        format!("[{}]", crate::monitor::rules::local_time(&self.cal, t))
    }

    /// Reports every night that closed since the last report.
    pub async fn nights(&mut self, now: UnixTime) {
        let Some(closed) = last_closed(&self.cal, now) else {
            return;
        };
        let next = match self.reported {
            Some(n) if n >= closed => return,
            Some(n) => n.next(),
            None => closed,
        };
        let Some(season) = self.cal.season_of_night(next) else {
            self.reported = Some(next);
            return;
        };
        let season = season.to_string();
        let (mut wh, mut actual, mut estimated, mut missing) = (0i64, 0, 0, 0);
        for h in &self.households {
            let Ok(rows) = self.store.nights(h, &season).await else {
                continue;
            };
            if let Some(r) = rows.iter().find(|r| r.night == next.0.to_string()) {
                wh += r.wh;
                match r.quality.as_str() {
                    "actual" => actual += 1,
                    "estimated" => estimated += 1,
                    _ => missing += 1,
                }
            }
        }
        let waited = now - self.cal.window(next).1;
        if actual + estimated + missing < self.households.len() && waited < REPORT_LATEST_S {
            return; // recompute has not caught up yet
        }
        self.reported = Some(next);
        let (mut season_wh, mut subsidy_fen) = (0i64, 0i64);
        if let Ok(rows) = self.store.statements(&season, None, None).await {
            for (s, _) in rows {
                season_wh += s.offpeak_wh;
                subsidy_fen += s.city_fen + s.district_fen;
            }
        }
        let readings = self.store.reading_counts().await.map_or(0, |(n, _)| n);
        self.say(&format!(
            "{} night {} closed: {} kWh off-peak over {} households ({actual} actual, {estimated} estimated, {missing} missing); season {season} so far {} kWh, subsidy ¥{}; {readings} readings stored",
            self.stamp(now),
            next.0,
            kwh(wh),
            actual + estimated + missing,
            kwh(season_wh),
            yuan(subsidy_fen),
        ));
    }

    /// One line: readings stored and each gateway's state.
    pub async fn pulse(&self, now: UnixTime) {
        let readings = self.store.reading_counts().await.map_or(0, |(n, _)| n);
        let mut states = Vec::new();
        for g in &self.gateways {
            let s = match self.store.gateway_state(g).await {
                Ok(Some((Some(state), _))) => state,
                _ => "not seen yet".into(),
            };
            states.push(format!("{g} {s}"));
        }
        self.say(&format!(
            "{} {readings} readings stored; {}",
            self.stamp(now),
            states.join(", ")
        ));
    }
}

/// The last night whose window closed at least [`REPORT_AFTER_S`] before `now`.
fn last_closed(cal: &Calendar, now: UnixTime) -> Option<Night> {
    let t = now - REPORT_AFTER_S;
    // The night of the local date, or of one of the two days before (a window ends at
    // 08:00 of the day after it opens).
    let mut n = Night(cal.local_date(t));
    for _ in 0..3 {
        if cal.window(n).1 <= t {
            return Some(n);
        }
        n = Night(n.0.previous_day()?);
    }
    None
}

/// `123.456` from Wh.
pub fn kwh(wh: i64) -> String {
    let sign = if wh < 0 { "-" } else { "" };
    format!("{sign}{}.{:03}", wh.abs() / 1000, wh.abs() % 1000)
}

/// `12.35` from fen.
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", fen.abs() / 100, fen.abs() % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_print_like_the_api() {
        assert_eq!(kwh(1_234_567), "1234.567");
        assert_eq!(kwh(5), "0.005");
        assert_eq!(yuan(1235), "12.35");
        assert_eq!(yuan(7), "0.07");
    }

    #[test]
    fn a_night_closes_at_eight() {
        let cal = crate::demo::state::calendar();
        let d: Night = "2025-12-10".parse().unwrap();
        let eight = cal.local_midnight(d.next().0) + 8 * 3600;
        assert_eq!(last_closed(&cal, eight + REPORT_AFTER_S), Some(d));
        assert_eq!(
            last_closed(&cal, eight + REPORT_AFTER_S - 1).map(|n| n.0.to_string()),
            Some("2025-12-09".into())
        );
        // Just before midnight the last closed night is still the one before.
        let late = cal.local_midnight(d.next().next().0) - 1;
        assert_eq!(last_closed(&cal, late), Some(d));
    }
}
