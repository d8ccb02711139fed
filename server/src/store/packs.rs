//! Reading packs: a meter's readings of a closed 16-day chunk packed as one varint blob, so
//! a recompute round reads a season as a few rows a meter; the `readings` table stays the record.
//!
//! Invariant: for a meter with a `pack_cover` row `upto`, its packs hold exactly its stored
//! readings with `ts < upto` (the pack of the chunk `upto` falls in holds those of its
//! readings below `upto`, and is rewritten when `upto` moves on); a chunk starting below
//! `upto` without a pack has none. Readings are only ever added. A new one below its meter's `upto` (late data) lowers
//! `upto` to its chunk's start and drops the packs from that chunk on, in the transaction
//! that stores it ([`invalidate`]); packing ([`Store::pack_readings`]) moves `upto` up again.
//!
//! Concurrency. SQLite: both run as write transactions, one at a time. PostgreSQL: packing
//! first raises the `pack_horizon` meta row (holding its lock to commit) and only then reads
//! readings; ingest reads that row `FOR SHARE` after inserting its readings. Either the
//! ingest commits first (packing waits for it, then reads its readings), or packing does
//! (the ingest then sees the horizon and the new packs, and drops what its readings fall into).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sqlx::{Any, AnyConnection, Row, Transaction};

use super::sql::QueryBuilder;
use super::{Backend, Store, StoreError, StoredReading};
use crate::varint::{Reader, Writer};

/// Width of a pack's chunk of time, seconds (16 days; chunks start at multiples from the epoch).
pub const CHUNK_S: i64 = 16 * 86_400;
/// How old a reading is before it is packed, seconds: late readings within it (a gateway's
/// spool after a short outage) land before the pack is made. Packing moves on a day at a
/// time (the running chunk's pack is rewritten each day: at most 16 times).
pub const GRACE_S: i64 = 2 * 86_400;

/// Readings moved into packs since start (`/metrics`).
pub static PACKED_READINGS: AtomicU64 = AtomicU64::new(0);
/// Meters whose packs a late reading invalidated since start (`/metrics`).
pub static INVALIDATED_METERS: AtomicU64 = AtomicU64::new(0);

/// Blob format version (first byte).
const VERSION: u8 = 1;
/// Meters a packing pass takes at most.
const PASS_METERS: i64 = 256;
/// Chunks a pass moves one meter on at most (a meter's first pass may have years behind it).
const PASS_CHUNKS: i64 = 4;
/// Meters read at once within a pass.
const GROUP: usize = 32;
/// Readings after which a pass stops at the end of its group (bounds its memory: a reading a
/// minute is 23,040 a chunk).
const PASS_READINGS: u64 = 1_000_000;
/// Rows per multi-row statement.
const ROWS: usize = 200;

/// The chunk `ts` (UTC Unix seconds) falls in.
pub fn chunk_of(ts: i64) -> i64 {
    ts.div_euclid(CHUNK_S)
}

/// The start of chunk `c`, UTC Unix seconds.
pub fn chunk_start(c: i64) -> i64 {
    c.saturating_mul(CHUNK_S)
}

/// Up to where readings may be packed at `now`: the UTC midnight `GRACE_S` ago.
pub fn horizon_at(now: i64) -> i64 {
    now.saturating_sub(GRACE_S)
        .div_euclid(86_400)
        .saturating_mul(86_400)
}

/// Packs readings ordered by `ts` (distinct): each value as the difference from the one
/// before (wrapping, so any i64 round-trips), zigzag varints; the valley register as a
/// presence byte and the difference from the last one present.
pub fn encode(readings: &[StoredReading]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(2 + readings.len() * 6));
    w.0.push(VERSION);
    w.uint(readings.len() as u64);
    let (mut ts, mut e, mut v) = (0i64, 0i64, 0i64);
    for r in readings {
        w.int(r.ts.wrapping_sub(ts));
        w.int(r.e_wh.wrapping_sub(e));
        match r.e_valley_wh {
            None => w.0.push(0),
            Some(x) => {
                w.0.push(1);
                w.int(x.wrapping_sub(v));
                v = x;
            }
        }
        (ts, e) = (r.ts, r.e_wh);
    }
    w.0
}

/// What [`encode`] packed; `None` for anything else (a corrupt or foreign blob).
pub fn decode(data: &[u8]) -> Option<Vec<StoredReading>> {
    let mut out = Vec::new();
    let mut r = Reader(data);
    decode_one(&mut r, &|_| true, &mut out)?;
    r.0.is_empty().then_some(out)
}

/// Appends the readings whose `ts` passes `keep` from packs written one after another (as
/// the database concatenates a meter's packs; each is self-delimiting: a count, then its
/// readings) to `out`; nothing is appended from data that turns out corrupt.
fn decode_all_into(
    data: &[u8],
    keep: impl Fn(i64) -> bool,
    out: &mut Vec<StoredReading>,
) -> Option<()> {
    let start = out.len();
    // 7 bytes a reading is typical (a read every 12 h): one allocation, not one per pack.
    out.reserve(data.len() / 6);
    let mut r = Reader(data);
    let mut done = Some(());
    while !r.0.is_empty() && done.is_some() {
        done = decode_one(&mut r, &keep, out);
    }
    if done.is_none() {
        out.truncate(start);
    }
    done
}

/// Reads one pack from `r`, appending the readings whose `ts` passes `keep`.
fn decode_one(
    r: &mut Reader<'_>,
    keep: &impl Fn(i64) -> bool,
    out: &mut Vec<StoredReading>,
) -> Option<()> {
    if r.byte()? != VERSION {
        return None;
    }
    let n = r.len()?;
    // A reading takes 3 bytes at least: a count beyond that is corrupt, not an allocation.
    if n > r.0.len() / 3 {
        return None;
    }
    out.reserve(n);
    let (mut ts, mut e, mut v) = (0i64, 0i64, 0i64);
    for _ in 0..n {
        ts = ts.wrapping_add(r.int()?);
        e = e.wrapping_add(r.int()?);
        let e_valley_wh = match r.byte()? {
            0 => None,
            1 => {
                v = v.wrapping_add(r.int()?);
                Some(v)
            }
            _ => return None,
        };
        if keep(ts) {
            out.push(StoredReading {
                ts,
                e_wh: e,
                e_valley_wh,
            });
        }
    }
    Some(())
}

/// What a packing pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackSummary {
    /// Meters moved on.
    pub meters: u64,
    /// Readings packed.
    pub readings: u64,
    /// Packs written.
    pub packs: u64,
    /// The last meter taken: the next pass starts after it (`None`: none was left).
    pub last: Option<String>,
}

impl Store {
    /// One packing pass: up to 256 meters after `after` (byte order) whose readings are not
    /// packed up to `horizon`, each moved on by up to four chunks, in one transaction. Call
    /// again with the summary's `last` until it is `None`.
    pub async fn pack_readings(
        &self,
        horizon: i64,
        after: Option<&str>,
    ) -> Result<PackSummary, StoreError> {
        let mut tx = self.begin_write(super::WriteLock::Figures).await?;
        // First, under its lock until commit (PostgreSQL): see the module's concurrency note.
        sqlx::query(
            "UPDATE meta SET value = CASE WHEN value < $1 THEN $1 ELSE value END WHERE key = 'pack_horizon'",
        )
        .bind(horizon)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT m.meter, c.upto FROM (SELECT DISTINCT meter FROM meters WHERE meter > $1) AS m \
             LEFT JOIN pack_cover c ON c.meter = m.meter \
             WHERE c.upto IS NULL OR c.upto < $2 ORDER BY m.meter LIMIT $3",
        )
        .bind(after.unwrap_or(""))
        .bind(horizon)
        .bind(PASS_METERS)
        .fetch_all(&mut *tx)
        .await?;
        let work: Vec<(String, Option<i64>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut sum = PackSummary {
            last: work.last().map(|(m, _)| m.clone()),
            ..PackSummary::default()
        };
        // Where each meter starts: the chunk its cover is in (that pack is rewritten), else
        // the chunk of its first reading.
        let fresh: Vec<&str> = work
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(m, _)| m.as_str())
            .collect();
        let firsts = first_readings(&mut tx, self.backend, &fresh).await?;
        let mut spans: Vec<(&str, i64, i64)> = Vec::with_capacity(work.len());
        for (m, cover) in &work {
            let start = match cover {
                Some(c) => chunk_start(chunk_of(*c)),
                None => firsts
                    .get(m.as_str())
                    .map_or(horizon, |&t| chunk_start(chunk_of(t)).min(horizon)),
            };
            let end = horizon.min(start.saturating_add(PASS_CHUNKS * CHUNK_S));
            spans.push((m.as_str(), start, end));
        }
        let mut packs: Vec<(&str, i64, i64, Vec<u8>)> = Vec::new();
        let mut covers: Vec<(&str, i64)> = Vec::new();
        for group in spans.chunks(GROUP) {
            let ranges: Vec<(&str, i64, i64)> = group
                .iter()
                .map(|&(m, start, end)| (m, start.saturating_sub(1), end))
                .collect();
            let mut got = rows_between(&mut tx, self.backend, &ranges).await?;
            for &(m, _, end) in group {
                let readings = got.remove(m).unwrap_or_default();
                sum.readings += readings.len() as u64;
                let mut by_chunk: BTreeMap<i64, Vec<StoredReading>> = BTreeMap::new();
                for r in readings {
                    by_chunk.entry(chunk_of(r.ts)).or_default().push(r);
                }
                for (c, rs) in by_chunk {
                    packs.push((m, c, rs.len() as i64, encode(&rs)));
                }
                covers.push((m, end));
            }
            sum.meters += group.len() as u64;
            if sum.readings >= PASS_READINGS {
                sum.last = covers.last().map(|(m, _)| (*m).to_string());
                break;
            }
        }
        sum.packs = packs.len() as u64;
        for chunk in packs.chunks(ROWS) {
            let mut qb = QueryBuilder::new(
                self.backend,
                "INSERT INTO reading_packs (meter, chunk, n, data) ",
            );
            qb.push_values(chunk, |mut b, (m, c, n, data)| {
                b.push_bind(*m)
                    .push_bind(*c)
                    .push_bind(*n)
                    .push_bind(data.as_slice());
            });
            qb.push(
                " ON CONFLICT (meter, chunk) DO UPDATE SET n = excluded.n, data = excluded.data",
            );
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in covers.chunks(ROWS) {
            let mut qb = QueryBuilder::new(self.backend, "INSERT INTO pack_cover (meter, upto) ");
            qb.push_values(chunk, |mut b, (m, upto)| {
                b.push_bind(*m).push_bind(*upto);
            });
            qb.push(" ON CONFLICT (meter) DO UPDATE SET upto = excluded.upto");
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        PACKED_READINGS.fetch_add(sum.readings, Relaxed);
        Ok(sum)
    }

    /// Packs every meter's readings up to `horizon`: sweeps of passes until one finds
    /// nothing left to do. What was done.
    pub async fn pack_all(&self, horizon: i64) -> Result<PackSummary, StoreError> {
        let mut total = PackSummary::default();
        loop {
            let (mut after, mut moved): (Option<String>, u64) = (None, 0);
            loop {
                let s = self.pack_readings(horizon, after.as_deref()).await?;
                moved += s.meters;
                total.meters += s.meters;
                total.readings += s.readings;
                total.packs += s.packs;
                match s.last {
                    Some(m) => after = Some(m),
                    None => break,
                }
            }
            if moved == 0 {
                return Ok(total);
            }
        }
    }
}

impl Store {
    /// Meters with a pack cover, and packs stored (tests, diagnostics).
    pub async fn pack_counts(&self) -> Result<(i64, i64), StoreError> {
        let covered = sqlx::query_scalar("SELECT COUNT(*) FROM pack_cover")
            .fetch_one(&self.pool)
            .await?;
        let packs = sqlx::query_scalar("SELECT COUNT(*) FROM reading_packs")
            .fetch_one(&self.pool)
            .await?;
        Ok((covered, packs))
    }
}

/// The first reading instant of each of `meters` that has one.
async fn first_readings(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    meters: &[&str],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut out = HashMap::new();
    for ids in meters.chunks(ROWS) {
        let mut qb = QueryBuilder::new(
            backend,
            "SELECT meter, MIN(ts) FROM readings WHERE meter IN ",
        );
        qb.push_tuples(ids, |mut b, id| {
            b.push_bind(*id);
        });
        qb.push(" GROUP BY meter");
        for r in qb.build().fetch_all(&mut **tx).await? {
            out.insert(r.get(0), r.get(1));
        }
    }
    Ok(out)
}

/// The stored readings of each `(meter, after, before)` with `after < ts < before`, ordered
/// by `ts`, packed inside the database as one text row a meter (a row a reading costs
/// microseconds each through sqlx). Meters sharing their bounds (a cold round: all of them)
/// are read with an `IN` list, which walks the key in order; the rest join a list of bounds.
pub(super) async fn rows_between(
    conn: &mut AnyConnection,
    backend: Backend,
    ranges: &[(&str, i64, i64)],
) -> Result<HashMap<String, Vec<StoredReading>>, StoreError> {
    const AGG: &str = "string_agg(CAST(r.ts AS TEXT) || ',' || CAST(r.e_wh AS TEXT) || ',' || \
                       COALESCE(CAST(r.e_valley_wh AS TEXT), ''), ';')";
    let mut out = HashMap::new();
    let mut shared: BTreeMap<(i64, i64), Vec<&str>> = BTreeMap::new();
    for &(m, lo, hi) in ranges {
        if lo.saturating_add(1) < hi {
            shared.entry((lo, hi)).or_default().push(m);
        }
    }
    let mut single: Vec<(&str, i64, i64)> = Vec::new();
    for ((lo, hi), ids) in shared {
        if ids.len() < 8 {
            single.extend(ids.into_iter().map(|m| (m, lo, hi)));
            continue;
        }
        for ids in ids.chunks(ROWS) {
            let mut qb = QueryBuilder::new(
                backend,
                format!("SELECT r.meter, {AGG} FROM readings r WHERE r.meter IN "),
            );
            qb.push_tuples(ids, |mut b, id| {
                b.push_bind(*id);
            });
            qb.push(" AND r.ts > ")
                .push_bind(lo)
                .push(" AND r.ts < ")
                .push_bind(hi)
                .push(" GROUP BY r.meter");
            for r in qb.build().fetch_all(&mut *conn).await? {
                let packed: &str = r.get(1);
                out.insert(r.get(0), unpack_text(packed)?);
            }
        }
    }
    for chunk in single.chunks(ROWS) {
        let mut qb = QueryBuilder::new(backend, format!("SELECT r.meter, {AGG} FROM ("));
        qb.push_values(chunk, |mut b, (m, lo, hi)| {
            b.push_bind(*m).push_bind(*lo).push_bind(*hi);
        });
        qb.push(
            ") AS w JOIN readings r ON r.meter = w.column1 AND r.ts > w.column2 AND r.ts < w.column3 \
             GROUP BY r.meter",
        );
        for r in qb.build().fetch_all(&mut *conn).await? {
            let packed: &str = r.get(1);
            out.insert(r.get(0), unpack_text(packed)?);
        }
    }
    Ok(out)
}

/// What a round reads of its meters: readings and conflict instants, by meter.
pub(super) type RoundRows = (
    HashMap<String, Vec<StoredReading>>,
    HashMap<String, Vec<i64>>,
);

/// The stored readings of each `(meter, after, before)` with `after < ts < before`, in
/// time order: below the meter's pack cover from its packs, at or above it (or all, for a
/// meter without a cover) from the readings table; and every instant at which a
/// conflicting value of the meter arrived, in order. One row a meter and one statement for
/// all (a row or a statement costs microseconds through sqlx): the packs concatenated as
/// one blob, the readings above the cover and the conflict instants as texts. (One row
/// for many meters, all aggregated in the database, measured slower: the aggregation
/// costs more than the rows it saves.)
pub(super) async fn round_rows(
    conn: &mut AnyConnection,
    backend: Backend,
    ranges: &[(&str, i64, i64)],
) -> Result<RoundRows, StoreError> {
    const AGG: &str = "string_agg(CAST(r.ts AS TEXT) || ',' || CAST(r.e_wh AS TEXT) || ',' || \
                       COALESCE(CAST(r.e_valley_wh AS TEXT), ''), ';')";
    // SQLite concatenates blobs as text of the same bytes; the cast gives them back.
    let (packs, greatest) = match backend {
        Backend::Sqlite => ("CAST(group_concat(p.data, '') AS BLOB)", "max"),
        Backend::Postgres => ("string_agg(p.data, ''::bytea ORDER BY p.chunk)", "GREATEST"),
    };
    let bounds: HashMap<&str, (i64, i64)> = ranges.iter().map(|&(m, a, b)| (m, (a, b))).collect();
    let mut out = HashMap::with_capacity(ranges.len());
    let mut conflicts = HashMap::new();
    for chunk in ranges.chunks(ROWS) {
        let mut qb = QueryBuilder::new(
            backend,
            format!(
                "SELECT w.column1, c.upto, \
                 (SELECT {packs} FROM reading_packs p WHERE c.upto IS NOT NULL \
                  AND p.meter = w.column1 AND p.chunk >= w.column2 AND p.chunk <= w.column3), \
                 (SELECT {AGG} FROM readings r WHERE r.meter = w.column1 \
                  AND r.ts > {greatest}(w.column4, COALESCE(c.upto - 1, w.column4)) AND r.ts < w.column5), \
                 (SELECT string_agg(CAST(x.ts AS TEXT), ',') FROM \
                  (SELECT DISTINCT k.ts FROM reading_conflicts k WHERE k.meter = w.column1) x) \
                 FROM ("
            ),
        );
        qb.push_values(chunk, |mut b, (m, lo, hi)| {
            b.push_bind(*m)
                .push_bind(chunk_of(lo.saturating_add(1)))
                .push_bind(chunk_of(hi.saturating_sub(1)))
                .push_bind(*lo)
                .push_bind(*hi);
        });
        qb.push(") AS w LEFT JOIN pack_cover c ON c.meter = w.column1");
        for r in qb.build().fetch_all(&mut *conn).await? {
            let meter: String = r.get(0);
            let upto: Option<i64> = r.get(1);
            // Borrowed from the row: a season's packs are not copied once more.
            let packed: Option<&[u8]> = r.get(2);
            let above: Option<&str> = r.get(3);
            let (lo, hi) = bounds.get(meter.as_str()).copied().unwrap_or((0, 0));
            let mut readings = Vec::new();
            if let (Some(upto), Some(packed)) = (upto, packed) {
                let hi = hi.min(upto);
                decode_all_into(packed, |t| t > lo && t < hi, &mut readings)
                    .ok_or(StoreError::Corrupt("reading_packs"))?;
            }
            if let Some(above) = above {
                readings.extend(unpack_text(above)?);
            }
            if let Some(at) = r.get::<Option<&str>, _>(4) {
                let mut at = at
                    .split(',')
                    .map(|t| t.parse::<i64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| StoreError::Corrupt("reading_conflicts"))?;
                at.sort_unstable();
                conflicts.insert(meter.clone(), at);
            }
            if !readings.is_sorted_by_key(|r| r.ts) {
                readings.sort_unstable_by_key(|r| r.ts);
            }
            if !readings.is_empty() {
                out.insert(meter, readings);
            }
        }
    }
    Ok((out, conflicts))
}

/// In an ingest transaction, after its readings are inserted: for each meter whose new
/// readings start (`first`, UTC Unix seconds) below its pack cover, drops the packs from
/// that reading's chunk on and lowers the cover to the chunk's start. Returns how many
/// meters that was.
pub(super) async fn invalidate(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    first: &BTreeMap<&str, i64>,
) -> Result<u64, StoreError> {
    let Some(&earliest) = first.values().min() else {
        return Ok(0);
    };
    let sql = match backend {
        Backend::Sqlite => "SELECT value FROM meta WHERE key = 'pack_horizon'",
        Backend::Postgres => "SELECT value FROM meta WHERE key = 'pack_horizon' FOR SHARE",
    };
    let horizon: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut **tx).await?;
    if horizon.is_none_or(|h| earliest >= h) {
        return Ok(0);
    }
    let horizon = horizon.unwrap_or(i64::MIN);
    let mut hit = 0;
    // Byte order (a BTreeMap of str): two transactions lock the rows in the same order.
    for (&meter, &ts) in first {
        if ts >= horizon {
            continue;
        }
        let c = chunk_of(ts);
        let lowered = sqlx::query("UPDATE pack_cover SET upto = $1 WHERE meter = $2 AND upto > $3")
            .bind(chunk_start(c))
            .bind(meter)
            .bind(ts)
            .execute(&mut **tx)
            .await?;
        if lowered.rows_affected() > 0 {
            sqlx::query("DELETE FROM reading_packs WHERE meter = $1 AND chunk >= $2")
                .bind(meter)
                .bind(c)
                .execute(&mut **tx)
                .await?;
            hit += 1;
        }
    }
    Ok(hit)
}

/// Readings as `string_agg` packs them: `ts,e_wh,valley;…` (valley empty when absent),
/// returned in `ts` order (the aggregate is not asked to order: an ORDER BY inside it makes
/// SQLite sort every group although the key already yields it in order).
pub(super) fn unpack_text(packed: &str) -> Result<Vec<StoredReading>, StoreError> {
    let corrupt = || StoreError::Corrupt("readings");
    let mut out = Vec::with_capacity(packed.len() / 24 + 1);
    for item in packed.split(';') {
        let mut f = item.split(',');
        let mut int = || -> Result<Option<i64>, StoreError> {
            match f.next().ok_or_else(corrupt)? {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| corrupt()),
            }
        };
        let ts = int()?.ok_or_else(corrupt)?;
        let e_wh = int()?.ok_or_else(corrupt)?;
        let e_valley_wh = int()?;
        out.push(StoredReading {
            ts,
            e_wh,
            e_valley_wh,
        });
    }
    if !out.is_sorted_by_key(|r| r.ts) {
        out.sort_unstable_by_key(|r| r.ts);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_what_the_query_packs() {
        let got = unpack_text("1761912000,1000000,;1761955200,1020000,-5").unwrap();
        assert_eq!(
            got,
            vec![
                StoredReading {
                    ts: 1_761_912_000,
                    e_wh: 1_000_000,
                    e_valley_wh: None
                },
                StoredReading {
                    ts: 1_761_955_200,
                    e_wh: 1_020_000,
                    e_valley_wh: Some(-5)
                },
            ]
        );
        for bad in ["", "1", "1,x,", "1,2", ",2,3"] {
            assert!(unpack_text(bad).is_err(), "{bad:?}");
        }
        // Whatever order the database aggregated them in, they come back in time order.
        let got = unpack_text("1761955200,1020000,-5;1761912000,1000000,").unwrap();
        assert_eq!(
            got.iter().map(|r| r.ts).collect::<Vec<_>>(),
            [1_761_912_000, 1_761_955_200]
        );
    }

    fn reading(ts: i64, e_wh: i64, e_valley_wh: Option<i64>) -> StoredReading {
        StoredReading {
            ts,
            e_wh,
            e_valley_wh,
        }
    }

    #[test]
    fn a_pack_gives_back_exactly_what_was_packed() {
        let rs = vec![
            reading(i64::MIN, i64::MAX, Some(i64::MIN)),
            reading(-1, 0, None),
            reading(1_761_912_000, 999_999_999, Some(5)),
            reading(1_761_955_200, 12, Some(-3)),
            reading(i64::MAX, i64::MIN, None),
        ];
        assert_eq!(decode(&encode(&rs)).unwrap(), rs);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
        // Two boundary reads a night of a 20 kWh night: a few bytes each.
        let night: Vec<_> = (0..60)
            .map(|i| reading(1_761_912_000 + i * 43_200, 1_000_000 + i * 10_000, None))
            .collect();
        // 7 bytes a reading: 3 for 43,200 s, 3 for 10,000 Wh, 1 for no valley register.
        assert!(
            encode(&night).len() <= 16 + 60 * 7,
            "{}",
            encode(&night).len()
        );
    }

    #[test]
    fn a_damaged_pack_is_refused_not_misread() {
        let rs = vec![
            reading(1_761_912_000, 1_000, Some(7)),
            reading(1_761_912_060, 1_010, None),
        ];
        let good = encode(&rs);
        assert!(decode(&[]).is_none());
        assert!(decode(&[2, 0]).is_none(), "another version");
        for cut in 1..good.len() {
            assert!(decode(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).is_none(), "trailing byte");
        let mut flag = good.clone();
        // The first reading's valley flag sits after its two varints (ts: 5 bytes, e: 2).
        let at = 2 + 5 + 2;
        assert_eq!(flag[at], 1);
        flag[at] = 9;
        assert!(decode(&flag).is_none(), "bad presence byte");
        // A huge count is refused before anything is allocated.
        assert!(decode(&[VERSION, 0xff, 0xff, 0xff, 0x07]).is_none());
    }

    #[test]
    fn packs_written_one_after_another_read_back_in_order() {
        let a: Vec<_> = (0..5).map(|i| reading(1_000 + i, i * 7, Some(i))).collect();
        let b: Vec<_> = (5..9).map(|i| reading(1_000 + i, i * 7, None)).collect();
        let mut joined = encode(&a);
        joined.extend(encode(&[]));
        joined.extend(encode(&b));
        let mut out = Vec::new();
        decode_all_into(&joined, |t| t != 1_002, &mut out).unwrap();
        let want: Vec<_> = a
            .iter()
            .chain(&b)
            .filter(|r| r.ts != 1_002)
            .copied()
            .collect();
        assert_eq!(out, want);
        decode_all_into(&[], |_| true, &mut out).unwrap();
        assert_eq!(out.len(), want.len(), "nothing: no pack");
        // A cut anywhere but between packs is refused, and appends nothing.
        let first = encode(&a).len();
        for cut in 1..joined.len() {
            let mut got = Vec::new();
            let ok = decode_all_into(&joined[..cut], |_| true, &mut got).is_some();
            assert_eq!(ok, cut == first || cut == first + 2, "cut at {cut}");
            if !ok {
                assert!(got.is_empty(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn decoding_keeps_what_is_asked_and_nothing_of_a_damaged_pack() {
        let rs: Vec<_> = (0..10).map(|i| reading(1_000 + i, i * 7, None)).collect();
        let good = encode(&rs);
        let mut out = vec![reading(1, 1, None)];
        decode_all_into(&good, |t| t > 1_003 && t < 1_007, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|r| r.ts).collect::<Vec<_>>(),
            [1, 1_004, 1_005, 1_006]
        );
        decode_all_into(&good[..good.len() - 1], |_| true, &mut out)
            .ok_or(())
            .unwrap_err();
        assert_eq!(out.len(), 4, "a damaged pack appends nothing");
    }

    #[test]
    fn chunks_and_the_horizon_line_up() {
        assert_eq!(chunk_of(0), 0);
        assert_eq!(chunk_of(CHUNK_S - 1), 0);
        assert_eq!(chunk_of(CHUNK_S), 1);
        assert_eq!(chunk_of(-1), -1);
        let now = 1_775_102_400;
        let h = horizon_at(now);
        assert_eq!(h % 86_400, 0);
        assert!(h <= now - GRACE_S && now - GRACE_S < h + 86_400);
    }
}
