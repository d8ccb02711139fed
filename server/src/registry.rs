//! Registry import: the CSV of CONTRACT.md (households, meters with validity intervals,
//! gateways) checked row by row, then upserted so that a re-import updates, never duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use qingnuan_shared::calendar::{Calendar, Season};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::{GatewayId, MeterId};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::store::{HouseholdRow, ImportSummary, MeterRow, Store, StoreError};

/// The header of the registry CSV, in the contract's order (any order is accepted).
pub const COLUMNS: [&str; 11] = [
    "household",
    "district",
    "town",
    "village",
    "heating_area_m2",
    "device",
    "meter",
    "meter_from",
    "meter_to",
    "gateway",
    "max_power_w",
];

/// Errors reported at most per import, so a broken file does not flood the answer.
const MAX_ERRORS: usize = 50;

/// One problem in the CSV: its row (1-based line of the file; the header is row 1)
/// and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based row, the header being row 1.
    pub row: u64,
    /// Column name, or `(file)` when the row as a whole is wrong.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "row {}, column {}: {}",
            self.row, self.column, self.message
        )
    }
}

/// Why an import did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The CSV has errors; nothing was imported.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RowError>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A parsed registry file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// One per household id.
    pub households: Vec<HouseholdRow>,
    /// One per (household, meter).
    pub meters: Vec<MeterRow>,
    /// The CSV row each household came from (last one seen), in `households` order.
    pub household_rows: Vec<u64>,
    /// The CSV row of each meter row, in `meters` order.
    pub meter_rows: Vec<u64>,
}

/// Parses and checks a registry CSV (UTF-8, optional BOM). Dates `YYYY-MM-DD` are local
/// midnight under `policy`'s UTC offset; RFC 3339 instants are taken as written.
pub fn parse_csv(data: &[u8], policy: &Policy) -> Result<Registry, ImportError> {
    let data = data.strip_prefix("\u{feff}".as_bytes()).unwrap_or(data);
    let cal = Calendar::new(*policy);
    let mut errors = Vec::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(data);
    let header = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(ImportError::Invalid(vec![csv_error(1, &e)])),
    };
    let mut index = [0usize; COLUMNS.len()];
    for (i, name) in COLUMNS.iter().enumerate() {
        match header.iter().position(|h| h == *name) {
            Some(p) => index[i] = p,
            None => errors.push(RowError {
                row: 1,
                column: (*name).into(),
                message: "missing from the header row".into(),
            }),
        }
    }
    // Bounded: a hostile header of a million columns gets a short answer. The name is
    // cut so that a data row pasted as a header is not echoed back whole.
    for extra in header
        .iter()
        .filter(|h| !COLUMNS.contains(h))
        .take(MAX_ERRORS)
    {
        errors.push(RowError {
            row: 1,
            column: extra.chars().take(40).collect(),
            message: format!("unknown column (expected {})", COLUMNS.join(",")),
        });
    }
    if !errors.is_empty() {
        return Err(ImportError::Invalid(errors));
    }
    let mut households: BTreeMap<String, (u64, HouseholdRow)> = BTreeMap::new();
    let mut meters: BTreeMap<(String, String), (u64, MeterRow)> = BTreeMap::new();
    for rec in rdr.records() {
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let row = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(csv_error(row, &e));
                continue;
            }
        };
        let row = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().all(str::is_empty) {
            continue;
        }
        let mut r = RowReader {
            row,
            errors: &mut errors,
        };
        let field = |i: usize| rec.get(index[i]).unwrap_or("");
        let household = r.check(0, field(0), parse_household_id);
        let district = r.check(1, field(1), non_empty);
        let town = r.check(2, field(2), non_empty);
        let village = r.check(3, field(3), non_empty);
        let area = r.check(4, field(4), parse_area);
        let device = r.check(5, field(5), non_empty);
        let meter = r.check(6, field(6), |s| {
            MeterId::new(s)
                .map(|m| m.to_string())
                .map_err(|e| format!("{s:?} {e}"))
        });
        let from = r.check(7, field(7), |s| parse_instant(s, &cal));
        let to = r.check(8, field(8), |s| {
            if s.is_empty() {
                Ok(None)
            } else {
                parse_instant(s, &cal).map(Some)
            }
        });
        let gateway = r.check(9, field(9), |s| {
            GatewayId::new(s)
                .map(|g| g.to_string())
                .map_err(|e| format!("{s:?} {e}"))
        });
        let max_power = r.check(10, field(10), parse_max_power);
        let (Some(household), Some(district), Some(town), Some(village), Some(area), Some(device)) =
            (household, district, town, village, area, device)
        else {
            continue;
        };
        let h = HouseholdRow {
            id: household.clone(),
            district,
            town,
            village,
            heating_area_m2: area,
            device,
            max_power_w: max_power.flatten(),
        };
        if let Some((first, prev)) = households.get(&household) {
            if let Some(col) = differing_column(prev, &h) {
                r.push(
                    col,
                    format!("differs from row {first} of the same household"),
                );
            }
        } else {
            households.insert(household.clone(), (row, h));
        }
        let (Some(meter), Some(from), Some(to), Some(gateway)) = (meter, from, to, gateway) else {
            continue;
        };
        if to.is_some_and(|to| to <= from) {
            r.push("meter_to", "must be after meter_from".into());
            continue;
        }
        let m = MeterRow {
            household: household.clone(),
            meter: meter.clone(),
            valid_from: from,
            valid_to: to,
            gateway,
        };
        if let Some((first, _)) = meters.get(&(household.clone(), meter.clone())) {
            r.push(
                "meter",
                format!("meter {meter} appears twice for household {household} (also row {first})"),
            );
            continue;
        }
        let clash = meters
            .values()
            .find(|(_, o)| o.meter == m.meter && o.household != m.household && overlaps(o, &m));
        if let Some((first, o)) = clash {
            r.push(
                "meter_from",
                format!(
                    "meter {meter} is installed in household {} at the same time (row {first})",
                    o.household
                ),
            );
            continue;
        }
        meters.insert((household, meter), (row, m));
    }
    if !errors.is_empty() {
        return Err(ImportError::Invalid(errors));
    }
    let (household_rows, households) = households.into_values().unzip();
    let (meter_rows, meters) = meters.into_values().unzip();
    Ok(Registry {
        households,
        meters,
        household_rows,
        meter_rows,
    })
}

/// Parses `data` and upserts it; every (household, season) the registry touches up to
/// `now` is marked for recompute. `source` (`cli`, `api`) goes to the audit log.
pub async fn import(
    store: &Store,
    data: &[u8],
    policy: &Policy,
    source: &str,
    now: i64,
) -> Result<ImportSummary, ImportError> {
    let reg = parse_csv(data, policy)?;
    settled_check(store, &reg).await?;
    let cal = Calendar::new(*policy);
    let mut dirty = BTreeSet::new();
    for m in &reg.meters {
        for s in seasons_touched(&cal, m.valid_from, m.valid_to, now) {
            dirty.insert((m.household.clone(), s.to_string()));
        }
    }
    let dirty: Vec<_> = dirty.into_iter().collect();
    Ok(store
        .upsert_registry(&reg.households, &reg.meters, &dirty, source, now)
        .await?)
}

/// Once readings before the settled cut were thinned, changes that reach before it are
/// refused (docs/bounded-state.md), each named by its CSV row and column. The store checks
/// the same again inside the import's transaction.
async fn settled_check(store: &Store, reg: &Registry) -> Result<(), ImportError> {
    let Some(cut) = store.settled_before().await? else {
        return Ok(());
    };
    // The stored registry in two queries, not a few per CSV row.
    let powers = store.household_powers().await?;
    let mut stored: HashMap<String, Vec<MeterRow>> = HashMap::new();
    for b in store.bindings().await? {
        stored
            .entry(b.household.clone())
            .or_default()
            .push(MeterRow {
                household: b.household,
                meter: b.meter,
                valid_from: b.valid_from,
                valid_to: b.valid_to,
                gateway: b.gateway,
            });
    }
    let meters_of = |h: &str| stored.get(h).map(Vec::as_slice).unwrap_or_default();
    let mut errors = Vec::new();
    for (h, &row) in reg.households.iter().zip(&reg.household_rows) {
        let Some(&old_power) = powers.get(&h.id) else {
            continue;
        };
        let settled = meters_of(&h.id).iter().any(|m| m.valid_from < cut);
        if let Some((column, message)) =
            crate::store::settled_power_refusal(old_power, h.max_power_w, settled, cut)
        {
            errors.push(RowError {
                row,
                column: column.into(),
                message: format!("household {}: {message}", h.id),
            });
        }
    }
    for (m, &row) in reg.meters.iter().zip(&reg.meter_rows) {
        let old = meters_of(&m.household).iter().find(|o| o.meter == m.meter);
        if let Some((column, message)) = crate::store::settled_refusal(old, m, cut) {
            errors.push(RowError {
                row,
                column: column.into(),
                message: format!("meter {} of household {}: {message}", m.meter, m.household),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort_by_key(|e| e.row);
        errors.truncate(MAX_ERRORS);
        Err(ImportError::Invalid(errors))
    }
}

/// Seasons whose span meets `[from, to)` and has started by `now`.
pub fn seasons_touched(cal: &Calendar, from: i64, to: Option<i64>, now: i64) -> Vec<Season> {
    let first = cal.local_date(from).year() - 1;
    let last = cal.local_date(now.max(from)).year();
    (first..=last)
        .map(|y| Season { start_year: y })
        .filter(|&s| {
            let (a, b) = cal.season_span(s);
            a <= now && b > from && to.is_none_or(|to| a < to)
        })
        .collect()
}

fn overlaps(a: &MeterRow, b: &MeterRow) -> bool {
    a.valid_to.is_none_or(|t| b.valid_from < t) && b.valid_to.is_none_or(|t| a.valid_from < t)
}

fn differing_column(a: &HouseholdRow, b: &HouseholdRow) -> Option<&'static str> {
    [
        (a.district != b.district, "district"),
        (a.town != b.town, "town"),
        (a.village != b.village, "village"),
        (a.heating_area_m2 != b.heating_area_m2, "heating_area_m2"),
        (a.device != b.device, "device"),
        (a.max_power_w != b.max_power_w, "max_power_w"),
    ]
    .into_iter()
    .find_map(|(differs, col)| differs.then_some(col))
}

struct RowReader<'a> {
    row: u64,
    errors: &'a mut Vec<RowError>,
}

impl RowReader<'_> {
    fn check<T>(
        &mut self,
        col: usize,
        value: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.push(COLUMNS.get(col).copied().unwrap_or("?"), message);
                None
            }
        }
    }

    fn push(&mut self, column: &str, message: String) {
        self.errors.push(RowError {
            row: self.row,
            column: column.into(),
            message,
        });
    }
}

fn csv_error(row: u64, e: &csv::Error) -> RowError {
    RowError {
        row,
        column: "(file)".into(),
        message: e.to_string(),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("is empty".into())
    } else {
        Ok(s.into())
    }
}

/// Household ids appear in URLs: `[0-9A-Za-z_.:-]{1,64}`.
fn parse_household_id(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(format!(
            "{s:?} is not an id of 1 to 64 characters [0-9A-Za-z_.:-]"
        ));
    }
    Ok(s.into())
}

fn parse_area(s: &str) -> Result<String, String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if digits(int) && digits(frac) {
        Ok(s.into())
    } else {
        Err(format!(
            "{s:?} is not a number of square metres like 120 or 85.5"
        ))
    }
}

fn parse_max_power(s: &str) -> Result<Option<i64>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<i64>() {
        Ok(w) if w > 0 => Ok(Some(w)),
        _ => Err(format!("{s:?} is not a positive whole number of watts")),
    }
}

/// `YYYY-MM-DD` (local midnight) or an RFC 3339 instant, to UTC Unix seconds.
fn parse_instant(s: &str, cal: &Calendar) -> Result<i64, String> {
    if s.is_empty() {
        return Err("is empty (expected YYYY-MM-DD or an RFC 3339 instant)".into());
    }
    if let Ok(d) = Date::parse(s, format_description!("[year]-[month]-[day]")) {
        return Ok(cal.local_midnight(d));
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| format!("{s:?} is neither YYYY-MM-DD nor an RFC 3339 instant like 2025-11-15T14:30:00+08:00"))
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
