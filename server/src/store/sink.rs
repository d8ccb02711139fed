//! The sink's side of the store (migration 0003): the export queues the triggers fill,
//! the rows to export with their registry tags, acks, the back-pressure bound, and the
//! few aggregates `/metrics` reads.
//!
//! A queue row leaves only when the sink acknowledges it after a successful write, so a
//! crash or a database outage re-sends (idempotent: same series and timestamp), never loses.

use std::collections::BTreeMap;

use sqlx::Row;

use super::sql::QueryBuilder;
use super::{Store, StoreError};

/// A stored reading to export, with its registry place (empty when the meter is bound
/// to no household at `ts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReading {
    /// Queue position.
    pub seq: i64,
    /// Meter id.
    pub meter: String,
    /// Read at, UTC Unix seconds.
    pub ts: i64,
    /// Cumulative forward active energy, Wh.
    pub e_wh: i64,
    /// Cumulative valley energy, Wh.
    pub e_valley_wh: Option<i64>,
    /// Active power, W.
    pub p_w: Option<i64>,
    /// The gateway that sent it.
    pub gateway: String,
    /// Household the meter belonged to at `ts`.
    pub household: String,
    /// 区 of that household.
    pub district: String,
    /// 村 of that household.
    pub village: String,
}

/// The queue positions one [`Store::sink_readings`] call read. Acknowledged exactly, not
/// as a range: on PostgreSQL a position below the highest one read may commit later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkHead {
    /// Queue positions, ascending.
    pub seqs: Vec<i64>,
}

/// Positions per `DELETE … IN (…)`.
const ACK_CHUNK: usize = 500;

/// One computed night to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkNight {
    /// Household id.
    pub household: String,
    /// `YYYY-MM-DD`, the local date its window opens.
    pub night: String,
    /// `YYYY-YYYY`.
    pub season: String,
    /// Paid energy, Wh.
    pub wh: i64,
    /// `actual`, `estimated` or `missing`.
    pub quality: String,
    /// 区
    pub district: String,
    /// 村
    pub village: String,
}

/// Readings waiting in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkBacklog {
    /// Readings not yet exported.
    pub readings: i64,
    /// (household, season) pairs whose nights are not yet compared and exported.
    pub seasons: i64,
}

impl Store {
    /// Turns the export triggers on. The first time (they were off) it also queues the
    /// history: the newest `backfill_max` stored readings (older ones count as dropped, as
    /// the backlog bound would drop them at once) and every season's nights. Returns
    /// whether they were off.
    pub async fn sink_enable(&self, backfill_max: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !switch(&mut tx, self.backend, true).await? {
            return Ok(false);
        }
        let queued = sqlx::query(
            "INSERT INTO sink_readings (meter, ts)
             SELECT meter, ts FROM (
                 SELECT meter, ts, received FROM readings
                 ORDER BY received DESC, meter DESC, ts DESC LIMIT $1
             ) newest
             ORDER BY received, meter, ts",
        )
        .bind(backfill_max.max(0))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
            .fetch_one(&mut *tx)
            .await?;
        let older = u64::try_from(stored).unwrap_or(0).saturating_sub(queued);
        if older > 0 {
            add_dropped(&mut tx, "readings_dropped", older).await?;
        }
        sqlx::query(
            "INSERT INTO sink_seasons (household, season, gen) SELECT household, season, 1 FROM statements",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Turns the export triggers off and empties the queues (a server without
    /// `[influxdb]` must not grow them). Returns whether they were on.
    pub async fn sink_disable(&self) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !switch(&mut tx, self.backend, false).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The oldest queued readings, at most `limit` queue rows, with their registry place;
    /// and the queue positions read (acknowledge them with
    /// [`Store::sink_ack_readings`]), `None` when the queue is empty.
    pub async fn sink_readings(
        &self,
        limit: i64,
    ) -> Result<(Vec<SinkReading>, Option<SinkHead>), StoreError> {
        let seqs: Vec<i64> =
            sqlx::query_scalar("SELECT seq FROM sink_readings ORDER BY seq LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
            return Ok((Vec::new(), None));
        };
        let rows = sqlx::query(
            "SELECT q.seq, r.meter, r.ts, r.e_wh, r.e_valley_wh, r.p_w, r.gateway,
                    COALESCE(m.household, ''), COALESCE(h.district, ''), COALESCE(h.village, '')
             FROM sink_readings q
             JOIN readings r ON r.meter = q.meter AND r.ts = q.ts
             LEFT JOIN meters m ON m.meter = r.meter AND m.valid_from <= r.ts
                  AND (m.valid_to IS NULL OR r.ts < m.valid_to)
             LEFT JOIN households h ON h.id = m.household
             WHERE q.seq >= $1 AND q.seq <= $2
             ORDER BY q.seq, m.household",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&self.pool)
        .await?;
        let read: std::collections::HashSet<i64> = seqs.iter().copied().collect();
        let mut out: Vec<SinkReading> = Vec::with_capacity(rows.len());
        for r in rows {
            let seq: i64 = r.get(0);
            // A meter bound to two households at once (a registry error): the first wins.
            // A position committed since the first read (below `hi` on PostgreSQL, where
            // sequence values commit out of order) waits for the next call.
            if out.last().is_some_and(|l| l.seq == seq) || !read.contains(&seq) {
                continue;
            }
            out.push(SinkReading {
                seq,
                meter: r.get(1),
                ts: r.get(2),
                e_wh: r.get(3),
                e_valley_wh: r.get(4),
                p_w: r.get(5),
                gateway: r.get(6),
                household: r.get(7),
                district: r.get(8),
                village: r.get(9),
            });
        }
        Ok((out, Some(SinkHead { seqs })))
    }

    /// Removes the queued readings `head` names (written, or dropped when `dropped`: then
    /// they are added to the persisted drop count); returns how many it removed.
    pub async fn sink_ack_readings(
        &self,
        head: &SinkHead,
        dropped: bool,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for chunk in head.seqs.chunks(ACK_CHUNK) {
            let mut qb = QueryBuilder::new(self.backend, "DELETE FROM sink_readings WHERE seq IN ");
            qb.push_tuples(chunk, |mut b, &seq| {
                b.push_bind(seq);
            });
            n += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        if dropped {
            add_dropped(&mut tx, "readings_dropped", n).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Back-pressure: when more than `max` readings wait, drops the oldest so that `max`
    /// remain, counts them as dropped, and returns how many it dropped.
    pub async fn sink_bound_readings(&self, max: i64) -> Result<u64, StoreError> {
        let (lo, hi): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM sink_readings")
                .fetch_one(&self.pool)
                .await?;
        let (Some(lo), Some(hi)) = (lo, hi) else {
            return Ok(0);
        };
        if hi - lo < max {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM sink_readings WHERE seq <= $1")
            .bind(hi - max.max(0))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        add_dropped(&mut tx, "readings_dropped", n).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Queue depths.
    pub async fn sink_backlog(&self) -> Result<SinkBacklog, StoreError> {
        let (lo, hi): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM sink_readings")
                .fetch_one(&self.pool)
                .await?;
        let seasons: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sink_seasons")
            .fetch_one(&self.pool)
            .await?;
        Ok(SinkBacklog {
            readings: match (lo, hi) {
                (Some(lo), Some(hi)) => hi - lo + 1,
                _ => 0,
            },
            seasons,
        })
    }

    /// Persisted drop totals: (readings, nights).
    pub async fn sink_dropped(&self) -> Result<(u64, u64), StoreError> {
        let rows = sqlx::query("SELECT key, value FROM sink_state")
            .fetch_all(&self.pool)
            .await?;
        let get = |k: &str| {
            rows.iter()
                .find(|r| r.get::<&str, _>(0) == k)
                .map(|r| u64::try_from(r.get::<i64, _>(1)).unwrap_or(0))
                .unwrap_or(0)
        };
        Ok((get("readings_dropped"), get("nights_dropped")))
    }

    /// Up to `limit` (household, season) pairs whose nights may have changed, with the
    /// generation of their mark.
    pub async fn sink_seasons(&self, limit: i64) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT household, season, gen FROM sink_seasons ORDER BY household, season LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The nights of (household, season) whose figure or quality differs from what was
    /// last exported (or that were never exported), in order.
    pub async fn sink_changed_nights(
        &self,
        household: &str,
        season: &str,
    ) -> Result<Vec<SinkNight>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let nights = super::nights::load(&mut conn, self.backend, season, &[household])
            .await?
            .remove(household)
            .unwrap_or_default();
        if nights.is_empty() {
            return Ok(Vec::new());
        }
        let place = sqlx::query(
            "SELECT COALESCE(district, ''), COALESCE(village, '') FROM households WHERE id = $1",
        )
        .bind(household)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .unwrap_or_default();
        let mut sent: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for r in sqlx::query("SELECT night, wh, quality FROM sink_nights WHERE household = $1")
            .bind(household)
            .fetch_all(&mut *conn)
            .await?
        {
            sent.insert(r.get(0), (r.get(1), r.get(2)));
        }
        Ok(nights
            .into_iter()
            .filter(|n| sent.get(&n.night) != Some(&(n.wh, n.quality.clone())))
            .map(|n| SinkNight {
                household: household.to_string(),
                night: n.night,
                season: season.to_string(),
                wh: n.wh,
                quality: n.quality,
                district: place.0.clone(),
                village: place.1.clone(),
            })
            .collect())
    }

    /// Records `nights` as exported (or, with `dropped`, counts them as dropped) and clears
    /// the pair's mark if it is still at generation `gen`.
    pub async fn sink_ack_nights(
        &self,
        household: &str,
        season: &str,
        gen: i64,
        nights: &[SinkNight],
        dropped: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for n in nights {
            sqlx::query(
                "INSERT INTO sink_nights (household, night, wh, quality) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (household, night) DO UPDATE SET wh = excluded.wh, quality = excluded.quality",
            )
            .bind(&n.household)
            .bind(&n.night)
            .bind(n.wh)
            .bind(&n.quality)
            .execute(&mut *tx)
            .await?;
        }
        if dropped {
            add_dropped(&mut tx, "nights_dropped", nights.len() as u64).await?;
        }
        sqlx::query("DELETE FROM sink_seasons WHERE household = $1 AND season = $2 AND gen = $3")
            .bind(household)
            .bind(season)
            .bind(gen)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Open alarms by kind (rule).
    pub async fn open_alarms_by_kind(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows =
            sqlx::query("SELECT kind, COUNT(*) FROM alarms WHERE cleared IS NULL GROUP BY kind")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// (household, season) pairs waiting for recompute.
    pub async fn dirty_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM dirty")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// SQLite's readings export trigger, present only while the sink is enabled (migration
/// 0006): a `WHEN` on every ingested row cost a tenth of the insert with no sink.
pub(super) const SQLITE_READINGS_TRIGGER: &str = "CREATE TRIGGER IF NOT EXISTS sink_reading_stored \
     AFTER INSERT ON readings BEGIN INSERT INTO sink_readings (meter, ts) VALUES (NEW.meter, NEW.ts); END";

/// Sets `enabled` and, when it changed, empties both queues; returns whether it changed.
/// Its first statement is a write: a transaction that reads and then writes cannot wait
/// for a concurrent writer (SQLite answers "database is locked" at once).
async fn switch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: super::Backend,
    on: bool,
) -> Result<bool, StoreError> {
    let changed =
        sqlx::query("UPDATE sink_state SET value = $1 WHERE key = 'enabled' AND value <> $2")
            .bind(i64::from(on))
            .bind(i64::from(on))
            .execute(&mut **tx)
            .await?
            .rows_affected();
    // After the write above (which takes the write lock): a read first could fail with
    // SQLITE_BUSY_SNAPSHOT when another connection wrote meanwhile.
    if backend == super::Backend::Sqlite {
        sqlx::query(if on {
            SQLITE_READINGS_TRIGGER
        } else {
            "DROP TRIGGER IF EXISTS sink_reading_stored"
        })
        .execute(&mut **tx)
        .await?;
    }
    if changed > 0 {
        sqlx::query("DELETE FROM sink_readings")
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM sink_seasons")
            .execute(&mut **tx)
            .await?;
    }
    Ok(changed > 0)
}

async fn add_dropped(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &str,
    n: u64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE sink_state SET value = value + $1 WHERE key = $2")
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
