//! The ingest transaction: one batch of MQTT messages, already validated, committed at
//! once. Every insert is keyed, so committing the same batch twice changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Any, Row, Transaction};

use super::sql::QueryBuilder;

use super::held::{HeldKey, HeldReading};
use super::{Store, StoreError};
use crate::monitor::MonitorFold;

/// A valid reading to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReading {
    /// Meter id.
    pub meter: String,
    /// Read at, UTC Unix seconds (gateway clock).
    pub ts: i64,
    /// Cumulative forward active energy, Wh.
    pub e_wh: i64,
    /// Cumulative valley (tariff 4) energy, Wh.
    pub e_valley_wh: Option<i64>,
    /// Active power, W.
    pub p_w: Option<i64>,
    /// The meter's clock, UTC Unix seconds.
    pub meter_ts: Option<i64>,
    /// The gateway that sent it.
    pub gateway: String,
}

/// A read the gateway reported as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFailure {
    /// Meter id.
    pub meter: String,
    /// When the read was tried, UTC Unix seconds.
    pub ts: i64,
    /// The gateway's reason (`timeout`, …).
    pub err: String,
    /// The gateway.
    pub gateway: String,
}

/// A message, or one reading of it, that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Hash of topic and payload: a redelivered message has the same key.
    pub msg_key: String,
    /// Reading index, or -1 for the whole message.
    pub item: i64,
    /// The MQTT topic.
    pub topic: String,
    /// The gateway, when the topic names a valid one.
    pub gateway: Option<String>,
    /// Stable snake_case reason (`not_json`, `unknown_gateway`, `future_ts`, …).
    pub reason: String,
    /// Human-readable detail naming the field.
    pub detail: String,
    /// The start of the payload, lossy UTF-8.
    pub payload: String,
}

/// A gateway's status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Gateway id.
    pub gateway: String,
    /// `online` or `offline`.
    pub state: String,
    /// The payload as received.
    pub json: String,
}

/// Everything one batch of messages writes.
#[derive(Debug, Clone, Default)]
pub struct IngestTx {
    /// Valid readings, in arrival order (the first value of a key is kept).
    pub readings: Vec<NewReading>,
    /// Failed reads.
    pub failures: Vec<ReadFailure>,
    /// Quarantined messages and readings.
    pub quarantine: Vec<Quarantined>,
    /// Gateway states, in arrival order.
    pub statuses: Vec<StatusUpdate>,
    /// Server time of the commit, UTC Unix seconds.
    pub received: i64,
    /// Readings the registry did not bind (each also has its quarantine row): kept
    /// until a registry change admits them.
    pub held: Vec<HeldReading>,
    /// The registry version the batch was checked against.
    pub held_version: i64,
    /// Held readings admitted now (their values are in `readings`): removed.
    pub released: Vec<HeldKey>,
    /// Held readings checked against `held_version` again and still not bound.
    pub rechecked: Vec<HeldKey>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// Readings stored for the first time.
    pub new_readings: u64,
    /// Readings already stored with the same value (ignored).
    pub repeats: u64,
    /// Readings already stored with another value (flagged, first kept).
    pub conflicts: u64,
    /// Quarantine rows written for the first time.
    pub quarantined: u64,
    /// (household, season) pairs marked for recompute.
    pub dirty: u64,
    /// Meters whose reading packs a late reading fell into (dropped, to be packed again).
    pub packs_invalidated: u64,
}

/// A reading's key in the readings table.
fn key(r: &NewReading) -> (&str, i64) {
    (r.meter.as_str(), r.ts)
}

/// The quarantine row of a reading below the settled cut `cut`: keyed by meter and
/// instant (a redelivery finds it), the reading itself as the payload.
fn settled_row(r: &NewReading, cut: i64) -> Quarantined {
    Quarantined {
        msg_key: format!("settled/{}/{}", r.meter, r.ts),
        item: 0,
        topic: format!("qn/v1/gw/{}/readings", r.gateway),
        gateway: Some(r.gateway.clone()),
        reason: "settled".into(),
        detail: format!(
            "ts: {} is before the settled cut {cut}: readings there were thinned, and a late one cannot be judged as the rules do",
            r.ts
        ),
        payload: serde_json::json!({
            "meter": r.meter,
            "ts": r.ts,
            "e_wh": r.e_wh,
            "e_valley_wh": r.e_valley_wh,
        })
        .to_string(),
    }
}

/// Rows per multi-row INSERT (8 values each: 4,000, far below SQLite's limit of 32,766
/// and PostgreSQL's 65,535).
const CHUNK: usize = 500;

/// Runs of a PostgreSQL ingest transaction after a deadlock or serialization failure.
pub(super) const RETRIES: u32 = 5;

/// Whether the database rolled the transaction back for a conflict with a concurrent one
/// (PostgreSQL's `40P01` deadlock, `40001` serialization failure): then it may run again.
pub(super) fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Sql(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "40P01" || c == "40001"),
        _ => false,
    }
}

impl Store {
    /// Commits a batch in one transaction. `dirty_of` names the (household, season)
    /// pairs a newly stored reading affects; repeats mark nothing.
    ///
    /// Readings are inserted in key order (a stable sort: the first value of a key in
    /// arrival order is still the one kept). SQLite then walks its `(meter, ts)` b-tree
    /// once instead of jumping between meters' pages row by row (the store's commit
    /// went from ~180k to ~250k readings/s, BENCHMARKS.md); on PostgreSQL, where replicas
    /// commit at once, two transactions lock keys in the same order, and one that lost a
    /// deadlock or a serialization check is run again (it changed nothing).
    pub async fn commit_ingest(
        &self,
        batch: &IngestTx,
        dirty_of: impl Fn(&NewReading, &mut BTreeSet<(String, String)>),
    ) -> Result<CommitSummary, StoreError> {
        self.commit_ingest_with(batch, dirty_of, None).await
    }

    /// [`Store::commit_ingest`], folding `monitor` (the same batch's monitoring changes)
    /// into gateway and meter state in the same transaction: one commit per batch, and
    /// the rows locked while they change, so concurrent batches and replicas never
    /// overwrite each other's state.
    pub async fn commit_ingest_with(
        &self,
        batch: &IngestTx,
        dirty_of: impl Fn(&NewReading, &mut BTreeSet<(String, String)>),
        monitor: Option<&MonitorFold<'_>>,
    ) -> Result<CommitSummary, StoreError> {
        let mut attempt = 0;
        loop {
            match self.try_commit_ingest(batch, &dirty_of, monitor).await {
                Err(e) if attempt < RETRIES && retryable(&e) => {
                    attempt += 1;
                    tracing::debug!(attempt, "ingest commit retried: {e}");
                }
                done => return done,
            }
        }
    }

    async fn try_commit_ingest(
        &self,
        batch: &IngestTx,
        dirty_of: &impl Fn(&NewReading, &mut BTreeSet<(String, String)>),
        monitor: Option<&MonitorFold<'_>>,
    ) -> Result<CommitSummary, StoreError> {
        let mut readings: Vec<&NewReading> = batch.readings.iter().collect();
        readings.sort_by(|a, b| (a.meter.as_bytes(), a.ts).cmp(&(b.meter.as_bytes(), b.ts)));
        // SQLite: IMMEDIATE, since the cut is read before the first write.
        let mut tx = self.begin_write(super::WriteLock::Settled).await?;
        let mut sum = CommitSummary::default();
        // Below the settled cut readings were thinned: one arriving there now cannot be
        // judged as the rules do (docs/bounded-state.md), so it is set aside.
        let settled = if let Some(cut) = super::settle::cut_in(&mut tx, self.backend).await? {
            let (keep, late): (Vec<&NewReading>, Vec<&NewReading>) =
                readings.into_iter().partition(|r| r.ts >= cut);
            readings = keep;
            late.into_iter().map(|r| settled_row(r, cut)).collect()
        } else {
            Vec::new()
        };
        // (household, season) → the earliest instant that changed for it.
        let mut dirty: BTreeMap<(String, String), Option<i64>> = BTreeMap::new();
        let mut pairs = BTreeSet::new();
        // Meter → its earliest new reading (packs it falls into are dropped).
        let mut first: BTreeMap<&str, i64> = BTreeMap::new();
        let mut mark = |r: &NewReading, dirty: &mut BTreeMap<(String, String), Option<i64>>| {
            pairs.clear();
            dirty_of(r, &mut pairs);
            for p in std::mem::take(&mut pairs) {
                let since = dirty.entry(p).or_insert(Some(r.ts));
                *since = since.map(|s| s.min(r.ts));
            }
        };
        // Sorted, a key's repeats follow its first reading (its first value in arrival
        // order); they are judged against what that first one left stored.
        let is_first = |i: usize| {
            i == 0 || readings.get(i - 1).map(|p| key(p)) != readings.get(i).map(|r| key(r))
        };
        let firsts: Vec<&NewReading> = (0..readings.len())
            .filter(|&i| is_first(i))
            .filter_map(|i| readings.get(i).copied())
            .collect();
        // Keys stored before this batch, with their stored (e_wh, e_valley_wh): rare.
        let mut before = HashMap::new();
        for chunk in firsts.chunks(CHUNK) {
            let found = insert_new(&mut tx, self.backend, chunk, batch.received).await?;
            for r in chunk {
                if !found.contains_key(&key(r)) {
                    sum.new_readings += 1;
                    mark(r, &mut dirty);
                    let t = first.entry(r.meter.as_str()).or_insert(r.ts);
                    *t = (*t).min(r.ts);
                }
            }
            before.extend(found);
        }
        // The value stored for the key of the reading in hand.
        let mut stored = (0, None);
        for (i, r) in readings.iter().enumerate() {
            if is_first(i) {
                match before.get(&key(r)) {
                    Some(&value) => stored = value,
                    None => {
                        stored = (r.e_wh, r.e_valley_wh);
                        continue;
                    }
                }
            }
            if stored == (r.e_wh, r.e_valley_wh) {
                sum.repeats += 1;
                continue;
            }
            sum.conflicts += 1;
            let flagged = sqlx::query(
                "INSERT INTO reading_conflicts (meter, ts, e_wh, e_valley_wh, gateway, received)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(&r.meter)
            .bind(r.ts)
            .bind(r.e_wh)
            .bind(r.e_valley_wh.unwrap_or(-1))
            .bind(&r.gateway)
            .bind(batch.received)
            .execute(&mut *tx)
            .await?;
            if flagged.rows_affected() > 0 {
                // A night resting on this instant is now flagged.
                mark(r, &mut dirty);
            }
        }
        for f in &batch.failures {
            sqlx::query("INSERT INTO read_failures (meter, ts, err, gateway) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(&f.meter)
                .bind(f.ts)
                .bind(&f.err)
                .bind(&f.gateway)
                .execute(&mut *tx)
                .await?;
        }
        for q in batch.quarantine.iter().chain(&settled) {
            let done = sqlx::query(
                "INSERT INTO quarantine (msg_key, item, received, topic, gateway, reason, detail, payload)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(&q.msg_key)
            .bind(q.item)
            .bind(batch.received)
            .bind(&q.topic)
            .bind(&q.gateway)
            .bind(&q.reason)
            .bind(&q.detail)
            .bind(&q.payload)
            .execute(&mut *tx)
            .await?;
            sum.quarantined += done.rows_affected();
        }
        for s in &batch.statuses {
            sqlx::query(
                "UPDATE gateways SET state = $1, last_seen = $2, status_json = $3 WHERE id = $4",
            )
            .bind(&s.state)
            .bind(batch.received)
            .bind(&s.json)
            .bind(&s.gateway)
            .execute(&mut *tx)
            .await?;
        }
        super::held::write(&mut tx, self.backend, batch).await?;
        if let Some(fold) = monitor {
            super::monitor::fold_in(&mut tx, self.backend, fold).await?;
        }
        // After the readings are in (PostgreSQL's order matters: store/packs.rs).
        sum.packs_invalidated = super::packs::invalidate(&mut tx, self.backend, &first).await?;
        super::results::mark_dirty_many(&mut tx, self.backend, &dirty).await?;
        sum.dirty = dirty.len() as u64;
        tx.commit().await?;
        super::packs::INVALIDATED_METERS
            .fetch_add(sum.packs_invalidated, std::sync::atomic::Ordering::Relaxed);
        Ok(sum)
    }

    /// Quarantine counts by reason, most frequent first.
    pub async fn quarantine_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, COUNT(*) AS n FROM quarantine GROUP BY reason ORDER BY n DESC, reason",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Quarantine rows as (topic, item, reason, detail), oldest first.
    pub async fn quarantine_rows(&self) -> Result<Vec<(String, i64, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT topic, item, reason, detail FROM quarantine ORDER BY received, msg_key, item",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// Number of stored readings and of flagged conflicts.
    pub async fn reading_counts(&self) -> Result<(i64, i64), StoreError> {
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
            .fetch_one(&self.pool)
            .await?;
        let c = sqlx::query_scalar("SELECT COUNT(*) FROM reading_conflicts")
            .fetch_one(&self.pool)
            .await?;
        Ok((n, c))
    }

    /// A gateway's last state and when it was heard (server clock).
    pub async fn gateway_state(
        &self,
        id: &str,
    ) -> Result<Option<(Option<String>, Option<i64>)>, StoreError> {
        let r = sqlx::query("SELECT state, last_seen FROM gateways WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| (r.get(0), r.get(1))))
    }
}

/// Inserts `chunk` (distinct keys) and returns the readings that were already stored,
/// with their stored values: (e_wh, e_valley_wh) by key. Every other reading of the
/// chunk is stored now, with its own value.
///
/// The insert is tried whole first, in a savepoint: when every row goes in (the usual
/// case) nothing more is asked. Otherwise it is rolled back, the stored rows are looked
/// up in one query, and the rest inserted again (on PostgreSQL a concurrent replica may
/// store some of them meanwhile: then again).
async fn insert_new<'a>(
    tx: &mut Transaction<'_, Any>,
    backend: super::Backend,
    chunk: &[&'a NewReading],
    received: i64,
) -> Result<HashMap<(&'a str, i64), (i64, Option<i64>)>, StoreError> {
    let mut before = HashMap::new();
    let mut pending: Vec<&NewReading> = chunk.to_vec();
    for _ in 0..=RETRIES {
        if pending.is_empty() {
            return Ok(before);
        }
        sqlx::query("SAVEPOINT ingest_rows")
            .execute(&mut **tx)
            .await?;
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "INSERT INTO readings (meter, ts, e_wh, e_valley_wh, p_w, meter_ts, gateway, received) ",
        );
        qb.push_values(&pending, |mut b, r| {
            b.push_bind(&r.meter)
                .push_bind(r.ts)
                .push_bind(r.e_wh)
                .push_bind(r.e_valley_wh)
                .push_bind(r.p_w)
                .push_bind(r.meter_ts)
                .push_bind(&r.gateway)
                .push_bind(received);
        });
        qb.push(" ON CONFLICT (meter, ts) DO NOTHING");
        let n = qb.build().execute(&mut **tx).await?.rows_affected();
        if n == pending.len() as u64 {
            sqlx::query("RELEASE SAVEPOINT ingest_rows")
                .execute(&mut **tx)
                .await?;
            return Ok(before);
        }
        sqlx::query("ROLLBACK TO SAVEPOINT ingest_rows")
            .execute(&mut **tx)
            .await?;
        sqlx::query("RELEASE SAVEPOINT ingest_rows")
            .execute(&mut **tx)
            .await?;
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "SELECT meter, ts, e_wh, e_valley_wh FROM readings WHERE (meter, ts) IN (",
        );
        qb.push_values(&pending, |mut b, r| {
            b.push_bind(&r.meter).push_bind(r.ts);
        });
        qb.push(")");
        let found: HashMap<(String, i64), (i64, Option<i64>)> = qb
            .build()
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
            .collect();
        pending.retain(|r| match found.get(&(r.meter.clone(), r.ts)) {
            Some(&value) => {
                before.insert((r.meter.as_str(), r.ts), value);
                false
            }
            None => true,
        });
    }
    // Only a store changing under the transaction without end gets here.
    Err(StoreError::Corrupt(
        "readings: concurrent inserts did not settle",
    ))
}
