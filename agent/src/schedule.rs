//! When to read: a sweep of every meter at each boundary instant of (off-peak window
//! ∩ season), every `interval_s` inside it (or around the clock with `always`), and a
//! status heartbeat every `heartbeat_s`. Time comes from a `Clock`, so a test runs a
//! night in seconds; each sweep's batch is spooled before the uplink hears of it.

use std::time::Duration;

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::UnixTime;
use tokio::sync::{mpsc, watch};

use crate::batch::Batcher;
use crate::bus::{sweep_all, BusHandle};
use crate::publish::{SharedSpool, Uplink};

/// The schedule's rules, pure: no clock, no I/O.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The tariff calendar.
    pub cal: Calendar,
    /// Seconds between sweeps inside the window (or always).
    pub interval_s: i64,
    /// Read around the clock.
    pub always: bool,
}

/// A sweep instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// UTC Unix seconds.
    pub t: UnixTime,
    /// Whether `t` is a boundary of (window ∩ season).
    pub boundary: bool,
}

impl Schedule {
    /// The first sweep instant strictly after `after`, if any within two years.
    ///
    /// Interval ticks are multiples of `interval_s` since the epoch (so 900 s gives
    /// :00, :15, :30, :45); between two boundaries membership of the window does not
    /// change, so the state at `after` decides whether ticks before the next boundary count.
    pub fn next_sweep(&self, after: UnixTime) -> Option<Due> {
        let interval = self.interval_s.max(1);
        let tick = (after.div_euclid(interval) + 1) * interval;
        let boundary = self.cal.next_boundary(after).map(|b| b.t);
        let tick_counts = self.always || self.cal.is_offpeak(after);
        match boundary {
            Some(b) if b <= tick || !tick_counts => Some(Due {
                t: b,
                boundary: true,
            }),
            _ if tick_counts => Some(Due {
                t: tick,
                boundary: false,
            }),
            _ => None,
        }
    }
}

/// The poller's settings.
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// Seconds between heartbeats (simulated time under an accelerated clock).
    pub heartbeat_s: i64,
    /// Read meter clocks every this many sweeps (and at every boundary).
    pub clock_every: u32,
    /// Largest random delay before publishing a boundary sweep, seconds.
    pub publish_delay_max_s: u64,
}

/// Runs the schedule until `shutdown`: sweeps, batches, spools, and tells the uplink.
/// Never waits on the uplink: notifications are dropped when its queue is full (the
/// spool holds the data either way).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    schedule: Schedule,
    settings: PollSettings,
    clock: SharedClock,
    buses: Vec<BusHandle>,
    mut batcher: Batcher,
    spool: SharedSpool,
    uplink: mpsc::Sender<Uplink>,
    mut shutdown: watch::Receiver<bool>,
) {
    let heartbeat = settings.heartbeat_s.max(1);
    let mut after = clock.now();
    let mut next_heartbeat = clock.now() + heartbeat;
    let mut sweeps: u64 = 0;
    loop {
        let due = schedule.next_sweep(after);
        let target = due.map_or(next_heartbeat, |d| d.t.min(next_heartbeat));
        let wait = clock.real_until(target.saturating_mul(1000));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        }
        if target >= next_heartbeat {
            let _ = uplink.try_send(Uplink::Heartbeat);
            next_heartbeat = (next_heartbeat + heartbeat).max(clock.now() + 1);
        }
        let Some(due) = due.filter(|d| d.t <= target) else {
            continue;
        };
        after = due.t;
        let now = clock.now();
        if !due.boundary && now > due.t + schedule.interval_s {
            tracing::warn!(
                due = due.t,
                now,
                "sweep skipped: the previous one ran too long"
            );
            continue;
        }
        let with_clock = due.boundary || sweeps % u64::from(settings.clock_every.max(1)) == 0;
        tracing::debug!(t = due.t, boundary = due.boundary, "sweep");
        let readings = sweep_all(&buses, with_clock).await;
        sweeps += 1;
        if readings.is_empty() {
            continue;
        }
        let batches = batcher.encode(readings);
        let refs: Vec<&[u8]> = batches.iter().map(Vec::as_slice).collect();
        let appended = match spool.lock() {
            Ok(mut s) => s.append_batch(&refs),
            Err(_) => {
                tracing::error!("spool lock poisoned");
                return;
            }
        };
        if let Err(e) = appended {
            tracing::error!(error = %e, "cannot spool a batch; it is lost");
            continue;
        }
        let hold = if due.boundary && settings.publish_delay_max_s > 0 {
            let sim = Duration::from_millis(
                rand::random::<u64>() % (settings.publish_delay_max_s * 1000 + 1),
            );
            clock.real_for(sim)
        } else {
            Duration::ZERO
        };
        let _ = uplink.try_send(Uplink::NewBatches { hold });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::policy::Policy;

    fn sched(interval_s: i64, always: bool) -> Schedule {
        Schedule {
            cal: Calendar::new(Policy::beijing_2018()),
            interval_s,
            always,
        }
    }

    /// UTC Unix seconds of a local Beijing time (UTC+8).
    fn local(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
        crate::bus::dlt645::days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 - 8 * 3600
    }

    #[test]
    fn a_night_in_season() {
        let s = sched(900, false);
        // Daytime: nothing until 20:00, which is a boundary.
        let d = s.next_sweep(local(2025, 12, 1, 9, 0)).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2025, 12, 1, 20, 0),
                boundary: true
            }
        );
        // Inside: every 15 minutes.
        let d = s.next_sweep(d.t).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2025, 12, 1, 20, 15),
                boundary: false
            }
        );
        // The last tick before 08:00 is 07:45; then the closing boundary.
        let d = s.next_sweep(local(2025, 12, 2, 7, 45)).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2025, 12, 2, 8, 0),
                boundary: true
            }
        );
        let d = s.next_sweep(d.t).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2025, 12, 2, 20, 0),
                boundary: true
            }
        );
    }

    #[test]
    fn season_edges_are_boundaries() {
        let s = sched(900, false);
        // Oct 31 20:00 is not in season: the first boundary is Nov 1 00:00.
        let d = s.next_sweep(local(2025, 10, 31, 12, 0)).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2025, 11, 1, 0, 0),
                boundary: true
            }
        );
        // Mar 31 night closes at Apr 1 00:00.
        let d = s.next_sweep(local(2026, 3, 31, 23, 45)).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2026, 4, 1, 0, 0),
                boundary: true
            }
        );
        // Summer: the next sweep is next season's first midnight.
        let d = s.next_sweep(local(2026, 6, 1, 21, 0)).unwrap();
        assert_eq!(
            d,
            Due {
                t: local(2026, 11, 1, 0, 0),
                boundary: true
            }
        );
    }

    #[test]
    fn always_reads_around_the_clock() {
        let s = sched(1, true);
        let t = local(2026, 6, 1, 12, 0);
        assert_eq!(
            s.next_sweep(t).unwrap(),
            Due {
                t: t + 1,
                boundary: false
            }
        );
        let s = sched(900, true);
        let before = local(2025, 12, 1, 19, 50);
        assert_eq!(
            s.next_sweep(before).unwrap(),
            Due {
                t: local(2025, 12, 1, 20, 0),
                boundary: true
            }
        );
    }
}
