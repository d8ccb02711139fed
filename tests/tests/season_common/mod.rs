//! What the season tests check against: the reference figures (the server's own engine
//! over every reading the agents actually published, as captured at the broker), and
//! the server's figures over HTTP in the same contract JSON.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use qingnuan_server::engine::{compute_household_season, HouseholdInput, MeterSpan, RawReading};
use qingnuan_server::{export, recompute};
use qingnuan_shared::calendar::{Night, Season};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::MeterId;
use qingnuan_shared::UnixTime;
use qingnuan_tests::village::Village;
use serde_json::Value;

/// The season every test runs in.
pub const SEASON: Season = Season { start_year: 2025 };

/// Every successful reading published, by meter (repeats kept: the engine ignores them).
pub fn published_readings(v: &Village) -> HashMap<MeterId, Vec<RawReading>> {
    let mut map: HashMap<MeterId, Vec<RawReading>> = HashMap::new();
    for b in v.published() {
        for r in b.readings {
            if let Some(e_wh) = r.e_wh {
                map.entry(r.meter.clone()).or_default().push(RawReading {
                    ts: r.ts,
                    e_wh,
                    e_valley_wh: r.e_valley_wh,
                });
            }
        }
    }
    map
}

/// Distinct `(meter, ts)` of the successful published readings.
pub fn distinct_published(v: &Village) -> BTreeMap<String, Vec<UnixTime>> {
    let mut out: BTreeMap<String, Vec<UnixTime>> = BTreeMap::new();
    for (m, rs) in published_readings(v) {
        let mut ts: Vec<UnixTime> = rs.iter().map(|r| r.ts).collect();
        ts.sort_unstable();
        ts.dedup();
        out.insert(m.as_str().to_owned(), ts);
    }
    out
}

/// The reference statement and nights (contract JSON) of every household, as of `now`.
pub fn reference(
    v: &Village,
    registry_from: UnixTime,
    now: UnixTime,
) -> BTreeMap<String, (Value, Value)> {
    let policy = Policy::beijing_2018();
    let readings = published_readings(v);
    let mut out = BTreeMap::new();
    for h in &v.fleet.households {
        let Ok(meter) = MeterId::new(&h.meter) else {
            continue;
        };
        let input = HouseholdInput {
            id: h.id.clone(),
            max_power_w: None,
            meters: vec![MeterSpan {
                meter,
                from: registry_from,
                to: None,
            }],
        };
        let season = compute_household_season(&policy, SEASON, now, &input, &readings);
        let (st, nights) =
            recompute::rows_of(&season, &input, &HashMap::new(), &policy, &h.id, false);
        let nights = Value::Array(
            nights
                .iter()
                .map(|n| export::night_json(&n.to_row()))
                .collect(),
        );
        out.insert(h.id.clone(), (export::statement_json(&st), nights));
    }
    out
}

/// The server's statement and nights of every household.
pub async fn served(v: &Village) -> anyhow::Result<BTreeMap<String, (Value, Value)>> {
    let (status, all) = v
        .get_json(&format!("/api/v1/seasons/{SEASON}/statements"))
        .await?;
    anyhow::ensure!(status == 200, "statements: {status} {all}");
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for s in all.as_array().cloned().unwrap_or_default() {
        if let Some(id) = s.get("household").and_then(Value::as_str) {
            by_id.insert(id.to_owned(), s.clone());
        }
    }
    let mut out = BTreeMap::new();
    for h in &v.fleet.households {
        let (status, nights) = v
            .get_json(&format!(
                "/api/v1/households/{}/nights?season={SEASON}",
                h.id
            ))
            .await?;
        anyhow::ensure!(status == 200, "nights of {}: {status} {nights}", h.id);
        out.insert(
            h.id.clone(),
            (by_id.get(&h.id).cloned().unwrap_or(Value::Null), nights),
        );
    }
    Ok(out)
}

/// Waits (up to `max` real time) until the server's figures equal the reference ones
/// as of the village's now; returns them, or fails naming the first household that differs.
pub async fn server_equals_reference(
    v: &Village,
    registry_from: UnixTime,
    max: Duration,
) -> anyhow::Result<BTreeMap<String, (Value, Value)>> {
    let end = Instant::now() + max;
    loop {
        let got = served(v).await?;
        let want = reference(v, registry_from, v.now());
        if got == want {
            return Ok(got);
        }
        if Instant::now() > end {
            let (id, (ws, wn)) = want
                .iter()
                .find(|(id, w)| got.get(*id) != Some(*w))
                .ok_or_else(|| anyhow::anyhow!("figures differ"))?;
            let (gs, gn) = got.get(id).cloned().unwrap_or_default();
            anyhow::bail!(
                "{id}: server statement {gs}\nreference {ws}\nserver nights {gn}\nreference nights {wn}\nserver log tail: {}",
                tail(&v.server.log(), 3000)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A night's figure in a nights list: (Wh, quality, flags).
pub fn night_of(nights: &Value, night: Night) -> Option<(i64, String, Vec<String>)> {
    let n = nights
        .as_array()?
        .iter()
        .find(|n| n.get("night").and_then(Value::as_str) == Some(&night.to_string()))?;
    let wh = kwh_to_wh(n.get("kwh")?.as_str()?)?;
    let q = n.get("quality")?.as_str()?.to_owned();
    let flags = n
        .get("flags")?
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    Some((wh, q, flags))
}

/// `"12.345"` kWh to 12 345 Wh.
pub fn kwh_to_wh(s: &str) -> Option<i64> {
    let (k, f) = s.split_once('.')?;
    let f = format!("{f:0<3}");
    Some(k.parse::<i64>().ok()? * 1000 + f.get(..3)?.parse::<i64>().ok()?)
}

/// The last `n` bytes of a log (on a char boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s.get(i..).unwrap_or("")
}

/// Sweeps in which a meter gave an answer (total register, before `cutoff`) but that
/// no published record of that meter (a good reading or a failed read) accounts for,
/// as (meter, instant of the answer); and meters that published more good readings than
/// they gave answers (a reading made up or counted twice).
///
/// Sweeps are the `interval_s` ticks. A record may land a tick or two later: after a
/// reply that came too late for the agent's (real-time) timeout, its retry and pause
/// last minutes of simulated time, and a loaded machine that stops a process for 200 ms
/// moves it 12 simulated minutes. So this finds runs of lost sweeps; single lost batches
/// are found by [`seq_gaps`].
pub fn unaccounted(
    v: &Village,
    cutoff: UnixTime,
    interval_s: i64,
) -> (Vec<(String, UnixTime)>, Vec<String>) {
    unaccounted_within(v, cutoff, interval_s, Duration::ZERO)
}

/// As [`unaccounted`], a record also accounting for an answer when it lies within `real`
/// of real time after it (under a warped clock a stall of a few real ms in a fast stretch
/// is hours of simulated time, more than the two ticks `unaccounted` allows).
pub fn unaccounted_within(
    v: &Village,
    cutoff: UnixTime,
    interval_s: i64,
    real: Duration,
) -> (Vec<(String, UnixTime)>, Vec<String>) {
    let tick = |t: UnixTime| t.div_euclid(interval_s) * interval_s;
    let mut records: BTreeMap<String, std::collections::BTreeSet<UnixTime>> = BTreeMap::new();
    for b in v.published() {
        for r in b.readings {
            records
                .entry(r.meter.as_str().to_owned())
                .or_default()
                .insert(tick(r.ts));
        }
    }
    let good = distinct_published(v);
    let (mut lost, mut extra) = (Vec::new(), Vec::new());
    for h in &v.fleet.households {
        let given: Vec<UnixTime> = v
            .board
            .given(&h.meter)
            .into_iter()
            .filter(|&t| t < cutoff)
            .collect();
        let recs = records.get(&h.meter).cloned().unwrap_or_default();
        for &g in &given {
            let reach = v.sim_after_real(g, real).max(tick(g) + 2 * interval_s);
            let near = recs.range(tick(g) - interval_s..=reach).next().is_some();
            if !near {
                lost.push((h.meter.clone(), g));
            }
        }
        let n_good = good
            .get(&h.meter)
            .map_or(0, |ts| ts.iter().filter(|&&t| t < cutoff).count());
        if n_good > given.len() || (n_good == 0 && !given.is_empty()) {
            extra.push(h.meter.clone());
        }
    }
    (lost, extra)
}

/// Batches missing from the capture: per (gateway, boot), the `seq` numbers between 1
/// and the highest seen that never arrived (the agent numbers batches before spooling,
/// so a gap is a batch lost between the spool and the broker).
pub fn seq_gaps(v: &Village) -> Vec<(String, String, Vec<u64>)> {
    let mut seen: BTreeMap<(String, String), std::collections::BTreeSet<u64>> = BTreeMap::new();
    for b in v.published() {
        seen.entry((b.gw.as_str().to_owned(), b.boot.as_str().to_owned()))
            .or_default()
            .insert(b.seq);
    }
    seen.into_iter()
        .filter_map(|((gw, boot), seqs)| {
            let max = seqs.iter().max().copied().unwrap_or(0);
            let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
            (!missing.is_empty()).then_some((gw, boot, missing))
        })
        .collect()
}
