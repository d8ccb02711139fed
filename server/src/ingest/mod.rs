//! The MQTT subscriber: receives `readings` and `status` at QoS 1 on a persistent
//! session, validates them ([`validate`]), commits a batch of messages in one store
//! transaction, and only then acknowledges them, so a crash loses nothing.
//!
//! Two tasks: one polls the rumqttc event loop (it owns the socket) and hands publishes
//! to the worker; the worker batches, validates, commits, acks. The hand-over channel is
//! unbounded on purpose: the poller must never wait on the worker, or the acks the worker
//! queues would never be sent and both would wait forever (seen with Mosquitto sending
//! hundreds of unacknowledged messages). What bounds it is the broker's in-flight limit
//! for the server's client (Mosquitto `max_inflight_messages`, MQTT 5 receive maximum);
//! without one, a backlog is held in memory while it is committed.

pub mod validate;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::SharedClock;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{BrokerUrl, Config, ConfigError};
use crate::store::{IngestTx, Store, StoreError};
use validate::Bindings;

/// The MQTT protocol's largest packet: anything the broker forwards is read and
/// judged (a smaller client limit would drop the connection and loop on redelivery).
const MAX_PACKET_BYTES: usize = 268_435_455;

/// Counters of what ingest did since start (the store has the durable counts).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// MQTT messages committed and acknowledged.
    pub messages: AtomicU64,
    /// Readings stored for the first time.
    pub new_readings: AtomicU64,
    /// Readings already stored (ignored).
    pub repeats: AtomicU64,
    /// Readings conflicting with a stored value (flagged, first kept).
    pub conflicts: AtomicU64,
    /// Quarantine rows written.
    pub quarantined: AtomicU64,
    /// Store transactions committed.
    pub commits: AtomicU64,
    /// Held readings admitted after a registry change (`replay.rs`).
    pub held_admitted: AtomicU64,
    /// Held readings dropped over `[ingest] held_max`, since start.
    pub held_dropped: AtomicU64,
    /// Whether the broker has acknowledged the subscriptions on the current connection.
    pub subscribed: AtomicBool,
    /// Whether ingest is behind the broker (recompute rests while it is).
    pub backlog: Backlog,
}

/// Whether ingest is behind: the batch it gathered last was full (`[ingest]
/// batch_messages`), so messages came at least as fast as they were committed. While it
/// is, recompute rests between its rounds (`recompute::BACKLOG_REST`): both share one
/// SQLite writer and the cores, and a backlog is drained first, out of the broker's
/// memory; every dirty mark is still computed, later and in fewer, larger rounds.
#[derive(Debug, Default)]
pub struct Backlog {
    behind: AtomicBool,
    cleared: Notify,
}

impl Backlog {
    /// Records whether ingest is behind: the batch just gathered was full (true), or it
    /// was not, or a commit ended before the next message came (false).
    pub fn set(&self, behind: bool) {
        if self.behind.swap(behind, Ordering::Relaxed) && !behind {
            self.cleared.notify_waiters();
        }
    }

    /// Whether ingest is behind.
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Waits until ingest is no longer behind, or `most` has passed.
    pub async fn wait_caught_up(&self, most: Duration) {
        let cleared = self.cleared.notified();
        tokio::pin!(cleared);
        // Registered before the check, so a clearing in between is not missed.
        cleared.as_mut().enable();
        if self.is_behind() {
            let _ = tokio::time::timeout(most, cleared).await;
        }
    }
}

/// Why ingest could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed (the batch was not acknowledged; the broker will redeliver).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the ingest worker needs.
#[derive(Clone)]
pub struct Ingest {
    /// The store.
    pub store: Store,
    /// The tariff calendar (seasons for the `dirty` marks).
    pub calendar: Calendar,
    /// Now.
    pub clock: SharedClock,
    /// Woken after every commit that marked something dirty.
    pub recompute: Arc<Notify>,
    /// Counters.
    pub stats: Arc<IngestStats>,
    /// Gateway and meter state and alarms, updated after every commit.
    pub monitor: crate::monitor::Monitor,
}

/// MQTT options from `[mqtt]`: persistent session, manual acks.
pub fn mqtt_options(cfg: &Config) -> Result<MqttOptions, ConfigError> {
    let BrokerUrl { host, port, tls } = cfg.broker()?;
    let mut o = MqttOptions::new(cfg.client_id(), host, port);
    o.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s.max(5)))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET_BYTES, 64 * 1024);
    if let Some(user) = &cfg.mqtt.username {
        let password = match &cfg.mqtt.password_file {
            Some(p) => read_secret(p, "mqtt.password_file")?,
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    if tls {
        let ca = match &cfg.mqtt.ca_file {
            Some(p) => std::fs::read(p).map_err(|e| ConfigError::Invalid {
                key: "mqtt.ca_file",
                message: format!("{}: {e}", p.display()),
            })?,
            None => {
                return Err(ConfigError::Invalid {
                    key: "mqtt.ca_file",
                    message: "is required with mqtts://".into(),
                });
            }
        };
        o.set_transport(Transport::tls(ca, None, None));
    }
    Ok(o)
}

fn read_secret(path: &std::path::Path, key: &'static str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        key,
        message: format!("{}: {e}", path.display()),
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// The topic filters, with `$share/{group}/` when a share group is configured.
pub fn filters(cfg: &Config) -> [String; 2] {
    let prefix = cfg
        .mqtt
        .share_group
        .as_ref()
        .map(|g| format!("$share/{g}/"))
        .unwrap_or_default();
    [
        format!("{prefix}qn/v1/gw/+/readings"),
        format!("{prefix}qn/v1/gw/+/status"),
    ]
}

/// Runs ingest until `shutdown` turns true: the poller and the worker.
pub async fn run(
    cfg: &Config,
    ingest: Ingest,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let opts = mqtt_options(cfg)?;
    let batch_max = cfg.ingest.batch_messages;
    let (client, eventloop) = AsyncClient::new(opts, batch_max * 2 + 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let filters = filters(cfg);
    let stats = ingest.stats.clone();
    info!(broker = ?cfg.mqtt.url, client_id = %cfg.client_id(), ?filters, "ingest starting");
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        filters,
        tx,
        ingest.stats.clone(),
    ));
    let worker = Worker {
        ingest,
        client: client.clone(),
        batch_max,
        wait: Duration::from_millis(cfg.ingest.batch_wait_ms),
        tolerance: cfg.ingest.future_tolerance_s,
        bindings: Arc::new(Bindings::default()),
        version: None,
    };
    let result = worker.run(rx, &mut shutdown).await;
    stats.backlog.set(false);
    let _ = client.disconnect().await;
    // Give the event loop a moment to send the DISCONNECT, then stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    poller.abort();
    result
}

async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: [String; 2],
    tx: mpsc::UnboundedSender<Publish>,
    stats: Arc<IngestStats>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                for f in &filters {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        warn!(error = %e, filter = %f, "subscribe request failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                info!("subscribed");
                stats.subscribed.store(true, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.subscribed.store(false, Ordering::Relaxed);
                warn!(error = %e, "broker connection lost; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

struct Worker {
    ingest: Ingest,
    client: AsyncClient,
    batch_max: usize,
    wait: Duration,
    tolerance: i64,
    bindings: Arc<Bindings>,
    version: Option<i64>,
}

/// A batch whose commit runs in the background while the next one is gathered and
/// validated; its messages are acknowledged once the commit is done.
struct InFlight {
    commit: JoinHandle<Result<(), IngestError>>,
    messages: Vec<Publish>,
}

impl Worker {
    /// Gathers a batch, validates it, and commits it while the next batch is gathered:
    /// at most one commit runs at a time, commits happen in arrival order, and a batch
    /// is acknowledged (in arrival order, as MQTT asks) only after its own commit.
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Publish>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), IngestError> {
        let mut inflight: Option<InFlight> = None;
        loop {
            let mut batch = Vec::with_capacity(self.batch_max);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return self.finish(inflight).await,
                done = async { (&mut inflight.as_mut()?.commit).await.ok() }, if inflight.is_some() => {
                    // The commit ended before another message came: caught up.
                    self.ingest.stats.backlog.set(false);
                    let f = inflight.take();
                    self.acknowledge(f, done).await;
                    continue;
                }
                first = rx.recv() => match first {
                    Some(p) => batch.push(p),
                    None => return self.finish(inflight).await,
                },
            }
            // Take what has arrived; wait up to `batch_wait_ms` for more only if asked to.
            // Without a wait the batch grows by itself while the previous commit runs.
            let deadline = tokio::time::Instant::now() + self.wait;
            while batch.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) if self.wait.is_zero() => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(p)) => batch.push(p),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            self.ingest.stats.backlog.set(batch.len() >= self.batch_max);
            let tx = loop {
                match self.validate(&batch).await {
                    Ok(tx) => break tx,
                    Err(e) => {
                        warn!(error = %e, "registry bindings unreadable; retrying");
                        tokio::select! {
                            _ = shutdown.changed() => return self.finish(inflight).await,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            };
            // The previous commit must land before this one starts (order, and one writer).
            if let Some(mut f) = inflight.take() {
                let done = (&mut f.commit).await.ok();
                self.acknowledge(Some(f), done).await;
            }
            let seen: Vec<_> = batch
                .iter()
                .filter_map(|p| crate::monitor::BatchSeen::from_message(&p.topic, &p.payload))
                .collect();
            let job = Commit {
                ingest: self.ingest.clone(),
                bindings: self.bindings.clone(),
                messages: batch.len() as u64,
                tx,
                seen,
            };
            inflight = Some(InFlight {
                commit: tokio::spawn(job.run(shutdown.clone())),
                messages: batch,
            });
        }
    }

    /// Waits for the running commit and acknowledges it (shutdown: stop after it).
    async fn finish(&self, inflight: Option<InFlight>) -> Result<(), IngestError> {
        if let Some(mut f) = inflight {
            let done = (&mut f.commit).await.ok();
            self.acknowledge(Some(f), done).await;
        }
        Ok(())
    }

    /// Acknowledges a batch whose commit succeeded; one that did not commit (shutdown
    /// during its retries, or a panic) is left unacknowledged for the broker to redeliver.
    async fn acknowledge(&self, inflight: Option<InFlight>, done: Option<Result<(), IngestError>>) {
        let Some(f) = inflight else { return };
        match done {
            Some(Ok(())) => {
                debug!(messages = f.messages.len(), "committed; acknowledging");
                for p in &f.messages {
                    if let Err(e) = self.client.ack(p).await {
                        warn!(error = %e, "ack failed; the broker will redeliver");
                    }
                }
            }
            Some(Err(e)) => warn!(error = %e, "batch not committed; left for redelivery"),
            None => warn!("commit task failed; batch left for redelivery"),
        }
    }

    async fn refresh_bindings(&mut self) -> Result<(), StoreError> {
        let store = &self.ingest.store;
        let version = store.registry_version().await?;
        if self.version != Some(version) {
            self.bindings = Arc::new(Bindings::new(
                store.gateway_ids().await?,
                store.bindings().await?,
            ));
            self.version = Some(version);
            debug!(version, "registry bindings loaded");
        }
        Ok(())
    }

    /// Validates every message of the batch against the current registry bindings.
    async fn validate(&mut self, batch: &[Publish]) -> Result<IngestTx, StoreError> {
        self.refresh_bindings().await?;
        let now = self.ingest.clock.now();
        let mut tx = IngestTx {
            received: now,
            held_version: self.version.unwrap_or(0),
            ..Default::default()
        };
        for p in batch {
            validate::message(
                &p.topic,
                &p.payload,
                &self.bindings,
                now,
                self.tolerance,
                &mut tx,
            );
        }
        Ok(tx)
    }
}

/// One validated batch on its way into the store.
struct Commit {
    ingest: Ingest,
    bindings: Arc<Bindings>,
    messages: u64,
    tx: IngestTx,
    seen: Vec<crate::monitor::BatchSeen>,
}

impl Commit {
    /// Commits, retrying a store failure every second until it lands or the server
    /// stops (then the batch stays unacknowledged and the broker redelivers it).
    async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), IngestError> {
        let (bindings, cal, now) = (&self.bindings, self.ingest.calendar, self.tx.received);
        // Monitoring state changes in the same transaction as the readings it follows.
        let fold = self.ingest.monitor.fold(&self.tx, &self.seen);
        let sum = loop {
            match self
                .ingest
                .store
                .commit_ingest_with(
                    &self.tx,
                    |r, out| bindings.dirty_of(r, &cal, now, out),
                    Some(&fold),
                )
                .await
            {
                Ok(sum) => break sum,
                Err(e) => {
                    warn!(error = %e, messages = self.messages, "commit failed; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Err(e.into()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let s = &self.ingest.stats;
        s.messages.fetch_add(self.messages, Ordering::Relaxed);
        s.new_readings
            .fetch_add(sum.new_readings, Ordering::Relaxed);
        s.repeats.fetch_add(sum.repeats, Ordering::Relaxed);
        s.conflicts.fetch_add(sum.conflicts, Ordering::Relaxed);
        s.quarantined.fetch_add(sum.quarantined, Ordering::Relaxed);
        s.commits.fetch_add(1, Ordering::Relaxed);
        if sum.quarantined > 0 || sum.conflicts > 0 {
            info!(
                quarantined = sum.quarantined,
                conflicts = sum.conflicts,
                "readings set aside"
            );
        }
        if sum.dirty > 0 {
            self.ingest.recompute.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recompute's wait on a backlog ends when ingest catches up, or after the most.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_wait_ends_when_ingest_catches_up_or_at_the_most() {
        let b = Arc::new(Backlog::default());
        let start = tokio::time::Instant::now();
        b.wait_caught_up(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "not behind: no wait");
        b.set(true);
        assert!(b.is_behind());
        b.wait_caught_up(Duration::from_secs(5)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(5),
            "still behind: the most"
        );
        let clear = {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                b.set(true);
                tokio::time::sleep(Duration::from_secs(1)).await;
                b.set(false);
            })
        };
        b.wait_caught_up(Duration::from_secs(5)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(7),
            "caught up after 2 s of the 5"
        );
        clear.await.unwrap();
        assert!(!b.is_behind());
    }

    #[test]
    fn persistent_session_and_shared_subscription() {
        let cfg = Config::from_toml_str(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1999\"\nclient_id = \"srv-a\"\n",
        )
        .unwrap();
        let o = mqtt_options(&cfg).unwrap();
        assert!(!o.clean_session());
        assert_eq!(o.client_id(), "srv-a");
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1999));
        assert_eq!(
            filters(&cfg),
            [
                "qn/v1/gw/+/readings".to_string(),
                "qn/v1/gw/+/status".to_string()
            ]
        );
        let shared =
            Config::from_toml_str("[mqtt]\nurl = \"mqtt://h\"\nshare_group = \"qingnuan\"\n")
                .unwrap();
        assert_eq!(filters(&shared)[0], "$share/qingnuan/qn/v1/gw/+/readings");
        let bad = Config::from_toml_str("[mqtt]\nurl = \"mqtt://h\"\nshare_group = \"a/b\"\n")
            .unwrap_err();
        assert!(bad.to_string().starts_with("mqtt.share_group"), "{bad}");
        let tls = Config::from_toml_str("[mqtt]\nurl = \"mqtts://h\"\n").unwrap();
        assert!(mqtt_options(&tls)
            .unwrap_err()
            .to_string()
            .contains("mqtt.ca_file"));
    }
}
