//! Building the feed's batches from figures, pure: one batch per village and one per
//! district for a night, each with the digest of the night's figures that decides
//! whether a later build is a correction. Format: `docs/city-feed.md`.

use std::collections::{BTreeMap, BTreeSet};

use qingnuan_shared::units::{Fen, Wh};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::monitor::progress::PlanRow;
use crate::store::feed::{FeedNight, LatestRevision, NewBatch};
use crate::store::StatementRow;

/// Version of the payload format (`"v"`).
pub const FORMAT_VERSION: u64 = 1;

/// A household's operation now, as the monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HouseholdOp {
    /// Household id.
    pub id: String,
    /// 区
    pub district: String,
    /// 镇/乡
    pub town: String,
    /// 村
    pub village: String,
    /// Gateway online and a meter reporting this season.
    pub live: bool,
    /// Heat pump running now.
    pub running: bool,
    /// Gateways of its current meters.
    pub gateways: Vec<String>,
}

/// Everything one night's batches are built from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// `YYYY-MM-DD`.
    pub night: &'a str,
    /// `YYYY-YYYY`, the season the night pays into.
    pub season: &'a str,
    /// UTC Unix seconds.
    pub generated_at: i64,
    /// The stored nights labelled `night` (other labels are ignored).
    pub nights: &'a [FeedNight],
    /// Every registry household with its operation now.
    pub households: &'a [HouseholdOp],
    /// Gateways online now.
    pub gateways_online: &'a BTreeSet<String>,
    /// (district, village) of every open alarm (maintenance work outstanding).
    pub alarms_open: &'a [(Option<String>, Option<String>)],
    /// The season's statements with (district, town, village).
    pub statements: &'a [(StatementRow, [String; 3])],
    /// The 2018 plan (villages to convert per district).
    pub plan: &'a [PlanRow],
    /// Whether village batches list each household's night.
    pub with_households: bool,
}

/// A batch before it is given a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// `village:<district>/<town>/<village>` or `district:<district>`, percent-encoded.
    pub subject: String,
    /// `YYYY-MM-DD`.
    pub night: String,
    /// SHA-256 hex of the night's figures (`night_totals` and the household list).
    pub digest: String,
    /// The body without `idempotency_key`, `revision` and `corrects`.
    pub body: Map<String, Value>,
}

/// Percent-encodes everything but `A-Z a-z 0-9 - . _ ~` (so keys are ASCII and `:`/`/`
/// inside names cannot be confused with separators).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The subject of a village.
pub fn village_subject(district: &str, town: &str, village: &str) -> String {
    format!("village:{}/{}/{}", pct(district), pct(town), pct(village))
}

/// The subject of a district.
pub fn district_subject(district: &str) -> String {
    format!("district:{}", pct(district))
}

/// The idempotency key of a revision of (subject, night).
pub fn idempotency_key(subject: &str, night: &str, revision: i64) -> String {
    format!("{subject}:{night}:r{revision}")
}

fn kwh(wh: i64) -> String {
    Wh(wh).kwh_string().to_string()
}

fn digest(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

#[derive(Default)]
struct Ops {
    enrolled: u64,
    live: u64,
    running: u64,
    gateways: BTreeSet<String>,
}

#[derive(Default)]
struct NightSum {
    households: u64,
    wh: i64,
    actual: u64,
    estimated: u64,
    missing: u64,
}

impl NightSum {
    fn add(&mut self, n: &FeedNight) {
        self.households += 1;
        self.wh += n.wh;
        match n.quality.as_str() {
            "actual" => self.actual += 1,
            "estimated" => self.estimated += 1,
            _ => self.missing += 1,
        }
    }
    fn json(&self) -> Value {
        json!({
            "households": self.households, "offpeak_wh": self.wh, "offpeak_kwh": kwh(self.wh),
            "actual": self.actual, "estimated": self.estimated, "missing": self.missing,
        })
    }
}

#[derive(Default)]
struct SeasonSum {
    households: u64,
    offpeak_wh: i64,
    subsidised_wh: i64,
    city_fen: i64,
    district_fen: i64,
    valley_charge_fen: i64,
}

impl SeasonSum {
    fn add(&mut self, s: &StatementRow) {
        self.households += 1;
        self.offpeak_wh += s.offpeak_wh;
        self.subsidised_wh += s.subsidised_wh;
        self.city_fen += s.city_fen;
        self.district_fen += s.district_fen;
        self.valley_charge_fen += s.valley_charge_fen;
    }
    fn json(&self) -> Value {
        let subsidy = self.city_fen + self.district_fen;
        json!({
            "households": self.households,
            "offpeak_wh": self.offpeak_wh, "offpeak_kwh": kwh(self.offpeak_wh),
            "subsidised_wh": self.subsidised_wh, "subsidised_kwh": kwh(self.subsidised_wh),
            "city_subsidy_fen": self.city_fen, "district_subsidy_fen": self.district_fen,
            "subsidy_fen": subsidy, "subsidy_yuan": Fen(subsidy).yuan_string().to_string(),
            "valley_charge_fen": self.valley_charge_fen,
        })
    }
}

type Place = (String, String, String);

/// The drafts of one night: every village with enrolled households (by district, town,
/// village), then every district.
pub fn drafts(inp: &Inputs<'_>) -> Vec<Draft> {
    let mut ops: BTreeMap<Place, Ops> = BTreeMap::new();
    for h in inp.households {
        let o = ops
            .entry((h.district.clone(), h.town.clone(), h.village.clone()))
            .or_default();
        o.enrolled += 1;
        o.live += u64::from(h.live);
        o.running += u64::from(h.running);
        o.gateways.extend(h.gateways.iter().cloned());
    }
    let mut nights: BTreeMap<Place, Vec<&FeedNight>> = BTreeMap::new();
    for n in inp.nights.iter().filter(|n| n.night == inp.night) {
        nights
            .entry((n.district.clone(), n.town.clone(), n.village.clone()))
            .or_default()
            .push(n);
    }
    let mut season: BTreeMap<Place, SeasonSum> = BTreeMap::new();
    for (s, [d, t, v]) in inp.statements {
        season
            .entry((d.clone(), t.clone(), v.clone()))
            .or_default()
            .add(s);
    }
    let head = |kind: &str| {
        let mut m = Map::new();
        m.insert("v".into(), json!(FORMAT_VERSION));
        m.insert("kind".into(), json!(kind));
        m.insert("night".into(), json!(inp.night));
        m.insert("season".into(), json!(inp.season));
        m.insert("generated_at".into(), json!(inp.generated_at));
        m
    };
    let online = |gws: &BTreeSet<String>| {
        gws.iter()
            .filter(|g| inp.gateways_online.contains(*g))
            .count()
    };
    // Open alarms of a district (every one with that district), or of a village in it
    // (alarms name the district and village, not the town).
    let alarms = |d: &str, v: Option<&str>| {
        inp.alarms_open
            .iter()
            .filter(|(ad, av)| {
                ad.as_deref() == Some(d) && v.is_none_or(|v| av.as_deref() == Some(v))
            })
            .count()
    };
    let mut out = Vec::new();
    // District totals, folded from the villages.
    let mut districts: BTreeMap<String, (Ops, NightSum, SeasonSum, u64, u64)> = BTreeMap::new();
    for (place, o) in &ops {
        let (d, t, v) = place;
        let mut ns = NightSum::default();
        let mut list = Vec::new();
        let mut hh: Vec<&&FeedNight> = nights
            .get(place)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        hh.sort_by(|a, b| a.household.cmp(&b.household));
        for n in hh {
            ns.add(n);
            list.push(json!({
                "household": n.household, "offpeak_wh": n.wh, "offpeak_kwh": kwh(n.wh),
                "quality": n.quality, "flags": n.flags,
            }));
        }
        let ss = season.remove(place).unwrap_or_default();
        let figures = json!({"night_totals": ns.json(), "households": list});
        let mut body = head("village");
        body.insert("district".into(), json!(d));
        body.insert("town".into(), json!(t));
        body.insert("village".into(), json!(v));
        body.insert(
            "operation".into(),
            json!({
                "households_enrolled": o.enrolled, "households_live": o.live,
                "heat_pumps_running": o.running,
                "gateways_total": o.gateways.len(), "gateways_online": online(&o.gateways),
                "alarms_open": alarms(d, Some(v)),
            }),
        );
        body.insert("night_totals".into(), ns.json());
        body.insert("season_to_date".into(), ss.json());
        if inp.with_households {
            body.insert("households".into(), figures["households"].clone());
        }
        out.push(Draft {
            subject: village_subject(d, t, v),
            night: inp.night.to_string(),
            digest: digest(&figures),
            body,
        });
        let e = districts.entry(d.clone()).or_default();
        e.0.enrolled += o.enrolled;
        e.0.live += o.live;
        e.0.running += o.running;
        e.0.gateways.extend(o.gateways.iter().cloned());
        e.1.households += ns.households;
        e.1.wh += ns.wh;
        e.1.actual += ns.actual;
        e.1.estimated += ns.estimated;
        e.1.missing += ns.missing;
        e.2.households += ss.households;
        e.2.offpeak_wh += ss.offpeak_wh;
        e.2.subsidised_wh += ss.subsidised_wh;
        e.2.city_fen += ss.city_fen;
        e.2.district_fen += ss.district_fen;
        e.2.valley_charge_fen += ss.valley_charge_fen;
        e.3 += 1;
        e.4 += u64::from(o.live > 0);
    }
    for (d, (o, ns, ss, villages, villages_live)) in &districts {
        let figures = json!({"night_totals": ns.json()});
        let mut body = head("district");
        body.insert("district".into(), json!(d));
        let plan = inp
            .plan
            .iter()
            .find(|p| &p.district == d)
            .map(|p| p.villages);
        body.insert(
            "operation".into(),
            json!({
                "villages_planned": plan, "villages_enrolled": villages, "villages_live": villages_live,
                "households_enrolled": o.enrolled, "households_live": o.live,
                "heat_pumps_running": o.running,
                "gateways_total": o.gateways.len(), "gateways_online": online(&o.gateways),
                "alarms_open": alarms(d, None),
            }),
        );
        body.insert("night_totals".into(), ns.json());
        body.insert("season_to_date".into(), ss.json());
        out.push(Draft {
            subject: district_subject(d),
            night: inp.night.to_string(),
            digest: digest(&figures),
            body,
        });
    }
    out
}

/// The batch to enqueue for `draft` given the newest stored revision of its (subject,
/// night): `None` when the figures are unchanged (a rebuild is not a new batch),
/// revision 0 when none is stored, else the next revision, naming the one it corrects.
pub fn finalize(draft: Draft, latest: Option<&LatestRevision>) -> Option<NewBatch> {
    if latest.is_some_and(|l| l.digest == draft.digest) {
        return None;
    }
    let revision = latest.map_or(0, |l| l.revision + 1);
    let key = idempotency_key(&draft.subject, &draft.night, revision);
    let mut body = draft.body;
    body.insert("idempotency_key".into(), json!(key));
    body.insert("revision".into(), json!(revision));
    body.insert("corrects".into(), json!(latest.map(|l| l.key.clone())));
    Some(NewBatch {
        key,
        subject: draft.subject,
        night: draft.night,
        revision,
        digest: draft.digest,
        body: Value::Object(body).to_string(),
    })
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
