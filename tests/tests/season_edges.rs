//! A village of 21 households on 3 gateways across both edges of the heating season,
//! real agents, Mosquitto and server under one accelerated clock: the server's statements
//! and nights equal the reference computed from what the agents published, and with a
//! boundary read every night each night's kWh equals the meters' truth.

mod season_common;

use std::time::{Duration, Instant};

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::UnixTime;
use qingnuan_tests::village::{Village, VillageSpec};
use season_common::{distinct_published, night_of, seq_gaps, server_equals_reference, unaccounted};

/// One simulated hour per real second.
const SPEED: u32 = 3600;
/// Reads every 10 simulated minutes around the clock, and at every boundary.
const INTERVAL_S: u64 = 600;
/// The meters' quiet margin: 30 simulated minutes (500 real ms) either side of a boundary.
const QUIET_S: i64 = 1800;
const REGISTRY_FROM: &str = "2025-10-01";

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

/// Runs the village from `from` to `until` and checks every night listed in `nights`.
async fn run_stretch(
    seed: u64,
    from: UnixTime,
    until: UnixTime,
    nights: &[&str],
) -> anyhow::Result<()> {
    let real = Instant::now();
    let spec = VillageSpec {
        seed,
        households: 21,
        gateways: 3,
        start: from,
        days: (until - from) / 86_400 + 2,
        speed: SPEED,
        interval_s: INTERVAL_S,
        quiet_s: QUIET_S,
        meters_per_bus: 1,
        timeout_ms: 40,
        registry_from: REGISTRY_FROM.into(),
    };
    let mut v = Village::start(&spec).await?;
    let started = real.elapsed();
    v.sleep_until(until).await;
    let stop_at = v.now();
    v.stop_agents();
    v.settle(Duration::from_millis(500), Duration::from_secs(10))
        .await;
    let registry_from = cal().local_midnight(night(REGISTRY_FROM).0);
    let got = server_equals_reference(&v, registry_from, Duration::from_secs(60)).await?;

    // Every night of the stretch: the exact register difference, within 10 Wh of the truth.
    let (mut actual, mut estimated) = (0, 0);
    for h in &v.fleet.households {
        let (_, list) = got
            .get(&h.id)
            .ok_or_else(|| anyhow::anyhow!("no figures for {}", h.id))?;
        for n in nights.iter().map(|s| night(s)) {
            let (wh, quality, flags) = night_of(list, n)
                .ok_or_else(|| anyhow::anyhow!("{} has no night {n}: {list}", h.id))?;
            let register = v.model.register_night_wh(h, n);
            let truth = h.true_night_wh(&v.fleet.calendar, n).0;
            if wh != register {
                let (_, d) = v
                    .get_json(&format!("/api/v1/households/{}/nights/{n}", h.id))
                    .await?;
                eprintln!("{} {n}: server's explanation {d}", h.id);
                let show = |t: UnixTime| (t, v.model.register_wh(h, t), h.register_wh(t));
                for b in v
                    .fleet
                    .calendar
                    .night_span(n)
                    .into_iter()
                    .flat_map(|(a, b)| [a, b])
                {
                    eprintln!(
                        "boundary {:?} ; around: {:?}",
                        show(b),
                        [show(b - 600), show(b + 600)]
                    );
                }
            }
            assert_eq!(
                wh, register,
                "{} night {n}: server {wh} Wh, meter register {register} Wh ({quality})",
                h.id
            );
            assert!(
                (wh - truth).abs() <= 10,
                "{} night {n}: {wh} Wh vs truth {truth} Wh",
                h.id
            );
            assert!(
                wh > 0,
                "{} night {n}: a heat pump in the cold draws energy",
                h.id
            );
            assert!(flags.is_empty(), "{} night {n}: flags {flags:?}", h.id);
            match quality.as_str() {
                "actual" => actual += 1,
                "estimated" => estimated += 1,
                other => panic!("{} night {n}: quality {other}", h.id),
            }
        }
        // Nothing outside the season is listed.
        let listed: Vec<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["night"].as_str())
            .collect();
        assert!(
            listed
                .iter()
                .all(|d| ("2025-10-31"..="2026-03-31").contains(d)),
            "{listed:?}"
        );
    }

    // Nothing lost: every total-register answer a meter gave before the last sweeps
    // reached the broker, once per (meter, ts).
    let cutoff = stop_at.div_euclid(INTERVAL_S as i64) * INTERVAL_S as i64 - INTERVAL_S as i64 / 2;
    let published = distinct_published(&v);
    {
        // Diagnostics: clock skew between the village and the agents, and boundary lateness.
        let mut skew = Vec::new();
        let mut late = Vec::new();
        for h in &v.fleet.households {
            let given = v.board.given(&h.meter);
            let ts = published.get(&h.meter).cloned().unwrap_or_default();
            for (g, t) in given.iter().zip(&ts) {
                skew.push(g - t);
            }
            for b in v.fleet.calendar.boundaries(from, until) {
                if let Some(t) = ts.iter().find(|&&t| t >= b.t) {
                    late.push(t - b.t);
                }
            }
        }
        skew.sort_unstable();
        late.sort_unstable();
        let q = |x: &Vec<i64>| {
            (
                x.first().copied(),
                x.get(x.len() / 2).copied(),
                x.get(x.len() * 9 / 10).copied(),
                x.last().copied(),
            )
        };
        eprintln!(
            "skew given-ts min/med/p90/max {:?}; boundary lateness {:?}",
            q(&skew),
            q(&late)
        );
    }
    let gaps = seq_gaps(&v);
    assert!(gaps.is_empty(), "batches never delivered: {gaps:?}");
    let (lost, extra) = unaccounted(&v, cutoff, INTERVAL_S as i64);
    assert!(lost.is_empty(), "answers never published: {lost:?}");
    assert!(
        extra.is_empty(),
        "more readings published than answers given: {extra:?}"
    );
    eprintln!(
        "stretch {from}..{until}: nights actual {actual}, estimated {estimated}; start {started:?}, total {:?}",
        real.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_season_opens_exactly_at_nov_1() -> anyhow::Result<()> {
    // Oct 31 19:00 to Nov 3 09:00: nights Oct 31 (only Nov 1 00:00–08:00), Nov 1, Nov 2.
    run_stretch(
        2025,
        local("2025-10-31", 19),
        local("2025-11-03", 9),
        &["2025-10-31", "2025-11-01", "2025-11-02"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_season_closes_exactly_at_apr_1() -> anyhow::Result<()> {
    // Mar 29 19:00 to Apr 1 09:00: nights Mar 29, Mar 30, Mar 31 (only 20:00–24:00).
    run_stretch(
        2026,
        local("2026-03-29", 19),
        local("2026-04-01", 9),
        &["2026-03-29", "2026-03-30", "2026-03-31"],
    )
    .await
}
