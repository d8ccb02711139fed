//! Replicas: two and three `qingnuan-server run` processes in one shared-subscription
//! group over one PostgreSQL and one Mosquitto take a season's stream, one of them
//! `kill -9`ed in the middle (and started again, as systemd would); next to them a single
//! SQLite server subscribed to the whole stream. Every statement and night ends equal to
//! the SQLite server's and to the closed form of the synthetic registers, and every
//! replica serves the same statements over HTTP.

mod common;
mod pg_support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{http_get, wait_subscribed, wait_until, Publisher};
use qingnuan_server::store::Store;
use qingnuan_tests::broker::{free_port, Broker};

/// The server binary (`QINGNUAN_SERVER_BIN` overrides Cargo's, for a shared target
/// directory where another checkout may overwrite `target/debug/qingnuan-server`).
fn bin() -> String {
    std::env::var("QINGNUAN_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_qingnuan-server").to_string())
}
/// 2025-11-01 20:00 +08:00, night 1 (Nov 1) opens.
const NOV1_20: i64 = 1_761_998_400;
/// 2026-04-02 12:00 +08:00: the season is over.
const NOW: i64 = 1_775_102_400;
/// Nights Nov 1 .. Mar 30 are read (Oct 31 and Mar 31 are left `missing`).
const NIGHTS: i64 = 150;
const GATEWAYS: usize = 2;
const PER_GATEWAY: usize = 10;
const SEASON: &str = "2025-2026";

/// Wh meter `k` draws over the first half (20:00-02:00) and second half (02:00-08:00) of
/// night `n`, and over the following day.
fn draws(k: i64, n: i64) -> (i64, i64, i64) {
    (
        6_000 + (k * 131 + n * 17) % 4_000,
        5_000 + (k * 71 + n * 29) % 3_000,
        8_000 + (k * 13 + n * 7) % 2_000,
    )
}

/// Every read of the season in publishing order: (instant, gateway, [(meter, e_wh)]), at
/// each 20:00, 02:00 and 08:00, plus each meter's expected off-peak Wh.
#[allow(clippy::type_complexity)]
fn stream() -> (Vec<(i64, usize, Vec<(String, i64)>)>, Vec<i64>) {
    let meters = GATEWAYS * PER_GATEWAY;
    let mut e: Vec<i64> = (0..meters as i64).map(|k| 1_000_000 * (k + 1)).collect();
    let mut expected = vec![0; meters];
    let mut out = Vec::new();
    for n in 0..NIGHTS {
        let t = NOV1_20 + n * 86_400;
        let mut at = [Vec::new(), Vec::new(), Vec::new()];
        for (k, ek) in e.iter_mut().enumerate() {
            let (a, b, day) = draws(k as i64, n);
            let (at0, at1, at2) = (*ek, *ek + a, *ek + a + b);
            at[0].push(at0);
            at[1].push(at1);
            at[2].push(at2);
            expected[k] += a + b;
            *ek = at2 + day;
        }
        for (i, values) in at.iter().enumerate() {
            let ts = t + i as i64 * 6 * 3600;
            for g in 0..GATEWAYS {
                let rs = (0..PER_GATEWAY)
                    .map(|j| {
                        let k = g * PER_GATEWAY + j;
                        (format!("m{k}"), values[k])
                    })
                    .collect();
                out.push((ts, g, rs));
            }
        }
    }
    (out, expected)
}

fn payload(gw: usize, seq: usize, ts: i64, rs: &[(String, i64)]) -> String {
    let rs: Vec<String> = rs
        .iter()
        .map(|(m, e)| {
            format!(r#"{{"meter":"{m}","ts":{ts},"e_wh":{e},"p_w":1500,"meter_ts":{ts}}}"#)
        })
        .collect();
    format!(
        r#"{{"v":1,"gw":"gw-{gw}","seq":{seq},"boot":"test","sent":{ts},"readings":[{}]}}"#,
        rs.join(",")
    )
}

fn registry_csv() -> String {
    let mut s = String::from("household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n");
    for k in 0..GATEWAYS * PER_GATEWAY {
        s.push_str(&format!(
            "hh-{k},怀柔区,雁栖镇,村{},100,air_source_heat_pump,m{k},2025-10-01,,gw-{},\n",
            k / PER_GATEWAY,
            k / PER_GATEWAY
        ));
    }
    s
}

/// A server process (once started), killed on drop.
struct ServerProc {
    child: Option<Child>,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    port: u16,
}

impl ServerProc {
    /// Writes the config of server `name`; `share`: in the shared-subscription group.
    fn new(dir: &std::path::Path, name: &str, broker: &str, store: &str, share: bool) -> Self {
        let port = free_port().unwrap();
        let share = if share {
            "share_group = \"qingnuan\"\n"
        } else {
            ""
        };
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[mqtt]\nurl = \"{broker}\"\nclient_id = \"{name}\"\n{share}\n\
             [store]\nurl = \"{store}\"\n\n[ingest]\nfuture_tolerance_s = 300\n"
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        Self {
            child: None,
            config,
            log: dir.join(format!("{name}.log")),
            port,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("QINGNUAN_CLOCK", format!("start={NOW},speed=1"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn import(config: &std::path::Path, csv: &std::path::Path) {
    let out = Command::new(bin())
        .args(["registry", "import", "--config"])
        .arg(config)
        .arg(csv)
        .env("QINGNUAN_CLOCK", format!("start={NOW},speed=1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Statements and nights of every household, as text.
async fn figures(store: &Store) -> String {
    let mut out = format!(
        "{:?}\n",
        store.statements(SEASON, None, None).await.unwrap()
    );
    for k in 0..GATEWAYS * PER_GATEWAY {
        let nights = store.nights(&format!("hh-{k}"), SEASON).await.unwrap();
        out.push_str(&format!("{nights:?}\n"));
    }
    out
}

async fn settled(store: &Store, total: i64, what: &str) {
    let st = store.clone();
    wait_until(Duration::from_secs(120), what, move || {
        let st = st.clone();
        async move {
            st.reading_counts().await.unwrap().0 == total
                && st.dirty_count().await.unwrap() == 0
                && st.statements(SEASON, None, None).await.unwrap().len() == GATEWAYS * PER_GATEWAY
        }
    })
    .await;
}

async fn replicas_take_the_season(n: usize) {
    let pg = pg_support::PgServer::start(false);
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("registry.csv");
    std::fs::write(&csv, registry_csv()).unwrap();
    let sqlite_url = format!("sqlite://{}/single.db", dir.path().display());

    // The registry first, through the CLI on both stores; then the servers.
    let mut single = ServerProc::new(dir.path(), "single", &broker.url(), &sqlite_url, false);
    import(&single.config, &csv);
    single.start();
    let mut replicas: Vec<ServerProc> = (0..n)
        .map(|i| {
            ServerProc::new(
                dir.path(),
                &format!("replica-{i}"),
                &broker.url(),
                &pg.url(),
                true,
            )
        })
        .collect();
    import(&replicas[0].config, &csv);
    for r in &mut replicas {
        r.start();
    }
    wait_subscribed(single.port).await;
    for r in &replicas {
        wait_subscribed(r.port).await;
    }

    let (messages, expected) = stream();
    let publisher = Publisher::connect(broker.port(), "gw-pub").await;
    let kill_at = messages.len() / 3;
    let pg_store = Store::open(&pg.url()).await.unwrap();
    let mut stored_at_kill = None;
    for (i, (ts, g, rs)) in messages.iter().enumerate() {
        publisher
            .publish(
                &format!("qn/v1/gw/gw-{g}/readings"),
                payload(*g, i + 1, *ts, rs),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        if i == kill_at {
            publisher.wait_acked(i as u64 + 1).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            replicas[n - 1].kill_9();
            stored_at_kill = Some(pg_store.reading_counts().await.unwrap().0);
        }
    }
    publisher.wait_acked(messages.len() as u64).await;
    // What the broker held for the killed replica's session comes when it is back.
    replicas[n - 1].start();
    wait_subscribed(replicas[n - 1].port).await;

    let total = (messages.len() * PER_GATEWAY) as i64;
    let at_kill = stored_at_kill.unwrap_or(0);
    assert!(
        at_kill > 0 && at_kill < total,
        "the kill did not land mid-stream: {at_kill} of {total}"
    );
    let sqlite_store = Store::open(&sqlite_url).await.unwrap();
    settled(&sqlite_store, total, "the SQLite server settled").await;
    settled(&pg_store, total, "the replicas settled").await;
    assert_eq!(
        pg_store.reading_counts().await.unwrap(),
        (total, 0),
        "nothing twice"
    );
    assert!(pg_store.quarantine_counts().await.unwrap().is_empty());

    let want = figures(&sqlite_store).await;
    let got = figures(&pg_store).await;
    assert_eq!(
        got, want,
        "replicas on PostgreSQL and one SQLite server differ"
    );
    for (k, wh) in expected.iter().enumerate() {
        let s = pg_store
            .statement(&format!("hh-{k}"), SEASON)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.offpeak_wh, *wh, "hh-{k}");
        assert_eq!((s.nights_actual, s.nights_missing), (NIGHTS, 2), "hh-{k}");
    }

    // HTTP from any replica: the same statements as the SQLite server serves.
    let path = format!("/api/v1/seasons/{SEASON}/statements");
    let (status, want) = http_get(single.port, &path).await.unwrap();
    assert_eq!(status, 200, "{want}");
    assert!(want.contains("\"hh-7\""), "{want}");
    for r in &replicas {
        let (status, body) = http_get(r.port, &path).await.unwrap();
        assert_eq!((status, &body), (200, &want), "replica {}", r.port);
    }
    for r in &mut replicas {
        assert!(r.running(), "a replica exited; log:\n{}", r.log());
    }
    // The group shared the stream: every replica that ran throughout committed some of it.
    for r in &replicas[..n - 1] {
        let (_, metrics) = http_get(r.port, "/metrics").await.unwrap();
        let taken: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("qingnuan_ingest_messages_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            taken > 0 && taken < messages.len() as u64,
            "replica {} took {taken} of {} messages",
            r.port,
            messages.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_give_the_sqlite_statements() {
    replicas_take_the_season(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_give_the_sqlite_statements() {
    replicas_take_the_season(3).await;
}
