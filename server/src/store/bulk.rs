//! Bulk recompute I/O: everything a round of households needs read in a few queries, and
//! their figures written back with only the nights that changed (a season is 152 nights).

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use super::packs;
use super::sql::QueryBuilder;

use super::{
    Backend, ComputedNight, DirtyMark, HouseholdRow, MeterRow, StatementRow, Store, StoreError,
    StoredReading, CLAIM_S,
};
use crate::varint::Writer;

/// Ids per `IN (…)` list: far below SQLite's and PostgreSQL's bind limits.
const IDS: usize = 500;

/// Meters a round reads at least before [`Store::round_readings`] splits them in two
/// concurrent halves (fewer are not worth a second connection).
const SPLIT_READ_MIN: usize = 256;

/// A dirty mark as a round takes it, with what the round needs of the pair besides its
/// readings and meters: one query for all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundMark {
    /// The mark.
    pub mark: DirtyMark,
    /// The household's registry row; `None`: not in the registry.
    pub household: Option<HouseholdRow>,
    /// The pair's saved resume state (engine/resume.rs bytes), if any.
    pub state: Option<Vec<u8>>,
    /// The household's meters, oldest installation first (empty: none, or not in the
    /// registry).
    pub meters: Vec<MeterRow>,
}

/// The figures of one (household, season) pair, as a round saves them.
#[derive(Debug, Clone)]
pub struct SavedPair {
    /// The statement.
    pub statement: StatementRow,
    /// The nights computed: all of them, or those from `from_night` on, each once, in
    /// night order.
    pub nights: Vec<ComputedNight>,
    /// Generation of the dirty mark the figures came from (`None`: no mark to clear).
    pub gen: Option<i64>,
    /// The first night recomputed (`YYYY-MM-DD`): stored nights before it are kept as
    /// they are; `None`: the whole season was recomputed.
    pub from_night: Option<String>,
    /// The resume state to save with the figures (`None`: remove any saved one).
    pub state: Option<Vec<u8>>,
    /// The stored resume state is known to equal `state` (the round read it): not rewritten.
    pub state_stored: bool,
}

/// What a bulk save wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveSummary {
    /// Night rows inserted or changed.
    pub nights_written: u64,
    /// Night rows removed (no longer in the season's figures).
    pub nights_removed: u64,
    /// Night rows already stored exactly as computed (not rewritten).
    pub nights_unchanged: u64,
    /// Statements written (new or changed); the others were stored exactly as computed.
    pub statements_written: u64,
    /// Resume states written or removed; the others were stored exactly as computed.
    pub states_written: u64,
    /// Pairs not saved because their dirty mark moved on or was cleared since it was read
    /// (another replica saved newer figures, or will): PostgreSQL only.
    pub stale: u64,
}

impl Store {
    /// Up to `limit` dirty marks in `(household, season)` order, each with its household's
    /// registry row and meters and the pair's saved resume state. SQLite: after the key
    /// `after` (where a round whose save is still in flight left off). PostgreSQL: the marks are claimed
    /// for [`CLAIM_S`] seconds, so replicas asking at once get disjoint rounds and marks
    /// claimed by another replica (or a round in flight) are left out; `after` is not
    /// needed there and ignored.
    pub async fn round_marks(
        &self,
        limit: i64,
        after: Option<(&str, &str)>,
    ) -> Result<Vec<RoundMark>, StoreError> {
        // The household's meters ride along as one JSON array each (oldest installation
        // first): a round reads its registry in the marks' statement, not in one more.
        let meters = match self.backend {
            Backend::Sqlite => {
                "(SELECT json_group_array(json_array(m.meter, m.valid_from, m.valid_to, m.gateway) \
                 ORDER BY m.valid_from, m.meter) FROM meters m WHERE m.household = d.household)"
            }
            Backend::Postgres => {
                r#"(SELECT CAST(json_agg(json_build_array(m.meter, m.valid_from, m.valid_to, m.gateway)
                   ORDER BY m.valid_from, m.meter COLLATE "C") AS TEXT) FROM meters m WHERE m.household = d.household)"#
            }
        };
        let columns = format!(
            "d.household, d.season, d.gen, d.since, s.state, h.id, h.district, h.town, \
             h.village, h.heating_area_m2, h.device, h.max_power_w, {meters}"
        );
        const JOINS: &str =
            "LEFT JOIN season_state s ON s.household = d.household AND s.season = d.season \
             LEFT JOIN households h ON h.id = d.household";
        let rows = match (self.backend, after) {
            (Backend::Sqlite, None) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM dirty d {JOINS} ORDER BY d.household, d.season LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            // `household >= …` bounds the key walk; the rest skips the key itself.
            (Backend::Sqlite, Some((household, season))) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM dirty d {JOINS}
                     WHERE d.household >= $1 AND (d.household > $2 OR d.season > $3)
                     ORDER BY d.household, d.season LIMIT $4"
                ))
                .bind(household)
                .bind(household)
                .bind(season)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            (Backend::Postgres, _) => {
                sqlx::query(&format!(
                    r#"WITH now AS (SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT) AS t),
                        round AS (
                          SELECT household, season FROM dirty, now
                          WHERE claimed_until IS NULL OR claimed_until < now.t
                          ORDER BY household COLLATE "C", season COLLATE "C"
                          LIMIT $1 FOR UPDATE OF dirty SKIP LOCKED),
                        d AS (
                          UPDATE dirty SET claimed_until = (SELECT t FROM now) + {CLAIM_S}
                          FROM round WHERE dirty.household = round.household AND dirty.season = round.season
                          RETURNING dirty.household, dirty.season, dirty.gen, dirty.since)
                       SELECT {columns} FROM d {JOINS}
                       ORDER BY d.household COLLATE "C", d.season COLLATE "C""#
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.into_iter()
            .map(|r| {
                let id: Option<String> = r.get(5);
                let household: String = r.get(0);
                let meters = match r.get::<Option<&str>, _>(12) {
                    Some(json) => {
                        serde_json::from_str::<Vec<(String, i64, Option<i64>, String)>>(json)
                            .map_err(|_| StoreError::Corrupt("meters"))?
                            .into_iter()
                            .map(|(meter, valid_from, valid_to, gateway)| MeterRow {
                                household: household.clone(),
                                meter,
                                valid_from,
                                valid_to,
                                gateway,
                            })
                            .collect()
                    }
                    None => Vec::new(),
                };
                Ok(RoundMark {
                    mark: DirtyMark {
                        household,
                        season: r.get(1),
                        gen: r.get(2),
                        since: r.get(3),
                    },
                    state: r.get(4),
                    household: id.map(|id| HouseholdRow {
                        id,
                        district: r.get(6),
                        town: r.get(7),
                        village: r.get(8),
                        heating_area_m2: r.get(9),
                        device: r.get(10),
                        max_power_w: r.get(11),
                    }),
                    meters,
                })
            })
            .collect()
    }

    /// Readings with `lower < ts < until` of each `(meter, lower)` (`None`: no lower
    /// bound; a meter listed twice gets the lower of its bounds), and every meter's
    /// conflict instants. What a meter's pack cover holds comes from its packs
    /// (store/packs.rs), the rest from the readings table.
    #[allow(clippy::type_complexity)]
    pub async fn round_readings(
        &self,
        meters: &[(String, Option<i64>)],
        until: i64,
    ) -> Result<
        (
            HashMap<String, Vec<StoredReading>>,
            HashMap<String, Vec<i64>>,
        ),
        StoreError,
    > {
        let mut bound: HashMap<&str, Option<i64>> = HashMap::new();
        for (m, lower) in meters {
            let b = bound.entry(m.as_str()).or_insert(*lower);
            *b = b.zip(*lower).map(|(a, c)| a.min(c));
        }
        let mut ids: Vec<&str> = bound.keys().copied().collect();
        ids.sort_unstable();
        // (meter, after, before), exclusive: below a meter's cover from its packs, above it
        // from the table.
        let asked: Vec<(&str, i64, i64)> = ids
            .iter()
            .map(|&m| (m, bound[m].unwrap_or(i64::MIN), until))
            .collect();
        // A whole round's meters are read as two halves at once, each on a connection of
        // its own: the database steps one half's statements while this task decodes the
        // other's rows (a lone pooled connection, in memory, reads them in turn).
        if asked.len() < SPLIT_READ_MIN || self.pool.options().get_max_connections() < 3 {
            return self.round_rows(&asked).await;
        }
        let (a, b) = asked.split_at(asked.len() / 2);
        let ((mut readings, mut conflicts), (more, more_conflicts)) =
            tokio::try_join!(self.round_rows(a), self.round_rows(b))?;
        readings.extend(more);
        conflicts.extend(more_conflicts);
        Ok((readings, conflicts))
    }

    /// [`packs::round_rows`] on a pooled connection.
    async fn round_rows(&self, asked: &[(&str, i64, i64)]) -> Result<packs::RoundRows, StoreError> {
        let mut conn = self.pool.acquire().await?;
        packs::round_rows(&mut conn, self.backend, asked).await
    }

    /// Stores the figures of many (household, season) pairs in one transaction, writing
    /// only the nights that differ from the stored ones, and clears each dirty mark still
    /// at the generation given (a newer mark survives, as in [`Store::save_season`]).
    pub async fn save_round(
        &self,
        items: &[SavedPair],
        now: i64,
    ) -> Result<SaveSummary, StoreError> {
        let mut sum = SaveSummary::default();
        // IMMEDIATE (SQLite): this transaction reads the stored nights, then writes; a
        // deferred one would fail with SQLITE_BUSY (not retried by busy_timeout) if ingest
        // committed in between, and reading outside it could skip a night another writer
        // changed.
        let mut tx = self.begin_write(super::WriteLock::Figures).await?;
        let items: Vec<&SavedPair> = match self.backend {
            super::Backend::Sqlite => items.iter().collect(),
            super::Backend::Postgres => {
                let all = items.iter().map(|i| {
                    (
                        i.statement.household.as_str(),
                        i.statement.season.as_str(),
                        i.gen,
                        i,
                    )
                });
                let keep = fresh(&mut tx, all).await?;
                sum.stale = (items.len() - keep.len()) as u64;
                keep
            }
        };
        // The stored nights of the round's pairs (one blob each), by season.
        let mut by_season: HashMap<&str, Vec<&str>> = HashMap::new();
        for p in &items {
            let s = &p.statement;
            by_season
                .entry(s.season.as_str())
                .or_default()
                .push(s.household.as_str());
        }
        let mut stored = HashMap::new();
        for (season, households) in &by_season {
            let got = super::nights::load_stored(&mut tx, self.backend, season, households).await?;
            stored.insert(*season, got);
        }
        // Each pair's nights: the stored ones before its first recomputed night, then the
        // new ones. A pair whose nights did not change is not written. Compared as blob
        // records (a night's day, its encoded figures, its detail): nothing is decoded
        // into strings.
        let none = super::nights::StoredNights::default();
        let mut write = Vec::new();
        let mut bodies = Writer(Vec::new());
        for p in &items {
            let s = &p.statement;
            let old = stored
                .get(s.season.as_str())
                .and_then(|m| m.get(&s.household))
                .unwrap_or(&none);
            let records =
                super::nights::records(&old.packed).ok_or(StoreError::Corrupt("season_nights"))?;
            let old_details = old
                .details
                .iter()
                .map(|(n, d)| Ok((super::nights::day_of(n)?, d.as_str())))
                .collect::<Result<HashMap<i32, &str>, StoreError>>()?;
            let from = p
                .from_night
                .as_deref()
                .map(super::nights::day_of)
                .transpose()?;
            let split = records
                .iter()
                .take_while(|(d, _)| from.is_some_and(|f| *d < f))
                .count();
            let (kept, tail) = records.split_at(split);
            bodies.0.clear();
            let mut new = Vec::with_capacity(p.nights.len());
            for n in &p.nights {
                let start = bodies.0.len();
                super::nights::write_body(&mut bodies, n.wh, n.quality, n.flags.iter().copied());
                new.push((
                    n.night.0.to_julian_day(),
                    start..bodies.0.len(),
                    n.detail.as_str(),
                ));
            }
            new.sort_by_key(|(d, _, _)| *d);
            let body = |r: &std::ops::Range<usize>| bodies.0.get(r.clone()).unwrap_or_default();
            let detail = |day: &i32| old_details.get(day).copied().unwrap_or_default();
            let same = tail.len() == new.len()
                && tail.iter().zip(&new).all(|((d, b), (nd, nr, ndet))| {
                    d == nd && *b == body(nr) && detail(d) == *ndet
                });
            if same {
                sum.nights_unchanged += new.len() as u64;
                continue;
            }
            let mut gone: HashMap<i32, (&[u8], &str)> =
                tail.iter().map(|(d, b)| (*d, (*b, detail(d)))).collect();
            for (day, r, det) in &new {
                match gone.remove(day) {
                    Some((b, d)) if b == body(r) && d == *det => sum.nights_unchanged += 1,
                    _ => sum.nights_written += 1,
                }
            }
            sum.nights_removed += gone.len() as u64;
            let packed = super::nights::assemble(
                kept.len() + new.len(),
                kept.iter()
                    .copied()
                    .chain(new.iter().map(|(d, r, _)| (*d, body(r)))),
            );
            let details = kept
                .iter()
                .filter_map(|(d, _)| Some((*d, *old_details.get(d)?)))
                .chain(
                    new.iter()
                        .filter(|(_, _, det)| !det.is_empty())
                        .map(|(d, _, det)| (*d, *det)),
                )
                .map(|(d, det)| (super::nights::name_of(d), det))
                .collect();
            write.push(super::nights::PairNights {
                household: &s.household,
                season: &s.season,
                packed,
                details,
            });
        }
        super::nights::save(&mut tx, self.backend, &write).await?;
        // Statements and resume states are written only where they changed (the round
        // compared the states it read): readings that change no listed night leave the
        // statement as it is, and the round may only clear its marks.
        // Looked up by key through a list of pairs: `season = … AND household IN (…)` let
        // PostgreSQL walk the `statements_season` index and test every row of the season
        // against the list (quadratic over a cold season: 1.6 s a round at 30,000).
        // A pair whose nights changed rewrites its statement too, even an equal one: the
        // sink learns of changed nights from statement writes (its trigger). So only the
        // others' stored statements are looked up (none at a night close or a cold round,
        // where every pair's nights change).
        fn pair(p: &SavedPair) -> (&str, &str) {
            (p.statement.household.as_str(), p.statement.season.as_str())
        }
        let nights_changed: std::collections::HashSet<(&str, &str)> =
            write.iter().map(|w| (w.household, w.season)).collect();
        let keys: Vec<(&str, &str)> = items
            .iter()
            .map(|p| pair(p))
            .filter(|k| !nights_changed.contains(k))
            .collect();
        let mut statements = HashMap::new();
        let select = super::results::STATEMENT_SELECT.replace(" FROM statements s", " FROM (");
        for chunk in keys.chunks(IDS / 2) {
            let mut qb: QueryBuilder<'_> = QueryBuilder::new(self.backend, select.as_str());
            qb.push_values(chunk, |mut b, (hh, season)| {
                b.push_bind(*hh).push_bind(*season);
            });
            qb.push(") AS w JOIN statements s ON s.household = w.column1 AND s.season = w.column2");
            for r in qb.build().fetch_all(&mut *tx).await? {
                let st = super::results::statement_row(&r)?;
                statements.insert((st.household.clone(), st.season.clone()), st);
            }
        }
        let new_statements: Vec<&StatementRow> = items
            .iter()
            .filter(|p| {
                nights_changed.contains(&pair(p))
                    || statements.get(&(p.statement.household.clone(), p.statement.season.clone()))
                        != Some(&p.statement)
            })
            .map(|p| &p.statement)
            .collect();
        let new_states: Vec<&SavedPair> =
            items.iter().copied().filter(|p| !p.state_stored).collect();
        sum.statements_written = new_statements.len() as u64;
        sum.states_written = new_states.len() as u64;
        for chunk in new_statements.chunks(IDS / 2) {
            upsert_statements(&mut tx, self.backend, chunk, now).await?;
        }
        for chunk in new_states.chunks(IDS / 2) {
            save_states(&mut tx, self.backend, chunk).await?;
        }
        let marks: Vec<_> = items
            .iter()
            .filter_map(|p| {
                Some((
                    p.statement.household.as_str(),
                    p.statement.season.as_str(),
                    p.gen?,
                ))
            })
            .collect();
        for chunk in marks.chunks(IDS / 2) {
            clear_marks(&mut tx, self.backend, chunk).await?;
        }
        tx.commit().await?;
        Ok(sum)
    }
}

/// Upserts the resume states of `pairs` and removes those a pair saved without one.
async fn save_states(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    pairs: &[&SavedPair],
) -> Result<(), StoreError> {
    let with: Vec<_> = pairs
        .iter()
        .filter_map(|p| Some((&p.statement, p.state.as_ref()?)))
        .collect();
    if !with.is_empty() {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "INSERT INTO season_state (household, season, state) ",
        );
        qb.push_values(&with, |mut b, (s, state)| {
            b.push_bind(&s.household)
                .push_bind(&s.season)
                .push_bind(state.as_slice());
        });
        qb.push(" ON CONFLICT (household, season) DO UPDATE SET state = excluded.state");
        qb.build().execute(&mut **tx).await?;
    }
    let without: Vec<_> = pairs
        .iter()
        .filter(|p| p.state.is_none())
        .map(|p| &p.statement)
        .collect();
    if !without.is_empty() {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "DELETE FROM season_state WHERE (household, season) IN (",
        );
        qb.push_values(without, |mut b, s| {
            b.push_bind(s.household.as_str())
                .push_bind(s.season.as_str());
        });
        qb.push(")");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Keeps the pairs whose figures may be saved, after locking the `dirty` rows of those
/// saved with a generation (PostgreSQL: `FOR UPDATE`, in one key order so that concurrent
/// savers never deadlock). A pair whose mark is gone or newer than the one its figures were
/// computed from is dropped: another replica saved figures from inputs at least as new (a
/// gone mark), or the newer mark will be recomputed; writing the older figures over them
/// would be a lost update. Generations come from one sequence (a trigger in the PostgreSQL
/// schema), so a cleared and re-made mark never repeats a generation.
pub(super) async fn fresh<'i, T>(
    tx: &mut Transaction<'_, Any>,
    items: impl IntoIterator<Item = (&'i str, &'i str, Option<i64>, T)>,
) -> Result<Vec<T>, StoreError> {
    let items: Vec<_> = items.into_iter().collect();
    let mut keys: Vec<(&str, &str)> = items
        .iter()
        .filter(|(_, _, gen, _)| gen.is_some())
        .map(|(hh, season, _, _)| (*hh, *season))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut current: HashMap<(String, String), i64> = HashMap::new();
    for chunk in keys.chunks(IDS) {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            Backend::Postgres,
            "SELECT household, season, gen FROM dirty WHERE (household, season) IN (",
        );
        qb.push_values(chunk, |mut b, (hh, season)| {
            b.push_bind(*hh).push_bind(*season);
        });
        qb.push(r#") ORDER BY household COLLATE "C", season COLLATE "C" FOR UPDATE"#);
        for r in qb.build().fetch_all(&mut **tx).await? {
            current.insert((r.get(0), r.get(1)), r.get::<i64, _>(2));
        }
    }
    Ok(items
        .into_iter()
        .filter(|(hh, season, gen, _)| {
            gen.is_none_or(|g| current.get(&(hh.to_string(), season.to_string())) == Some(&g))
        })
        .map(|(_, _, _, t)| t)
        .collect())
}

/// Upserts statements (computed at `now`) and clears each dirty mark still at the
/// generation given; what [`Store::save_season`] writes.
pub(super) async fn save_statements(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    items: &[(&StatementRow, Option<i64>)],
    now: i64,
) -> Result<(), StoreError> {
    let rows: Vec<&StatementRow> = items.iter().map(|(s, _)| *s).collect();
    upsert_statements(tx, backend, &rows, now).await?;
    let marks: Vec<_> = items
        .iter()
        .filter_map(|(s, gen)| Some((s.household.as_str(), s.season.as_str(), (*gen)?)))
        .collect();
    clear_marks(tx, backend, &marks).await
}

/// Upserts statements computed at `now`; the one place that writes `statements`.
async fn upsert_statements(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    items: &[&StatementRow],
    now: i64,
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<'_> = QueryBuilder::new(
        backend,
        "INSERT INTO statements (household, season, offpeak_wh, subsidised_wh, cap_wh, cap_reached_on, city_fen,
           district_fen, valley_charge_fen, nights_actual, nights_estimated, nights_missing, flags, computed_at) ",
    );
    qb.push_values(items, |mut b, s| {
        b.push_bind(&s.household)
            .push_bind(&s.season)
            .push_bind(s.offpeak_wh)
            .push_bind(s.subsidised_wh)
            .push_bind(s.cap_wh)
            .push_bind(&s.cap_reached_on)
            .push_bind(s.city_fen)
            .push_bind(s.district_fen)
            .push_bind(s.valley_charge_fen)
            .push_bind(s.nights_actual)
            .push_bind(s.nights_estimated)
            .push_bind(s.nights_missing)
            .push_bind(super::results::flags_json(&s.flags))
            .push_bind(now);
    });
    qb.push(
        " ON CONFLICT (household, season) DO UPDATE SET offpeak_wh = excluded.offpeak_wh,
           subsidised_wh = excluded.subsidised_wh, cap_wh = excluded.cap_wh, cap_reached_on = excluded.cap_reached_on,
           city_fen = excluded.city_fen, district_fen = excluded.district_fen,
           valley_charge_fen = excluded.valley_charge_fen, nights_actual = excluded.nights_actual,
           nights_estimated = excluded.nights_estimated, nights_missing = excluded.nights_missing,
           flags = excluded.flags, computed_at = excluded.computed_at",
    );
    qb.build().execute(&mut **tx).await?;
    Ok(())
}

/// Clears each (household, season) dirty mark still at the generation given (a newer
/// mark survives).
async fn clear_marks(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    marks: &[(&str, &str, i64)],
) -> Result<(), StoreError> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<'_> = QueryBuilder::new(
        backend,
        "DELETE FROM dirty WHERE (household, season, gen) IN (",
    );
    qb.push_values(marks, |mut b, (hh, season, gen)| {
        b.push_bind(*hh).push_bind(*season).push_bind(*gen);
    });
    qb.push(")");
    qb.build().execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn night(night: &str, wh: i64, flags: &'static [&'static str]) -> ComputedNight {
        ComputedNight {
            night: night.parse().unwrap(),
            wh,
            quality: "actual",
            flags,
            detail: String::new(),
        }
    }

    fn statement(household: &str, offpeak_wh: i64) -> StatementRow {
        StatementRow {
            household: household.into(),
            season: "2025-2026".into(),
            offpeak_wh,
            subsidised_wh: offpeak_wh,
            cap_wh: 10_000_000,
            cap_reached_on: None,
            city_fen: 0,
            district_fen: 0,
            valley_charge_fen: 0,
            nights_actual: 2,
            nights_estimated: 0,
            nights_missing: 0,
            flags: vec![],
        }
    }

    #[tokio::test]
    async fn save_round_writes_only_what_changed_and_removes_what_is_gone() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let first = vec![
            pair(
                statement("hh-1", 30),
                vec![
                    night("2025-11-01", 10, &[]),
                    night("2025-11-02", 20, &["a,b"]),
                ],
            ),
            pair(statement("hh-2", 5), vec![night("2025-11-01", 5, &[])]),
        ];
        let sum = store.save_round(&first, 1).await.unwrap();
        assert_eq!((sum.nights_written, sum.nights_unchanged), (3, 0));
        // hh-1: one night the same, one with a new flag, one new; hh-2: its night gone.
        let second = vec![
            pair(
                statement("hh-1", 60),
                vec![
                    night("2025-11-01", 10, &[]),
                    night("2025-11-02", 20, &["a,b", "c"]),
                    night("2025-11-03", 30, &[]),
                ],
            ),
            pair(statement("hh-2", 0), vec![]),
        ];
        let sum = store.save_round(&second, 2).await.unwrap();
        assert_eq!(
            sum,
            SaveSummary {
                nights_written: 2,
                nights_removed: 1,
                nights_unchanged: 1,
                statements_written: 2,
                states_written: 2,
                stale: 0,
            }
        );
        assert_eq!(
            store.nights("hh-1", "2025-2026").await.unwrap(),
            rows(&second[0].nights)
        );
        assert!(store.nights("hh-2", "2025-2026").await.unwrap().is_empty());
        let s = store.statement("hh-1", "2025-2026").await.unwrap().unwrap();
        assert_eq!(s.offpeak_wh, 60);
        // The same figures again: nothing is rewritten.
        let sum = store.save_round(&second, 3).await.unwrap();
        assert_eq!((sum.nights_written, sum.nights_unchanged), (0, 3));
        assert_eq!((sum.statements_written, sum.states_written), (0, 2));
        // The same nights, a statement that differs (looked up, found changed): written.
        let mut flagged = second.clone();
        flagged[1].statement.flags = vec!["meter_replaced".into()];
        let sum = store.save_round(&flagged, 3).await.unwrap();
        assert_eq!((sum.nights_written, sum.statements_written), (0, 1));
        let s = store.statement("hh-2", "2025-2026").await.unwrap().unwrap();
        assert_eq!(s.flags, ["meter_replaced"]);
        // Same figures, a reading newly set aside (the detail): that night is rewritten.
        let mut third = second.clone();
        third[0].nights[1].detail = r#"{"readings_set_aside":[{"ts":1}]}"#.into();
        let sum = store.save_round(&third, 4).await.unwrap();
        assert_eq!((sum.nights_written, sum.nights_unchanged), (1, 2));
        assert_eq!(
            store.nights("hh-1", "2025-2026").await.unwrap(),
            rows(&third[0].nights)
        );
        let sum = store.save_round(&third, 5).await.unwrap();
        assert_eq!((sum.nights_written, sum.nights_unchanged), (0, 3));
    }

    #[tokio::test]
    async fn a_resumed_save_keeps_the_nights_before_its_first_and_stores_its_state() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let first = vec![pair(
            statement("hh-1", 60),
            vec![
                night("2025-11-01", 10, &[]),
                night("2025-11-02", 20, &[]),
                night("2025-11-03", 30, &[]),
            ],
        )];
        store.save_round(&first, 1).await.unwrap();
        // Resumed from Nov 3: Nov 1 and 2 are not in the list and stay; Nov 3 changes.
        let mut resumed = pair(
            statement("hh-1", 65),
            vec![night("2025-11-03", 35, &[]), night("2025-11-04", 5, &[])],
        );
        resumed.from_night = Some("2025-11-03".into());
        resumed.state = Some(vec![1, 2, 3]);
        let sum = store.save_round(&[resumed.clone()], 2).await.unwrap();
        assert_eq!(
            (sum.nights_written, sum.nights_removed, sum.nights_unchanged),
            (2, 0, 0)
        );
        let wh: Vec<i64> = store
            .nights("hh-1", "2025-2026")
            .await
            .unwrap()
            .iter()
            .map(|n| n.wh)
            .collect();
        assert_eq!(wh, [10, 20, 35, 5]);
        assert_eq!(state_of(&store, "hh-1").await, Some(vec![1, 2, 3]));
        // A whole save without a state removes the saved one.
        store.save_round(&first, 3).await.unwrap();
        assert_eq!(state_of(&store, "hh-1").await, None);
        assert_eq!(
            store.nights("hh-1", "2025-2026").await.unwrap(),
            rows(&first[0].nights)
        );
    }

    #[tokio::test]
    async fn a_round_that_changes_nothing_still_clears_its_marks_and_keeps_newer_ones() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut p = pair(statement("hh-1", 30), vec![night("2025-11-01", 30, &[])]);
        p.state = Some(vec![7, 7]);
        store.save_round(&[p.clone()], 1).await.unwrap();
        // From here the round knows the stored state equals its own.
        p.state_stored = true;
        let season = "2025-2026".to_string();
        for round in 0..2 {
            store
                .mark_dirty(&[("hh-1".into(), season.clone())])
                .await
                .unwrap();
            let marks = store.dirty_marks(10).await.unwrap();
            assert_eq!(marks.len(), 1);
            p.gen = Some(marks[0].gen);
            if round == 1 {
                // A reading arrives while the round computes: its newer mark survives.
                store
                    .mark_dirty(&[("hh-1".into(), season.clone())])
                    .await
                    .unwrap();
            }
            let sum = store.save_round(&[p.clone()], 2).await.unwrap();
            assert_eq!(
                (
                    sum.nights_written,
                    sum.statements_written,
                    sum.states_written
                ),
                (0, 0, 0)
            );
            assert_eq!(store.dirty_count().await.unwrap(), round, "round {round}");
        }
        // A changed state alone is written.
        p.state = Some(vec![7, 8]);
        p.state_stored = false;
        let sum = store.save_round(&[p.clone()], 3).await.unwrap();
        assert_eq!((sum.statements_written, sum.states_written), (0, 1));
        assert_eq!(state_of(&store, "hh-1").await, Some(vec![7, 8]));
        // A changed night under an equal statement still tells the sink (through the
        // statement's write) that the pair's nights moved.
        store.sink_enable(0).await.unwrap();
        let queued = |v: Vec<(String, String, i64)>| {
            v.into_iter().map(|(h, s, _)| (h, s)).collect::<Vec<_>>()
        };
        // Enabling queues every stored statement once; export it (nothing to write).
        for (h, s, gen) in store.sink_seasons(10).await.unwrap() {
            store
                .sink_ack_nights(&h, &s, gen, &[], false)
                .await
                .unwrap();
        }
        assert!(queued(store.sink_seasons(10).await.unwrap()).is_empty());
        p.nights[0].quality = "estimated";
        let sum = store.save_round(&[p.clone()], 4).await.unwrap();
        assert_eq!((sum.nights_written, sum.statements_written), (1, 1));
        assert_eq!(
            queued(store.sink_seasons(10).await.unwrap()),
            [("hh-1".to_string(), season)]
        );
    }

    #[tokio::test]
    async fn round_marks_come_in_key_order_after_the_cursor_with_household_and_state() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
                   hh-1,d,t,v,100,hp,m0,2025-12-01,,gw-1,2500\n\
                   hh-1,d,t,v,100,hp,m2,2025-10-01,2025-12-01,gw-1,2500\n\
                   hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-2,2500\n";
        let policy = qingnuan_shared::policy::Policy::beijing_2018();
        crate::registry::import(&store, csv.as_bytes(), &policy, "test", 0)
            .await
            .unwrap();
        for m in store.dirty_marks(100).await.unwrap() {
            store
                .clear_dirty(&m.household, &m.season, m.gen)
                .await
                .unwrap();
        }
        let mut p = pair(statement("hh-1", 1), vec![]);
        p.statement.season = "2026-2027".into();
        p.state = Some(vec![4, 2]);
        store.save_round(&[p], 1).await.unwrap();
        let keys = [
            ("hh-2", "2025-2026"),
            ("hh-1", "2026-2027"),
            ("hh-1", "2025-2026"),
        ];
        let marks: Vec<(String, String)> = keys
            .iter()
            .map(|(h, s)| (h.to_string(), s.to_string()))
            .collect();
        store.mark_dirty(&marks).await.unwrap();
        let got = store.round_marks(10, None).await.unwrap();
        let key = |m: &RoundMark| (m.mark.household.clone(), m.mark.season.clone());
        let mut want = marks.clone();
        want.sort();
        assert_eq!(got.iter().map(key).collect::<Vec<_>>(), want);
        let h = got[0].household.as_ref().unwrap();
        assert_eq!((h.id.as_str(), h.max_power_w), ("hh-1", Some(2500)));
        assert_eq!(got[0].state, None);
        assert_eq!(got[1].state, Some(vec![4, 2]), "the pair's own state");
        assert!(got[2].household.is_none(), "hh-2 is not in the registry");
        // Its meters, oldest installation first (then by id), with their registry fields.
        let meters = |m: &RoundMark| {
            m.meters
                .iter()
                .map(|r| {
                    let (from, to) = (r.valid_from, r.valid_to);
                    (
                        r.household.clone(),
                        r.meter.clone(),
                        from,
                        to,
                        r.gateway.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let (oct, dec) = (1_759_248_000, 1_764_518_400); // 2025-10-01, 2025-12-01 +08:00
        let hh = |m: &str, from, to, gw: &str| {
            ("hh-1".to_string(), m.to_string(), from, to, gw.to_string())
        };
        let want_meters = vec![
            hh("m1", oct, None, "gw-2"),
            hh("m2", oct, Some(dec), "gw-1"),
            hh("m0", dec, None, "gw-1"),
        ];
        assert_eq!(meters(&got[0]), want_meters);
        assert_eq!(meters(&got[1]), want_meters, "each season's mark");
        assert!(got[2].meters.is_empty());
        for (after, n) in [(0, 2), (1, 1), (2, 0)] {
            let a = &want[after];
            let rest = store.round_marks(10, Some((&a.0, &a.1))).await.unwrap();
            assert_eq!(
                rest.iter().map(key).collect::<Vec<_>>(),
                want[after + 1..],
                "after {a:?}"
            );
            assert_eq!(rest.len(), n);
        }
        assert_eq!(store.round_marks(1, None).await.unwrap().len(), 1);
    }

    /// The saved resume state of `household` in 2025-2026, as a round reads it.
    async fn state_of(store: &Store, household: &str) -> Option<Vec<u8>> {
        store
            .mark_dirty(&[(household.into(), "2025-2026".into())])
            .await
            .unwrap();
        let marks = store.round_marks(10, None).await.unwrap();
        let m = marks
            .iter()
            .find(|m| m.mark.household == household)
            .unwrap();
        store
            .clear_dirty(household, "2025-2026", m.mark.gen)
            .await
            .unwrap();
        m.state.clone()
    }

    fn rows(nights: &[ComputedNight]) -> Vec<crate::store::NightRow> {
        nights.iter().map(ComputedNight::to_row).collect()
    }

    fn pair(statement: StatementRow, nights: Vec<ComputedNight>) -> SavedPair {
        SavedPair {
            statement,
            nights,
            gen: None,
            from_night: None,
            state: None,
            state_stored: false,
        }
    }
}
