//! A DL/T 645-2007 meter simulator that answers like real meters: FE preambles,
//! a response delay, silence on a wrong address, abnormal replies (D1, ERR=02) for
//! identifiers it does not have, read-address on a point-to-point line. Served on
//! TCP (a serial server) or on a real PTY pair made by socat.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qingnuan_shared::dlt645::{
    di, energy_bytes, parse_request, power_bytes, Address, ErrorBits, Frame, FrameReader, Function,
    MeterDate, MeterTime, Preamble, Request,
};
use qingnuan_shared::units::{Wh, W};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One simulated meter's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMeter {
    /// Forward active total, Wh (the register holds 10 Wh steps; keep it a multiple of 10).
    pub e_wh: i64,
    /// Tariff 4 (valley), Wh; `None`: the meter answers "no data" for it.
    pub e_valley_wh: Option<i64>,
    /// Active power, W.
    pub p_w: i64,
    /// Added to `e_wh` after every read of the total, Wh.
    pub step_wh: i64,
    /// The meter's clock minus the wall clock, seconds.
    pub clock_offset_s: i64,
    /// A dead meter: never answers.
    pub silent: bool,
}

impl SimMeter {
    /// A meter with these registers and no drift.
    pub fn new(e_wh: i64, e_valley_wh: Option<i64>, p_w: i64) -> Self {
        Self {
            e_wh,
            e_valley_wh,
            p_w,
            step_wh: 0,
            clock_offset_s: 0,
            silent: false,
        }
    }
}

/// A set of meters on one line, shared by every connection that serves them.
#[derive(Debug, Clone)]
pub struct Dlt645Sim {
    meters: Arc<Mutex<BTreeMap<[u8; 6], SimMeter>>>,
    /// FE bytes before each reply (0..=4).
    preamble: u8,
    /// Delay before each reply.
    delay: Duration,
    reads: Arc<AtomicU64>,
}

/// UTC offset of the simulated meters' clocks (Beijing).
const UTC_OFFSET_S: i64 = 8 * 3600;

/// (year, month, day) of days since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 { y + 1 } else { y },
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

impl Dlt645Sim {
    /// Meters by 12-digit address; replies with 4×FE and a 30 ms delay.
    pub fn new(meters: &[(&str, SimMeter)]) -> anyhow::Result<Self> {
        let mut map = BTreeMap::new();
        for (a, m) in meters {
            let addr: Address = a.parse().map_err(|_| anyhow::anyhow!("bad address {a}"))?;
            map.insert(addr.0, m.clone());
        }
        Ok(Self {
            meters: Arc::new(Mutex::new(map)),
            preamble: 4,
            delay: Duration::from_millis(30),
            reads: Arc::default(),
        })
    }

    /// FE bytes before each reply (vendors send 0 to 4).
    pub fn with_preamble(mut self, n: u8) -> Self {
        self.preamble = n.min(4);
        self
    }

    /// Delay before each reply (meters take 20..500 ms).
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Changes a meter's registers.
    pub fn update(&self, addr: &str, f: impl FnOnce(&mut SimMeter)) {
        let Ok(a) = addr.parse::<Address>() else {
            return;
        };
        if let Ok(mut m) = self.meters.lock() {
            if let Some(meter) = m.get_mut(&a.0) {
                f(meter);
            }
        }
    }

    /// A meter's registers now.
    pub fn get(&self, addr: &str) -> Option<SimMeter> {
        let a = addr.parse::<Address>().ok()?;
        self.meters.lock().ok()?.get(&a.0).cloned()
    }

    /// Read-data requests answered so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The wire reply to one request frame, or `None` for silence.
    pub fn respond(&self, frame: &Frame) -> Option<Vec<u8>> {
        let req = parse_request(frame).ok()?;
        let mut meters = self.meters.lock().ok()?;
        let reply = match req {
            Request::ReadData { address, di: want } => {
                let (&addr, m) = meters
                    .iter_mut()
                    .find(|(a, m)| address.matches(&Address(**a)) && !m.silent)?;
                let addr = Address(addr);
                self.reads.fetch_add(1, Ordering::Relaxed);
                let value: Option<Vec<u8>> = match want {
                    di::FORWARD_ACTIVE_TOTAL => {
                        let v = energy_bytes(Wh(m.e_wh)).ok().map(|b| b.to_vec());
                        m.e_wh += m.step_wh;
                        v
                    }
                    di::FORWARD_ACTIVE_T4 => m
                        .e_valley_wh
                        .and_then(|v| energy_bytes(Wh(v)).ok())
                        .map(|b| b.to_vec()),
                    di::ACTIVE_POWER_TOTAL => power_bytes(W(m.p_w)).ok().map(|b| b.to_vec()),
                    di::DATE | di::TIME => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64);
                        let local = now + m.clock_offset_s + UTC_OFFSET_S;
                        let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
                        let secs = local.rem_euclid(86_400);
                        if want == di::DATE {
                            let wd = u8::try_from((local.div_euclid(86_400) + 4).rem_euclid(7))
                                .unwrap_or(0);
                            MeterDate::new(u16::try_from(y).unwrap_or(2000), mo, d, wd)
                                .and_then(|x| x.encode())
                                .ok()
                                .map(|b| b.to_vec())
                        } else {
                            let h = u8::try_from(secs / 3600).unwrap_or(0);
                            let mi = u8::try_from(secs / 60 % 60).unwrap_or(0);
                            let s = u8::try_from(secs % 60).unwrap_or(0);
                            MeterTime::new(h, mi, s)
                                .and_then(|x| x.encode())
                                .ok()
                                .map(|b| b.to_vec())
                        }
                    }
                    _ => None,
                };
                match value {
                    Some(v) => Frame::data_reply(addr, want, &v, false).ok()?,
                    None => Frame::abnormal_reply(addr, Function::ReadData, ErrorBits::NO_DATA),
                }
            }
            Request::ReadAddress { .. } => {
                let live: Vec<_> = meters.iter().filter(|(_, m)| !m.silent).collect();
                match live.as_slice() {
                    [(a, _)] => Frame::address_reply(Address(**a)),
                    _ => return None, // several meters would collide; we stay silent
                }
            }
            Request::BroadcastTime { .. } => return None,
            Request::ReadFollowUp { address, .. } | Request::Other { address, .. } => {
                let (&addr, _) = meters
                    .iter()
                    .find(|(a, m)| address.matches(&Address(**a)) && !m.silent)?;
                Frame::abnormal_reply(Address(addr), frame.control.function(), ErrorBits::OTHER)
            }
        };
        Some(
            reply
                .encode(Preamble::new(self.preamble).unwrap_or(Preamble::FOUR))
                .to_vec(),
        )
    }

    /// Serves the meters on a loopback TCP port, like a serial server in transparent mode.
    pub async fn serve_tcp(&self) -> anyhow::Result<TcpSim> {
        self.serve_tcp_on(0).await
    }

    /// As [`Dlt645Sim::serve_tcp`] on a given port (0: any), e.g. to come back on the
    /// port of a simulator that was dropped, as a rebooted serial server would.
    pub async fn serve_tcp_on(&self, port: u16) -> anyhow::Result<TcpSim> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let sim = self.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let sim = sim.clone();
                conns.spawn(async move {
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
                            if let Some(reply) = sim.respond(&f) {
                                tokio::time::sleep(sim.delay).await;
                                if s.write_all(&reply).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(TcpSim { port, task })
    }

    /// Serves the meters on one end of a fresh socat PTY pair; the agent opens the other.
    pub fn serve_pty(&self) -> anyhow::Result<PtySim> {
        let pair = PtyPair::new()?;
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pair.meter_end())?;
        let sim = self.clone();
        std::thread::spawn(move || {
            let mut reader: FrameReader = FrameReader::new();
            let mut buf = [0u8; 256];
            loop {
                let n = match port.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut frames = Vec::new();
                reader.push(buf.get(..n).unwrap_or(&[]), |f| frames.extend(f.ok()));
                for f in frames {
                    if let Some(reply) = sim.respond(&f) {
                        std::thread::sleep(sim.delay);
                        if port.write_all(&reply).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(PtySim { pair })
    }
}

/// A TCP-served simulator; stops (and closes every connection) on drop.
#[derive(Debug)]
pub struct TcpSim {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TcpSim {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:{port}`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A PTY-served simulator; the agent opens [`PtySim::device`].
#[derive(Debug)]
pub struct PtySim {
    pair: PtyPair,
}

impl PtySim {
    /// The device path for the agent's `device =`.
    pub fn device(&self) -> PathBuf {
        self.pair.agent_end()
    }
}

/// Two connected pseudo-terminals made by `socat`, killed on drop.
#[derive(Debug)]
pub struct PtyPair {
    dir: tempfile::TempDir,
    child: Child,
}

impl PtyPair {
    /// Starts `socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B` and waits for both links.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("agent");
        let b = dir.path().join("meter");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut pair = PtyPair { dir, child };
        let end = Instant::now() + Duration::from_secs(5);
        while !(exists(&a) && exists(&b)) {
            if Instant::now() > end {
                pair.kill();
                anyhow::bail!("socat did not create the PTY pair");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pair)
    }

    /// The end the agent opens.
    pub fn agent_end(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// The end the simulated meters use.
    pub fn meter_end(&self) -> PathBuf {
        self.dir.path().join("meter")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exists(p: &Path) -> bool {
    std::fs::metadata(p).is_ok()
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::dlt645::{self, decode, energy_wh, parse_reply, ReplyError};

    fn ask(
        sim: &Dlt645Sim,
        addr: &str,
        want: qingnuan_shared::dlt645::Di,
    ) -> Option<Result<Vec<u8>, ReplyError>> {
        let a: Address = addr.parse().ok()?;
        let req = dlt645::read_data(a, want, Preamble::FOUR);
        let (f, _) = decode(&req).ok()?;
        let reply = sim.respond(&f)?;
        assert_eq!(&reply[..4], &[0xFE; 4]);
        let (rf, _) = decode(&reply).ok()?;
        Some(parse_reply(&rf, &a, want).map(|r| r.value.to_vec()))
    }

    #[test]
    fn answers_like_a_meter() {
        let sim =
            Dlt645Sim::new(&[("123456781012", SimMeter::new(1_234_560, None, 2150))]).unwrap();
        let v = ask(&sim, "123456781012", di::FORWARD_ACTIVE_TOTAL)
            .unwrap()
            .unwrap();
        assert_eq!(energy_wh(&v).unwrap(), Wh(1_234_560));
        // No valley register: abnormal reply with "no data".
        match ask(&sim, "123456781012", di::FORWARD_ACTIVE_T4).unwrap() {
            Err(ReplyError::Abnormal(bits)) => assert!(bits.contains(ErrorBits::NO_DATA)),
            other => panic!("{other:?}"),
        }
        // Wrong address: silence.
        assert!(ask(&sim, "999999999998", di::FORWARD_ACTIVE_TOTAL).is_none());
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
    }
}
