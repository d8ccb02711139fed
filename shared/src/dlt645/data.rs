//! DL/T 645 value formats: packed BCD, low byte first, sign-magnitude where signed
//! (bit 7 of the last wire byte), turned into integer units and back.
//!
//! All functions take the value bytes in wire order with the +33H step already
//! undone (what [`Frame::data`](super::Frame) holds after the DI). Nibbles above 9
//! are rejected. Units: energy in [`Wh`] (0.01 kWh = 10 Wh, exact), power in 0.1 W
//! (exact) or [`W`] (rounded), voltage in decivolts, current in milliamps,
//! frequency in centihertz.

use crate::units::{Wh, W};

use super::address::Address;

/// Why value bytes could not be decoded or a value could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// A nibble above 9 where a BCD digit belongs.
    #[error("not BCD: nibble above 9")]
    BadBcd,
    /// The value has the wrong number of bytes for its format.
    #[error("wrong length: {expected} bytes expected, {got} found")]
    BadLength {
        /// Bytes the format needs.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
    /// A field outside its range (month 13, a negative energy to encode, ...).
    #[error("value out of range")]
    OutOfRange,
}

/// The bytes as exactly `N` bytes.
pub(crate) fn exact<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DataError> {
    bytes.try_into().map_err(|_| DataError::BadLength {
        expected: N,
        got: bytes.len(),
    })
}

/// One BCD byte (two digits) as `0..=99`.
pub fn bcd_byte(b: u8) -> Result<u8, DataError> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    if hi > 9 || lo > 9 {
        return Err(DataError::BadBcd);
    }
    Ok(hi * 10 + lo)
}

/// `0..=99` as one BCD byte.
pub fn to_bcd_byte(v: u8) -> Result<u8, DataError> {
    if v > 99 {
        return Err(DataError::OutOfRange);
    }
    Ok(((v / 10) << 4) | (v % 10))
}

/// Unsigned packed BCD, low byte first, at most 9 bytes (18 digits).
pub fn bcd_unsigned(bytes: &[u8]) -> Result<u64, DataError> {
    if bytes.len() > 9 {
        return Err(DataError::BadLength {
            expected: 9,
            got: bytes.len(),
        });
    }
    bytes
        .iter()
        .rev()
        .try_fold(0u64, |n, &b| Ok(n * 100 + u64::from(bcd_byte(b)?)))
}

/// Sign-magnitude packed BCD, low byte first: bit 7 of the last byte is the sign
/// (1 = negative), the remaining bits are BCD digits. At most 9 bytes.
pub fn bcd_signed(bytes: &[u8]) -> Result<i64, DataError> {
    let Some((&last, rest)) = bytes.split_last() else {
        return Ok(0);
    };
    if bytes.len() > 9 {
        return Err(DataError::BadLength {
            expected: 9,
            got: bytes.len(),
        });
    }
    let top = u64::from(bcd_byte(last & 0x7F)?);
    let magnitude = rest
        .iter()
        .rev()
        .try_fold(top, |n, &b| Ok(n * 100 + u64::from(bcd_byte(b)?)))?;
    // At most 17 decimal digits after the sign bit, far inside i64.
    let magnitude = i64::try_from(magnitude).map_err(|_| DataError::OutOfRange)?;
    Ok(if last & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

/// Writes `value` as unsigned packed BCD, low byte first, filling `out`.
pub fn encode_bcd_unsigned(mut value: u64, out: &mut [u8]) -> Result<(), DataError> {
    for b in out.iter_mut() {
        *b = to_bcd_byte(u8::try_from(value % 100).unwrap_or(0))?;
        value /= 100;
    }
    if value != 0 {
        return Err(DataError::OutOfRange);
    }
    Ok(())
}

/// Writes `value` as sign-magnitude packed BCD (sign in bit 7 of the last byte).
/// The magnitude's top digit must be at most 7 so the sign bit stays free.
pub fn encode_bcd_signed(value: i64, out: &mut [u8]) -> Result<(), DataError> {
    encode_bcd_unsigned(value.unsigned_abs(), out)?;
    if let Some(last) = out.last_mut() {
        if *last & 0x80 != 0 {
            return Err(DataError::OutOfRange);
        }
        if value < 0 {
            *last |= 0x80;
        }
    } else if value != 0 {
        return Err(DataError::OutOfRange);
    }
    Ok(())
}

/// Energy `XXXXXX.XX` kWh, 4 bytes unsigned, as Wh (exact: ×10).
pub fn energy_wh(bytes: &[u8]) -> Result<Wh, DataError> {
    let b: [u8; 4] = exact(bytes)?;
    Ok(Wh(i64::try_from(bcd_unsigned(&b)?)
        .map_err(|_| DataError::OutOfRange)?
        * 10))
}

/// Signed energy `XXXXXX.XX` kWh (combined active 00000000), 4 bytes, as Wh (exact).
pub fn signed_energy_wh(bytes: &[u8]) -> Result<Wh, DataError> {
    let b: [u8; 4] = exact(bytes)?;
    Ok(Wh(bcd_signed(&b)? * 10))
}

/// Active power `XX.XXXX` kW, 3 bytes signed, in 0.1 W (exact: 0.0001 kW = 0.1 W).
pub fn power_dw(bytes: &[u8]) -> Result<i32, DataError> {
    let b: [u8; 3] = exact(bytes)?;
    i32::try_from(bcd_signed(&b)?).map_err(|_| DataError::OutOfRange)
}

/// Active power `XX.XXXX` kW as whole W: the magnitude is rounded to the nearest
/// watt, a tie (x.5 W) rounding up, then the sign applied (so ties go away from zero:
/// 0.5 W → 1 W, −0.5 W → −1 W). Use [`power_dw`] for the exact value.
pub fn power_w(bytes: &[u8]) -> Result<W, DataError> {
    let dw = i64::from(power_dw(bytes)?);
    let magnitude = (dw.abs() + 5) / 10;
    Ok(W(if dw < 0 { -magnitude } else { magnitude }))
}

/// Voltage `XXX.X` V, 2 bytes, in decivolts.
pub fn voltage_dv(bytes: &[u8]) -> Result<u32, DataError> {
    let b: [u8; 2] = exact(bytes)?;
    u32::try_from(bcd_unsigned(&b)?).map_err(|_| DataError::OutOfRange)
}

/// Current `XXX.XXX` A, 3 bytes signed, in milliamps.
pub fn current_ma(bytes: &[u8]) -> Result<i32, DataError> {
    let b: [u8; 3] = exact(bytes)?;
    i32::try_from(bcd_signed(&b)?).map_err(|_| DataError::OutOfRange)
}

/// Frequency `XX.XX` Hz, 2 bytes, in centihertz.
pub fn frequency_chz(bytes: &[u8]) -> Result<u32, DataError> {
    let b: [u8; 2] = exact(bytes)?;
    u32::try_from(bcd_unsigned(&b)?).map_err(|_| DataError::OutOfRange)
}

/// A 12-digit address value (04000401, 04000402, the 93H reply), 6 bytes BCD, A0 first.
pub fn address_value(bytes: &[u8]) -> Result<Address, DataError> {
    let b: [u8; 6] = exact(bytes)?;
    bcd_unsigned(&b)?;
    Ok(Address::from_wire(b))
}

/// Energy as `XXXXXX.XX` kWh bytes. The register counts whole 0.01 kWh, so Wh
/// below 10 are dropped (floored), as a meter's register would show them.
pub fn energy_bytes(e: Wh) -> Result<[u8; 4], DataError> {
    let centi_kwh = u64::try_from(e.0).map_err(|_| DataError::OutOfRange)? / 10;
    let mut out = [0u8; 4];
    encode_bcd_unsigned(centi_kwh, &mut out)?;
    Ok(out)
}

/// Signed energy as `XXXXXX.XX` kWh bytes; the magnitude is floored to 10 Wh.
pub fn signed_energy_bytes(e: Wh) -> Result<[u8; 4], DataError> {
    let mut out = [0u8; 4];
    encode_bcd_signed(e.0 / 10, &mut out)?;
    Ok(out)
}

/// Power in 0.1 W as `XX.XXXX` kW bytes (|p| ≤ 79.9999 kW).
pub fn power_dw_bytes(dw: i32) -> Result<[u8; 3], DataError> {
    let mut out = [0u8; 3];
    encode_bcd_signed(i64::from(dw), &mut out)?;
    Ok(out)
}

/// Power in W as `XX.XXXX` kW bytes (exact, |p| ≤ 79 999 W).
pub fn power_bytes(p: W) -> Result<[u8; 3], DataError> {
    let dw =
        p.0.checked_mul(10)
            .and_then(|v| i32::try_from(v).ok())
            .ok_or(DataError::OutOfRange)?;
    power_dw_bytes(dw)
}

/// Voltage in decivolts as `XXX.X` V bytes.
pub fn voltage_bytes(dv: u32) -> Result<[u8; 2], DataError> {
    let mut out = [0u8; 2];
    encode_bcd_unsigned(u64::from(dv), &mut out)?;
    Ok(out)
}

/// Current in milliamps as `XXX.XXX` A bytes (|i| ≤ 799.999 A).
pub fn current_bytes(ma: i32) -> Result<[u8; 3], DataError> {
    let mut out = [0u8; 3];
    encode_bcd_signed(i64::from(ma), &mut out)?;
    Ok(out)
}

/// Frequency in centihertz as `XX.XX` Hz bytes.
pub fn frequency_bytes(chz: u32) -> Result<[u8; 2], DataError> {
    let mut out = [0u8; 2];
    encode_bcd_unsigned(u64::from(chz), &mut out)?;
    Ok(out)
}

/// An address as its 6 value bytes (A0 first); wildcard bytes are refused.
pub fn address_bytes(a: Address) -> Result<[u8; 6], DataError> {
    let b = a.to_wire();
    bcd_unsigned(&b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: PartialEq + core::fmt::Debug>(
        f: fn(&[u8]) -> Result<T, DataError>,
        table: &[(&[u8], Result<T, DataError>)],
    ) {
        for (input, expected) in table {
            assert_eq!(&f(input), expected, "input {input:02X?}");
        }
    }

    #[test]
    fn energy() {
        check(
            energy_wh,
            &[
                (&[0x26, 0, 0, 0], Ok(Wh(260))),
                (&[0x78, 0x56, 0x34, 0x12], Ok(Wh(123_456_780))),
                (&[0x04, 0x00, 0x40, 0x00], Ok(Wh(4_000_040))),
                (&[0x99, 0x99, 0x99, 0x99], Ok(Wh(999_999_990))),
                (&[0x00, 0x00, 0x00, 0x80], Ok(Wh(800_000_000))), // unsigned: bit 7 is a digit
                (&[0x1A, 0, 0, 0], Err(DataError::BadBcd)),
                (&[0xA1, 0, 0, 0], Err(DataError::BadBcd)),
                (
                    &[0x26, 0, 0],
                    Err(DataError::BadLength {
                        expected: 4,
                        got: 3,
                    }),
                ),
            ],
        );
        check(
            signed_energy_wh,
            &[
                (&[0x26, 0, 0, 0], Ok(Wh(260))),
                (&[0x26, 0, 0, 0x80], Ok(Wh(-260))),
                (&[0x99, 0x99, 0x99, 0xF9], Ok(Wh(-799_999_990))),
                (&[0, 0, 0, 0x8A], Err(DataError::BadBcd)),
            ],
        );
    }

    #[test]
    fn power_current_voltage_frequency() {
        check(
            power_dw,
            &[
                (&[0x45, 0x23, 0x01], Ok(12_345)),
                (&[0x45, 0x23, 0x81], Ok(-12_345)),
                (&[0x99, 0x99, 0x79], Ok(799_999)),
                (&[0x05, 0x00, 0x80], Ok(-5)),
                (&[0x0F, 0x00, 0x00], Err(DataError::BadBcd)),
            ],
        );
        check(
            power_w,
            &[
                (&[0x45, 0x23, 0x01], Ok(W(1235))), // 1234.5 W, tie rounds up
                (&[0x44, 0x23, 0x01], Ok(W(1234))),
                (&[0x45, 0x23, 0x81], Ok(W(-1235))), // tie away from zero
                (&[0x04, 0x00, 0x80], Ok(W(0))),
                (&[0x05, 0x00, 0x80], Ok(W(-1))),
                (
                    &[0x45, 0x23],
                    Err(DataError::BadLength {
                        expected: 3,
                        got: 2,
                    }),
                ),
            ],
        );
        check(
            current_ma,
            &[
                (&[0x34, 0x12, 0x80], Ok(-1234)),
                (&[0x34, 0x12, 0x00], Ok(1234)),
                (&[0x99, 0x99, 0x79], Ok(799_999)),
                (&[0x34, 0x12, 0xC0], Ok(-401_234)),
                (&[0x34, 0x12, 0x8A], Err(DataError::BadBcd)),
            ],
        );
        check(
            voltage_dv,
            &[
                (&[0x01, 0x10], Ok(1001)),
                (&[0x94, 0x23], Ok(2394)),
                (&[0x00, 0x2A], Err(DataError::BadBcd)),
            ],
        );
        check(
            frequency_chz,
            &[
                (&[0x03, 0x50], Ok(5003)),
                (
                    &[0x03],
                    Err(DataError::BadLength {
                        expected: 2,
                        got: 1,
                    }),
                ),
            ],
        );
    }

    #[test]
    fn encoders_invert_decoders() {
        assert_eq!(energy_bytes(Wh(123_456_789)), Ok([0x78, 0x56, 0x34, 0x12]));
        assert_eq!(energy_bytes(Wh(-10)), Err(DataError::OutOfRange));
        assert_eq!(energy_bytes(Wh(1_000_000_000)), Err(DataError::OutOfRange));
        assert_eq!(signed_energy_bytes(Wh(-260)), Ok([0x26, 0, 0, 0x80]));
        assert_eq!(
            signed_energy_bytes(Wh(800_000_000)),
            Err(DataError::OutOfRange)
        );
        assert_eq!(power_bytes(W(-1234)), Ok([0x40, 0x23, 0x81]));
        assert_eq!(power_bytes(W(80_000)), Err(DataError::OutOfRange));
        assert_eq!(current_bytes(-1234), Ok([0x34, 0x12, 0x80]));
        assert_eq!(voltage_bytes(2302), Ok([0x02, 0x23]));
        assert_eq!(voltage_bytes(10_000), Err(DataError::OutOfRange));
        assert_eq!(frequency_bytes(5003), Ok([0x03, 0x50]));
        assert_eq!(address_bytes(Address::WILDCARD), Err(DataError::BadBcd));
        assert_eq!(bcd_signed(&[]), Ok(0));
        assert_eq!(
            bcd_unsigned(&[0; 10]),
            Err(DataError::BadLength {
                expected: 9,
                got: 10
            })
        );
    }
}
