//! The series the sink writes (docs/influxdb.md): measurement, tag and field names as
//! constants (the Grafana board's test checks its queries against them), and the pure
//! mapping from store rows and monitor state to points. Every field is an integer.

use std::collections::{BTreeMap, BTreeSet};

use influxdb2::models::DataPoint;
use qingnuan_shared::calendar::{Calendar, Night};

use crate::monitor::{MonitorConfig, Snapshot};
use crate::store::{SinkNight, SinkReading};

/// Every accepted reading, at the reading's `ts`.
pub const READING: &str = "qn_reading";
/// Fields of [`READING`]: cumulative energy (Wh), cumulative valley energy (Wh, when the
/// meter reports it), active power (W, when reported).
pub const READING_FIELDS: &[&str] = &["e_wh", "e_valley_wh", "p_w"];
/// Tags of [`READING`].
pub const READING_TAGS: &[&str] = &["district", "village", "gateway", "household", "meter"];

/// One household's night, at the night's 20:00 local instant; a recomputed night is
/// written again at the same instant, which overwrites it.
pub const NIGHT: &str = "qn_night";
/// Fields of [`NIGHT`]: the paid off-peak energy (Wh) and its quality code
/// ([`quality_code`]: 2 actual, 1 estimated, 0 missing).
pub const NIGHT_FIELDS: &[&str] = &["wh", "quality"];
/// Tags of [`NIGHT`].
pub const NIGHT_TAGS: &[&str] = &["district", "village", "household", "season"];

/// Per village, every `status_interval_s`, from the monitor's state.
pub const VILLAGE: &str = "qn_village";
/// Fields of [`VILLAGE`] (counts): gateways serving the village and of them online,
/// households enrolled, live (online gateway, a good read this season) and with the heat
/// pump running.
pub const VILLAGE_FIELDS: &[&str] = &[
    "gateways",
    "gateways_online",
    "households",
    "households_live",
    "heat_pumps_running",
];
/// Tags of [`VILLAGE`].
pub const VILLAGE_TAGS: &[&str] = &["district", "village"];

/// Every measurement with its fields and tags.
pub const MEASUREMENTS: &[(&str, &[&str], &[&str])] = &[
    (READING, READING_FIELDS, READING_TAGS),
    (NIGHT, NIGHT_FIELDS, NIGHT_TAGS),
    (VILLAGE, VILLAGE_FIELDS, VILLAGE_TAGS),
];

/// The night quality as an integer field: `actual` 2, `estimated` 1, `missing` 0, other -1.
pub fn quality_code(quality: &str) -> i64 {
    match quality {
        "actual" => 2,
        "estimated" => 1,
        "missing" => 0,
        _ => -1,
    }
}

/// A point builder with the non-empty tags (line protocol has no empty tag values).
fn builder(
    measurement: &str,
    tags: &[(&str, &str)],
) -> influxdb2::models::data_point::DataPointBuilder {
    tags.iter()
        .filter(|(_, v)| !v.is_empty())
        .fold(DataPoint::builder(measurement), |b, (k, v)| b.tag(*k, *v))
}

/// The point of a stored reading (timestamp in seconds).
pub fn reading_point(r: &SinkReading) -> Option<DataPoint> {
    let mut b = builder(
        READING,
        &[
            ("district", &r.district),
            ("village", &r.village),
            ("gateway", &r.gateway),
            ("household", &r.household),
            ("meter", &r.meter),
        ],
    )
    .field("e_wh", r.e_wh);
    if let Some(v) = r.e_valley_wh {
        b = b.field("e_valley_wh", v);
    }
    if let Some(p) = r.p_w {
        b = b.field("p_w", p);
    }
    b.timestamp(r.ts).build().ok()
}

/// The point of a computed night, at its 20:00 local instant; `None` for a malformed name.
pub fn night_point(n: &SinkNight, cal: &Calendar) -> Option<DataPoint> {
    let night: Night = n.night.parse().ok()?;
    let (open, _) = cal.window(night);
    builder(
        NIGHT,
        &[
            ("district", &n.district),
            ("village", &n.village),
            ("household", &n.household),
            ("season", &n.season),
        ],
    )
    .field("wh", n.wh)
    .field("quality", quality_code(&n.quality))
    .timestamp(open)
    .build()
    .ok()
}

/// One village's counts at an instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VillageStatus {
    /// 区
    pub district: String,
    /// 村
    pub village: String,
    /// Gateways serving the village's current meters.
    pub gateways: i64,
    /// Of them online.
    pub gateways_online: i64,
    /// Households enrolled.
    pub households: i64,
    /// Households live.
    pub households_live: i64,
    /// Households whose heat pump runs.
    pub heat_pumps_running: i64,
}

/// Per-village counts from a monitor snapshot (a gateway serving two villages counts in both).
pub fn village_status(snap: &Snapshot, cal: &Calendar, cfg: &MonitorConfig) -> Vec<VillageStatus> {
    let mut by: BTreeMap<(&str, &str), (VillageStatus, BTreeSet<&str>)> = BTreeMap::new();
    let place: BTreeMap<&str, (&str, &str)> = snap
        .households
        .iter()
        .map(|h| (h.id.as_str(), (h.district.as_str(), h.village.as_str())))
        .collect();
    for h in &snap.households {
        let (live, running) = snap.household_live_running(h, cal, cfg);
        let e = by.entry((&h.district, &h.village)).or_default();
        e.0.households += 1;
        e.0.households_live += i64::from(live);
        e.0.heat_pumps_running += i64::from(running);
    }
    for b in snap.current_bindings() {
        if let Some(p) = place.get(b.household.as_str()) {
            if let Some(e) = by.get_mut(p) {
                e.1.insert(b.gateway.as_str());
            }
        }
    }
    by.into_iter()
        .map(|((district, village), (mut s, gws))| {
            s.district = district.to_string();
            s.village = village.to_string();
            s.gateways = gws.len() as i64;
            s.gateways_online = gws.iter().filter(|g| snap.gateway_online(g, cfg)).count() as i64;
            s
        })
        .collect()
}

/// The point of a village's counts at `now` (UTC Unix seconds).
pub fn village_point(s: &VillageStatus, now: i64) -> Option<DataPoint> {
    builder(
        VILLAGE,
        &[("district", &s.district), ("village", &s.village)],
    )
    .field("gateways", s.gateways)
    .field("gateways_online", s.gateways_online)
    .field("households", s.households)
    .field("households_live", s.households_live)
    .field("heat_pumps_running", s.heat_pumps_running)
    .timestamp(now)
    .build()
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use influxdb2::models::WriteDataPoint;
    use qingnuan_shared::policy::Policy;

    fn line(p: &DataPoint) -> String {
        let mut v = Vec::new();
        p.write_data_point_to(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn a_reading_is_integer_fields_with_its_place() {
        let r = SinkReading {
            seq: 1,
            meter: "m1".into(),
            ts: 1_761_998_400,
            e_wh: 1_234_567,
            e_valley_wh: Some(456),
            p_w: None,
            gateway: "gw-1".into(),
            household: "hh 1".into(),
            district: "怀柔区".into(),
            village: "下辛庄村".into(),
        };
        assert_eq!(
            line(&reading_point(&r).unwrap()),
            "qn_reading,district=怀柔区,gateway=gw-1,household=hh\\ 1,meter=m1,village=下辛庄村 \
             e_valley_wh=456i,e_wh=1234567i 1761998400\n"
        );
        let unbound = SinkReading {
            household: String::new(),
            district: String::new(),
            village: String::new(),
            p_w: Some(1500),
            e_valley_wh: None,
            ..r
        };
        assert_eq!(
            line(&reading_point(&unbound).unwrap()),
            "qn_reading,gateway=gw-1,meter=m1 e_wh=1234567i,p_w=1500i 1761998400\n"
        );
    }

    #[test]
    fn a_night_is_stamped_at_its_20_00_local() {
        let cal = Calendar::new(Policy::beijing_2018());
        let n = SinkNight {
            household: "hh-1".into(),
            night: "2025-11-01".into(),
            season: "2025-2026".into(),
            wh: 20_123,
            quality: "estimated".into(),
            district: "d".into(),
            village: "v".into(),
        };
        // 2025-11-01 20:00 +08:00 = 12:00 UTC.
        assert_eq!(
            line(&night_point(&n, &cal).unwrap()),
            "qn_night,district=d,household=hh-1,season=2025-2026,village=v quality=1i,wh=20123i 1761998400\n"
        );
        assert!(night_point(
            &SinkNight {
                night: "2025-13-01".into(),
                ..n
            },
            &cal
        )
        .is_none());
        assert_eq!(
            ["actual", "estimated", "missing", "?"].map(quality_code),
            [2, 1, 0, -1]
        );
    }

    #[test]
    fn the_schema_names_what_the_points_carry() {
        for (m, fields, tags) in MEASUREMENTS {
            assert!(m.starts_with("qn_"));
            assert!(!fields.is_empty() && !tags.is_empty());
        }
        let s = VillageStatus {
            district: "d".into(),
            village: "v".into(),
            gateways: 2,
            gateways_online: 1,
            households: 5,
            households_live: 4,
            heat_pumps_running: 3,
        };
        let l = line(&village_point(&s, 100).unwrap());
        for f in VILLAGE_FIELDS {
            assert!(l.contains(&format!("{f}=")), "{f}: {l}");
        }
        assert!(
            l.contains("heat_pumps_running=3i") && l.contains("gateways_online=1i"),
            "{l}"
        );
    }
}
