//! The whole heating season in one run: 21 households on 3 gateways from Oct 31 19:00 to
//! Apr 1 09:00 under one warped clock (still at every boundary, racing between), real
//! agents, Mosquitto and server, with one gateway's uplink cut over a January night. The
//! server's statements and all 152 nights equal the reference from what the agents
//! published, and every night equals the meters' registers exactly.

mod season_common;

use std::time::{Duration, Instant};

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::UnixTime;
use qingnuan_tests::village::{Village, VillageSpec, Warp};
use season_common::{
    distinct_published, kwh_to_wh, night_of, seq_gaps, server_equals_reference, unaccounted_within,
    SEASON,
};
use serde_json::Value;

/// Speed-up within half an hour of a boundary (that half hour is 62.5 real ms), so a
/// boundary sweep that outlasts the hold reads its other registers near the boundary.
const SLOW: u32 = 28_800;
/// Speed-up elsewhere: a simulated day away from boundaries is ~80 real ms.
const FAST: u32 = 1_000_000;
/// Real ms the clock stands still at each boundary: a boundary read whose first register
/// comes back within this much is stamped with the boundary itself.
const HOLD_MS: u64 = 450;
/// Half-width of the slow stretch around each boundary, simulated seconds.
const SLOW_WITHIN_S: i64 = 1800;
/// Reads only at boundaries (ticks every 12 h fall on 08:00 and 20:00): a read between
/// boundaries in a fast stretch is stamped after the meter answered by whatever a stall
/// of a few real ms is there (hours), and the engine would rightly call the next one a spike.
const INTERVAL_S: u64 = 43_200;
/// The meters' quiet margin: an hour either side of a boundary.
const QUIET_S: i64 = 3600;
const REGISTRY_FROM: &str = "2025-10-01";
/// Nights of the 2025-2026 season: Oct 31 (clipped to Nov 1 00:00–08:00) to Mar 31.
const NIGHTS: usize = 152;

fn cal() -> Calendar {
    Calendar::new(Policy::beijing_2018())
}

fn night(s: &str) -> Night {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
}

/// UTC Unix seconds of local `date` at `hour`:00.
fn local(date: &str, hour: i64) -> UnixTime {
    cal().local_midnight(night(date).0) + hour * 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_season_pays_exactly() -> anyhow::Result<()> {
    let real = Instant::now();
    let (from, until) = (local("2025-10-31", 19), local("2026-04-01", 9));
    let spec = VillageSpec {
        seed: 2526,
        households: 21,
        gateways: 3,
        start: from,
        days: (until - from) / 86_400 + 2,
        speed: SLOW,
        interval_s: INTERVAL_S,
        quiet_s: QUIET_S,
        meters_per_bus: 1,
        // Real time: long enough for a starved test process to answer within the hold.
        timeout_ms: 300,
        registry_from: REGISTRY_FROM.into(),
        heartbeat_s: 6 * 3600,
        warp: Some(Warp {
            fast: FAST,
            slow_within_s: SLOW_WITHIN_S,
            hold_ms: HOLD_MS,
            lead_ms: 5000,
        }),
    };
    let mut v = Village::start(&spec).await?;
    let started = real.elapsed();

    // gw-0003's uplink is cut from Jan 10 16:00 to Jan 11 14:00: the night of Jan 10
    // stays in its spool and replays after the other gateways' newer readings.
    let (cut, back) = (local("2026-01-10", 16), local("2026-01-11", 14));
    v.sleep_until(cut).await;
    v.cut_uplink(2);
    v.sleep_until(back).await;
    v.restore_uplink(2);
    v.sleep_until(until).await;
    let stop_at = v.now();
    let ran = real.elapsed();
    v.stop_agents();
    v.settle(Duration::from_millis(500), Duration::from_secs(20))
        .await;
    eprintln!(
        "boundary reads: {}",
        boundary_reads_on_the_instant(&v, from, until)
    );
    let registry_from = cal().local_midnight(night(REGISTRY_FROM).0);
    let got = server_equals_reference(&v, registry_from, Duration::from_secs(120)).await?;
    let settled = real.elapsed();

    // Every night of the season: the exact register difference, within 10 Wh of the truth.
    let season_nights: Vec<Night> = v.fleet.calendar.nights(SEASON).collect();
    assert_eq!(season_nights.len(), NIGHTS);
    let (mut actual, mut estimated, mut worst) = (0usize, 0usize, 0i64);
    let (mut clipped, mut unclipped) = (0i64, 0i64);
    let mut off = Vec::new();
    for h in &v.fleet.households {
        let (statement, list) = got
            .get(&h.id)
            .ok_or_else(|| anyhow::anyhow!("no figures for {}", h.id))?;
        let listed: Vec<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["night"].as_str())
            .collect();
        assert_eq!(listed.len(), NIGHTS, "{}: nights listed {listed:?}", h.id);
        assert!(
            listed
                .iter()
                .all(|d| ("2025-10-31"..="2026-03-31").contains(d)),
            "{}: a night outside the season: {listed:?}",
            h.id
        );
        let mut register_total = 0;
        for &n in &season_nights {
            let (wh, quality, flags) = night_of(list, n)
                .ok_or_else(|| anyhow::anyhow!("{} has no night {n}: {list}", h.id))?;
            let register = v.model.register_night_wh(h, n);
            let truth = h.true_night_wh(&v.fleet.calendar, n).0;
            if wh != register {
                if off.is_empty() {
                    let (_, d) = v
                        .get_json(&format!("/api/v1/households/{}/nights/{n}", h.id))
                        .await?;
                    eprintln!("{} {n}: server's explanation {d}", h.id);
                }
                off.push(format!("{} {n}: {wh} Wh vs register {register} Wh", h.id));
                continue;
            }
            assert!(
                (wh - truth).abs() <= 10,
                "{} night {n}: {wh} Wh vs truth {truth} Wh",
                h.id
            );
            assert!(wh > 0, "{} night {n}: a heat pump in winter draws", h.id);
            assert!(flags.is_empty(), "{} night {n}: flags {flags:?}", h.id);
            match quality.as_str() {
                "actual" => actual += 1,
                "estimated" => estimated += 1,
                other => panic!("{} night {n}: quality {other}", h.id),
            }
            worst = worst.max((wh - truth).abs());
            register_total += register;
        }
        if !off.is_empty() {
            continue;
        }
        // The statement adds up the nights.
        let offpeak = statement["offpeak_kwh"]
            .as_str()
            .and_then(kwh_to_wh)
            .ok_or_else(|| anyhow::anyhow!("{}: statement {statement}", h.id))?;
        assert_eq!(offpeak, register_total, "{}: {statement}", h.id);
        let counts = &statement["nights"];
        assert_eq!(counts["missing"].as_u64(), Some(0), "{}: {statement}", h.id);
        assert_eq!(
            counts["actual"].as_u64().unwrap_or(0) + counts["estimated"].as_u64().unwrap_or(0),
            NIGHTS as u64,
            "{}: {statement}",
            h.id
        );
        // The season's edges clip their nights: Oct 31 counts from Nov 1 00:00 only,
        // Mar 31 until Apr 1 00:00 only.
        for (n, a, b, full_a, full_b) in [
            (
                "2025-10-31",
                local("2025-11-01", 0),
                local("2025-11-01", 8),
                local("2025-10-31", 20),
                local("2025-11-01", 8),
            ),
            (
                "2026-03-31",
                local("2026-03-31", 20),
                local("2026-04-01", 0),
                local("2026-03-31", 20),
                local("2026-04-01", 8),
            ),
        ] {
            let (wh, _, _) = night_of(list, night(n))
                .ok_or_else(|| anyhow::anyhow!("{}: no night {n}", h.id))?;
            let reg = |t| v.model.register_wh(h, t);
            assert_eq!(wh, reg(b) - reg(a), "{} night {n}", h.id);
            clipped += wh;
            unclipped += reg(full_b) - reg(full_a);
        }
    }
    assert!(
        off.is_empty(),
        "{} nights differ from the meters' registers (boundary reads {}): {off:?}",
        off.len(),
        boundary_reads_on_the_instant(&v, from, until)
    );
    // Over the village the unclipped windows drew more: the clipping took something off.
    assert!(
        clipped < unclipped,
        "edge nights {clipped} Wh, unclipped {unclipped} Wh"
    );

    // The cut gateway's January night replayed after newer readings of gw-0001.
    let batches = v.published();
    let newest_gw1_before = batches
        .iter()
        .take_while(|b| {
            !(b.gw.as_str() == "gw-0003"
                && b.readings
                    .iter()
                    .any(|r| r.ts >= local("2026-01-10", 20) && r.ts <= local("2026-01-11", 8)))
        })
        .filter(|b| b.gw.as_str() == "gw-0001")
        .filter_map(|b| b.readings.iter().map(|r| r.ts).max())
        .max()
        .unwrap_or(0);
    assert!(
        newest_gw1_before >= local("2026-01-11", 8),
        "gw-0003's night of Jan 10 arrived before newer gw-0001 data (newest {newest_gw1_before})"
    );

    // Nothing lost: no batch gap, every answered read published.
    let gaps = seq_gaps(&v);
    assert!(gaps.is_empty(), "batches never delivered: {gaps:?}");
    // Every answer before the last boundary sweep's tick (Apr 1 08:00, after the season).
    let cutoff = (until - 3600).min(stop_at);
    let (lost, extra) =
        unaccounted_within(&v, cutoff, INTERVAL_S as i64, Duration::from_millis(200));
    assert!(lost.is_empty(), "answers never published: {lost:?}");
    assert!(
        extra.is_empty(),
        "more readings published than answers given: {extra:?}"
    );

    // Figures of the run (shown with --nocapture).
    let readings: usize = distinct_published(&v).values().map(Vec::len).sum();
    let boundary_exact = boundary_reads_on_the_instant(&v, from, until);
    let subsidy: Vec<&Value> = got
        .values()
        .map(|(s, _)| &s["city_subsidy_yuan"])
        .take(3)
        .collect();
    eprintln!(
        "whole season {from}..{until}: {} households, {} batches, {readings} distinct readings; \
         nights actual {actual}, estimated {estimated}, worst |night - truth| {worst} Wh; \
         boundary reads stamped on the boundary {boundary_exact}; city subsidy (first 3) {subsidy:?}; \
         real time: start {started:?}, season {:?}, settled {settled:?}, total {:?}",
        v.fleet.households.len(),
        batches.len(),
        ran - started,
        real.elapsed()
    );
    Ok(())
}

/// "n of m, late …": of every (meter, boundary) in `[from, until)`, how many have a
/// published reading stamped exactly on the boundary (the clock's hold at work), and the
/// largest lateness (simulated s) of the first reading at or after a boundary.
fn boundary_reads_on_the_instant(v: &Village, from: UnixTime, until: UnixTime) -> String {
    let published = distinct_published(v);
    let bounds: Vec<UnixTime> = v
        .fleet
        .calendar
        .boundaries(from, until)
        .map(|b| b.t)
        .collect();
    let (mut on, mut all, mut late) = (0usize, 0usize, Vec::new());
    for h in &v.fleet.households {
        let ts = published.get(&h.meter).cloned().unwrap_or_default();
        for &b in &bounds {
            all += 1;
            if ts.binary_search(&b).is_ok() {
                on += 1;
            } else if let Some(t) = ts.iter().find(|&&t| t >= b) {
                late.push((t - b, h.meter.clone(), b));
            }
        }
    }
    late.sort_unstable();
    format!(
        "{on} of {all} on the instant; latest of the others {:?}",
        late.iter().rev().take(5).collect::<Vec<_>>()
    )
}
