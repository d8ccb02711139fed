/*!
The city platform feed (issue 8; format in `docs/city-feed.md`): every closed night, one
JSON batch per village and one per district — households enrolled/live, gateways online,
heat pumps running, alarms open, the night's off-peak Wh, season-to-date subsidy fen, and
each household's night — POSTed to `[feed] url`, signed with HMAC-SHA256 over the body.

# How nothing is lost and nothing is duplicated
- **Outbox.** A generation pass builds the batches ([`payload`]) and stores them, body and
  all, in `feed_outbox` (`store::feed`) before any attempt; a delivery pass sends what is
  due, oldest first, and marks a row delivered only on 2xx (or 409). A platform outage
  or a crash leaves rows pending; they are sent later with the same bytes and key.
- **Idempotency key.** `{subject}:{night}:r{revision}` — deterministic from what the
  batch is about, not from when it was built. Rebuilding a night whose figures did not
  change yields the same digest, so nothing is enqueued; the platform deduplicates a
  resend (after a timeout or a crash between its 2xx and our mark) by key.
- **Corrections.** Each pass rebuilds the latest `correction_days` nights. When a night's
  figures changed (late readings recomputed, a meter fixed), the digest differs and a new
  revision `r{n+1}` is enqueued with `"corrects": "<key of r{n}>"`: the platform replaces
  the figures of that (subject, night) with the highest revision it has.
- **Retries.** A failed attempt waits `initial_backoff_s · 2^(attempts−1)`, capped at
  `max_backoff_s`, and never gives up; [`FeedStats`] shows pending batches and the age of
  the oldest, for an alarm.

# Layout
- [`config`]: `[feed]` ([`FeedConfig::from_table`]).
- [`payload`]: the batches, pure.
- [`deliver`]: signing and the HTTP POST.
- here: [`Feed`] (generation and delivery passes, [`Feed::tick`]) and [`run`], the task.
*/

pub mod config;
pub mod deliver;
pub mod payload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::clock::SharedClock;
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use config::{FeedConfig, FeedConfigError};
pub use deliver::{signature, verify, SendError, Sender};
pub use payload::{Draft, HouseholdOp, Inputs};

use crate::monitor::progress::plan_2018;
use crate::monitor::Monitor;
use crate::store::feed::FeedNight;
use crate::store::monitor::AlarmFilter;
use crate::store::{LeaseKind, Store, StoreError};

impl FeedConfig {
    /// `[feed]` parsed and its key file read, or `None` without `[feed]`.
    pub fn checked(table: Option<&toml::Table>) -> Result<Option<FeedConfig>, FeedError> {
        let Some(table) = table else {
            return Ok(None);
        };
        let cfg = FeedConfig::from_table(table)?;
        cfg.load_key()?;
        Ok(Some(cfg))
    }
}

/// Counters of the feed, for `/metrics` (render them with [`FeedStats::prometheus`]).
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Batches put in the outbox since start.
    pub enqueued: AtomicU64,
    /// Batches delivered since start.
    pub delivered: AtomicU64,
    /// Failed attempts since start.
    pub failed_attempts: AtomicU64,
    /// Batches pending now (after the last pass).
    pub pending: AtomicU64,
    /// Age of the oldest pending batch, seconds (0 when none), after the last pass.
    pub oldest_pending_age_s: AtomicI64,
    /// Whether this replica holds the feed's lease and runs it (on PostgreSQL one replica
    /// at a time does).
    pub active: AtomicBool,
}

impl FeedStats {
    /// The counters in the Prometheus text format (`qingnuan_feed_*`).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let get = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        line(
            "qingnuan_feed_enqueued_total",
            "counter",
            "City feed batches put in the outbox.",
            get(&self.enqueued),
        );
        line(
            "qingnuan_feed_delivered_total",
            "counter",
            "City feed batches the platform accepted.",
            get(&self.delivered),
        );
        line(
            "qingnuan_feed_failed_attempts_total",
            "counter",
            "City feed delivery attempts that failed (retried).",
            get(&self.failed_attempts),
        );
        line(
            "qingnuan_feed_pending",
            "gauge",
            "City feed batches waiting in the outbox.",
            get(&self.pending),
        );
        line(
            "qingnuan_feed_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest undelivered city feed batch.",
            self.oldest_pending_age_s.load(Ordering::Relaxed),
        );
        line(
            "qingnuan_feed_active",
            "gauge",
            "1 while this replica holds the city feed's lease and runs it (one replica at a time on PostgreSQL).",
            i64::from(self.active.load(Ordering::Relaxed)),
        );
        out
    }
}

/// Why the feed could not start or a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// `[feed]` is unusable.
    #[error(transparent)]
    Config(#[from] FeedConfigError),
    /// The HTTP client could not be built.
    #[error("feed client: {0}")]
    Client(#[from] SendError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one [`Feed::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Batches newly enqueued (first revisions and corrections).
    pub enqueued: u64,
    /// Batches delivered.
    pub delivered: u64,
    /// Failed attempts.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct GenState {
    last_run: Option<i64>,
    last_night: Option<Night>,
}

/// The feed: configuration, store, monitor (operation figures), client, counters.
#[derive(Debug)]
pub struct Feed {
    config: FeedConfig,
    store: Store,
    monitor: Monitor,
    sender: Sender,
    stats: Arc<FeedStats>,
    gen: Mutex<GenState>,
}

/// Batches sent per delivery query.
const DELIVERY_CHUNK: i64 = 50;

impl Feed {
    /// A feed over `store`, reading the signing key from `config.key_file`.
    pub fn new(config: FeedConfig, store: Store, monitor: Monitor) -> Result<Self, FeedError> {
        let key = config.load_key()?;
        let sender = Sender::new(&config.url, key, Duration::from_secs(config.timeout_s))?;
        Ok(Self {
            config,
            store,
            monitor,
            sender,
            stats: Arc::default(),
            gen: Mutex::default(),
        })
    }

    /// The counters (shared with `/metrics`).
    pub fn stats(&self) -> Arc<FeedStats> {
        self.stats.clone()
    }

    /// The latest night due at `now`: closed, and the local push hour of the day it closes
    /// reached; `None` outside heating seasons.
    pub fn last_due_night(&self, now: i64) -> Option<Night> {
        last_due_night(self.monitor.calendar(), self.config.push_hour, now)
    }

    /// One pass: generates (when a new night is due, or `regenerate_s` has passed since
    /// the last generation) and delivers what is due.
    pub async fn tick(&self, now: i64) -> Result<TickSummary, FeedError> {
        let latest = self.last_due_night(now);
        let generate = match self.gen.lock() {
            Ok(g) => {
                g.last_night != latest
                    || g.last_run.is_none_or(|t| {
                        now - t >= i64::try_from(self.config.regenerate_s).unwrap_or(i64::MAX)
                    })
            }
            Err(_) => true,
        };
        let mut sum = TickSummary::default();
        if generate {
            sum.enqueued = self.generate(now).await?;
            if let Ok(mut g) = self.gen.lock() {
                g.last_run = Some(now);
                g.last_night = latest;
            }
        }
        let (delivered, failed) = self.deliver(now).await?;
        sum.delivered = delivered;
        sum.failed = failed;
        Ok(sum)
    }

    /// Builds the batches of the due nights (the latest and `correction_days` before it)
    /// and enqueues those that are new or corrected; returns how many were enqueued.
    /// A night with no stored figures yet (recompute has not run) is left for later.
    pub async fn generate(&self, now: i64) -> Result<u64, FeedError> {
        let cal = *self.monitor.calendar();
        let Some(latest) = self.last_due_night(now) else {
            return Ok(0);
        };
        let first = latest
            .0
            .checked_sub(time::Duration::days(i64::from(self.config.correction_days)))
            .map(Night)
            .unwrap_or(latest);
        let (from, to) = (first.to_string(), latest.to_string());
        let rows = self.store.feed_nights(&from, &to).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut by_night: BTreeMap<&str, Vec<FeedNight>> = BTreeMap::new();
        for r in &rows {
            by_night
                .entry(r.night.as_str())
                .or_default()
                .push(r.clone());
        }
        let stored = self.store.feed_latest(&from, &to).await?;
        let (households, online) = self.operation(now).await?;
        let alarms: Vec<(Option<String>, Option<String>)> = self
            .store
            .alarms(&AlarmFilter {
                open: Some(true),
                limit: i64::MAX,
                ..AlarmFilter::default()
            })
            .await?
            .into_iter()
            .map(|a| (a.district, a.village))
            .collect();
        let plan = plan_2018();
        let mut statements = BTreeMap::new();
        let mut batches = Vec::new();
        for (night, nights) in &by_night {
            let Some(season) = night
                .parse::<Night>()
                .ok()
                .and_then(|n| cal.season_of_night(n))
            else {
                continue;
            };
            let season = season.to_string();
            if !statements.contains_key(&season) {
                let st = self.store.statements(&season, None, None).await?;
                statements.insert(season.clone(), st);
            }
            let st = statements
                .get(&season)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let drafts = payload::drafts(&Inputs {
                night,
                season: &season,
                generated_at: now,
                nights,
                households: &households,
                gateways_online: &online,
                alarms_open: &alarms,
                statements: st,
                plan: &plan,
                with_households: self.config.households,
            });
            for d in drafts {
                let prev = stored.get(&(d.subject.clone(), d.night.clone()));
                if let Some(b) = payload::finalize(d, prev) {
                    if prev.is_some() {
                        info!(key = %b.key, "city feed: night corrected, new revision");
                    }
                    batches.push(b);
                }
            }
        }
        let new = self.store.feed_enqueue(&batches, now).await?;
        self.stats.enqueued.fetch_add(new, Ordering::Relaxed);
        if new > 0 {
            debug!(new, from = %from, to = %to, "city feed: batches enqueued");
        }
        Ok(new)
    }

    /// Every registry household's operation now, and the gateways online now.
    async fn operation(
        &self,
        now: i64,
    ) -> Result<(Vec<HouseholdOp>, BTreeSet<String>), StoreError> {
        let snap = self.monitor.snapshot(now).await?;
        let (cal, cfg) = (self.monitor.calendar(), self.monitor.config());
        let mut gws: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for b in snap.current_bindings() {
            gws.entry(&b.household).or_default().push(b.gateway.clone());
        }
        let households = snap
            .households
            .iter()
            .map(|h| {
                let (live, running) = snap.household_live_running(h, cal, cfg);
                HouseholdOp {
                    id: h.id.clone(),
                    district: h.district.clone(),
                    town: h.town.clone(),
                    village: h.village.clone(),
                    live,
                    running,
                    gateways: gws.get(h.id.as_str()).cloned().unwrap_or_default(),
                }
            })
            .collect();
        let online = snap
            .gateways
            .keys()
            .filter(|g| snap.gateway_online(g, cfg))
            .cloned()
            .collect();
        Ok((households, online))
    }

    /// Sends the due batches, oldest first, until one fails (the platform is then likely
    /// down: the rest wait for the next pass); returns (delivered, failed attempts).
    pub async fn deliver(&self, now: i64) -> Result<(u64, u64), FeedError> {
        let (mut delivered, mut failed) = (0, 0);
        'pass: loop {
            let due = self.store.feed_due(now, DELIVERY_CHUNK).await?;
            if due.is_empty() {
                break;
            }
            for row in due {
                let attempt = row.attempts + 1;
                match self.sender.send(&row.key, &row.body, attempt, now).await {
                    Ok(()) => {
                        self.store.feed_delivered(row.id, now).await?;
                        delivered += 1;
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let next = now.saturating_add(self.config.backoff_s(attempt));
                        warn!(key = %row.key, attempt, error = %e, retry_at = next, "city feed: attempt failed");
                        self.store.feed_failed(row.id, next, &e.to_string()).await?;
                        failed += 1;
                        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        break 'pass;
                    }
                }
            }
        }
        let (pending, oldest) = self.store.feed_pending().await?;
        self.stats
            .pending
            .store(u64::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        self.stats
            .oldest_pending_age_s
            .store(oldest.map_or(0, |t| (now - t).max(0)), Ordering::Relaxed);
        Ok((delivered, failed))
    }
}

/// See [`Feed::last_due_night`].
pub fn last_due_night(cal: &Calendar, push_hour: u8, now: i64) -> Option<Night> {
    let mut n = Night(cal.local_date(now));
    for _ in 0..3 {
        let next_midnight = cal.local_midnight(n.next().0);
        let due = cal
            .window(n)
            .1
            .max(next_midnight + i64::from(push_hour) * 3600);
        if due <= now {
            return cal.season_of_night(n).map(|_| n);
        }
        n = Night(n.0.previous_day()?);
    }
    None
}

/// Runs [`Feed::tick`] every `poll_s` (clock time) until `stopped` turns true.
/// With several replicas on one PostgreSQL database only the one holding the feed's lease
/// ([`LeaseKind::Feed`]) passes; the others wait and take over when it dies.
pub async fn run(feed: Feed, clock: SharedClock, mut stopped: watch::Receiver<bool>) {
    info!(url = %feed.config.url, "city feed running");
    let mut lease = feed.store.lease(LeaseKind::Feed);
    loop {
        if *stopped.borrow() {
            break;
        }
        let held = match lease.held().await {
            Ok(held) => held,
            Err(e) => {
                warn!(error = %e, "city feed: lease");
                false
            }
        };
        feed.stats.active.store(held, Ordering::Relaxed);
        if !held {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            continue;
        }
        // A pass may be long (a backlog after an outage, 30 s timeouts): stopping cuts it
        // short. That is safe: an uncommitted enqueue rolls back, and a batch sent but not
        // yet marked is sent again under the same key, which the platform ignores.
        let result = tokio::select! {
            r = feed.tick(clock.now()) => r,
            _ = stopped.wait_for(|s| *s) => break,
        };
        match result {
            Ok(s) if s != TickSummary::default() => debug!(?s, "city feed pass"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "city feed pass failed"),
        }
        let wait = clock
            .real_for(Duration::from_secs(feed.config.poll_s))
            .max(Duration::from_millis(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    feed.stats.active.store(false, Ordering::Relaxed);
    lease.release().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::policy::Policy;

    #[test]
    fn a_night_is_due_at_the_push_hour_of_the_day_it_closes() {
        let cal = Calendar::new(Policy::beijing_2018());
        let n: Night = "2025-11-01".parse().unwrap();
        let nov2_midnight = cal.local_midnight(n.next().0);
        let at_9 = nov2_midnight + 9 * 3600;
        assert_eq!(last_due_night(&cal, 9, at_9), Some(n));
        assert_eq!(
            last_due_night(&cal, 9, at_9 - 1),
            Some("2025-10-31".parse().unwrap())
        );
        // never before the window closes (08:00), whatever the push hour
        assert_eq!(
            last_due_night(&cal, 0, nov2_midnight + 8 * 3600 - 1),
            Some("2025-10-31".parse().unwrap())
        );
        assert_eq!(last_due_night(&cal, 0, nov2_midnight + 8 * 3600), Some(n));
        // summer: no season, nothing due
        let july = cal.local_midnight("2026-07-01".parse::<Night>().unwrap().0) + 12 * 3600;
        assert_eq!(last_due_night(&cal, 9, july), None);
    }

    #[test]
    fn prometheus_lines_carry_the_counters() {
        let s = FeedStats::default();
        s.delivered.store(7, Ordering::Relaxed);
        s.oldest_pending_age_s.store(120, Ordering::Relaxed);
        let text = s.prometheus();
        assert!(
            text.contains("\nqingnuan_feed_delivered_total 7\n"),
            "{text}"
        );
        assert!(text.contains("\nqingnuan_feed_oldest_pending_age_seconds 120\n"));
        assert!(text.contains("# TYPE qingnuan_feed_pending gauge"));
    }
}
