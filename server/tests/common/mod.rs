//! Shared helpers of the server's process tests: config files, a gateway publisher,
//! a tiny HTTP GET, and waiting for a condition.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 2025-11-01 20:00 +08:00
pub const NOV1_20: i64 = 1_761_998_400;
/// 2025-11-04 12:00 +08:00: nights Oct 31 .. Nov 3 have closed.
pub const NOW: i64 = NOV1_20 + 2 * 86_400 + 16 * 3600;

/// Writes a server config for `broker_url` with its store in `dir`; returns its path.
pub fn write_config(dir: &Path, broker_url: &str, http_port: u16, client_id: &str) -> PathBuf {
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[mqtt]\nurl = \"{broker_url}\"\nclient_id = \"{client_id}\"\n\n\
         [store]\nurl = \"sqlite://{}/server.db\"\n\n[ingest]\nfuture_tolerance_s = 300\n",
        dir.display()
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A registry of `n` households `hh-{k}` with meter `m{k}` on `gw-1`, installed 2025-10-01.
pub fn registry_csv(n: usize) -> String {
    let mut s = String::from("household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n");
    for k in 0..n {
        s.push_str(&format!(
            "hh-{k},怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,m{k},2025-10-01,,gw-1,\n"
        ));
    }
    s
}

/// Register of meter `k` at `t`: a constant draw of `1200 + 60k` W from Nov 1 20:00, so
/// exactly `20 + k` Wh a minute.
pub fn e_wh(k: usize, t: i64) -> i64 {
    1_000_000 * (k as i64 + 1) + (t - NOV1_20) / 60 * (20 + k as i64)
}

/// A readings batch as the agent sends it.
pub fn batch(gw: &str, seq: u64, readings: &[(String, i64, i64)]) -> String {
    let rs: Vec<String> = readings
        .iter()
        .map(|(m, ts, e)| {
            format!(r#"{{"meter":"{m}","ts":{ts},"e_wh":{e},"p_w":1500,"meter_ts":{ts}}}"#)
        })
        .collect();
    format!(
        r#"{{"v":1,"gw":"{gw}","seq":{seq},"boot":"test","sent":{NOW},"readings":[{}]}}"#,
        rs.join(",")
    )
}

/// A connected QoS 1 publisher whose event loop runs in the background.
pub struct Publisher {
    pub client: AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, id: &str) -> Publisher {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20).set_inflight(100);
        let (client, mut ev) = AsyncClient::new(o, 1000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let a = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Waits until the broker has acknowledged `n` publishes.
    pub async fn wait_acked(&self, n: u64) {
        let acked = self.acked.clone();
        wait_until(Duration::from_secs(30), "broker PUBACKs", || {
            let acked = acked.clone();
            async move { acked.load(std::sync::atomic::Ordering::SeqCst) >= n }
        })
        .await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `cond` every 50 ms until it holds; panics after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// `GET path` over HTTP/1.0: (status, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until the server's health says its MQTT subscriptions are acknowledged.
pub async fn wait_subscribed(port: u16) {
    wait_until(Duration::from_secs(30), "the server's MQTT subscription", || async move {
        matches!(http_get(port, "/api/v1/health").await, Some((200, body)) if body.contains("\"subscribed\""))
    })
    .await;
}
