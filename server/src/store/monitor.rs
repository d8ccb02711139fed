//! Monitoring tables (`migrations/*/0002_monitor.sql`): gateway and meter state as JSON of
//! the monitor's types, and alarms with their lifecycle. The partial unique index on
//! open alarms makes "one open alarm per key" hold even if two writers race.
//!
//! Invariant: an alarm row is never deleted; clearing sets `cleared`.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use super::sql::QueryBuilder;

use super::{Backend, Store, StoreError};
use crate::monitor::{Changes, GatewayState, MeterState, MonitorFold};

/// One alarm as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmRow {
    /// Row id.
    pub id: i64,
    /// Dedup key (`kind:subject[:season]`).
    pub key: String,
    /// Kind (snake_case).
    pub kind: String,
    /// Household id.
    pub household: Option<String>,
    /// Meter id.
    pub meter: Option<String>,
    /// Gateway id.
    pub gateway: Option<String>,
    /// 区
    pub district: Option<String>,
    /// 村
    pub village: Option<String>,
    /// Why, with the figures.
    pub reason: String,
    /// Opened at, UTC Unix seconds (server clock).
    pub opened: i64,
    /// Last raised with new figures at, UTC Unix seconds.
    pub updated: i64,
    /// Cleared at, UTC Unix seconds; `None` while open.
    pub cleared: Option<i64>,
}

/// Which alarms to list; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmFilter {
    /// `Some(true)` open only, `Some(false)` cleared only.
    pub open: Option<bool>,
    /// Kind (snake_case).
    pub kind: Option<String>,
    /// 区
    pub district: Option<String>,
    /// 村
    pub village: Option<String>,
    /// Gateway id.
    pub gateway: Option<String>,
    /// Household id.
    pub household: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// A household with its place and device (the registry as monitoring needs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedHousehold {
    /// Household id.
    pub id: String,
    /// 区
    pub district: String,
    /// 镇/乡
    pub town: String,
    /// 村
    pub village: String,
    /// Device kind.
    pub device: String,
}

/// Rows per statement when folding (4 values each).
const FOLD_CHUNK: usize = 200;

/// Folds `fold` into the stored states inside `tx`: creates the rows it names that do
/// not exist yet, locks them (PostgreSQL: `FOR UPDATE`, in byte order, so concurrent
/// folds never deadlock on them and never overwrite each other), reads, applies, writes.
/// A row that does not parse is logged and starts again from the default: monitoring
/// state must never hold back the readings that pay.
pub(super) async fn fold_in(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    fold: &MonitorFold<'_>,
) -> Result<(), StoreError> {
    if fold.is_empty() {
        return Ok(());
    }
    let lock = if backend == Backend::Postgres {
        " ORDER BY 1 FOR UPDATE"
    } else {
        " ORDER BY 1"
    };
    let gw_ids = fold.gateway_ids();
    let meter_ids = fold.meter_ids();
    let fresh_gw =
        serde_json::to_string(&GatewayState::default()).map_err(corrupt("monitor_gateways"))?;
    let fresh_meter =
        serde_json::to_string(&MeterState::default()).map_err(corrupt("monitor_meters"))?;
    let mut gateways: BTreeMap<String, GatewayState> = BTreeMap::new();
    for chunk in gw_ids.chunks(FOLD_CHUNK) {
        let mut qb = QueryBuilder::new(
            backend,
            "INSERT INTO monitor_gateways (id, state_json, updated) ",
        );
        qb.push_values(chunk, |mut b, id| {
            b.push_bind(id.to_string())
                .push_bind(fresh_gw.clone())
                .push_bind(fold.received());
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
        let mut qb = QueryBuilder::new(
            backend,
            "SELECT id, state_json FROM monitor_gateways WHERE id IN ",
        );
        qb.push_tuples(chunk, |mut b, id| {
            b.push_bind(id.to_string());
        });
        qb.push(lock);
        for r in qb.build().fetch_all(&mut **tx).await? {
            let id: String = r.get(0);
            let state = serde_json::from_str(r.get::<&str, _>(1)).unwrap_or_else(|e| {
                tracing::warn!(gateway = %id, error = %e, "stored gateway state unreadable; starting afresh");
                GatewayState::default()
            });
            gateways.insert(id, state);
        }
    }
    let mut meters: BTreeMap<String, (String, MeterState)> = BTreeMap::new();
    for chunk in meter_ids.chunks(FOLD_CHUNK) {
        let mut qb = QueryBuilder::new(
            backend,
            "INSERT INTO monitor_meters (meter, gateway, state_json, updated) ",
        );
        qb.push_values(chunk, |mut b, (meter, gw)| {
            b.push_bind(meter.to_string())
                .push_bind(gw.to_string())
                .push_bind(fresh_meter.clone())
                .push_bind(fold.received());
        });
        qb.push(" ON CONFLICT (meter) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
        let mut qb = QueryBuilder::new(
            backend,
            "SELECT meter, gateway, state_json FROM monitor_meters WHERE meter IN ",
        );
        qb.push_tuples(chunk, |mut b, (meter, _)| {
            b.push_bind(meter.to_string());
        });
        qb.push(lock);
        for r in qb.build().fetch_all(&mut **tx).await? {
            let meter: String = r.get(0);
            let state = serde_json::from_str(r.get::<&str, _>(2)).unwrap_or_else(|e| {
                tracing::warn!(meter = %meter, error = %e, "stored meter state unreadable; starting afresh");
                MeterState::default()
            });
            meters.insert(meter, (r.get(1), state));
        }
    }
    fold.apply(&mut gateways, &mut meters);
    let now = fold.received();
    let gateways: Vec<(String, String)> = gateways
        .into_iter()
        .map(|(id, g)| {
            Ok((
                id,
                serde_json::to_string(&g).map_err(corrupt("monitor_gateways"))?,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    for chunk in gateways.chunks(FOLD_CHUNK) {
        let mut qb = QueryBuilder::new(
            backend,
            "INSERT INTO monitor_gateways (id, state_json, updated) ",
        );
        qb.push_values(chunk, |mut b, (id, json)| {
            b.push_bind(id.clone())
                .push_bind(json.clone())
                .push_bind(now);
        });
        qb.push(
            " ON CONFLICT (id) DO UPDATE SET state_json = excluded.state_json, updated = excluded.updated",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let meters: Vec<(String, String, String)> = meters
        .into_iter()
        .map(|(m, (gw, st))| {
            Ok((
                m,
                gw,
                serde_json::to_string(&st).map_err(corrupt("monitor_meters"))?,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    for chunk in meters.chunks(FOLD_CHUNK) {
        let mut qb = QueryBuilder::new(
            backend,
            "INSERT INTO monitor_meters (meter, gateway, state_json, updated) ",
        );
        qb.push_values(chunk, |mut b, (m, gw, json)| {
            b.push_bind(m.clone())
                .push_bind(gw.clone())
                .push_bind(json.clone())
                .push_bind(now);
        });
        qb.push(
            " ON CONFLICT (meter) DO UPDATE SET gateway = excluded.gateway, state_json = excluded.state_json, updated = excluded.updated",
        );
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

fn corrupt<T>(what: &'static str) -> impl FnOnce(T) -> StoreError {
    move |_| StoreError::Corrupt(what)
}

impl Store {
    /// Stored state of the given gateways (all of them when `ids` is `None`).
    pub async fn monitor_gateways(
        &self,
        ids: Option<&[String]>,
    ) -> Result<BTreeMap<String, GatewayState>, StoreError> {
        let mut qb: QueryBuilder<'_> =
            QueryBuilder::new(self.backend, "SELECT id, state_json FROM monitor_gateways");
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(BTreeMap::new());
            }
            qb.push(" WHERE id IN ");
            qb.push_tuples(ids, |mut b, id| {
                b.push_bind(id);
            });
        }
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let state = serde_json::from_str(r.get::<&str, _>(1))
                    .map_err(corrupt("monitor_gateways"))?;
                Ok((r.get::<String, _>(0), state))
            })
            .collect()
    }

    /// Stored state of the given meters (all when `ids` is `None`), with their gateway.
    pub async fn monitor_meters(
        &self,
        ids: Option<&[String]>,
    ) -> Result<BTreeMap<String, (String, MeterState)>, StoreError> {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
            self.backend,
            "SELECT meter, gateway, state_json FROM monitor_meters",
        );
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(BTreeMap::new());
            }
            qb.push(" WHERE meter IN ");
            qb.push_tuples(ids, |mut b, id| {
                b.push_bind(id);
            });
        }
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let state =
                    serde_json::from_str(r.get::<&str, _>(2)).map_err(corrupt("monitor_meters"))?;
                Ok((r.get::<String, _>(0), (r.get::<String, _>(1), state)))
            })
            .collect()
    }

    /// Folds one ingest batch into gateway and meter state in a transaction of its own
    /// (ingest folds inside its commit instead: [`Store::commit_ingest_with`]).
    pub async fn fold_monitor(&self, fold: &MonitorFold<'_>) -> Result<(), StoreError> {
        if fold.is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let done = match fold_in(&mut tx, self.backend, fold).await {
                Ok(()) => tx.commit().await.map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match done {
                Err(e) if attempt < super::ingest::RETRIES && super::ingest::retryable(&e) => {
                    attempt += 1;
                }
                done => return done,
            }
        }
    }
    /// Every household with its place and device, by id.
    pub async fn placed_households(&self) -> Result<Vec<PlacedHousehold>, StoreError> {
        let rows =
            sqlx::query("SELECT id, district, town, village, device FROM households ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| PlacedHousehold {
                id: r.get(0),
                district: r.get(1),
                town: r.get(2),
                village: r.get(3),
                device: r.get(4),
            })
            .collect())
    }

    /// Stored nights of `season` from night `from` on (`YYYY-MM-DD`), as
    /// (household, night, wh, quality, flags JSON, detail JSON), by household and night.
    #[allow(clippy::type_complexity)]
    pub async fn nights_since(
        &self,
        season: &str,
        from: &str,
    ) -> Result<Vec<(String, String, i64, String, String, String)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let nights =
            super::nights::load_seasons(&mut conn, super::nights::Seasons::Named(season)).await?;
        let mut out: Vec<_> = nights
            .into_iter()
            .filter(|(_, _, n)| n.night.as_str() >= from)
            .map(|(hh, _, n)| {
                let flags = super::results::flags_json(&n.flags);
                (hh, n.night, n.wh, n.quality, flags, n.detail)
            })
            .collect();
        out.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    /// Open alarms: key → reason.
    pub async fn open_alarm_reasons(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT alarm_key, reason FROM alarms WHERE cleared IS NULL")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Applies the lifecycle's changes in one transaction: opens (a key already open is
    /// left alone), updates reasons, clears.
    pub async fn apply_alarm_changes(&self, ch: &Changes, now: i64) -> Result<(), StoreError> {
        if ch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for f in &ch.open {
            let s = &f.subject;
            sqlx::query(
                "INSERT INTO alarms (alarm_key, kind, household, meter, gateway, district, village, reason, opened, updated)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(&f.key)
            .bind(f.kind.as_str())
            .bind(&s.household)
            .bind(&s.meter)
            .bind(&s.gateway)
            .bind(&s.district)
            .bind(&s.village)
            .bind(&f.reason)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for f in &ch.update {
            sqlx::query(
                "UPDATE alarms SET reason = $1, updated = $2 WHERE alarm_key = $3 AND cleared IS NULL",
            )
            .bind(&f.reason)
            .bind(now)
            .bind(&f.key)
            .execute(&mut *tx)
            .await?;
        }
        for k in &ch.clear {
            sqlx::query("UPDATE alarms SET cleared = $1 WHERE alarm_key = $2 AND cleared IS NULL")
                .bind(now)
                .bind(k)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Alarms matching `f`, newest first.
    pub async fn alarms(&self, f: &AlarmFilter) -> Result<Vec<AlarmRow>, StoreError> {
        let mut qb: QueryBuilder<'_> = QueryBuilder::new(
                self.backend,
            "SELECT id, alarm_key, kind, household, meter, gateway, district, village, reason, opened, updated, cleared
             FROM alarms WHERE 1 = 1",
        );
        match f.open {
            Some(true) => {
                qb.push(" AND cleared IS NULL");
            }
            Some(false) => {
                qb.push(" AND cleared IS NOT NULL");
            }
            None => {}
        }
        for (col, v) in [
            ("kind", &f.kind),
            ("district", &f.district),
            ("village", &f.village),
            ("gateway", &f.gateway),
            ("household", &f.household),
        ] {
            if let Some(v) = v {
                qb.push(format!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        qb.push(" ORDER BY opened DESC, id DESC LIMIT ")
            .push_bind(f.limit.max(1));
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|r| AlarmRow {
                id: r.get(0),
                key: r.get(1),
                kind: r.get(2),
                household: r.get(3),
                meter: r.get(4),
                gateway: r.get(5),
                district: r.get(6),
                village: r.get(7),
                reason: r.get(8),
                opened: r.get(9),
                updated: r.get(10),
                cleared: r.get(11),
            })
            .collect())
    }

    /// Open alarms per household (alarms that name one).
    pub async fn open_alarm_counts(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT household, COUNT(*) FROM alarms WHERE cleared IS NULL AND household IS NOT NULL GROUP BY household",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
