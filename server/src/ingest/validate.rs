//! Validation of one MQTT message, pure: topic, size, JSON, envelope, then every reading
//! on its own (so one bad reading does not sink the batch), against the registry bindings.

use std::collections::{BTreeSet, HashMap, HashSet};

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::units::GatewayId;
use qingnuan_shared::wire::{self, BootId, Reading, ReadingsBatch, Status, TopicKind, WireError};
use serde::Deserialize;

use crate::registry::seasons_touched;
use crate::store::{
    Binding, HeldReading, IngestTx, NewReading, Quarantined, ReadFailure, StatusUpdate,
};

/// Bytes of a quarantined payload kept for inspection.
const KEPT_PAYLOAD_BYTES: usize = 1024;

/// Validity intervals `[from, to]`, UTC Unix seconds (`to` `None`: still installed).
type Intervals = Vec<(i64, Option<i64>)>;

/// Where a meter may be read from and for whom: the registry as ingest needs it.
#[derive(Debug, Default)]
pub struct Bindings {
    gateways: HashSet<String>,
    /// (gateway, meter) → the validity intervals `[from, to]` of the meter on that
    /// gateway, UTC Unix seconds (`to` `None`: still installed).
    read_by: HashMap<(String, String), Intervals>,
    /// meter → (household, valid_from, valid_to)
    households: HashMap<String, Vec<(String, i64, Option<i64>)>>,
}

impl Bindings {
    /// Builds the lookup from the registry's gateways and meter rows.
    pub fn new(gateways: impl IntoIterator<Item = String>, bindings: Vec<Binding>) -> Self {
        let mut b = Bindings {
            gateways: gateways.into_iter().collect(),
            ..Default::default()
        };
        for m in bindings {
            b.read_by
                .entry((m.gateway.clone(), m.meter.clone()))
                .or_default()
                .push((m.valid_from, m.valid_to));
            b.households
                .entry(m.meter)
                .or_default()
                .push((m.household, m.valid_from, m.valid_to));
            b.gateways.insert(m.gateway);
        }
        b
    }

    /// The (household, season) pairs a new reading can change: households whose meter
    /// validity holds `ts`, seasons from the one `max_gap_s` before it up to `now`'s.
    pub fn dirty_of(
        &self,
        r: &NewReading,
        cal: &Calendar,
        now: i64,
        out: &mut BTreeSet<(String, String)>,
    ) {
        let max_gap = cal.policy().rules.max_gap_s;
        for (hh, from, to) in self.households.get(&r.meter).into_iter().flatten() {
            if r.ts < *from || to.is_some_and(|to| r.ts > to) {
                continue;
            }
            for s in seasons_touched(cal, r.ts.saturating_sub(max_gap), None, now.max(r.ts)) {
                out.insert((hh.clone(), s.to_string()));
            }
        }
    }
}

impl Bindings {
    /// Whether `gateway` may report `meter` at `ts`: the meter is registered on it with a
    /// validity interval holding `ts` (inclusive of the removal instant, as the engine's
    /// validity is). Otherwise the reason (`spoofed`, `unbound_meter`, `before_install`,
    /// `unbound`) and a detail naming the field (`meter: …` or `ts: …`).
    pub fn admit(&self, gateway: &str, meter: &str, ts: i64) -> Result<(), (&'static str, String)> {
        let Some(intervals) = self.read_by.get(&(gateway.to_string(), meter.to_string())) else {
            // A meter the registry places on another gateway is a gateway speaking for
            // a meter it does not own: `spoofed`, and the monitor raises an alarm.
            return Err(if self.households.contains_key(meter) {
                (
                    "spoofed",
                    format!("meter: {meter} is registered on another gateway, not {gateway}"),
                )
            } else {
                (
                    "unbound_meter",
                    format!("meter: {meter} is not registered on gateway {gateway}"),
                )
            });
        };
        let install = intervals
            .iter()
            .map(|&(from, _)| from)
            .min()
            .unwrap_or(i64::MIN);
        if ts < install {
            return Err((
                "before_install",
                format!("ts: {ts} is before meter {meter} was installed ({install})"),
            ));
        }
        if !intervals
            .iter()
            .any(|&(from, to)| from <= ts && to.is_none_or(|to| ts <= to))
        {
            return Err((
                "unbound",
                format!(
                    "ts: {ts} is outside every interval meter {meter} is registered on gateway {gateway}"
                ),
            ));
        }
        Ok(())
    }
}

/// Keeps a reading the registry does not bind (yet) with its values, so that a later
/// registry change can admit it (`replay.rs`). A failed read carries nothing to pay on.
fn hold(tx: &mut IngestTx, gw: &GatewayId, r: &Reading, reason: &str) {
    if let Some(e_wh) = r.e_wh {
        tx.held.push(HeldReading {
            reading: new_reading(gw, r, e_wh),
            reason: reason.into(),
        });
    }
}

/// The reading to store from a wire reading of `gw` with register `e_wh`.
fn new_reading(gw: &GatewayId, r: &Reading, e_wh: i64) -> NewReading {
    NewReading {
        meter: r.meter.as_str().into(),
        ts: r.ts,
        e_wh,
        e_valley_wh: r.e_valley_wh,
        p_w: r.p_w,
        meter_ts: r.meter_ts,
        gateway: gw.to_string(),
    }
}

/// Checks one message and adds what it yields to `tx`. Never fails: whatever is wrong
/// becomes a quarantine row.
pub fn message(
    topic: &str,
    payload: &[u8],
    bindings: &Bindings,
    now: i64,
    future_tolerance_s: i64,
    tx: &mut IngestTx,
) {
    let msg = Msg {
        topic,
        payload,
        key: msg_key(topic, payload),
    };
    let (gw, kind) = match wire::parse_topic(topic) {
        Ok(t) => t,
        Err(e) => return msg.quarantine(tx, None, -1, "bad_topic", e.to_string()),
    };
    let gw_name = gw.as_str().to_string();
    if payload.len() > wire::MAX_PAYLOAD_BYTES {
        let detail = format!("payload of {} bytes is larger than 64 KiB", payload.len());
        return msg.quarantine(tx, Some(&gw_name), -1, "too_large", detail);
    }
    let known = bindings.gateways.contains(&gw_name);
    if !known {
        msg.quarantine(
            tx,
            Some(&gw_name),
            -1,
            "unknown_gateway",
            format!("gateway {gw_name} is not in the registry"),
        );
    }
    match kind {
        TopicKind::Status if known => status(&msg, &gw, tx),
        TopicKind::Status => {}
        TopicKind::Readings => {
            let check = Check {
                bindings,
                now,
                tolerance: future_tolerance_s,
                known,
            };
            readings(&msg, &gw, &check, tx);
        }
    }
}

/// What a readings message is checked against.
struct Check<'a> {
    bindings: &'a Bindings,
    now: i64,
    tolerance: i64,
    /// Whether the gateway is in the registry. An unknown gateway's message is
    /// quarantined whole already: its readings are only held, without rows of their own.
    known: bool,
}

fn status(msg: &Msg<'_>, gw: &GatewayId, tx: &mut IngestTx) {
    let name = Some(gw.as_str());
    let s: Status = match serde_json::from_slice(msg.payload) {
        Ok(s) => s,
        Err(e) => return msg.quarantine(tx, name, -1, json_reason(&e), e.to_string()),
    };
    if let Err(e) = s.validate(gw) {
        return msg.quarantine(tx, name, -1, e.problem.code(), e.to_string());
    }
    let state = match s.state {
        wire::GatewayState::Online => "online",
        wire::GatewayState::Offline => "offline",
    };
    tx.statuses.push(StatusUpdate {
        gateway: gw.to_string(),
        state: state.into(),
        json: String::from_utf8_lossy(msg.payload).into_owned(),
    });
}

/// The batch envelope with its readings left as JSON values, checked one by one.
#[derive(Deserialize)]
struct Envelope {
    v: u32,
    gw: GatewayId,
    seq: u64,
    boot: BootId,
    #[serde(default)]
    sent: Option<i64>,
    readings: Vec<serde_json::Value>,
}

fn readings(msg: &Msg<'_>, gw: &GatewayId, check: &Check<'_>, tx: &mut IngestTx) {
    let name = Some(gw.as_str());
    let (bindings, now) = (check.bindings, check.now);
    let quarantine = |tx: &mut IngestTx, item: i64, reason: &str, detail: String| {
        if check.known {
            msg.quarantine(tx, name, item, reason, detail);
        }
    };
    let env: Envelope = match serde_json::from_slice(msg.payload) {
        Ok(e) => e,
        Err(e) => return quarantine(tx, -1, json_reason(&e), e.to_string()),
    };
    let head = ReadingsBatch {
        v: env.v,
        gw: env.gw,
        seq: env.seq,
        boot: env.boot,
        sent: env.sent,
        readings: Vec::new(),
    };
    if let Err(e) = head.validate_envelope(gw) {
        return quarantine(tx, -1, e.problem.code(), e.to_string());
    }
    for (i, value) in env.readings.into_iter().enumerate() {
        let item = i64::try_from(i).unwrap_or(i64::MAX);
        let r: Reading = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                quarantine(tx, item, "bad_reading", format!("readings[{i}]: {e}"));
                continue;
            }
        };
        if let Err(e) = r.validate() {
            let e = WireError {
                index: Some(i),
                ..e
            };
            quarantine(tx, item, e.problem.code(), e.to_string());
            continue;
        }
        let meter = r.meter.as_str();
        if r.ts > now.saturating_add(check.tolerance) {
            let detail = format!(
                "readings[{i}].ts: {} is {} s ahead of the server clock",
                r.ts,
                r.ts - now
            );
            quarantine(tx, item, "future_ts", detail);
            continue;
        }
        if !check.known {
            hold(tx, gw, &r, "unknown_gateway");
            continue;
        }
        if let Err((reason, detail)) = bindings.admit(gw.as_str(), meter, r.ts) {
            msg.quarantine(tx, name, item, reason, format!("readings[{i}].{detail}"));
            hold(tx, gw, &r, reason);
            continue;
        }
        match (r.e_wh, &r.err) {
            (Some(e_wh), _) => tx.readings.push(new_reading(gw, &r, e_wh)),
            (None, Some(err)) => tx.failures.push(ReadFailure {
                meter: meter.into(),
                ts: r.ts,
                err: err.as_str().into(),
                gateway: gw.to_string(),
            }),
            // `validate` refuses a reading with neither.
            (None, None) => {}
        }
    }
}

/// `not_json` for syntax, `bad_envelope` for a shape or type the contract does not allow.
fn json_reason(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Data => "bad_envelope",
        _ => "not_json",
    }
}

struct Msg<'a> {
    topic: &'a str,
    payload: &'a [u8],
    key: String,
}

impl Msg<'_> {
    fn quarantine(
        &self,
        tx: &mut IngestTx,
        gw: Option<&str>,
        item: i64,
        reason: &str,
        detail: String,
    ) {
        let kept = self
            .payload
            .get(..KEPT_PAYLOAD_BYTES)
            .unwrap_or(self.payload);
        tx.quarantine.push(Quarantined {
            msg_key: self.key.clone(),
            item,
            topic: self.topic.chars().take(256).collect(),
            gateway: gw.map(Into::into),
            reason: reason.into(),
            detail,
            payload: String::from_utf8_lossy(kept).into_owned(),
        });
    }
}

/// FNV-1a 64 of topic and payload, hex: the same message always has the same key.
fn msg_key(topic: &str, payload: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes().chain([0u8]).chain(payload.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}-{}", payload.len())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
