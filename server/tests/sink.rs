//! The InfluxDB 2 sink against a real server that speaks `/api/v2/write` (VictoriaMetrics,
//! started here): readings and nights arrive with their values, tags and timestamps; an
//! outage is retried and its backlog drains after the restart; a backlog over its bound is
//! dropped oldest first and counted; and the running server wires it from `[influxdb]`.

mod common;
mod pg_support;
mod vm_support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use qingnuan_server::monitor::{Monitor, MonitorConfig};
use qingnuan_server::registry;
use qingnuan_server::sink::{self, schema, SinkStats};
use qingnuan_server::store::{IngestTx, NewReading, NightRow, StatementRow, Store};
use qingnuan_shared::clock::{ScaledClock, SharedClock};
use qingnuan_shared::policy::Policy;
use tokio::sync::watch;
use vm_support::{Series, Vm};

use common::{wait_until, NOV1_20, NOW};

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,m1,2025-10-01,,gw-1,\n\
    hh-2,怀柔区,雁栖镇,柏崖厂村,80,air_source_heat_pump,m2,2025-10-01,,gw-2,\n";

struct Rig {
    dir: tempfile::TempDir,
    store: Store,
    stats: Arc<SinkStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    /// A store with the registry and a sink writing to `url` with `extra` config lines.
    async fn start(url: &str, extra: &str) -> Rig {
        let (dir, store) = Self::store().await;
        Self::on(dir, store, url, extra).await
    }

    /// A store with the registry, no sink yet.
    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .unwrap();
        registry::import(
            &store,
            REGISTRY.as_bytes(),
            &Policy::beijing_2018(),
            "test",
            NOW,
        )
        .await
        .unwrap();
        (dir, store)
    }

    /// A sink on `store` (in `dir`).
    async fn on(dir: tempfile::TempDir, store: Store, url: &str, extra: &str) -> Rig {
        let token = dir.path().join("token");
        std::fs::write(&token, "test-token\n").unwrap();
        let table: toml::Table = toml::from_str(&format!(
            "url = \"{url}\"\norg = \"qingnuan\"\nbucket = \"qn\"\ntoken_file = \"{}\"\n\
             poll_ms = 50\nretry_max_s = 1\ntimeout_s = 5\n{extra}",
            token.display()
        ))
        .unwrap();
        let clock: SharedClock = Arc::new(ScaledClock::new(NOW * 1000, 1));
        let monitor = Monitor::new(
            store.clone(),
            Policy::beijing_2018(),
            MonitorConfig::default(),
        );
        let (stop, stopped) = watch::channel(false);
        let (stats, task) = sink::start(Some(&table), &store, &monitor, &clock, &stopped)
            .await
            .unwrap();
        Rig {
            dir,
            store,
            stats: stats.unwrap(),
            stop,
            task: task.unwrap(),
        }
    }

    async fn commit(&self, readings: Vec<NewReading>) {
        let tx = IngestTx {
            readings,
            received: NOW,
            ..Default::default()
        };
        self.store.commit_ingest(&tx, |_, _| {}).await.unwrap();
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }

    /// Stops the sink, closes the store, and starts both again (a server restart).
    async fn restart(self, url: &str, extra: &str) -> Rig {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.store.close().await;
        let store = Store::open(&format!("sqlite://{}/s.db", self.dir.path().display()))
            .await
            .unwrap();
        Self::on(self.dir, store, url, extra).await
    }
}

/// Meter `m{k}` (gateway `gw-{k}`) at minute `i` after Nov 1 20:00.
fn reading(k: usize, i: i64) -> NewReading {
    NewReading {
        meter: format!("m{k}"),
        ts: NOV1_20 + 60 * i,
        e_wh: 1_000_000 * k as i64 + 23 * i,
        e_valley_wh: (i % 2 == 0).then_some(500_000 + 11 * i),
        p_w: (i % 3 == 0).then_some(1380 + i),
        meter_ts: None,
        gateway: format!("gw-{k}"),
    }
}

/// `(series labels without __name__, ts s) -> value` of one measurement's field.
async fn points(
    vm: &Vm,
    measurement: &str,
    field: &str,
) -> BTreeMap<(Vec<(String, String)>, i64), Vec<i64>> {
    let mut out: BTreeMap<_, Vec<i64>> = BTreeMap::new();
    for Series { labels, samples } in vm.export(&format!("{measurement}_{field}")).await {
        let tags: Vec<(String, String)> = labels
            .into_iter()
            .filter(|(k, _)| k != "__name__")
            .collect();
        for (t, v) in samples {
            out.entry((tags.clone(), t / 1000)).or_default().push(v);
        }
    }
    out
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn reading_tags(k: usize) -> Vec<(String, String)> {
    let village = if k == 1 {
        "下辛庄村"
    } else {
        "柏崖厂村"
    };
    tags(&[
        ("district", "怀柔区"),
        ("village", village),
        ("gateway", &format!("gw-{k}")),
        ("household", &format!("hh-{k}")),
        ("meter", &format!("m{k}")),
    ])
}

async fn wait_count(vm: &Vm, measurement: &str, field: &str, n: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} {measurement}.{field} points"),
        || async { points(vm, measurement, field).await.len() >= n },
    )
    .await;
}

fn statement(hh: &str) -> StatementRow {
    StatementRow {
        household: hh.into(),
        season: "2025-2026".into(),
        offpeak_wh: 0,
        subsidised_wh: 0,
        cap_wh: 0,
        cap_reached_on: None,
        city_fen: 0,
        district_fen: 0,
        valley_charge_fen: 0,
        nights_actual: 0,
        nights_estimated: 0,
        nights_missing: 0,
        flags: vec![],
    }
}

fn night(name: &str, wh: i64, quality: &str) -> NightRow {
    NightRow {
        night: name.into(),
        wh,
        quality: quality.into(),
        flags: vec![],
        detail: "{}".into(),
    }
}

#[tokio::test]
async fn readings_and_nights_arrive_with_values_tags_and_timestamps() {
    let vm = Vm::start();
    let rig = Rig::start(&vm.url(), "status_interval_s = 1\n").await;
    let sent: Vec<NewReading> = (0..40)
        .flat_map(|i| [reading(1, i), reading(2, i)])
        .collect();
    rig.commit(sent.clone()).await;
    wait_count(&vm, schema::READING, "e_wh", sent.len()).await;

    let e_wh = points(&vm, schema::READING, "e_wh").await;
    let valley = points(&vm, schema::READING, "e_valley_wh").await;
    let p_w = points(&vm, schema::READING, "p_w").await;
    for r in &sent {
        let k: usize = r.meter[1..].parse().unwrap();
        let key = (reading_tags(k), r.ts);
        assert_eq!(e_wh.get(&key), Some(&vec![r.e_wh]), "{r:?}");
        assert_eq!(
            valley.get(&key).cloned(),
            r.e_valley_wh.map(|v| vec![v]),
            "{r:?}"
        );
        assert_eq!(p_w.get(&key).cloned(), r.p_w.map(|v| vec![v]), "{r:?}");
    }
    assert_eq!(e_wh.len(), sent.len(), "no point beyond what was stored");
    assert_eq!(
        valley.len(),
        sent.iter().filter(|r| r.e_valley_wh.is_some()).count()
    );

    // Nights: at their 20:00 local instant, with wh and the quality code.
    let n1 = [
        night("2025-11-01", 20_480, "actual"),
        night("2025-11-02", 19_001, "estimated"),
    ];
    rig.store
        .save_season(&statement("hh-1"), &n1, None, NOW)
        .await
        .unwrap();
    wait_count(&vm, schema::NIGHT, "wh", 2).await;
    let nt = tags(&[
        ("district", "怀柔区"),
        ("village", "下辛庄村"),
        ("household", "hh-1"),
        ("season", "2025-2026"),
    ]);
    let wh = points(&vm, schema::NIGHT, "wh").await;
    let quality = points(&vm, schema::NIGHT, "quality").await;
    assert_eq!(wh.get(&(nt.clone(), NOV1_20)), Some(&vec![20_480]));
    assert_eq!(wh.get(&(nt.clone(), NOV1_20 + 86_400)), Some(&vec![19_001]));
    assert_eq!(quality.get(&(nt.clone(), NOV1_20)), Some(&vec![2]));
    assert_eq!(quality.get(&(nt.clone(), NOV1_20 + 86_400)), Some(&vec![1]));

    // A recompute that changes one night rewrites that one (same series and instant),
    // and not the unchanged one.
    let n2 = [
        night("2025-11-01", 20_480, "actual"),
        night("2025-11-02", 19_555, "actual"),
    ];
    rig.store
        .save_season(&statement("hh-1"), &n2, None, NOW)
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the rewritten night", || async {
        points(&vm, schema::NIGHT, "wh")
            .await
            .get(&(nt.clone(), NOV1_20 + 86_400))
            .is_some_and(|v| v.contains(&19_555))
    })
    .await;
    let wh = points(&vm, schema::NIGHT, "wh").await;
    assert_eq!(
        wh.get(&(nt.clone(), NOV1_20)),
        Some(&vec![20_480]),
        "unchanged night written once"
    );
    // The counter moves after the write returns: the point can be visible first.
    wait_until(
        Duration::from_secs(10),
        "three night points counted",
        || async { rig.stats.nights_written.load(Relaxed) >= 3 },
    )
    .await;
    assert_eq!(rig.stats.nights_written.load(Relaxed), 3);

    // Village points from the monitor's state: two villages, one household each.
    wait_count(&vm, schema::VILLAGE, "households", 2).await;
    let hh = points(&vm, schema::VILLAGE, "households").await;
    let villages: Vec<String> = hh
        .keys()
        .map(|(t, _)| t.iter().find(|(k, _)| k == "village").unwrap().1.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(villages, ["下辛庄村", "柏崖厂村"]);
    assert!(hh.values().all(|v| v.iter().all(|x| *x == 1)), "{hh:?}");
    let gws = points(&vm, schema::VILLAGE, "gateways").await;
    assert!(gws.values().all(|v| v.iter().all(|x| *x == 1)), "{gws:?}");

    assert_eq!(rig.stats.readings_written.load(Relaxed), sent.len() as u64);
    assert_eq!(rig.stats.readings_dropped.load(Relaxed), 0);
    assert_eq!(rig.store.sink_backlog().await.unwrap().readings, 0);
    rig.stop().await;
}

#[tokio::test]
async fn an_outage_is_retried_and_the_backlog_drains_after_restart() {
    let mut vm = Vm::start();
    let rig = Rig::start(&vm.url(), "batch_readings = 25\nstatus_interval_s = 0\n").await;
    rig.commit((0..50).map(|i| reading(1, i)).collect()).await;
    wait_count(&vm, schema::READING, "e_wh", 50).await;

    vm.stop();
    // Mid-stream: more readings while the database is down.
    for chunk in 0..6 {
        rig.commit(
            (50 + chunk * 25..75 + chunk * 25)
                .map(|i| reading(1, i))
                .collect(),
        )
        .await;
    }
    let stats = rig.stats.clone();
    wait_until(
        Duration::from_secs(30),
        "failed writes while it is down",
        || {
            let s = stats.clone();
            async move { s.write_errors.load(Relaxed) >= 2 }
        },
    )
    .await;
    assert_eq!(
        rig.store.sink_backlog().await.unwrap().readings,
        150,
        "kept, not lost"
    );
    assert!(!rig.stats.up.load(Relaxed));

    vm.launch();
    wait_count(&vm, schema::READING, "e_wh", 200).await;
    let e_wh = points(&vm, schema::READING, "e_wh").await;
    for i in 0..200 {
        let r = reading(1, i);
        assert_eq!(
            e_wh.get(&(reading_tags(1), r.ts)).map(|v| v[0]),
            Some(r.e_wh),
            "{i}"
        );
    }
    let store = rig.store.clone();
    wait_until(Duration::from_secs(10), "an empty queue", || {
        let s = store.clone();
        async move { s.sink_backlog().await.unwrap().readings == 0 }
    })
    .await;
    assert!(rig.stats.up.load(Relaxed));
    assert_eq!(rig.stats.readings_dropped.load(Relaxed), 0);
    assert_eq!(rig.stats.readings_written.load(Relaxed), 200);
    rig.stop().await;
}

#[tokio::test]
async fn a_backlog_over_its_bound_drops_the_oldest_and_counts_them() {
    let port = qingnuan_tests::broker::free_port().unwrap();
    let mut vm = Vm::stopped_on(port);
    let rig = Rig::start(
        &vm.url(),
        "batch_readings = 40\nmax_lag_readings = 100\nstatus_interval_s = 0\n",
    )
    .await;
    rig.commit((0..250).map(|i| reading(2, i)).collect()).await;
    let stats = rig.stats.clone();
    wait_until(Duration::from_secs(30), "the oldest 150 dropped", || {
        let s = stats.clone();
        async move { s.readings_dropped.load(Relaxed) == 150 }
    })
    .await;
    assert_eq!(rig.store.sink_backlog().await.unwrap().readings, 100);
    assert_eq!(
        rig.store.sink_dropped().await.unwrap(),
        (150, 0),
        "persisted"
    );

    // A restart keeps the queue and the drop count (both in the store).
    let rig = rig
        .restart(
            &vm.url(),
            "batch_readings = 40\nmax_lag_readings = 100\nstatus_interval_s = 0\n",
        )
        .await;
    assert_eq!(rig.stats.readings_dropped.load(Relaxed), 150);
    assert_eq!(rig.store.sink_backlog().await.unwrap().readings, 100);

    vm.launch();
    wait_count(&vm, schema::READING, "e_wh", 100).await;
    let e_wh = points(&vm, schema::READING, "e_wh").await;
    let got: Vec<i64> = e_wh.keys().map(|(_, ts)| (ts - NOV1_20) / 60).collect();
    assert_eq!(got, (150..250).collect::<Vec<i64>>(), "the newest 100 only");
    // The store, the source of truth, still has all 250.
    assert_eq!(rig.store.reading_counts().await.unwrap().0, 250);
    rig.stop().await;
}

#[tokio::test]
async fn the_history_is_exported_when_the_sink_is_first_configured() {
    let vm = Vm::start();
    let (dir, store) = Rig::store().await;
    // Stored before any [influxdb]: the triggers are off, nothing is queued.
    let tx = IngestTx {
        readings: (0..30).map(|i| reading(1, i)).collect(),
        received: NOW,
        ..Default::default()
    };
    store.commit_ingest(&tx, |_, _| {}).await.unwrap();
    store
        .save_season(
            &statement("hh-1"),
            &[night("2025-11-01", 7_777, "actual")],
            None,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(store.sink_backlog().await.unwrap().readings, 0);

    let rig = Rig::on(
        dir,
        store,
        &vm.url(),
        "batch_readings = 10\nmax_lag_readings = 20\nstatus_interval_s = 0\n",
    )
    .await;
    wait_count(&vm, schema::READING, "e_wh", 20).await;
    wait_count(&vm, schema::NIGHT, "wh", 1).await;
    let e_wh = points(&vm, schema::READING, "e_wh").await;
    let got: Vec<i64> = e_wh.keys().map(|(_, ts)| (ts - NOV1_20) / 60).collect();
    assert_eq!(
        got,
        (10..30).collect::<Vec<i64>>(),
        "the newest 20 of the history"
    );
    assert_eq!(
        rig.stats.readings_dropped.load(Relaxed),
        10,
        "the older 10 counted"
    );
    let wh = points(&vm, schema::NIGHT, "wh").await;
    assert_eq!(wh.values().cloned().collect::<Vec<_>>(), [vec![7_777]]);
    rig.stop().await;
}

/// Two replicas on one PostgreSQL database, both with `[influxdb]`: one exports (it holds
/// the sink's lease), the other waits; when the first stops, the second takes over and
/// exports what arrived since. Every reading is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_one_replica_exports_and_another_takes_over() {
    let vm = Vm::start();
    let (_g, pg_url) = pg_support::url(pg_support::Kind::Postgres);
    let store_a = Store::open(&pg_url).await.unwrap();
    registry::import(
        &store_a,
        REGISTRY.as_bytes(),
        &Policy::beijing_2018(),
        "test",
        NOW,
    )
    .await
    .unwrap();
    let extra = "batch_readings = 40\nstatus_interval_s = 0\n";
    let a = Rig::on(tempfile::tempdir().unwrap(), store_a, &vm.url(), extra).await;
    let sa = a.stats.clone();
    wait_until(Duration::from_secs(10), "replica A holds the lease", || {
        let s = sa.clone();
        async move { s.active.load(Relaxed) }
    })
    .await;
    let store_b = Store::open(&pg_url).await.unwrap();
    let b = Rig::on(tempfile::tempdir().unwrap(), store_b, &vm.url(), extra).await;
    a.commit((0..100).map(|i| reading(1, i)).collect()).await;
    b.commit((0..100).map(|i| reading(2, i)).collect()).await;
    wait_count(&vm, schema::READING, "e_wh", 200).await;
    assert_eq!(a.stats.readings_written.load(Relaxed), 200);
    assert_eq!(b.stats.readings_written.load(Relaxed), 0, "B only waits");
    assert!(!b.stats.active.load(Relaxed));

    a.stop().await;
    let sb = b.stats.clone();
    wait_until(Duration::from_secs(10), "replica B takes over", || {
        let s = sb.clone();
        async move { s.active.load(Relaxed) }
    })
    .await;
    b.commit((100..150).map(|i| reading(1, i)).collect()).await;
    wait_count(&vm, schema::READING, "e_wh", 250).await;
    let store = b.store.clone();
    wait_until(Duration::from_secs(10), "an empty queue", || {
        let s = store.clone();
        async move { s.sink_backlog().await.unwrap().readings == 0 }
    })
    .await;
    assert_eq!(b.stats.readings_written.load(Relaxed), 50);
    let e_wh = points(&vm, schema::READING, "e_wh").await;
    for (k, n) in [(1, 150), (2, 100)] {
        for i in 0..n {
            let r = reading(k, i);
            assert_eq!(
                e_wh.get(&(reading_tags(k), r.ts)).map(|v| v.len()),
                Some(1),
                "m{k} minute {i}: written once"
            );
        }
    }
    b.stop().await;
}
