//! A gateway's uplink as a switchable TCP relay between its agent and the broker, so a
//! test can cut one gateway's 4G link (connections dropped, new ones refused) while the
//! agent keeps reading and spooling, then restore it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A relay from a loopback port to the broker's; stops on drop.
#[derive(Debug)]
pub struct Uplink {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Uplink {
    /// Relays `127.0.0.1:{port}` to `127.0.0.1:{broker_port}`.
    pub async fn start(broker_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, list) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", broker_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                if let Ok(mut l) = list.lock() {
                    l.retain(|h| !h.is_finished());
                    l.push(relay.abort_handle());
                }
            }
        });
        Ok(Self {
            port,
            cut,
            conns,
            task,
        })
    }

    /// The URL the agent is given.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Cuts the link: every open connection is dropped and new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut l) = self.conns.lock() {
            for h in l.drain(..) {
                h.abort();
            }
        }
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
