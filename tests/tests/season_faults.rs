//! The village through four December nights with every fault of issue 5 in one scripted
//! run: broker stopped for an hour, a gateway's uplink cut for two nights (its spool
//! replays out of order), `kill -9` of an agent in a boundary sweep, `kill -9` of the
//! server mid-stream, a meter silent for a night, a meter clock 10 minutes fast, and
//! duplicated deliveries. Afterwards nothing a meter gave is lost, nothing counts twice,
//! the statements equal the reference and the qualities say what happened.

mod season_common;

use std::collections::BTreeSet;

use std::time::{Duration, Instant};

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::UnixTime;
use qingnuan_tests::village::{Village, VillageSpec};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use season_common::{night_of, seq_gaps, server_equals_reference, unaccounted};
use serde_json::Value;

const SPEED: u32 = 3600;
const INTERVAL_S: u64 = 600;
const QUIET_S: i64 = 1800;
const REGISTRY_FROM: &str = "2025-10-01";

fn cal() -> Calendar {
    Calendar::new(Policy::beijing_2018())
}

fn night(s: &str) -> Night {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
}

/// UTC Unix seconds of local `date` at `hour`:`min`.
fn local(date: &str, hour: i64, min: i64) -> UnixTime {
    cal().local_midnight(night(date).0) + hour * 3600 + min * 60
}

/// Publishes `payloads` again on their topics (a broker or network delivering twice);
/// returns how many the broker acknowledged.
async fn republish(port: u16, payloads: &[(String, Vec<u8>)]) -> anyhow::Result<usize> {
    let mut o = MqttOptions::new("duplicator", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(o, payloads.len().max(1) + 10);
    for (topic, p) in payloads {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, p.clone())
            .await?;
    }
    let mut acked = 0;
    let end = Instant::now() + Duration::from_secs(20);
    while acked < payloads.len() && Instant::now() < end {
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), ev.poll()).await
        {
            acked += 1;
        }
    }
    let _ = client.disconnect().await;
    Ok(acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_december_of_faults_still_pays_exactly() -> anyhow::Result<()> {
    let real = Instant::now();
    let (from, until) = (local("2025-12-01", 19, 0), local("2025-12-05", 9, 0));
    let spec = VillageSpec {
        seed: 1201,
        households: 21,
        gateways: 3,
        start: from,
        days: 6,
        speed: SPEED,
        interval_s: INTERVAL_S,
        quiet_s: QUIET_S,
        meters_per_bus: 1,
        timeout_ms: 40,
        registry_from: REGISTRY_FROM.into(),
        heartbeat_s: 3600,
        warp: None,
    };
    let mut v = Village::start(&spec).await?;
    let on = |gw: &str| -> Vec<String> { v.fleet.on_gateway(gw).map(|h| h.id.clone()).collect() };
    let (gw1, gw2, gw3) = (on("gw-0001"), on("gw-0002"), on("gw-0003"));
    let meter_of = |id: &str| {
        v.fleet
            .households
            .iter()
            .find(|h| h.id == id)
            .map(|h| h.meter.clone())
            .unwrap_or_default()
    };
    let (silent_hh, fast_hh) = (gw1[0].clone(), gw2[1].clone());
    let (silent_meter, fast_meter) = (meter_of(&silent_hh), meter_of(&fast_hh));
    // A meter clock 10 minutes fast, all along; a meter silent through the night of Dec 2.
    v.board.shift_clock(&fast_meter, 600);
    let (silent_from, silent_to) = (local("2025-12-02", 19, 30), local("2025-12-03", 8, 30));
    v.board.silence(&silent_meter, silent_from, silent_to);

    // Dec 1 22:00–23:00: the broker is down.
    v.sleep_until(local("2025-12-01", 22, 0)).await;
    v.broker.stop();
    v.sleep_until(local("2025-12-01", 23, 0)).await;
    v.broker.restart()?;

    // Dec 2 12:00: gw-0003's uplink is cut for two nights.
    v.sleep_until(local("2025-12-02", 12, 0)).await;
    v.cut_uplink(2);

    // Dec 2 20:00: kill -9 of gw-0002's agent in its boundary sweep. Its meters answer
    // slowly around the boundary (20 real ms a reply, 72 simulated s), so the sweep is
    // still running when the kill lands.
    let b = local("2025-12-02", 20, 0);
    let gw2_meters: Vec<String> = gw2.iter().map(|id| meter_of(id)).collect();
    for m in &gw2_meters {
        v.board.slow(m, b - 30, b + 300, Duration::from_millis(20));
    }
    v.sleep_until(b).await;
    let swept = |v: &Village| {
        gw2_meters
            .iter()
            .any(|m| v.board.given(m).iter().any(|&t| t >= b))
    };
    let end = Instant::now() + Duration::from_secs(2);
    while !swept(&v) && Instant::now() < end {
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    v.kill9_agent(1);
    let killed_at = v.now();
    v.start_agent(1)?;

    // Dec 3 23:00: kill -9 of the server; back at Dec 4 01:00 on its store.
    v.sleep_until(local("2025-12-03", 23, 0)).await;
    v.kill9_server();
    v.sleep_until(local("2025-12-04", 1, 0)).await;
    v.start_server().await?;

    // Dec 4 12:00: gw-0003's link is back; its two nights replay after everyone's newer data.
    v.sleep_until(local("2025-12-04", 12, 0)).await;
    v.restore_uplink(2);

    // Dec 4 14:00: every gw-0001 batch so far is delivered a second time.
    v.sleep_until(local("2025-12-04", 14, 0)).await;
    let dups: Vec<(String, Vec<u8>)> = v
        .capture
        .all()
        .into_iter()
        .filter(|s| s.topic == "qn/v1/gw/gw-0001/readings")
        .map(|s| (s.topic, s.payload))
        .collect();
    let dup_readings: u64 = dups
        .iter()
        .filter_map(|(_, p)| serde_json::from_slice::<qingnuan_shared::wire::ReadingsBatch>(p).ok())
        .map(|b| b.readings.iter().filter(|r| r.e_wh.is_some()).count() as u64)
        .sum();
    let acked = republish(v.broker.port(), &dups).await?;
    assert_eq!(acked, dups.len(), "the broker took every duplicate");

    v.sleep_until(until).await;
    let stop_at = v.now();
    v.stop_agents();
    v.settle(Duration::from_millis(500), Duration::from_secs(10))
        .await;
    let registry_from = cal().local_midnight(night(REGISTRY_FROM).0);
    let got = server_equals_reference(&v, registry_from, Duration::from_secs(60)).await?;

    // Duplicates were seen and ignored (the counters restarted with the server at Dec 4 01:00).
    let (_, q) = v.get_json("/api/v1/quarantine").await?;
    let repeats = q["since_start"]["repeats"].as_u64().unwrap_or(0);
    assert!(
        repeats >= dup_readings,
        "repeats {repeats} < duplicated readings {dup_readings}: {q}"
    );
    assert_eq!(q["since_start"]["conflicts"].as_u64(), Some(0), "{q}");

    // The replay really came out of order: a gw-0003 batch older than a gw-0001 batch arrived after it.
    let batches = v.published();
    let newest_gw1_before = batches
        .iter()
        .take_while(|b| {
            !(b.gw.as_str() == "gw-0003"
                && b.readings
                    .iter()
                    .any(|r| r.ts < local("2025-12-04", 0, 0) && r.ts > local("2025-12-02", 12, 0)))
        })
        .filter(|b| b.gw.as_str() == "gw-0001")
        .filter_map(|b| b.readings.iter().map(|r| r.ts).max())
        .max()
        .unwrap_or(0);
    assert!(
        newest_gw1_before >= local("2025-12-04", 11, 0),
        "gw-0003's spool replayed before newer gw-0001 data arrived"
    );

    // Nights: exact where boundary reads exist, estimated where the meter was silent.
    let nights = ["2025-12-01", "2025-12-02", "2025-12-03", "2025-12-04"];
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut not_actual = Vec::new();
    for h in &v.fleet.households {
        let (st, list) = got
            .get(&h.id)
            .ok_or_else(|| anyhow::anyhow!("no figures for {}", h.id))?;
        for n in nights.iter().map(|s| night(s)) {
            let (wh, quality, _) =
                night_of(list, n).ok_or_else(|| anyhow::anyhow!("{} no night {n}", h.id))?;
            *counts.entry(quality.clone()).or_default() += 1;
            if quality != "actual" {
                not_actual.push(format!("{} {n}", h.id));
            }
            assert_ne!(quality, "missing", "{} night {n}", h.id);
            let killed_sweep = gw2.contains(&h.id) && n == night("2025-12-02");
            if h.id == silent_hh && n == night("2025-12-02") {
                assert_eq!(
                    quality, "estimated",
                    "{} night {n}: the meter was silent all night",
                    h.id
                );
            } else if !killed_sweep {
                let register = v.model.register_night_wh(h, n);
                assert_eq!(wh, register, "{} night {n} ({quality})", h.id);
                assert!((wh - h.true_night_wh(&v.fleet.calendar, n).0).abs() <= 10);
            }
        }
        if h.id == silent_hh {
            assert!(st["nights"]["estimated"].as_i64().unwrap_or(0) >= 1, "{st}");
        }
    }

    // The killed sweep never reached the spool: no gw-0002 reading from it was published.
    let from_killed_sweep = batches
        .iter()
        .filter(|bt| bt.gw.as_str() == "gw-0002")
        .flat_map(|bt| bt.readings.iter())
        .filter(|r| r.e_wh.is_some() && (b..b + 300).contains(&r.ts))
        .count();
    assert_eq!(
        from_killed_sweep, 0,
        "the kill came after gw-0002's boundary sweep was spooled"
    );

    // The silent meter's failed reads were published as such.
    let silent_errs = batches
        .iter()
        .flat_map(|b| b.readings.iter())
        .filter(|r| r.meter.as_str() == silent_meter && r.err.is_some())
        .filter(|r| (silent_from..silent_to).contains(&r.ts))
        .count();
    assert!(
        silent_errs > 0,
        "no failed reads published for the silent meter"
    );
    // The fast meter's own clock is reported 10 minutes ahead of its neighbours' (under
    // the accelerated clock every meter_ts also carries the read's own latency).
    let median_offset = |meters: &[String]| {
        let mut o: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.readings.iter())
            .filter(|r| meters.iter().any(|m| m == r.meter.as_str()))
            .filter_map(|r| r.meter_ts.map(|m| m - r.ts))
            .collect();
        o.sort_unstable();
        o.get(o.len() / 2).copied()
    };
    let others: Vec<String> = gw2_meters
        .iter()
        .filter(|m| **m != fast_meter)
        .cloned()
        .collect();
    let (fast, normal) = (
        median_offset(std::slice::from_ref(&fast_meter)),
        median_offset(&others),
    );
    let ahead = fast.zip(normal).map(|(f, n)| f - n);
    assert!(
        ahead.is_some_and(|d| (540..=660).contains(&d)),
        "fast meter {fast:?} s, others {normal:?} s"
    );
    // Nothing lost: every total-register answer before the last sweeps reached the broker,
    // except, on gw-0002, what its agent had not spooled when it was killed.
    let cutoff = stop_at.div_euclid(INTERVAL_S as i64) * INTERVAL_S as i64 - INTERVAL_S as i64 / 2;
    let gaps = seq_gaps(&v);
    assert!(gaps.is_empty(), "batches never delivered: {gaps:?}");
    let (lost, extra) = unaccounted(&v, cutoff, INTERVAL_S as i64);
    let lost_outside_kill: Vec<_> = lost
        .iter()
        .filter(|(m, t)| {
            !(gw2_meters.contains(m) && (b..=killed_at + INTERVAL_S as i64 / 2).contains(t))
        })
        .collect();
    assert!(
        lost_outside_kill.is_empty(),
        "answers never published: {lost_outside_kill:?}"
    );
    assert!(
        extra.is_empty(),
        "more readings published than answers given: {extra:?}"
    );
    let (_, alarms) = v.get_json("/api/v1/alarms?state=all").await?;
    let kinds: BTreeSet<String> = alarms
        .as_array()
        .or_else(|| alarms.get("alarms").and_then(Value::as_array))
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("kind").and_then(Value::as_str).map(String::from))
        .collect();
    // The operators see what happened: the monitor raised an alarm for each fault it watches.
    let raised = |kind: &str, field: &str, who: &str| {
        alarms
            .as_array()
            .or_else(|| alarms.get("alarms").and_then(Value::as_array))
            .into_iter()
            .flatten()
            .any(|a| a["kind"] == kind && a[field] == who)
    };
    assert!(
        raised("meter_silent", "meter", &silent_meter),
        "no meter_silent alarm for {silent_meter}: {kinds:?}"
    );
    assert!(
        raised("meter_clock", "meter", &fast_meter),
        "no meter_clock alarm for {fast_meter}: {kinds:?}"
    );
    assert!(
        raised("gateway_offline", "gateway", "gw-0003"),
        "no gateway_offline alarm for gw-0003: {kinds:?}"
    );
    eprintln!(
        "faults: nights {counts:?} (not actual: {not_actual:?}); repeats {repeats}; agent killed at {killed_at} (boundary {b}); alarms {kinds:?}; {:?} real; gw3 {gw3:?}",
        real.elapsed()
    );
    Ok(())
}
