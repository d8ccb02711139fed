//! Qingnuan gateway agent (being written).
pub mod bus;
pub mod config;
pub mod spool;
