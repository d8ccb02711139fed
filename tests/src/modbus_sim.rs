//! A Modbus TCP meter simulator (tokio-modbus server): register banks per unit id,
//! filled from the shared register maps so a test sets Wh and W and the agent reads
//! them back through the model's floats.

use std::collections::HashMap;
use std::future;
use std::sync::{Arc, Mutex};

use qingnuan_shared::modbus::{MeterModel, Register};
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};

use crate::dlt645_sim::PtyPair;

/// Registers by (unit, address); input and holding reads see the same bank.
#[derive(Debug, Clone, Default)]
pub struct ModbusSim {
    regs: Arc<Mutex<HashMap<(u8, u16), u16>>>,
}

struct Service {
    regs: Arc<Mutex<HashMap<(u8, u16), u16>>>,
}

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let unit = req.slave;
        let read = |addr: u16, cnt: u16| -> Result<Vec<u16>, ExceptionCode> {
            let regs = self
                .regs
                .lock()
                .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
            if !regs.keys().any(|(u, _)| *u == unit) {
                return Err(ExceptionCode::GatewayTargetDevice);
            }
            (addr..addr.saturating_add(cnt))
                .map(|a| {
                    regs.get(&(unit, a))
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        let res = match req.request {
            Request::ReadInputRegisters(a, c) => {
                read(a, c).map(|v| Some(Response::ReadInputRegisters(v)))
            }
            Request::ReadHoldingRegisters(a, c) => {
                read(a, c).map(|v| Some(Response::ReadHoldingRegisters(v)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        future::ready(res)
    }
}

/// Float32 high word first (ABCD) of `value / scale` for a register.
fn encode(reg: &Register, value: i64) -> [u16; 2] {
    #[allow(clippy::cast_possible_truncation)]
    let f = (value as f64 * reg.scale.div as f64 / reg.scale.mul as f64) as f32;
    let bits = f.to_bits();
    [(bits >> 16) as u16, (bits & 0xFFFF) as u16]
}

impl ModbusSim {
    /// An empty simulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a meter of `model` at `unit`: import energy (Wh) and active power (W).
    pub fn set_meter(&self, unit: u8, model: &MeterModel, e_wh: i64, p_w: i64) {
        if let Ok(mut regs) = self.regs.lock() {
            for (reg, v) in [
                (&model.import_energy, e_wh),
                (&model.active_power, p_w),
                (&model.voltage, 2300),
            ] {
                let [hi, lo] = encode(reg, v);
                regs.insert((unit, reg.address), hi);
                regs.insert((unit, reg.address + 1), lo);
            }
        }
    }

    /// Serves on a loopback port until the returned handle drops.
    pub async fn serve_tcp(&self) -> anyhow::Result<ModbusTcpSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let regs = self.regs.clone();
        let server = Server::new(listener);
        let task = tokio::spawn(async move {
            let new_service = move |_addr| Ok(Some(Service { regs: regs.clone() }));
            let on_connected = |stream, addr| {
                let r = accept_tcp_connection(stream, addr, &new_service);
                async move { r }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        Ok(ModbusTcpSim { port, task })
    }
}

impl ModbusSim {
    /// Serves Modbus RTU on one end of a fresh socat PTY pair; the agent opens
    /// [`ModbusRtuSim::device`].
    pub fn serve_rtu(&self) -> anyhow::Result<ModbusRtuSim> {
        let pair = PtyPair::new()?;
        let server = tokio_modbus::server::rtu::Server::new_from_path(pair.meter_end(), 9600)?;
        let service = Service {
            regs: self.regs.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = server.serve_forever(service).await;
        });
        Ok(ModbusRtuSim { pair, task })
    }
}

/// A Modbus RTU simulator on a PTY; stops on drop.
#[derive(Debug)]
pub struct ModbusRtuSim {
    pair: PtyPair,
    task: tokio::task::JoinHandle<()>,
}

impl ModbusRtuSim {
    /// The device path for the agent's `device =`.
    pub fn device(&self) -> std::path::PathBuf {
        self.pair.agent_end()
    }
}

impl Drop for ModbusRtuSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A served Modbus simulator; stops on drop.
#[derive(Debug)]
pub struct ModbusTcpSim {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl ModbusTcpSim {
    /// `127.0.0.1:{port}`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ModbusTcpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}
