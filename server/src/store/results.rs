//! Computed figures (nights, season statements), the `dirty` work list, and the reading
//! queries the recompute feeds the engine with.

use qingnuan_shared::calendar::Night;
use sqlx::{Any, Row, Transaction};

use super::{Store, StoreError};

/// A stored reading as the engine needs it: the engine's own reading type, so that a
/// round's readings go to the engine without a copy.
pub type StoredReading = crate::engine::RawReading;

/// One computed night of a household.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NightRow {
    /// `YYYY-MM-DD`, the local date its window opens.
    pub night: String,
    /// Paid energy, Wh (0 when missing).
    pub wh: i64,
    /// `actual`, `estimated` or `missing`.
    pub quality: String,
    /// Flag names.
    pub flags: Vec<String>,
    /// JSON: boundaries, readings used, interpolation.
    pub detail: String,
}

/// One computed night as a recompute round hands it to the store: [`NightRow`]'s
/// figures without its allocations (the names are the contract's own static strings;
/// `detail` is empty but for the rare night with readings set aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputedNight {
    /// The night (local date its window opens).
    pub night: Night,
    /// Paid energy, Wh (0 when missing).
    pub wh: i64,
    /// `actual`, `estimated` or `missing`.
    pub quality: &'static str,
    /// Flag names (a shared static list: a night allocates nothing for them).
    pub flags: &'static [&'static str],
    /// JSON, as [`NightRow::detail`].
    pub detail: String,
}

impl ComputedNight {
    /// The same night as a [`NightRow`].
    pub fn to_row(&self) -> NightRow {
        NightRow {
            night: self.night.to_string(),
            wh: self.wh,
            quality: self.quality.to_string(),
            flags: self.flags.iter().map(|f| f.to_string()).collect(),
            detail: self.detail.clone(),
        }
    }
}

/// One computed season statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// Household id.
    pub household: String,
    /// `YYYY-YYYY`.
    pub season: String,
    /// Off-peak energy, Wh.
    pub offpeak_wh: i64,
    /// Subsidised energy, Wh.
    pub subsidised_wh: i64,
    /// The cap, Wh.
    pub cap_wh: i64,
    /// Night on which the cap was reached.
    pub cap_reached_on: Option<String>,
    /// City subsidy, fen.
    pub city_fen: i64,
    /// District subsidy, fen.
    pub district_fen: i64,
    /// Valley charge, fen.
    pub valley_charge_fen: i64,
    /// Nights `actual`.
    pub nights_actual: i64,
    /// Nights `estimated`.
    pub nights_estimated: i64,
    /// Nights `missing`.
    pub nights_missing: i64,
    /// Flag names.
    pub flags: Vec<String>,
}

/// How long a replica's claim on a round of dirty marks holds, seconds (PostgreSQL): far
/// longer than a round takes; a dead replica's marks wait this long for another.
pub const CLAIM_S: i64 = 60;

/// A (household, season) pair to recompute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyMark {
    /// Household id.
    pub household: String,
    /// Season name.
    pub season: String,
    /// Generation of the mark: a save clears only the mark it computed from.
    pub gen: i64,
    /// The earliest instant of the readings (and conflicts) that made the mark, UTC Unix
    /// seconds; `None`: the whole season (registry change, old mark).
    pub since: Option<i64>,
}

/// How a new mark's `since` merges with a stored one: the earlier instant, and NULL
/// (the whole season) wins over any instant.
const SINCE_MERGE: &str =
    "since = CASE WHEN dirty.since IS NULL OR excluded.since IS NULL THEN NULL \
     WHEN excluded.since < dirty.since THEN excluded.since ELSE dirty.since END";

/// Marks many pairs with multi-row upserts (100 a statement); each with the earliest
/// instant of what changed (`None`: the whole season).
pub(super) async fn mark_dirty_many(
    tx: &mut Transaction<'_, Any>,
    backend: super::Backend,
    marks: &std::collections::BTreeMap<(String, String), Option<i64>>,
) -> Result<(), StoreError> {
    // Unique pairs (a map): PostgreSQL refuses an upsert that touches one row twice.
    let marks: Vec<_> = marks.iter().collect();
    for chunk in marks.chunks(100) {
        let mut qb: super::sql::QueryBuilder<'_> = super::sql::QueryBuilder::new(
            backend,
            "INSERT INTO dirty (household, season, gen, since) ",
        );
        qb.push_values(chunk, |mut b, ((hh, season), since)| {
            b.push_bind(hh)
                .push_bind(season)
                .push_bind(1_i64)
                .push_bind(**since);
        });
        qb.push(
            " ON CONFLICT (household, season) DO UPDATE SET gen = dirty.gen + 1, claimed_until = NULL, ",
        );
        qb.push(SINCE_MERGE);
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Marks one pair for a whole-season recompute (a registry change).
pub(super) async fn mark_dirty(
    tx: &mut Transaction<'_, Any>,
    household: &str,
    season: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dirty (household, season, gen, since) VALUES ($1, $2, 1, NULL)
         ON CONFLICT (household, season) DO UPDATE SET gen = dirty.gen + 1, since = NULL, claimed_until = NULL",
    )
    .bind(household)
    .bind(season)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) fn flags_json(flags: &[String]) -> String {
    serde_json::to_string(flags).unwrap_or_else(|_| "[]".into())
}

fn flags_from(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|_| StoreError::Corrupt("flags"))
}

impl Store {
    /// Marks (household, season) pairs for recompute.
    pub async fn mark_dirty(&self, pairs: &[(String, String)]) -> Result<(), StoreError> {
        let marks = pairs.iter().map(|p| (p.clone(), None)).collect();
        self.mark_dirty_marks(&marks).await
    }

    /// Marks (household, season) pairs for recompute of the nights that readings with
    /// `ts >= since` can change (a night close: its open).
    pub async fn mark_dirty_since(
        &self,
        pairs: &[(String, String, i64)],
    ) -> Result<(), StoreError> {
        let marks = pairs
            .iter()
            .map(|(h, s, since)| ((h.clone(), s.clone()), Some(*since)))
            .collect();
        self.mark_dirty_marks(&marks).await
    }

    async fn mark_dirty_marks(
        &self,
        marks: &std::collections::BTreeMap<(String, String), Option<i64>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        mark_dirty_many(&mut tx, self.backend, marks).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` marks to recompute, with their generation and `since`. On PostgreSQL
    /// they are claimed for [`CLAIM_S`] seconds: replicas asking at once get disjoint
    /// rounds, and marks claimed by another replica are left to it.
    pub async fn dirty_marks(&self, limit: i64) -> Result<Vec<DirtyMark>, StoreError> {
        Ok(self
            .round_marks(limit, None)
            .await?
            .into_iter()
            .map(|m| m.mark)
            .collect())
    }

    /// Up to `limit` pairs to recompute, with the generation of their mark.
    pub async fn dirty(&self, limit: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT household, season, gen FROM dirty ORDER BY household, season LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// A value of the `meta` table.
    pub async fn meta(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Sets a value of the `meta` table.
    pub async fn set_meta(&self, key: &str, value: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Clears a dirty mark if it is still at generation `gen`.
    pub async fn clear_dirty(
        &self,
        household: &str,
        season: &str,
        gen: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dirty WHERE household = $1 AND season = $2 AND gen = $3")
            .bind(household)
            .bind(season)
            .bind(gen)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Readings of `meter` with `ts < until`, in time order.
    pub async fn readings_of(
        &self,
        meter: &str,
        until: i64,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let rows = sqlx::query(
            "SELECT ts, e_wh, e_valley_wh FROM readings WHERE meter = $1 AND ts < $2 ORDER BY ts",
        )
        .bind(meter)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredReading {
                ts: r.get(0),
                e_wh: r.get(1),
                e_valley_wh: r.get(2),
            })
            .collect())
    }

    /// Instants of `meter` at which a conflicting value arrived (the first was kept).
    pub async fn conflicts_of(&self, meter: &str) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT ts FROM reading_conflicts WHERE meter = $1 ORDER BY ts",
        )
        .bind(meter)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces the figures of one (household, season) and clears its `dirty` mark if it is
    /// still at generation `gen` (a newer mark survives).
    pub async fn save_season(
        &self,
        statement: &StatementRow,
        nights: &[NightRow],
        gen: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == super::Backend::Postgres {
            let me = [(
                statement.household.as_str(),
                statement.season.as_str(),
                gen,
                (),
            )];
            if super::bulk::fresh(&mut tx, me).await?.is_empty() {
                return Ok(()); // stale: see bulk::fresh
            }
        }
        save_one(&mut tx, self.backend, statement, nights, gen, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::save_season`] for many pairs in one transaction (one sync for a round).
    pub async fn save_seasons(
        &self,
        items: &[(StatementRow, Vec<NightRow>, Option<i64>)],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let items: Vec<_> = match self.backend {
            super::Backend::Sqlite => items.iter().collect(),
            super::Backend::Postgres => {
                let all = items
                    .iter()
                    .map(|i| (i.0.household.as_str(), i.0.season.as_str(), i.2, i));
                super::bulk::fresh(&mut tx, all).await? // stale ones dropped
            }
        };
        for (statement, nights, gen) in items {
            save_one(&mut tx, self.backend, statement, nights, *gen, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored statement of a household for a season.
    pub async fn statement(
        &self,
        household: &str,
        season: &str,
    ) -> Result<Option<StatementRow>, StoreError> {
        let row = sqlx::query(&format!(
            "{STATEMENT_SELECT} WHERE s.household = $1 AND s.season = $2"
        ))
        .bind(household)
        .bind(season)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| statement_row(&r)).transpose()
    }

    /// Every stored statement of a season, optionally of one district and/or village, by
    /// household, with the household's (district, town, village).
    pub async fn statements(
        &self,
        season: &str,
        district: Option<&str>,
        village: Option<&str>,
    ) -> Result<Vec<(StatementRow, [String; 3])>, StoreError> {
        let select = STATEMENT_SELECT.replace(
            " FROM statements s",
            ", h.district, h.town, h.village FROM statements s",
        );
        let rows = sqlx::query(&format!(
            "{select} JOIN households h ON h.id = s.household
             WHERE s.season = $1 AND ($2 IS NULL OR h.district = $3) AND ($4 IS NULL OR h.village = $5)
             ORDER BY s.household"
        ))
        .bind(season)
        .bind(district)
        .bind(district)
        .bind(village)
        .bind(village)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((statement_row(r)?, [r.get(13), r.get(14), r.get(15)])))
            .collect()
    }

    /// The stored nights of a household in a season, in order.
    pub async fn nights(&self, household: &str, season: &str) -> Result<Vec<NightRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut got = super::nights::load(&mut conn, self.backend, season, &[household]).await?;
        Ok(got.remove(household).unwrap_or_default())
    }
}

pub(super) const STATEMENT_SELECT: &str = "SELECT s.household, s.season, s.offpeak_wh, s.subsidised_wh, s.cap_wh, s.cap_reached_on,
    s.city_fen, s.district_fen, s.valley_charge_fen, s.nights_actual, s.nights_estimated, s.nights_missing, s.flags
    FROM statements s";

pub(super) fn statement_row(r: &sqlx::any::AnyRow) -> Result<StatementRow, StoreError> {
    Ok(StatementRow {
        household: r.get(0),
        season: r.get(1),
        offpeak_wh: r.get(2),
        subsidised_wh: r.get(3),
        cap_wh: r.get(4),
        cap_reached_on: r.get(5),
        city_fen: r.get(6),
        district_fen: r.get(7),
        valley_charge_fen: r.get(8),
        nights_actual: r.get(9),
        nights_estimated: r.get(10),
        nights_missing: r.get(11),
        flags: flags_from(r.get::<&str, _>(12))?,
    })
}

async fn save_one(
    tx: &mut Transaction<'_, Any>,
    backend: super::Backend,
    statement: &StatementRow,
    nights: &[NightRow],
    gen: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    // Figures saved without a resume state: the next recompute of the pair is whole.
    sqlx::query("DELETE FROM season_state WHERE household = $1 AND season = $2")
        .bind(&statement.household)
        .bind(&statement.season)
        .execute(&mut **tx)
        .await?;
    let pair = super::nights::PairNights::of(&statement.household, &statement.season, nights)?;
    super::nights::save(tx, backend, &[pair]).await?;
    super::bulk::save_statements(tx, backend, &[(statement, gen)], now).await
}
