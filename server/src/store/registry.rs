//! Registry tables: households, meters with validity intervals, gateways, and the
//! audit log of every change an import makes.

use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use super::{Store, StoreError};

/// A household as the registry CSV describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HouseholdRow {
    /// Household id.
    pub id: String,
    /// 区
    pub district: String,
    /// 镇/乡
    pub town: String,
    /// 村
    pub village: String,
    /// Heated area, m², as written (a decimal number).
    pub heating_area_m2: String,
    /// Heating device kind, e.g. `air_source_heat_pump`.
    pub device: String,
    /// Physical limit of the household's draw, W; `None`: the policy's default.
    pub max_power_w: Option<i64>,
}

/// One meter of one household over its validity interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterRow {
    /// Household id.
    pub household: String,
    /// Meter id.
    pub meter: String,
    /// Installed at, UTC Unix seconds.
    pub valid_from: i64,
    /// Removed at, UTC Unix seconds; `None`: still installed.
    pub valid_to: Option<i64>,
    /// The gateway that reads it.
    pub gateway: String,
}

/// What ingest needs to know about a meter: who reads it and for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Meter id.
    pub meter: String,
    /// Gateway id.
    pub gateway: String,
    /// Household id.
    pub household: String,
    /// Installed at, UTC Unix seconds.
    pub valid_from: i64,
    /// Removed at, UTC Unix seconds.
    pub valid_to: Option<i64>,
}

/// What an import changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// New households.
    pub households_added: u64,
    /// Households whose fields changed.
    pub households_updated: u64,
    /// New (household, meter) rows.
    pub meters_added: u64,
    /// (household, meter) rows whose interval or gateway changed.
    pub meters_updated: u64,
    /// New gateways.
    pub gateways_added: u64,
    /// Rows that changed nothing.
    pub unchanged: u64,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// When, UTC Unix seconds.
    pub at: i64,
    /// Who (`cli`, `api`).
    pub source: String,
    /// `household`, `meter` or `gateway`.
    pub entity: String,
    /// Its key.
    pub entity_key: String,
    /// `insert` or `update`.
    pub action: String,
    /// JSON before (updates).
    pub before_json: Option<String>,
    /// JSON after.
    pub after_json: String,
}

impl Store {
    /// Inserts or updates households and meters (keyed by id and by (household, meter)),
    /// adds their gateways, writes the audit log, and marks the `dirty` pairs of every
    /// household that changed. One transaction: all or nothing.
    pub async fn upsert_registry(
        &self,
        households: &[HouseholdRow],
        meters: &[MeterRow],
        dirty: &[(String, String)],
        source: &str,
        now: i64,
    ) -> Result<ImportSummary, StoreError> {
        // Reads, then writes: SQLite's IMMEDIATE, PostgreSQL's import lock.
        let mut tx = self.begin_write(super::WriteLock::Registry).await?;
        let mut sum = ImportSummary::default();
        // Readings before the settled cut were thinned under the registry as it stands:
        // a change that reaches before it could not be computed as the rules say.
        let cut = super::settle::cut_in(&mut tx, self.backend).await?;
        let mut changed = std::collections::BTreeSet::new();
        for h in households {
            let old = sqlx::query(
                "SELECT district, town, village, heating_area_m2, device, max_power_w FROM households WHERE id = $1",
            )
            .bind(&h.id)
            .fetch_optional(&mut *tx)
            .await?;
            let old = old.map(|r| HouseholdRow {
                id: h.id.clone(),
                district: r.get(0),
                town: r.get(1),
                village: r.get(2),
                heating_area_m2: r.get(3),
                device: r.get(4),
                max_power_w: r.get(5),
            });
            if old.as_ref() == Some(h) {
                sum.unchanged += 1;
                continue;
            }
            if let (Some(cut), Some(o)) = (cut, &old) {
                if o.max_power_w != h.max_power_w {
                    let settled: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM meters WHERE household = $1 AND valid_from < $2",
                    )
                    .bind(&h.id)
                    .bind(cut)
                    .fetch_one(&mut *tx)
                    .await?;
                    if let Some((column, why)) =
                        settled_power_refusal(o.max_power_w, h.max_power_w, settled > 0, cut)
                    {
                        return Err(StoreError::Settled(format!(
                            "household {}: column {column}: {why}",
                            h.id
                        )));
                    }
                }
            }
            sqlx::query(
                "INSERT INTO households (id, district, town, village, heating_area_m2, device, max_power_w)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET district = excluded.district, town = excluded.town,
                   village = excluded.village, heating_area_m2 = excluded.heating_area_m2,
                   device = excluded.device, max_power_w = excluded.max_power_w",
            )
            .bind(&h.id)
            .bind(&h.district)
            .bind(&h.town)
            .bind(&h.village)
            .bind(&h.heating_area_m2)
            .bind(&h.device)
            .bind(h.max_power_w)
            .execute(&mut *tx)
            .await?;
            if old.is_some() {
                sum.households_updated += 1;
            } else {
                sum.households_added += 1;
            }
            audit(&mut tx, now, source, "household", &h.id, old.as_ref(), h).await?;
            changed.insert(h.id.clone());
        }
        for m in meters {
            let old = sqlx::query("SELECT valid_from, valid_to, gateway FROM meters WHERE household = $1 AND meter = $2")
                .bind(&m.household)
                .bind(&m.meter)
                .fetch_optional(&mut *tx)
                .await?;
            let old = old.map(|r| MeterRow {
                household: m.household.clone(),
                meter: m.meter.clone(),
                valid_from: r.get(0),
                valid_to: r.get(1),
                gateway: r.get(2),
            });
            let gw =
                sqlx::query("INSERT INTO gateways (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
                    .bind(&m.gateway)
                    .execute(&mut *tx)
                    .await?;
            if gw.rows_affected() > 0 {
                sum.gateways_added += 1;
                let after = serde_json::json!({ "id": m.gateway });
                audit(
                    &mut tx,
                    now,
                    source,
                    "gateway",
                    &m.gateway,
                    None::<&()>,
                    &after,
                )
                .await?;
            }
            if old.as_ref() == Some(m) {
                sum.unchanged += 1;
                continue;
            }
            if let Some((column, why)) = cut.and_then(|c| settled_refusal(old.as_ref(), m, c)) {
                return Err(StoreError::Settled(format!(
                    "meter {} of household {}: column {column}: {why}",
                    m.meter, m.household
                )));
            }
            sqlx::query(
                "INSERT INTO meters (household, meter, valid_from, valid_to, gateway) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (household, meter) DO UPDATE SET valid_from = excluded.valid_from,
                   valid_to = excluded.valid_to, gateway = excluded.gateway",
            )
            .bind(&m.household)
            .bind(&m.meter)
            .bind(m.valid_from)
            .bind(m.valid_to)
            .bind(&m.gateway)
            .execute(&mut *tx)
            .await?;
            if old.is_some() {
                sum.meters_updated += 1;
            } else {
                sum.meters_added += 1;
            }
            let key = format!("{}/{}", m.household, m.meter);
            audit(&mut tx, now, source, "meter", &key, old.as_ref(), m).await?;
            changed.insert(m.household.clone());
        }
        for (hh, season) in dirty.iter().filter(|(hh, _)| changed.contains(hh)) {
            super::results::mark_dirty(&mut tx, hh, season).await?;
        }
        if !changed.is_empty() || sum.gateways_added > 0 {
            sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'registry_version'")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(sum)
    }

    /// Grows with every registry change: ingest reloads its bindings when it moves.
    pub async fn registry_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'registry_version'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Every meter binding (ingest keeps them in memory).
    pub async fn bindings(&self) -> Result<Vec<Binding>, StoreError> {
        let rows =
            sqlx::query("SELECT meter, gateway, household, valid_from, valid_to FROM meters")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| Binding {
                meter: r.get(0),
                gateway: r.get(1),
                household: r.get(2),
                valid_from: r.get(3),
                valid_to: r.get(4),
            })
            .collect())
    }

    /// Every gateway id in the registry.
    pub async fn gateway_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM gateways")
            .fetch_all(&self.pool)
            .await?)
    }

    /// One household.
    pub async fn household(&self, id: &str) -> Result<Option<HouseholdRow>, StoreError> {
        let r = sqlx::query(
            "SELECT id, district, town, village, heating_area_m2, device, max_power_w FROM households WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(|r| HouseholdRow {
            id: r.get(0),
            district: r.get(1),
            town: r.get(2),
            village: r.get(3),
            heating_area_m2: r.get(4),
            device: r.get(5),
            max_power_w: r.get(6),
        }))
    }

    /// The meters of a household, oldest installation first.
    pub async fn meters_of(&self, household: &str) -> Result<Vec<MeterRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT household, meter, valid_from, valid_to, gateway FROM meters WHERE household = $1 ORDER BY valid_from, meter",
        )
        .bind(household)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| MeterRow {
                household: r.get(0),
                meter: r.get(1),
                valid_from: r.get(2),
                valid_to: r.get(3),
                gateway: r.get(4),
            })
            .collect())
    }

    /// Every household's registered `max_power_w` (W; `None`: the policy's default), by id.
    pub async fn household_powers(
        &self,
    ) -> Result<std::collections::HashMap<String, Option<i64>>, StoreError> {
        let rows = sqlx::query("SELECT id, max_power_w FROM households")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every household id, sorted.
    pub async fn household_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM households ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// The audit log, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, source, entity, entity_key, action, before_json, after_json FROM audit_log ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                source: r.get(1),
                entity: r.get(2),
                entity_key: r.get(3),
                action: r.get(4),
                before_json: r.get(5),
                after_json: r.get(6),
            })
            .collect())
    }
}

/// Why a meter row `m` (stored as `old`) may not be imported once readings before the
/// settled cut `cut` were thinned: `(CSV column, reason)`. Refused: a new row valid from
/// before the cut, a `meter_from` / `meter_to` moved where the old or the new value is
/// before it. A change of gateway only, or a removal after the cut, passes.
pub fn settled_refusal(
    old: Option<&MeterRow>,
    m: &MeterRow,
    cut: i64,
) -> Option<(&'static str, String)> {
    let before = |t: Option<i64>| t.is_some_and(|t| t < cut);
    let why = |from: String, to: String| {
        format!("{from} -> {to} reaches before the settled cut {cut}, where readings were thinned (docs/bounded-state.md)")
    };
    match old {
        None if m.valid_from < cut => {
            Some(("meter_from", why("new".into(), m.valid_from.to_string())))
        }
        Some(o) if o.valid_from != m.valid_from && o.valid_from.min(m.valid_from) < cut => Some((
            "meter_from",
            why(o.valid_from.to_string(), m.valid_from.to_string()),
        )),
        Some(o) if o.valid_to != m.valid_to && (before(o.valid_to) || before(m.valid_to)) => {
            Some((
                "meter_to",
                why(format!("{:?}", o.valid_to), format!("{:?}", m.valid_to)),
            ))
        }
        _ => None,
    }
}

/// Why a household's `max_power_w` may not change from `old` to `new` once readings
/// before the settled cut `cut` were thinned (`settled`: one of its meters is valid from
/// before the cut): it changes how every reading is judged.
pub fn settled_power_refusal(
    old: Option<i64>,
    new: Option<i64>,
    settled: bool,
    cut: i64,
) -> Option<(&'static str, String)> {
    (old != new && settled).then(|| {
        (
            "max_power_w",
            format!("{old:?} -> {new:?} changes how every reading is judged, and this household's readings before the settled cut {cut} were thinned (docs/bounded-state.md)"),
        )
    })
}

async fn audit<B: Serialize, A: Serialize>(
    tx: &mut Transaction<'_, Any>,
    now: i64,
    source: &str,
    entity: &str,
    key: &str,
    before: Option<&B>,
    after: &A,
) -> Result<(), StoreError> {
    let before = before.map(|b| serde_json::to_string(b).unwrap_or_default());
    let after = serde_json::to_string(after).unwrap_or_default();
    sqlx::query(
        "INSERT INTO audit_log (at, source, entity, entity_key, action, before_json, after_json) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now)
    .bind(source)
    .bind(entity)
    .bind(key)
    .bind(if before.is_some() { "update" } else { "insert" })
    .bind(before)
    .bind(after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
