/*!
The Qingnuan server: ingests gateway readings over MQTT, stores them, computes every
household's off-peak kWh and subsidy exactly, and serves the figures over HTTP.

# Layout
- [`config`]: `server.toml` (CONTRACT.md "Server").
- [`store`]: the only module that knows SQL (SQLite in WAL mode, or PostgreSQL for replicas;
  migrations in `migrations/{sqlite,postgres}`).
- [`registry`]: the registry CSV import (households, meters, gateways) with its audit log.
- [`ingest`]: the MQTT subscriber: validation, quarantine, batched commits, acks after commit.
- [`replay`]: readings held back for want of a registry binding, admitted after the
  registry change that binds them.
- [`engine`]: the pure off-peak computation (DESIGN.md), no I/O.
- [`recompute`]: turns `dirty` (household, season) pairs into stored nights and statements.
- [`export`]: the contract's statement/night JSON and the finance CSV (with BOM).
- [`feed`]: the city platform feed: signed daily batches through an outbox with retries.
- [`http`]: the JSON/CSV API (axum): `app(state)` builds the router.
- [`sink`]: the InfluxDB 2 sink (`[influxdb]`): tails the store's export queues, writes line protocol.
- [`broker`]: the embedded MQTT broker (rumqttd) that serves `run` without `[mqtt] url`, and the demo.
- [`demo`]: `qingnuan-server demo`: a simulated village (real agents, simulated meters) on the
  embedded broker and store, under an accelerated clock.

[`run`] (and [`start`]) wire them: ingest commits batches and wakes recompute; HTTP and
the CLI's `export` read what recompute stored.
*/
#![deny(missing_docs)]

pub mod broker;
pub mod config;
pub mod demo;
pub mod engine;
pub mod export;
pub mod feed;
pub mod http;
pub mod ingest;
pub mod monitor;
pub mod recompute;
pub mod registry;
pub mod replay;
pub mod settle;
pub mod sink;
pub mod store;
pub mod varint;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::SharedClock;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// `QINGNUAN_CLOCK` is malformed.
    #[error("QINGNUAN_CLOCK: {0}")]
    Clock(#[from] qingnuan_shared::clock::ClockSpecError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The embedded broker (no `[mqtt] url`) did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// `[feed]` is unusable or its client could not be built.
    #[error(transparent)]
    Feed(#[from] feed::FeedError),
    /// The InfluxDB sink (`[influxdb]`) could not start.
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    /// The HTTP listener could not be bound.
    #[error("http.listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A started server: its address and the handle that stops it.
pub struct Running {
    /// The address the API listens on.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: store::Store,
    /// The embedded broker when `[mqtt] url` is absent; stopped after ingest.
    broker: Option<broker::EmbeddedBroker>,
}

impl Running {
    /// Stops ingest (after its current batch), recompute and HTTP, then closes the store.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.store.close().await;
        // After ingest: it acknowledges only what it committed, so nothing is lost.
        if let Some(b) = self.broker {
            b.shutdown();
        }
    }
}

/// Starts ingest, recompute and the HTTP API in the background, with the clock of
/// `QINGNUAN_CLOCK` (tests) or the wall clock.
pub async fn start(config: config::Config) -> Result<Running, RunError> {
    start_with_clock(config, qingnuan_shared::clock::from_env()?).await
}

/// [`start`] with an explicit clock.
pub async fn start_with_clock(
    config: config::Config,
    clock: SharedClock,
) -> Result<Running, RunError> {
    let policy = config.load_policy()?;
    // Checked before anything starts, so a bad [feed] leaves nothing running.
    let feed_config = feed::FeedConfig::checked(config.feed.as_ref())?;
    let guard = Arc::new(http::auth::Guard::from_config(&config)?);
    let (config, embedded) = with_embedded_broker(config)?;
    config.broker()?;
    let store = store::Store::open(&config.store.url).await?;
    // Readings before a settled cut were thinned under one policy's calendar and rules.
    let settled = store.settled_policy().await?;
    let fingerprint = settle::policy_fingerprint(&engine::Engine::new(policy));
    if settled != 0 && settled != fingerprint {
        return Err(store::StoreError::Settled(format!(
            "the policy's calendar or rules differ from those readings were settled with (fingerprint {settled}, now {fingerprint}); run with that policy"
        ))
        .into());
    }
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.http.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.http.listen,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let stats = Arc::new(ingest::IngestStats::default());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(recompute::run(
        store.clone(),
        policy,
        clock.clone(),
        wake.clone(),
        stats.clone(),
        stopped.clone(),
    )));
    if config.store.settle_after_days > 0 {
        tasks.push(tokio::spawn(settle::run(
            store.clone(),
            policy,
            clock.clone(),
            config.store.settle_after_days,
            stopped.clone(),
        )));
    }
    let monitor = monitor::Monitor::new(store.clone(), policy, monitor::MonitorConfig::default());
    tasks.push(tokio::spawn(monitor::run(
        monitor.clone(),
        clock.clone(),
        std::time::Duration::from_secs(60),
        stopped.clone(),
    )));
    let feed_stats = match feed_config {
        Some(cfg) => {
            let f = feed::Feed::new(cfg, store.clone(), monitor.clone())?;
            let s = f.stats();
            tasks.push(tokio::spawn(feed::run(f, clock.clone(), stopped.clone())));
            Some(s)
        }
        None => None,
    };
    let (sink_stats, sink_task) =
        sink::start(config.influxdb.as_ref(), &store, &monitor, &clock, &stopped).await?;
    tasks.extend(sink_task);
    tasks.push(tokio::spawn(replay::run(
        store.clone(),
        Calendar::new(policy),
        clock.clone(),
        wake.clone(),
        stats.clone(),
        std::time::Duration::from_secs(2),
        config.ingest.held_max,
        stopped.clone(),
    )));
    let ingest = ingest::Ingest {
        store: store.clone(),
        calendar: Calendar::new(policy),
        clock: clock.clone(),
        recompute: wake.clone(),
        stats: stats.clone(),
        monitor,
    };
    let (cfg, rx) = (config.clone(), stopped.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = ingest::run(&cfg, ingest, rx).await {
            warn!(error = %e, "ingest stopped");
        }
    }));
    let state = http::AppState(Arc::new(http::App {
        store: store.clone(),
        policy,
        clock,
        recompute: wake,
        stats,
        feed: feed_stats,
        sink: sink_stats,
    }));
    let rx = stopped;
    tasks.push(tokio::spawn(async move {
        let app = http::auth::protect(http::app(state), guard);
        http::serve::serve(listener, app, rx).await;
    }));
    info!(%addr, "qingnuan-server listening");
    Ok(Running {
        addr,
        stop,
        tasks,
        store,
        broker: embedded,
    })
}

/// Without `[mqtt] url` (CONTRACT.md), starts the embedded broker on `[mqtt]
/// embedded_listen` and points the config at it; ingest then connects as to any broker.
fn with_embedded_broker(
    mut config: config::Config,
) -> Result<(config::Config, Option<broker::EmbeddedBroker>), RunError> {
    if config.mqtt.url.is_some() {
        return Ok((config, None));
    }
    let listen = config.embedded_listen()?;
    let mut settings = broker::BrokerSettings::with_listen(listen);
    if let Some(path) = &config.mqtt.embedded_passwd_file {
        let users = broker::Passwd::load(path).map_err(|message| config::ConfigError::Invalid {
            key: "mqtt.embedded_passwd_file",
            message,
        })?;
        info!(
            users = users.len(),
            "embedded MQTT broker: clients must log in"
        );
        settings.users = Some(Arc::new(users));
        settings.acl = Some(Arc::new(broker::acl_of(&config)?));
    }
    let b = broker::EmbeddedBroker::start(settings)?;
    info!(url = %b.url(), "no [mqtt] url: embedded MQTT broker listening");
    config.mqtt.url = Some(b.url());
    Ok((config, Some(b)))
}

/// Runs the server until `shutdown` completes.
pub async fn run(
    config: config::Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let running = start(config).await?;
    shutdown.await;
    info!("shutting down");
    running.stop().await;
    Ok(())
}
