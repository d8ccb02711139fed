//! The settle pass of bounded state (docs/bounded-state.md): raises the settled cut, then
//! thins every household's readings below it to the ones its figures rest on.
//!
//! Run by `qingnuan-server settle --before DATE`, or every morning by the server with
//! `[store] settle_after_days` ([`run`]). Figures do not change (the engine checks
//! each household: `engine/thin.rs`); from then on readings, registry changes and a
//! policy that reach before the cut are refused (`store/settle.rs`).

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use qingnuan_shared::calendar::Night;
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::policy::Policy;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::{resume, Engine};
use crate::recompute::{household_input, season_until, ByMeter};
use crate::registry::seasons_touched;
use crate::store::{LeaseKind, Store, StoreError};

/// What a settle pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SettleSummary {
    /// The cut in force after the pass, UTC Unix seconds.
    pub cut: i64,
    /// Households looked at.
    pub households: u64,
    /// (household, season) pairs whose readings were thinned.
    pub pairs: u64,
    /// Distinct reading instants below the cut within the households' spans.
    pub considered: u64,
    /// Reading rows deleted.
    pub deleted: u64,
    /// Pairs left whole because the computation from the kept readings differed.
    pub unverified: u64,
    /// Meters left whole because more than one household is registered on them.
    pub shared_meters: u64,
    /// Pairs left whole because some of their readings still wait for the InfluxDB sink
    /// (settle again once it has caught up).
    pub waiting_export: u64,
}

/// The fingerprint of what thinned readings depend on (the calendar and the rules of
/// judging, not prices or the cap), as stored with the cut; never 0, which means none.
pub fn policy_fingerprint(engine: &Engine) -> i64 {
    let p = engine.policy();
    let text = format!(
        "{:?} {:?} {} {} {} {:?}",
        p.season_first,
        p.season_last,
        p.offpeak_start_min,
        p.offpeak_end_min,
        p.utc_offset_s,
        p.rules
    );
    let h = resume::fnv(resume::FNV_START, text.as_bytes());
    match i64::from_ne_bytes(h.to_ne_bytes()) {
        0 => 1,
        v => v,
    }
}

/// The cut for "nights labelled before `night` are settled": `night`'s local midnight,
/// plus the window's close when the window runs past midnight (08:00 in Beijing, when
/// the night before it closes), UTC Unix seconds.
pub fn cut_of(engine: &Engine, night: Night) -> i64 {
    let p = engine.policy();
    let midnight = engine.calendar().local_midnight(night.0);
    if p.offpeak_end_min <= p.offpeak_start_min {
        midnight + i64::from(p.offpeak_end_min) * 60
    } else {
        midnight
    }
}

/// Pairs thinned in one transaction at most.
const BATCH_PAIRS: usize = 256;
/// Readings deleted in one transaction at most (about).
const BATCH_ROWS: usize = 200_000;

/// Applies the pending thinnings in one transaction and adds up what they did.
async fn apply(
    store: &Store,
    pending: &mut Vec<(String, BTreeMap<String, Vec<i64>>)>,
    sum: &mut SettleSummary,
) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    for done in store.apply_thinning(pending).await? {
        if done.waiting_export > 0 {
            sum.waiting_export += 1;
            continue;
        }
        sum.pairs += 1;
        sum.deleted += done.deleted;
        sum.shared_meters += done.shared_meters;
    }
    pending.clear();
    Ok(())
}

/// Raises the cut to `cut` (at most `now`) and thins every household's readings below
/// the cut in force. Safe to run again, and while the server runs.
pub async fn settle(
    store: &Store,
    engine: &mut Engine,
    cut: i64,
    now: i64,
) -> Result<SettleSummary, StoreError> {
    let cut = store
        .raise_settled(cut.min(now), policy_fingerprint(engine))
        .await?;
    let mut sum = SettleSummary {
        cut,
        ..SettleSummary::default()
    };
    let cal = *engine.calendar();
    // Households thinned in one transaction (one commit, one fsync, for many).
    let mut pending: Vec<(String, BTreeMap<String, Vec<i64>>)> = Vec::new();
    let mut pending_rows = 0usize;
    for id in store.household_ids().await? {
        let Some(h) = store.household(&id).await? else {
            continue;
        };
        let rows = store.meters_of(&id).await?;
        let Some(first) = rows.iter().map(|m| m.valid_from).min() else {
            continue;
        };
        sum.households += 1;
        let input = household_input(&h, &rows);
        for season in seasons_touched(&cal, first, Some(cut), now) {
            let until = season_until(engine, season);
            let mut stored = HashMap::new();
            for m in &rows {
                if !stored.contains_key(&m.meter) {
                    stored.insert(m.meter.clone(), store.readings_of(&m.meter, until).await?);
                }
            }
            let frame = engine.frame(season, now);
            let t = engine.thin(&frame, &input, &ByMeter(&stored), cut);
            sum.considered += t.considered as u64;
            if !t.verified {
                warn!(household = %id, %season, "thinning not verified; readings left whole");
                sum.unverified += 1;
                continue;
            }
            if t.drop.is_empty() {
                continue;
            }
            pending_rows += t.dropped();
            pending.push((
                id.clone(),
                t.drop
                    .into_iter()
                    .map(|(m, ts)| (m.as_str().to_string(), ts))
                    .collect(),
            ));
        }
        if pending.len() >= BATCH_PAIRS || pending_rows >= BATCH_ROWS {
            apply(store, &mut pending, &mut sum).await?;
            pending_rows = 0;
        }
    }
    apply(store, &mut pending, &mut sum).await?;
    info!(
        cut,
        households = sum.households,
        deleted = sum.deleted,
        considered = sum.considered,
        waiting_export = sum.waiting_export,
        "settled"
    );
    Ok(sum)
}

/// The cut `days` days back from `now`: nights labelled before the local date `days` days
/// ago are settled ([`cut_of`]).
pub fn cut_days_back(engine: &Engine, now: i64, days: u32) -> i64 {
    let back = now.saturating_sub(i64::from(days).saturating_mul(86_400));
    cut_of(engine, Night(engine.calendar().local_date(back)))
}

/// `[store] settle_after_days`: settles the nights older than `days` days whenever that
/// cut moves (each morning), until `stop`. A failed pass is logged and tried again later.
/// With replicas on one PostgreSQL database only the one holding the settle lease
/// ([`LeaseKind::Settle`]) settles; the others look again every [`LEASE_RETRY`] and take
/// over when it goes.
pub async fn run(
    store: Store,
    policy: Policy,
    clock: SharedClock,
    days: u32,
    mut stop: watch::Receiver<bool>,
) {
    let mut engine = Engine::new(policy);
    let mut lease = store.lease(LeaseKind::Settle);
    loop {
        let now = clock.now();
        let cut = cut_days_back(&engine, now, days);
        let mut most = Duration::from_secs(3600);
        match lease.held().await {
            Ok(true) => match store.settled_before().await {
                Ok(done) if done.is_some_and(|d| d >= cut) => {}
                Ok(_) => {
                    if let Err(e) = settle(&store, &mut engine, cut, now).await {
                        warn!(error = %e, "settling failed; trying again later");
                    }
                }
                Err(e) => warn!(error = %e, "settled cut unreadable; trying again later"),
            },
            Ok(false) => most = LEASE_RETRY,
            Err(e) => {
                warn!(error = %e, "settle lease unreadable; trying again later");
                most = LEASE_RETRY;
            }
        }
        // The next cut is a day later; look again then (at least every second, at most
        // every hour of real time, or every LEASE_RETRY while another replica settles).
        let wait = clock
            .real_until(cut.saturating_add(86_400).saturating_mul(1000))
            .clamp(Duration::from_secs(1), most);
        tokio::select! {
            _ = stop.changed() => {
                lease.release().await;
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How often a replica that does not hold the settle lease looks again.
pub const LEASE_RETRY: Duration = Duration::from_secs(60);
