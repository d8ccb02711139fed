//! Each agent's clock offset from the village clock, learnt from its `status` messages.
//!
//! A process started with `QINGNUAN_CLOCK=start=<now>` starts its clock a few real
//! milliseconds later than asked — minutes of simulated time at a speed-up of 3600 —
//! so the meters of a gateway must live on that gateway's clock: the offset is the
//! smallest `village now − status.ts` seen since the agent (re)started (transport only
//! ever adds to it).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::wire::{GatewayState, Status};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Unknown offset.
const UNKNOWN: i64 = i64::MIN;

/// Per-gateway offsets (village clock minus agent clock, simulated seconds).
#[derive(Debug, Clone)]
pub struct Skews {
    gateways: Arc<Vec<String>>,
    offsets: Arc<Vec<AtomicI64>>,
}

impl Skews {
    /// All unknown.
    pub fn new(gateways: &[String]) -> Self {
        Self {
            gateways: Arc::new(gateways.to_vec()),
            offsets: Arc::new(gateways.iter().map(|_| AtomicI64::new(UNKNOWN)).collect()),
        }
    }

    /// The offset of gateway `i` (0 until its agent has said where its clock is).
    pub fn offset(&self, i: usize) -> i64 {
        self.offsets
            .get(i)
            .map(|o| o.load(Ordering::SeqCst))
            .filter(|&o| o != UNKNOWN)
            .unwrap_or(0)
    }

    /// Forgets gateway `i`'s offset (its agent is about to start again).
    pub fn reset(&self, i: usize) {
        if let Some(o) = self.offsets.get(i) {
            o.store(UNKNOWN, Ordering::SeqCst);
        }
    }

    fn observe(&self, gw: &str, d: i64) {
        let Some(o) = self
            .gateways
            .iter()
            .position(|g| g == gw)
            .and_then(|i| self.offsets.get(i))
        else {
            return;
        };
        let _ = o.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
            (cur == UNKNOWN || d < cur).then_some(d)
        });
    }

    /// Follows `qn/v1/gw/+/status` on the broker at `port` until the returned task is aborted.
    pub async fn follow(
        &self,
        port: u16,
        clock: SharedClock,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut o = MqttOptions::new(
            format!("skew-{:08x}", rand::random::<u32>()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut ev) = AsyncClient::new(o, 16);
        let me = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe("qn/v1/gw/+/status", QoS::AtMostOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    // A retained copy is an old message: only live ones tell the clock.
                    Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                        let now = clock.now();
                        if let Ok(st) = serde_json::from_slice::<Status>(&p.payload) {
                            if let (GatewayState::Online, Some(ts)) = (st.state, st.ts) {
                                me.observe(st.gw.as_str(), now - ts);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx).await.ok();
        Ok(task)
    }
}
