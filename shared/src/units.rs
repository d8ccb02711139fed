//! Integer units and identifiers: energy in Wh, power in W, money in fen, and the
//! meter and gateway ids of the contract. Never a float for energy or money.

use core::fmt;
use core::str::FromStr;

use heapless::String;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Energy, watt-hours. Registers, segments, nights and seasons are all `Wh`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Wh(pub i64);

/// Power, watts (signed: negative is export).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct W(pub i64);

/// Money, fen (0.01 yuan).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Fen(pub i64);

/// `a / b` rounded half up (towards +infinity on a tie), for `b > 0`.
///
/// The policy's rounding rule for interpolated Wh and for fen.
pub const fn div_round_half_up(a: i128, b: i128) -> i128 {
    // floor((2a + b) / 2b) is exact half-up for every sign of `a`.
    (2 * a + b).div_euclid(2 * b)
}

impl Wh {
    /// Kilowatt-hours with exactly three decimals, as the contract writes them: `"123.456"`.
    pub fn kwh_string(self) -> String<24> {
        fixed_point(self.0, 1000)
    }

    /// Money for this energy at `fen_per_kwh`, rounded half up to the fen.
    pub fn at_rate(self, fen_per_kwh: i64) -> Fen {
        let fen = div_round_half_up(self.0 as i128 * fen_per_kwh as i128, 1000);
        Fen(i64::try_from(fen).unwrap_or(if fen < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl Fen {
    /// Yuan with exactly two decimals, as the contract writes them: `"12.35"`.
    pub fn yuan_string(self) -> String<24> {
        fixed_point(self.0, 100)
    }
}

impl fmt::Display for Wh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kwh_string())
    }
}

impl fmt::Display for Fen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.yuan_string())
    }
}

/// `value / scale` written with as many decimals as `scale` has zeros.
fn fixed_point(value: i64, scale: u64) -> String<24> {
    use core::fmt::Write;
    let mut out = String::new();
    let neg = value < 0;
    let abs = value.unsigned_abs();
    let width = match scale {
        1000 => 3,
        100 => 2,
        _ => 0,
    };
    // 20 digits + sign + point fit in 24 bytes, so the writes cannot fail.
    let _ = write!(
        out,
        "{}{}.{:0width$}",
        if neg { "-" } else { "" },
        abs / scale,
        abs % scale,
        width = width
    );
    out
}

/// Why an id was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("is empty")]
    Empty,
    /// The id is longer than allowed.
    #[error("is longer than {0} characters")]
    TooLong(usize),
    /// The id has a character outside its charset.
    #[error("has a character outside {0}")]
    BadChar(&'static str),
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $cap:literal, $charset:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String<$cap>);

        impl $name {
            /// Checks the charset and length, then wraps.
            pub fn new(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> Result<(), IdError> = $valid;
                check(s)?;
                let mut out = String::new();
                out.push_str(s).map_err(|()| IdError::TooLong($cap))?;
                Ok(Self(out))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(IdVisitor(Self::new))
            }
        }
    };
}

id_type!(
    /// A meter id: `[0-9A-Za-z_.:-]{1,32}`; a DL/T 645 meter uses its 12-digit address.
    MeterId,
    32,
    "[0-9A-Za-z_.:-]",
    |s| check_id(s, 32, "[0-9A-Za-z_.:-]", |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'), |_| true)
);

id_type!(
    /// A gateway id: `[a-z0-9][a-z0-9-]{0,63}`; it is also the topic segment.
    GatewayId,
    64,
    "[a-z0-9-]",
    |s| check_id(s, 64, "[a-z0-9-] (starting [a-z0-9])", |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-', |first| first != '-')
);

/// Accepts borrowed and escaped strings alike, then validates.
struct IdVisitor<T>(fn(&str) -> Result<T, IdError>);

impl<T> serde::de::Visitor<'_> for IdVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

fn check_id(
    s: &str,
    max: usize,
    charset: &'static str,
    ok: impl Fn(char) -> bool,
    first_ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    let first = s.chars().next().ok_or(IdError::Empty)?;
    if s.len() > max {
        return Err(IdError::TooLong(max));
    }
    if !s.chars().all(ok) || !first_ok(first) {
        return Err(IdError::BadChar(charset));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwh_strings_have_three_decimals() {
        assert_eq!(Wh(123_456).kwh_string().as_str(), "123.456");
        assert_eq!(Wh(5).kwh_string().as_str(), "0.005");
        assert_eq!(Wh(10_000_000).kwh_string().as_str(), "10000.000");
        assert_eq!(Wh(-1).kwh_string().as_str(), "-0.001");
        assert_eq!(Wh(i64::MIN).kwh_string().as_str(), "-9223372036854775.808");
    }

    #[test]
    fn yuan_strings_have_two_decimals() {
        assert_eq!(Fen(1235).yuan_string().as_str(), "12.35");
        assert_eq!(Fen(7).yuan_string().as_str(), "0.07");
        assert_eq!(Fen(0).yuan_string().as_str(), "0.00");
    }

    #[test]
    fn money_rounds_half_up_to_the_fen() {
        // 123.456 kWh at 10 fen = 1234.56 fen -> 1235
        assert_eq!(Wh(123_456).at_rate(10), Fen(1235));
        // 123.456 kWh at 30 fen = 3703.68 -> 3704
        assert_eq!(Wh(123_456).at_rate(30), Fen(3704));
        // exactly half: 0.05 kWh at 10 fen = 0.5 fen -> 1
        assert_eq!(Wh(50).at_rate(10), Fen(1));
        assert_eq!(Wh(49).at_rate(10), Fen(0));
        assert_eq!(div_round_half_up(-5, 10), 0);
        assert_eq!(div_round_half_up(-6, 10), -1);
        assert_eq!(div_round_half_up(15, 10), 2);
    }

    #[test]
    fn ids_are_checked() {
        assert!(MeterId::new("123456781012").is_ok());
        assert!(MeterId::new("mod-1:7.a_b").is_ok());
        assert_eq!(MeterId::new(""), Err(IdError::Empty));
        assert!(matches!(MeterId::new("a b"), Err(IdError::BadChar(_))));
        assert_eq!(MeterId::new(&"1".repeat(33)), Err(IdError::TooLong(32)));
        assert!(GatewayId::new("gw-0001").is_ok());
        assert!(GatewayId::new("-gw").is_err());
        assert!(GatewayId::new("GW1").is_err());
        assert_eq!(GatewayId::new(&"a".repeat(65)), Err(IdError::TooLong(64)));
    }
}
