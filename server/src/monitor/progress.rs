//! Progress against the 2018 plan (`shared/data/task-allocation-2018.csv`, compiled in):
//! per district, villages and households enrolled, live (gateway online and meters
//! reporting this season) and running, next to the plan's villages, public sites and
//! seed-agriculture area; per village, households enrolled, live and running. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// The 2018 task allocation as published (comment lines start with `#`).
pub const PLAN_2018_CSV: &str = include_str!("../../../shared/data/task-allocation-2018.csv");

/// One district's row of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    /// 区, as in the registry.
    pub district: String,
    /// Pinyin name.
    pub district_pinyin: String,
    /// Villages to convert (改造村庄).
    pub villages: u32,
    /// Village committees and public service sites (村委会及村民公共服务场所).
    pub public_sites: u32,
    /// Seed-agriculture facility area (籽种设施农业面积), m².
    pub seed_agriculture_m2: u64,
}

/// A malformed plan line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan line {line}: {message}")]
pub struct PlanError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses the plan CSV: `seq,district,district_pinyin,villages,public_sites,seed_agriculture_m2`.
pub fn parse_plan(text: &str) -> Result<Vec<PlanRow>, PlanError> {
    let mut rows = Vec::new();
    let mut header = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if std::mem::take(&mut header) {
            continue;
        }
        let err = |message: String| PlanError {
            line: i + 1,
            message,
        };
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [_seq, district, pinyin, villages, sites, seed] = f.as_slice() else {
            return Err(err(format!("expected 6 columns, found {}", f.len())));
        };
        let num = |name: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|e| err(format!("{name} {v:?}: {e}")))
        };
        rows.push(PlanRow {
            district: district.to_string(),
            district_pinyin: pinyin.to_string(),
            villages: u32::try_from(num("villages", villages)?).map_err(|e| err(e.to_string()))?,
            public_sites: u32::try_from(num("public_sites", sites)?)
                .map_err(|e| err(e.to_string()))?,
            seed_agriculture_m2: num("seed_agriculture_m2", seed)?,
        });
    }
    Ok(rows)
}

/// The compiled-in 2018 plan (empty if it could not be read, which a unit test rules out).
pub fn plan_2018() -> Vec<PlanRow> {
    parse_plan(PLAN_2018_CSV).unwrap_or_default()
}

/// One household as progress needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HouseholdFact {
    /// 区
    pub district: String,
    /// 镇/乡
    pub town: String,
    /// 村
    pub village: String,
    /// Its gateway is online and a meter has reported this season.
    pub live: bool,
    /// Its heat pump runs now.
    pub running: bool,
}

/// One village's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VillageProgress {
    /// 村
    pub village: String,
    /// 镇/乡
    pub town: String,
    /// Households in the registry.
    pub enrolled: u64,
    /// Households live.
    pub live: u64,
    /// Households whose heat pump runs now.
    pub running: u64,
}

/// One district's counts against its plan row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DistrictProgress {
    /// 区
    pub district: String,
    /// The plan, `None` for a district the plan does not list.
    pub plan: Option<PlanRow>,
    /// Villages with households in the registry.
    pub villages_enrolled: u64,
    /// Villages with at least one live household.
    pub villages_live: u64,
    /// Households in the registry.
    pub households_enrolled: u64,
    /// Households live.
    pub households_live: u64,
    /// Households whose heat pump runs now.
    pub households_running: u64,
    /// Live villages against the plan's villages, per mille (`None` without a plan).
    pub villages_live_permille: Option<u64>,
    /// The villages, by town then name.
    pub villages: Vec<VillageProgress>,
}

/// Progress of every planned district (plan order), then of unplanned ones (by name).
pub fn progress(plan: &[PlanRow], households: &[HouseholdFact]) -> Vec<DistrictProgress> {
    let mut by: BTreeMap<&str, BTreeMap<(&str, &str), VillageProgress>> = BTreeMap::new();
    for h in households {
        let v = by
            .entry(&h.district)
            .or_default()
            .entry((&h.town, &h.village))
            .or_insert_with(|| VillageProgress {
                village: h.village.clone(),
                town: h.town.clone(),
                enrolled: 0,
                live: 0,
                running: 0,
            });
        v.enrolled += 1;
        v.live += u64::from(h.live);
        v.running += u64::from(h.running);
    }
    let planned: BTreeSet<&str> = plan.iter().map(|p| p.district.as_str()).collect();
    let build = |district: &str, plan: Option<&PlanRow>| {
        let villages: Vec<VillageProgress> = by
            .get(district)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let live = villages.iter().filter(|v| v.live > 0).count() as u64;
        DistrictProgress {
            district: district.to_string(),
            plan: plan.cloned(),
            villages_enrolled: villages.len() as u64,
            villages_live: live,
            households_enrolled: villages.iter().map(|v| v.enrolled).sum(),
            households_live: villages.iter().map(|v| v.live).sum(),
            households_running: villages.iter().map(|v| v.running).sum(),
            villages_live_permille: plan
                .filter(|p| p.villages > 0)
                .map(|p| live * 1000 / u64::from(p.villages)),
            villages,
        }
    };
    let mut out: Vec<DistrictProgress> = plan.iter().map(|p| build(&p.district, Some(p))).collect();
    out.extend(
        by.keys()
            .filter(|d| !planned.contains(*d))
            .map(|d| build(d, None)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_plan_has_every_district_with_its_figures() {
        let plan = parse_plan(PLAN_2018_CSV).unwrap();
        assert_eq!(plan.len(), 8);
        let total: u32 = plan.iter().map(|p| p.villages).sum();
        assert_eq!(total, 5 + 22 + 145 + 54 + 116 + 17 + 47 + 44);
        let huairou = plan.iter().find(|p| p.district == "怀柔区").unwrap();
        assert_eq!(
            (
                huairou.villages,
                huairou.public_sites,
                huairou.seed_agriculture_m2
            ),
            (17, 17, 14_000)
        );
        assert_eq!(huairou.district_pinyin, "huairou");
        assert!(parse_plan("h\n1,a,b,x,1,0\n")
            .unwrap_err()
            .message
            .contains("villages"));
        assert!(parse_plan("h\n1,a,b\n").is_err());
    }

    fn hh(d: &str, v: &str, live: bool, running: bool) -> HouseholdFact {
        HouseholdFact {
            district: d.into(),
            town: "t".into(),
            village: v.into(),
            live,
            running,
        }
    }

    #[test]
    fn counts_per_village_and_district_against_the_plan() {
        let plan = plan_2018();
        let p = progress(
            &plan,
            &[
                hh("怀柔区", "a", true, true),
                hh("怀柔区", "a", true, false),
                hh("怀柔区", "a", false, false),
                hh("怀柔区", "b", false, false),
                hh("外区", "c", true, true),
            ],
        );
        assert_eq!(p.len(), 9);
        let h = p.iter().find(|d| d.district == "怀柔区").unwrap();
        assert_eq!((h.villages_enrolled, h.villages_live), (2, 1));
        assert_eq!(
            (
                h.households_enrolled,
                h.households_live,
                h.households_running
            ),
            (4, 2, 1)
        );
        assert_eq!(h.villages_live_permille, Some(1000 / 17));
        assert_eq!(
            h.villages[0],
            VillageProgress {
                village: "a".into(),
                town: "t".into(),
                enrolled: 3,
                live: 2,
                running: 1
            }
        );
        let last = p.last().unwrap();
        assert_eq!(
            (
                last.district.as_str(),
                last.plan.is_none(),
                last.households_live
            ),
            ("外区", true, 1)
        );
        let miyun = p.iter().find(|d| d.district == "密云区").unwrap();
        assert_eq!(
            (miyun.households_enrolled, miyun.villages_live_permille),
            (0, Some(0))
        );
    }
}
