//! Monitoring API: gateways, alarms, progress against the plan, and what the dashboard
//! needs beyond them (overview counts, households of a village with their state).
//! Energies are kWh strings with 3 decimals, money yuan strings with 2.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::units::{Fen, Wh};
use serde_json::{json, Value};

use super::{ApiError, App, AppState};
use crate::monitor::progress::{plan_2018, progress, HouseholdFact};
use crate::monitor::{AlarmKind, GatewayState, MeterState, Monitor, MonitorConfig, Snapshot};
use crate::store::monitor::{AlarmFilter, AlarmRow};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/gateways", get(gateways))
        .route("/api/v1/gateways/{id}", get(gateway))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/progress", get(progress_of))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/households", get(households))
        .route("/api/v1/households/{id}/monitor", get(household))
}

type Params = Query<HashMap<String, String>>;

fn monitor(app: &App) -> Monitor {
    // The thresholds are the defaults until `[monitor]` is read from the config.
    Monitor::new(app.store.clone(), app.policy, MonitorConfig::default())
}

fn param<'a>(q: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    q.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

fn kwh(wh: i64) -> String {
    Wh(wh).kwh_string().to_string()
}

fn yuan(fen: i64) -> String {
    Fen(fen).yuan_string().to_string()
}

fn gateway_json(id: &str, g: &GatewayState, snap: &Snapshot, cfg: &MonitorConfig) -> Value {
    let households: Vec<&str> = {
        let mut v: Vec<&str> = snap
            .current_bindings()
            .filter(|b| b.gateway == id)
            .map(|b| b.household.as_str())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let place = households
        .first()
        .and_then(|h| snap.households.iter().find(|x| x.id == *h))
        .map(|h| (h.district.clone(), h.town.clone(), h.village.clone()));
    let state = match g.online {
        None => "unknown",
        Some(_) if g.is_online(snap.now, cfg) => "online",
        Some(_) => "offline",
    };
    json!({
        "id": id,
        "state": state,
        "reported_state": g.online.map(|o| if o { "online" } else { "offline" }),
        "since": g.since,
        "last_seen": g.last_seen,
        "version": g.version,
        "meters_configured": g.meters,
        "spool_records": g.spool_records,
        "spool_dropped": g.spool_dropped,
        "clock_offset_s": g.clock_offset_s,
        "batches": g.batches,
        "district": place.as_ref().map(|p| &p.0),
        "town": place.as_ref().map(|p| &p.1),
        "village": place.as_ref().map(|p| &p.2),
        "households": households,
    })
}

fn meter_json(
    meter: &str,
    household: &str,
    device: &str,
    m: Option<&MeterState>,
    snap: &Snapshot,
    cfg: &MonitorConfig,
) -> Value {
    let d = MeterState::default();
    let m = m.unwrap_or(&d);
    json!({
        "meter": meter,
        "household": household,
        "last_good": m.last_good,
        "last_kwh": m.last_e_wh.map(kwh),
        "p_w": m.last_p_w,
        "running": m.running(device, snap.now, cfg),
        "consecutive_failures": m.consecutive_failures,
        "last_failure": m.last_failure,
        "last_error": m.last_error,
        "errors": m.errors,
        "clock_offset_s": m.clock_offset_s,
    })
}

async fn gateways(State(s): State<AppState>, Query(q): Params) -> Result<Json<Value>, ApiError> {
    let mon = monitor(&s.0);
    let snap = mon.snapshot(s.0.clock.now()).await?;
    let list: Vec<Value> = snap
        .gateways
        .iter()
        .map(|(id, g)| gateway_json(id, g, &snap, mon.config()))
        .filter(|v| {
            ["district", "village", "state"]
                .iter()
                .all(|k| match param(&q, k) {
                    Some(want) => v.get(*k).and_then(Value::as_str) == Some(want),
                    None => true,
                })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn gateway(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mon = monitor(&s.0);
    let snap = mon.snapshot(s.0.clock.now()).await?;
    let g = snap
        .gateways
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("gateway {id} is not in the registry")))?;
    let mut v = gateway_json(&id, g, &snap, mon.config());
    let device_of: BTreeMap<&str, &str> = snap
        .households
        .iter()
        .map(|h| (h.id.as_str(), h.device.as_str()))
        .collect();
    let meters: Vec<Value> = snap
        .current_bindings()
        .filter(|b| b.gateway == id)
        .map(|b| {
            let device = device_of.get(b.household.as_str()).copied().unwrap_or("");
            meter_json(
                &b.meter,
                &b.household,
                device,
                snap.meters.get(&b.meter).map(|x| &x.1),
                &snap,
                mon.config(),
            )
        })
        .collect();
    let open =
        s.0.store
            .alarms(&AlarmFilter {
                open: Some(true),
                gateway: Some(id.clone()),
                limit: 1000,
                ..Default::default()
            })
            .await?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("meters".into(), Value::Array(meters));
        obj.insert(
            "open_alarms".into(),
            Value::Array(open.iter().map(alarm_json).collect()),
        );
    }
    Ok(Json(v))
}

fn alarm_json(a: &AlarmRow) -> Value {
    json!({
        "id": a.id, "key": a.key, "kind": a.kind,
        "state": if a.cleared.is_some() { "cleared" } else { "open" },
        "household": a.household, "meter": a.meter, "gateway": a.gateway,
        "district": a.district, "village": a.village, "reason": a.reason,
        "opened": a.opened, "updated": a.updated, "cleared": a.cleared,
    })
}

async fn alarms(State(s): State<AppState>, Query(q): Params) -> Result<Json<Value>, ApiError> {
    let open = match param(&q, "state") {
        None | Some("open") => Some(true),
        Some("cleared") => Some(false),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "state={other:?}: expected open, cleared or all"
            )))
        }
    };
    if let Some(k) = param(&q, "kind") {
        if AlarmKind::parse(k).is_none() {
            let kinds: Vec<&str> = AlarmKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "kind={k:?}: expected one of {}",
                kinds.join(", ")
            )));
        }
    }
    let limit = match param(&q, "limit") {
        None => 1000,
        Some(l) => l.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("limit={l:?}: expected a positive integer"))
        })?,
    };
    let own = |k: &str| param(&q, k).map(String::from);
    let f = AlarmFilter {
        open,
        kind: own("kind"),
        district: own("district"),
        village: own("village"),
        gateway: own("gateway"),
        household: own("household"),
        limit,
    };
    let rows = s.0.store.alarms(&f).await?;
    Ok(Json(Value::Array(rows.iter().map(alarm_json).collect())))
}

fn facts(snap: &Snapshot, cal: &Calendar, cfg: &MonitorConfig) -> Vec<(HouseholdFact, String)> {
    snap.households
        .iter()
        .map(|h| {
            let (live, running) = snap.household_live_running(h, cal, cfg);
            let f = HouseholdFact {
                district: h.district.clone(),
                town: h.town.clone(),
                village: h.village.clone(),
                live,
                running,
            };
            (f, h.id.clone())
        })
        .collect()
}

async fn progress_of(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mon = monitor(&s.0);
    let snap = mon.snapshot(s.0.clock.now()).await?;
    let facts: Vec<HouseholdFact> = facts(&snap, mon.calendar(), mon.config())
        .into_iter()
        .map(|f| f.0)
        .collect();
    Ok(Json(json!({
        "season": snap.season.to_string(),
        "plan": "京政办发〔2018〕13号 附件1 (task-allocation-2018.csv)",
        "districts": progress(&plan_2018(), &facts),
    })))
}

/// The latest night whose window has closed by `now`, if it belongs to a season.
fn last_closed_night(cal: &Calendar, now: i64) -> Option<Night> {
    let mut n = Night(cal.local_date(now));
    for _ in 0..3 {
        if cal.window(n).1 <= now {
            return cal.season_of_night(n).map(|_| n);
        }
        n = Night(n.0.previous_day()?);
    }
    None
}

async fn overview(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let app = &s.0;
    let mon = monitor(app);
    let (cal, cfg) = (*mon.calendar(), mon.config().clone());
    let now = app.clock.now();
    let snap = mon.snapshot(now).await?;
    let season = snap.season.to_string();
    let online = snap
        .gateways
        .values()
        .filter(|g| g.is_online(now, &cfg))
        .count();
    let never = snap
        .gateways
        .values()
        .filter(|g| g.online.is_none())
        .count();
    let facts = facts(&snap, &cal, &cfg);
    let live = facts.iter().filter(|f| f.0.live).count();
    let running = facts.iter().filter(|f| f.0.running).count();
    let meters_current: Vec<&str> = snap.current_bindings().map(|b| b.meter.as_str()).collect();
    let silent = meters_current
        .iter()
        .filter(|m| {
            snap.meters
                .get(**m)
                .is_some_and(|x| x.1.consecutive_failures >= cfg.meter_silent_reads)
        })
        .count();
    let open = app
        .store
        .alarms(&AlarmFilter {
            open: Some(true),
            limit: i64::MAX,
            ..Default::default()
        })
        .await?;
    let mut by_kind: BTreeMap<&str, u64> = AlarmKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
    for a in &open {
        *by_kind.entry(a.kind.as_str()).or_default() += 1;
    }
    let rate = app.policy.city_fen_per_kwh + app.policy.district_fen_per_kwh;
    let tonight = cal.night_of(now).map(|n| {
        let label = n.to_string();
        let wh: i64 = meters_current.iter().filter_map(|m| snap.meters.get(*m)).map(|x| x.1.night_so_far_wh(&label)).sum();
        json!({"night": label, "kwh": kwh(wh), "subsidy_yuan": yuan(Wh(wh).at_rate(rate).0), "provisional": true})
    });
    let last_night = match last_closed_night(&cal, now) {
        Some(n) => {
            let label = n.to_string();
            let rows = app.store.nights_since(&season, &label).await?;
            let rows: Vec<_> = rows.into_iter().filter(|r| r.1 == label).collect();
            let wh: i64 = rows.iter().map(|r| r.2).sum();
            let q = |name: &str| rows.iter().filter(|r| r.3 == name).count();
            Some(json!({
                "night": label, "kwh": kwh(wh), "subsidy_yuan": yuan(Wh(wh).at_rate(rate).0),
                "households": rows.len(),
                "quality": {"actual": q("actual"), "estimated": q("estimated"), "missing": q("missing")},
            }))
        }
        None => None,
    };
    let st = app.store.statements(&season, None, None).await?;
    let sum = |f: fn(&crate::store::StatementRow) -> i64| st.iter().map(|(s, _)| f(s)).sum::<i64>();
    let (city, district) = (sum(|s| s.city_fen), sum(|s| s.district_fen));
    Ok(Json(json!({
        "now": now,
        "season": season,
        "gateways": {"total": snap.gateways.len(), "online": online, "offline": snap.gateways.len() - online - never, "never_heard": never},
        "meters": {"installed": meters_current.len(), "silent": silent},
        "households": {"enrolled": facts.len(), "live": live, "running": running},
        "heat_pumps_running": running,
        "alarms": {"open": open.len(), "by_kind": by_kind},
        "tonight": tonight,
        "last_night": last_night,
        "season_total": {
            "households": st.len(),
            "offpeak_kwh": kwh(sum(|s| s.offpeak_wh)),
            "subsidised_kwh": kwh(sum(|s| s.subsidised_wh)),
            "city_subsidy_yuan": yuan(city),
            "district_subsidy_yuan": yuan(district),
            "subsidy_yuan": yuan(city + district),
        },
    })))
}

async fn households(State(s): State<AppState>, Query(q): Params) -> Result<Json<Value>, ApiError> {
    let app = &s.0;
    let mon = monitor(app);
    let snap = mon.snapshot(app.clock.now()).await?;
    let (district, village) = (param(&q, "district"), param(&q, "village"));
    let season = snap.season.to_string();
    let statements: BTreeMap<String, crate::store::StatementRow> = app
        .store
        .statements(&season, district, village)
        .await?
        .into_iter()
        .map(|(s, _)| (s.household.clone(), s))
        .collect();
    let alarms = app.store.open_alarm_counts().await?;
    let list: Vec<Value> = snap
        .households
        .iter()
        .filter(|h| {
            district.is_none_or(|d| h.district == d) && village.is_none_or(|v| h.village == v)
        })
        .map(|h| {
            household_json(
                h,
                &snap,
                &mon,
                statements.get(&h.id),
                alarms.get(&h.id).copied().unwrap_or(0),
            )
        })
        .collect();
    Ok(Json(json!({"season": season, "households": list})))
}

fn household_json(
    h: &crate::store::monitor::PlacedHousehold,
    snap: &Snapshot,
    mon: &Monitor,
    st: Option<&crate::store::StatementRow>,
    open_alarms: i64,
) -> Value {
    let cfg = mon.config();
    let (live, running) = snap.household_live_running(h, mon.calendar(), cfg);
    let bindings: Vec<_> = snap
        .current_bindings()
        .filter(|b| b.household == h.id)
        .collect();
    let meters: Vec<Value> = bindings
        .iter()
        .map(|b| {
            meter_json(
                &b.meter,
                &h.id,
                &h.device,
                snap.meters.get(&b.meter).map(|x| &x.1),
                snap,
                cfg,
            )
        })
        .collect();
    let mut gws: Vec<&str> = bindings.iter().map(|b| b.gateway.as_str()).collect();
    gws.dedup();
    let gateways: Vec<Value> = gws
        .iter()
        .map(|g| json!({"id": g, "online": snap.gateway_online(g, cfg), "last_seen": snap.gateways.get(*g).and_then(|x| x.last_seen)}))
        .collect();
    json!({
        "id": h.id, "district": h.district, "town": h.town, "village": h.village, "device": h.device,
        "live": live, "running": running, "gateways": gateways, "meters": meters, "open_alarms": open_alarms,
        "season": st.map(|s| json!({
            "offpeak_kwh": kwh(s.offpeak_wh),
            "subsidy_yuan": yuan(s.city_fen + s.district_fen),
            "nights": {"actual": s.nights_actual, "estimated": s.nights_estimated, "missing": s.nights_missing},
            "flags": s.flags,
        })),
    })
}

async fn household(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = &s.0;
    let mon = monitor(app);
    let snap = mon.snapshot(app.clock.now()).await?;
    let h = snap
        .households
        .iter()
        .find(|h| h.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("household {id} is not in the registry")))?;
    let season = snap.season.to_string();
    let st = app.store.statement(&id, &season).await?;
    let open = app
        .store
        .alarms(&AlarmFilter {
            open: Some(true),
            household: Some(id.clone()),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    let mut v = household_json(
        h,
        &snap,
        &mon,
        st.as_ref(),
        i64::try_from(open.len()).unwrap_or(i64::MAX),
    );
    if let Some(obj) = v.as_object_mut() {
        obj.insert("season_name".into(), json!(season));
        obj.insert(
            "alarms".into(),
            Value::Array(open.iter().map(alarm_json).collect()),
        );
    }
    Ok(Json(v))
}
