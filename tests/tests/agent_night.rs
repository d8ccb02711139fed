//! A night under an accelerated clock (a simulated hour in three real seconds), against
//! a real Mosquitto: the boundary sweeps start at 20:00:00 and 08:00:00 local
//! (Asia/Shanghai), hourly sweeps run inside the window, nothing is read in daytime,
//! and the season edges (Nov 1 00:00, Apr 1 00:00) get their sweeps.

use std::sync::Arc;
use std::time::Duration;

use qingnuan_agent::bus::dlt645::days_from_civil;
use qingnuan_shared::clock::{Clock, ScaledClock};
use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, Collector};
use qingnuan_tests::broker::Broker;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

/// Simulated seconds per real second for whole nights: an hour in three seconds.
const SPEED: u32 = 1200;
/// At that speed one real millisecond is 1.2 simulated seconds, so a read lands this
/// late at most (250 ms of real scheduling slack on a loaded machine).
const SLACK_S: i64 = 300;
/// Speed for the exact-instant checks: one real millisecond is 10 simulated ms.
const SLOW: u32 = 10;

/// UTC Unix seconds of a local Beijing time.
fn local(y: i64, mo: i64, d: i64, h: i64, mi: i64) -> i64 {
    days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 - 8 * 3600
}

/// Runs the agent in-process from `start` to `until` (UTC Unix s, simulated) and
/// returns the `ts` of the first reading of every batch, in order.
async fn run_night(gw: &str, start: i64, until: i64, speed: u32) -> anyhow::Result<Vec<i64>> {
    let broker = Broker::start()?;
    let sim = Dlt645Sim::new(&[(
        "123456781012",
        SimMeter::new(2_000_000, Some(800_000), 3000),
    )])?
    .with_delay(Duration::ZERO);
    let tcp = sim.serve_tcp().await?;
    let collector = Collector::start(&broker.url(), &format!("qn/v1/gw/{gw}/readings")).await?;
    let dir = tempfile::tempdir()?;
    let bus =
        dlt645_tcp_bus(&tcp.address(), &["123456781012"]).replace("retries = 1", "retries = 0");
    let mut cfg = AgentConfig::new(gw, &broker.url(), &dir.path().join("spool"), &bus);
    cfg.always = false;
    cfg.interval_s = 3600;
    let config = cfg.parse()?;
    let clock = Arc::new(ScaledClock::new(start * 1000, speed));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(qingnuan_agent::run(config, clock.clone(), rx));
    tokio::time::sleep(clock.real_until(until * 1000)).await;
    // Let the last batch reach the broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(true)?;
    agent.await??;
    Ok(collector
        .batches()
        .iter()
        .filter_map(|b| b.readings.first().map(|r| r.ts))
        .collect())
}

fn assert_sweeps(got: &[i64], want: &[i64]) {
    assert_eq!(
        got.len(),
        want.len(),
        "sweeps at {got:?}, expected near {want:?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*w..=w + SLACK_S).contains(g),
            "a sweep due at {w} read at {g} ({} s late)",
            g - w
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winter_night_sweeps_at_20_and_08_and_hourly_between() -> anyhow::Result<()> {
    let got = run_night(
        "gw-night",
        local(2025, 12, 1, 19, 59),
        local(2025, 12, 2, 8, 40),
        SPEED,
    )
    .await?;
    let mut want = vec![local(2025, 12, 1, 20, 0)];
    want.extend((21..24).map(|h| local(2025, 12, 1, h, 0)));
    want.extend((0..8).map(|h| local(2025, 12, 2, h, 0)));
    want.push(local(2025, 12, 2, 8, 0));
    assert_sweeps(&got, &want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_season_opens_at_nov_1_midnight() -> anyhow::Result<()> {
    // Oct 31 20:00 is outside the season: the first sweep is Nov 1 00:00, then hourly.
    let got = run_night(
        "gw-open",
        local(2025, 10, 31, 19, 59),
        local(2025, 11, 1, 1, 30),
        SPEED,
    )
    .await?;
    let want = vec![local(2025, 11, 1, 0, 0), local(2025, 11, 1, 1, 0)];
    assert_sweeps(&got, &want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_season_closes_at_apr_1_midnight() -> anyhow::Result<()> {
    // Apr 1 00:00 closes the season: a sweep then, and none after it (the hourly
    // reads stop; that no 08:00 sweep follows is pinned by the schedule's unit tests).
    let got = run_night(
        "gw-close",
        local(2026, 3, 31, 22, 59),
        local(2026, 4, 1, 2, 30),
        SPEED,
    )
    .await?;
    let want = vec![local(2026, 3, 31, 23, 0), local(2026, 4, 1, 0, 0)];
    assert_sweeps(&got, &want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_boundary_sweeps_start_at_20_00_00_and_08_00_00_exactly() -> anyhow::Result<()> {
    // Slowly across each boundary: the read completes within the boundary's own second.
    for (gw, b) in [
        ("gw-exact-20", local(2025, 12, 3, 20, 0)),
        ("gw-exact-08", local(2025, 12, 4, 8, 0)),
    ] {
        let got = run_night(gw, b - 10, b + 10, SLOW).await?;
        assert_eq!(got.len(), 1, "{gw}: one sweep, at the boundary: {got:?}");
        assert!(
            (b..=b + 1).contains(&got[0]),
            "{gw}: read at {} for the boundary {b}",
            got[0]
        );
    }
    Ok(())
}
