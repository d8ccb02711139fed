//! Alarms: their kinds, the subject each one names, the open/clear decisions the rules
//! make, and the lifecycle (open → cleared, deduplicated by key). Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// What an alarm is about (the `kind` of the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// Gateway offline longer than the threshold inside the off-peak window.
    GatewayOffline,
    /// Meter failed its last N reads.
    MeterSilent,
    /// No off-peak consumption for N closed nights in a row.
    NoConsumption,
    /// The season's off-peak energy is past the alarm share of the cap.
    CapNear,
    /// The meter's valley register disagrees with the policy's window.
    TouMismatch,
    /// The meter's clock is off from the gateway's.
    MeterClock,
    /// Readings were rejected (spike, negative delta).
    ReadingsRejected,
    /// The gateway's clock is off from the server's.
    GatewayClock,
    /// The gateway sent readings for a meter registered on another gateway.
    SpoofedReading,
}

impl AlarmKind {
    /// Every kind, in a fixed order.
    pub const ALL: [AlarmKind; 9] = [
        AlarmKind::GatewayOffline,
        AlarmKind::MeterSilent,
        AlarmKind::NoConsumption,
        AlarmKind::CapNear,
        AlarmKind::TouMismatch,
        AlarmKind::MeterClock,
        AlarmKind::ReadingsRejected,
        AlarmKind::GatewayClock,
        AlarmKind::SpoofedReading,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::GatewayOffline => "gateway_offline",
            AlarmKind::MeterSilent => "meter_silent",
            AlarmKind::NoConsumption => "no_consumption",
            AlarmKind::CapNear => "cap_near",
            AlarmKind::TouMismatch => "tou_mismatch",
            AlarmKind::MeterClock => "meter_clock",
            AlarmKind::ReadingsRejected => "readings_rejected",
            AlarmKind::GatewayClock => "gateway_clock",
            AlarmKind::SpoofedReading => "spoofed_reading",
        }
    }

    /// The kind of a snake_case name.
    pub fn parse(name: &str) -> Option<AlarmKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Who an alarm names: the ids that apply, and where the household lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// Household id.
    pub household: Option<String>,
    /// Meter id.
    pub meter: Option<String>,
    /// Gateway id.
    pub gateway: Option<String>,
    /// 区 of the household (or of the gateway's households).
    pub district: Option<String>,
    /// 村 of the household (or of the gateway's households).
    pub village: Option<String>,
}

/// A rule's finding that an alarm should be open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Dedup key: `kind:subject[:season]`, one open alarm per key.
    pub key: String,
    /// The kind.
    pub kind: AlarmKind,
    /// Who.
    pub subject: Subject,
    /// Why, in words with the figures.
    pub reason: String,
}

/// A rule's decision for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The alarm with this finding's key should be open.
    Open(Finding),
    /// The alarm with this key should not be open (any open one is cleared).
    Clear(String),
}

impl Decision {
    /// The dedup key decided on.
    pub fn key(&self) -> &str {
        match self {
            Decision::Open(f) => &f.key,
            Decision::Clear(k) => k,
        }
    }
}

/// The dedup key of an alarm of `kind` about `id` (and optionally a season).
pub fn key(kind: AlarmKind, id: &str, season: Option<&str>) -> String {
    match season {
        Some(s) => format!("{}:{id}:{s}", kind.as_str()),
        None => format!("{}:{id}", kind.as_str()),
    }
}

/// What the store must do to the alarms table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New alarms to open (no open alarm had their key).
    pub open: Vec<Finding>,
    /// Open alarms to clear, by key.
    pub clear: Vec<String>,
    /// Open alarms whose reason changed (figures moved), to update in place.
    pub update: Vec<Finding>,
}

impl Changes {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.clear.is_empty() && self.update.is_empty()
    }
}

/// The lifecycle: given the open alarms (key → reason) and this round's decisions, what
/// to open, clear and update. An open alarm stays one row however often it is raised
/// again (dedup); a key decided both ways in one round stays open; a key no rule
/// decided on is left as it is.
pub fn reconcile(open: &BTreeMap<String, String>, decisions: Vec<Decision>) -> Changes {
    let mut raised: BTreeMap<String, Finding> = BTreeMap::new();
    let mut cleared = BTreeSet::new();
    for d in decisions {
        match d {
            Decision::Open(f) => {
                raised.entry(f.key.clone()).or_insert(f);
            }
            Decision::Clear(k) => {
                cleared.insert(k);
            }
        }
    }
    let mut out = Changes::default();
    for k in cleared {
        if open.contains_key(&k) && !raised.contains_key(&k) {
            out.clear.push(k);
        }
    }
    for (k, f) in raised {
        match open.get(&k) {
            None => out.open.push(f),
            Some(reason) if *reason != f.reason => out.update.push(f),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(k: &str, reason: &str) -> Finding {
        Finding {
            key: k.into(),
            kind: AlarmKind::MeterSilent,
            subject: Subject::default(),
            reason: reason.into(),
        }
    }

    #[test]
    fn reconcile_opens_once_clears_open_ones_and_updates_reasons() {
        let open: BTreeMap<String, String> = [
            ("a".to_string(), "r".to_string()),
            ("b".to_string(), "r".to_string()),
            ("c".to_string(), "r".to_string()),
        ]
        .into();
        let ch = reconcile(
            &open,
            vec![
                Decision::Open(finding("a", "r")), // still open, same reason: nothing
                Decision::Open(finding("b", "r2")), // still open, new figures: update
                Decision::Clear("c".into()),       // open: clear
                Decision::Clear("d".into()),       // not open: nothing
                Decision::Open(finding("e", "r")), // new: open
                Decision::Open(finding("e", "r-dup")), // same key twice: one alarm
                Decision::Clear("e".into()),       // raised and cleared: stays raised
            ],
        );
        assert_eq!(ch.open, vec![finding("e", "r")]);
        assert_eq!(ch.clear, vec!["c".to_string()]);
        assert_eq!(ch.update, vec![finding("b", "r2")]);
    }

    #[test]
    fn kinds_round_trip() {
        for k in AlarmKind::ALL {
            assert_eq!(AlarmKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(AlarmKind::parse("nope"), None);
    }
}
