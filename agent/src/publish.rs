//! The uplink: one task owns the rumqttc event loop, publishes spooled batches at
//! QoS 1 in spool order, and acknowledges a spool record only on its PUBACK.
//!
//! Why one task: `EventLoop::poll` is not cancel safe (a cancelled flush can leave a
//! half-written packet), so the poll future is never dropped mid-flight; commands are
//! handled while it is pending, and the event loop's own replay queue is cleared after
//! every connection error so that replay comes from the spool alone, in order.
//!
//! Mapping PUBACKs to records: requests reach the event loop in the order we send
//! them, and each PUBLISH request yields exactly one `Outgoing::Publish(pkid)` event,
//! so a FIFO of what we sent pairs each pkid with its record.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::units::GatewayId;
use qingnuan_shared::wire::{topic, TopicKind};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batch::with_sent;
use crate::spool::{Record, Spool};
use crate::status::{self, StatusFigures};

/// The spool shared by the poller (appends) and the uplink (reads, acks). A
/// `std::sync::Mutex`, not a Tokio one: it is never held across an `.await`.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// What the poller tells the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// New batches are in the spool; publish them, but not before `hold` has passed
    /// (the random delay after a boundary sweep).
    NewBatches {
        /// Real time to wait before publishing.
        hold: Duration,
    },
    /// Publish the retained online status now.
    Heartbeat,
}

/// Uplink failures that stop the agent (only bad settings; the network never does).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker URL is not `mqtt[s]://host[:port]`.
    #[error("mqtt.url {0:?}: expected mqtt://host:port or mqtts://host:port")]
    Url(String),
    /// A password or CA file cannot be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Everything the uplink needs, resolved from the config.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// The gateway.
    pub gw: GatewayId,
    /// `mqtt://` or `mqtts://` URL.
    pub url: String,
    /// MQTT client id (stable: the broker keeps the session under it).
    pub client_id: String,
    /// Username.
    pub username: Option<String>,
    /// File with the password.
    pub password_file: Option<PathBuf>,
    /// PEM CA file for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Keep-alive, seconds.
    pub keep_alive_s: u64,
    /// Longest reconnect backoff, seconds.
    pub reconnect_max_s: u64,
    /// Meters configured (reported in status).
    pub meters: u32,
}

/// Records in flight at once (unacknowledged PUBLISHes).
const WINDOW: usize = 8;
/// Request channel capacity: the window plus status and disconnect requests.
const CHANNEL: usize = WINDOW + 8;

/// `(host, port, tls)` from `mqtt://host:port` / `mqtts://host:port`.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), PublishError> {
    let bad = || PublishError::Url(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let rest = rest.split('/').next().unwrap_or("");
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port, tls))
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, PublishError> {
    std::fs::read(path).map_err(|source| PublishError::File {
        path: path.clone(),
        source,
    })
}

/// MQTT options: persistent session, stable id, retained offline will, credentials, TLS.
pub fn mqtt_options(s: &UplinkSettings) -> Result<MqttOptions, PublishError> {
    let (host, port, tls) = parse_url(&s.url)?;
    let mut o = MqttOptions::new(s.client_id.clone(), host, port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(s.keep_alive_s.max(5)));
    o.set_inflight(u16::try_from(WINDOW * 2).unwrap_or(16));
    o.set_max_packet_size(64 * 1024 + 1024, 64 * 1024 + 1024);
    let status_topic = topic(&s.gw, TopicKind::Status);
    o.set_last_will(LastWill::new(
        status_topic.as_str(),
        status::offline(&s.gw),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &s.username {
        let password = match &s.password_file {
            Some(p) => {
                let raw = read_file(p)?;
                String::from_utf8_lossy(&raw)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            }
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if tls {
        let config = match &s.ca_file {
            Some(ca) => TlsConfiguration::Simple {
                ca: read_file(ca)?,
                alpn: None,
                client_auth: None,
            },
            None => TlsConfiguration::default(),
        };
        o.set_transport(Transport::tls_with_config(config));
    }
    Ok(o)
}

/// What a pkid will be: one of our records, or something else (status).
#[derive(Debug, Clone, Copy)]
enum Sent {
    Record(u64),
    Other,
}

struct State {
    settings: UplinkSettings,
    client: AsyncClient,
    spool: SharedSpool,
    clock: SharedClock,
    connected: bool,
    /// What we handed the client, awaiting its `Outgoing::Publish(pkid)`.
    fifo: VecDeque<Sent>,
    /// pkid → spool record, awaiting its PUBACK.
    pkids: HashMap<u16, u64>,
    /// Publishing waits until then (random delay after a boundary sweep).
    hold_until: Option<Instant>,
    /// A record taken from the spool that the request channel had no room for.
    retry: Option<Record>,
    stopping: bool,
}

impl State {
    fn figures(&self) -> StatusFigures {
        let (spool_records, spool_dropped) = match self.spool.lock() {
            Ok(s) => (s.unacked(), s.dropped()),
            Err(_) => (0, 0),
        };
        StatusFigures {
            meters: self.settings.meters,
            spool_records,
            spool_dropped,
        }
    }

    fn publish_status(&mut self) {
        if !self.connected || self.stopping {
            return;
        }
        let payload = status::online(&self.settings.gw, self.clock.now(), self.figures());
        let t = topic(&self.settings.gw, TopicKind::Status);
        if self
            .client
            .try_publish(t.as_str(), QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            self.fifo.push_back(Sent::Other);
        }
    }

    /// Hands spooled records to the client while connected, not held, and the window allows.
    fn pump(&mut self) {
        if !self.connected || self.stopping || self.hold_until.is_some_and(|h| h > Instant::now()) {
            return;
        }
        self.hold_until = None;
        loop {
            if self.pkids.len() + self.fifo.len() >= WINDOW {
                return;
            }
            let rec = match self.retry.take() {
                Some(r) => r,
                None => {
                    let next = match self.spool.lock() {
                        Ok(mut s) => s.next_unsent(),
                        Err(_) => return,
                    };
                    match next {
                        Ok(Some(r)) => r,
                        Ok(None) => return,
                        Err(e) => {
                            tracing::error!(error = %e, "spool read failed");
                            return;
                        }
                    }
                }
            };
            let payload = with_sent(&rec.data, self.clock.now());
            let t = topic(&self.settings.gw, TopicKind::Readings);
            match self
                .client
                .try_publish(t.as_str(), QoS::AtLeastOnce, false, payload)
            {
                Ok(()) => self.fifo.push_back(Sent::Record(rec.id)),
                Err(_) => {
                    self.retry = Some(rec);
                    return;
                }
            }
        }
    }

    fn command(&mut self, cmd: Uplink) {
        match cmd {
            Uplink::NewBatches { hold } => {
                if !hold.is_zero() {
                    let until = Instant::now() + hold;
                    self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
                }
                self.pump();
            }
            Uplink::Heartbeat => self.publish_status(),
        }
    }

    fn lost_connection(&mut self, eventloop: &mut EventLoop) {
        self.connected = false;
        // Replay comes from the spool, in order: drop rumqttc's own copy.
        eventloop.pending.clear();
        self.fifo.clear();
        self.pkids.clear();
        self.retry = None;
        if let Ok(mut s) = self.spool.lock() {
            s.rewind();
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                tracing::info!(url = %self.settings.url, "connected to the broker");
                self.connected = true;
                self.publish_status();
                self.pump();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Sent::Record(id)) = self.fifo.pop_front() {
                    self.pkids.insert(pkid, id);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(id) = self.pkids.remove(&ack.pkid) {
                    if let Ok(mut s) = self.spool.lock() {
                        if let Err(e) = s.ack(id) {
                            tracing::error!(error = %e, "spool ack failed");
                        }
                    }
                }
                self.pump();
            }
            _ => {}
        }
    }
}

/// Runs the uplink until `shutdown` turns true; then publishes the offline status and
/// disconnects cleanly (bounded by two seconds).
pub async fn run(
    settings: UplinkSettings,
    spool: SharedSpool,
    clock: SharedClock,
    mut commands: mpsc::Receiver<Uplink>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PublishError> {
    let options = mqtt_options(&settings)?;
    let (client, mut eventloop) = AsyncClient::new(options, CHANNEL);
    let reconnect_max = Duration::from_secs(settings.reconnect_max_s.max(1));
    let mut st = State {
        settings,
        client,
        spool,
        clock,
        connected: false,
        fifo: VecDeque::new(),
        pkids: HashMap::new(),
        hold_until: None,
        retry: None,
        stopping: false,
    };
    let mut backoff = Duration::from_millis(500);
    let mut reconnect_at: Option<Instant> = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut commands_open = true;
    loop {
        if let Some(at) = reconnect_at.take() {
            // Wait out the backoff while still taking commands (polling never waits on us).
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => break,
                    cmd = commands.recv(), if commands_open => match cmd {
                        Some(c) => st.command(c),
                        None => commands_open = false,
                    },
                    r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return Ok(()) },
                }
            }
        }
        let ev = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                let hold = st.hold_until;
                tokio::select! {
                    ev = &mut poll => break ev,
                    cmd = commands.recv(), if commands_open => match cmd {
                        Some(c) => st.command(c),
                        None => commands_open = false,
                    },
                    () = sleep_until_opt(hold) => { st.hold_until = None; st.pump(); },
                    () = sleep_until_opt(stop_deadline) => return Ok(()),
                    r = shutdown.changed(), if !st.stopping => {
                        if r.is_err() || *shutdown.borrow() {
                            st.stopping = true;
                            stop_deadline = Some(Instant::now() + Duration::from_secs(2));
                            if !st.connected {
                                return Ok(());
                            }
                            let t = topic(&st.settings.gw, TopicKind::Status);
                            let _ = st.client.try_publish(t.as_str(), QoS::AtLeastOnce, true, status::offline(&st.settings.gw));
                            let _ = st.client.try_disconnect();
                        }
                    }
                }
            }
        };
        match ev {
            Ok(Event::Outgoing(Outgoing::Disconnect)) if st.stopping => return Ok(()),
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = Duration::from_millis(500);
                }
                st.event(ev);
            }
            Err(e) => {
                if st.stopping {
                    return Ok(());
                }
                if st.connected {
                    tracing::warn!(error = %e, "broker connection lost; readings stay in the spool");
                } else {
                    log_connect_error(&e);
                }
                st.lost_connection(&mut eventloop);
                // Jittered exponential backoff: half to full of the current step.
                let jitter = rand::random::<f64>() * 0.5 + 0.5;
                reconnect_at = Some(Instant::now() + backoff.mul_f64(jitter));
                backoff = (backoff * 2).min(reconnect_max);
            }
        }
    }
}

fn log_connect_error(e: &ConnectionError) {
    tracing::warn!(error = %e, "cannot reach the broker; retrying");
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtts://broker.example").unwrap(),
            ("broker.example".into(), 8883, true)
        );
        assert_eq!(parse_url("mqtt://h").unwrap(), ("h".into(), 1883, false));
        assert!(parse_url("http://h:1").is_err());
        assert!(parse_url("mqtt://:1").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
    }
}
