//! [`Monitor`]: the I/O edge of monitoring. Ingest folds every batch into gateway and
//! meter state ([`MonitorFold`]), a background task calls [`Monitor::tick`]
//! (every rule over every subject, then the alarm lifecycle), and the HTTP API reads a
//! [`Snapshot`]. All SQL is in `store::monitor`.
//!
//! Wiring:
//! - ingest (`Commit::run`) builds a [`MonitorFold`] of each validated batch
//!   ([`Monitor::fold`], pure) and the store folds it inside the batch's own commit
//!   (`Store::commit_ingest_with`): the rows are locked while they change, so concurrent
//!   batches and server replicas never overwrite each other's state.
//! - `start_with_clock` spawns [`run`] (the tick). Recompute needs no hook: `tick` reads
//!   the stored nights and statements.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use qingnuan_shared::calendar::{Calendar, Night, Season};
use qingnuan_shared::clock::SharedClock;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::wire::Status;
use tokio::sync::watch;
use tracing::{info, warn};

use super::alarm::{key, AlarmKind, Decision, Subject};
use super::rules::{self, NightFact, Rejected};
use super::{reconcile, Changes, GatewayState, MeterEvent, MeterState, MonitorConfig};
use crate::store::monitor::PlacedHousehold;
use crate::store::{Binding, IngestTx, Store, StoreError};

/// A readings message as ingest saw it: its gateway and its optional `sent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSeen {
    /// Gateway id (from the topic).
    pub gateway: String,
    /// `sent` of the batch, UTC Unix seconds (gateway clock).
    pub sent: Option<i64>,
}

impl BatchSeen {
    /// The gateway and `sent` of a `…/readings` message; `None` for any other topic or a
    /// payload that is not a JSON object (ingest quarantines those anyway).
    pub fn from_message(topic: &str, payload: &[u8]) -> Option<BatchSeen> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(default)]
            sent: Option<i64>,
        }
        let (gw, kind) = qingnuan_shared::wire::parse_topic(topic).ok()?;
        if kind != qingnuan_shared::wire::TopicKind::Readings {
            return None;
        }
        let head: Head = serde_json::from_slice(payload).ok()?;
        Some(BatchSeen {
            gateway: gw.as_str().to_string(),
            sent: head.sent,
        })
    }
}

/// What one ingest batch changes in monitoring state, built without I/O by
/// [`Monitor::fold`]. The store loads the rows it names under a lock, calls
/// [`MonitorFold::apply`] and writes them back in the same transaction, so concurrent
/// batches (other ingest tasks, other replicas) never overwrite each other's state.
#[derive(Debug)]
pub struct MonitorFold<'a> {
    /// Server time of the batch, UTC Unix seconds.
    received: i64,
    calendar: &'a Calendar,
    /// Readable status messages, in arrival order.
    statuses: Vec<(&'a str, Status)>,
    /// Readings messages.
    batches: Vec<BatchSeen>,
    /// Readings quarantined as `spoofed`: (gateway, meter named).
    spoofed: Vec<(&'a str, Option<&'a str>)>,
    /// Per meter: its gateway and its reads, in time order.
    events: BTreeMap<&'a str, (&'a str, Vec<MeterEvent<'a>>)>,
}

impl MonitorFold<'_> {
    /// Server time of the batch, UTC Unix seconds.
    pub fn received(&self) -> i64 {
        self.received
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty()
            && self.batches.is_empty()
            && self.spoofed.is_empty()
            && self.events.is_empty()
    }

    /// The gateways whose state changes, in byte order (the order rows are locked in).
    pub fn gateway_ids(&self) -> Vec<&str> {
        let ids: BTreeSet<&str> = self
            .statuses
            .iter()
            .map(|(g, _)| *g)
            .chain(self.batches.iter().map(|b| b.gateway.as_str()))
            .chain(self.spoofed.iter().map(|(g, _)| *g))
            .collect();
        ids.into_iter().collect()
    }

    /// The meters whose state changes, with the gateway that read them, in byte order.
    pub fn meter_ids(&self) -> Vec<(&str, &str)> {
        self.events.iter().map(|(m, (g, _))| (*m, *g)).collect()
    }

    /// Folds the batch into the stored states of [`gateway_ids`](Self::gateway_ids) and
    /// [`meter_ids`](Self::meter_ids) (missing entries start from the default).
    pub fn apply(
        &self,
        gateways: &mut BTreeMap<String, GatewayState>,
        meters: &mut BTreeMap<String, (String, MeterState)>,
    ) {
        let now = self.received;
        for (gw, status) in &self.statuses {
            gateways
                .entry(gw.to_string())
                .or_default()
                .on_status(status, now);
        }
        for b in &self.batches {
            gateways
                .entry(b.gateway.clone())
                .or_default()
                .on_batch(b.sent, now);
        }
        for (gw, meter) in &self.spoofed {
            gateways
                .entry(gw.to_string())
                .or_default()
                .on_spoofed(*meter, now);
        }
        for (meter, (gw, evs)) in &self.events {
            let entry = meters
                .entry(meter.to_string())
                .or_insert_with(|| (gw.to_string(), MeterState::default()));
            entry.0 = gw.to_string();
            for e in evs {
                entry.1.apply(*e, self.calendar);
            }
        }
    }
}

/// The monitor: store, calendar, thresholds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Monitor {
    store: Store,
    calendar: Calendar,
    config: Arc<MonitorConfig>,
}

/// Everything the read side needs at one instant: registry, states, season.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The instant, UTC Unix seconds.
    pub now: i64,
    /// The running season (or the last one that started).
    pub season: Season,
    /// Households with place and device, by id.
    pub households: Vec<PlacedHousehold>,
    /// Meter bindings of the registry.
    pub bindings: Vec<Binding>,
    /// Every registry gateway (and any heard from), with its state (default if never heard).
    pub gateways: BTreeMap<String, GatewayState>,
    /// Meter states: meter → (gateway, state).
    pub meters: BTreeMap<String, (String, MeterState)>,
}

impl Snapshot {
    /// Bindings valid at `now` (installed, not removed).
    pub fn current_bindings(&self) -> impl Iterator<Item = &Binding> + '_ {
        self.bindings
            .iter()
            .filter(|b| b.valid_from <= self.now && b.valid_to.is_none_or(|t| t > self.now))
    }

    /// Whether a gateway counts as online now.
    pub fn gateway_online(&self, id: &str, cfg: &MonitorConfig) -> bool {
        self.gateways
            .get(id)
            .is_some_and(|g| g.is_online(self.now, cfg))
    }

    /// (live, running) of a household: live when a current meter's gateway is online and
    /// the meter has a good read in this season; running when a current meter's power is
    /// above the device's threshold.
    pub fn household_live_running(
        &self,
        h: &PlacedHousehold,
        cal: &Calendar,
        cfg: &MonitorConfig,
    ) -> (bool, bool) {
        let (season_start, _) = cal.season_span(self.season);
        let (mut live, mut running) = (false, false);
        for b in self.current_bindings().filter(|b| b.household == h.id) {
            let Some((_, m)) = self.meters.get(&b.meter) else {
                continue;
            };
            if self.gateway_online(&b.gateway, cfg)
                && m.last_good.is_some_and(|t| t >= season_start)
            {
                live = true;
            }
            running |= m.running(&h.device, self.now, cfg);
        }
        (live, running)
    }
}

/// The running season at `now`, or the last one that started.
pub fn current_season(cal: &Calendar, now: i64) -> Season {
    if let Some(s) = cal.season_of(now) {
        return s;
    }
    let year = cal.local_date(now).year();
    let s = Season { start_year: year };
    if cal.season_span(s).0 <= now {
        s
    } else {
        Season {
            start_year: year - 1,
        }
    }
}

impl Monitor {
    /// A monitor over `store` with the policy's calendar and `config`.
    pub fn new(store: Store, policy: Policy, config: MonitorConfig) -> Self {
        Self {
            store,
            calendar: Calendar::new(policy),
            config: Arc::new(config),
        }
    }

    /// The thresholds.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// The calendar.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// What a batch changes in gateway and meter state: statuses (and last wills), one
    /// batch per entry of `batches` (or, when it is empty, one per gateway that sent
    /// readings, without `sent`), good and failed reads. Pure; ingest folds it inside its
    /// own transaction ([`Store::commit_ingest_with`]).
    pub fn fold<'a>(&'a self, tx: &'a IngestTx, batches: &[BatchSeen]) -> MonitorFold<'a> {
        let batches: Vec<BatchSeen> = if batches.is_empty() {
            let gws: BTreeSet<&str> = tx
                .readings
                .iter()
                .map(|r| r.gateway.as_str())
                .chain(tx.failures.iter().map(|f| f.gateway.as_str()))
                .collect();
            gws.into_iter()
                .map(|g| BatchSeen {
                    gateway: g.into(),
                    sent: None,
                })
                .collect()
        } else {
            batches.to_vec()
        };
        let spoofed: Vec<(&str, Option<&str>)> = tx
            .quarantine
            .iter()
            .filter(|q| q.reason == "spoofed")
            .filter_map(|q| Some((q.gateway.as_deref()?, spoofed_meter(&q.detail))))
            .collect();
        let mut statuses = Vec::new();
        for s in &tx.statuses {
            match serde_json::from_str::<Status>(&s.json) {
                Ok(status) => statuses.push((s.gateway.as_str(), status)),
                Err(e) => {
                    warn!(gateway = %s.gateway, error = %e, "status not readable by the monitor")
                }
            }
        }
        let mut events: BTreeMap<&str, (&str, Vec<MeterEvent<'_>>)> = BTreeMap::new();
        for r in &tx.readings {
            let e = MeterEvent::Good {
                ts: r.ts,
                e_wh: r.e_wh,
                p_w: r.p_w,
                meter_ts: r.meter_ts,
            };
            events
                .entry(&r.meter)
                .or_insert((&r.gateway, Vec::new()))
                .1
                .push(e);
        }
        for f in &tx.failures {
            let e = MeterEvent::Failed {
                ts: f.ts,
                err: &f.err,
            };
            events
                .entry(&f.meter)
                .or_insert((&f.gateway, Vec::new()))
                .1
                .push(e);
        }
        for (_, evs) in events.values_mut() {
            evs.sort_by_key(MeterEvent::ts);
        }
        MonitorFold {
            received: tx.received,
            calendar: &self.calendar,
            statuses,
            batches,
            spoofed,
            events,
        }
    }

    /// Folds a committed ingest batch into gateway and meter state in a transaction of
    /// its own (ingest itself folds inside its commit; see [`Monitor::fold`]).
    pub async fn on_ingest(&self, tx: &IngestTx, batches: &[BatchSeen]) -> Result<(), StoreError> {
        self.store.fold_monitor(&self.fold(tx, batches)).await
    }

    /// Registry and states at `now`.
    pub async fn snapshot(&self, now: i64) -> Result<Snapshot, StoreError> {
        let mut gateways = self.store.monitor_gateways(None).await?;
        for id in self.store.gateway_ids().await? {
            gateways.entry(id).or_default();
        }
        Ok(Snapshot {
            now,
            season: current_season(&self.calendar, now),
            households: self.store.placed_households().await?,
            bindings: self.store.bindings().await?,
            gateways,
            meters: self.store.monitor_meters(None).await?,
        })
    }

    /// Runs every rule over every subject at `now` and applies the alarm lifecycle;
    /// returns what changed.
    pub async fn tick(&self, now: i64) -> Result<Changes, StoreError> {
        let snap = self.snapshot(now).await?;
        let (cal, cfg) = (&self.calendar, &*self.config);
        let season = snap.season.to_string();
        let by_id: BTreeMap<&str, &PlacedHousehold> =
            snap.households.iter().map(|h| (h.id.as_str(), h)).collect();
        let place = |hh: &str| {
            by_id
                .get(hh)
                .map(|h| (h.district.clone(), h.village.clone()))
        };
        let mut gw_home: BTreeMap<&str, &str> = BTreeMap::new();
        for b in &snap.bindings {
            gw_home.entry(&b.gateway).or_insert(&b.household);
        }
        let mut decisions = Vec::new();
        for (id, g) in &snap.gateways {
            let (district, village) = gw_home.get(id.as_str()).and_then(|h| place(h)).unzip();
            let s = Subject {
                gateway: Some(id.clone()),
                district,
                village,
                ..Subject::default()
            };
            decisions.extend(rules::gateway_offline(id, &s, g, now, cal, cfg));
            decisions.extend(rules::gateway_clock(id, &s, g, cfg));
            decisions.extend(rules::spoofed_reading(id, &s, g, now, cal));
        }
        let current: BTreeMap<&str, &Binding> = snap
            .current_bindings()
            .map(|b| (b.meter.as_str(), b))
            .collect();
        for (meter, (gw, m)) in &snap.meters {
            let Some(b) = current.get(meter.as_str()) else {
                // Removed or unknown meter: nothing of it should stay open.
                decisions.push(Decision::Clear(key(AlarmKind::MeterSilent, meter, None)));
                decisions.push(Decision::Clear(key(AlarmKind::MeterClock, meter, None)));
                continue;
            };
            let (district, village) = place(&b.household).unzip();
            let s = Subject {
                household: Some(b.household.clone()),
                meter: Some(meter.clone()),
                gateway: Some(gw.clone()),
                district,
                village,
            };
            decisions.push(rules::meter_silent(meter, &s, m, cal, cfg));
            decisions.extend(rules::meter_clock(meter, &s, m, cfg));
        }
        let nights = self.recent_nights(&snap).await?;
        let statements: BTreeMap<String, (i64, i64)> = self
            .store
            .statements(&season, None, None)
            .await?
            .into_iter()
            .map(|(s, _)| (s.household, (s.offpeak_wh, s.cap_wh)))
            .collect();
        for h in &snap.households {
            let s = Subject {
                household: Some(h.id.clone()),
                gateway: current
                    .values()
                    .find(|b| b.household == h.id)
                    .map(|b| b.gateway.clone()),
                district: Some(h.district.clone()),
                village: Some(h.village.clone()),
                meter: None,
            };
            let ns = nights.get(&h.id).map(Vec::as_slice).unwrap_or(&[]);
            decisions.extend(rules::no_consumption(&h.id, &s, &season, ns, cfg));
            decisions.extend(rules::tou_mismatch(&h.id, &s, ns));
            decisions.extend(rules::readings_rejected(&h.id, &s, ns, cal));
            if let Some(&(offpeak, cap)) = statements.get(&h.id) {
                decisions.extend(rules::cap_near(&h.id, &s, &season, offpeak, cap, cfg));
            }
        }
        let open = self.store.open_alarm_reasons().await?;
        // Season-keyed alarms of an earlier season end with it.
        for k in open.keys() {
            let seasonal = k.starts_with(AlarmKind::NoConsumption.as_str())
                || k.starts_with(AlarmKind::CapNear.as_str());
            if seasonal && !k.ends_with(&season) {
                decisions.push(Decision::Clear(k.clone()));
            }
        }
        let changes = reconcile(&open, decisions);
        self.store.apply_alarm_changes(&changes, now).await?;
        if !changes.is_empty() {
            info!(
                opened = changes.open.len(),
                cleared = changes.clear.len(),
                updated = changes.update.len(),
                "alarms changed"
            );
        }
        Ok(changes)
    }

    /// The last few closed nights of the season per household, in order, with the readings
    /// the engine set aside inside each night's span.
    async fn recent_nights(
        &self,
        snap: &Snapshot,
    ) -> Result<BTreeMap<String, Vec<NightFact>>, StoreError> {
        let cal = &self.calendar;
        let days = i64::try_from(self.config.no_consumption_nights)
            .unwrap_or(3)
            .saturating_add(3);
        let from = Night(cal.local_date(snap.now.saturating_sub(days * 86_400))).to_string();
        let mut out: BTreeMap<String, Vec<NightFact>> = BTreeMap::new();
        for (hh, night, wh, quality, flags, detail) in self
            .store
            .nights_since(&snap.season.to_string(), &from)
            .await?
        {
            let span = night.parse::<Night>().ok().and_then(|n| cal.night_span(n));
            let rejected = span
                .map(|(a, b)| set_aside(&detail, a, b))
                .unwrap_or_default();
            out.entry(hh).or_default().push(NightFact {
                night,
                wh,
                quality,
                flags: serde_json::from_str(&flags).unwrap_or_default(),
                rejected,
            });
        }
        Ok(out)
    }
}

/// The meter a `spoofed` quarantine detail names (`readings[i].meter: {meter} is …`).
fn spoofed_meter(detail: &str) -> Option<&str> {
    detail.split_once(".meter: ")?.1.split(' ').next()
}

/// `readings_set_aside` of a stored night detail, inside `[from, to]`.
fn set_aside(detail: &str, from: i64, to: i64) -> Vec<Rejected> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(detail) else {
        return Vec::new();
    };
    let list = v
        .get("readings_set_aside")
        .and_then(|x| x.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(|r| {
            let ts = r.get("ts")?.as_i64()?;
            (from <= ts && ts <= to).then(|| Rejected {
                meter: r
                    .get("meter")
                    .and_then(|m| m.as_str())
                    .unwrap_or("?")
                    .to_string(),
                ts,
                verdict: r
                    .get("verdict")
                    .and_then(|m| m.as_str())
                    .unwrap_or("?")
                    .to_string(),
            })
        })
        .collect()
}

/// Ticks the monitor every `period` (simulated time under a test clock) until `stop`.
pub async fn run(
    monitor: Monitor,
    clock: SharedClock,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = monitor.tick(clock.now()).await {
            warn!(error = %e, "monitor tick failed");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(clock.real_for(period).max(Duration::from_millis(200))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_seen_from_a_readings_message_only() {
        let b = BatchSeen::from_message(
            "qn/v1/gw/gw-7/readings",
            br#"{"v":1,"gw":"gw-7","seq":1,"boot":"x","sent":42,"readings":[]}"#,
        );
        assert_eq!(
            b,
            Some(BatchSeen {
                gateway: "gw-7".into(),
                sent: Some(42)
            })
        );
        let b = BatchSeen::from_message("qn/v1/gw/gw-7/readings", br#"{"readings":[]}"#);
        assert_eq!(b.and_then(|b| b.sent), None);
        assert_eq!(
            BatchSeen::from_message("qn/v1/gw/gw-7/status", br#"{"sent":1}"#),
            None
        );
        assert_eq!(
            BatchSeen::from_message("qn/v1/gw/gw-7/readings", b"not json"),
            None
        );
        assert_eq!(BatchSeen::from_message("other/topic", b"{}"), None);
    }

    #[test]
    fn the_current_season_outside_one_is_the_last_that_started() {
        let cal = Calendar::new(Policy::beijing_2018());
        // 2026-06-01 00:00 +08:00: between seasons.
        assert_eq!(
            current_season(&cal, 1_780_243_200),
            Season { start_year: 2025 }
        );
        // 2025-11-01 20:00 +08:00: inside 2025-2026.
        assert_eq!(
            current_season(&cal, 1_761_998_400),
            Season { start_year: 2025 }
        );
        // 2025-10-01 00:00 +08:00: before it, so 2024-2025.
        assert_eq!(
            current_season(&cal, 1_759_248_000),
            Season { start_year: 2024 }
        );
    }
}
