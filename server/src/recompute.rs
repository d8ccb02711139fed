//! Recompute: turns `dirty` (household, season) pairs into stored nights and statements
//! with the [`engine`](crate::engine), from the stored readings alone. Idempotent: the
//! result is a pure function of the stored set, so recomputing twice changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use qingnuan_shared::calendar::{BoundaryKind, Calendar, Night, Season};
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::MeterId;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::engine::resume::{self, Plan, SeasonState};
use crate::engine::{
    explain_judgement, explain_night, BoundaryValue, EdgeKind, Engine, Flags, HouseholdInput,
    HouseholdSeason, MeterSpan, RawReading, ReadingSource, SeasonFrame, Seed, UsedReading,
};
use crate::store::packs;
use crate::store::{
    ComputedNight, HouseholdRow, MeterRow, NightRow, RoundMark, SavedPair, StatementRow, Store,
    StoreError, StoredReading, CLAIM_S,
};

/// Pairs taken from `dirty` per round.
const ROUND: i64 = 1024;

/// Pairs a compute thread is worth starting for.
const MIN_JOBS_PER_THREAD: usize = 64;

/// One pair of a round to compute: its mark, registry input, fingerprint and resume plan.
type Job<'a> = (
    &'a RoundMark,
    HouseholdInput,
    u64,
    Option<(Plan, SeasonState)>,
);

/// Threads a round computes on: the machine's cores, at most 8.
fn compute_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// Pairs recomputed from their saved state (only the nights new readings can change),
/// since start (`/metrics`).
pub static RESUMED_PAIRS: AtomicU64 = AtomicU64::new(0);
/// Pairs recomputed whole (no usable saved state, or a change older than it), since start.
pub static WHOLE_PAIRS: AtomicU64 = AtomicU64::new(0);

/// Where rounds spent their time since start, microseconds: reading (marks, registry,
/// states, readings), computing, saving (`/metrics`, the recompute bench).
pub static ROUND_MICROS: RoundMicros = RoundMicros {
    read: AtomicU64::new(0),
    compute: AtomicU64::new(0),
    save: AtomicU64::new(0),
};

/// See [`ROUND_MICROS`].
pub struct RoundMicros {
    /// Reading what a round needs, µs.
    pub read: AtomicU64,
    /// The computation, µs.
    pub compute: AtomicU64,
    /// Saving figures, states and statements, µs.
    pub save: AtomicU64,
}

fn add_micros(to: &AtomicU64, d: Duration) {
    to.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
}

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
pub(crate) fn season_until(engine: &Engine, season: Season) -> i64 {
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
    let input = household_input(h, rows);
    let conflicts = conflicts_of(&input, stored_conflicts);
    let frame = engine.frame(season, now);
    let out = engine.household(&frame, &input, &ByMeter(stored));
    let (statement, nights) = rows_of(&out, &input, &conflicts, engine.policy(), &h.id, explain);
    (
        statement,
        nights.iter().map(ComputedNight::to_row).collect(),
    )
}

/// The engine's view of a household's registry rows (rows with an invalid meter id are
/// skipped and logged).
pub(crate) fn household_input(h: &HouseholdRow, rows: &[MeterRow]) -> HouseholdInput {
    let mut spans = Vec::with_capacity(rows.len());
    for m in rows {
        let Ok(id) = MeterId::new(&m.meter) else {
            warn!(meter = %m.meter, household = %h.id, "stored meter id is not valid; skipped");
            continue;
        };
        spans.push(MeterSpan {
            meter: id,
            from: m.valid_from,
            to: m.valid_to,
        });
    }
    HouseholdInput {
        id: h.id.clone(),
        max_power_w: h.max_power_w,
        meters: spans,
    }
}

/// Readings and conflict instants by meter, as the tests hand them to [`compute_pair`].
#[cfg(test)]
type EngineReadings = (
    HashMap<MeterId, Vec<RawReading>>,
    HashMap<MeterId, Vec<i64>>,
);

/// A round's stored readings by meter id, read by the engine in place (no copy per
/// household).
pub(crate) struct ByMeter<'a>(pub(crate) &'a HashMap<String, Vec<StoredReading>>);

impl ReadingSource for ByMeter<'_> {
    fn readings_of(&self, meter: &MeterId) -> &[RawReading] {
        self.0.get(meter.as_str()).map_or(&[], Vec::as_slice)
    }
}

/// The conflict instants of a household's meters that have any, keyed for the engine.
fn conflicts_of(
    input: &HouseholdInput,
    stored_conflicts: &HashMap<String, Vec<i64>>,
) -> HashMap<MeterId, Vec<i64>> {
    input
        .meters
        .iter()
        .filter_map(|span| {
            let ts = stored_conflicts.get(span.meter.as_str())?;
            Some((span.meter.clone(), ts.clone()))
        })
        .collect()
}

/// One pair of a round: the whole season, or resumed from its saved state when `resumed`
/// holds a plan (engine/resume.rs); the figures to save with the next state.
fn compute_pair<R: ReadingSource + ?Sized>(
    engine: &mut Engine,
    frame: &SeasonFrame,
    input: &HouseholdInput,
    fingerprint: u64,
    readings: &R,
    conflicts: &HashMap<MeterId, Vec<i64>>,
    resumed: Option<(Plan, SeasonState)>,
) -> (StatementRow, Vec<ComputedNight>, Option<Night>, SeasonState) {
    let policy = *engine.policy();
    let n = frame.nights().len();
    let seeded_from = n.saturating_sub(resume::SEEDED_NIGHTS);
    let Some((plan, old)) = resumed else {
        let out = engine.household(frame, input, readings);
        let seeds = engine.seeds_at(input, &resume::opens_from(frame, seeded_from));
        let (statement, rows) = rows_of(&out, input, conflicts, &policy, &input.id, false);
        let nights: Vec<_> = out
            .nights
            .iter()
            .zip(&rows)
            .map(|(n, r)| (n, r.flags.contains(&READING_CONFLICT)))
            .collect();
        let state = resume::next_state(
            fingerprint,
            frame,
            &nights,
            input.meters.len(),
            0,
            |i, k| seed_of(&seeds, i, k, seeded_from),
            None,
        );
        drop(nights);
        engine.recycle(out);
        return (statement, rows, None, state);
    };
    let mut out = engine.household_resumed(frame, input, readings, &plan.seeds);
    let fresh_from = plan.seeded_at.max(seeded_from);
    let seeds = engine.seeds_at(input, &resume::opens_from(frame, fresh_from));
    let computed = std::mem::take(&mut out.nights);
    out.nights = resume::merge(frame, &plan, &old, computed);
    out.statement = engine.settle(&mut out.nights);
    let from = resume::night_at(frame, plan.from);
    let (statement, rows) = rows_from(
        &out,
        input,
        conflicts,
        &policy,
        &input.id,
        false,
        from,
        resume::conflict_before(&old, plan.from),
    );
    let saved_conflicts = old
        .nights
        .iter()
        .filter(|s| s.index < plan.from)
        .map(|s| s.flags & resume::CONFLICT_BIT != 0);
    let new_conflicts = rows.iter().map(|r| r.flags.contains(&READING_CONFLICT));
    let nights: Vec<_> = out
        .nights
        .iter()
        .zip(saved_conflicts.chain(new_conflicts))
        .collect();
    let state = resume::next_state(
        fingerprint,
        frame,
        &nights,
        input.meters.len(),
        plan.seeded_at,
        |i, k| seed_of(&seeds, i, k, fresh_from),
        Some(&old),
    );
    drop(nights);
    engine.recycle(out);
    (statement, rows, from, state)
}

/// `seeds[i][k - first]`, as [`Engine::seeds_at`] returned them from frame night `first` on.
fn seed_of(seeds: &[Vec<Option<Seed>>], i: usize, k: usize, first: usize) -> Option<Seed> {
    seeds.get(i)?.get(k.checked_sub(first)?).copied().flatten()
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

/// Recomputes every dirty pair now (the CLI's export and tests use it). On PostgreSQL,
/// marks another replica has claimed are waited for (up to the claim's lapse, when they
/// become this caller's to take), so that what follows reads settled figures.
pub async fn drain(store: &Store, engine: &mut Engine, now: i64) -> Result<usize, StoreError> {
    let mut done = 0;
    let lapse = u64::try_from(CLAIM_S).unwrap_or(60) + 10;
    let patience = std::time::Instant::now() + Duration::from_secs(lapse);
    let mut rounds = Pipeline::default();
    loop {
        match rounds.step(store, engine, now).await? {
            0 => {
                if store.dirty_count().await? == 0 || std::time::Instant::now() > patience {
                    return Ok(done);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            n => done += n,
        }
    }
}

/// A round computed and not saved yet.
struct Prepared {
    /// The pairs' figures, states and mark generations.
    results: Vec<SavedPair>,
    /// Marks taken (including those dropped: unknown household, bad season name).
    taken: usize,
    /// The last mark's `(household, season)`: the next round starts after it.
    last: Option<(String, String)>,
    /// Pairs recomputed whole and resumed.
    whole: usize,
    resumed: usize,
}

/// Reads and computes up to [`ROUND`] dirty pairs after `after` (see
/// [`Store::round_marks`]); nothing is written but the marks it drops.
async fn prepare(
    store: &Store,
    engine: &mut Engine,
    now: i64,
    after: Option<&(String, String)>,
) -> Result<Prepared, StoreError> {
    // Time spent reading and computing, each segment added as it ends.
    let (mut t, mut read, mut compute) = (Instant::now(), Duration::ZERO, Duration::ZERO);
    let marks = store
        .round_marks(ROUND, after.map(|(h, s)| (h.as_str(), s.as_str())))
        .await?;
    let mut by_season: BTreeMap<Season, Vec<&RoundMark>> = BTreeMap::new();
    for rm in &marks {
        let m = &rm.mark;
        match m.season.parse::<Season>() {
            Ok(s) => by_season.entry(s).or_default().push(rm),
            Err(_) => {
                warn!(household = %m.household, season = %m.season, "dirty mark with a bad season name dropped");
                store.clear_dirty(&m.household, &m.season, m.gen).await?;
            }
        }
    }
    let max_gap = engine.policy().rules.max_gap_s;
    let policy_digest = resume::policy_digest(engine.policy());
    let mut results = Vec::with_capacity(marks.len());
    let (mut whole, mut resumed) = (0usize, 0usize);
    for (season, marks) in by_season {
        let name = season.to_string();
        let frame = engine.frame(season, now);
        let mut jobs = Vec::with_capacity(marks.len());
        let mut bounds = Vec::new();
        for rm in marks {
            let m = &rm.mark;
            let Some(h) = &rm.household else {
                debug!(household = %m.household, %season, "dirty mark of an unknown household dropped");
                store.clear_dirty(&m.household, &name, m.gen).await?;
                continue;
            };
            let input = household_input(h, &rm.meters);
            let fp = resume::fingerprint_after(policy_digest, &input);
            let plan = m.since.and_then(|since| {
                let old = SeasonState::from_bytes(rm.state.as_deref()?)?;
                if old.fingerprint != fp {
                    return None;
                }
                Some((resume::plan(&frame, &input, &old, since, max_gap)?, old))
            });
            for (i, span) in input.meters.iter().enumerate() {
                let lower = plan
                    .as_ref()
                    .and_then(|(p, _)| p.lower.get(i).copied().flatten());
                bounds.push((span.meter.as_str().to_string(), lower));
            }
            jobs.push((rm, input, fp, plan));
        }
        let (stored, stored_conflicts) = store
            .round_readings(&bounds, season_until(engine, season))
            .await?;
        read += t.elapsed();
        t = Instant::now();
        resumed += jobs.iter().filter(|j| j.3.is_some()).count();
        whole += jobs.iter().filter(|j| j.3.is_none()).count();
        // The computation is pure and the round's inputs are shared: the jobs are split
        // across the machine's cores (two here), each with an engine of its own.
        let run = |engine: &mut Engine, part: Vec<Job<'_>>| -> Vec<SavedPair> {
            part.into_iter()
                .map(|(rm, input, fp, plan)| {
                    let conflicts = conflicts_of(&input, &stored_conflicts);
                    let (statement, nights, from, state) = compute_pair(
                        engine,
                        &frame,
                        &input,
                        fp,
                        &ByMeter(&stored),
                        &conflicts,
                        plan,
                    );
                    let state = state.to_bytes();
                    SavedPair {
                        statement,
                        nights,
                        gen: Some(rm.mark.gen),
                        from_night: from.map(|n| n.to_string()),
                        state_stored: rm.state.as_ref() == Some(&state),
                        state: Some(state),
                    }
                })
                .collect()
        };
        let threads = compute_threads()
            .min(jobs.len() / MIN_JOBS_PER_THREAD)
            .max(1);
        if threads == 1 {
            results.extend(run(engine, jobs));
        } else {
            let per = jobs.len().div_ceil(threads);
            let mut parts: Vec<Vec<Job<'_>>> = Vec::with_capacity(threads);
            let mut jobs = jobs.into_iter();
            for _ in 0..threads {
                parts.push(jobs.by_ref().take(per).collect());
            }
            let mut parts = parts.into_iter();
            let mine = parts.next().unwrap_or_default();
            let done: Vec<Vec<SavedPair>> = std::thread::scope(|scope| {
                let others: Vec<_> = parts
                    .map(|part| {
                        let mut e = engine.clone();
                        let run = &run;
                        scope.spawn(move || run(&mut e, part))
                    })
                    .collect();
                let mut done = vec![run(engine, mine)];
                for h in others {
                    // A panic in the pure computation is a bug: let it surface as one.
                    done.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                }
                done
            });
            results.extend(done.into_iter().flatten());
        }
        compute += t.elapsed();
        t = Instant::now();
    }
    read += t.elapsed();
    add_micros(&ROUND_MICROS.read, read);
    add_micros(&ROUND_MICROS.compute, compute);
    Ok(Prepared {
        results,
        taken: marks.len(),
        last: marks
            .last()
            .map(|m| (m.mark.household.clone(), m.mark.season.clone())),
        whole,
        resumed,
    })
}

/// Stores a prepared round in one transaction; returns how many marks it took.
async fn save(store: &Store, p: Prepared, now: i64) -> Result<usize, StoreError> {
    let t = Instant::now();
    let saved = store.save_round(&p.results, now).await?;
    add_micros(&ROUND_MICROS.save, t.elapsed());
    RESUMED_PAIRS.fetch_add(p.resumed as u64, Relaxed);
    WHOLE_PAIRS.fetch_add(p.whole as u64, Relaxed);
    debug!(
        pairs = p.taken,
        whole = p.whole,
        resumed = p.resumed,
        written = saved.nights_written,
        unchanged = saved.nights_unchanged,
        "recompute round stored"
    );
    Ok(p.taken)
}

/// Recompute rounds: each takes up to [`ROUND`] dirty pairs and stores them in one
/// transaction. Reads and writes in bulk: a few queries per season in the round, and only
/// the nights whose figures changed are rewritten. A pair marked with the instant its new
/// readings start, and saved with a resume state, is recomputed only from the nights those
/// readings can change (engine/resume.rs); any other, whole.
///
/// One save is in flight at a time: while a round's figures are written (the store's
/// writer, its sync), the next round, of the marks after it, is read and computed. The
/// rounds hold disjoint pairs, so the overlap changes no figure; a failed save leaves its
/// marks dirty for a later round.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// The save in flight: the marks it took.
    saving: Option<tokio::task::JoinHandle<Result<usize, StoreError>>>,
    /// The last mark of the round in flight (or last saved): the next one starts after it.
    after: Option<(String, String)>,
}

impl Pipeline {
    /// Prepares the next round, past the one in flight, then waits for that one and starts
    /// saving this one; returns the marks taken. Past the last mark it starts again from
    /// the first (after the save in flight is done, so none of its marks is read again);
    /// 0: no mark at all, and nothing in flight.
    pub async fn step(
        &mut self,
        store: &Store,
        engine: &mut Engine,
        now: i64,
    ) -> Result<usize, StoreError> {
        for _ in 0..2 {
            if self.after.is_none() {
                self.finish().await?;
            }
            let prepared = prepare(store, engine, now, self.after.as_ref()).await;
            let saved = self.finish().await;
            let p = match (prepared, saved) {
                (Ok(p), Ok(())) => p,
                (Err(e), _) | (_, Err(e)) => {
                    self.after = None;
                    return Err(e);
                }
            };
            if p.taken == 0 {
                if self.after.take().is_some() {
                    continue; // from the first mark again
                }
                return Ok(0);
            }
            let taken = p.taken;
            self.after = p.last.clone();
            let store = store.clone();
            self.saving = Some(tokio::spawn(async move { save(&store, p, now).await }));
            return Ok(taken);
        }
        Ok(0)
    }

    /// Waits for the save in flight, if any.
    pub async fn finish(&mut self) -> Result<(), StoreError> {
        let Some(h) = self.saving.take() else {
            return Ok(());
        };
        match h.await {
            Ok(r) => r.map(|_| ()),
            // A panic in the save is a bug: let it surface as one.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Cancelled),
        }
    }
}

/// While ingest is behind the broker ([`crate::ingest::Backlog`]), recompute starts a
/// round at most this often: measured, resting 1 s let ingest reach 114k readings/s and
/// 2 s 127k, against 87k with no rest (BENCHMARKS.md), and the statements settled sooner.
pub const BACKLOG_REST: Duration = Duration::from_secs(2);

/// Runs until `shutdown`: recomputes dirty pairs when ingest says so, and marks every
/// household's running season dirty when a night closes (a closed night is listed).
pub async fn run(
    store: Store,
    policy: Policy,
    clock: SharedClock,
    wake: Arc<Notify>,
    ingest: Arc<crate::ingest::IngestStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut engine = Engine::new(policy);
    // A night that closed while the server was down is listed now.
    if let Err(e) = catch_up_closes(&store, &engine, clock.now()).await {
        warn!(error = %e, "marking nights closed while down failed");
    }
    let mut next_close = next_close_after(&engine, clock.now());
    let mut packer = Packer::default();
    let mut rounds = Pipeline::default();
    let mut last_round: Option<Instant> = None;
    loop {
        // Ingest first while it is behind: a round at most every BACKLOG_REST.
        if let Some(rest) = last_round
            .map(|t| BACKLOG_REST.saturating_sub(t.elapsed()))
            .filter(|r| !r.is_zero() && ingest.backlog.is_behind())
        {
            tokio::select! {
                _ = shutdown.changed() => {
                    if let Err(e) = rounds.finish().await {
                        warn!(error = %e, "saving the last recompute round failed");
                    }
                    return;
                }
                _ = ingest.backlog.wait_caught_up(rest) => {}
            }
        }
        last_round = Some(Instant::now());
        let now = clock.now();
        if next_close.is_some_and(|(t, _)| now >= t) {
            if let Err(e) = catch_up_closes(&store, &engine, now).await {
                warn!(error = %e, "marking the running season failed");
            }
            next_close = next_close_after(&engine, now);
        }
        match rounds.step(&store, &mut engine, now).await {
            // More may be waiting: go on without sleeping (night closes are checked first).
            Ok(n) if n > 0 => {
                if *shutdown.borrow() {
                    if let Err(e) = rounds.finish().await {
                        warn!(error = %e, "saving the last recompute round failed");
                    }
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            }
            // Idle: pack a little of the readings (store/packs.rs); go on while there is more.
            Ok(_) => match packer.pass(&store, now).await {
                Ok(true) => {
                    // A sweep of a large registry is hundreds of passes: stop between them.
                    if *shutdown.borrow() {
                        return;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "packing readings failed; retrying"),
            },
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

/// Packs readings while recompute is idle, a pass at a time: sweeps the meters in byte
/// order; after a sweep that found nothing to do, rests until the horizon moves (once a
/// day) or ten minutes have passed (new meters, late readings that dropped packs).
#[derive(Default)]
struct Packer {
    /// The last meter of the sweep so far.
    after: Option<String>,
    /// Meters moved on in the sweep so far.
    moved: u64,
    /// The horizon of the last pass.
    horizon: i64,
    /// No sweep before this.
    rest: Option<Instant>,
}

impl Packer {
    /// One pass if one is due; whether it did something.
    async fn pass(&mut self, store: &Store, now: i64) -> Result<bool, StoreError> {
        let horizon = packs::horizon_at(now);
        if horizon != self.horizon {
            (self.horizon, self.rest) = (horizon, None);
        }
        if self.rest.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        let s = store.pack_readings(horizon, self.after.as_deref()).await?;
        self.moved += s.meters;
        if s.meters > 0 {
            debug!(
                meters = s.meters,
                readings = s.readings,
                packs = s.packs,
                "readings packed"
            );
        }
        match s.last {
            Some(m) => self.after = Some(m),
            None => {
                if self.moved == 0 {
                    self.rest = Some(Instant::now() + Duration::from_secs(600));
                }
                (self.after, self.moved) = (None, 0);
            }
        }
        Ok(s.meters > 0)
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
        // Listing the night changes only nights its readings can reach: from its open.
        let since = cal.night_span(b.night).map(|(open, _)| open);
        mark_all(store, season, since).await?;
    }
    store.set_meta(CLOSES_MARKED, b.t).await
}

async fn mark_all(store: &Store, season: Season, since: Option<i64>) -> Result<(), StoreError> {
    let s = season.to_string();
    let ids = store.household_ids().await?;
    match since {
        Some(t) => {
            let pairs: Vec<_> = ids.into_iter().map(|h| (h, s.clone(), t)).collect();
            store.mark_dirty_since(&pairs).await
        }
        None => {
            let pairs: Vec<_> = ids.into_iter().map(|h| (h, s.clone())).collect();
            store.mark_dirty(&pairs).await
        }
    }
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
) -> (StatementRow, Vec<ComputedNight>) {
    rows_from(
        out, input, conflicts, policy, household, explain, None, false,
    )
}

/// [`rows_of`] with night rows only from night `from` on (earlier nights are stored
/// already); `conflict_before`: one of those earlier nights carries [`READING_CONFLICT`].
#[allow(clippy::too_many_arguments)]
fn rows_from(
    out: &HouseholdSeason,
    input: &HouseholdInput,
    conflicts: &HashMap<MeterId, Vec<i64>>,
    policy: &Policy,
    household: &str,
    explain: bool,
    from: Option<Night>,
    conflict_before: bool,
) -> (StatementRow, Vec<ComputedNight>) {
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
    // Most households have no conflict at all: then no night needs looking at.
    let any_conflict = input
        .meters
        .iter()
        .any(|m| conflicts.get(&m.meter).is_some_and(|ts| !ts.is_empty()));
    let conflicted = |n: &crate::engine::NightFigure| {
        any_conflict
            && out.parts_of(n).iter().any(|p| {
                let from = p.start.r1.map_or(p.start.t, |r| r.ts);
                let to = p.end.r2.map_or(p.end.t, |r| r.ts);
                input
                    .meters
                    .get(p.span)
                    .and_then(|m| conflicts.get(&m.meter))
                    .is_some_and(|ts| ts.iter().any(|&t| from <= t && t <= to))
            })
    };
    let mut nights: Vec<ComputedNight> = Vec::with_capacity(out.nights.len());
    nights.extend(
        out.nights
            .iter()
            .filter(|n| from.is_none_or(|f| n.night >= f))
            .map(|n| {
                let row = ComputedNight {
                    night: n.night,
                    wh: n.wh.0,
                    quality: n.quality.as_str(),
                    flags: night_flag_names(n.flags, conflicted(n)),
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
                    return ComputedNight { detail, ..row };
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
                ComputedNight {
                    detail: detail.to_string(),
                    ..row
                }
            }),
    );
    let mut statement = statement;
    if conflict_before || nights.iter().any(|n| n.flags.contains(&READING_CONFLICT)) {
        statement.flags.push(READING_CONFLICT.into());
    }
    (statement, nights)
}

/// The names of a night's flags, the engine's then [`READING_CONFLICT`], as one static
/// list per combination (built once): a night's row allocates nothing for them.
fn night_flag_names(flags: Flags, conflict: bool) -> &'static [&'static str] {
    /// Every engine flag is one of the low six bits.
    const ENGINE: u16 = (1 << 6) - 1;
    static LISTS: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    let lists = LISTS.get_or_init(|| {
        (0..=ENGINE)
            .flat_map(|bits| [false, true].map(|c| (bits, c)))
            .map(|(bits, c)| {
                let mut names: Vec<&'static str> = Flags(bits).names().collect();
                if c {
                    names.push(READING_CONFLICT);
                }
                names
            })
            .collect()
    });
    let k = usize::from(flags.0 & ENGINE) * 2 + usize::from(conflict);
    lists.get(k).map_or(&[], Vec::as_slice)
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

#[cfg(test)]
#[path = "recompute_tests.rs"]
mod tests;
