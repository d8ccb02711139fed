/*!
The InfluxDB 2 sink (`[influxdb]`, issue 8): every accepted reading, every night's figure and
a per-village status point, written as line protocol to a bucket for Grafana.

The sink *tails the store* instead of hooking ingest: triggers (migration 0003) queue each
new reading and each recomputed (household, season); the sink reads the queue in batches,
writes, and only then removes what it wrote. So the server's store stays the source of
truth, a crash or an outage re-sends (same series and timestamp: idempotent) and never
loses, and ingest never waits on the database.

Back-pressure: the queue is bounded by `max_lag_readings`; when the database has been
down so long that more wait, the oldest are skipped and counted as dropped (persisted, and
shown in `/metrics`). Failed writes are retried with exponential backoff (1 s doubling to
`retry_max_s`); a batch the database refuses as malformed is dropped and counted.

# Layout
- [`config`]: [`InfluxConfig`], parsed from the raw `[influxdb]` table.
- [`schema`]: measurement/tag/field names (docs/influxdb.md) and rows → points.
- [`writer`]: one write through the `influxdb2` crate, its failures classified.
- here: [`Sink`], [`SinkStats`] and the [`run`] loop.
*/

pub mod config;
pub mod schema;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::SharedClock;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::ConfigError;
use crate::monitor::Monitor;
use crate::store::{LeaseKind, Store, StoreError};

pub use config::InfluxConfig;
pub use writer::{WriteError, Writer};

/// Most (household, season) pairs compared and written in one pass.
const SEASONS_PER_PASS: i64 = 32;

/// Why the sink could not start or a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `[influxdb]` is unusable (the token file, say).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The sink's counters and gauges, read by `/metrics`. Counts since start unless said.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Reading points written.
    pub readings_written: AtomicU64,
    /// Night points written.
    pub nights_written: AtomicU64,
    /// Village status points written.
    pub village_points_written: AtomicU64,
    /// Successful writes (requests).
    pub writes: AtomicU64,
    /// Failed writes (each retry counts).
    pub write_errors: AtomicU64,
    /// Store errors of the sink.
    pub store_errors: AtomicU64,
    /// Readings skipped by the backlog bound or refused by the database, all time (persisted).
    pub readings_dropped: AtomicU64,
    /// Nights refused by the database, all time (persisted).
    pub nights_dropped: AtomicU64,
    /// Readings waiting in the queue (gauge).
    pub backlog_readings: AtomicI64,
    /// (household, season) pairs waiting (gauge).
    pub backlog_seasons: AtomicI64,
    /// Whether the last write succeeded (gauge).
    pub up: AtomicBool,
    /// Last successful write, UTC Unix seconds (server clock), 0 before the first.
    pub last_write: AtomicI64,
    /// Whether this replica holds the sink's lease and runs it (gauge; on PostgreSQL
    /// one replica at a time does).
    pub active: AtomicBool,
}

/// The running sink's parts; [`run`] drives it.
#[derive(Debug, Clone)]
pub struct Sink {
    store: Store,
    config: InfluxConfig,
    writer: Writer,
    calendar: Calendar,
    monitor: Monitor,
    clock: SharedClock,
    stats: Arc<SinkStats>,
}

impl Sink {
    /// Reads the token, builds the client, turns the store's export triggers on (queueing
    /// the history the first time) and loads the persisted drop counts.
    pub async fn new(
        store: Store,
        config: InfluxConfig,
        monitor: Monitor,
        clock: SharedClock,
    ) -> Result<Self, SinkError> {
        let token = config.read_token()?;
        let writer = Writer::new(&config, &token)?;
        if store.sink_enable(config.max_lag_readings).await? {
            info!("influxdb sink enabled: queueing the stored history");
        }
        let stats = Arc::new(SinkStats::default());
        let (r, n) = store.sink_dropped().await?;
        stats.readings_dropped.store(r, Relaxed);
        stats.nights_dropped.store(n, Relaxed);
        Ok(Self {
            calendar: *monitor.calendar(),
            store,
            config,
            writer,
            monitor,
            clock,
            stats,
        })
    }

    /// The counters `/metrics` shows.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// One pass: bound the backlog, write a batch of readings, of changed nights and
    /// (when due) the village points. `Ok(true)` when there may be more to do at once.
    async fn pass(&self, next_status: &mut Instant) -> Result<bool, SinkError> {
        let s = &self.stats;
        let dropped = self
            .store
            .sink_bound_readings(self.config.max_lag_readings)
            .await?;
        if dropped > 0 {
            s.readings_dropped.fetch_add(dropped, Relaxed);
            warn!(
                dropped,
                bound = self.config.max_lag_readings,
                "influxdb sink backlog over its bound: oldest readings skipped"
            );
        }
        let backlog = self.store.sink_backlog().await?;
        s.backlog_readings.store(backlog.readings, Relaxed);
        s.backlog_seasons.store(backlog.seasons, Relaxed);

        let (rows, head) = self.store.sink_readings(self.config.batch_readings).await?;
        let mut more = false;
        if let Some(head) = head {
            let points: Vec<_> = rows.iter().filter_map(schema::reading_point).collect();
            let n = points.len() as u64;
            match self.write(points).await {
                Ok(()) => {
                    // Counted once written, before the queue moves: whoever sees the queue
                    // empty sees the count too.
                    s.readings_written.fetch_add(n, Relaxed);
                    self.store.sink_ack_readings(&head, false).await?;
                }
                Err(WriteError::Refused { status, text }) => {
                    let d = self.store.sink_ack_readings(&head, true).await?;
                    s.readings_dropped.fetch_add(d, Relaxed);
                    warn!(status, %text, dropped = d, "influxdb refused readings: dropped");
                }
                Err(e) => return Err(e.into()),
            }
            more = true;
        }

        let seasons = self.store.sink_seasons(SEASONS_PER_PASS).await?;
        if !seasons.is_empty() {
            let mut changed = Vec::with_capacity(seasons.len());
            for (hh, season, gen) in seasons {
                let nights = self.store.sink_changed_nights(&hh, &season).await?;
                changed.push((hh, season, gen, nights));
            }
            let points: Vec<_> = changed
                .iter()
                .flat_map(|c| c.3.iter())
                .filter_map(|n| schema::night_point(n, &self.calendar))
                .collect();
            let n = points.len() as u64;
            let dropped = match self.write(points).await {
                Ok(()) => false,
                Err(WriteError::Refused { status, text }) => {
                    warn!(status, %text, nights = n, "influxdb refused nights: dropped");
                    s.nights_dropped.fetch_add(n, Relaxed);
                    true
                }
                Err(e) => return Err(e.into()),
            };
            if !dropped {
                s.nights_written.fetch_add(n, Relaxed); // before the acks, as above
            }
            for (hh, season, gen, nights) in &changed {
                self.store
                    .sink_ack_nights(hh, season, *gen, nights, dropped)
                    .await?;
            }
            more = true;
        }

        if self.config.status_interval_s > 0 && Instant::now() >= *next_status {
            *next_status = Instant::now() + Duration::from_secs(self.config.status_interval_s);
            let now = self.clock.now();
            let snap = self.monitor.snapshot(now).await?;
            let points: Vec<_> =
                schema::village_status(&snap, &self.calendar, self.monitor.config())
                    .iter()
                    .filter_map(|v| schema::village_point(v, now))
                    .collect();
            let n = points.len() as u64;
            match self.write(points).await {
                Ok(()) => {
                    s.village_points_written.fetch_add(n, Relaxed);
                }
                // Status points are a snapshot: a refused or lost one is not retried.
                Err(WriteError::Refused { status, text }) => {
                    warn!(status, %text, "influxdb refused village points");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(more)
    }

    async fn write(&self, points: Vec<influxdb2::models::DataPoint>) -> Result<(), WriteError> {
        let s = &self.stats;
        match self.writer.write(points).await {
            Ok(()) => {
                s.writes.fetch_add(1, Relaxed);
                s.up.store(true, Relaxed);
                s.last_write.store(self.clock.now(), Relaxed);
                Ok(())
            }
            Err(e) => {
                s.write_errors.fetch_add(1, Relaxed);
                s.up.store(false, Relaxed);
                Err(e)
            }
        }
    }
}

/// Runs the sink until `stop`: passes back to back while there is work, a pause of
/// `poll_ms` when there is none, the backoff after a failure.
///
/// With several replicas on one PostgreSQL database, every replica runs this loop but only
/// the one holding the sink's lease ([`LeaseKind::Sink`]) passes; the others wait and take
/// over when it dies.
pub async fn run(sink: Sink, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    let mut next_status = Instant::now();
    let mut lease = sink.store.lease(LeaseKind::Sink);
    info!(url = %sink.config.url, bucket = %sink.config.bucket, "influxdb sink running");
    loop {
        if *stop.borrow() {
            lease.release().await;
            return;
        }
        let held = lease.held().await;
        sink.stats.active.store(matches!(held, Ok(true)), Relaxed);
        let pause = match held {
            Ok(false) => Some(Duration::from_millis(sink.config.poll_ms.max(1_000))),
            Err(e) => {
                sink.stats.store_errors.fetch_add(1, Relaxed);
                warn!(error = %e, "influxdb sink: lease");
                Some(sink.config.backoff(1))
            }
            Ok(true) => None,
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            continue;
        }
        let pause = match sink.pass(&mut next_status).await {
            Ok(true) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(false) => {
                failures = 0;
                Duration::from_millis(sink.config.poll_ms)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if matches!(e, SinkError::Store(_)) {
                    sink.stats.store_errors.fetch_add(1, Relaxed);
                }
                let pause = sink.config.backoff(failures);
                warn!(error = %e, retry_in = ?pause, "influxdb sink");
                pause
            }
        };
        if pause.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Starts the sink when `[influxdb]` is configured (returning its counters and task);
/// without it, turns the store's export triggers off so no queue grows unread.
pub async fn start(
    table: Option<&toml::Table>,
    store: &Store,
    monitor: &Monitor,
    clock: &SharedClock,
    stop: &watch::Receiver<bool>,
) -> Result<(Option<Arc<SinkStats>>, Option<tokio::task::JoinHandle<()>>), SinkError> {
    let Some(table) = table else {
        if store.sink_disable().await? {
            warn!(
                "no [influxdb]: the InfluxDB export is switched off and its queues emptied \
                 (on PostgreSQL for every replica of the database: configure [influxdb] on all \
                 replicas or on none)"
            );
        }
        return Ok((None, None));
    };
    let config = InfluxConfig::from_table(table)?;
    let sink = Sink::new(store.clone(), config, monitor.clone(), clock.clone()).await?;
    let stats = sink.stats();
    Ok((Some(stats), Some(tokio::spawn(run(sink, stop.clone())))))
}
