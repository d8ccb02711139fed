//! Computed nights, stored one row per (household, season): the figures of a season's
//! nights packed as one varint blob, and the rare explanation (readings set aside) apart.
//!
//! Why packed: a season has 152 nights, and a row per night made writing them most of a
//! whole-season recompute (15 million rows for 100,000 households). Invariant: a pair's
//! blob lists each night once, in night order; `night_details` holds only non-empty details.

use std::collections::HashMap;

use qingnuan_shared::calendar::Night;
use sqlx::{Any, Row, Transaction};
use time::Date;

use super::sql::QueryBuilder;
use super::{Backend, NightRow, StoreError};
use crate::varint::{Reader, Writer};

/// Format version, the blob's first byte.
const VERSION: u8 = 1;

/// Quality codes; anything else is written out after [`OTHER`].
const QUALITIES: [&str; 3] = ["actual", "estimated", "missing"];
const OTHER: u8 = 0xff;

/// Ids per `IN (…)` list: far below SQLite's and PostgreSQL's bind limits.
const IDS: usize = 500;

/// Appends the figures of one night, everything its record holds after the day: the
/// paid Wh, the quality and the flag names.
pub(super) fn write_body<'f>(
    w: &mut Writer,
    wh: i64,
    quality: &str,
    flags: impl ExactSizeIterator<Item = &'f str>,
) {
    w.int(wh);
    match QUALITIES.iter().zip(0u8..).find(|(q, _)| **q == quality) {
        Some((_, i)) => w.0.push(i),
        None => {
            w.0.push(OTHER);
            w.bytes(quality.as_bytes());
        }
    }
    w.uint(flags.len() as u64);
    for f in flags {
        w.bytes(f.as_bytes());
    }
}

/// The blob of one pair from its `count` nights' records, `(julian day, body)` in night
/// order, each body as [`write_body`] wrote it.
pub(super) fn assemble<'b>(
    count: usize,
    records: impl Iterator<Item = (i32, &'b [u8])>,
) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(8 + count * 7));
    w.0.push(VERSION);
    w.uint(count as u64);
    let mut prev = 0i64;
    for (day, body) in records {
        w.int(i64::from(day) - prev);
        prev = i64::from(day);
        w.0.extend_from_slice(body);
    }
    w.0
}

/// The records of a blob, `(julian day, body)` in night order, the bodies borrowed from
/// it; `None` when it is not a well-formed blob. An empty slice is a pair with no blob.
pub(super) fn records(bytes: &[u8]) -> Option<Vec<(i32, &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader(bytes);
    if r.byte()? != VERSION {
        return None;
    }
    let count = r.len()?;
    let mut out = Vec::with_capacity(count.min(1024));
    let mut day = 0i64;
    for _ in 0..count {
        day = day.checked_add(r.int()?)?;
        let day = i32::try_from(day).ok()?;
        Date::from_julian_day(day).ok()?;
        let body = r.0;
        read_body(&mut r)?;
        let used = body.len() - r.0.len();
        out.push((day, body.get(..used)?));
    }
    r.is_empty().then_some(out)
}

/// Reads one body written by [`write_body`]: `(wh, quality, flags)`.
fn read_body<'b>(r: &mut Reader<'b>) -> Option<(i64, &'b str, Vec<&'b str>)> {
    let wh = r.int()?;
    let quality = match r.byte()? {
        OTHER => std::str::from_utf8(r.bytes()?).ok()?,
        i => QUALITIES.get(usize::from(i))?,
    };
    let n_flags = r.len()?;
    let mut flags = Vec::with_capacity(n_flags.min(16));
    for _ in 0..n_flags {
        flags.push(std::str::from_utf8(r.bytes()?).ok()?);
    }
    Some((wh, quality, flags))
}

/// The julian day of a `YYYY-MM-DD` night name.
pub(super) fn day_of(night: &str) -> Result<i32, StoreError> {
    night
        .parse::<Night>()
        .map(|n| n.0.to_julian_day())
        .map_err(|_| StoreError::Corrupt("nights.night"))
}

/// The `YYYY-MM-DD` name of a julian day (a day [`records`] accepted).
pub(super) fn name_of(day: i32) -> String {
    Date::from_julian_day(day)
        .map(|d| Night(d).to_string())
        .unwrap_or_default()
}

/// Packs `nights` (any order; each night once) as the blob of one pair; the details
/// are not in it. Fails on a night that is not a `YYYY-MM-DD` date.
pub(super) fn pack(nights: &[&NightRow]) -> Result<Vec<u8>, StoreError> {
    let mut w = Writer(Vec::with_capacity(nights.len() * 7));
    let mut bodies = Vec::with_capacity(nights.len());
    for n in nights {
        let start = w.0.len();
        write_body(&mut w, n.wh, &n.quality, n.flags.iter().map(String::as_str));
        bodies.push((day_of(&n.night)?, start..w.0.len()));
    }
    bodies.sort_by_key(|(d, _)| *d);
    Ok(assemble(
        bodies.len(),
        bodies
            .into_iter()
            .map(|(d, r)| (d, w.0.get(r).unwrap_or_default())),
    ))
}

/// The nights of a blob written by [`pack`], in night order, with empty details.
pub(super) fn unpack(bytes: &[u8]) -> Result<Vec<NightRow>, StoreError> {
    unpack_checked(bytes).ok_or(StoreError::Corrupt("season_nights"))
}

fn unpack_checked(bytes: &[u8]) -> Option<Vec<NightRow>> {
    if bytes.is_empty() {
        return None;
    }
    records(bytes)?
        .into_iter()
        .map(|(day, body)| {
            let (wh, quality, flags) = read_body(&mut Reader(body))?;
            Some(NightRow {
                night: name_of(day),
                wh,
                quality: quality.to_string(),
                flags: flags.into_iter().map(String::from).collect(),
                detail: String::new(),
            })
        })
        .collect()
}

/// A pair's nights as stored: the blob (empty: none) and the details by night name.
#[derive(Debug, Default)]
pub(super) struct StoredNights {
    /// The `season_nights` blob.
    pub packed: Vec<u8>,
    /// `(night, detail)` of the nights with a detail.
    pub details: Vec<(String, String)>,
}

/// The stored nights of `households` in `season`, as stored, by household (a household
/// with details but no blob is left out).
pub(super) async fn load_stored(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    season: &str,
    households: &[&str],
) -> Result<HashMap<String, StoredNights>, StoreError> {
    let mut out: HashMap<String, StoredNights> = HashMap::new();
    for ids in households.chunks(IDS) {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "SELECT household, packed FROM season_nights WHERE season = ",
        );
        qb.push_bind(season).push(" AND household IN ");
        qb.push_tuples(ids, |mut b, id| {
            b.push_bind(*id);
        });
        for r in qb.build().fetch_all(&mut *conn).await? {
            let packed: Vec<u8> = r.get(1);
            if packed.is_empty() {
                return Err(StoreError::Corrupt("season_nights"));
            }
            out.insert(
                r.get(0),
                StoredNights {
                    packed,
                    details: Vec::new(),
                },
            );
        }
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "SELECT household, night, detail FROM night_details WHERE season = ",
        );
        qb.push_bind(season).push(" AND household IN ");
        qb.push_tuples(ids, |mut b, id| {
            b.push_bind(*id);
        });
        for r in qb.build().fetch_all(&mut *conn).await? {
            if let Some(p) = out.get_mut(r.get::<&str, _>(0)) {
                p.details.push((r.get(1), r.get(2)));
            }
        }
    }
    Ok(out)
}

/// The stored nights of `households` in `season`, details included, by household.
pub(super) async fn load(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    season: &str,
    households: &[&str],
) -> Result<HashMap<String, Vec<NightRow>>, StoreError> {
    let mut out = HashMap::new();
    for (hh, stored) in load_stored(conn, backend, season, households).await? {
        let mut nights = unpack(&stored.packed)?;
        for (night, detail) in stored.details {
            if let Some(n) = nights.iter_mut().find(|n| n.night == night) {
                n.detail = detail;
            }
        }
        out.insert(hh, nights);
    }
    Ok(out)
}

/// Which seasons [`load_seasons`] reads.
pub(super) enum Seasons<'a> {
    /// One season, by name.
    Named(&'a str),
    /// Every season whose first year is from the first to the second, inclusive.
    FirstYears(i32, i32),
}

/// Every stored night of every pair of `seasons`, details included:
/// (household, season, night), in no particular order.
pub(super) async fn load_seasons(
    conn: &mut sqlx::AnyConnection,
    seasons: Seasons<'_>,
) -> Result<Vec<(String, String, NightRow)>, StoreError> {
    // Season names are `YYYY-YYYY` (CONTRACT.md): a range of first years is a range of names.
    let (lo, hi, cond) = match seasons {
        Seasons::Named(s) => (s.to_string(), String::new(), "season = $1 AND $2 = ''"),
        Seasons::FirstYears(a, b) => (
            format!("{a:04}"),
            format!("{:04}", b.saturating_add(1)),
            "season >= $1 AND season < $2",
        ),
    };
    let mut details: HashMap<(String, String), String> = HashMap::new();
    for r in sqlx::query(&format!(
        "SELECT household, night, detail FROM night_details WHERE {cond}"
    ))
    .bind(&lo)
    .bind(&hi)
    .fetch_all(&mut *conn)
    .await?
    {
        details.insert((r.get(0), r.get(1)), r.get(2));
    }
    let mut out = Vec::new();
    for r in sqlx::query(&format!(
        "SELECT household, season, packed FROM season_nights WHERE {cond}"
    ))
    .bind(&lo)
    .bind(&hi)
    .fetch_all(&mut *conn)
    .await?
    {
        let (hh, season): (String, String) = (r.get(0), r.get(1));
        for mut n in unpack(r.get::<&[u8], _>(2))? {
            if let Some(d) = details.remove(&(hh.clone(), n.night.clone())) {
                n.detail = d;
            }
            out.push((hh.clone(), season.clone(), n));
        }
    }
    Ok(out)
}

/// One pair's nights to store, whole: they replace whatever the pair had.
pub(super) struct PairNights<'a> {
    /// Household id.
    pub household: &'a str,
    /// Season name.
    pub season: &'a str,
    /// Every night of the pair, each once, as one blob ([`assemble`], [`pack`]).
    pub packed: Vec<u8>,
    /// `(night, detail)` of the nights with a detail.
    pub details: Vec<(String, &'a str)>,
}

impl<'a> PairNights<'a> {
    /// The pair's `nights` (any order, each once), packed, with their details.
    pub fn of(
        household: &'a str,
        season: &'a str,
        nights: &'a [NightRow],
    ) -> Result<Self, StoreError> {
        Ok(Self {
            household,
            season,
            packed: pack(&nights.iter().collect::<Vec<_>>())?,
            details: nights
                .iter()
                .filter(|n| !n.detail.is_empty())
                .map(|n| (n.night.clone(), n.detail.as_str()))
                .collect(),
        })
    }
}

/// Replaces the stored nights (figures and details) of each pair with its `nights`.
pub(super) async fn save(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    pairs: &[PairNights<'_>],
) -> Result<(), StoreError> {
    for chunk in pairs.chunks(IDS / 2) {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "INSERT INTO season_nights (household, season, packed) ",
        );
        qb.push_values(chunk, |mut b, p| {
            b.push_bind(p.household)
                .push_bind(p.season)
                .push_bind(p.packed.as_slice());
        });
        qb.push(" ON CONFLICT (household, season) DO UPDATE SET packed = excluded.packed");
        qb.build().execute(&mut **tx).await?;
        // Details: the rare nights with readings set aside. Those of the pairs go, and
        // the new ones come.
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            backend,
            "DELETE FROM night_details WHERE (household, season) IN (",
        );
        qb.push_values(chunk, |mut b, p| {
            b.push_bind(p.household).push_bind(p.season);
        });
        qb.push(")");
        qb.build().execute(&mut **tx).await?;
        let details: Vec<(&str, &str, &str, &str)> = chunk
            .iter()
            .flat_map(|p| {
                p.details
                    .iter()
                    .map(|(night, detail)| (p.household, night.as_str(), p.season, *detail))
            })
            .collect();
        for rows in details.chunks(IDS / 4) {
            let mut qb: QueryBuilder<'_> = QueryBuilder::new(
                backend,
                "INSERT INTO night_details (household, night, season, detail) ",
            );
            qb.push_values(rows, |mut b, (hh, night, season, detail)| {
                b.push_bind(*hh)
                    .push_bind(*night)
                    .push_bind(*season)
                    .push_bind(*detail);
            });
            qb.build().execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Moves nights stored a row each (before migration 0009, in `nights_legacy`) into the
/// packed form, within `tx`; returns how many moved (0 once they are moved).
pub(super) async fn convert_legacy(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
) -> Result<u64, StoreError> {
    let rows = sqlx::query(
        "SELECT household, season, night, wh, quality, flags, detail FROM nights_legacy
         ORDER BY household, season, night",
    )
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut by_pair: Vec<((String, String), Vec<NightRow>)> = Vec::new();
    for r in &rows {
        let key: (String, String) = (r.get(0), r.get(1));
        let flags: Vec<String> = serde_json::from_str(r.get::<&str, _>(5))
            .map_err(|_| StoreError::Corrupt("nights.flags"))?;
        let night = NightRow {
            night: r.get(2),
            wh: r.get(3),
            quality: r.get(4),
            flags,
            detail: r.get(6),
        };
        match by_pair.last_mut() {
            Some((k, ns)) if *k == key => ns.push(night),
            _ => by_pair.push((key, vec![night])),
        }
    }
    let pairs = by_pair
        .iter()
        .map(|((hh, season), ns)| PairNights::of(hh, season, ns))
        .collect::<Result<Vec<_>, _>>()?;
    save(tx, backend, &pairs).await?;
    sqlx::query("DELETE FROM nights_legacy")
        .execute(&mut **tx)
        .await?;
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn night(night: &str, wh: i64, quality: &str, flags: &[&str]) -> NightRow {
        NightRow {
            night: night.into(),
            wh,
            quality: quality.into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            detail: "{\"ignored\":1}".into(),
        }
    }

    #[test]
    fn a_pair_reads_back_in_night_order_without_details() {
        let nights = [
            night("2026-01-02", 23_456, "estimated", &["tou_mismatch"]),
            night("2025-10-31", 0, "missing", &[]),
            night(
                "2025-11-01",
                -7,
                "actual",
                &["reading_conflict", "spike_rejected"],
            ),
            night("2026-03-31", i64::MAX, "provisional", &[]),
        ];
        let bytes = pack(&nights.iter().collect::<Vec<_>>()).unwrap();
        let got = unpack(&bytes).unwrap();
        let mut want: Vec<NightRow> = nights
            .iter()
            .cloned()
            .map(|n| NightRow {
                detail: String::new(),
                ..n
            })
            .collect();
        want.sort_by(|a, b| a.night.cmp(&b.night));
        assert_eq!(got, want);
        // Compact: a plain night takes a few bytes.
        let plain: Vec<NightRow> = (1..=28)
            .map(|d| night(&format!("2025-11-{d:02}"), 25_000, "actual", &[]))
            .collect();
        let bytes = pack(&plain.iter().collect::<Vec<_>>()).unwrap();
        assert!(bytes.len() <= 4 + 3 + 28 * 6, "{} bytes", bytes.len());
        assert_eq!(unpack(&pack(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn a_bad_blob_or_night_is_an_error_not_a_panic() {
        let bytes = pack(&[&night("2025-11-01", 1, "actual", &["x"])]).unwrap();
        for cut in 0..bytes.len() {
            assert!(unpack(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(unpack(&longer).is_err());
        let mut other = bytes;
        other[0] = 2;
        assert!(unpack(&other).is_err());
        assert!(pack(&[&night("2025-13-01", 1, "actual", &[])]).is_err());
        for seed in 0u64..2000 {
            let junk: Vec<u8> = (0..(seed % 40))
                .map(|i| {
                    seed.wrapping_mul(6364136223846793005)
                        .wrapping_add(i.wrapping_mul(1442695040888963407))
                        .to_le_bytes()[4]
                })
                .collect();
            let _ = unpack(&junk);
        }
    }
}
