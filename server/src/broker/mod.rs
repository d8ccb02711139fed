/*!
The embedded MQTT broker (rumqttd 0.20 as a library) that `qingnuan-server demo`, and `run`
without `[mqtt] url`, start on a loopback port so that nothing else needs installing.

Mosquitto or EMQX stays the production broker (DESIGN.md, "Embedded broker caution"); this
one is for the demo, a laptop and a single small village.

# What it speaks
- MQTT 3.1.1 (v4) over plain TCP (no TLS: put a TLS-terminating proxy in front, or use
  Mosquitto); loopback only and anonymous, unless
  [`BrokerSettings::users`] (`[mqtt] embedded_passwd_file`, a Mosquitto password file) is
  set: then every client must log in as one of its users, and any address may be used.
- **Topic ACL** with users: the same rules as Mosquitto with `deploy/mosquitto/acl`
  ([`DEPLOY_ACL`], or the Mosquitto ACL file `[mqtt] embedded_acl_file`): a gateway (user
  `gw`) publishes only under `qn/v1/gw/gw/` and subscribes only to its config topic;
  `qingnuan-server` reads every gateway's topics. rumqttd 0.20 has no hook to authorise a
  publish or a subscription, so an ACL front (`front.rs`) listens on the public address
  and relays each client to rumqttd on a loopback port, dropping a denied PUBLISH (QoS 1
  still gets its PUBACK, as from Mosquitto; counted in [`DENIED_PUBLISHES`] and `/metrics`)
  and answering 0x80 for a denied subscription filter (stricter than Mosquitto 2, which
  grants it and delivers nothing). Client ids are kept per user (`<user>:<id>` inside), so
  a gateway cannot take over the server's session. Pinned by `server/tests/broker_acl.rs`
  (the same scenarios as on Mosquitto) and `broker_front.rs`. A denied last will is
  dropped from the CONNECT. rumqttd's loopback port is reachable from the host itself
  (with a valid login, but past the ACL): the host is trusted.
  Without users: anonymous, loopback only, no ACL.
- QoS 0 and 1 (rumqttd also has QoS 2, unused and untested here).
- Retained messages, and last wills (a will with `retain` becomes the retained message, as the
  agents' `status` needs).
- Persistent sessions: a client that connects with `clean_session = false` and the same
  client id gets back its subscriptions and the QoS 1 messages published while it was away.
- Nothing is written to disk: sessions, retained messages and messages not yet delivered live
  in memory and are gone when the process exits (or the broker is dropped). Stop the ingest
  (which acknowledges only after its commit) before the broker.

# Capacity
rumqttd keeps, per subscription filter, an in-memory log of [`BrokerSettings::segment_count`]
segments of [`BrokerSettings::segment_bytes`] (default 20 × 4 MiB), a message counting as
payload + topic + 4 bytes. A subscriber reads that log at its own cursor. When the segment
being written is full, the oldest is dropped: a subscriber whose cursor was in it **silently
loses** those messages (rumqttd logs a `warn` "Read cursor start jumped"). The log always
keeps the last `(count - 1) × segment_bytes` = 76 MiB ([`BrokerSettings::lag_budget_bytes`]).

Declared capacity: **a subscriber may fall 30,000 readings batches (40 readings, ~2.3 KB each,
70 MB) behind on one filter without losing any**, e.g. 500 batches/s (20,000 readings/s, above
a whole city's 17k/s) during 60 s of subscriber stall; the same holds for a persistent session
while it is disconnected. `server/tests/embedded_broker.rs` proves it: 20,000 batches pushed
as fast as the broker acks to a live subscriber, 30,000 to a session that is away for all of
them, none lost; and a log sized below the backlog does lose (the hazard is real).
Memory follows: each filter with traffic grows to its budget (80 MiB at most) and stays there
(the log is not trimmed once subscribers have read it).

# Limitations of rumqttd 0.20 (found reading its source, pinned by tests)
- A subscription receives at most **100 retained messages** at QoS 1 (its fixed window of
  unacknowledged messages; the rest are dropped, `routing.rs` "drop the excess ones"); at QoS 0
  the limit is 200. A wildcard `qn/v1/gw/+/status` over more gateways than that misses some.
- It cannot report the port it bound, so for port 0 we bind a free port, release it and hand
  it to rumqttd; another process can take it in between. rumqttd's bind then fails with
  `AddrInUse` (we see it: the bind happens on the first poll of its accept loop) and we retry
  with a new port, up to [`BIND_ATTEMPTS`] times.
- Its router thread cannot be stopped (it holds a sender of its own channel, so it never sees
  the channel close). [`EmbeddedBroker::shutdown`] closes the listener and every connection;
  the router thread then stays blocked on its empty channel, using no CPU, with its buffered
  messages in memory until the process exits. It does not keep the process alive: Rust exits
  when `main` returns, without joining threads.
- Its per-connection logs call a clean disconnect an `error`; they run on our listener thread
  with a thread-local no-op subscriber unless [`BrokerSettings::log_connections`]. The router
  thread logs to the global subscriber (`info` per connect and subscribe, `warn` on loss): add
  [`LOG_DIRECTIVE`] to the binary's `EnvFilter`. No global subscriber is installed here.
*/

mod acl;
mod config;
mod front;
mod passwd;

pub use acl::{Acl, ClientAcl, DEPLOY_ACL};
pub use front::{DENIED_PUBLISHES, DENIED_SUBSCRIPTIONS};
pub use passwd::Passwd;

pub use config::{
    BrokerSettings, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PACKET_BYTES, DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_COUNT,
};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

/// The ACL of `run`'s embedded broker: `[mqtt] embedded_acl_file`, or [`DEPLOY_ACL`]. Checked
/// to let the server's own user (`[mqtt] username`) subscribe to what ingest does, so a user
/// the ACL does not name fails at start instead of receiving nothing.
pub fn acl_of(config: &crate::config::Config) -> Result<Acl, crate::config::ConfigError> {
    let invalid = |key, message| crate::config::ConfigError::Invalid { key, message };
    let acl = match &config.mqtt.embedded_acl_file {
        Some(path) => Acl::load(path).map_err(|m| invalid("mqtt.embedded_acl_file", m))?,
        None => Acl::parse(DEPLOY_ACL).map_err(|m| invalid("mqtt.embedded_acl_file", m))?,
    };
    let user = config.mqtt.username.clone().unwrap_or_default();
    let rules = acl.for_client(Some(&user), &config.client_id());
    for f in crate::ingest::filters(config) {
        if !rules.may_subscribe(&f) {
            return Err(invalid(
                "mqtt.username",
                format!(
                    "{user:?}: the embedded broker's ACL does not let it read {f} (name it in \
                     embedded_acl_file, or log in as qingnuan-server)"
                ),
            ));
        }
    }
    Ok(acl)
}

/// `EnvFilter` directive for the binary: keeps rumqttd's router warnings (message loss),
/// drops its per-connection `info` lines.
pub const LOG_DIRECTIVE: &str = "rumqttd=warn";

/// How many free ports [`EmbeddedBroker::start`] tries when asked for port 0.
pub const BIND_ATTEMPTS: usize = 5;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The settings are unusable (not loopback, a log smaller than rumqttd accepts, …).
    #[error("embedded broker settings: {0}")]
    Settings(String),
    /// The listen address could not be bound.
    #[error("embedded broker: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// rumqttd's listener failed for another reason, or its thread could not start.
    #[error("embedded broker: {0}")]
    Start(String),
}

/// A running embedded broker; dropping it stops it (see the module doc for what remains).
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the listener thread reports once rumqttd has tried to bind.
type Ready = Result<(), BrokerError>;

impl EmbeddedBroker {
    /// Starts rumqttd's router and an MQTT 3.1.1 listener on `settings.listen` and returns
    /// once it accepts connections. Blocks the caller for the few milliseconds that takes
    /// (threads are spawned, nothing is awaited), so it may be called from async code.
    pub fn start(settings: BrokerSettings) -> Result<EmbeddedBroker, BrokerError> {
        settings.validate().map_err(BrokerError::Settings)?;
        // With an ACL, the front takes the public address and rumqttd a loopback port.
        let front = match &settings.acl {
            Some(acl) => Some((bind_front(settings.listen)?, acl.clone())),
            None => None,
        };
        let inner_listen = match &front {
            Some(_) => SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
            None => settings.listen,
        };
        // Probe first: a taken fixed port fails here, before the router thread (which cannot
        // be stopped) exists.
        let mut addr = free_port(inner_listen)?;
        let router_tx = rumqttd::Router::new(0, settings.router()).spawn();
        let pick_port = inner_listen.port() == 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // rumqttd's router channel type is not exported, so the server is built here.
            let server = rumqttd::Server::new(
                settings.server(addr),
                router_tx.clone(),
                rumqttd::protocol::v4::V4,
            );
            let front_now = match &front {
                Some(((listener, public), acl)) => Some(Front {
                    listener: listener.try_clone().map_err(|source| BrokerError::Bind {
                        addr: *public,
                        source,
                    })?,
                    config: Arc::new(front::FrontConfig {
                        inner: addr,
                        acl: acl.clone(),
                        max_packet_bytes: settings.max_packet_bytes,
                        connect_timeout: Duration::from_millis(u64::from(
                            DEFAULT_CONNECT_TIMEOUT_MS,
                        )),
                    }),
                }),
                None => None,
            };
            match spawn_listener(server, addr, settings.log_connections, front_now) {
                Ok((stop, thread)) => {
                    debug!(%addr, "embedded MQTT broker listening");
                    return Ok(EmbeddedBroker {
                        addr: front.as_ref().map_or(addr, |((_, public), _)| *public),
                        stop: Some(stop),
                        thread: Some(thread),
                    });
                }
                Err(BrokerError::Bind { source, .. })
                    if pick_port
                        && source.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < BIND_ATTEMPTS =>
                {
                    warn!(%addr, "free port taken before the embedded broker bound it; trying another");
                    addr = free_port(inner_listen)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The address the broker listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://IP:PORT`, the form `[mqtt] url` takes.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Closes the listener and every client connection, and waits for the listener thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("embedded broker listener thread panicked");
            }
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The ACL front's listener on the public address, and that address (its real port).
fn bind_front(listen: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), BrokerError> {
    let bind = |source| BrokerError::Bind {
        addr: listen,
        source,
    };
    let l = std::net::TcpListener::bind(listen).map_err(bind)?;
    l.set_nonblocking(true).map_err(bind)?;
    let addr = l.local_addr().map_err(bind)?;
    Ok((l, addr))
}

/// The ACL front handed to the listener thread.
struct Front {
    listener: std::net::TcpListener,
    config: Arc<front::FrontConfig>,
}

/// `listen` with its port if that was free a moment ago, or with a port that was free a
/// moment ago if it is 0 (see the module doc for the race).
fn free_port(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let probe = std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })
}

/// Runs rumqttd's v4 listener on `addr` in a thread of its own with a current-thread Tokio
/// runtime (so dropping that runtime closes every connection), and waits until it has bound.
fn spawn_listener(
    server: rumqttd::Server<rumqttd::protocol::v4::V4>,
    addr: SocketAddr,
    log_connections: bool,
    front: Option<Front>,
) -> Result<(oneshot::Sender<()>, JoinHandle<()>), BrokerError> {
    let quiet = !log_connections;
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("qn-mqtt-broker".into())
        .spawn(move || {
            // Thread-local, not global: only rumqttd's connection tasks run on this thread.
            let _quiet = quiet.then(|| {
                tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default())
            });
            listen(server, addr, front, ready_tx, stop_rx);
        })
        .map_err(|e| BrokerError::Start(format!("listener thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((stop_tx, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(BrokerError::Start(
                "listener thread ended before binding".into(),
            ))
        }
    }
}

/// Body of the listener thread: bind, report, serve until `stop`.
fn listen(
    mut server: rumqttd::Server<rumqttd::protocol::v4::V4>,
    addr: SocketAddr,
    front: Option<Front>,
    ready: mpsc::Sender<Ready>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(BrokerError::Start(format!("runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let serve = server.start(rumqttd::LinkType::Remote);
        let mut serve = std::pin::pin!(serve);
        // rumqttd binds before its accept loop first waits: one poll tells bound from failed.
        let first = std::future::poll_fn(|cx| Poll::Ready(serve.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            let _ = ready.send(Err(bind_error(addr, result)));
            return;
        }
        if let Some(f) = front {
            match tokio::net::TcpListener::from_std(f.listener) {
                Ok(l) => {
                    tokio::spawn(front::serve(l, f.config));
                }
                Err(e) => {
                    let _ = ready.send(Err(BrokerError::Start(format!("ACL front: {e}"))));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        tokio::select! {
            result = serve => warn!(%addr, error = ?result.err(), "embedded MQTT broker listener stopped"),
            _ = stop => debug!(%addr, "embedded MQTT broker stopping"),
        }
    });
    // Dropping the runtime here cancels every connection task and closes its socket.
}

/// Turns rumqttd's (unnameable) listener error into ours, keeping an I/O cause's kind.
fn bind_error<E: std::error::Error + 'static>(
    addr: SocketAddr,
    result: Result<(), E>,
) -> BrokerError {
    let Err(e) = result else {
        return BrokerError::Start("listener returned at once".into());
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return BrokerError::Bind {
                addr,
                source: std::io::Error::new(io.kind(), io.to_string()),
            };
        }
        cause = c.source();
    }
    BrokerError::Start(e.to_string())
}
