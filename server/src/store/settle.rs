//! The settled cut of bounded state (docs/bounded-state.md): the `settled_before` meta
//! row that ingest and registry imports check, and the thinning of one household's
//! readings below it.
//!
//! Order: the cut is raised and committed first ([`Store::raise_settled`]); from then on
//! no reading below it is stored and no registry change reaching before it is made, so
//! the readings a thinning pass reads below the cut are final. On PostgreSQL ingest and
//! imports read the row `FOR SHARE`, so a transaction that read the old cut commits
//! before the raise does.

use std::collections::BTreeMap;

use sqlx::{Any, Row, Transaction};

use super::sql::QueryBuilder;
use super::{Backend, Store, StoreError, WriteLock};

/// The value of `settled_before` while nothing is settled.
const NONE: i64 = i64::MIN;

/// Rows per `IN` list of a delete.
const CHUNK: usize = 500;

/// What [`Store::apply_thinning`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThinSummary {
    /// Reading rows deleted.
    pub deleted: u64,
    /// Meters left alone: registered to more than one household.
    pub shared_meters: u64,
    /// 1 when nothing was deleted because some of these readings still wait in the
    /// InfluxDB sink's queue (the raw series must reach it first; settle again later).
    pub waiting_export: u64,
}

/// The cut inside `tx`: `None` while nothing is settled. PostgreSQL: `FOR SHARE`, held to
/// the end of `tx`, so a concurrent raise waits for it.
pub(super) async fn cut_in(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
) -> Result<Option<i64>, StoreError> {
    let sql = match backend {
        Backend::Sqlite => "SELECT value FROM meta WHERE key = 'settled_before'",
        Backend::Postgres => "SELECT value FROM meta WHERE key = 'settled_before' FOR SHARE",
    };
    let v: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut **tx).await?;
    Ok(v.filter(|&v| v != NONE))
}

impl Store {
    /// The settled cut, UTC Unix seconds: readings before it were thinned. `None` while
    /// nothing is settled.
    pub async fn settled_before(&self) -> Result<Option<i64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'settled_before'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.filter(|&v| v != NONE))
    }

    /// The fingerprint of the policy the cut was settled with (0: none yet).
    pub async fn settled_policy(&self) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'settled_policy'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    /// Raises the cut to `cut` (never lowers it) under the policy fingerprint `policy`
    /// (non-zero), and returns the cut now in force. A policy other than the one of an
    /// earlier cut is refused: the readings below it were thinned under that policy.
    pub async fn raise_settled(&self, cut: i64, policy: i64) -> Result<i64, StoreError> {
        let mut tx = self.begin_write(WriteLock::Settled).await?;
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        };
        let old: i64 = sqlx::query_scalar(&format!(
            "SELECT value FROM meta WHERE key = 'settled_policy'{lock}"
        ))
        .fetch_one(&mut *tx)
        .await?;
        if old != 0 && old != policy {
            return Err(StoreError::Settled(format!(
                "the policy differs from the one readings were settled with (fingerprint {old}, now {policy}); run with that policy"
            )));
        }
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'settled_policy'")
            .bind(policy)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE meta SET value = CASE WHEN value < $1 THEN $1 ELSE value END WHERE key = 'settled_before'",
        )
        .bind(cut)
        .execute(&mut *tx)
        .await?;
        let now: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'settled_before'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(now)
    }

    /// Deletes, in one transaction, each household's readings `drop` (meter → instants,
    /// each below the cut), drops the packs they fell into and those households' resume
    /// states (their next recompute is whole; their figures do not change). A meter
    /// registered to more than one household is left alone (another household's figures
    /// may rest on its readings). A household any of whose readings up to these still
    /// waits for the InfluxDB sink is left whole (keeping only some of the dropped
    /// readings could change how the others are judged). Refuses instants at or above
    /// the cut. Returns per household what was done, in order.
    pub async fn apply_thinning(
        &self,
        households: &[(String, BTreeMap<String, Vec<i64>>)],
    ) -> Result<Vec<ThinSummary>, StoreError> {
        let mut out = vec![ThinSummary::default(); households.len()];
        if households
            .iter()
            .all(|(_, d)| d.values().all(Vec::is_empty))
        {
            return Ok(out);
        }
        let mut tx = self.begin_write(WriteLock::Settled).await?;
        let cut = cut_in(&mut tx, self.backend).await?;
        let highest = households
            .iter()
            .flat_map(|(_, d)| d.values().flatten())
            .copied()
            .max()
            .unwrap_or(NONE);
        if cut.is_none_or(|c| highest >= c) {
            return Err(StoreError::Settled(format!(
                "thinning a reading at {highest}: not below the settled cut ({cut:?})"
            )));
        }
        let mut first: BTreeMap<&str, i64> = BTreeMap::new();
        'household: for ((household, drop), sum) in households.iter().zip(out.iter_mut()) {
            // The sink exports a queued reading by reading its row: none may go before.
            for (meter, ts) in drop {
                let Some(&highest) = ts.iter().max() else {
                    continue;
                };
                let queued: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM sink_readings WHERE meter = $1 AND ts <= $2",
                )
                .bind(meter)
                .bind(highest)
                .fetch_one(&mut *tx)
                .await?;
                if queued > 0 {
                    sum.waiting_export = 1;
                    continue 'household;
                }
            }
            for (meter, ts) in drop {
                let Some(&lowest) = ts.iter().min() else {
                    continue;
                };
                let owners: i64 = sqlx::query_scalar(
                    "SELECT COUNT(DISTINCT household) FROM meters WHERE meter = $1",
                )
                .bind(meter)
                .fetch_one(&mut *tx)
                .await?;
                if owners > 1 {
                    sum.shared_meters += 1;
                    continue;
                }
                for chunk in ts.chunks(CHUNK) {
                    let mut qb =
                        QueryBuilder::new(self.backend, "DELETE FROM readings WHERE meter = ");
                    qb.push_bind(meter.as_str());
                    qb.push(" AND ts IN ");
                    qb.push_tuples(chunk, |mut b, t| {
                        b.push_bind(*t);
                    });
                    sum.deleted += qb.build().execute(&mut *tx).await?.rows_affected();
                }
                let f = first.entry(meter.as_str()).or_insert(lowest);
                *f = (*f).min(lowest);
            }
            sqlx::query("DELETE FROM season_state WHERE household = $1")
                .bind(household)
                .execute(&mut *tx)
                .await?;
        }
        super::packs::invalidate(&mut tx, self.backend, &first).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Stored reading rows of `meter` (all of them; for tests and the settle report).
    pub async fn reading_count_of(&self, meter: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM readings WHERE meter = $1")
            .bind(meter)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }
}
