//! Replay of held readings: after a registry change, the readings it did not bind when
//! they arrived (an installer's agent running before its gateway or meters were imported)
//! are checked again; those it binds now are stored as if they had just arrived.
//!
//! Invariant: a held reading is checked against every registry version newer than the
//! one it was last checked against, once; admitted, it leaves the held table in the same
//! transaction that stores it (and marks its households dirty), so a replay repeated by a
//! crash or by another replica stores nothing twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::SharedClock;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::ingest::validate::Bindings;
use crate::ingest::IngestStats;
use crate::store::{IngestTx, Store, StoreError};

/// Held readings checked per transaction.
pub const PAGE: i64 = 5_000;

/// What one [`pass`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Held readings the registry binds now, stored.
    pub admitted: u64,
    /// Of those, stored for the first time (the others were already stored: repeats).
    pub new_readings: u64,
    /// Held readings checked and still not bound.
    pub still_held: u64,
}

/// Checks every held reading not yet checked against the registry's current version, a
/// page of [`PAGE`] per transaction, until none is left.
pub async fn pass(store: &Store, cal: &Calendar, now: i64) -> Result<ReplaySummary, StoreError> {
    let mut sum = ReplaySummary::default();
    let version = store.registry_version().await?;
    let mut bindings: Option<Bindings> = None;
    loop {
        let held = store.held_to_check(version, PAGE).await?;
        if held.is_empty() {
            return Ok(sum);
        }
        let bindings = match &mut bindings {
            Some(b) => &*b,
            None => bindings.insert(Bindings::new(
                store.gateway_ids().await?,
                store.bindings().await?,
            )),
        };
        let mut tx = IngestTx {
            received: now,
            held_version: version,
            ..Default::default()
        };
        for r in held {
            let key = (r.gateway.clone(), r.meter.clone(), r.ts);
            if bindings.admit(&r.gateway, &r.meter, r.ts).is_ok() {
                tx.released.push(key);
                tx.readings.push(r);
            } else {
                tx.rechecked.push(key);
            }
        }
        let committed = store
            .commit_ingest(&tx, |r, out| bindings.dirty_of(r, cal, now, out))
            .await?;
        sum.admitted += tx.released.len() as u64;
        sum.new_readings += committed.new_readings;
        sum.still_held += tx.rechecked.len() as u64;
    }
}

/// Passes between two checks of the `held_max` bound.
const BOUND_EVERY: u32 = 30;

/// Runs [`pass`] every `period` (real time) until `stop`, waking recompute when readings
/// were admitted (a registry import moves the version; the next pass sees it), and every
/// [`BOUND_EVERY`] passes drops the earliest held readings beyond `held_max`, counted.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    store: Store,
    cal: Calendar,
    clock: SharedClock,
    recompute: Arc<Notify>,
    stats: Arc<IngestStats>,
    period: Duration,
    held_max: i64,
    mut stop: watch::Receiver<bool>,
) {
    let mut passes = 0u32;
    loop {
        match pass(&store, &cal, clock.now()).await {
            Ok(s) if s.admitted > 0 => {
                stats.held_admitted.fetch_add(s.admitted, Ordering::Relaxed);
                info!(
                    admitted = s.admitted,
                    new = s.new_readings,
                    still_held = s.still_held,
                    "held readings admitted after a registry change"
                );
                recompute.notify_one();
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "replay of held readings failed; retrying"),
        }
        if passes % BOUND_EVERY == 0 {
            match store.held_bound(held_max).await {
                Ok(0) => {}
                Ok(n) => {
                    stats.held_dropped.fetch_add(n, Ordering::Relaxed);
                    warn!(
                        dropped = n,
                        held_max, "more readings held than [ingest] held_max: the earliest dropped"
                    );
                }
                Err(e) => warn!(error = %e, "bounding the held readings failed"),
            }
        }
        passes = passes.wrapping_add(1);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
