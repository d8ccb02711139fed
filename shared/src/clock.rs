//! Where "now" comes from: the wall clock in production, an accelerated clock in
//! tests, so a whole heating season runs in minutes with real processes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Name of the test-only environment variable that selects an accelerated clock:
/// `QINGNUAN_CLOCK="start=<UTC Unix seconds>,speed=<factor>"` ([`ScaledClock`]), or with
/// any of `fast`, `slow_within`, `hold_ms`, `epoch` added, a [`WarpedClock`].
pub const CLOCK_ENV: &str = "QINGNUAN_CLOCK";

/// A source of the current instant, and of how long to really wait for a future one.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, UTC Unix milliseconds (simulated under an accelerated clock).
    fn now_ms(&self) -> i64;

    /// Real time to sleep until the instant `t_ms` (UTC Unix ms) arrives; zero if past.
    fn real_until(&self, t_ms: i64) -> Duration;

    /// Now, UTC Unix seconds.
    fn now(&self) -> crate::UnixTime {
        self.now_ms().div_euclid(1000)
    }

    /// Real time that `sim` of simulated time takes.
    fn real_for(&self, sim: Duration) -> Duration {
        let ms = i64::try_from(sim.as_millis()).unwrap_or(i64::MAX);
        self.real_until(self.now_ms().saturating_add(ms))
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn real_until(&self, t_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(t_ms - self.now_ms()).unwrap_or(0))
    }
}

/// Simulated time that starts at `start_ms` when created and runs `speed` times
/// faster than the wall clock. Test-only: selected through [`CLOCK_ENV`].
#[derive(Debug, Clone)]
pub struct ScaledClock {
    start_ms: i64,
    speed: u32,
    origin: Instant,
}

impl ScaledClock {
    /// A clock reading `start_ms` (UTC Unix ms) now and running `speed` (≥ 1) times faster.
    pub fn new(start_ms: i64, speed: u32) -> Self {
        Self {
            start_ms,
            speed: speed.max(1),
            origin: Instant::now(),
        }
    }

    /// The speed-up factor.
    pub fn speed(&self) -> u32 {
        self.speed
    }

    /// Parses `start=<UTC Unix seconds>,speed=<factor>`.
    pub fn parse(spec: &str) -> Result<Self, ClockSpecError> {
        let mut start = None;
        let mut speed = 1u32;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or(ClockSpecError::Malformed)?;
            match k.trim() {
                "start" => {
                    start = Some(v.trim().parse::<i64>().map_err(|_| ClockSpecError::Start)?)
                }
                "speed" => speed = v.trim().parse::<u32>().map_err(|_| ClockSpecError::Speed)?,
                _ => return Err(ClockSpecError::UnknownKey),
            }
        }
        let start = start.ok_or(ClockSpecError::Start)?;
        Ok(Self::new(start.saturating_mul(1000), speed))
    }
}

/// Why a `QINGNUAN_CLOCK` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClockSpecError {
    /// Not `key=value` pairs.
    #[error("expected start=<unix seconds>,speed=<factor>")]
    Malformed,
    /// `start` missing or not an integer.
    #[error("start must be UTC Unix seconds")]
    Start,
    /// `speed` not a positive integer.
    #[error("speed must be a positive integer")]
    Speed,
    /// A key other than `start` and `speed` (and, for a [`WarpedClock`], `fast`,
    /// `slow_within`, `hold_ms`, `epoch`).
    #[error("unknown key (start, speed; warped: fast, slow_within, hold_ms, epoch)")]
    UnknownKey,
    /// `fast` not a positive integer.
    #[error("fast must be a positive integer")]
    Fast,
    /// `slow_within` not a non-negative integer (simulated seconds).
    #[error("slow_within must be simulated seconds, 0 or more")]
    SlowWithin,
    /// `hold_ms` not a non-negative integer (real milliseconds).
    #[error("hold_ms must be real milliseconds, 0 or more")]
    Hold,
    /// `epoch` not an integer (UTC Unix milliseconds of the wall clock).
    #[error("epoch must be wall-clock UTC Unix milliseconds")]
    Epoch,
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> i64 {
        let real = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms
            .saturating_add(real.saturating_mul(i64::from(self.speed)))
    }

    fn real_until(&self, t_ms: i64) -> Duration {
        let sim = u64::try_from(t_ms - self.now_ms()).unwrap_or(0);
        Duration::from_micros(sim.saturating_mul(1000) / u64::from(self.speed))
    }
}

/// Parses a [`CLOCK_ENV`] value: `start=…,speed=…` alone is a [`ScaledClock`]; with any
/// of `fast`, `slow_within`, `hold_ms`, `epoch` it is a [`WarpedClock`].
pub fn parse(spec: &str) -> Result<SharedClock, ClockSpecError> {
    let warped = spec.split(',').any(|p| {
        let k = p.split_once('=').map_or(p, |(k, _)| k).trim();
        WARP_KEYS.contains(&k)
    });
    if warped {
        Ok(Arc::new(WarpedClock::parse(spec)?))
    } else {
        Ok(Arc::new(ScaledClock::parse(spec)?))
    }
}

/// The wall clock, or the accelerated one when [`CLOCK_ENV`] is set (tests only).
pub fn from_env() -> Result<SharedClock, ClockSpecError> {
    match std::env::var(CLOCK_ENV) {
        Ok(spec) if !spec.trim().is_empty() => parse(&spec),
        _ => Ok(Arc::new(SystemClock)),
    }
}

mod warp;
pub use warp::WarpedClock;
use warp::WARP_KEYS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster_from_its_start() {
        let c = ScaledClock::parse("start=1700000000,speed=3600").unwrap();
        let t0 = c.now_ms();
        assert!((1_700_000_000_000..1_700_000_000_000 + 3_600_000).contains(&t0));
        // one simulated hour is one real second at 3600x
        let real = c.real_for(Duration::from_secs(3600));
        assert!(
            real <= Duration::from_secs(1) && real > Duration::from_millis(900),
            "{real:?}"
        );
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert_eq!(
            ScaledClock::parse("speed=2").unwrap_err(),
            ClockSpecError::Start
        );
        assert_eq!(
            ScaledClock::parse("start=1,speed=x").unwrap_err(),
            ClockSpecError::Speed
        );
        assert_eq!(
            ScaledClock::parse("start=1,foo=2").unwrap_err(),
            ClockSpecError::UnknownKey
        );
        // The warped keys belong to the warped clock only.
        assert_eq!(
            ScaledClock::parse("start=1,fast=2").unwrap_err(),
            ClockSpecError::UnknownKey
        );
        assert_eq!(parse("start=1,fast=x").unwrap_err(), ClockSpecError::Fast);
        assert_eq!(parse("start=1,epoch=x").unwrap_err(), ClockSpecError::Epoch);
        assert_eq!(
            parse("start=1,hold_ms=-1").unwrap_err(),
            ClockSpecError::Hold
        );
        assert_eq!(
            parse("start=1,slow_within=-1").unwrap_err(),
            ClockSpecError::SlowWithin
        );
        assert_eq!(
            parse("start=1,fast=2,foo=1").unwrap_err(),
            ClockSpecError::UnknownKey
        );
    }
}
