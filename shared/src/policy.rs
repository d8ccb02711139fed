//! The subsidy policy: heating season, off-peak window, prices, subsidy and cap,
//! and the computation's thresholds. Beijing 2018 (京政办发〔2018〕13号) is built in.

use crate::units::Wh;

/// A month and day, local (e.g. `11-01`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonthDay {
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
}

/// Which register the paid figure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EnergySource {
    /// The forward active total register (`00010000`), sampled at the policy's boundaries.
    #[default]
    TotalRegister,
    /// The meter's own valley register (tariff 4, `00010400`).
    ValleyRegister,
}

/// Thresholds of the off-peak computation (DESIGN "Off-peak energy").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rules {
    /// A boundary value is `actual` when a reading lies within this many seconds of it.
    pub actual_within_s: i64,
    /// Readings further apart than this (seconds) make the boundary `missing`.
    pub max_gap_s: i64,
    /// Default physical limit of a household's draw, W; faster rises are spikes.
    pub default_max_power_w: i64,
    /// The register rolls over at this value, Wh (DL/T 645 `XXXXXX.XX` kWh: 10^9 Wh).
    pub register_modulus_wh: i64,
    /// A night is `tou_mismatch` when the valley register differs by more than this, Wh…
    pub tou_tolerance_wh: i64,
    /// …and by more than this share, per mille.
    pub tou_tolerance_permille: i64,
}

/// The policy: everything the calendar and the computation need, in integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// First day of the season, inclusive, local.
    pub season_first: MonthDay,
    /// Last day of the season, inclusive, local (the season ends at the next midnight).
    pub season_last: MonthDay,
    /// Off-peak window opens, minutes after local midnight (20:00 = 1200).
    pub offpeak_start_min: u16,
    /// Off-peak window closes, minutes after local midnight (08:00 = 480); the next
    /// day when not after the start.
    pub offpeak_end_min: u16,
    /// Offset of local time from UTC, seconds (Asia/Shanghai: +28800, no DST since 1991).
    pub utc_offset_s: i32,
    /// Valley price, fen per kWh.
    pub price_fen_per_kwh: i64,
    /// City subsidy, fen per kWh.
    pub city_fen_per_kwh: i64,
    /// District subsidy, fen per kWh.
    pub district_fen_per_kwh: i64,
    /// Subsidised energy per household per season.
    pub cap: Wh,
    /// The register the paid figure comes from.
    pub energy_source: EnergySource,
    /// Thresholds of the computation.
    pub rules: Rules,
}

/// The policy file compiled in (`shared/data/policy-beijing-2018.toml`).
pub const BEIJING_2018_TOML: &str = include_str!("../data/policy-beijing-2018.toml");

impl Policy {
    /// Beijing 2018: season Nov 1–Mar 31, window 20:00–08:00, 30 fen valley price,
    /// 10 + 10 fen subsidy, cap 10,000 kWh.
    pub const fn beijing_2018() -> Self {
        Self {
            season_first: MonthDay { month: 11, day: 1 },
            season_last: MonthDay { month: 3, day: 31 },
            offpeak_start_min: 20 * 60,
            offpeak_end_min: 8 * 60,
            utc_offset_s: 8 * 3600,
            price_fen_per_kwh: 30,
            city_fen_per_kwh: 10,
            district_fen_per_kwh: 10,
            cap: Wh(10_000_000),
            energy_source: EnergySource::TotalRegister,
            rules: Rules::DEFAULT,
        }
    }

    /// Checks the figures that the calendar relies on.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let md_ok = |m: MonthDay| {
            (1..=12).contains(&m.month) && (1..=days_in_month_max(m.month)).contains(&m.day)
        };
        if !md_ok(self.season_first) {
            return Err(PolicyError::new("season.first_day", "not a valid MM-DD"));
        }
        if !md_ok(self.season_last) {
            return Err(PolicyError::new("season.last_day", "not a valid MM-DD"));
        }
        if self.offpeak_start_min >= 1440 {
            return Err(PolicyError::new("offpeak.start", "not a valid HH:MM"));
        }
        if self.offpeak_end_min >= 1440 {
            return Err(PolicyError::new("offpeak.end", "not a valid HH:MM"));
        }
        if self.offpeak_start_min == self.offpeak_end_min {
            return Err(PolicyError::new(
                "offpeak.end",
                "equals offpeak.start: the window would be empty or the whole day",
            ));
        }
        if !(-14 * 3600..=14 * 3600).contains(&self.utc_offset_s) {
            return Err(PolicyError::new(
                "calendar.utc_offset",
                "outside -14:00..+14:00",
            ));
        }
        for (key, v) in [
            ("offpeak.price_fen_per_kwh", self.price_fen_per_kwh),
            ("offpeak.subsidy.city_fen_per_kwh", self.city_fen_per_kwh),
            (
                "offpeak.subsidy.district_fen_per_kwh",
                self.district_fen_per_kwh,
            ),
            (
                "offpeak.subsidy.cap_wh_per_household_per_season",
                self.cap.0,
            ),
        ] {
            if v < 0 {
                return Err(PolicyError::new(key, "must not be negative"));
            }
        }
        let r = &self.rules;
        for (key, v) in [
            ("computation.actual_within_s", r.actual_within_s),
            ("computation.max_gap_s", r.max_gap_s),
            ("computation.default_max_power_w", r.default_max_power_w),
            ("computation.register_modulus_wh", r.register_modulus_wh),
        ] {
            if v <= 0 {
                return Err(PolicyError::new(key, "must be positive"));
            }
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::beijing_2018()
    }
}

impl Rules {
    /// The thresholds of DESIGN.md: 120 s, 72 h, 30 kW, 10^9 Wh, max(100 Wh, 2 %).
    pub const DEFAULT: Rules = Rules {
        actual_within_s: 120,
        max_gap_s: 72 * 3600,
        default_max_power_w: 30_000,
        register_modulus_wh: 1_000_000_000,
        tou_tolerance_wh: 100,
        tou_tolerance_permille: 20,
    };
}

fn days_in_month_max(month: u8) -> u8 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A policy that cannot be used, naming the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("policy {key}: {message}")]
pub struct PolicyError {
    /// Dotted TOML key, e.g. `offpeak.start`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: alloc::string::String,
}

impl PolicyError {
    fn new(key: &'static str, message: &str) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

#[cfg(feature = "std")]
mod file {
    //! Reading a policy TOML file (the `std` feature).
    use super::*;
    use alloc::format;
    use serde::Deserialize;

    #[derive(Deserialize, Default)]
    struct File {
        season: Option<Season>,
        offpeak: Option<Offpeak>,
        calendar: Option<Calendar>,
        computation: Option<Computation>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Season {
        first_day: String,
        last_day: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Offpeak {
        start: String,
        end: String,
        price_fen_per_kwh: i64,
        subsidy: Subsidy,
        energy_source: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Subsidy {
        city_fen_per_kwh: i64,
        district_fen_per_kwh: i64,
        cap_wh_per_household_per_season: i64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Calendar {
        utc_offset: String,
    }
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Computation {
        actual_within_s: Option<i64>,
        max_gap_s: Option<i64>,
        default_max_power_w: Option<i64>,
        register_modulus_wh: Option<i64>,
        tou_tolerance_wh: Option<i64>,
        tou_tolerance_permille: Option<i64>,
    }

    fn month_day(key: &'static str, s: &str) -> Result<MonthDay, PolicyError> {
        let bad = || PolicyError {
            key,
            message: format!("{s:?} is not MM-DD"),
        };
        let (m, d) = s.split_once('-').ok_or_else(bad)?;
        Ok(MonthDay {
            month: m.parse().map_err(|_| bad())?,
            day: d.parse().map_err(|_| bad())?,
        })
    }

    fn minutes(key: &'static str, s: &str) -> Result<u16, PolicyError> {
        let bad = || PolicyError {
            key,
            message: format!("{s:?} is not HH:MM"),
        };
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h >= 24 || m >= 60 {
            return Err(bad());
        }
        Ok(h * 60 + m)
    }

    fn offset(s: &str) -> Result<i32, PolicyError> {
        let bad = || PolicyError {
            key: "calendar.utc_offset",
            message: format!("{s:?} is not ±HH:MM"),
        };
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let m = i32::from(minutes("calendar.utc_offset", rest).map_err(|_| bad())?);
        Ok(sign * m * 60)
    }

    impl Policy {
        /// Reads a policy file. Sections other than `season`, `offpeak`, `calendar` and
        /// `computation` (equipment, gas, …) are ignored; a missing section keeps Beijing 2018's.
        pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
            let f: File = toml::from_str(text).map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
                PolicyError {
                    key: "(file)",
                    message: match line {
                        Some(l) => format!("line {l}: {}", e.message()),
                        None => e.message().into(),
                    },
                }
            })?;
            let mut p = Policy::beijing_2018();
            if let Some(s) = f.season {
                p.season_first = month_day("season.first_day", &s.first_day)?;
                p.season_last = month_day("season.last_day", &s.last_day)?;
            }
            if let Some(o) = f.offpeak {
                p.offpeak_start_min = minutes("offpeak.start", &o.start)?;
                p.offpeak_end_min = minutes("offpeak.end", &o.end)?;
                p.price_fen_per_kwh = o.price_fen_per_kwh;
                p.city_fen_per_kwh = o.subsidy.city_fen_per_kwh;
                p.district_fen_per_kwh = o.subsidy.district_fen_per_kwh;
                p.cap = Wh(o.subsidy.cap_wh_per_household_per_season);
                p.energy_source = match o.energy_source.as_deref() {
                    None | Some("total_register") => EnergySource::TotalRegister,
                    Some("valley_register") => EnergySource::ValleyRegister,
                    Some(other) => {
                        return Err(PolicyError {
                            key: "offpeak.energy_source",
                            message: format!(
                                "{other:?}: expected \"total_register\" or \"valley_register\""
                            ),
                        })
                    }
                };
            }
            if let Some(c) = f.calendar {
                p.utc_offset_s = offset(&c.utc_offset)?;
            }
            let c = f.computation.unwrap_or_default();
            let r = &mut p.rules;
            r.actual_within_s = c.actual_within_s.unwrap_or(r.actual_within_s);
            r.max_gap_s = c.max_gap_s.unwrap_or(r.max_gap_s);
            r.default_max_power_w = c.default_max_power_w.unwrap_or(r.default_max_power_w);
            r.register_modulus_wh = c.register_modulus_wh.unwrap_or(r.register_modulus_wh);
            r.tou_tolerance_wh = c.tou_tolerance_wh.unwrap_or(r.tou_tolerance_wh);
            r.tou_tolerance_permille = c.tou_tolerance_permille.unwrap_or(r.tou_tolerance_permille);
            p.validate()?;
            Ok(p)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_built_in_file_is_beijing_2018() {
            assert_eq!(
                Policy::from_toml_str(BEIJING_2018_TOML).unwrap(),
                Policy::beijing_2018()
            );
        }

        #[test]
        fn errors_name_the_key() {
            let t = BEIJING_2018_TOML.replace("start = \"20:00\"", "start = \"25:00\"");
            assert_eq!(Policy::from_toml_str(&t).unwrap_err().key, "offpeak.start");
            let t = BEIJING_2018_TOML.replace("\"03-31\"", "\"13-31\"");
            assert_eq!(
                Policy::from_toml_str(&t).unwrap_err().key,
                "season.last_day"
            );
            let t =
                BEIJING_2018_TOML.replace("price_fen_per_kwh = 30", "price_fen_per_kwh = \"x\"");
            let e = Policy::from_toml_str(&t).unwrap_err();
            assert!(e.message.starts_with("line 15:"), "{e}");
        }

        #[test]
        fn valley_register_source_and_thresholds_parse() {
            let t = format!(
                "{}\n[computation]\nmax_gap_s = 3600\n",
                BEIJING_2018_TOML.replace(
                    "price_fen_per_kwh = 30",
                    "price_fen_per_kwh = 30\nenergy_source = \"valley_register\""
                )
            );
            let p = Policy::from_toml_str(&t).unwrap();
            assert_eq!(p.energy_source, EnergySource::ValleyRegister);
            assert_eq!(p.rules.max_gap_s, 3600);
            assert_eq!(p.rules.actual_within_s, 120);
        }
    }
}
