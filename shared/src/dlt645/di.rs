//! DL/T 645-2007 data identifiers (DI): the `Di` newtype, its wire order (DI0
//! first), and the identifiers this project reads.

use core::fmt;
use core::str::FromStr;

/// A data identifier `DI3 DI2 DI1 DI0`, written DI3 first (`0x0001_0000` is "00010000").
///
/// On the wire DI0 goes first; [`Di::to_wire`] and [`Di::from_wire`] convert
/// (without the +33H step, which the frame codec applies to the whole data field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Di(pub u32);

impl Di {
    /// The DI from its four data bytes in wire order (DI0 first, already -33H).
    pub const fn from_wire(bytes: [u8; 4]) -> Self {
        Self(u32::from_le_bytes(bytes))
    }

    /// The four data bytes in wire order (DI0 first, before +33H).
    pub const fn to_wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// The DI from the first four bytes of a data field (already -33H), if there are four.
    pub fn from_data(data: &[u8]) -> Option<Self> {
        let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
        Some(Self::from_wire(bytes))
    }

    /// Forward active energy of tariff `n` (0 = total, 1 尖 sharp, 2 峰 peak, 3 平 flat,
    /// 4 谷 valley, up to 63), current settlement period; `None` above 63.
    pub const fn forward_active_tariff(n: u8) -> Option<Self> {
        if n > 63 {
            None
        } else {
            Some(Self(0x0001_0000 | ((n as u32) << 8)))
        }
    }
}

impl fmt::Display for Di {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

/// Why a DI string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a DI is 8 hex digits, DI3 first (e.g. 00010000)")]
pub struct DiParseError;

impl FromStr for Di {
    type Err = DiParseError;
    /// Parses 8 hex digits, DI3 first (`"00010000"`).
    fn from_str(s: &str) -> Result<Self, DiParseError> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DiParseError);
        }
        u32::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| DiParseError)
    }
}

/// (Current) combined active total energy 组合有功总电能: signed `XXXXXX.XX` kWh.
pub const COMBINED_ACTIVE: Di = Di(0x0000_0000);
/// Forward active total energy 正向有功总电能: `XXXXXX.XX` kWh, the paid register.
pub const FORWARD_ACTIVE_TOTAL: Di = Di(0x0001_0000);
/// Forward active energy, tariff 1 (尖, sharp): `XXXXXX.XX` kWh.
pub const FORWARD_ACTIVE_T1: Di = Di(0x0001_0100);
/// Forward active energy, tariff 2 (峰, peak): `XXXXXX.XX` kWh.
pub const FORWARD_ACTIVE_T2: Di = Di(0x0001_0200);
/// Forward active energy, tariff 3 (平, flat): `XXXXXX.XX` kWh.
pub const FORWARD_ACTIVE_T3: Di = Di(0x0001_0300);
/// Forward active energy, tariff 4 (谷, valley / off-peak): `XXXXXX.XX` kWh.
pub const FORWARD_ACTIVE_T4: Di = Di(0x0001_0400);
/// Forward active block (total + tariffs 1..n, 4 bytes each).
pub const FORWARD_ACTIVE_BLOCK: Di = Di(0x0001_FF00);
/// Reverse active total energy 反向有功总电能: `XXXXXX.XX` kWh.
pub const REVERSE_ACTIVE_TOTAL: Di = Di(0x0002_0000);
/// Phase A voltage: `XXX.X` V.
pub const VOLTAGE_A: Di = Di(0x0201_0100);
/// Phase B voltage: `XXX.X` V.
pub const VOLTAGE_B: Di = Di(0x0201_0200);
/// Phase C voltage: `XXX.X` V.
pub const VOLTAGE_C: Di = Di(0x0201_0300);
/// Voltage block A, B, C (3 × `XXX.X` V).
pub const VOLTAGE_BLOCK: Di = Di(0x0201_FF00);
/// Phase A current: signed `XXX.XXX` A.
pub const CURRENT_A: Di = Di(0x0202_0100);
/// Phase B current: signed `XXX.XXX` A.
pub const CURRENT_B: Di = Di(0x0202_0200);
/// Phase C current: signed `XXX.XXX` A.
pub const CURRENT_C: Di = Di(0x0202_0300);
/// Instantaneous total active power: signed `XX.XXXX` kW.
pub const ACTIVE_POWER_TOTAL: Di = Di(0x0203_0000);
/// Grid frequency: `XX.XX` Hz.
pub const FREQUENCY: Di = Di(0x0280_0002);
/// Date and weekday `YYMMDDWW` (wire `WW DD MM YY`, WW 0 = Sunday).
pub const DATE: Di = Di(0x0400_0101);
/// Time `hhmmss` (wire `ss mm hh`).
pub const TIME: Di = Di(0x0400_0102);
/// Communication address, 12 BCD digits, A0 first.
pub const ADDRESS: Di = Di(0x0400_0401);
/// Meter number 表号, 12 BCD digits, low first.
pub const METER_NUMBER: Di = Di(0x0400_0402);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_order_is_di0_first() {
        assert_eq!(FORWARD_ACTIVE_TOTAL.to_wire(), [0x00, 0x00, 0x01, 0x00]);
        assert_eq!(FREQUENCY.to_wire(), [0x02, 0x00, 0x80, 0x02]);
        assert_eq!(Di::from_wire([0xFF, 0x22, 0x80, 0x02]), Di(0x0280_22FF));
        assert_eq!(Di::from_data(&[0, 1, 1, 2, 9]), Some(VOLTAGE_A));
        assert_eq!(Di::from_data(&[0, 1, 1]), None);
    }

    #[test]
    fn text_round_trips() {
        assert_eq!(FORWARD_ACTIVE_T4.to_string(), "00010400");
        assert_eq!("0201ff00".parse::<Di>(), Ok(VOLTAGE_BLOCK));
        assert_eq!("0201FF0".parse::<Di>(), Err(DiParseError));
        assert_eq!("+201FF00".parse::<Di>(), Err(DiParseError));
        assert_eq!(Di::forward_active_tariff(4), Some(FORWARD_ACTIVE_T4));
        assert_eq!(Di::forward_active_tariff(0), Some(FORWARD_ACTIVE_TOTAL));
        assert_eq!(Di::forward_active_tariff(64), None);
    }
}
