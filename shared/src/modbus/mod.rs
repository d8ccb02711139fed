/*!
Modbus register maps of DIN-rail meters and the decoding of their registers into
integer units (protocol-facts §7). The transport lives in the agent (tokio-modbus).

Floats appear only here, at the decode step, because the meters send IEEE-754
float32: a value is converted to integer Wh / W / dV at once, rounded to the
nearest unit (ties away from zero), and NaN, infinities and negative energies
are refused.

# Layout
- this module: `ReadFunction`, `Encoding`, `Scale`, `Register`, `Quantity` and decoding.
- [`maps`] — `MeterModel`, the const tables for SDM120, SDM630, DDSU666, `model()`.
- [`crc`] — CRC-16/MODBUS.
- [`rtu`] — RTU read request and response frames (vectors, simulators).
*/

pub mod crc;
pub mod maps;
pub mod rtu;

pub use crc::{check_crc, crc16, crc_bytes, CrcError};
pub use maps::{model, MeterModel, DDSU666, MODELS, SDM120, SDM630};
pub use rtu::{parse_read_response, read_request, ReadResponse, RtuError};

use crate::units::{Wh, W};

/// The function code a model's registers are read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadFunction {
    /// 03H read holding registers.
    Holding,
    /// 04H read input registers.
    Input,
}

impl ReadFunction {
    /// The function code byte.
    pub const fn code(self) -> u8 {
        match self {
            Self::Holding => 0x03,
            Self::Input => 0x04,
        }
    }
}

/// How a value sits in its registers. Multi-register values put the high word
/// first ("ABCD", big-endian bytes), as on all meters mapped here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// IEEE-754 float32, 2 registers, high word first.
    F32Abcd,
    /// Unsigned 16-bit, 1 register.
    U16,
    /// Signed 16-bit (two's complement), 1 register.
    I16,
    /// Unsigned 32-bit, 2 registers, high word first.
    U32Abcd,
    /// Signed 32-bit (two's complement), 2 registers, high word first.
    I32Abcd,
}

impl Encoding {
    /// Registers the value spans.
    pub const fn registers(self) -> u16 {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::F32Abcd | Self::U32Abcd | Self::I32Abcd => 2,
        }
    }
}

/// `target = raw × mul / div`: from the register's unit to the integer unit of its
/// quantity (kWh float → Wh is `mul: 1000`; a U32 in 0.01 kWh → Wh is `mul: 10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scale {
    /// Multiplier.
    pub mul: i64,
    /// Divisor, > 0.
    pub div: i64,
}

impl Scale {
    /// `× mul`.
    pub const fn times(mul: i64) -> Self {
        Self { mul, div: 1 }
    }
}

/// What a register holds, and so its integer unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantity {
    /// Total import active energy, Wh (never negative).
    ImportEnergy,
    /// Active power, W (signed: negative is export).
    ActivePower,
    /// Voltage, decivolts (never negative).
    Voltage,
}

/// One value in a meter's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Register {
    /// Protocol address (register "30073" is address 0x0048).
    pub address: u16,
    /// Layout in the registers.
    pub encoding: Encoding,
    /// From the register unit to the quantity's integer unit.
    pub scale: Scale,
    /// What it measures.
    pub quantity: Quantity,
}

/// Why registers could not be turned into a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModbusError {
    /// The wrong number of registers for the encoding.
    #[error("{expected} registers expected, {got} given")]
    WrongCount {
        /// Registers the encoding needs.
        expected: usize,
        /// Registers given.
        got: usize,
    },
    /// A float NaN or infinity.
    #[error("value is not a finite number")]
    NotFinite,
    /// A negative value for a quantity that cannot be negative (energy, voltage).
    #[error("negative value")]
    Negative,
    /// Too large for the integer unit, or a scale with a zero divisor.
    #[error("value out of range")]
    OutOfRange,
}

/// The float32 in two registers, high word first.
pub fn f32_abcd(hi: u16, lo: u16) -> f32 {
    f32::from_bits((u32::from(hi) << 16) | u32::from(lo))
}

/// Rounds to the nearest integer, ties away from zero, for |x| < 2^52 (exact:
/// the fraction is computed without loss, so 0.49999999999999994 stays 0).
#[allow(clippy::cast_possible_truncation)] // the range is checked before the cast
fn round_f64(x: f64) -> Result<i64, ModbusError> {
    const LIMIT: f64 = 4_503_599_627_370_496.0; // 2^52
    if !x.is_finite() {
        return Err(ModbusError::NotFinite);
    }
    if !(-LIMIT..LIMIT).contains(&x) {
        return Err(ModbusError::OutOfRange);
    }
    let whole = x as i64; // truncates toward zero
    let frac = x - whole as f64;
    Ok(if frac >= 0.5 {
        whole + 1
    } else if frac <= -0.5 {
        whole - 1
    } else {
        whole
    })
}

/// `v × mul / div` rounded to nearest, ties away from zero.
fn scale_int(v: i64, scale: Scale) -> Result<i64, ModbusError> {
    if scale.div <= 0 {
        return Err(ModbusError::OutOfRange);
    }
    let num = i128::from(v) * i128::from(scale.mul);
    let div = i128::from(scale.div);
    let q = (num.abs() + div / 2) / div;
    let q = if num < 0 { -q } else { q };
    i64::try_from(q).map_err(|_| ModbusError::OutOfRange)
}

impl Register {
    /// Registers to read.
    pub const fn count(&self) -> u16 {
        self.encoding.registers()
    }

    /// Decodes `regs` (exactly [`Register::count`] of them) to the integer unit of
    /// the quantity, refusing non-finite floats and negative energy or voltage.
    pub fn decode(&self, regs: &[u16]) -> Result<i64, ModbusError> {
        let expected = usize::from(self.count());
        if regs.len() != expected {
            return Err(ModbusError::WrongCount {
                expected,
                got: regs.len(),
            });
        }
        let word = |i: usize| regs.get(i).copied().unwrap_or(0);
        let pair = (u32::from(word(0)) << 16) | u32::from(word(1));
        let value = match self.encoding {
            Encoding::F32Abcd => {
                let f = f64::from(f32_abcd(word(0), word(1)));
                if !f.is_finite() {
                    return Err(ModbusError::NotFinite);
                }
                if scale_is_bad(self.scale) {
                    return Err(ModbusError::OutOfRange);
                }
                round_f64(f * self.scale.mul as f64 / self.scale.div as f64)?
            }
            Encoding::U16 => scale_int(i64::from(word(0)), self.scale)?,
            Encoding::I16 => scale_int(i64::from(word(0) as i16), self.scale)?,
            Encoding::U32Abcd => scale_int(i64::from(pair), self.scale)?,
            Encoding::I32Abcd => scale_int(i64::from(pair as i32), self.scale)?,
        };
        let signed_ok = matches!(self.quantity, Quantity::ActivePower);
        if value < 0 && !signed_ok {
            return Err(ModbusError::Negative);
        }
        Ok(value)
    }
}

fn scale_is_bad(scale: Scale) -> bool {
    scale.div <= 0
}

/// A float32 kWh reading as Wh: rounded to the nearest Wh; NaN, infinities and
/// negative values are refused.
pub fn kwh_f32_to_wh(kwh: f32) -> Result<Wh, ModbusError> {
    let f = f64::from(kwh);
    if !f.is_finite() {
        return Err(ModbusError::NotFinite);
    }
    if f < 0.0 {
        return Err(ModbusError::Negative);
    }
    round_f64(f * 1000.0).map(Wh)
}

impl MeterModel {
    /// Total import active energy from its registers.
    pub fn energy_wh(&self, regs: &[u16]) -> Result<Wh, ModbusError> {
        self.import_energy.decode(regs).map(Wh)
    }

    /// Active power from its registers.
    pub fn power_w(&self, regs: &[u16]) -> Result<W, ModbusError> {
        self.active_power.decode(regs).map(W)
    }

    /// Voltage (phase 1) from its registers, decivolts.
    pub fn voltage_dv(&self, regs: &[u16]) -> Result<u32, ModbusError> {
        self.voltage
            .decode(regs)
            .and_then(|v| u32::try_from(v).map_err(|_| ModbusError::OutOfRange))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(f: f32) -> [u16; 2] {
        let [a, b, c, d] = f.to_bits().to_be_bytes();
        [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])]
    }

    #[test]
    fn float_energy_rounds_to_the_wh() {
        let table: [(f32, Result<Wh, ModbusError>); 8] = [
            (1234.5, Ok(Wh(1_234_500))),
            (0.0005, Ok(Wh(1))), // f32 0.0005 is 0.000500000024: 0.5 Wh and a bit
            (0.00049, Ok(Wh(0))),
            (12_345.678, Ok(Wh(12_345_678))),
            (-0.0, Ok(Wh(0))),
            (-1.0, Err(ModbusError::Negative)),
            (f32::NAN, Err(ModbusError::NotFinite)),
            (f32::INFINITY, Err(ModbusError::NotFinite)),
        ];
        for (kwh, expected) in table {
            assert_eq!(kwh_f32_to_wh(kwh), expected, "{kwh}");
            assert_eq!(SDM120.energy_wh(&regs(kwh)), expected, "{kwh}");
        }
    }

    #[test]
    fn rounding_is_exact_at_the_edges() {
        assert_eq!(round_f64(0.499_999_999_999_999_94), Ok(0));
        assert_eq!(round_f64(2.5), Ok(3));
        assert_eq!(round_f64(-2.5), Ok(-3));
        assert_eq!(round_f64(-2.4), Ok(-2));
        assert_eq!(round_f64(1e300), Err(ModbusError::OutOfRange));
        assert_eq!(scale_int(25, Scale { mul: 1, div: 10 }), Ok(3));
        assert_eq!(scale_int(-25, Scale { mul: 1, div: 10 }), Ok(-3));
        assert_eq!(
            scale_int(1, Scale { mul: 1, div: 0 }),
            Err(ModbusError::OutOfRange)
        );
    }

    #[test]
    fn integer_encodings() {
        let u32_centi_kwh = Register {
            address: 0,
            encoding: Encoding::U32Abcd,
            scale: Scale::times(10),
            quantity: Quantity::ImportEnergy,
        };
        assert_eq!(u32_centi_kwh.decode(&[0x0001, 0x0002]), Ok(655_380));
        let i16_dw = Register {
            address: 0,
            encoding: Encoding::I16,
            scale: Scale { mul: 1, div: 10 },
            quantity: Quantity::ActivePower,
        };
        assert_eq!(i16_dw.decode(&[0xFFF1]), Ok(-2)); // -15 dW = -1.5 W -> -2
        let i32_w = Register {
            encoding: Encoding::I32Abcd,
            scale: Scale::times(1),
            ..i16_dw
        };
        assert_eq!(i32_w.decode(&[0xFFFF, 0xFFFE]), Ok(-2));
        let u16_dv = Register {
            address: 0,
            encoding: Encoding::U16,
            scale: Scale::times(1),
            quantity: Quantity::Voltage,
        };
        assert_eq!(u16_dv.decode(&[2302]), Ok(2302));
        assert_eq!(
            u16_dv.decode(&[1, 2]),
            Err(ModbusError::WrongCount {
                expected: 1,
                got: 2
            })
        );
        let i16_energy = Register {
            encoding: Encoding::I16,
            ..u32_centi_kwh
        };
        assert_eq!(i16_energy.decode(&[0xFFFF]), Err(ModbusError::Negative));
    }

    #[test]
    fn model_quantities() {
        assert_eq!(DDSU666.power_w(&regs(-1.2345)), Ok(W(-1235))); // f32 -1.2345 is -1.23450005 kW
        assert_eq!(DDSU666.power_w(&regs(2.2)), Ok(W(2200)));
        assert_eq!(SDM630.power_w(&regs(1530.4)), Ok(W(1530)));
        assert_eq!(SDM120.voltage_dv(&[0x4366, 0x3334]), Ok(2302));
        assert_eq!(SDM120.voltage_dv(&regs(-1.0)), Err(ModbusError::Negative));
    }
}
