//! Meter date (04000101 `YYMMDDWW`), time (04000102 `hhmmss`) and the broadcast
//! time payload (`ss mm hh DD MM YY` on the wire), as range-checked plain structs.

use time::{Date, Month, PrimitiveDateTime, Time};

use super::data::{bcd_byte, exact, to_bcd_byte, DataError};

/// A meter's calendar date (local time of the meter; DL/T 645 has no zone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterDate {
    /// Year, 2000..=2099 (the wire carries YY).
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month, 1..=28/29/30/31.
    pub day: u8,
    /// Weekday as the meter states it, 0 = Sunday ..= 6 (not cross-checked with the date).
    pub weekday: u8,
}

/// A meter's time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterTime {
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
}

/// A meter's local date and time, e.g. for broadcast time (08H).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterDateTime {
    /// Year, 2000..=2099.
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month.
    pub day: u8,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
}

fn is_leap(year: u16) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

fn check_date(year: u16, month: u8, day: u8) -> Result<(), DataError> {
    if !(2000..=2099).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
    {
        return Err(DataError::OutOfRange);
    }
    Ok(())
}

fn check_time(hour: u8, minute: u8, second: u8) -> Result<(), DataError> {
    if hour > 23 || minute > 59 || second > 59 {
        return Err(DataError::OutOfRange);
    }
    Ok(())
}

fn yy(year: u16) -> u8 {
    u8::try_from(year % 100).unwrap_or(0)
}

impl MeterDate {
    /// A checked date.
    pub fn new(year: u16, month: u8, day: u8, weekday: u8) -> Result<Self, DataError> {
        check_date(year, month, day)?;
        if weekday > 6 {
            return Err(DataError::OutOfRange);
        }
        Ok(Self {
            year,
            month,
            day,
            weekday,
        })
    }

    /// Decodes the 04000101 value: 4 bytes, wire order `WW DD MM YY`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DataError> {
        let [ww, dd, mm, yy] = exact::<4>(bytes)?;
        Self::new(
            2000 + u16::from(bcd_byte(yy)?),
            bcd_byte(mm)?,
            bcd_byte(dd)?,
            bcd_byte(ww)?,
        )
    }

    /// The 04000101 value bytes, wire order `WW DD MM YY`.
    pub fn encode(&self) -> Result<[u8; 4], DataError> {
        Ok([
            to_bcd_byte(self.weekday)?,
            to_bcd_byte(self.day)?,
            to_bcd_byte(self.month)?,
            to_bcd_byte(yy(self.year))?,
        ])
    }
}

impl MeterTime {
    /// A checked time.
    pub fn new(hour: u8, minute: u8, second: u8) -> Result<Self, DataError> {
        check_time(hour, minute, second)?;
        Ok(Self {
            hour,
            minute,
            second,
        })
    }

    /// Decodes the 04000102 value: 3 bytes, wire order `ss mm hh`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DataError> {
        let [ss, mm, hh] = exact::<3>(bytes)?;
        Self::new(bcd_byte(hh)?, bcd_byte(mm)?, bcd_byte(ss)?)
    }

    /// The 04000102 value bytes, wire order `ss mm hh`.
    pub fn encode(&self) -> Result<[u8; 3], DataError> {
        Ok([
            to_bcd_byte(self.second)?,
            to_bcd_byte(self.minute)?,
            to_bcd_byte(self.hour)?,
        ])
    }
}

impl MeterDateTime {
    /// A checked date and time (year 2000..=2099, real month lengths, leap years).
    pub fn new(
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Result<Self, DataError> {
        check_date(year, month, day)?;
        check_time(hour, minute, second)?;
        Ok(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// Joins a date read (04000101) and a time read (04000102).
    pub fn from_parts(date: MeterDate, time: MeterTime) -> Self {
        Self {
            year: date.year,
            month: date.month,
            day: date.day,
            hour: time.hour,
            minute: time.minute,
            second: time.second,
        }
    }

    /// Decodes a broadcast-time (08H) payload: 6 bytes `ss mm hh DD MM YY`.
    pub fn decode_broadcast(bytes: &[u8]) -> Result<Self, DataError> {
        let [ss, mi, hh, dd, mo, yy] = exact::<6>(bytes)?;
        Self::new(
            2000 + u16::from(bcd_byte(yy)?),
            bcd_byte(mo)?,
            bcd_byte(dd)?,
            bcd_byte(hh)?,
            bcd_byte(mi)?,
            bcd_byte(ss)?,
        )
    }

    /// The broadcast-time payload `ss mm hh DD MM YY` (before +33H). Fields are
    /// written modulo 100, so an unchecked struct still encodes without panicking.
    pub fn to_broadcast_bytes(&self) -> [u8; 6] {
        let b = |v: u8| to_bcd_byte(v % 100).unwrap_or(0);
        [
            b(self.second),
            b(self.minute),
            b(self.hour),
            b(self.day),
            b(self.month),
            b(yy(self.year)),
        ]
    }

    /// As a `time` value, if the fields are in range.
    pub fn to_primitive(&self) -> Option<PrimitiveDateTime> {
        let month = Month::try_from(self.month).ok()?;
        let date = Date::from_calendar_date(i32::from(self.year), month, self.day).ok()?;
        let time = Time::from_hms(self.hour, self.minute, self.second).ok()?;
        Some(PrimitiveDateTime::new(date, time))
    }

    /// From a `time` value (seconds truncated); years outside 2000..=2099 are refused.
    pub fn from_primitive(dt: PrimitiveDateTime) -> Result<Self, DataError> {
        let year = u16::try_from(dt.year()).map_err(|_| DataError::OutOfRange)?;
        Self::new(
            year,
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
        )
    }

    /// The date part, with the weekday computed from the calendar (0 = Sunday).
    pub fn date(&self) -> Option<MeterDate> {
        let weekday = self.to_primitive()?.weekday().number_days_from_sunday();
        Some(MeterDate {
            year: self.year,
            month: self.month,
            day: self.day,
            weekday,
        })
    }

    /// The time part.
    pub fn time(&self) -> MeterTime {
        MeterTime {
            hour: self.hour,
            minute: self.minute,
            second: self.second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let table: [(&[u8], Result<MeterDate, DataError>); 7] = [
            (
                &[0x00, 0x17, 0x05, 0x26],
                Ok(MeterDate {
                    year: 2026,
                    month: 5,
                    day: 17,
                    weekday: 0,
                }),
            ),
            (
                &[0x04, 0x29, 0x02, 0x24],
                Ok(MeterDate {
                    year: 2024,
                    month: 2,
                    day: 29,
                    weekday: 4,
                }),
            ),
            (&[0x04, 0x29, 0x02, 0x25], Err(DataError::OutOfRange)),
            (&[0x00, 0x31, 0x04, 0x26], Err(DataError::OutOfRange)),
            (&[0x07, 0x17, 0x05, 0x26], Err(DataError::OutOfRange)),
            (&[0x00, 0x17, 0x13, 0x26], Err(DataError::OutOfRange)),
            (&[0x00, 0x1A, 0x05, 0x26], Err(DataError::BadBcd)),
        ];
        for (input, expected) in table {
            assert_eq!(MeterDate::decode(input), expected, "{input:02X?}");
            if let Ok(d) = expected {
                assert_eq!(d.encode().as_ref().map(|b| &b[..]), Ok(input));
            }
        }
        assert_eq!(
            MeterDate::decode(&[0; 3]),
            Err(DataError::BadLength {
                expected: 4,
                got: 3
            })
        );
    }

    #[test]
    fn times() {
        let table: [(&[u8], Result<MeterTime, DataError>); 5] = [
            (
                &[0x00, 0x30, 0x12],
                Ok(MeterTime {
                    hour: 12,
                    minute: 30,
                    second: 0,
                }),
            ),
            (
                &[0x59, 0x59, 0x23],
                Ok(MeterTime {
                    hour: 23,
                    minute: 59,
                    second: 59,
                }),
            ),
            (&[0x60, 0x00, 0x00], Err(DataError::OutOfRange)),
            (&[0x00, 0x00, 0x24], Err(DataError::OutOfRange)),
            (&[0x00, 0xF0, 0x00], Err(DataError::BadBcd)),
        ];
        for (input, expected) in table {
            assert_eq!(MeterTime::decode(input), expected, "{input:02X?}");
        }
    }

    #[test]
    fn broadcast_payload_is_seconds_first() {
        let t = MeterDateTime::new(2026, 5, 17, 12, 30, 0).unwrap();
        assert_eq!(t.to_broadcast_bytes(), [0x00, 0x30, 0x12, 0x17, 0x05, 0x26]);
        assert_eq!(
            MeterDateTime::decode_broadcast(&t.to_broadcast_bytes()),
            Ok(t)
        );
        // The PyPI client's natural order (YY first) is month 30: refused.
        assert_eq!(
            MeterDateTime::decode_broadcast(&[0x26, 0x05, 0x17, 0x12, 0x30, 0x00]),
            Err(DataError::OutOfRange)
        );
        assert_eq!(t.date().map(|d| d.weekday), Some(0));
        let p = t.to_primitive().unwrap();
        assert_eq!(MeterDateTime::from_primitive(p), Ok(t));
        assert_eq!(
            MeterDateTime::new(2100, 1, 1, 0, 0, 0),
            Err(DataError::OutOfRange)
        );
        assert_eq!(
            MeterDateTime::new(2000, 2, 29, 0, 0, 0).map(|t| t.day),
            Ok(29)
        );
        assert_eq!(
            MeterDateTime::new(2100 - 1, 2, 29, 0, 0, 0),
            Err(DataError::OutOfRange)
        );
    }
}
