//! The store's ingest merge: repeats ignored, a different value for the same key is a
//! conflict (flagged, first kept), redelivered batches change nothing, dirty marks made
//! during a recompute survive it. Every test runs on SQLite and on PostgreSQL.

#[macro_use]
mod pg_support;

use std::collections::BTreeSet;

use qingnuan_server::engine::Engine;
use qingnuan_server::store::{IngestTx, NewReading, Quarantined, StatementRow, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::policy::Policy;

const NOV1_20: i64 = 1_761_998_400;
const NOW: i64 = NOV1_20 + 2 * 86_400 + 16 * 3600;

fn r(ts: i64, e_wh: i64) -> NewReading {
    NewReading {
        meter: "m1".into(),
        ts,
        e_wh,
        e_valley_wh: None,
        p_w: None,
        meter_ts: None,
        gateway: "gw-1".into(),
    }
}

async fn store(kind: pg_support::Kind) -> (pg_support::Guard, Store) {
    let (guard, url) = pg_support::url(kind);
    let store = Store::open(&url).await.unwrap();
    let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
               hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-1,\n";
    registry::import(&store, csv.as_bytes(), &Policy::beijing_2018(), "test", NOW)
        .await
        .unwrap();
    (guard, store)
}

fn mark(_: &NewReading, out: &mut BTreeSet<(String, String)>) {
    out.insert(("hh-1".into(), "2025-2026".into()));
}

async fn repeats_are_ignored_and_conflicts_keep_the_first_value(kind: pg_support::Kind) {
    let (_d, store) = store(kind).await;
    let tx = IngestTx {
        readings: vec![r(NOV1_20, 1000), r(NOV1_20 + 43_200, 31_000)],
        received: NOW,
        ..Default::default()
    };
    let s = store.commit_ingest(&tx, mark).await.unwrap();
    assert_eq!(
        (s.new_readings, s.repeats, s.conflicts, s.dirty),
        (2, 0, 0, 1)
    );
    // the same batch again (a redelivery): nothing new, nothing marked
    let s = store.commit_ingest(&tx, mark).await.unwrap();
    assert_eq!(
        (s.new_readings, s.repeats, s.conflicts, s.dirty),
        (0, 2, 0, 0)
    );
    // a different value for a stored key, and a repeat inside one batch
    let tx2 = IngestTx {
        readings: vec![
            r(NOV1_20 + 43_200, 99_999),
            r(NOV1_20 + 60, 1_500),
            r(NOV1_20 + 60, 1_500),
        ],
        received: NOW,
        ..Default::default()
    };
    let s = store.commit_ingest(&tx2, mark).await.unwrap();
    assert_eq!((s.new_readings, s.repeats, s.conflicts), (1, 1, 1));
    assert_eq!(store.reading_counts().await.unwrap(), (3, 1));
    let kept = store.readings_of("m1", i64::MAX).await.unwrap();
    assert_eq!(
        kept.iter().map(|k| (k.ts, k.e_wh)).collect::<Vec<_>>(),
        vec![
            (NOV1_20, 1000),
            (NOV1_20 + 60, 1500),
            (NOV1_20 + 43_200, 31_000)
        ]
    );
    // the conflict flags the night whose readings it touches, the first value is paid
    recompute::drain(&store, &mut Engine::new(Policy::beijing_2018()), NOW)
        .await
        .unwrap();
    let nights = store.nights("hh-1", "2025-2026").await.unwrap();
    let nov1 = nights.iter().find(|n| n.night == "2025-11-01").unwrap();
    assert_eq!(nov1.wh, 30_000);
    assert_eq!(nov1.flags, vec!["reading_conflict"]);
    let st = store.statement("hh-1", "2025-2026").await.unwrap().unwrap();
    assert!(
        st.flags.contains(&"reading_conflict".to_string()),
        "{:?}",
        st.flags
    );
}

async fn quarantine_rows_count_once_per_message_item(kind: pg_support::Kind) {
    let (_d, store) = store(kind).await;
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
        quarantine: vec![q(0), q(3)],
        received: NOW,
        ..Default::default()
    };
    assert_eq!(store.commit_ingest(&tx, mark).await.unwrap().quarantined, 2);
    assert_eq!(store.commit_ingest(&tx, mark).await.unwrap().quarantined, 0);
    assert_eq!(
        store.quarantine_counts().await.unwrap(),
        vec![("negative".to_string(), 2)]
    );
}

async fn a_mark_made_during_a_recompute_survives_it(kind: pg_support::Kind) {
    let (_d, store) = store(kind).await;
    recompute::drain(&store, &mut Engine::new(Policy::beijing_2018()), NOW)
        .await
        .unwrap();
    store
        .mark_dirty(&[("hh-1".into(), "2025-2026".into())])
        .await
        .unwrap();
    let (hh, season, gen) = store.dirty(10).await.unwrap().remove(0);
    // new readings arrive (a new mark) while the recompute of generation `gen` runs
    store
        .mark_dirty(&[(hh.clone(), season.clone())])
        .await
        .unwrap();
    let st = StatementRow {
        household: hh,
        season,
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
    };
    store.save_season(&st, &[], Some(gen), NOW).await.unwrap();
    assert_eq!(
        store.dirty(10).await.unwrap().len(),
        1,
        "the newer mark must survive"
    );
    let gen2 = store.dirty(10).await.unwrap()[0].2;
    store.save_season(&st, &[], Some(gen2), NOW).await.unwrap();
    assert!(store.dirty(10).await.unwrap().is_empty());
}

async fn recomputing_twice_changes_nothing(kind: pg_support::Kind) {
    let (_d, store) = store(kind).await;
    let tx = IngestTx {
        readings: vec![
            r(NOV1_20 - 900, 900),
            r(NOV1_20 + 900, 1_900),
            r(NOV1_20 + 43_200, 31_000),
        ],
        received: NOW,
        ..Default::default()
    };
    store.commit_ingest(&tx, mark).await.unwrap();
    let mut engine = Engine::new(Policy::beijing_2018());
    recompute::drain(&store, &mut engine, NOW).await.unwrap();
    let first = (
        store.statement("hh-1", "2025-2026").await.unwrap(),
        store.nights("hh-1", "2025-2026").await.unwrap(),
    );
    store
        .mark_dirty(&[("hh-1".into(), "2025-2026".into())])
        .await
        .unwrap();
    assert_eq!(recompute::drain(&store, &mut engine, NOW).await.unwrap(), 1);
    let second = (
        store.statement("hh-1", "2025-2026").await.unwrap(),
        store.nights("hh-1", "2025-2026").await.unwrap(),
    );
    assert_eq!(first, second);
    // E(20:00) = 900 + 1000 * 900 / 1800 = 1400: the night is 29.600 kWh, estimated
    let nov1 = first.1.iter().find(|n| n.night == "2025-11-01").unwrap();
    assert_eq!((nov1.wh, nov1.quality.as_str()), (29_600, "estimated"));
}

async fn marks_of_unknown_households_and_bad_seasons_are_dropped(kind: pg_support::Kind) {
    let (_d, store) = store(kind).await;
    store
        .mark_dirty(&[
            ("hh-gone".into(), "2025-2026".into()),
            ("hh-1".into(), "2025-2027".into()),
        ])
        .await
        .unwrap();
    let mut engine = Engine::new(Policy::beijing_2018());
    recompute::drain(&store, &mut engine, NOW).await.unwrap();
    assert!(store.dirty(10).await.unwrap().is_empty());
    assert!(store
        .statement("hh-gone", "2025-2026")
        .await
        .unwrap()
        .is_none());
}

/// Readings are queued for the sink exactly while it is enabled, across a reopen of the
/// store too (SQLite keeps the queueing trigger only while enabled).
async fn readings_are_queued_for_the_sink_only_while_it_is_enabled(kind: pg_support::Kind) {
    let (guard, url) = pg_support::url(kind);
    let store = Store::open(&url).await.unwrap();
    let commit = |ts: i64| IngestTx {
        readings: vec![r(ts, 1000 + ts - NOV1_20)],
        received: NOW,
        ..Default::default()
    };
    store.commit_ingest(&commit(NOV1_20), mark).await.unwrap();
    assert_eq!(store.sink_backlog().await.unwrap().readings, 0);
    store.sink_enable(1_000).await.unwrap();
    let backfilled = store.sink_backlog().await.unwrap().readings;
    assert_eq!(backfilled, 1, "history queued on enable");
    store
        .commit_ingest(&commit(NOV1_20 + 60), mark)
        .await
        .unwrap();
    assert_eq!(store.sink_backlog().await.unwrap().readings, 2);
    store.close().await;
    let store = Store::open(&url).await.unwrap();
    store
        .commit_ingest(&commit(NOV1_20 + 120), mark)
        .await
        .unwrap();
    assert_eq!(
        store.sink_backlog().await.unwrap().readings,
        3,
        "still queued after a reopen"
    );
    store.sink_disable().await.unwrap();
    store
        .commit_ingest(&commit(NOV1_20 + 180), mark)
        .await
        .unwrap();
    assert_eq!(store.sink_backlog().await.unwrap().readings, 0);
    store.close().await;
    let store = Store::open(&url).await.unwrap();
    store
        .commit_ingest(&commit(NOV1_20 + 240), mark)
        .await
        .unwrap();
    assert_eq!(
        store.sink_backlog().await.unwrap().readings,
        0,
        "not queued after a reopen"
    );
    drop(guard);
}

/// A store from before migration 0009 kept a row per night. Opened by this version, its
/// nights move to the packed form: every figure, flag and explanation still there, once.
async fn nights_stored_a_row_each_move_to_the_packed_form(kind: pg_support::Kind) {
    let (guard, url) = pg_support::url(kind);
    let backend = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    // The schema as of migration 0008, applied by sqlx from copies of those files.
    let old = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.as_str() < "0009" {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    sqlx::any::install_default_drivers();
    let connect = if backend == "sqlite" {
        format!("{url}?mode=rwc")
    } else {
        url.clone()
    };
    let pool = sqlx::AnyPool::connect(&connect).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let rows = [
        (
            "hh-1",
            "2025-11-02",
            "2025-2026",
            2_000,
            "estimated",
            "[]",
            "",
        ),
        (
            "hh-1",
            "2025-11-01",
            "2025-2026",
            1_000,
            "actual",
            r#"["tou_mismatch"]"#,
            "",
        ),
        (
            "hh-1",
            "2025-11-03",
            "2025-2026",
            0,
            "missing",
            "[]",
            r#"{"readings_set_aside":[{"ts":5}]}"#,
        ),
        ("hh-2", "2025-11-01", "2025-2026", 7, "actual", "[]", ""),
        ("hh-2", "2024-11-01", "2024-2025", 9, "actual", "[]", ""),
    ];
    for (hh, night, season, wh, quality, flags, detail) in rows {
        sqlx::query(
            "INSERT INTO nights (household, night, season, wh, quality, flags, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hh)
        .bind(night)
        .bind(season)
        .bind(wh)
        .bind(quality)
        .bind(flags)
        .bind(detail)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    for _ in 0..2 {
        // Twice: the second open finds nothing left to move and changes nothing.
        let store = Store::open(&url).await.unwrap();
        let hh1 = store.nights("hh-1", "2025-2026").await.unwrap();
        let got: Vec<_> = hh1
            .iter()
            .map(|n| {
                (
                    n.night.as_str(),
                    n.wh,
                    n.quality.as_str(),
                    n.flags.join(","),
                    n.detail.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "2025-11-01",
                    1_000,
                    "actual",
                    "tou_mismatch".to_string(),
                    ""
                ),
                ("2025-11-02", 2_000, "estimated", String::new(), ""),
                (
                    "2025-11-03",
                    0,
                    "missing",
                    String::new(),
                    r#"{"readings_set_aside":[{"ts":5}]}"#
                ),
            ]
        );
        let hh2: Vec<_> = store
            .nights("hh-2", "2024-2025")
            .await
            .unwrap()
            .into_iter()
            .map(|n| (n.night, n.wh))
            .collect();
        assert_eq!(hh2, [("2024-11-01".to_string(), 9)]);
        let since = store.nights_since("2025-2026", "2025-11-02").await.unwrap();
        let since: Vec<_> = since
            .iter()
            .map(|r| (r.0.as_str(), r.1.as_str(), r.2))
            .collect();
        assert_eq!(
            since,
            [("hh-1", "2025-11-02", 2_000), ("hh-1", "2025-11-03", 0)]
        );
        store.close().await;
    }
    drop(guard);
}

on_both_backends!(
    nights_stored_a_row_each_move_to_the_packed_form,
    readings_are_queued_for_the_sink_only_while_it_is_enabled,
    repeats_are_ignored_and_conflicts_keep_the_first_value,
    quarantine_rows_count_once_per_message_item,
    a_mark_made_during_a_recompute_survives_it,
    recomputing_twice_changes_nothing,
    marks_of_unknown_households_and_bad_seasons_are_dropped,
);
