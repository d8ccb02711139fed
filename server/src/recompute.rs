//! Recompute: turns `dirty` (household, season) pairs into stored nights and statements
//! with the [`engine`](crate::engine), from the stored readings alone. Idempotent: the
//! result is a pure function of the stored set, so recomputing twice changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::calendar::{BoundaryKind, Calendar, Season};
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::MeterId;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::engine::{
    explain_judgement, explain_night, BoundaryValue, EdgeKind, Engine, HouseholdInput,
    HouseholdSeason, MeterSpan, RawReading, UsedReading,
};
use crate::store::{
    HouseholdRow, MeterRow, NightRow, StatementRow, Store, StoreError, StoredReading,
};

/// Pairs taken from `dirty` per round.
const ROUND: i64 = 1024;

/// Computes one household's season from the store, every night explained when `explain`;
/// `None` for an unknown household.
pub async fn compute(
    store: &Store,
    engine: &mut Engine,
    household: &str,
    season: Season,
    now: i64,
    explain: bool,
) -> Result<Option<(StatementRow, Vec<NightRow>)>, StoreError> {
    let Some(h) = store.household(household).await? else {
        return Ok(None);
    };
    let rows = store.meters_of(household).await?;
    let until = season_until(engine, season);
    let mut stored = HashMap::new();
    let mut conflicts = HashMap::new();
    for m in &rows {
        if !stored.contains_key(&m.meter) {
            stored.insert(m.meter.clone(), store.readings_of(&m.meter, until).await?);
            conflicts.insert(m.meter.clone(), store.conflicts_of(&m.meter).await?);
        }
    }
    Ok(Some(compute_from(
        engine, &h, &rows, &stored, &conflicts, season, now, explain,
    )))
}

/// Readings up to this instant (exclusive) can decide a season's figures.
fn season_until(engine: &Engine, season: Season) -> i64 {
    let (_, season_end) = engine.calendar().season_span(season);
    season_end
        .saturating_add(engine.policy().rules.max_gap_s)
        .saturating_add(1)
}

/// The pure part of [`compute`]: one household's season from its registry rows and its
/// meters' stored readings and conflict instants (keyed by meter id), each night with
/// its explanation when `explain`.
#[allow(clippy::too_many_arguments)]
fn compute_from(
    engine: &mut Engine,
    h: &HouseholdRow,
    rows: &[MeterRow],
    stored: &HashMap<String, Vec<StoredReading>>,
    stored_conflicts: &HashMap<String, Vec<i64>>,
    season: Season,
    now: i64,
    explain: bool,
) -> (StatementRow, Vec<NightRow>) {
    let mut readings: HashMap<MeterId, Vec<RawReading>> = HashMap::new();
    let mut conflicts: HashMap<MeterId, Vec<i64>> = HashMap::new();
    let mut spans = Vec::with_capacity(rows.len());
    for m in rows {
        let Ok(id) = MeterId::new(&m.meter) else {
            warn!(meter = %m.meter, household = %h.id, "stored meter id is not valid; skipped");
            continue;
        };
        if !readings.contains_key(&id) {
            let raw = stored
                .get(&m.meter)
                .into_iter()
                .flatten()
                .map(|r| RawReading {
                    ts: r.ts,
                    e_wh: r.e_wh,
                    e_valley_wh: r.e_valley_wh,
                })
                .collect();
            readings.insert(id.clone(), raw);
            conflicts.insert(
                id.clone(),
                stored_conflicts.get(&m.meter).cloned().unwrap_or_default(),
            );
        }
        spans.push(MeterSpan {
            meter: id,
            from: m.valid_from,
            to: m.valid_to,
        });
    }
    let input = HouseholdInput {
        id: h.id.clone(),
        max_power_w: h.max_power_w,
        meters: spans,
    };
    let frame = engine.frame(season, now);
    let out = engine.household(&frame, &input, &readings);
    rows_of(&out, &input, &conflicts, engine.policy(), &h.id, explain)
}

/// Recomputes and stores one pair, clearing its dirty mark at generation `gen`.
pub async fn recompute_pair(
    store: &Store,
    engine: &mut Engine,
    household: &str,
    season: Season,
    gen: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    match compute(store, engine, household, season, now, false).await? {
        Some((statement, nights)) => store.save_season(&statement, &nights, gen, now).await,
        None => {
            // Not in the registry: nothing to compute, drop the mark.
            debug!(household, %season, "dirty mark of an unknown household dropped");
            match gen {
                Some(gen) => store.clear_dirty(household, &season.to_string(), gen).await,
                None => Ok(()),
            }
        }
    }
}

/// Recomputes every dirty pair now (the CLI's export and tests use it).
pub async fn drain(store: &Store, engine: &mut Engine, now: i64) -> Result<usize, StoreError> {
    let mut done = 0;
    loop {
        match round(store, engine, now).await? {
            0 => return Ok(done),
            n => done += n,
        }
    }
}

/// Recomputes up to [`ROUND`] dirty pairs and stores them in one transaction; returns
/// how many it took. Reads and writes in bulk: a few queries per season in the round,
/// and only the nights whose figures changed are rewritten.
pub async fn round(store: &Store, engine: &mut Engine, now: i64) -> Result<usize, StoreError> {
    let pairs = store.dirty(ROUND).await?;
    let mut by_season: BTreeMap<Season, Vec<(String, i64)>> = BTreeMap::new();
    for (hh, season, gen) in &pairs {
        match season.parse::<Season>() {
            Ok(s) => by_season.entry(s).or_default().push((hh.clone(), *gen)),
            Err(_) => {
                warn!(household = %hh, season = %season, "dirty mark with a bad season name dropped");
                store.clear_dirty(hh, season, *gen).await?;
            }
        }
    }
    let mut results = Vec::with_capacity(pairs.len());
    for (season, marks) in by_season {
        let ids: Vec<String> = marks.iter().map(|(h, _)| h.clone()).collect();
        let inputs = store
            .round_inputs(&ids, season_until(engine, season))
            .await?;
        for (hh, gen) in marks {
            let Some(h) = inputs.households.get(&hh) else {
                debug!(household = %hh, %season, "dirty mark of an unknown household dropped");
                store.clear_dirty(&hh, &season.to_string(), gen).await?;
                continue;
            };
            let rows = inputs.meters.get(&hh).map(Vec::as_slice).unwrap_or(&[]);
            let (statement, nights) = compute_from(
                engine,
                h,
                rows,
                &inputs.readings,
                &inputs.conflicts,
                season,
                now,
                false,
            );
            results.push((statement, nights, Some(gen)));
        }
    }
    let saved = store.save_round(&results, now).await?;
    debug!(
        pairs = pairs.len(),
        written = saved.nights_written,
        unchanged = saved.nights_unchanged,
        "recompute round stored"
    );
    Ok(pairs.len())
}

/// Runs until `shutdown`: recomputes dirty pairs when ingest says so, and marks every
/// household's running season dirty when a night closes (a closed night is listed).
pub async fn run(
    store: Store,
    policy: Policy,
    clock: SharedClock,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut engine = Engine::new(policy);
    // A night that closed while the server was down is listed now.
    if let Err(e) = catch_up_closes(&store, &engine, clock.now()).await {
        warn!(error = %e, "marking nights closed while down failed");
    }
    let mut next_close = next_close_after(&engine, clock.now());
    loop {
        let now = clock.now();
        if next_close.is_some_and(|(t, _)| now >= t) {
            if let Err(e) = catch_up_closes(&store, &engine, now).await {
                warn!(error = %e, "marking the running season failed");
            }
            next_close = next_close_after(&engine, now);
        }
        match round(&store, &mut engine, now).await {
            // More may be waiting: go on without sleeping (night closes are checked first).
            Ok(n) if n > 0 => {
                if *shutdown.borrow() {
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "recompute failed; retrying"),
        }
        let wait = next_close
            .map(|(t, _)| clock.real_until(t.saturating_mul(1000)))
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Meta key: the latest night close (UTC Unix seconds) whose season was marked dirty.
const CLOSES_MARKED: &str = "closes_marked_until";

/// Marks every household's season dirty if a night closed since the last time.
async fn catch_up_closes(store: &Store, engine: &Engine, now: i64) -> Result<(), StoreError> {
    let cal = engine.calendar();
    let last = cal
        .boundaries(now.saturating_sub(3 * 86_400), now.saturating_add(1))
        .filter(|b| b.kind == BoundaryKind::Close)
        .last();
    let Some(b) = last else { return Ok(()) };
    if store
        .meta(CLOSES_MARKED)
        .await?
        .is_some_and(|done| done >= b.t)
    {
        return Ok(());
    }
    if let Some(season) = cal.season_of_night(b.night) {
        mark_all(store, season).await?;
    }
    store.set_meta(CLOSES_MARKED, b.t).await
}

async fn mark_all(store: &Store, season: Season) -> Result<(), StoreError> {
    let s = season.to_string();
    let pairs: Vec<_> = store
        .household_ids()
        .await?
        .into_iter()
        .map(|h| (h, s.clone()))
        .collect();
    store.mark_dirty(&pairs).await
}

/// The next instant after `t` at which a night closes, with the night's season.
fn next_close_after(engine: &Engine, t: i64) -> Option<(i64, Season)> {
    let cal = engine.calendar();
    let mut at = t;
    for _ in 0..4 {
        let b = cal.next_boundary(at)?;
        if b.kind == BoundaryKind::Close {
            return Some((b.t, cal.season_of_night(b.night)?));
        }
        at = b.t;
    }
    None
}

/// Flag of a night resting on a reading for which a conflicting value arrived.
pub const READING_CONFLICT: &str = "reading_conflict";

/// The engine's answer as store rows, each night with how it was obtained when `explain`
/// (the JSON `detail`; otherwise only the readings set aside, or empty: recompute stores
/// figures only, and the API explains a night on demand from the same readings). `conflicts` holds, per meter, the
/// instants at which a conflicting value arrived: a night whose parts rest on readings
/// around such an instant is flagged [`READING_CONFLICT`].
pub fn rows_of(
    out: &HouseholdSeason,
    input: &HouseholdInput,
    conflicts: &HashMap<MeterId, Vec<i64>>,
    policy: &Policy,
    household: &str,
    explain: bool,
) -> (StatementRow, Vec<NightRow>) {
    let s = &out.statement;
    let statement = StatementRow {
        household: household.into(),
        season: out.season.to_string(),
        offpeak_wh: s.offpeak_wh.0,
        subsidised_wh: s.subsidised_wh.0,
        cap_wh: s.cap_wh.0,
        cap_reached_on: s.cap_reached_on.map(|n| n.to_string()),
        city_fen: s.city_fen.0,
        district_fen: s.district_fen.0,
        valley_charge_fen: s.valley_charge_fen.0,
        nights_actual: i64::from(s.nights.actual),
        nights_estimated: i64::from(s.nights.estimated),
        nights_missing: i64::from(s.nights.missing),
        flags: s.flags.names().map(String::from).collect(),
    };
    let offset = UtcOffset::from_whole_seconds(policy.utc_offset_s).unwrap_or(UtcOffset::UTC);
    let cal = Calendar::new(*policy);
    let conflicted = |n: &crate::engine::NightFigure| {
        out.parts_of(n).iter().any(|p| {
            let from = p.start.r1.map_or(p.start.t, |r| r.ts);
            let to = p.end.r2.map_or(p.end.t, |r| r.ts);
            input
                .meters
                .get(p.span)
                .and_then(|m| conflicts.get(&m.meter))
                .is_some_and(|ts| ts.iter().any(|&t| from <= t && t <= to))
        })
    };
    let nights: Vec<NightRow> = out
        .nights
        .iter()
        .map(|n| {
            let mut flags: Vec<String> = n.flags.names().map(String::from).collect();
            if conflicted(n) {
                flags.push(READING_CONFLICT.into());
            }
            let row = NightRow {
                night: n.night.to_string(),
                wh: n.wh.0,
                quality: n.quality.as_str().into(),
                flags,
                detail: String::new(),
            };
            let set_aside: Vec<Value> = out
                .judged
                .iter()
                .filter(|j| {
                    j.reading.ts >= n.span.0 - policy.rules.max_gap_s
                        && j.reading.ts <= n.span.1 + policy.rules.max_gap_s
                })
                .map(|j| {
                    json!({
                        "meter": input.meters.get(j.span).map(|m| m.meter.as_str()),
                        "ts": j.reading.ts,
                        "at": local(j.reading.ts, offset),
                        "e_wh": j.reading.e_wh,
                        "verdict": j.verdict.as_str(),
                        "text": explain_judgement(&cal, input, j),
                        "baseline": {"ts": j.baseline.0, "e_wh": j.baseline.1},
                    })
                })
                .collect();
            if !explain {
                // Figures only, but readings set aside stay visible to the monitor's
                // `readings_rejected` rule (rare, so this costs nothing in the common case).
                if set_aside.is_empty() {
                    return row;
                }
                let detail = json!({ "readings_set_aside": set_aside }).to_string();
                return NightRow { detail, ..row };
            }
            let parts: Vec<Value> = out
                .parts_of(n)
                .iter()
                .map(|p| {
                    let span = input.meters.get(p.span);
                    json!({
                        "meter": span.map(|m| m.meter.as_str()),
                        "valid_from": span.map(|m| local(m.from, offset)),
                        "valid_to": span.and_then(|m| m.to).map(|t| local(t, offset)),
                        "kwh": p.wh.map(|w| w.kwh_string().to_string()),
                        "valley_kwh": p.valley_wh.map(|w| w.kwh_string().to_string()),
                        "flags": p.flags.names().collect::<Vec<_>>(),
                        "start": boundary(&p.start, offset),
                        "end": boundary(&p.end, offset),
                    })
                })
                .collect();
            let detail = json!({
                "night": n.night.to_string(),
                "from": local(n.span.0, offset),
                "to": local(n.span.1, offset),
                "kwh": n.wh.kwh_string().as_str(),
                "quality": n.quality.as_str(),
                "total_kwh": n.total_wh.map(|w| w.kwh_string().to_string()),
                "valley_kwh": n.valley_wh.map(|w| w.kwh_string().to_string()),
                "subsidised_kwh": n.subsidised_wh.kwh_string().as_str(),
                "cumulative_kwh": n.cumulative_wh.kwh_string().as_str(),
                "parts": parts,
                "readings_set_aside": set_aside,
                "text": explain_night(&cal, input, out, n),
            });
            NightRow {
                detail: detail.to_string(),
                ..row
            }
        })
        .collect();
    let mut statement = statement;
    if nights
        .iter()
        .any(|n| n.flags.iter().any(|f| f == READING_CONFLICT))
    {
        statement.flags.push(READING_CONFLICT.into());
    }
    (statement, nights)
}

fn boundary(b: &BoundaryValue, offset: UtcOffset) -> Value {
    let kind = match b.kind {
        EdgeKind::Open => "open",
        EdgeKind::Close => "close",
        EdgeKind::Install => "install",
        EdgeKind::Removal => "removal",
    };
    let method = match (b.e_wh, b.r1, b.r2) {
        (None, _, _) => "missing: no reading on one side, or the two are too far apart".to_string(),
        (Some(_), Some(r), _) | (Some(_), _, Some(r)) if r.ts == b.t => {
            "a reading at the boundary".to_string()
        }
        (Some(e), Some(r1), Some(r2)) if matches!(b.kind, EdgeKind::Open | EdgeKind::Close) => {
            format!(
            "E1 + (E2 - E1) * (b - t1) / (t2 - t1) = {} + {} * {} / {} = {} Wh, rounded half up",
            r1.unwrapped_wh,
            r2.unwrapped_wh - r1.unwrapped_wh,
            b.t - r1.ts,
            r2.ts - r1.ts,
            e.0
        )
        }
        (Some(_), _, _) => "the nearest reading inside the meter's validity".to_string(),
    };
    json!({
        "t": b.t,
        "at": local(b.t, offset),
        "kind": kind,
        "e_wh": b.e_wh.map(|e| e.0),
        "valley_wh": b.valley_wh.map(|e| e.0),
        "quality": b.quality.as_str(),
        "r1": b.r1.map(used),
        "r2": b.r2.map(used),
        "method": method,
    })
}

fn used(r: UsedReading) -> Value {
    json!({"ts": r.ts, "e_wh": r.e_wh, "unwrapped_wh": r.unwrapped_wh, "e_valley_wh": r.e_valley_wh})
}

/// An instant as local RFC 3339 (`2025-11-01T20:00:00+08:00`).
pub fn local(t: i64, offset: UtcOffset) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.to_offset(offset).format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}
