//! Ingest benchmark: readings per second from gateway publishers through a real Mosquitto
//! into the store (40 readings a message), next to its two ceilings measured in the same
//! run: Mosquitto's forward rate to a plain subscriber, and a plain batched SQLite insert.
//!
//! `cargo bench -p qingnuan-server --bench ingest` (env: `BENCH_MESSAGES`, default 10000;
//! `BENCH_GATEWAYS`, default 25; `BENCH_PUBLISHERS`, default 4; `BENCH_INFLIGHT`, the
//! broker's `max_inflight_messages`, default 1000 as `deploy/mosquitto` sets it (Mosquitto's
//! own default is 20); `BENCH_BATCH`, the server's `[ingest] batch_messages`, default 500).
//! `BENCH_STORE=postgres`: the store path and the server on a PostgreSQL server the bench
//! starts (fsync on); `BENCH_REPLICAS=n`: n servers in one shared-subscription group;
//! `BENCH_NIGHT=k`: readings of the season's night k (default 0, the first);
//! `BENCH_POLL_MS`: how often the bench counts stored readings (default 100).

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qingnuan_server::config::Config;
use qingnuan_server::store::{IngestTx, NewReading, Store};
use qingnuan_shared::clock::ScaledClock;
use qingnuan_shared::policy::Policy;
use qingnuan_tests::broker::Broker;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite};

const PER_MESSAGE: usize = 40;
/// How often the bench counts the stored readings, ms (`BENCH_POLL_MS`, default 100; the
/// end time is then known to 0.1 s of a run of ~12 s). Each count scans the readings table
/// on the same two cores as the server: counting every 5 ms, as the bench did before,
/// took ~20 % off the end-to-end figure.
static POLL_MS: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| env("BENCH_POLL_MS", 100) as u64);
/// The first reading: 2025-11-01 20:00 +08:00 plus `BENCH_NIGHT` days (default 0, the
/// season's first night; a later night measures a store that resumes recomputes).
fn t0() -> i64 {
    1_761_998_400 + i64::try_from(env("BENCH_NIGHT", 0)).unwrap_or(0) * 86_400
}

/// The server's clock: 2 days and 16 hours after [`t0`].
fn now() -> i64 {
    t0() + 2 * 86_400 + 16 * 3600
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Msg {
    topic: String,
    payload: Vec<u8>,
    readings: Vec<NewReading>,
}

fn messages(n: usize, gateways: usize) -> Vec<Msg> {
    (0..n)
        .map(|i| {
            let g = i % gateways;
            let ts = t0() + (i / gateways) as i64 * 60;
            let readings: Vec<NewReading> = (0..PER_MESSAGE)
                .map(|j| {
                    let k = (g * PER_MESSAGE + j) as i64;
                    NewReading {
                        meter: format!("m{k}"),
                        ts,
                        e_wh: 1_000_000 + k * 1000 + (ts - t0()) / 60 * 25,
                        e_valley_wh: None,
                        p_w: Some(1500),
                        meter_ts: Some(ts),
                        gateway: format!("gw-{g}"),
                    }
                })
                .collect();
            let rs: Vec<String> = readings
                .iter()
                .map(|r| {
                    format!(
                        r#"{{"meter":"{}","ts":{},"e_wh":{},"p_w":1500,"meter_ts":{}}}"#,
                        r.meter, r.ts, r.e_wh, r.ts
                    )
                })
                .collect();
            let payload = format!(
                r#"{{"v":1,"gw":"gw-{g}","seq":{i},"boot":"bench","readings":[{}]}}"#,
                rs.join(",")
            )
            .into_bytes();
            Msg {
                topic: format!("qn/v1/gw/gw-{g}/readings"),
                payload,
                readings,
            }
        })
        .collect()
}

fn registry(gateways: usize) -> String {
    let mut s = String::from("household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n");
    for g in 0..gateways {
        for j in 0..PER_MESSAGE {
            let k = g * PER_MESSAGE + j;
            s.push_str(&format!(
                "hh-{k},怀柔区,雁栖镇,村{g},100,air_source_heat_pump,m{k},2025-10-01,,gw-{g},\n"
            ));
        }
    }
    s
}

/// Publishes every message from `publishers` clients in parallel; returns when all are PUBACKed.
async fn publish_all(port: u16, msgs: &Arc<Vec<Msg>>, publishers: usize) {
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let msgs = msgs.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = MqttOptions::new(format!("bench-pub-{p}"), "127.0.0.1", port);
            o.set_max_packet_size(1 << 20, 1 << 20)
                .set_inflight(100)
                .set_keep_alive(Duration::from_secs(60));
            let (client, mut ev) = AsyncClient::new(o, 1000);
            let mine: Vec<usize> = (p..msgs.len()).step_by(publishers).collect();
            let want = mine.len() as u64;
            let send = tokio::spawn({
                let msgs = msgs.clone();
                async move {
                    for i in mine {
                        if let Some(m) = msgs.get(i) {
                            let _ = client
                                .publish(
                                    m.topic.clone(),
                                    QoS::AtLeastOnce,
                                    false,
                                    m.payload.clone(),
                                )
                                .await;
                        }
                    }
                    client
                }
            });
            let mut acked = 0u64;
            while acked < want {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publisher {p}: {e}"),
                }
            }
            let client = send.await.unwrap_or_else(|e| panic!("{e}"));
            let _ = client.disconnect().await;
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn mosquitto_ceiling(msgs: &Arc<Vec<Msg>>, publishers: usize, inflight: usize) -> f64 {
    let broker = Broker::start_with(&format!("max_inflight_messages {inflight}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut o = MqttOptions::new("bench-sub", "127.0.0.1", broker.port());
    o.set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(60));
    let (client, mut ev) = AsyncClient::new(o, 100);
    client
        .subscribe("qn/v1/gw/+/readings", QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let sub = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    g.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    publish_all(broker.port(), msgs, publishers).await;
    while got.load(Ordering::Relaxed) < msgs.len() as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "subscriber got {} of {}",
            got.load(Ordering::Relaxed),
            msgs.len()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    sub.abort();
    msgs.len() as f64 / secs
}

/// Plain multi-row INSERTs of the same rows into a `(meter, ts)` key, `batch` messages a
/// transaction (the server's `batch_messages`), WAL with `synchronous = FULL` and
/// the 64 MiB page cache, as the store uses. `sorted`: each transaction's rows in key
/// order, as the store inserts them (the issue's ceiling is the rows as they come).
async fn sqlite_ceiling(msgs: &[Msg], dir: &std::path::Path, batch: usize, sorted: bool) -> f64 {
    let url = format!("sqlite://{}/plain-{sorted}.db", dir.display());
    let mut conn = SqliteConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("{e}"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .pragma("cache_size", "-65536")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("CREATE TABLE readings (meter TEXT NOT NULL, ts BIGINT NOT NULL, e_wh BIGINT NOT NULL, p_w BIGINT, meter_ts BIGINT, PRIMARY KEY (meter, ts)) WITHOUT ROWID")
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    for chunk in msgs.chunks(batch) {
        let mut tx = sqlx::Connection::begin(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rows: Vec<&NewReading> = chunk.iter().flat_map(|m| &m.readings).collect();
        if sorted {
            rows.sort_by(|a, b| (a.meter.as_bytes(), a.ts).cmp(&(b.meter.as_bytes(), b.ts)));
        }
        for part in rows.chunks(100) {
            let mut qb: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("INSERT INTO readings (meter, ts, e_wh, p_w, meter_ts) ");
            qb.push_values(part, |mut b, r| {
                b.push_bind(&r.meter)
                    .push_bind(r.ts)
                    .push_bind(r.e_wh)
                    .push_bind(r.p_w)
                    .push_bind(r.meter_ts);
            });
            qb.build()
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }
    (msgs.len() * PER_MESSAGE) as f64 / start.elapsed().as_secs_f64()
}

/// The store's own ingest transaction (dedup, conflicts, dirty marks), `batch` messages a commit.
async fn store_path(msgs: &[Msg], url: &str, gateways: usize, batch: usize) -> f64 {
    let store = Store::open(url).await.unwrap_or_else(|e| panic!("{e}"));
    qingnuan_server::registry::import(
        &store,
        registry(gateways).as_bytes(),
        &Policy::beijing_2018(),
        "bench",
        now(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    for chunk in msgs.chunks(batch) {
        let tx = IngestTx {
            readings: chunk.iter().flat_map(|m| m.readings.clone()).collect(),
            received: now(),
            ..Default::default()
        };
        store
            .commit_ingest(&tx, |r, out| {
                out.insert((format!("hh-{}", &r.meter[1..]), "2025-2026".to_string()));
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (msgs.len() * PER_MESSAGE) as f64 / start.elapsed().as_secs_f64()
}

#[allow(clippy::too_many_arguments)]
async fn end_to_end(
    msgs: &Arc<Vec<Msg>>,
    url: &str,
    replicas: usize,
    gateways: usize,
    publishers: usize,
    inflight: usize,
    batch: usize,
) -> (f64, f64) {
    let broker = Broker::start_with(&format!("max_inflight_messages {inflight}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let share = if replicas > 1 {
        "share_group = \"bench\"\n"
    } else {
        ""
    };
    let configs: Vec<Config> = (0..replicas.max(1))
        .map(|i| {
            let toml = format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"{}\"\nclient_id = \"bench-server-{i}\"\n{share}[store]\nurl = \"{url}\"\n[ingest]\nbatch_messages = {batch}\n",
                broker.url(),
            );
            Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let store = Store::open(url).await.unwrap_or_else(|e| panic!("{e}"));
    qingnuan_server::registry::import(
        &store,
        registry(gateways).as_bytes(),
        &Policy::beijing_2018(),
        "bench",
        now(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut running = Vec::new();
    for config in configs {
        running.push(
            qingnuan_server::start_with_clock(config, Arc::new(ScaledClock::new(now() * 1000, 1)))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (msgs.len() * PER_MESSAGE) as i64;
    let start = Instant::now();
    publish_all(broker.port(), msgs, publishers).await;
    let published = start.elapsed().as_secs_f64();
    let mut next_report = 5.0;
    loop {
        let (n, _) = store
            .reading_counts()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if n >= total {
            break;
        }
        if start.elapsed().as_secs_f64() > next_report {
            let dirty = store.dirty(1_000_000).await.map(|d| d.len()).unwrap_or(0);
            println!("  .. {next_report:.0} s: {n} of {total} readings stored, {dirty} pairs dirty (all published in {published:.1} s)");
            next_report += 5.0;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{n} of {total} stored"
        );
        tokio::time::sleep(Duration::from_millis(*POLL_MS)).await;
    }
    let ingest = total as f64 / start.elapsed().as_secs_f64();
    loop {
        if store
            .dirty(1)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled = start.elapsed().as_secs_f64();
    for r in running {
        r.stop().await;
    }
    (ingest, settled)
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let n = env("BENCH_MESSAGES", 10_000);
    let gateways = env("BENCH_GATEWAYS", 25);
    let publishers = env("BENCH_PUBLISHERS", 4);
    let inflight = env("BENCH_INFLIGHT", 1000);
    let batch = env("BENCH_BATCH", 500);
    let replicas = env("BENCH_REPLICAS", 1);
    let pg = (std::env::var("BENCH_STORE").as_deref() == Ok("postgres"))
        .then(|| pg_support::PgServer::start(true));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let msgs = Arc::new(messages(n, gateways));
        let readings = (n * PER_MESSAGE) as f64;
        println!(
            "ingest bench: {n} messages x {PER_MESSAGE} readings = {readings} readings, {gateways} gateways, \
             {} meters, {publishers} publishers, broker max_inflight_messages {inflight}, \
             server batch_messages {batch}, {replicas} server(s) on {}, season night {}",
            gateways * PER_MESSAGE,
            if pg.is_some() { "PostgreSQL" } else { "SQLite" },
            env("BENCH_NIGHT", 0)
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let full = std::env::var_os("BENCH_ONLY_SERVER").is_none();
        let (mut mq, mut sq, mut sorted) = (f64::NAN, f64::NAN, f64::NAN);
        if full {
            mq = mosquitto_ceiling(&msgs, publishers, inflight).await;
            println!("ceiling  mosquitto forward to a plain subscriber: {mq:>10.0} msg/s = {:>10.0} readings/s", mq * PER_MESSAGE as f64);
            let rows = batch * PER_MESSAGE;
            sq = sqlite_ceiling(&msgs, dir.path(), batch, false).await;
            println!("ceiling  plain batched SQLite insert ({rows} rows/tx): {sq:>10.0} readings/s");
            sorted = sqlite_ceiling(&msgs, dir.path(), batch, true).await;
            println!("         the same, each transaction's rows sorted by key: {sorted:>10.0} readings/s");
            let url = match &pg {
                Some(pg) => pg.fresh_url(),
                None => format!("sqlite://{}/store.db", dir.path().display()),
            };
            let st = store_path(&msgs, &url, gateways, batch).await;
            println!("store    Store::commit_ingest ({rows} rows/tx):        {st:>10.0} readings/s");
        }
        let url = match &pg {
            Some(pg) => pg.fresh_url(),
            None => format!("sqlite://{}/server.db", dir.path().display()),
        };
        let (e2e, settled) =
            end_to_end(&msgs, &url, replicas, gateways, publishers, inflight, batch).await;
        let lower = (mq * PER_MESSAGE as f64).min(sq);
        println!(
            "server   publishers -> Mosquitto -> server -> store:   {e2e:>10.0} readings/s ({:.0} % of the lower ceiling, \
             {:.0} % of the sorted insert); all statements recomputed {settled:.1} s after the first publish",
            100.0 * e2e / lower,
            100.0 * e2e / sorted.min(mq * PER_MESSAGE as f64)
        );
    });
}
