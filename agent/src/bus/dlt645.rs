//! Reading DL/T 645-2007 meters on one link: forward active total, the valley
//! register (tariff 4) where the meter has one, active power, and now and then the
//! meter clock; retries with backoff and an offline state per meter.

use std::time::Duration;

use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::dlt645::{
    self, di, energy_wh, parse_reply, power_w, Address, Di, ErrorBits, MeterDate, MeterTime,
    Preamble, ReplyError,
};
use qingnuan_shared::units::MeterId;
use qingnuan_shared::wire::{ErrText, Reading};
use qingnuan_shared::UnixTime;

use super::link::{Link, LinkError};
use crate::config::MeterSpec;

/// Consecutive failed sweeps after which a meter counts as offline (one attempt per
/// sweep from then on, so a dead meter costs the bus one timeout, not several).
pub const OFFLINE_AFTER: u32 = 3;

/// Why one register could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFail {
    /// No reply in time.
    Timeout,
    /// Garbled reply, wrong DI, bad BCD.
    BadFrame,
    /// Abnormal reply with this ERR byte.
    Meter(u8),
    /// The link itself failed (serial server unreachable, device missing).
    Link,
}

impl ReadFail {
    /// The `err` text of a failed reading (CONTRACT.md): `timeout`, `bad_frame`,
    /// `meter_error:<ERR byte, 2 hex digits>`, `link_down`.
    pub fn text(&self) -> ErrText {
        let mut s = ErrText::new();
        let _ = match self {
            ReadFail::Timeout => s.push_str("timeout"),
            ReadFail::BadFrame => s.push_str("bad_frame"),
            ReadFail::Meter(code) => s.push_str(&format!("meter_error:{code:02x}")),
            ReadFail::Link => s.push_str("link_down"),
        };
        s
    }
}

#[derive(Debug)]
struct Meter {
    spec: MeterSpec,
    addr: Address,
    /// Cleared when the meter answers "no data" for tariff 4.
    has_valley: bool,
    failed_sweeps: u32,
}

/// The meters of one DL/T 645 bus and the link to them.
#[derive(Debug)]
pub struct Dlt645Bus {
    link: Link,
    meters: Vec<Meter>,
    retries: u32,
    pause: Duration,
    utc_offset_s: i32,
    clock: SharedClock,
}

impl Dlt645Bus {
    /// A bus over `link` with `meters` (ids are their 12-digit addresses).
    pub fn new(
        link: Link,
        meters: &[MeterSpec],
        retries: u32,
        pause: Duration,
        utc_offset_s: i32,
        clock: SharedClock,
    ) -> Self {
        let meters = meters
            .iter()
            .filter_map(|m| {
                let addr = m.id.as_str().parse::<Address>().ok()?;
                Some(Meter {
                    spec: m.clone(),
                    addr,
                    has_valley: true,
                    failed_sweeps: 0,
                })
            })
            .collect();
        Self {
            link,
            meters,
            retries,
            pause,
            utc_offset_s,
            clock,
        }
    }

    /// Reads every meter once, in order; one reading (value or `err`) per meter.
    pub async fn sweep(&mut self, with_clock: bool) -> Vec<Reading> {
        let mut out = Vec::with_capacity(self.meters.len());
        for i in 0..self.meters.len() {
            let Some(m) = self.meters.get(i) else {
                continue;
            };
            let (id, addr, has_valley, offline) = (
                m.spec.id.clone(),
                m.addr,
                m.has_valley,
                m.failed_sweeps >= OFFLINE_AFTER,
            );
            out.push(
                self.read_meter(i, id, addr, has_valley, offline, with_clock)
                    .await,
            );
        }
        out
    }

    async fn read_meter(
        &mut self,
        i: usize,
        id: MeterId,
        addr: Address,
        has_valley: bool,
        offline: bool,
        with_clock: bool,
    ) -> Reading {
        let attempts = if offline { 1 } else { 1 + self.retries };
        let total = self.read_di(addr, di::FORWARD_ACTIVE_TOTAL, attempts).await;
        let ts = self.clock.now();
        let e_wh = match total.and_then(|v| energy_wh(&v).map_err(|_| ReadFail::BadFrame)) {
            Ok(e) => e.0,
            Err(fail) => {
                if let Some(m) = self.meters.get_mut(i) {
                    m.failed_sweeps += 1;
                    if m.failed_sweeps == OFFLINE_AFTER {
                        tracing::warn!(meter = %id, error = %fail.text(), "meter offline");
                    }
                }
                return err_reading(&id, ts, &fail);
            }
        };
        let mut e_valley_wh = None;
        if has_valley {
            match self.read_di(addr, di::FORWARD_ACTIVE_T4, attempts).await {
                Ok(v) => e_valley_wh = energy_wh(&v).ok().map(|e| e.0),
                Err(ReadFail::Meter(code)) if ErrorBits(code).contains(ErrorBits::NO_DATA) => {
                    if let Some(m) = self.meters.get_mut(i) {
                        tracing::info!(meter = %m.spec.id, "meter has no valley register (tariff 4)");
                        m.has_valley = false;
                    }
                }
                Err(_) => {}
            }
        }
        let p_w = match self.read_di(addr, di::ACTIVE_POWER_TOTAL, attempts).await {
            Ok(v) => power_w(&v).ok().map(|p| p.0),
            Err(_) => None,
        };
        let mut meter_ts = None;
        if with_clock {
            let date = self
                .read_di(addr, di::DATE, attempts)
                .await
                .ok()
                .and_then(|v| MeterDate::decode(&v).ok());
            let time = self
                .read_di(addr, di::TIME, attempts)
                .await
                .ok()
                .and_then(|v| MeterTime::decode(&v).ok());
            if let (Some(d), Some(t)) = (date, time) {
                meter_ts = Some(local_to_unix(d, t, self.utc_offset_s));
            }
        }
        if let Some(m) = self.meters.get_mut(i) {
            if m.failed_sweeps >= OFFLINE_AFTER {
                tracing::info!(meter = %id, "meter back online");
            }
            m.failed_sweeps = 0;
        }
        Reading {
            meter: id,
            ts,
            e_wh: Some(e_wh),
            e_valley_wh,
            p_w,
            meter_ts,
            err: None,
        }
    }

    /// One register, up to `attempts` exchanges with a growing pause between them.
    async fn read_di(
        &mut self,
        addr: Address,
        di: Di,
        attempts: u32,
    ) -> Result<heapless::Vec<u8, 16>, ReadFail> {
        let request = dlt645::read_data(addr, di, Preamble::FOUR);
        let mut last = ReadFail::Timeout;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.pause + Duration::from_millis(100 << attempt.min(5))).await;
            }
            let result = self.link.exchange(&request, &addr).await;
            tokio::time::sleep(self.pause).await;
            let frame = match result {
                Ok(f) => f,
                Err(LinkError::Timeout) => {
                    last = ReadFail::Timeout;
                    continue;
                }
                Err(LinkError::BadFrame) => {
                    last = ReadFail::BadFrame;
                    continue;
                }
                Err(LinkError::Io(_)) => {
                    last = ReadFail::Link;
                    continue;
                }
            };
            return match parse_reply(&frame, &addr, di) {
                Ok(reply) => {
                    heapless::Vec::from_slice(reply.value).map_err(|()| ReadFail::BadFrame)
                }
                Err(ReplyError::Abnormal(bits)) => Err(ReadFail::Meter(bits.bits())),
                Err(_) => {
                    last = ReadFail::BadFrame;
                    continue;
                }
            };
        }
        Err(last)
    }
}

/// A failed reading.
pub fn err_reading(meter: &MeterId, ts: UnixTime, fail: &ReadFail) -> Reading {
    Reading {
        meter: meter.clone(),
        ts,
        e_wh: None,
        e_valley_wh: None,
        p_w: None,
        meter_ts: None,
        err: Some(fail.text()),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The meter's local date and time as UTC Unix seconds, given the local UTC offset.
pub fn local_to_unix(d: MeterDate, t: MeterTime, utc_offset_s: i32) -> UnixTime {
    let days = days_from_civil(i64::from(d.year), i64::from(d.month), i64::from(d.day));
    days * 86_400 + i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second)
        - i64::from(utc_offset_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_clock_to_unix() {
        // 2025-11-28 20:00:00 +08:00 = 2025-11-28T12:00:00Z = 1764331200
        let d = MeterDate {
            year: 2025,
            month: 11,
            day: 28,
            weekday: 5,
        };
        let t = MeterTime {
            hour: 20,
            minute: 0,
            second: 0,
        };
        assert_eq!(local_to_unix(d, t, 8 * 3600), 1_764_331_200);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn err_texts() {
        assert_eq!(ReadFail::Meter(2).text().as_str(), "meter_error:02");
        assert_eq!(ReadFail::Timeout.text().as_str(), "timeout");
        assert_eq!(ReadFail::BadFrame.text().as_str(), "bad_frame");
    }
}
