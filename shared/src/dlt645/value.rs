//! Typed values by data identifier: which format a DI uses (`Format::of`) and a
//! `Value` enum that decodes and encodes it, for masters and the meter simulator.

use heapless::Vec;

use crate::units::Wh;

use super::address::Address;
use super::data::{
    address_bytes, address_value, current_bytes, current_ma, energy_bytes, energy_wh,
    frequency_bytes, frequency_chz, power_dw, power_dw_bytes, signed_energy_bytes,
    signed_energy_wh, voltage_bytes, voltage_dv, DataError,
};
use super::datetime::{MeterDate, MeterTime};
use super::di::Di;

/// The value format of a single (non-block) DI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `XXXXXX.XX` kWh, unsigned, 4 bytes.
    Energy,
    /// `XXXXXX.XX` kWh, sign-magnitude, 4 bytes (combined energies).
    SignedEnergy,
    /// `XX.XXXX` kW, sign-magnitude, 3 bytes.
    Power,
    /// `XXX.X` V, 2 bytes.
    Voltage,
    /// `XXX.XXX` A, sign-magnitude, 3 bytes.
    Current,
    /// `XX.XX` Hz, 2 bytes.
    Frequency,
    /// `YYMMDDWW`, 4 bytes.
    Date,
    /// `hhmmss`, 3 bytes.
    Time,
    /// 12 BCD digits, 6 bytes.
    Address,
}

impl Format {
    /// The format of `di`, for the identifiers this crate knows; blocks (`FF`) are `None`.
    pub fn of(di: Di) -> Option<Self> {
        let [di3, di2, di1, di0] = di.0.to_be_bytes();
        match (di3, di2, di1, di0) {
            (0x00, _, 0xFF, _) | (0x00, _, _, 0xFF) => None,
            (0x00, 0x00 | 0x03 | 0x04, 0x00..=0x3F, 0x00..=0x0C) => Some(Self::SignedEnergy),
            (0x00, 0x01 | 0x02 | 0x05..=0x0A, 0x00..=0x3F, 0x00..=0x0C) => Some(Self::Energy),
            (0x02, 0x01, 0x01..=0x03, 0x00) => Some(Self::Voltage),
            (0x02, 0x02, 0x01..=0x03, 0x00) => Some(Self::Current),
            (0x02, 0x03, 0x00..=0x03, 0x00) => Some(Self::Power),
            (0x02, 0x80, 0x00, 0x02) => Some(Self::Frequency),
            (0x04, 0x00, 0x01, 0x01) => Some(Self::Date),
            (0x04, 0x00, 0x01, 0x02) => Some(Self::Time),
            (0x04, 0x00, 0x04, 0x01 | 0x02) => Some(Self::Address),
            _ => None,
        }
    }

    /// Value bytes in this format.
    pub const fn value_len(self) -> usize {
        match self {
            Self::Energy | Self::SignedEnergy | Self::Date => 4,
            Self::Power | Self::Current | Self::Time => 3,
            Self::Voltage | Self::Frequency => 2,
            Self::Address => 6,
        }
    }
}

/// A decoded value in integer units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// Energy, Wh (multiple of 10).
    Energy(Wh),
    /// Active power, 0.1 W (exact; see [`super::data::power_w`] for whole W).
    PowerDw(i32),
    /// Voltage, decivolts.
    VoltageDv(u32),
    /// Current, milliamps.
    CurrentMa(i32),
    /// Frequency, centihertz.
    FrequencyChz(u32),
    /// Date and weekday.
    Date(MeterDate),
    /// Time of day.
    Time(MeterTime),
    /// A 12-digit address or number.
    Address(Address),
}

/// Value bytes of any format (at most 6).
pub type ValueBytes = Vec<u8, 6>;

impl Value {
    /// Decodes `bytes` in `format`.
    pub fn decode(format: Format, bytes: &[u8]) -> Result<Self, DataError> {
        Ok(match format {
            Format::Energy => Self::Energy(energy_wh(bytes)?),
            Format::SignedEnergy => Self::Energy(signed_energy_wh(bytes)?),
            Format::Power => Self::PowerDw(power_dw(bytes)?),
            Format::Voltage => Self::VoltageDv(voltage_dv(bytes)?),
            Format::Current => Self::CurrentMa(current_ma(bytes)?),
            Format::Frequency => Self::FrequencyChz(frequency_chz(bytes)?),
            Format::Date => Self::Date(MeterDate::decode(bytes)?),
            Format::Time => Self::Time(MeterTime::decode(bytes)?),
            Format::Address => Self::Address(address_value(bytes)?),
        })
    }

    /// Encodes in `format`; a value of another kind is [`DataError::OutOfRange`].
    /// Energy is floored to 10 Wh (the register's 0.01 kWh step).
    pub fn encode(&self, format: Format) -> Result<ValueBytes, DataError> {
        fn bytes(b: &[u8]) -> ValueBytes {
            // Every format is at most 6 bytes.
            Vec::from_slice(b).unwrap_or_default()
        }
        Ok(match (format, self) {
            (Format::Energy, Self::Energy(e)) => bytes(&energy_bytes(*e)?),
            (Format::SignedEnergy, Self::Energy(e)) => bytes(&signed_energy_bytes(*e)?),
            (Format::Power, Self::PowerDw(p)) => bytes(&power_dw_bytes(*p)?),
            (Format::Voltage, Self::VoltageDv(v)) => bytes(&voltage_bytes(*v)?),
            (Format::Current, Self::CurrentMa(i)) => bytes(&current_bytes(*i)?),
            (Format::Frequency, Self::FrequencyChz(f)) => bytes(&frequency_bytes(*f)?),
            (Format::Date, Self::Date(d)) => bytes(&d.encode()?),
            (Format::Time, Self::Time(t)) => bytes(&t.encode()?),
            (Format::Address, Self::Address(a)) => bytes(&address_bytes(*a)?),
            _ => return Err(DataError::OutOfRange),
        })
    }
}

/// Decodes the value bytes of a reply for `di`, if the DI's format is known.
pub fn decode_value(di: Di, bytes: &[u8]) -> Option<Result<Value, DataError>> {
    Format::of(di).map(|f| Value::decode(f, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlt645::di;

    #[test]
    fn formats_by_di() {
        let table = [
            (di::COMBINED_ACTIVE, Some(Format::SignedEnergy)),
            (di::FORWARD_ACTIVE_TOTAL, Some(Format::Energy)),
            (di::FORWARD_ACTIVE_T4, Some(Format::Energy)),
            (di::REVERSE_ACTIVE_TOTAL, Some(Format::Energy)),
            (di::FORWARD_ACTIVE_BLOCK, None),
            (di::VOLTAGE_C, Some(Format::Voltage)),
            (di::VOLTAGE_BLOCK, None),
            (di::CURRENT_A, Some(Format::Current)),
            (di::ACTIVE_POWER_TOTAL, Some(Format::Power)),
            (di::FREQUENCY, Some(Format::Frequency)),
            (di::DATE, Some(Format::Date)),
            (di::TIME, Some(Format::Time)),
            (di::ADDRESS, Some(Format::Address)),
            (di::METER_NUMBER, Some(Format::Address)),
            (Di(0x0301_0000), None),
        ];
        for (d, f) in table {
            assert_eq!(Format::of(d), f, "{d}");
        }
    }

    #[test]
    fn values_round_trip() {
        let table = [
            (Format::Energy, Value::Energy(Wh(123_456_780))),
            (Format::SignedEnergy, Value::Energy(Wh(-260))),
            (Format::Power, Value::PowerDw(-12_345)),
            (Format::Voltage, Value::VoltageDv(2394)),
            (Format::Current, Value::CurrentMa(-1234)),
            (Format::Frequency, Value::FrequencyChz(5003)),
            (
                Format::Date,
                Value::Date(MeterDate {
                    year: 2026,
                    month: 5,
                    day: 17,
                    weekday: 0,
                }),
            ),
            (
                Format::Time,
                Value::Time(MeterTime {
                    hour: 12,
                    minute: 30,
                    second: 0,
                }),
            ),
            (
                Format::Address,
                Value::Address("123456781012".parse().unwrap()),
            ),
        ];
        for (format, value) in table {
            let bytes = value.encode(format).unwrap();
            assert_eq!(bytes.len(), format.value_len());
            assert_eq!(Value::decode(format, &bytes), Ok(value));
        }
        assert_eq!(
            Value::VoltageDv(1).encode(Format::Energy),
            Err(DataError::OutOfRange)
        );
        assert_eq!(
            decode_value(di::VOLTAGE_A, &[0x01, 0x10]),
            Some(Ok(Value::VoltageDv(1001)))
        );
        assert_eq!(decode_value(di::VOLTAGE_BLOCK, &[0x01, 0x10]), None);
    }
}
