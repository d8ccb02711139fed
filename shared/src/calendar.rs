//! The tariff calendar: which season and which night an instant belongs to, whether it
//! is off-peak, and the ordered boundary instants where that changes (DESIGN "Off-peak energy").

use core::fmt;
use core::str::FromStr;

use time::{Date, Month};

use crate::policy::{MonthDay, Policy};
use crate::UnixTime;

const SECS_PER_DAY: i64 = 86_400;
/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN: i64 = 2_440_588;

/// A heating season, named by the year it starts in: `2025-2026` starts in 2025.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Season {
    /// Year of the season's first day.
    pub start_year: i32,
}

/// A night, labelled by the local date on which its window opens (`2025-11-01` is
/// the night from Nov 1 20:00 to Nov 2 08:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Night(pub Date);

/// Whether the subsidised period begins or ends at a boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BoundaryKind {
    /// Off-peak ∩ season starts here (20:00, or a season's first midnight).
    Open,
    /// Off-peak ∩ season ends here (08:00, or the midnight after the season's last day).
    Close,
}

/// An instant where membership of (off-peak window ∩ season) changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Boundary {
    /// UTC Unix seconds.
    pub t: UnixTime,
    /// Open or close.
    pub kind: BoundaryKind,
    /// The night this boundary opens or closes.
    pub night: Night,
}

/// Why a season or night name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not `YYYY-YYYY` with consecutive years.
    #[error("a season is written YYYY-YYYY with consecutive years, e.g. 2025-2026")]
    Season,
    /// Not a valid `YYYY-MM-DD` date.
    #[error("a night is written YYYY-MM-DD, e.g. 2025-11-01")]
    Night,
}

impl fmt::Display for Season {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start_year, self.start_year + 1)
    }
}

impl FromStr for Season {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let (a, b) = s.split_once('-').ok_or(NameError::Season)?;
        let year = |x: &str| {
            if x.len() == 4 && x.bytes().all(|c| c.is_ascii_digit()) {
                x.parse::<i32>().map_err(|_| NameError::Season)
            } else {
                Err(NameError::Season)
            }
        };
        let (a, b) = (year(a)?, year(b)?);
        if b != a + 1 {
            return Err(NameError::Season);
        }
        Ok(Season { start_year: a })
    }
}

impl fmt::Display for Night {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            u8::from(self.0.month()),
            self.0.day()
        )
    }
}

impl FromStr for Night {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(NameError::Night);
        }
        let num = |r: core::ops::Range<usize>| -> Result<i32, NameError> {
            let part = s.get(r).ok_or(NameError::Night)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(NameError::Night);
            }
            part.parse().map_err(|_| NameError::Night)
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let month = Month::try_from(u8::try_from(m).map_err(|_| NameError::Night)?)
            .map_err(|_| NameError::Night)?;
        let day = u8::try_from(d).map_err(|_| NameError::Night)?;
        Date::from_calendar_date(y, month, day)
            .map(Night)
            .map_err(|_| NameError::Night)
    }
}

impl Night {
    /// The night after this one.
    pub fn next(self) -> Night {
        Night(self.0.next_day().unwrap_or(self.0))
    }
}

/// The calendar of one policy: pure arithmetic on UTC Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    policy: Policy,
}

impl Calendar {
    /// The calendar of `policy` (which the caller has validated).
    pub const fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// The policy behind this calendar.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The local date of an instant.
    pub fn local_date(&self, t: UnixTime) -> Date {
        let days = (t + i64::from(self.policy.utc_offset_s)).div_euclid(SECS_PER_DAY);
        date_from_days(days)
    }

    /// Local midnight at the start of `d`, UTC Unix seconds.
    pub fn local_midnight(&self, d: Date) -> UnixTime {
        (i64::from(d.to_julian_day()) - UNIX_EPOCH_JULIAN) * SECS_PER_DAY
            - i64::from(self.policy.utc_offset_s)
    }

    /// The season an instant falls in, if any.
    pub fn season_of(&self, t: UnixTime) -> Option<Season> {
        let d = self.local_date(t);
        let md = MonthDay {
            month: u8::from(d.month()),
            day: d.day(),
        };
        let (first, last) = (self.policy.season_first, self.policy.season_last);
        if last < first {
            if md >= first {
                Some(Season {
                    start_year: d.year(),
                })
            } else if md <= last {
                Some(Season {
                    start_year: d.year() - 1,
                })
            } else {
                None
            }
        } else if md >= first && md <= last {
            Some(Season {
                start_year: d.year(),
            })
        } else {
            None
        }
    }

    /// `[start, end)` of a season, UTC Unix seconds.
    pub fn season_span(&self, s: Season) -> (UnixTime, UnixTime) {
        let (first, last) = (self.policy.season_first, self.policy.season_last);
        let end_year = if last < first {
            s.start_year + 1
        } else {
            s.start_year
        };
        let start = self.local_midnight(month_day_in(s.start_year, first));
        let end = self.local_midnight(month_day_in(end_year, last)) + SECS_PER_DAY;
        (start, end)
    }

    /// The daily off-peak window of night `n`, unclipped: `[open, close)`.
    pub fn window(&self, n: Night) -> (UnixTime, UnixTime) {
        let midnight = self.local_midnight(n.0);
        let open = midnight + i64::from(self.policy.offpeak_start_min) * 60;
        let mut close = midnight + i64::from(self.policy.offpeak_end_min) * 60;
        if close <= open {
            close += SECS_PER_DAY;
        }
        (open, close)
    }

    /// Night `n`'s subsidised span: its window clipped to the season, `None` when empty.
    pub fn night_span(&self, n: Night) -> Option<(UnixTime, UnixTime)> {
        let (open, close) = self.window(n);
        let season = self.season_of(open).or_else(|| self.season_of(close - 1))?;
        let (s_start, s_end) = self.season_span(season);
        let (a, b) = (open.max(s_start), close.min(s_end));
        (a < b).then_some((a, b))
    }

    /// The season a night pays into, if its span is not empty.
    pub fn season_of_night(&self, n: Night) -> Option<Season> {
        self.night_span(n).and_then(|(a, _)| self.season_of(a))
    }

    /// The night whose daily window (ignoring the season) holds `t`.
    pub fn window_night(&self, t: UnixTime) -> Option<Night> {
        let d = Night(self.local_date(t));
        let prev = Night(d.0.previous_day()?);
        [prev, d].into_iter().find(|&n| {
            let (a, b) = self.window(n);
            a <= t && t < b
        })
    }

    /// Whether `t` lies in the daily off-peak window (season ignored).
    pub fn in_window(&self, t: UnixTime) -> bool {
        self.window_night(t).is_some()
    }

    /// Whether `t` is subsidised time: inside the window and inside a season.
    pub fn is_offpeak(&self, t: UnixTime) -> bool {
        self.night_of(t).is_some()
    }

    /// The night label of a subsidised instant; `None` in daytime or out of season.
    pub fn night_of(&self, t: UnixTime) -> Option<Night> {
        let n = self.window_night(t)?;
        let (a, b) = self.night_span(n)?;
        (a <= t && t < b).then_some(n)
    }

    /// The nights of a season in order, from the first with a non-empty span (Oct 31
    /// for Beijing) to the last (Mar 31).
    pub fn nights(&self, s: Season) -> impl Iterator<Item = Night> + '_ {
        let (start, end) = self.season_span(s);
        let first = Night(
            self.local_date(start)
                .previous_day()
                .unwrap_or(self.local_date(start)),
        );
        let last = self.local_date(end - 1);
        let mut cur = Some(first);
        core::iter::from_fn(move || loop {
            let n = cur?;
            if n.0 > last {
                return None;
            }
            cur = n.0.next_day().map(Night);
            if self.night_span(n).is_some() {
                return Some(n);
            }
        })
    }

    /// The boundaries `b` with `from <= b < to`, in increasing order.
    pub fn boundaries(&self, from: UnixTime, to: UnixTime) -> Boundaries<'_> {
        let first = self
            .local_date(from)
            .previous_day()
            .unwrap_or(self.local_date(from));
        Boundaries {
            cal: self,
            next: Some(Night(first)),
            last: self.local_date(to),
            from,
            to,
            pending: None,
        }
    }

    /// The first boundary strictly after `t`.
    pub fn next_boundary(&self, t: UnixTime) -> Option<Boundary> {
        // Seasons are at most a year apart, so two years always hold the next boundary.
        self.boundaries(t + 1, t + 2 * 366 * SECS_PER_DAY).next()
    }
}

/// Iterator over boundaries, see [`Calendar::boundaries`].
#[derive(Debug, Clone)]
pub struct Boundaries<'a> {
    cal: &'a Calendar,
    next: Option<Night>,
    last: Date,
    from: UnixTime,
    to: UnixTime,
    pending: Option<Boundary>,
}

impl Iterator for Boundaries<'_> {
    type Item = Boundary;

    fn next(&mut self) -> Option<Boundary> {
        loop {
            if let Some(b) = self.pending.take() {
                if b.t >= self.from && b.t < self.to {
                    return Some(b);
                }
                continue;
            }
            let n = self.next?;
            if n.0 > self.last {
                self.next = None;
                return None;
            }
            self.next = n.0.next_day().map(Night);
            if let Some((a, b)) = self.cal.night_span(n) {
                self.pending = Some(Boundary {
                    t: b,
                    kind: BoundaryKind::Close,
                    night: n,
                });
                if a >= self.from && a < self.to {
                    return Some(Boundary {
                        t: a,
                        kind: BoundaryKind::Open,
                        night: n,
                    });
                }
            }
        }
    }
}

fn date_from_days(days_since_epoch: i64) -> Date {
    let jd = i32::try_from(days_since_epoch + UNIX_EPOCH_JULIAN).unwrap_or(i32::MAX);
    Date::from_julian_day(jd).unwrap_or(if jd < 0 { Date::MIN } else { Date::MAX })
}

/// `md` in `year`, Feb 29 falling back to Feb 28 in common years.
fn month_day_in(year: i32, md: MonthDay) -> Date {
    let month = Month::try_from(md.month).unwrap_or(Month::January);
    let mut day = md.day;
    loop {
        if let Ok(d) = Date::from_calendar_date(year, month, day) {
            return d;
        }
        if day <= 28 {
            return Date::MIN;
        }
        day -= 1;
    }
}

#[cfg(test)]
mod tests;
