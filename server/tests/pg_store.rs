//! The PostgreSQL store against the SQLite one: every store call the server makes gives
//! the same answers on both (registry, ingest, quarantine, recompute, sink queues, feed
//! outbox, monitor, alarms); and several "replicas" (store handles) ingesting and
//! recomputing one PostgreSQL database at once end with the figures one SQLite store
//! computes from the same readings.

mod pg_support;

use std::collections::BTreeSet;
use std::fmt::Write;

use qingnuan_server::engine::Engine;
use qingnuan_server::monitor::{AlarmKind, Changes, Finding, Monitor, MonitorConfig, Subject};
use qingnuan_server::store::feed::NewBatch;
use qingnuan_server::store::monitor::{AlarmFilter, AlarmRow};
use qingnuan_server::store::packs;
use qingnuan_server::store::{
    HeldReading, IngestTx, NewReading, Quarantined, ReadFailure, StatusUpdate, Store,
};
use qingnuan_server::{recompute, registry, replay};
use qingnuan_shared::policy::Policy;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;
/// 2025-11-06 12:00 +08:00: nights Oct 31 .. Nov 4 have closed.
const NOW: i64 = NOV1_20 + 4 * 86_400 + 16 * 3600;
const SEASON: &str = "2025-2026";

fn registry_csv(households: usize) -> String {
    let mut s = String::from(
        "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n",
    );
    for k in 0..households {
        let village = if k % 2 == 0 { "东村" } else { "西村" };
        s.push_str(&format!(
            "hh-{k},怀柔区,雁栖镇,{village},100,air_source_heat_pump,m{k},2025-10-01,,gw-{},\n",
            k % 3
        ));
    }
    s
}

/// Quarter-hourly reads of every meter over four nights, 7 s after the quarter; meter k
/// draws (k + 1) * 100 Wh a quarter, with a glitch on m1 and a spike on m2.
fn readings(households: usize) -> Vec<NewReading> {
    let mut out = Vec::new();
    for k in 0..households {
        for q in 0..(4 * 96) {
            let ts = NOV1_20 + 7 + q * 900;
            let mut e = 1_000_000 + q * (k as i64 + 1) * 100;
            if k == 1 && q == 50 {
                e = 0;
            }
            if k == 2 && q == 120 {
                e += 900_000;
            }
            out.push(NewReading {
                meter: format!("m{k}"),
                ts,
                e_wh: e,
                e_valley_wh: (k % 2 == 0).then_some(e / 2),
                p_w: Some(1500),
                meter_ts: Some(ts + 1),
                gateway: format!("gw-{}", k % 3),
            });
        }
    }
    out
}

fn mark(r: &NewReading, out: &mut BTreeSet<(String, String)>) {
    out.insert((format!("hh-{}", &r.meter[1..]), SEASON.to_string()));
}

/// Every figure a store holds for `households`, as text.
async fn dump(store: &Store, households: usize) -> String {
    let mut out = String::new();
    for k in 0..households {
        let hh = format!("hh-{k}");
        let _ = writeln!(out, "{:?}", store.statement(&hh, SEASON).await.unwrap());
        let _ = writeln!(out, "{:?}", store.nights(&hh, SEASON).await.unwrap());
    }
    let _ = writeln!(
        out,
        "{:?}",
        store.statements(SEASON, None, None).await.unwrap()
    );
    let _ = writeln!(out, "{:?}", store.reading_counts().await.unwrap());
    out
}

/// The same calls on a store, their answers as text (instants and ids included).
async fn exercise(store: &Store) -> String {
    let mut out = String::new();
    let policy = Policy::beijing_2018();
    let sum = registry::import(store, registry_csv(6).as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let _ = writeln!(out, "import {sum:?}");
    let _ = writeln!(
        out,
        "registry_version {}",
        store.registry_version().await.unwrap()
    );
    let mut bindings = store.bindings().await.unwrap();
    bindings.sort_by(|a, b| a.meter.cmp(&b.meter));
    let _ = writeln!(out, "bindings {bindings:?}");
    let _ = writeln!(
        out,
        "gateways {:?}",
        store.gateway_ids().await.unwrap().len()
    );
    let _ = writeln!(out, "households {:?}", store.household_ids().await.unwrap());
    let _ = writeln!(out, "hh-1 {:?}", store.household("hh-1").await.unwrap());
    let _ = writeln!(out, "meters {:?}", store.meters_of("hh-1").await.unwrap());

    let all = readings(6);
    let (first, second) = all.split_at(all.len() / 2);
    let q = |item| Quarantined {
        msg_key: "k1".into(),
        item,
        topic: "qn/v1/gw/gw-1/readings".into(),
        gateway: Some("gw-1".into()),
        reason: "negative".into(),
        detail: "readings[0].e_wh: must not be negative".into(),
        payload: "{}".into(),
    };
    let tx = IngestTx {
        readings: first.to_vec(),
        failures: vec![ReadFailure {
            meter: "m3".into(),
            ts: NOV1_20,
            err: "timeout".into(),
            gateway: "gw-0".into(),
        }],
        quarantine: vec![q(0), q(-1)],
        statuses: vec![StatusUpdate {
            gateway: "gw-1".into(),
            state: "online".into(),
            json: "{}".into(),
        }],
        received: NOW,
        ..Default::default()
    };
    let _ = writeln!(
        out,
        "commit {:?}",
        store.commit_ingest(&tx, mark).await.unwrap()
    );
    let _ = writeln!(
        out,
        "again {:?}",
        store.commit_ingest(&tx, mark).await.unwrap()
    );
    let mut conflicting = first[10].clone();
    conflicting.e_wh += 1;
    let tx2 = IngestTx {
        readings: vec![conflicting, first[11].clone()],
        received: NOW,
        ..Default::default()
    };
    let _ = writeln!(
        out,
        "conflict {:?}",
        store.commit_ingest(&tx2, mark).await.unwrap()
    );
    let _ = writeln!(
        out,
        "quarantine {:?}",
        store.quarantine_counts().await.unwrap()
    );
    let _ = writeln!(
        out,
        "quarantine rows {:?}",
        store.quarantine_rows().await.unwrap()
    );
    let _ = writeln!(out, "gw-1 {:?}", store.gateway_state("gw-1").await.unwrap());
    let _ = writeln!(out, "dirty {:?}", store.dirty(100).await.unwrap().len());
    let _ = writeln!(
        out,
        "conflicts m0 {:?}",
        store.conflicts_of("m0").await.unwrap()
    );

    let mut engine = Engine::new(policy);
    let n = recompute::drain(store, &mut engine, NOW).await.unwrap();
    let _ = writeln!(out, "recomputed {n}");
    let _ = writeln!(out, "dirty_count {}", store.dirty_count().await.unwrap());

    // The sink queues, filled by the triggers.
    let _ = writeln!(out, "sink_enable {}", store.sink_enable(100).await.unwrap());
    let _ = writeln!(
        out,
        "sink_dropped {:?}",
        store.sink_dropped().await.unwrap()
    );
    let tx3 = IngestTx {
        readings: second[..50].to_vec(),
        received: NOW + 1,
        ..Default::default()
    };
    let _ = writeln!(
        out,
        "commit {:?}",
        store.commit_ingest(&tx3, mark).await.unwrap()
    );
    let _ = writeln!(out, "backlog {:?}", store.sink_backlog().await.unwrap());
    let (rows, head) = store.sink_readings(120).await.unwrap();
    let _ = writeln!(
        out,
        "sink_readings {} {:?} last {:?}",
        rows.len(),
        head.as_ref().map(|h| (h.seqs.len(), h.seqs.last())),
        rows.last()
    );
    if let Some(head) = head {
        let _ = writeln!(
            out,
            "ack {}",
            store.sink_ack_readings(&head, false).await.unwrap()
        );
    }
    let _ = writeln!(
        out,
        "bound {}",
        store.sink_bound_readings(10).await.unwrap()
    );
    let _ = writeln!(out, "backlog {:?}", store.sink_backlog().await.unwrap());
    recompute::drain(store, &mut engine, NOW).await.unwrap();
    let seasons = store.sink_seasons(100).await.unwrap();
    let _ = writeln!(out, "sink_seasons {}", seasons.len());
    if let Some((hh, season, gen)) = seasons.first() {
        let nights = store.sink_changed_nights(hh, season).await.unwrap();
        let _ = writeln!(out, "changed {nights:?}");
        store
            .sink_ack_nights(hh, season, *gen, &nights, false)
            .await
            .unwrap();
        let again = store.sink_changed_nights(hh, season).await.unwrap();
        let _ = writeln!(out, "changed after ack {}", again.len());
    }
    let _ = writeln!(out, "sink_disable {}", store.sink_disable().await.unwrap());

    // The feed outbox.
    let batch = |rev: i64| NewBatch {
        key: format!("village:a/b/c:2025-11-02:r{rev}"),
        subject: "village:a/b/c".into(),
        night: "2025-11-02".into(),
        revision: rev,
        digest: format!("d{rev}"),
        body: format!("{{\"r\":{rev}}}"),
    };
    let _ = writeln!(
        out,
        "enqueue {}",
        store
            .feed_enqueue(&[batch(0), batch(1)], NOW)
            .await
            .unwrap()
    );
    let _ = writeln!(
        out,
        "enqueue {}",
        store.feed_enqueue(&[batch(1)], NOW).await.unwrap()
    );
    let due = store.feed_due(NOW, 10).await.unwrap();
    let _ = writeln!(out, "due {due:?}");
    if let [a, b, ..] = due.as_slice() {
        store.feed_delivered(a.id, NOW + 5).await.unwrap();
        store.feed_failed(b.id, NOW + 60, "503").await.unwrap();
    }
    let _ = writeln!(out, "pending {:?}", store.feed_pending().await.unwrap());
    let _ = writeln!(
        out,
        "latest {:?}",
        store.feed_latest("2025-11-01", "2025-11-30").await.unwrap()
    );
    let _ = writeln!(out, "outbox {:?}", store.feed_outbox().await.unwrap());
    let _ = writeln!(
        out,
        "feed nights {:?}",
        store.feed_nights("2025-11-02", "2025-11-02").await.unwrap()
    );

    // Monitoring and alarms.
    let monitor = Monitor::new(
        store.clone(),
        Policy::beijing_2018(),
        MonitorConfig::default(),
    );
    let seen = IngestTx {
        readings: vec![NewReading {
            meter: "m1".into(),
            ts: NOW - 60,
            e_wh: 1_000,
            e_valley_wh: None,
            p_w: Some(2_000),
            meter_ts: Some(NOW - 58),
            gateway: "gw-1".into(),
        }],
        failures: vec![ReadFailure {
            meter: "m2".into(),
            ts: NOW - 30,
            err: "timeout".into(),
            gateway: "gw-1".into(),
        }],
        received: NOW,
        ..Default::default()
    };
    monitor.on_ingest(&seen, &[]).await.unwrap();
    monitor.on_ingest(&seen, &[]).await.unwrap();
    let _ = writeln!(
        out,
        "monitor {:?}",
        store.monitor_gateways(None).await.unwrap()
    );
    let _ = writeln!(
        out,
        "monitor {:?}",
        store.monitor_meters(Some(&["m1".into()])).await.unwrap()
    );
    let finding = |key: &str| Finding {
        key: key.into(),
        kind: AlarmKind::MeterSilent,
        subject: Subject {
            household: Some("hh-1".into()),
            meter: Some("m1".into()),
            ..Default::default()
        },
        reason: "silent".into(),
    };
    let open = Changes {
        open: vec![finding("a"), finding("b")],
        ..Default::default()
    };
    store.apply_alarm_changes(&open, NOW).await.unwrap();
    store.apply_alarm_changes(&open, NOW + 1).await.unwrap(); // already open: nothing
    let clear = Changes {
        clear: vec!["a".into()],
        ..Default::default()
    };
    store.apply_alarm_changes(&clear, NOW + 2).await.unwrap();
    store.apply_alarm_changes(&open, NOW + 3).await.unwrap(); // `a` again: a new row
    let filter = AlarmFilter {
        limit: 10,
        ..Default::default()
    };
    // Ids order the rows; PostgreSQL's identity leaves gaps (a conflicting insert uses
    // one up), so they are compared as an order, not as numbers.
    let alarms = store.alarms(&filter).await.unwrap();
    assert!(alarms.windows(2).all(|w| w[0].id > w[1].id), "{alarms:?}");
    let alarms: Vec<_> = alarms
        .into_iter()
        .map(|a| AlarmRow { id: 0, ..a })
        .collect();
    let _ = writeln!(out, "alarms {alarms:?}");
    let _ = writeln!(out, "open {:?}", store.open_alarm_reasons().await.unwrap());
    let _ = writeln!(
        out,
        "by kind {:?}",
        store.open_alarms_by_kind().await.unwrap()
    );
    let _ = writeln!(
        out,
        "per household {:?}",
        store.open_alarm_counts().await.unwrap()
    );
    let _ = writeln!(
        out,
        "placed {:?}",
        store.placed_households().await.unwrap().len()
    );
    let _ = writeln!(
        out,
        "nights_since {:?}",
        store
            .nights_since(SEASON, "2025-11-03")
            .await
            .unwrap()
            .len()
    );
    store.set_meta("x", 7).await.unwrap();
    let _ = writeln!(
        out,
        "meta {:?} {:?}",
        store.meta("x").await.unwrap(),
        store.meta("y").await.unwrap()
    );
    let _ = writeln!(out, "audit {:?}", store.audit_log().await.unwrap());

    // Held readings (for want of a binding) and their replay after a registry change.
    let held = |meter: &str, ts: i64| HeldReading {
        reading: NewReading {
            meter: meter.into(),
            ts,
            e_wh: 1_000 + ts - NOV1_20,
            e_valley_wh: None,
            p_w: None,
            meter_ts: None,
            gateway: "gw-0".into(),
        },
        reason: "unbound_meter".into(),
    };
    let version = store.registry_version().await.unwrap();
    let tx = IngestTx {
        held: vec![
            held("m9", NOV1_20 + 60),
            held("m9", NOV1_20 + 120),
            held("m-x", NOV1_20),
        ],
        held_version: version,
        received: NOW,
        ..Default::default()
    };
    store.commit_ingest(&tx, mark).await.unwrap();
    store.commit_ingest(&tx, mark).await.unwrap();
    let _ = writeln!(out, "held {:?}", store.held_counts().await.unwrap());
    let cal = qingnuan_shared::calendar::Calendar::new(policy);
    let _ = writeln!(
        out,
        "replay {:?}",
        replay::pass(store, &cal, NOW).await.unwrap()
    );
    let csv = format!(
        "{}hh-9,怀柔区,雁栖镇,东村,100,air_source_heat_pump,m9,2025-10-01,,gw-0,\n",
        registry_csv(6)
    );
    registry::import(store, csv.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    let _ = writeln!(
        out,
        "replay {:?}",
        replay::pass(store, &cal, NOW).await.unwrap()
    );
    let _ = writeln!(
        out,
        "replay {:?}",
        replay::pass(store, &cal, NOW).await.unwrap()
    );
    let _ = writeln!(out, "held {:?}", store.held_counts().await.unwrap());
    let _ = writeln!(out, "m9 {:?}", store.readings_of("m9", NOW).await.unwrap());
    let _ = writeln!(out, "held_bound {}", store.held_bound(1).await.unwrap());
    let _ = writeln!(out, "held_bound {}", store.held_bound(0).await.unwrap());
    let _ = writeln!(out, "held {:?}", store.held_counts().await.unwrap());
    // Reading packs: everything packed, then a late reading falls into m1's pack.
    let top = packs::chunk_start(packs::chunk_of(NOW) + 1);
    let _ = writeln!(out, "pack_all {:?}", store.pack_all(top).await.unwrap());
    let _ = writeln!(out, "pack_counts {:?}", store.pack_counts().await.unwrap());
    let mut late = all[1].clone();
    late.ts += 1;
    let tx = IngestTx {
        readings: vec![late.clone()],
        received: NOW,
        ..Default::default()
    };
    let _ = writeln!(
        out,
        "late {:?}",
        store.commit_ingest(&tx, mark).await.unwrap()
    );
    for _ in 0..2 {
        let _ = writeln!(out, "pack_counts {:?}", store.pack_counts().await.unwrap());
        let (got, _) = store
            .round_readings(&[(late.meter.clone(), None)], NOW)
            .await
            .unwrap();
        let table = store.readings_of(&late.meter, NOW).await.unwrap();
        assert_eq!(got[&late.meter], table);
        let _ = writeln!(out, "round {} = {}", got[&late.meter].len(), table.len());
        let _ = writeln!(out, "pack_all {:?}", store.pack_all(top).await.unwrap());
    }
    out.push_str(&dump(store, 6).await);

    // A round's marks carry each household's meters, oldest installation first, then by
    // id (byte order on both backends).
    let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
               hh-x,怀柔区,雁栖镇,东村,100,air_source_heat_pump,b9,2025-11-01,,gw-0,\n\
               hh-x,怀柔区,雁栖镇,东村,100,air_source_heat_pump,B9,2025-11-01,,gw-1,\n\
               hh-x,怀柔区,雁栖镇,东村,100,air_source_heat_pump,z9,2025-10-01,2025-11-01,gw-1,\n";
    registry::import(store, csv.as_bytes(), &policy, "test", NOW)
        .await
        .unwrap();
    store
        .mark_dirty(&[("hh-x".into(), SEASON.into())])
        .await
        .unwrap();
    for m in store.round_marks(100, None).await.unwrap() {
        let meters: Vec<_> = m
            .meters
            .iter()
            .map(|r| (&r.meter, r.valid_from, r.valid_to, &r.gateway))
            .collect();
        let _ = writeln!(out, "round_mark {} {meters:?}", m.mark.household);
    }
    out
}

#[tokio::test]
async fn every_store_call_answers_the_same_on_both_backends() {
    let (_d, sqlite_url) = pg_support::url(pg_support::Kind::Sqlite);
    let (_g, pg_url) = pg_support::url(pg_support::Kind::Postgres);
    let on_sqlite = exercise(&Store::open(&sqlite_url).await.unwrap()).await;
    let on_pg = exercise(&Store::open(&pg_url).await.unwrap()).await;
    // The run did what it says (so equal answers are not two empty ones).
    for want in [
        "commit CommitSummary { new_readings: 1152, repeats: 0, conflicts: 0, quarantined: 2, dirty: 3, packs_invalidated: 0 }",
        "again CommitSummary { new_readings: 0, repeats: 1152, conflicts: 0, quarantined: 0, dirty: 0, packs_invalidated: 0 }",
        // A conflict flags the nights resting on its instant: its pair is marked.
        "conflict CommitSummary { new_readings: 0, repeats: 1, conflicts: 1, quarantined: 0, dirty: 1, packs_invalidated: 0 }",
        "sink_enable true",
        "enqueue 2\n",
        "enqueue 0\n",
        "dirty_count 0",
        "held [(\"unbound_meter\", 3)]",
        "replay ReplaySummary { admitted: 0, new_readings: 0, still_held: 0 }",
        "replay ReplaySummary { admitted: 2, new_readings: 2, still_held: 1 }",
        "held [(\"unbound_meter\", 1)]",
        "held_bound 0\nheld_bound 1\nheld []",
        "pack_counts (7, 5)\n",
        "late CommitSummary { new_readings: 1, repeats: 0, conflicts: 0, quarantined: 0, dirty: 1, packs_invalidated: 1 }",
        "pack_counts (7, 4)\nround 385 = 385\n",
        "pack_counts (7, 5)\nround 385 = 385\n",
        "round_mark hh-x [(\"z9\", 1759248000, Some(1761926400), \"gw-1\"), (\"B9\", 1761926400, None, \"gw-1\"), (\"b9\", 1761926400, None, \"gw-0\")]",
    ] {
        assert!(on_sqlite.contains(want), "{want:?} not in\n{on_sqlite}");
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (on_sqlite.lines().collect(), on_pg.lines().collect());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "SQLite and PostgreSQL differ");
    }
    assert_eq!(a.len(), b.len());
}

/// Three store handles on one PostgreSQL database (as three replicas have): two commit
/// the readings in different orders and batches, with repeats, while three recompute at
/// once; the figures end equal to one SQLite store's from the same readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replicas_end_with_the_sqlite_figures() {
    const HOUSEHOLDS: usize = 30;
    let policy = Policy::beijing_2018();
    let all = readings(HOUSEHOLDS);

    let (_d, sqlite_url) = pg_support::url(pg_support::Kind::Sqlite);
    let single = Store::open(&sqlite_url).await.unwrap();
    registry::import(
        &single,
        registry_csv(HOUSEHOLDS).as_bytes(),
        &policy,
        "t",
        NOW,
    )
    .await
    .unwrap();
    for chunk in all.chunks(2000) {
        let tx = IngestTx {
            readings: chunk.to_vec(),
            received: NOW,
            ..Default::default()
        };
        single.commit_ingest(&tx, mark).await.unwrap();
    }
    recompute::drain(&single, &mut Engine::new(policy), NOW)
        .await
        .unwrap();
    let reference = dump(&single, HOUSEHOLDS).await;

    let (_g, pg_url) = pg_support::url(pg_support::Kind::Postgres);
    let replicas: Vec<Store> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(Store::open(&pg_url).await.unwrap());
        }
        v
    };
    registry::import(
        &replicas[0],
        registry_csv(HOUSEHOLDS).as_bytes(),
        &policy,
        "t",
        NOW,
    )
    .await
    .unwrap();
    // Replica 0: forward in batches of 300; replica 1: backward in batches of 170, plus
    // every seventh reading again (redeliveries).
    let forward: Vec<NewReading> = all.clone();
    let mut backward: Vec<NewReading> = all.iter().rev().cloned().collect();
    backward.extend(all.iter().step_by(7).cloned());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (store, readings, size) in [
        (replicas[0].clone(), forward, 300),
        (replicas[1].clone(), backward, 170),
    ] {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in readings.chunks(size) {
                let tx = IngestTx {
                    readings: chunk.to_vec(),
                    received: NOW,
                    ..Default::default()
                };
                store.commit_ingest(&tx, mark).await.unwrap();
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    let mut recomputers = Vec::new();
    for store in &replicas {
        let store = store.clone();
        let done = done.clone();
        recomputers.push(tokio::spawn(async move {
            let mut engine = Engine::new(policy);
            let mut rounds = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst) == 2;
                recompute::drain(&store, &mut engine, NOW).await.unwrap();
                rounds += 1;
                if finished {
                    return rounds;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut rounds = 0;
    for r in recomputers {
        rounds += r.await.unwrap();
    }
    assert!(
        rounds > 3,
        "the recomputes ran alongside ingest ({rounds} rounds)"
    );
    assert_eq!(replicas[2].dirty_count().await.unwrap(), 0);
    let got = dump(&replicas[2], HOUSEHOLDS).await;
    assert!(reference.contains("offpeak_wh: "), "{reference}");
    assert_eq!(got, reference);
}

/// Replicas asking for work at once get disjoint rounds: a replica claims the marks it
/// takes (PostgreSQL `FOR UPDATE SKIP LOCKED`), without moving their generation; a new
/// mark frees a claimed pair for anyone at once.
#[tokio::test]
async fn replicas_claim_disjoint_rounds_of_dirty_marks() {
    let (_g, pg_url) = pg_support::url(pg_support::Kind::Postgres);
    let a = Store::open(&pg_url).await.unwrap();
    let b = Store::open(&pg_url).await.unwrap();
    let pairs: Vec<(String, String)> = (0..5)
        .map(|i| (format!("hh-{i}"), "2025-2026".to_string()))
        .collect();
    a.mark_dirty(&pairs).await.unwrap();
    let gens_before = a.dirty(10).await.unwrap();
    let took_a = a.dirty_marks(3).await.unwrap();
    let took_b = b.dirty_marks(10).await.unwrap();
    let names = |m: &[qingnuan_server::store::DirtyMark]| {
        m.iter().map(|m| m.household.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&took_a), ["hh-0", "hh-1", "hh-2"]);
    assert_eq!(names(&took_b), ["hh-3", "hh-4"], "the rest, not A's");
    assert!(
        a.dirty_marks(10).await.unwrap().is_empty(),
        "everything is claimed"
    );
    // Claiming is not marking: the generations are the ones read before.
    let mut claimed: Vec<_> = took_a
        .iter()
        .chain(&took_b)
        .map(|m| (m.household.clone(), m.season.clone(), m.gen))
        .collect();
    claimed.sort();
    assert_eq!(claimed, gens_before);
    // A new reading for hh-1 (A's) frees it, under a new generation, for whoever asks.
    b.mark_dirty_since(&[("hh-1".into(), "2025-2026".into(), NOW)])
        .await
        .unwrap();
    let again = b.dirty_marks(10).await.unwrap();
    assert_eq!(names(&again), ["hh-1"]);
    assert!(again[0].gen > took_a[1].gen);
    // Nothing is lost: every mark is still there until a save clears it.
    assert_eq!(a.dirty(10).await.unwrap().len(), 5);
}

/// Three store handles on one database (as three replicas have) fold batches of the same
/// gateway into its monitoring state at once, each inside its ingest commit: no batch is
/// lost to another's write (the rows are locked while they change), on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_fold_monitor_state_without_losing_a_batch() {
    const TASKS: i64 = 3;
    const BATCHES: i64 = 40;
    for kind in [pg_support::Kind::Sqlite, pg_support::Kind::Postgres] {
        let (_g, url) = pg_support::url(kind);
        let mut handles = Vec::new();
        for t in 0..TASKS {
            let store = Store::open(&url).await.unwrap();
            handles.push(tokio::spawn(async move {
                let monitor = Monitor::new(
                    store.clone(),
                    Policy::beijing_2018(),
                    MonitorConfig::default(),
                );
                for b in 0..BATCHES {
                    let ts = NOV1_20 + (b * TASKS + t) * 60;
                    let tx = IngestTx {
                        readings: vec![NewReading {
                            meter: "m-shared".into(),
                            ts,
                            e_wh: 1_000 + ts - NOV1_20,
                            e_valley_wh: None,
                            p_w: Some(1_500),
                            meter_ts: None,
                            gateway: "gw-1".into(),
                        }],
                        failures: vec![ReadFailure {
                            meter: format!("m-own-{t}"),
                            ts,
                            err: "timeout".into(),
                            gateway: "gw-1".into(),
                        }],
                        received: ts + 5,
                        ..Default::default()
                    };
                    let seen = [qingnuan_server::monitor::BatchSeen {
                        gateway: "gw-1".into(),
                        sent: Some(ts + 5),
                    }];
                    let fold = monitor.fold(&tx, &seen);
                    store
                        .commit_ingest_with(&tx, |_, _| {}, Some(&fold))
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let store = Store::open(&url).await.unwrap();
        let gws = store.monitor_gateways(None).await.unwrap();
        assert_eq!(gws["gw-1"].batches, (TASKS * BATCHES) as u64, "{kind:?}");
        let meters = store.monitor_meters(None).await.unwrap();
        let last = NOV1_20 + (TASKS * BATCHES - 1) * 60;
        assert_eq!(meters["m-shared"].1.last_good, Some(last), "{kind:?}");
        assert_eq!(
            meters["m-shared"].1.last_e_wh,
            Some(1_000 + last - NOV1_20),
            "{kind:?}"
        );
        for t in 0..TASKS {
            let own = &meters[&format!("m-own-{t}")].1;
            assert_eq!(own.errors["timeout"], BATCHES as u64, "{kind:?} task {t}");
            assert_eq!(
                own.consecutive_failures,
                u32::try_from(BATCHES).unwrap(),
                "{kind:?} task {t}"
            );
        }
        assert_eq!(store.reading_counts().await.unwrap().0, TASKS * BATCHES);
    }
}

/// On PostgreSQL a queue position below the highest one the sink read can commit after
/// the read (sequence values commit out of order): the sink acknowledges exactly the
/// positions it read, so that reading is exported on the next pass, not lost.
#[tokio::test]
async fn the_sink_acknowledges_exactly_the_readings_it_read() {
    use sqlx::Connection;
    let (_g, pg_url) = pg_support::url(pg_support::Kind::Postgres);
    let store = Store::open(&pg_url).await.unwrap();
    assert!(store.sink_enable(0).await.unwrap());
    let mut conn = sqlx::PgConnection::connect(&pg_url).await.unwrap();
    let mut late = conn.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO readings (meter, ts, e_wh, e_valley_wh, p_w, meter_ts, gateway, received)
         VALUES ('m-late', $1, 100, NULL, NULL, NULL, 'gw-0', $1)",
    )
    .bind(NOV1_20)
    .execute(&mut *late)
    .await
    .unwrap();
    // Drawn after the open transaction's position, committed before it.
    let tx = IngestTx {
        readings: vec![NewReading {
            meter: "m-early".into(),
            ts: NOV1_20,
            e_wh: 200,
            e_valley_wh: None,
            p_w: None,
            meter_ts: None,
            gateway: "gw-0".into(),
        }],
        received: NOV1_20,
        ..Default::default()
    };
    store.commit_ingest(&tx, |_, _| {}).await.unwrap();
    let (rows, head) = store.sink_readings(100).await.unwrap();
    let meters = |rows: &[qingnuan_server::store::SinkReading]| {
        rows.iter().map(|r| r.meter.clone()).collect::<Vec<_>>()
    };
    assert_eq!(meters(&rows), ["m-early"]);
    late.commit().await.unwrap();
    let head = head.unwrap();
    assert_eq!(store.sink_ack_readings(&head, false).await.unwrap(), 1);
    let (rows, head) = store.sink_readings(100).await.unwrap();
    assert_eq!(meters(&rows), ["m-late"], "still queued after the ack");
    assert_eq!(
        store
            .sink_ack_readings(&head.unwrap(), false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.sink_readings(100).await.unwrap().1, None);
}

/// One replica at a time holds a singleton task's lease; another takes it when the holder
/// gives it up or loses its connection (the database releases the lock with it). SQLite,
/// one process per file, always holds it.
#[tokio::test]
async fn a_lease_has_one_holder_and_passes_on_when_it_goes() {
    use qingnuan_server::store::LeaseKind;
    use sqlx::Connection;
    let (_d, sqlite_url) = pg_support::url(pg_support::Kind::Sqlite);
    let lone = Store::open(&sqlite_url).await.unwrap();
    assert!(lone.lease(LeaseKind::Sink).held().await.unwrap());

    let (_g, pg_url) = pg_support::url(pg_support::Kind::Postgres);
    let a = Store::open(&pg_url).await.unwrap();
    let b = Store::open(&pg_url).await.unwrap();
    let (mut a_sink, mut b_sink) = (a.lease(LeaseKind::Sink), b.lease(LeaseKind::Sink));
    assert!(a_sink.held().await.unwrap());
    assert!(!b_sink.held().await.unwrap(), "A holds it");
    assert!(a_sink.held().await.unwrap(), "still A's");
    let mut b_feed = b.lease(LeaseKind::Feed);
    assert!(b_feed.held().await.unwrap(), "another task's lease is free");
    b_feed.release().await;
    a_sink.release().await;
    assert!(
        b_sink.held().await.unwrap(),
        "B takes it when A gives it up"
    );
    assert!(!a_sink.held().await.unwrap());

    // B's lease connection is killed (a replica's network or process gone).
    let mut admin = sqlx::PgConnection::connect(&pg_url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        killed,
        [true],
        "B's sink lease (its feed lease was released)"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a_sink.held().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "A never took over");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        b_sink.held().await.is_err(),
        "B learns it lost the connection"
    );
    assert!(!b_sink.held().await.unwrap(), "and that A holds it now");
}
