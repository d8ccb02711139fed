//! The city feed's outbox (`migrations/*/0004_feed.sql`) and the figures the feed reads.
//!
//! Invariants: a batch's body is stored before any attempt to send it and never changes
//! afterwards (every retry sends the same bytes under the same key); `idem_key` and
//! `(subject, night, revision)` are unique, so enqueueing the same batch twice stores it
//! once; a row is never deleted, `delivered` is set once the platform took it.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::{Store, StoreError};

/// One household's stored night with the household's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedNight {
    /// Household id.
    pub household: String,
    /// `YYYY-MM-DD`, the local date its window opens.
    pub night: String,
    /// `YYYY-YYYY`.
    pub season: String,
    /// Paid off-peak energy, Wh (0 when missing).
    pub wh: i64,
    /// `actual`, `estimated` or `missing`.
    pub quality: String,
    /// Flag names.
    pub flags: Vec<String>,
    /// 区
    pub district: String,
    /// 镇/乡
    pub town: String,
    /// 村
    pub village: String,
}

/// A batch to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    /// Idempotency key (`{subject}:{night}:r{revision}`).
    pub key: String,
    /// `village:…` or `district:…`.
    pub subject: String,
    /// `YYYY-MM-DD`.
    pub night: String,
    /// 0 for the first batch of (subject, night), +1 per correction.
    pub revision: i64,
    /// SHA-256 hex of the night's figures.
    pub digest: String,
    /// The JSON body, exactly as it will be sent.
    pub body: String,
}

/// The newest stored revision of a (subject, night).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRevision {
    /// Its revision.
    pub revision: i64,
    /// Its figures' digest.
    pub digest: String,
    /// Its idempotency key.
    pub key: String,
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id (delivery order).
    pub id: i64,
    /// Idempotency key.
    pub key: String,
    /// Subject.
    pub subject: String,
    /// Night.
    pub night: String,
    /// Revision.
    pub revision: i64,
    /// The JSON body.
    pub body: String,
    /// Enqueued at, UTC Unix seconds.
    pub created: i64,
    /// Attempts made so far.
    pub attempts: i64,
    /// Earliest next attempt, UTC Unix seconds.
    pub next_attempt: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Delivered at, UTC Unix seconds; `None` while pending.
    pub delivered: Option<i64>,
}

const OUTBOX_SELECT: &str =
    "SELECT id, idem_key, subject, night, revision, body, created, attempts,
    next_attempt, last_error, delivered FROM feed_outbox";

fn outbox_row(r: &sqlx::any::AnyRow) -> OutboxRow {
    OutboxRow {
        id: r.get(0),
        key: r.get(1),
        subject: r.get(2),
        night: r.get(3),
        revision: r.get(4),
        body: r.get(5),
        created: r.get(6),
        attempts: r.get(7),
        next_attempt: r.get(8),
        last_error: r.get(9),
        delivered: r.get(10),
    }
}

impl Store {
    /// Stored nights from `from` to `to` (inclusive, `YYYY-MM-DD`) with each household's
    /// place, by night then household.
    pub async fn feed_nights(&self, from: &str, to: &str) -> Result<Vec<FeedNight>, StoreError> {
        // A night of year Y lies in a season whose first year is Y - 1 or Y.
        let year = |d: &str| d.get(..4).and_then(|y| y.parse::<i32>().ok());
        let (Some(y0), Some(y1)) = (year(from), year(to)) else {
            return Ok(Vec::new());
        };
        let mut conn = self.pool.acquire().await?;
        let nights = super::nights::load_seasons(
            &mut conn,
            super::nights::Seasons::FirstYears(y0.saturating_sub(1), y1),
        )
        .await?;
        let mut places: HashMap<String, (String, String, String)> = HashMap::new();
        for r in sqlx::query("SELECT id, district, town, village FROM households")
            .fetch_all(&mut *conn)
            .await?
        {
            places.insert(r.get(0), (r.get(1), r.get(2), r.get(3)));
        }
        let mut out: Vec<FeedNight> = nights
            .into_iter()
            .filter(|(_, _, n)| n.night.as_str() >= from && n.night.as_str() <= to)
            .filter_map(|(household, season, n)| {
                let (district, town, village) = places.get(&household)?.clone();
                Some(FeedNight {
                    household,
                    night: n.night,
                    season,
                    wh: n.wh,
                    quality: n.quality,
                    flags: n.flags,
                    district,
                    town,
                    village,
                })
            })
            .collect();
        out.sort_unstable_by(|a, b| (&a.night, &a.household).cmp(&(&b.night, &b.household)));
        Ok(out)
    }

    /// The newest revision of every (subject, night) with a night from `from` to `to`.
    pub async fn feed_latest(
        &self,
        from: &str,
        to: &str,
    ) -> Result<BTreeMap<(String, String), LatestRevision>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject, night, revision, digest, idem_key FROM feed_outbox
             WHERE night >= $1 AND night <= $2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<(String, String), LatestRevision> = BTreeMap::new();
        for r in rows {
            let rev = LatestRevision {
                revision: r.get(2),
                digest: r.get(3),
                key: r.get(4),
            };
            let e = out
                .entry((r.get(0), r.get(1)))
                .or_insert_with(|| rev.clone());
            if rev.revision > e.revision {
                *e = rev;
            }
        }
        Ok(out)
    }

    /// Puts batches in the outbox in one transaction, due at once; a key already stored
    /// is left as it is. Returns how many were new.
    pub async fn feed_enqueue(&self, batches: &[NewBatch], now: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        for b in batches {
            new += sqlx::query(
                "INSERT INTO feed_outbox (idem_key, subject, night, revision, digest, body, created,
                   attempts, next_attempt) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&b.key)
            .bind(&b.subject)
            .bind(&b.night)
            .bind(b.revision)
            .bind(&b.digest)
            .bind(&b.body)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Up to `limit` pending batches due at `now`, oldest first.
    pub async fn feed_due(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{OUTBOX_SELECT} WHERE delivered IS NULL AND next_attempt <= $1 ORDER BY id LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(outbox_row).collect())
    }

    /// Every outbox row, oldest first (operators and tests).
    pub async fn feed_outbox(&self) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!("{OUTBOX_SELECT} ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(outbox_row).collect())
    }

    /// Records a successful attempt.
    pub async fn feed_delivered(&self, id: i64, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE feed_outbox SET attempts = attempts + 1, delivered = $1, last_error = NULL
             WHERE id = $2 AND delivered IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt and when to try again.
    pub async fn feed_failed(
        &self,
        id: i64,
        next_attempt: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE feed_outbox SET attempts = attempts + 1, next_attempt = $1, last_error = $2
             WHERE id = $3 AND delivered IS NULL",
        )
        .bind(next_attempt)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// (pending batches, creation instant of the oldest pending one).
    pub async fn feed_pending(&self) -> Result<(i64, Option<i64>), StoreError> {
        let r =
            sqlx::query("SELECT COUNT(*), MIN(created) FROM feed_outbox WHERE delivered IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok((r.get(0), r.get(1)))
    }
}
