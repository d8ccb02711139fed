//! The village's meters on the wire: one DL/T 645 TCP line per gateway whose registers
//! are taken, at every request, from the fleet model at the village clock's simulated
//! instant, with faults (a silent meter, a meter clock off) switched on by the test.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qingnuan_shared::calendar::Night;
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::dlt645::{di, parse_request, Address, FrameReader, Request};
use qingnuan_shared::UnixTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::skew::Skews;
use crate::dlt645_sim::{Dlt645Sim, SimMeter};
use crate::fleet::{Fleet, SimHousehold};

/// What the village's meters show, as a pure function of the simulated instant.
///
/// Why a quiet margin: under an accelerated clock one real millisecond of process
/// start-up or scheduling is seconds of simulated time, so a boundary read lands
/// seconds "late" and a register that moves meanwhile would blur the boundary by
/// watts × seconds. Around each local 00:00, 08:00 and 20:00 the register therefore
/// holds its value at that instant for `quiet_s` on either side (the energy of the
/// margin shows up at its edges); the meter's own totals stay exact, so a night's
/// truth is still `register(end) - register(start)` and the fleet's `true_night_wh`
/// within the 10 Wh resolution.
#[derive(Debug, Clone)]
pub struct MeterModel {
    /// The fleet the registers follow.
    pub fleet: Arc<Fleet>,
    /// Half-width of the quiet margin around each boundary, simulated seconds.
    pub quiet_s: i64,
}

impl MeterModel {
    /// The instant whose model value the meter shows at `t`: the boundary itself
    /// inside a quiet margin, `t` elsewhere.
    pub fn shown_instant(&self, t: UnixTime) -> UnixTime {
        let off = i64::from(self.fleet.calendar.policy().utc_offset_s);
        let day0 = t - (t + off).rem_euclid(86_400);
        [0, 8 * 3600, 20 * 3600, 24 * 3600]
            .iter()
            .map(|h| day0 + h)
            .find(|b| (t - b).abs() <= self.quiet_s)
            .unwrap_or(t)
    }

    /// Forward active total shown at `t`, Wh (10 Wh steps).
    pub fn register_wh(&self, hh: &SimHousehold, t: UnixTime) -> i64 {
        hh.register_wh(self.shown_instant(t))
    }

    /// Valley (tariff 4) register shown at `t`, Wh.
    pub fn valley_wh(&self, hh: &SimHousehold, t: UnixTime) -> i64 {
        hh.valley_register_wh(&self.fleet.calendar, self.shown_instant(t))
    }

    /// What the meter's total register says `night` drew (clipped to the season), Wh:
    /// the figure a boundary read at each end must reproduce exactly.
    pub fn register_night_wh(&self, hh: &SimHousehold, night: Night) -> i64 {
        self.fleet.calendar.night_span(night).map_or(0, |(a, b)| {
            self.register_wh(hh, b) - self.register_wh(hh, a)
        })
    }
}

/// Faults of one meter, simulated UTC seconds.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// `[from, to)` intervals in which the meter does not answer.
    silent: Vec<(UnixTime, UnixTime)>,
    /// The meter's clock minus true time, seconds.
    clock_shift_s: i64,
    /// `[from, to)` intervals in which each reply waits this long (real time).
    slow: Vec<(UnixTime, UnixTime, Duration)>,
}

/// Shared state of every line: faults and what the meters actually gave.
#[derive(Debug, Default)]
pub struct MeterBoard {
    faults: Mutex<HashMap<String, Faults>>,
    /// Per meter, the instants (its gateway's clock) of every total-register reply given.
    given: Mutex<BTreeMap<String, Vec<UnixTime>>>,
}

impl MeterBoard {
    /// Silences `meter` for `[from, to)` (simulated UTC seconds).
    pub fn silence(&self, meter: &str, from: UnixTime, to: UnixTime) {
        if let Ok(mut f) = self.faults.lock() {
            f.entry(meter.to_owned())
                .or_default()
                .silent
                .push((from, to));
        }
    }

    /// Sets `meter`'s clock `shift_s` seconds ahead of true time (negative: behind).
    pub fn shift_clock(&self, meter: &str, shift_s: i64) {
        if let Ok(mut f) = self.faults.lock() {
            f.entry(meter.to_owned()).or_default().clock_shift_s = shift_s;
        }
    }

    /// Makes `meter` wait `delay` (real time) before each reply in `[from, to)`.
    pub fn slow(&self, meter: &str, from: UnixTime, to: UnixTime, delay: Duration) {
        if let Ok(mut f) = self.faults.lock() {
            f.entry(meter.to_owned())
                .or_default()
                .slow
                .push((from, to, delay));
        }
    }

    /// Simulated instants at which `meter` answered a total-register read.
    pub fn given(&self, meter: &str) -> Vec<UnixTime> {
        self.given
            .lock()
            .ok()
            .and_then(|g| g.get(meter).cloned())
            .unwrap_or_default()
    }

    /// (silent, clock shift s, reply delay) of `meter` at `t`.
    fn state(&self, meter: &str, t: UnixTime) -> (bool, i64, Duration) {
        let Ok(f) = self.faults.lock() else {
            return (false, 0, Duration::ZERO);
        };
        f.get(meter).map_or((false, 0, Duration::ZERO), |m| {
            let silent = m.silent.iter().any(|&(a, b)| a <= t && t < b);
            let delay = m
                .slow
                .iter()
                .filter(|&&(a, b, _)| a <= t && t < b)
                .map(|&(_, _, d)| d)
                .max()
                .unwrap_or(Duration::ZERO);
            (silent, m.clock_shift_s, delay)
        })
    }

    fn record(&self, meter: &str, t: UnixTime) {
        if let Ok(mut g) = self.given.lock() {
            g.entry(meter.to_owned()).or_default().push(t);
        }
    }
}

/// One gateway's meters served on a loopback TCP port; stops on drop.
#[derive(Debug)]
pub struct MeterLine {
    /// The loopback port the line listens on.
    pub port: u16,
    /// Meter addresses on this line, in registry order.
    pub meters: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MeterLine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the households of `gw` (DL/T 645 over TCP, no reply delay: at a speed-up of
/// thousands a real delay would be minutes of simulated time).
/// The meters live on the gateway's own clock (`skews`, gateway index `gw_index`), as
/// real meters and their gateway share one physical time.
pub async fn serve_line(
    model: Arc<MeterModel>,
    board: Arc<MeterBoard>,
    clock: SharedClock,
    skews: Skews,
    gw_index: usize,
    gw: &str,
) -> anyhow::Result<MeterLine> {
    let households: Vec<SimHousehold> = model.fleet.on_gateway(gw).cloned().collect();
    let start = clock.now();
    let init: Vec<(String, SimMeter)> = households
        .iter()
        .map(|h| {
            (
                h.meter.clone(),
                SimMeter::new(model.register_wh(h, start), Some(0), 0),
            )
        })
        .collect();
    let refs: Vec<(&str, SimMeter)> = init.iter().map(|(a, m)| (a.as_str(), m.clone())).collect();
    let sim = Dlt645Sim::new(&refs)?.with_delay(Duration::ZERO);
    let mut by_addr = Vec::new();
    for h in &households {
        let a: Address = h
            .meter
            .parse()
            .map_err(|_| anyhow::anyhow!("bad meter address {}", h.meter))?;
        by_addr.push((a, h.clone()));
    }
    let line = Arc::new(Line {
        model,
        board,
        clock,
        skews,
        gw_index,
        sim,
        by_addr,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.spawn(line.clone().serve(s));
        }
    });
    Ok(MeterLine {
        port,
        meters: households.iter().map(|h| h.meter.clone()).collect(),
        task,
    })
}

struct Line {
    model: Arc<MeterModel>,
    board: Arc<MeterBoard>,
    clock: SharedClock,
    skews: Skews,
    gw_index: usize,
    sim: Dlt645Sim,
    by_addr: Vec<(Address, SimHousehold)>,
}

impl Line {
    async fn serve(self: Arc<Self>, mut s: tokio::net::TcpStream) {
        let mut reader: FrameReader = FrameReader::new();
        let mut buf = [0u8; 256];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut frames = Vec::new();
            reader.push(buf.get(..n).unwrap_or(&[]), |f| frames.extend(f.ok()));
            for f in frames {
                let mut delay = Duration::ZERO;
                if let Ok(Request::ReadData { address, di: want }) = parse_request(&f) {
                    delay = self.refresh(&address, want == di::FORWARD_ACTIVE_TOTAL);
                }
                if let Some(reply) = self.sim.respond(&f) {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Sets the addressed meter's registers to the model's values now; returns how long
    /// the reply is to wait.
    fn refresh(&self, address: &Address, total: bool) -> Duration {
        let Some((_, h)) = self.by_addr.iter().find(|(a, _)| address.matches(a)) else {
            return Duration::ZERO;
        };
        let t = self.clock.now() - self.skews.offset(self.gw_index);
        let (silent, shift, delay) = self.board.state(&h.meter, t);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let (e, v, p) = (
            self.model.register_wh(h, t),
            self.model.valley_wh(h, t),
            h.power_w(self.model.shown_instant(t)),
        );
        self.sim.update(&h.meter, |m| {
            m.e_wh = e;
            m.e_valley_wh = Some(v);
            m.p_w = p;
            m.silent = silent;
            m.clock_offset_s = t - wall + shift;
        });
        if total && !silent {
            self.board.record(&h.meter, t);
        }
        delay
    }
}
