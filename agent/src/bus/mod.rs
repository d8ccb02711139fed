//! Meter buses: DL/T 645 over serial and TCP, Modbus RTU and TCP. Only this module
//! touches serial ports and meter sockets.

/// Modbus register maps the agent knows by name.
pub const MODBUS_MODELS: &[&str] = &["sdm120", "sdm630", "ddsu666"];

/// Whether `model` names a known Modbus register map.
pub fn modbus_model_known(model: &str) -> bool {
    MODBUS_MODELS.contains(&model)
}
