//! Meter buses: DL/T 645 over serial and TCP, Modbus RTU and TCP. Only this module
//! touches serial ports and meter sockets.
//!
//! Each bus runs in its own task and reads its meters one after another when asked
//! for a sweep; buses run in parallel, so one slow or dead bus never delays another's
//! reads (the sweep's batch waits for all of them).

pub mod dlt645;
pub mod link;
pub mod modbus;

use std::time::Duration;

use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::wire::Reading;
use tokio::sync::{mpsc, oneshot};

use crate::config::BusConfig;
use link::{Link, SerialSettings, Target};

/// Names of the Modbus register maps the agent knows (from `qingnuan_shared::modbus`).
pub fn modbus_model_names() -> Vec<&'static str> {
    qingnuan_shared::modbus::MODELS
        .iter()
        .map(|m| m.name)
        .collect()
}

/// Whether `model` names a known Modbus register map.
pub fn modbus_model_known(model: &str) -> bool {
    qingnuan_shared::modbus::model(model).is_some()
}

/// Where a configured bus goes.
pub fn target(cfg: &BusConfig) -> Target {
    match (&cfg.address, &cfg.device) {
        (Some(a), _) if cfg.kind.is_tcp() => Target::Tcp(a.clone()),
        (_, device) => Target::Serial(SerialSettings {
            device: device.clone().unwrap_or_default(),
            baud: cfg.baud,
            parity: cfg.parity,
            data_bits: cfg.data_bits,
            stop_bits: cfg.stop_bits,
        }),
    }
}

/// One bus of either protocol.
#[derive(Debug)]
pub enum Bus {
    /// DL/T 645-2007.
    Dlt645(dlt645::Dlt645Bus),
    /// Modbus RTU or TCP.
    Modbus(modbus::ModbusBus),
}

impl Bus {
    /// Builds the bus of a `[[bus]]` table.
    pub fn new(cfg: &BusConfig, utc_offset_s: i32, clock: SharedClock) -> Self {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let pause = Duration::from_millis(cfg.pause_ms);
        if cfg.kind.is_modbus() {
            Bus::Modbus(modbus::ModbusBus::new(
                target(cfg),
                &cfg.meters,
                timeout,
                cfg.retries,
                pause,
                clock,
            ))
        } else {
            let link = Link::new(target(cfg), timeout, Duration::from_millis(cfg.gap_ms));
            Bus::Dlt645(dlt645::Dlt645Bus::new(
                link,
                &cfg.meters,
                cfg.retries,
                pause,
                utc_offset_s,
                clock,
            ))
        }
    }

    /// Reads every meter once; `with_clock` also reads DL/T 645 meter clocks.
    pub async fn sweep(&mut self, with_clock: bool) -> Vec<Reading> {
        match self {
            Bus::Dlt645(b) => b.sweep(with_clock).await,
            Bus::Modbus(b) => b.sweep().await,
        }
    }
}

/// A request for one sweep of a bus.
#[derive(Debug)]
pub struct SweepRequest {
    /// Also read meter clocks.
    pub with_clock: bool,
    /// Where the readings go.
    pub reply: oneshot::Sender<Vec<Reading>>,
}

/// A handle to a bus task; dropping it ends the task after its current sweep.
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<SweepRequest>,
}

impl BusHandle {
    /// Spawns the task that owns `bus`.
    pub fn spawn(mut bus: Bus) -> Self {
        let (tx, mut rx) = mpsc::channel::<SweepRequest>(1);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let readings = bus.sweep(req.with_clock).await;
                let _ = req.reply.send(readings);
            }
        });
        Self { tx }
    }

    /// Starts a sweep; await the receiver for its readings.
    pub async fn sweep(&self, with_clock: bool) -> oneshot::Receiver<Vec<Reading>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(SweepRequest { with_clock, reply }).await;
        rx
    }
}

/// Sweeps all buses in parallel and returns their readings in bus order.
pub async fn sweep_all(buses: &[BusHandle], with_clock: bool) -> Vec<Reading> {
    let mut pending = Vec::with_capacity(buses.len());
    for b in buses {
        pending.push(b.sweep(with_clock).await);
    }
    let mut out = Vec::new();
    for rx in pending {
        if let Ok(r) = rx.await {
            out.extend(r);
        }
    }
    out
}
