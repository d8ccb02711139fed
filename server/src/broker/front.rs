//! The ACL front of the embedded broker: accepts MQTT 3.1.1 clients on the public address,
//! relays each to rumqttd on a loopback port, and drops what the [`Acl`] denies.
//!
//! Per connection: the CONNECT is read (within the connect timeout), its user name picks the
//! rules, and its client id is forwarded as `<user>:<client id>` so that no user can take
//! over another user's session (a user name never holds `:`, the password file's separator).
//! A last will on a topic the user may not write is dropped from the CONNECT.
//! Then every client packet is framed and:
//! - a PUBLISH to a topic the user may not write is dropped, counted and logged (user and
//!   topic, never the payload); QoS 1 is answered with our own PUBACK (in its place among
//!   rumqttd's, MQTT 3.1.1 §4.6) and QoS 2 with PUBREC and PUBCOMP, as Mosquitto does, so
//!   the client does not resend it forever;
//! - a SUBSCRIBE is split: denied filters get return code 0x80, the rest go to rumqttd under
//!   the same packet id and its SUBACK is merged back in order (all denied: we answer alone);
//! - anything oversized, malformed, a second CONNECT or a protocol other than 3.1.1 closes
//!   the connection (never the broker).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    Connect, PubAck, PubComp, PubRec, PubRel, Publish, SubAck, Subscribe, SubscribeFilter,
};
use rumqttc::mqttbytes::{check, Error as CodecError, FixedHeader, Protocol, QoS};
use rumqttc::SubscribeReasonCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::acl::{Acl, ClientAcl};

/// PUBLISH packets the ACL dropped, since the process started (all embedded brokers).
pub static DENIED_PUBLISHES: AtomicU64 = AtomicU64::new(0);
/// SUBSCRIBE filters the ACL refused, since the process started (all embedded brokers).
pub static DENIED_SUBSCRIPTIONS: AtomicU64 = AtomicU64::new(0);

/// Packets we answer ourselves, queued for the client while the relay writes.
const INJECT_QUEUE: usize = 64;

/// What every connection of one front shares.
#[derive(Debug)]
pub(super) struct FrontConfig {
    /// rumqttd's loopback address.
    pub inner: SocketAddr,
    /// The rules.
    pub acl: Arc<Acl>,
    /// Largest packet accepted from a client (remaining length), bytes.
    pub max_packet_bytes: usize,
    /// Time a new connection has to send its CONNECT.
    pub connect_timeout: Duration,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum FrontError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed or oversized packet: {0:?}")]
    Codec(CodecError),
    #[error("no CONNECT in time")]
    ConnectTimeout,
    #[error("first packet is not a CONNECT")]
    NotConnect,
    #[error("MQTT 5 is not served (3.1.1 only)")]
    Protocol,
    #[error("second CONNECT")]
    SecondConnect,
}

/// Accepts clients until the runtime is dropped.
pub(super) async fn serve(listener: TcpListener, cfg: Arc<FrontConfig>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, cfg).await {
                        debug!(%peer, error = %e, "MQTT client connection closed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "embedded broker accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one whole packet (fixed header + rest) into `buf` and splits it off; `None` at EOF.
async fn read_frame(
    r: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(FixedHeader, Bytes)>, FrontError> {
    loop {
        match check(buf.iter(), max) {
            Ok(h) => return Ok(Some((h, buf.split_to(h.frame_length()).freeze()))),
            Err(CodecError::InsufficientBytes(need)) => {
                buf.reserve(need.max(4096));
                if r.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => return Err(FrontError::Codec(e)),
        }
    }
}

fn encode(write: impl FnOnce(&mut BytesMut) -> Result<usize, CodecError>) -> Option<Bytes> {
    let mut out = BytesMut::new();
    write(&mut out).ok().map(|_| out.freeze())
}

async fn connection(client: TcpStream, cfg: Arc<FrontConfig>) -> Result<(), FrontError> {
    let _ = client.set_nodelay(true);
    let (mut cr, cw) = client.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(
        cfg.connect_timeout,
        read_frame(&mut cr, &mut buf, cfg.max_packet_bytes),
    )
    .await
    .map_err(|_| FrontError::ConnectTimeout)??;
    let Some((header, frame)) = first else {
        return Ok(());
    };
    if header.packet_type().map_err(FrontError::Codec)? != rumqttc::mqttbytes::PacketType::Connect {
        return Err(FrontError::NotConnect);
    }
    let mut connect = Connect::read(header, frame).map_err(FrontError::Codec)?;
    if connect.protocol != Protocol::V4 {
        return Err(FrontError::Protocol);
    }
    let user = connect
        .login
        .as_ref()
        .map(|l| l.username.clone())
        .filter(|u| !u.is_empty());
    let acl = cfg.acl.for_client(user.as_deref(), &connect.client_id);
    // The last will is a publish too: a denied one is dropped here (Mosquitto drops it when
    // it would be sent), the connection goes on.
    if let Some(will) = connect.last_will.take() {
        if acl.may_publish(&will.topic) {
            connect.last_will = Some(will);
        } else {
            DENIED_PUBLISHES.fetch_add(1, Relaxed);
            warn!(user = user.as_deref().unwrap_or(""), topic = %will.topic, "embedded broker: denied last will dropped (ACL)");
        }
    }
    connect.client_id = format!("{}:{}", user.as_deref().unwrap_or(""), connect.client_id);
    let connect = encode(|b| connect.write(b)).ok_or(FrontError::NotConnect)?;
    let broker = TcpStream::connect(cfg.inner).await?;
    let _ = broker.set_nodelay(true);
    let (br, mut bw) = broker.into_split();
    bw.write_all(&connect).await?;
    let (inject_tx, inject_rx) = mpsc::channel::<Bytes>(INJECT_QUEUE);
    let shared = Shared::default();
    let up = Upstream {
        acl,
        user: user.unwrap_or_default(),
        inject: inject_tx,
        shared: shared.clone(),
        denied_qos2: HashSet::new(),
    };
    let max = cfg.max_packet_bytes;
    tokio::select! {
        r = up.run(cr, buf, bw, max) => r,
        r = downstream(br, cw, inject_rx, shared) => r,
    }
}

/// What the two directions of a connection share.
type Shared = Arc<Mutex<Pending>>;

/// Answers that depend on what rumqttd answers.
#[derive(Debug, Default)]
struct Pending {
    /// For a SUBSCRIBE sent on narrowed: per original filter, whether it went to rumqttd.
    subacks: HashMap<u16, Vec<bool>>,
    /// QoS 1 PUBLISH packet ids in arrival order, `true` when denied (we PUBACK it): PUBACKs
    /// go out in the order the PUBLISH packets came (MQTT 3.1.1 §4.6), so ours wait for
    /// rumqttd's to the publishes before them.
    pubacks: VecDeque<(u16, bool)>,
}

/// The empty packet on the inject queue: "send the PUBACKs now due" (empty: adds nothing
/// to what is held before the CONNACK).
const FLUSH: Bytes = Bytes::new();

/// The client → broker direction.
struct Upstream {
    acl: ClientAcl,
    user: String,
    inject: mpsc::Sender<Bytes>,
    shared: Shared,
    /// QoS 2 packet ids of denied publishes, whose PUBREL we answer ourselves.
    denied_qos2: HashSet<u16>,
}

impl Upstream {
    async fn run(
        mut self,
        mut cr: OwnedReadHalf,
        mut buf: BytesMut,
        mut bw: OwnedWriteHalf,
        max: usize,
    ) -> Result<(), FrontError> {
        while let Some((header, frame)) = read_frame(&mut cr, &mut buf, max).await? {
            if let Some(out) = self.judge(header, frame).await? {
                bw.write_all(&out).await?;
            }
        }
        Ok(())
    }

    /// What to forward for one client packet (`None`: nothing).
    async fn judge(
        &mut self,
        header: FixedHeader,
        frame: Bytes,
    ) -> Result<Option<Bytes>, FrontError> {
        use rumqttc::mqttbytes::PacketType as T;
        match header.packet_type().map_err(FrontError::Codec)? {
            T::Connect => Err(FrontError::SecondConnect),
            T::Publish => {
                let p = Publish::read(header, frame.clone()).map_err(FrontError::Codec)?;
                let allowed = self.acl.may_publish(&p.topic);
                if p.qos == QoS::AtLeastOnce {
                    if let Ok(mut s) = self.shared.lock() {
                        s.pubacks.push_back((p.pkid, !allowed));
                    }
                }
                if allowed {
                    return Ok(Some(frame));
                }
                DENIED_PUBLISHES.fetch_add(1, Relaxed);
                warn!(user = %self.user, topic = %p.topic, "embedded broker: denied PUBLISH (ACL)");
                let answer = match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(FLUSH),
                    QoS::ExactlyOnce => {
                        self.denied_qos2.insert(p.pkid);
                        encode(|b| PubRec::new(p.pkid).write(b))
                    }
                };
                self.send(answer).await;
                Ok(None)
            }
            T::PubRel => {
                let r = PubRel::read(header, frame.clone()).map_err(FrontError::Codec)?;
                if self.denied_qos2.remove(&r.pkid) {
                    self.send(encode(|b| PubComp::new(r.pkid).write(b))).await;
                    return Ok(None);
                }
                Ok(Some(frame))
            }
            T::Subscribe => {
                let s = Subscribe::read(header, frame.clone()).map_err(FrontError::Codec)?;
                let allowed: Vec<bool> = s
                    .filters
                    .iter()
                    .map(|f| self.acl.may_subscribe(&f.path))
                    .collect();
                for f in s.filters.iter().zip(&allowed).filter(|(_, ok)| !**ok) {
                    DENIED_SUBSCRIPTIONS.fetch_add(1, Relaxed);
                    warn!(user = %self.user, filter = %f.0.path, "embedded broker: denied SUBSCRIBE (ACL)");
                }
                if allowed.iter().all(|ok| *ok) {
                    return Ok(Some(frame));
                }
                if !allowed.iter().any(|ok| *ok) {
                    let codes = vec![SubscribeReasonCode::Failure; allowed.len()];
                    self.send(encode(|b| SubAck::new(s.pkid, codes).write(b)))
                        .await;
                    return Ok(None);
                }
                let kept: Vec<SubscribeFilter> = s
                    .filters
                    .into_iter()
                    .zip(&allowed)
                    .filter(|(_, ok)| **ok)
                    .map(|(f, _)| f)
                    .collect();
                let narrowed = Subscribe {
                    pkid: s.pkid,
                    filters: kept,
                };
                if let Ok(mut m) = self.shared.lock() {
                    m.subacks.insert(s.pkid, allowed);
                }
                Ok(encode(|b| narrowed.write(b)))
            }
            _ => Ok(Some(frame)),
        }
    }

    async fn send(&self, packet: Option<Bytes>) {
        if let Some(p) = packet {
            // The receiver is gone only when the connection is ending anyway.
            let _ = self.inject.send(p).await;
        }
    }
}

/// The broker → client direction, with our own answers merged in whole packets.
async fn downstream(
    mut br: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut inject: mpsc::Receiver<Bytes>,
    shared: Shared,
) -> Result<(), FrontError> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    // Nothing of ours may go before rumqttd's CONNACK: until then it is held here.
    let mut connacked = false;
    let mut held = BytesMut::new();
    loop {
        tokio::select! {
            p = inject.recv() => match p {
                Some(p) if !connacked => held.extend_from_slice(&p),
                Some(p) => {
                    out.extend_from_slice(&p);
                    due_pubacks(&shared, &mut out);
                    cw.write_all(&out).await?;
                    out.clear();
                }
                None => return Ok(()),
            },
            n = br.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
                // rumqttd's packets, framed to note PUBACKs and merge SUBACKs.
                loop {
                    match check(buf.iter(), usize::MAX / 2) {
                        Ok(h) => {
                            let frame = buf.split_to(h.frame_length()).freeze();
                            out.extend_from_slice(&answer(h, frame, &shared));
                            if !connacked {
                                connacked = true;
                                out.extend_from_slice(&held);
                                held = BytesMut::new();
                            }
                            due_pubacks(&shared, &mut out);
                        }
                        Err(CodecError::InsufficientBytes(_)) => break,
                        Err(e) => return Err(FrontError::Codec(e)),
                    }
                }
                if !out.is_empty() {
                    cw.write_all(&out).await?;
                    out.clear();
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
            }
        }
    }
}

/// Our PUBACKs for denied publishes no longer waiting on an earlier one of rumqttd's.
fn due_pubacks(shared: &Shared, out: &mut BytesMut) {
    let Ok(mut s) = shared.lock() else {
        return;
    };
    while let Some(&(pkid, true)) = s.pubacks.front() {
        s.pubacks.pop_front();
        let _ = PubAck::new(pkid).write(out);
    }
}

/// One packet of rumqttd's as the client gets it: a PUBACK is noted (so ours may follow),
/// a SUBACK for a narrowed SUBSCRIBE gets 0x80 put back for the denied filters, in order.
fn answer(header: FixedHeader, frame: Bytes, shared: &Shared) -> Bytes {
    use rumqttc::mqttbytes::PacketType as T;
    match header.packet_type() {
        Ok(T::PubAck) => {
            if let (Ok(ack), Ok(mut s)) = (PubAck::read(header, frame.clone()), shared.lock()) {
                if let Some(i) = s.pubacks.iter().position(|&(p, d)| p == ack.pkid && !d) {
                    s.pubacks.remove(i);
                }
            }
            return frame;
        }
        Ok(T::SubAck) => {}
        _ => return frame,
    }
    let Ok(ack) = SubAck::read(header, frame.clone()) else {
        return frame;
    };
    let Some(allowed) = shared
        .lock()
        .ok()
        .and_then(|mut m| m.subacks.remove(&ack.pkid))
    else {
        return frame;
    };
    let mut granted = ack.return_codes.into_iter();
    let codes = allowed
        .iter()
        .map(|ok| match ok {
            true => granted.next().unwrap_or(SubscribeReasonCode::Failure),
            false => SubscribeReasonCode::Failure,
        })
        .collect();
    encode(|b| SubAck::new(ack.pkid, codes).write(b)).unwrap_or(frame)
}
