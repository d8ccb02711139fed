//! The MQTT payloads of CONTRACT.md: `qn/v1/gw/{gw}/readings` and `…/status`, their
//! topics, and validation whose errors name the offending field.

use alloc::vec::Vec;
use core::fmt;

use heapless::String;
use serde::{Deserialize, Serialize};

use crate::units::{GatewayId, MeterId};
use crate::UnixTime;

/// Largest payload accepted on either topic, bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// The payload version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Topic prefix before the gateway id.
pub const TOPIC_PREFIX: &str = "qn/v1/gw/";

/// Free text of a failed read: `timeout`, `bad_frame`, `meter_error:<code>`, …
pub type ErrText = String<64>;
/// The random id of one agent start.
pub type BootId = String<32>;

/// One read of one meter (CONTRACT.md `readings[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// The meter.
    pub meter: MeterId,
    /// When the read completed, gateway clock, UTC Unix seconds.
    pub ts: UnixTime,
    /// Cumulative forward active energy (`00010000`), Wh. Absent on a failed read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_wh: Option<i64>,
    /// Cumulative forward active energy of tariff 4, the valley (`00010400`), Wh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_valley_wh: Option<i64>,
    /// Active power, W, signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_w: Option<i64>,
    /// The meter's own clock, UTC Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_ts: Option<UnixTime>,
    /// Why the read failed; a failed read has no `e_wh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrText>,
}

/// A batch of readings from one poll cycle (CONTRACT.md `readings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingsBatch {
    /// Payload version, 1.
    pub v: u32,
    /// The gateway; equals the topic's.
    pub gw: GatewayId,
    /// Batch counter, increasing within one `boot`.
    pub seq: u64,
    /// Random id of the agent start that made the batch.
    pub boot: BootId,
    /// When the batch left the gateway, UTC Unix seconds (new on every replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<UnixTime>,
    /// The readings, in read order.
    pub readings: Vec<Reading>,
}

/// Online or offline (the last will).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    /// The agent runs and is connected.
    Online,
    /// The agent's last will, or a clean stop.
    Offline,
}

/// The retained gateway status (CONTRACT.md `status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Payload version, 1.
    pub v: u32,
    /// The gateway; equals the topic's.
    pub gw: GatewayId,
    /// Online or offline.
    pub state: GatewayState,
    /// When the status was made, UTC Unix seconds (absent in the last will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<UnixTime>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String<32>>,
    /// Meters configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meters: Option<u32>,
    /// Records waiting in the spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_records: Option<u64>,
    /// Records the full spool dropped since the spool was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dropped: Option<u64>,
}

impl Status {
    /// The last-will form: `{"v":1,"gw":…,"state":"offline"}`.
    pub fn offline(gw: GatewayId) -> Self {
        Self {
            v: VERSION,
            gw,
            state: GatewayState::Offline,
            ts: None,
            version: None,
            meters: None,
            spool_records: None,
            spool_dropped: None,
        }
    }
}

/// What is wrong with a payload value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Version other than 1.
    UnsupportedVersion,
    /// Differs from the gateway in the topic.
    TopicMismatch,
    /// A value below zero where only zero or more makes sense.
    Negative,
    /// Neither `e_wh` nor `err`.
    NoValueNorError,
    /// Both `e_wh` and `err`.
    ValueAndError,
    /// Outside the plausible range of instants (before 2000 or after 2200).
    OutOfRange,
    /// An empty batch.
    Empty,
    /// The topic is not `qn/v1/gw/{gw}/readings|status`.
    BadTopic,
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    TooLarge,
}

impl Problem {
    /// A stable snake_case name for counters and the quarantine table.
    pub const fn code(self) -> &'static str {
        match self {
            Problem::UnsupportedVersion => "unsupported_version",
            Problem::TopicMismatch => "topic_mismatch",
            Problem::Negative => "negative",
            Problem::NoValueNorError => "no_value",
            Problem::ValueAndError => "value_and_error",
            Problem::OutOfRange => "out_of_range",
            Problem::Empty => "empty",
            Problem::BadTopic => "bad_topic",
            Problem::TooLarge => "too_large",
        }
    }

    const fn text(self) -> &'static str {
        match self {
            Problem::UnsupportedVersion => "unsupported version (expected 1)",
            Problem::TopicMismatch => "differs from the gateway in the topic",
            Problem::Negative => "must not be negative",
            Problem::NoValueNorError => "a reading needs e_wh or err",
            Problem::ValueAndError => "a reading has either e_wh or err, not both",
            Problem::OutOfRange => "instant out of range (2000..2200)",
            Problem::Empty => "must not be empty",
            Problem::BadTopic => "expected qn/v1/gw/{gw}/readings or /status",
            Problem::TooLarge => "payload larger than 64 KiB",
        }
    }
}

/// A payload error naming the field: `readings[3].e_wh: must not be negative`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireError {
    /// Index in `readings` when the error is in one reading.
    pub index: Option<usize>,
    /// The field name as in CONTRACT.md.
    pub field: &'static str,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.index {
            write!(f, "readings[{i}].")?;
        }
        write!(f, "{}: {}", self.field, self.problem.text())
    }
}

impl core::error::Error for WireError {}

const fn err(field: &'static str, problem: Problem) -> WireError {
    WireError {
        index: None,
        field,
        problem,
    }
}

/// 2000-01-01T00:00:00Z .. 2200-01-01T00:00:00Z
const PLAUSIBLE: core::ops::Range<UnixTime> = 946_684_800..7_258_118_400;

impl Reading {
    /// Checks one reading on its own (the batch still counts when one fails).
    pub fn validate(&self) -> Result<(), WireError> {
        if !PLAUSIBLE.contains(&self.ts) {
            return Err(err("ts", Problem::OutOfRange));
        }
        match (&self.e_wh, &self.err) {
            (None, None) => return Err(err("e_wh", Problem::NoValueNorError)),
            (Some(_), Some(_)) => return Err(err("err", Problem::ValueAndError)),
            _ => {}
        }
        for (field, v) in [("e_wh", self.e_wh), ("e_valley_wh", self.e_valley_wh)] {
            if v.is_some_and(|v| v < 0) {
                return Err(err(field, Problem::Negative));
            }
        }
        if self.meter_ts.is_some_and(|t| !PLAUSIBLE.contains(&t)) {
            return Err(err("meter_ts", Problem::OutOfRange));
        }
        Ok(())
    }
}

impl ReadingsBatch {
    /// Checks the envelope against the topic's gateway; readings are checked one by one
    /// with [`Reading::validate`] so that one bad reading does not sink the others.
    pub fn validate_envelope(&self, topic_gw: &GatewayId) -> Result<(), WireError> {
        if self.v != VERSION {
            return Err(err("v", Problem::UnsupportedVersion));
        }
        if &self.gw != topic_gw {
            return Err(err("gw", Problem::TopicMismatch));
        }
        if self.boot.is_empty() {
            return Err(err("boot", Problem::Empty));
        }
        if self.sent.is_some_and(|t| !PLAUSIBLE.contains(&t)) {
            return Err(err("sent", Problem::OutOfRange));
        }
        Ok(())
    }

    /// Envelope and every reading; the first error, with its index.
    pub fn validate(&self, topic_gw: &GatewayId) -> Result<(), WireError> {
        self.validate_envelope(topic_gw)?;
        for (i, r) in self.readings.iter().enumerate() {
            r.validate().map_err(|e| WireError {
                index: Some(i),
                ..e
            })?;
        }
        Ok(())
    }
}

impl Status {
    /// Checks the status against the topic's gateway.
    pub fn validate(&self, topic_gw: &GatewayId) -> Result<(), WireError> {
        if self.v != VERSION {
            return Err(err("v", Problem::UnsupportedVersion));
        }
        if &self.gw != topic_gw {
            return Err(err("gw", Problem::TopicMismatch));
        }
        if self.ts.is_some_and(|t| !PLAUSIBLE.contains(&t)) {
            return Err(err("ts", Problem::OutOfRange));
        }
        Ok(())
    }
}

/// The two topics a gateway publishes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    /// `qn/v1/gw/{gw}/readings`
    Readings,
    /// `qn/v1/gw/{gw}/status`
    Status,
}

/// `qn/v1/gw/{gw}/readings` or `…/status`.
pub fn topic(gw: &GatewayId, kind: TopicKind) -> String<96> {
    let mut t = String::new();
    // 9 + 64 + 9 bytes always fit in 96.
    let _ = t.push_str(TOPIC_PREFIX);
    let _ = t.push_str(gw.as_str());
    let _ = t.push_str(match kind {
        TopicKind::Readings => "/readings",
        TopicKind::Status => "/status",
    });
    t
}

/// Splits a topic into its gateway and kind.
pub fn parse_topic(topic: &str) -> Result<(GatewayId, TopicKind), WireError> {
    let bad = err("topic", Problem::BadTopic);
    let rest = topic.strip_prefix(TOPIC_PREFIX).ok_or(bad)?;
    let (gw, kind) = rest.split_once('/').ok_or(bad)?;
    let kind = match kind {
        "readings" => TopicKind::Readings,
        "status" => TopicKind::Status,
        _ => return Err(bad),
    };
    Ok((GatewayId::new(gw).map_err(|_| bad)?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"v": 1, "gw": "gw-0001", "seq": 1842, "boot": "b3f1c2",
     "readings": [
      {"meter": "123456781012", "ts": 1764331200, "e_wh": 1234560,
       "e_valley_wh": 456780, "p_w": 2150, "meter_ts": 1764331199},
      {"meter": "123456781013", "ts": 1764331203, "err": "timeout"}
     ]}"#;

    fn gw() -> GatewayId {
        GatewayId::new("gw-0001").unwrap()
    }

    #[test]
    fn the_contract_example_parses_and_validates() {
        let b: ReadingsBatch = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(b.seq, 1842);
        assert_eq!(b.readings[0].e_wh, Some(1_234_560));
        assert_eq!(b.readings[0].p_w, Some(2150));
        assert_eq!(b.readings[1].err.as_deref(), Some("timeout"));
        assert_eq!(b.validate(&gw()), Ok(()));
        // and serialises without absent fields
        let back = serde_json::to_string(&b.readings[1]).unwrap();
        assert_eq!(
            back,
            r#"{"meter":"123456781013","ts":1764331203,"err":"timeout"}"#
        );
    }

    #[test]
    fn errors_name_the_field_and_index() {
        let mut b: ReadingsBatch = serde_json::from_str(EXAMPLE).unwrap();
        b.readings[1].e_wh = Some(5);
        let e = b.validate(&gw()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "readings[1].err: a reading has either e_wh or err, not both"
        );
        b.readings[1].err = None;
        b.readings[1].e_wh = Some(-5);
        assert_eq!(
            b.validate(&gw()).unwrap_err().to_string(),
            "readings[1].e_wh: must not be negative"
        );
        let other = GatewayId::new("gw-0002").unwrap();
        assert_eq!(b.validate(&other).unwrap_err().field, "gw");
        b.v = 2;
        assert_eq!(
            b.validate(&gw()).unwrap_err().problem,
            Problem::UnsupportedVersion
        );
    }

    #[test]
    fn bad_ids_fail_deserialisation_with_the_reason() {
        let e =
            serde_json::from_str::<Reading>(r#"{"meter":"bad meter","ts":1764331200,"e_wh":1}"#)
                .unwrap_err();
        assert!(e.to_string().contains("has a character outside"), "{e}");
    }

    #[test]
    fn status_forms() {
        let s: Status = serde_json::from_str(
            r#"{"v": 1, "gw": "gw-0001", "state": "online", "ts": 1764331200, "version": "0.1.0",
             "meters": 12, "spool_records": 0, "spool_dropped": 0}"#,
        )
        .unwrap();
        assert_eq!(s.state, GatewayState::Online);
        assert_eq!(s.validate(&gw()), Ok(()));
        let off = serde_json::to_string(&Status::offline(gw())).unwrap();
        assert_eq!(off, r#"{"v":1,"gw":"gw-0001","state":"offline"}"#);
    }

    #[test]
    fn topics() {
        assert_eq!(
            topic(&gw(), TopicKind::Readings).as_str(),
            "qn/v1/gw/gw-0001/readings"
        );
        assert_eq!(
            parse_topic("qn/v1/gw/gw-0001/status"),
            Ok((gw(), TopicKind::Status))
        );
        assert!(parse_topic("qn/v1/gw/GW/status").is_err());
        assert!(parse_topic("qn/v1/gw/gw-1/other").is_err());
        assert!(parse_topic("qn/v2/gw/gw-1/status").is_err());
    }
}
