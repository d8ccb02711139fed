//! Register maps of the DIN-rail meters the agent reads over Modbus, as const
//! data (protocol-facts §7), and lookup by model name.

use super::{Encoding, Quantity, ReadFunction, Register, Scale};

/// The registers the agent reads from one meter model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MeterModel {
    /// Lower-case name used in configuration (`"sdm120"`).
    pub name: &'static str,
    /// Maker and model, for logs.
    pub description: &'static str,
    /// Default function code for reads.
    pub read_function: ReadFunction,
    /// Total import active energy, Wh.
    pub import_energy: Register,
    /// Active power (total for 3-phase), W.
    pub active_power: Register,
    /// Voltage (phase 1), decivolts.
    pub voltage: Register,
}

const fn f32_reg(address: u16, mul: i64, quantity: Quantity) -> Register {
    Register {
        address,
        encoding: Encoding::F32Abcd,
        scale: Scale::times(mul),
        quantity,
    }
}

/// Eastron SDM120-Modbus (1-phase): FC 04, float32; 30073 import kWh, 30013 power W, 30001 V.
pub const SDM120: MeterModel = MeterModel {
    name: "sdm120",
    description: "Eastron SDM120-Modbus",
    read_function: ReadFunction::Input,
    import_energy: f32_reg(0x0048, 1000, Quantity::ImportEnergy),
    active_power: f32_reg(0x000C, 1, Quantity::ActivePower),
    voltage: f32_reg(0x0000, 10, Quantity::Voltage),
};

/// Eastron SDM630 (3-phase): FC 04, float32; 30073 import kWh, 30053 total power W, 30001 L1 V.
pub const SDM630: MeterModel = MeterModel {
    name: "sdm630",
    description: "Eastron SDM630",
    read_function: ReadFunction::Input,
    import_energy: f32_reg(0x0048, 1000, Quantity::ImportEnergy),
    active_power: f32_reg(0x0034, 1, Quantity::ActivePower),
    voltage: f32_reg(0x0000, 10, Quantity::Voltage),
};

/// CHINT DDSU666 (1-phase): FC 03 per the CHINT manual (many units also answer
/// FC 04); float32; 0x4000 ImpEp kWh, 0x2004 power **kW** (×1000 → W), 0x2000 V.
pub const DDSU666: MeterModel = MeterModel {
    name: "ddsu666",
    description: "CHINT DDSU666",
    read_function: ReadFunction::Holding,
    import_energy: f32_reg(0x4000, 1000, Quantity::ImportEnergy),
    active_power: f32_reg(0x2004, 1000, Quantity::ActivePower),
    voltage: f32_reg(0x2000, 10, Quantity::Voltage),
};

/// Every mapped model.
pub const MODELS: [MeterModel; 3] = [SDM120, SDM630, DDSU666];

/// The model named `name` (case-insensitive: `"SDM120"`, `"ddsu666"`).
pub fn model(name: &str) -> Option<&'static MeterModel> {
    MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(
            model("SDM120").map(|m| m.import_energy.address),
            Some(0x0048)
        );
        assert_eq!(
            model("sdm630").map(|m| m.active_power.address),
            Some(0x0034)
        );
        assert_eq!(
            model("DdSu666").map(|m| m.read_function),
            Some(ReadFunction::Holding)
        );
        assert_eq!(model("sdm72"), None);
        assert_eq!(model(""), None);
        for m in &MODELS {
            assert_eq!(m.import_energy.count(), 2);
        }
    }
}
