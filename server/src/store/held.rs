//! Held readings (migration 0008): readings the registry did not bind when they arrived,
//! kept with their values until a registry change admits them (`replay.rs`). Written in
//! the ingest transaction, next to the quarantine row that says why.

use sqlx::{Any, Row, Transaction};

use super::sql::QueryBuilder;
use super::{Backend, IngestTx, NewReading, Store, StoreError};

/// A reading held back, with the quarantine reason that held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReading {
    /// The reading as it arrived.
    pub reading: NewReading,
    /// `unknown_gateway`, `unbound_meter`, `spoofed`, `unbound` or `before_install`.
    pub reason: String,
}

/// A held reading's key: (gateway, meter, ts).
pub type HeldKey = (String, String, i64);

/// Rows per statement (10 values each for an insert).
const CHUNK: usize = 100;

/// Writes what `batch` says of held readings inside its transaction: new ones (checked
/// against `batch.held_version`; a repeat keeps the first), the ones admitted now
/// (deleted: their readings are in `batch.readings`), and the ones checked again in vain
/// (`checked` moves to `batch.held_version`).
pub(super) async fn write(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    batch: &IngestTx,
) -> Result<(), StoreError> {
    for chunk in batch.held.chunks(CHUNK) {
        let mut qb = QueryBuilder::new(
            backend,
            "INSERT INTO held_readings (gateway, meter, ts, e_wh, e_valley_wh, p_w, meter_ts, received, reason, checked) ",
        );
        qb.push_values(chunk, |mut b, h| {
            let r = &h.reading;
            b.push_bind(r.gateway.clone())
                .push_bind(r.meter.clone())
                .push_bind(r.ts)
                .push_bind(r.e_wh)
                .push_bind(r.e_valley_wh)
                .push_bind(r.p_w)
                .push_bind(r.meter_ts)
                .push_bind(batch.received)
                .push_bind(h.reason.clone())
                .push_bind(batch.held_version);
        });
        qb.push(" ON CONFLICT (gateway, meter, ts) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in batch.released.chunks(CHUNK) {
        let mut qb = QueryBuilder::new(backend, "DELETE FROM held_readings WHERE ");
        push_keys(&mut qb, chunk);
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in batch.rechecked.chunks(CHUNK) {
        let mut qb = QueryBuilder::new(backend, "UPDATE held_readings SET checked = ");
        qb.push_bind(batch.held_version).push(" WHERE ");
        push_keys(&mut qb, chunk);
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// `(gateway, meter, ts) IN (VALUES …)` of `keys`.
fn push_keys<'q>(qb: &mut QueryBuilder<'q>, keys: &'q [HeldKey]) {
    qb.push("(gateway, meter, ts) IN (");
    qb.push_values(keys, |mut b, (gw, meter, ts)| {
        b.push_bind(gw.as_str())
            .push_bind(meter.as_str())
            .push_bind(*ts);
    });
    qb.push(")");
}

impl Store {
    /// Up to `limit` held readings last checked against a registry version older than
    /// `version`, by gateway, meter and time.
    pub async fn held_to_check(
        &self,
        version: i64,
        limit: i64,
    ) -> Result<Vec<NewReading>, StoreError> {
        let rows = sqlx::query(
            "SELECT gateway, meter, ts, e_wh, e_valley_wh, p_w, meter_ts FROM held_readings
             WHERE checked < $1 ORDER BY gateway, meter, ts LIMIT $2",
        )
        .bind(version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| NewReading {
                gateway: r.get(0),
                meter: r.get(1),
                ts: r.get(2),
                e_wh: r.get(3),
                e_valley_wh: r.get(4),
                p_w: r.get(5),
                meter_ts: r.get(6),
            })
            .collect())
    }

    /// Back-pressure: when more than `max` readings are held, drops the earliest received
    /// (then by key) so that `max` remain; returns how many it dropped.
    pub async fn held_bound(&self, max: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM held_readings")
            .fetch_one(&self.pool)
            .await?;
        if n <= max {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM held_readings WHERE (gateway, meter, ts) IN (
                 SELECT gateway, meter, ts FROM held_readings
                 ORDER BY received, gateway, meter, ts LIMIT $1)",
        )
        .bind(n - max.max(0))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Held readings by reason, most first.
    pub async fn held_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT reason, COUNT(*) AS n FROM held_readings GROUP BY reason ORDER BY n DESC, reason",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
