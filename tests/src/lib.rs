//! Test support for Qingnuan: meter simulators, the fleet model, a Mosquitto
//! launcher and process helpers, shared by the cross-process tests and the demo.

pub mod agent_proc;
pub mod broker;
pub mod dlt645_sim;
pub mod fleet;
pub mod modbus_sim;
pub mod village;
