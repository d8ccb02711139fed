//! `kill -9` of the server binary in the middle of a stream, then a restart: no reading
//! lost, none counted twice. Also drives the CLI (`registry import`, `run`, `export`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use qingnuan_server::store::Store;
use qingnuan_tests::broker::{free_port, Broker};

const BIN: &str = env!("CARGO_BIN_EXE_qingnuan-server");
const METERS: usize = 40;
/// One message a minute through the night of Nov 1, 20:00 .. 08:00 inclusive.
const MESSAGES: i64 = 721;

fn clock_env() -> String {
    format!("start={NOW},speed=1")
}

/// The server process, killed on drop so a failing test leaves nothing behind.
struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(config: &std::path::Path, log: &std::path::Path) -> ServerProc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("QINGNUAN_CLOCK", clock_env())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(ServerProc)
        .unwrap()
}

async fn wait_healthy(port: u16) {
    wait_subscribed(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port().unwrap();
    let config = write_config(dir.path(), &broker.url(), http_port, "qingnuan-crash-test");
    let log = dir.path().join("server.log");

    // the registry through the CLI
    let csv = dir.path().join("registry.csv");
    std::fs::write(&csv, registry_csv(METERS)).unwrap();
    let out = Command::new(BIN)
        .args(["registry", "import", "--config"])
        .arg(&config)
        .arg(&csv)
        .env("QINGNUAN_CLOCK", clock_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["households_added"], METERS as i64);

    let mut server = spawn_server(&config, &log);
    wait_healthy(http_port).await;
    let store = Store::open(&format!("sqlite://{}/server.db", dir.path().display()))
        .await
        .unwrap();

    let publisher = Publisher::connect(broker.port(), "gw-1").await;
    let mut killed_at = None;
    for i in 0..MESSAGES {
        let t = NOV1_20 + i * 60;
        let rs: Vec<_> = (0..METERS)
            .map(|k| (format!("m{k}"), t, e_wh(k, t)))
            .collect();
        publisher
            .publish("qn/v1/gw/gw-1/readings", batch("gw-1", i as u64 + 1, &rs))
            .await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        if i == MESSAGES / 3 {
            publisher.wait_acked(i as u64 + 1).await;
            // let the server take a few of them, then kill it wherever it is
            tokio::time::sleep(Duration::from_millis(30)).await;
            server.0.kill().unwrap();
            server.0.wait().unwrap();
            killed_at = Some(store.reading_counts().await.unwrap().0);
        }
    }
    publisher.wait_acked(MESSAGES as u64).await;
    let stored_at_kill = killed_at.unwrap();
    let total = MESSAGES * METERS as i64;
    assert!(
        stored_at_kill > 0 && stored_at_kill < total,
        "the kill did not land mid-stream: {stored_at_kill} of {total}"
    );

    // restart: the broker redelivers what was not acknowledged, the rest was queued
    let mut server = spawn_server(&config, &log);
    wait_healthy(http_port).await;
    let st = store.clone();
    wait_until(Duration::from_secs(60), "every reading stored", move || {
        let st = st.clone();
        async move { st.reading_counts().await.unwrap().0 == total }
    })
    .await;
    for k in 0..METERS {
        let st = store.clone();
        let hh = format!("hh-{k}");
        wait_until(
            Duration::from_secs(60),
            "statements recomputed",
            move || {
                let (st, hh) = (st.clone(), hh.clone());
                async move {
                    st.statement(&hh, "2025-2026")
                        .await
                        .unwrap()
                        .is_some_and(|s| s.offpeak_wh == 720 * (20 + k as i64))
                }
            },
        )
        .await;
    }
    assert_eq!(
        store.reading_counts().await.unwrap(),
        (total, 0),
        "no conflicts, nothing twice"
    );
    assert!(store.quarantine_counts().await.unwrap().is_empty());

    // a clean stop (SIGTERM) exits 0
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status();
    let status = server.0.wait().unwrap();
    assert!(
        status.success(),
        "server exit {status:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // the export CLI: CSV with BOM, one line per household, exact figures
    let out = Command::new(BIN)
        .args([
            "export",
            "--season",
            "2025-2026",
            "--format",
            "csv",
            "--config",
        ])
        .arg(&config)
        .env("QINGNUAN_CLOCK", clock_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..3], b"\xEF\xBB\xBF");
    let text = String::from_utf8(out.stdout[3..].to_vec()).unwrap();
    assert_eq!(text.lines().count(), METERS + 1);
    // hh-5: 720 x 25 Wh = 18.000 kWh, 1.80 + 1.80 yuan subsidy, 5.40 yuan charge
    let line = text.lines().find(|l| l.starts_with("hh-5,")).unwrap();
    assert!(
        line.contains(",2025-2026,18.000,18.000,10000.000,,1.80,1.80,5.40,1,0,"),
        "{line}"
    );
    let out = Command::new(BIN)
        .args([
            "export",
            "--season",
            "2025-2026",
            "--format",
            "json",
            "--config",
        ])
        .arg(&config)
        .env("QINGNUAN_CLOCK", clock_env())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), METERS);
    assert_eq!(v[0]["offpeak_kwh"], "14.400");
}
