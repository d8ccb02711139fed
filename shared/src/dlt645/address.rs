//! DL/T 645 meter addresses: 6 bytes of packed BCD, A0 (the lowest two digits)
//! first on the wire, with the broadcast address and the AAH wildcard.

use core::fmt;
use core::str::FromStr;

/// A meter's communication address, stored in wire order (`bytes[0]` = A0, the
/// lowest two digits).
///
/// Meter `123456789012` is `[0x12, 0x90, 0x78, 0x56, 0x34, 0x12]`. A byte `0xAA`
/// is a wildcard (缩位寻址); [`Display`](fmt::Display) writes each byte as two hex
/// digits, high byte first, so BCD addresses print as their 12 digits and
/// wildcards as `AA`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub [u8; 6]);

/// Why an address string or number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The string is empty.
    #[error("address is empty")]
    Empty,
    /// More than 12 digits, or a number above 999999999999.
    #[error("address has more than 12 digits")]
    TooLong,
    /// A character other than a decimal digit, or an `A` that is not part of a whole `AA` byte.
    #[error("address digit is not 0-9 (or a whole AA wildcard byte)")]
    BadDigit,
}

impl Address {
    /// `999999999999`: broadcast, used only by broadcast time (08H) and freeze; meters never reply.
    pub const BROADCAST: Self = Self([0x99; 6]);
    /// `AAAAAAAAAAAA`: matches any meter; for read-address (13H) on a point-to-point line.
    pub const WILDCARD: Self = Self([0xAA; 6]);

    /// The address in wire order (A0 first).
    pub const fn from_wire(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    /// The six bytes in wire order (A0 first).
    pub const fn to_wire(self) -> [u8; 6] {
        self.0
    }

    /// The address of meter number `n` (`0..=999_999_999_999`).
    pub fn from_number(mut n: u64) -> Result<Self, AddressError> {
        if n > 999_999_999_999 {
            return Err(AddressError::TooLong);
        }
        let mut bytes = [0u8; 6];
        for b in &mut bytes {
            let lo = u8::try_from(n % 10).unwrap_or(0);
            let hi = u8::try_from((n / 10) % 10).unwrap_or(0);
            *b = (hi << 4) | lo;
            n /= 100;
        }
        Ok(Self(bytes))
    }

    /// The meter number, if every byte is BCD (no wildcard).
    pub fn number(&self) -> Option<u64> {
        let mut n = 0u64;
        for &b in self.0.iter().rev() {
            let (hi, lo) = (b >> 4, b & 0x0F);
            if hi > 9 || lo > 9 {
                return None;
            }
            n = n * 100 + u64::from(hi) * 10 + u64::from(lo);
        }
        Some(n)
    }

    /// True if any byte is the `AA` wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&0xAA)
    }

    /// True for [`Address::BROADCAST`].
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Does a reply from `actual` answer a request sent to `self`?
    ///
    /// Every `AA` byte of `self` matches any byte; the others must be equal. A reply
    /// carries the meter's real address, so `actual` is compared as given.
    pub fn matches(&self, actual: &Address) -> bool {
        self.0
            .iter()
            .zip(actual.0.iter())
            .all(|(want, got)| *want == 0xAA || want == got)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// Parses up to 12 decimal digits, most significant first; a shorter string is
    /// padded with zeros in its high digits (`"1234567890"` is `001234567890`). A
    /// byte written `AA` (on a two-digit boundary of the 12-digit form) is a wildcard.
    fn from_str(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > 12 {
            return Err(AddressError::TooLong);
        }
        // Right-align into 12 ASCII digits, padding with '0'.
        let mut digits = [b'0'; 12];
        let start = 12 - s.len();
        for (slot, c) in digits.iter_mut().skip(start).zip(s.bytes()) {
            *slot = c;
        }
        let mut bytes = [0u8; 6];
        // digits[0..2] is the high byte A5, digits[10..12] is A0.
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let byte = match pair {
                [b'A' | b'a', b'A' | b'a'] => 0xAA,
                [h, l] if h.is_ascii_digit() && l.is_ascii_digit() => {
                    ((h - b'0') << 4) | (l - b'0')
                }
                _ => return Err(AddressError::BadDigit),
            };
            if let Some(slot) = bytes.get_mut(5 - i) {
                *slot = byte;
            }
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<[u8; 6], AddressError>) {
        assert_eq!(input.parse::<Address>().map(|a| a.0), expected, "{input}");
    }

    #[test]
    fn parses_a0_first() {
        check("123456789012", Ok([0x12, 0x90, 0x78, 0x56, 0x34, 0x12]));
        check("1234567890", Ok([0x90, 0x78, 0x56, 0x34, 0x12, 0x00]));
        check("161", Ok([0x61, 0x01, 0, 0, 0, 0]));
        check("999999999999", Ok([0x99; 6]));
        check("AAAAAAAAAAAA", Ok([0xAA; 6]));
        check("aaaaaa123456", Ok([0x56, 0x34, 0x12, 0xAA, 0xAA, 0xAA]));
        check("", Err(AddressError::Empty));
        check("1234567890123", Err(AddressError::TooLong));
        check("12345678901x", Err(AddressError::BadDigit));
        check("A23456789012", Err(AddressError::BadDigit));
        check("-1", Err(AddressError::BadDigit));
    }

    #[test]
    fn displays_twelve_digits() {
        let a: Address = "1234567890".parse().unwrap();
        assert_eq!(a.to_string(), "001234567890");
        assert_eq!(Address::WILDCARD.to_string(), "AAAAAAAAAAAA");
        assert_eq!(Address::BROADCAST.to_string(), "999999999999");
        assert_eq!(a.number(), Some(1_234_567_890));
        assert_eq!(Address::WILDCARD.number(), None);
        assert_eq!(
            Address::from_number(123_456_789_012).unwrap().to_string(),
            "123456789012"
        );
        assert_eq!(
            Address::from_number(1_000_000_000_000),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn wildcards_match_any_byte() {
        let real: Address = "123456789012".parse().unwrap();
        let short: Address = "AAAAAA789012".parse().unwrap();
        assert!(Address::WILDCARD.matches(&real));
        assert!(short.matches(&real));
        assert!(real.matches(&real));
        assert!(!real.matches(&short));
        let other: Address = "123456789013".parse().unwrap();
        assert!(!short.matches(&other));
        assert!(!other.matches(&real));
        assert!(short.has_wildcard() && !real.has_wildcard());
        assert!(Address::BROADCAST.is_broadcast());
    }
}
