//! Server-side binding through a real Mosquitto: a gateway publishing readings for a
//! meter registered on another gateway gets them quarantined as `spoofed`, raises a
//! `spoofed_reading` alarm on itself, and no statement or night moves.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qingnuan_server::config::Config;
use qingnuan_server::registry;
use qingnuan_server::store::Store;
use qingnuan_shared::clock::ScaledClock;
use qingnuan_shared::policy::Policy;
use qingnuan_tests::broker::Broker;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400;
const H12: i64 = 12 * 3600;

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-a,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,ma,2025-10-01,,gw-a,\n\
    hh-b,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,mb,2025-10-01,,gw-b,\n";

async fn get(port: u16, path: &str) -> Value {
    let (status, body) = http_get(port, path).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_for_another_gateways_meter_are_quarantined_alarmed_and_change_nothing() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &broker.url(), 0, "qingnuan-server-spoof");
    let config = Config::load(&path).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    registry::import(
        &store,
        REGISTRY.as_bytes(),
        &Policy::beijing_2018(),
        "test",
        NOW,
    )
    .await
    .unwrap();
    // 60x: the monitor's one-minute tick comes every second; NOW + a few minutes stays
    // far from the next night.
    let clock = Arc::new(ScaledClock::new(NOW * 1000, 60));
    let running = qingnuan_server::start_with_clock(config, clock)
        .await
        .unwrap();
    let port = running.addr.port();
    wait_subscribed(port).await;
    let gw_a = Publisher::connect(broker.port(), "gw-a").await;
    let gw_b = Publisher::connect(broker.port(), "gw-b").await;
    // Night Nov 1: 12.000 kWh on ma (from gw-a) and 6.000 kWh on mb (from gw-b).
    let open = NOV1_20;
    gw_a.publish(
        "qn/v1/gw/gw-a/readings",
        batch(
            "gw-a",
            1,
            &[
                ("ma".into(), open, 100_000),
                ("ma".into(), open + H12, 112_000),
            ],
        ),
    )
    .await;
    gw_b.publish(
        "qn/v1/gw/gw-b/readings",
        batch(
            "gw-b",
            1,
            &[
                ("mb".into(), open, 200_000),
                ("mb".into(), open + H12, 206_000),
            ],
        ),
    )
    .await;
    wait_until(T, "both statements", || async move {
        let a = get(port, "/api/v1/households/hh-a/seasons/2025-2026").await;
        let b = get(port, "/api/v1/households/hh-b/seasons/2025-2026").await;
        a["offpeak_kwh"] == "12.000" && b["offpeak_kwh"] == "6.000"
    })
    .await;
    let before_a = get(port, "/api/v1/households/hh-a/seasons/2025-2026").await;
    let before_b = get(port, "/api/v1/households/hh-b/seasons/2025-2026").await;
    let nights_a = get(port, "/api/v1/households/hh-a/nights?season=2025-2026").await;
    // gw-b speaks for ma: night Nov 2 (missing so far) would get 30 kWh if believed,
    // and a value at Nov 1 08:00 would conflict.
    gw_b.publish(
        "qn/v1/gw/gw-b/readings",
        batch(
            "gw-b",
            2,
            &[
                ("ma".into(), open + DAY, 150_000),
                ("ma".into(), open + DAY + H12, 180_000),
                ("ma".into(), open + H12, 999_000),
            ],
        ),
    )
    .await;
    gw_b.wait_acked(2).await;
    wait_until(T, "three spoofed readings quarantined", || async move {
        let q = get(port, "/api/v1/quarantine").await;
        q["by_reason"]["spoofed"] == 3
    })
    .await;
    wait_until(T, "the spoofed_reading alarm on gw-b", || async move {
        let open = get(port, "/api/v1/alarms?state=open&kind=spoofed_reading").await;
        open.as_array().is_some_and(|l| {
            l.len() == 1
                && l[0]["key"] == "spoofed_reading:gw-b"
                && l[0]["gateway"] == "gw-b"
                && l[0]["reason"].as_str().is_some_and(|r| r.contains("ma"))
        })
    })
    .await;
    // A later good reading of gw-a is processed: the pipeline kept going, and whatever
    // recompute ran since has run with the spoofed readings absent.
    gw_a.publish(
        "qn/v1/gw/gw-a/readings",
        batch("gw-a", 2, &[("ma".into(), open + H12 + 3600, 113_000)]),
    )
    .await;
    let st = store.clone();
    wait_until(T, "gw-a's later reading stored", move || {
        let st = st.clone();
        async move { st.reading_counts().await.unwrap().0 == 5 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(port, "/api/v1/households/hh-a/seasons/2025-2026").await,
        before_a
    );
    assert_eq!(
        get(port, "/api/v1/households/hh-b/seasons/2025-2026").await,
        before_b
    );
    assert_eq!(
        get(port, "/api/v1/households/hh-a/nights?season=2025-2026").await,
        nights_a
    );
    assert_eq!(store.reading_counts().await.unwrap(), (5, 0), "no conflict");
    running.stop().await;
}
