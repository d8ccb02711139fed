//! The demo's resumable state, `demo-state.json` in the demo directory: what village was
//! built (so the same fleet comes back) and the simulated instant it had reached.
//!
//! Invariant: the fleet is a pure function of the fields here, so a resumed demo (and a
//! test reading this file) rebuilds exactly the households the meters simulated.

use std::path::{Path, PathBuf};

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::UnixTime;
use qingnuan_tests::fleet::{Fleet, FleetSpec};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::DemoError;

/// File name of the state inside the demo directory.
pub const STATE_FILE: &str = "demo-state.json";
/// File name of the store inside the demo directory.
pub const STORE_FILE: &str = "qingnuan.db";

/// Households of the simulated village.
const HOUSEHOLDS: usize = 24;
/// Gateways (households dealt round-robin, one village each).
const GATEWAYS: usize = 3;
/// Seed of the fleet (the year of the plan).
const SEED: u64 = 2018;
/// Days modelled from the first day: the rest of any season.
const DAYS: i64 = 160;
/// The simulated day starts at this local hour, before the first night opens at 20:00.
const START_HOUR: i64 = 17;

/// What village the demo runs and where its clock stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoState {
    /// Seed of every random choice of the fleet.
    pub seed: u64,
    /// Households (one meter each).
    pub households: usize,
    /// Gateways.
    pub gateways: usize,
    /// Local midnight of the first simulated day, UTC Unix seconds (the fleet's epoch).
    pub epoch: UnixTime,
    /// Days the fleet models after `epoch`.
    pub days: i64,
    /// Every meter's `meter_from` in the registry (RFC 3339, local offset).
    pub registry_from: String,
    /// Simulated now when last saved, UTC Unix milliseconds.
    pub sim_now_ms: i64,
}

impl DemoState {
    /// A new village whose first day is `day` (local), starting at 17:00 that day.
    pub fn new(day: Night) -> Self {
        let cal = calendar();
        let epoch = cal.local_midnight(day.0);
        let from = epoch + (START_HOUR - 1) * 3600;
        Self {
            seed: SEED,
            households: HOUSEHOLDS,
            gateways: GATEWAYS,
            epoch,
            days: DAYS,
            registry_from: rfc3339_local(&cal, from),
            sim_now_ms: (epoch + START_HOUR * 3600).saturating_mul(1000),
        }
    }

    /// The fleet model (the meters' truth) of this village.
    pub fn fleet(&self) -> Fleet {
        Fleet::new(
            &FleetSpec {
                seed: self.seed,
                households: self.households,
                gateways: self.gateways,
                epoch: self.epoch,
                days: self.days,
            },
            calendar(),
        )
    }

    /// Reads `dir/demo-state.json`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, DemoError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DemoError::State(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DemoError::Io { path, source }),
        }
    }

    /// Writes `dir/demo-state.json` (through a temporary file and a rename, so a crash
    /// leaves the old or the new state, never half of one).
    pub fn save(&self, dir: &Path) -> Result<(), DemoError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| DemoError::State(format!("encoding the state: {e}")))?;
        std::fs::write(&tmp, bytes).map_err(|source| DemoError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| DemoError::Io { path, source })
    }
}

/// The demo's calendar: the built-in Beijing 2018 policy.
pub fn calendar() -> Calendar {
    Calendar::new(Policy::beijing_2018())
}

/// The first day of a fresh village: today (local) inside a heating season, otherwise
/// December 1 of the next season, so that nights are cold and count.
pub fn default_start(now: UnixTime) -> Night {
    let cal = calendar();
    let today = cal.local_date(now);
    if cal.season_of(now).is_some() {
        return Night(today);
    }
    let year = if u8::from(today.month()) >= 4 {
        today.year()
    } else {
        today.year() - 1
    };
    time::Date::from_calendar_date(year, time::Month::December, 1)
        .map(Night)
        .unwrap_or(Night(today))
}

/// Removes what a demo run leaves in `dir` (state, store, agents' spools), and only that.
pub fn wipe(dir: &Path, gateways: &[String]) -> Result<(), DemoError> {
    let mut files: Vec<PathBuf> = [STATE_FILE, STORE_FILE]
        .iter()
        .flat_map(|f| {
            [
                dir.join(f),
                dir.join(format!("{f}-wal")),
                dir.join(format!("{f}-shm")),
            ]
        })
        .collect();
    files.push(dir.join(format!("{STATE_FILE}.tmp")));
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DemoError::Io { path: f, source }),
        }
    }
    for gw in gateways {
        let d = dir.join(gw);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DemoError::Io { path: d, source }),
        }
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS+08:00` of `t` in the calendar's local offset.
fn rfc3339_local(cal: &Calendar, t: UnixTime) -> String {
    let offset = UtcOffset::from_whole_seconds(cal.policy().utc_offset_s).unwrap_or(UtcOffset::UTC);
    OffsetDateTime::from_unix_timestamp(t)
        .map(|d| d.to_offset(offset))
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| cal.local_date(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_village_starts_before_its_first_night() {
        let day: Night = "2025-12-10".parse().unwrap();
        let s = DemoState::new(day);
        assert_eq!(s.registry_from, "2025-12-10T16:00:00+08:00");
        // 17:00 Beijing is 09:00 UTC.
        assert_eq!(s.sim_now_ms / 1000 % 86_400, 9 * 3600);
        assert_eq!(s.fleet().households.len(), HOUSEHOLDS);
    }

    #[test]
    fn the_default_start_is_in_a_season() {
        let cal = calendar();
        let july = cal.local_midnight("2026-07-01".parse::<Night>().unwrap().0);
        assert_eq!(default_start(july).0.to_string(), "2026-12-01");
        let feb = cal.local_midnight("2026-02-03".parse::<Night>().unwrap().0) + 3600;
        assert_eq!(default_start(feb).0.to_string(), "2026-02-03");
        let april = cal.local_midnight("2026-04-02".parse::<Night>().unwrap().0);
        assert!(cal
            .season_of(cal.local_midnight(default_start(april).0))
            .is_some());
    }
}
