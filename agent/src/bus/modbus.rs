//! Reading Modbus DIN-rail meters (RTU over RS-485 or TCP) with tokio-modbus, the
//! register maps coming from `qingnuan_shared::modbus` by model name.

use std::time::Duration;

use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::modbus::{self, MeterModel, ReadFunction, Register};
use qingnuan_shared::wire::Reading;
use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::{Slave, SlaveContext};

use super::dlt645::{err_reading, ReadFail, OFFLINE_AFTER};
use super::link::{open_serial, Target};
use crate::config::MeterSpec;

#[derive(Debug)]
struct Meter {
    spec: MeterSpec,
    model: &'static MeterModel,
    failed_sweeps: u32,
}

/// The meters of one Modbus bus and the (lazily opened) client context.
pub struct ModbusBus {
    target: Target,
    ctx: Option<Context>,
    meters: Vec<Meter>,
    timeout: Duration,
    retries: u32,
    pause: Duration,
    clock: SharedClock,
}

impl std::fmt::Debug for ModbusBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusBus")
            .field("target", &self.target)
            .field("meters", &self.meters.len())
            .finish()
    }
}

impl ModbusBus {
    /// A bus to `target`; meters whose model is unknown are left out (config checks that).
    pub fn new(
        target: Target,
        meters: &[MeterSpec],
        timeout: Duration,
        retries: u32,
        pause: Duration,
        clock: SharedClock,
    ) -> Self {
        let meters = meters
            .iter()
            .filter_map(|m| {
                Some(Meter {
                    spec: m.clone(),
                    model: modbus::model(&m.model)?,
                    failed_sweeps: 0,
                })
            })
            .collect();
        Self {
            target,
            ctx: None,
            meters,
            timeout,
            retries,
            pause,
            clock,
        }
    }

    async fn context(&mut self) -> Result<&mut Context, ReadFail> {
        if self.ctx.is_none() {
            let ctx = match &self.target {
                Target::Tcp(addr) => {
                    let sock = tokio::net::lookup_host(addr.as_str())
                        .await
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or(ReadFail::Link)?;
                    timeout(self.timeout.max(Duration::from_secs(2)), tokio_modbus::client::tcp::connect(sock))
                        .await
                        .map_err(|_| ReadFail::Link)?
                        .map_err(|e| {
                            tracing::warn!(target = %addr, error = %e, "cannot reach Modbus TCP server");
                            ReadFail::Link
                        })?
                }
                Target::Serial(s) => {
                    let port = open_serial(s).map_err(|e| {
                        tracing::warn!(device = %s.device.display(), error = %e, "cannot open serial port");
                        ReadFail::Link
                    })?;
                    tokio_modbus::client::rtu::attach(port)
                }
            };
            self.ctx = Some(ctx);
        }
        self.ctx.as_mut().ok_or(ReadFail::Link)
    }

    /// Reads every meter once, in order.
    pub async fn sweep(&mut self) -> Vec<Reading> {
        let mut out = Vec::with_capacity(self.meters.len());
        for i in 0..self.meters.len() {
            let Some(m) = self.meters.get(i) else {
                continue;
            };
            let (spec, model, offline) =
                (m.spec.clone(), m.model, m.failed_sweeps >= OFFLINE_AFTER);
            let attempts = if offline { 1 } else { 1 + self.retries };
            let energy = self
                .read_register(
                    spec.unit,
                    model.read_function,
                    &model.import_energy,
                    attempts,
                )
                .await;
            let ts = self.clock.now();
            let e_wh = match energy
                .and_then(|r| model.energy_wh(&r).map_err(|_| ReadFail::BadFrame))
            {
                Ok(e) => e.0,
                Err(fail) => {
                    if let Some(m) = self.meters.get_mut(i) {
                        m.failed_sweeps += 1;
                        if m.failed_sweeps == OFFLINE_AFTER {
                            tracing::warn!(meter = %spec.id, error = %fail.text(), "meter offline");
                        }
                    }
                    out.push(err_reading(&spec.id, ts, &fail));
                    continue;
                }
            };
            let p_w = match self
                .read_register(
                    spec.unit,
                    model.read_function,
                    &model.active_power,
                    attempts,
                )
                .await
            {
                Ok(r) => model.power_w(&r).ok().map(|p| p.0),
                Err(_) => None,
            };
            if let Some(m) = self.meters.get_mut(i) {
                m.failed_sweeps = 0;
            }
            out.push(Reading {
                meter: spec.id.clone(),
                ts,
                e_wh: Some(e_wh),
                e_valley_wh: None,
                p_w,
                meter_ts: None,
                err: None,
            });
        }
        out
    }

    async fn read_register(
        &mut self,
        unit: u8,
        f: ReadFunction,
        reg: &Register,
        attempts: u32,
    ) -> Result<Vec<u16>, ReadFail> {
        let mut last = ReadFail::Timeout;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.pause + Duration::from_millis(100 << attempt.min(5))).await;
            }
            let t = self.timeout;
            let ctx = match self.context().await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            ctx.set_slave(Slave(unit));
            let call = async {
                match f {
                    ReadFunction::Input => ctx.read_input_registers(reg.address, reg.count()).await,
                    ReadFunction::Holding => {
                        ctx.read_holding_registers(reg.address, reg.count()).await
                    }
                }
            };
            let result = timeout(t, call).await;
            tokio::time::sleep(self.pause).await;
            match result {
                Ok(Ok(Ok(regs))) => return Ok(regs),
                Ok(Ok(Err(code))) => return Err(ReadFail::Meter(u8::from(code))),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "modbus transport error; reconnecting");
                    self.ctx = None;
                    last = ReadFail::BadFrame;
                }
                Err(_) => {
                    // A late reply would be taken for the next request's: start afresh.
                    self.ctx = None;
                    last = ReadFail::Timeout;
                }
            }
        }
        Err(last)
    }
}
