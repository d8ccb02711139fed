//! Tests of the registry CSV: row/column errors, re-import idempotence, replacement rows.

use super::*;

const HEADER: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n";

fn policy() -> Policy {
    Policy::beijing_2018()
}

fn errors(csv: &str) -> Vec<RowError> {
    match parse_csv(csv.as_bytes(), &policy()) {
        Err(ImportError::Invalid(e)) => e,
        other => panic!("expected row errors, got {other:?}"),
    }
}

#[test]
fn the_contract_row_parses_to_local_midnight() {
    let csv = format!("{HEADER}hh-0001,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,123456781012,2025-10-01,,gw-0001,\n");
    let reg = parse_csv(csv.as_bytes(), &policy()).unwrap();
    assert_eq!(reg.households.len(), 1);
    let h = &reg.households[0];
    assert_eq!(
        (h.district.as_str(), h.village.as_str(), h.max_power_w),
        ("怀柔区", "下辛庄村", None)
    );
    // 2025-10-01 00:00 +08:00 = 2025-09-30 16:00 UTC
    assert_eq!(reg.meters[0].valid_from, 1_759_248_000);
    assert_eq!(reg.meters[0].valid_to, None);
    assert_eq!(reg.meters[0].gateway, "gw-0001");
}

#[test]
fn bom_and_rfc3339_and_replacement_rows() {
    let csv = format!(
        "\u{feff}{HEADER}hh-1,d,t,v,85.5,air_source_heat_pump,m-old,2025-10-01,2025-12-10T14:30:00+08:00,gw-1,12000\n\
         hh-1,d,t,v,85.5,air_source_heat_pump,m-new,2025-12-10T14:30:00+08:00,,gw-1,12000\n"
    );
    let reg = parse_csv(csv.as_bytes(), &policy()).unwrap();
    assert_eq!(reg.households.len(), 1);
    assert_eq!(reg.households[0].max_power_w, Some(12_000));
    let old = reg.meters.iter().find(|m| m.meter == "m-old").unwrap();
    let new = reg.meters.iter().find(|m| m.meter == "m-new").unwrap();
    // 2025-12-10 14:30 +08:00 = 06:30 UTC
    assert_eq!(old.valid_to, Some(1_765_348_200));
    assert_eq!(new.valid_from, 1_765_348_200);
}

#[test]
fn errors_name_row_and_column() {
    let csv = format!(
        "{HEADER}hh-1,d,t,v,120,hp,m1,2025-10-01,,gw-1,\n\
         hh-2,d,t,v,12x,hp,m2,2025-13-01,,GW_BAD,-5\n\
         hh-3,d,t,v,120,hp,bad meter,2025-10-01,2025-09-01,gw-1,\n"
    );
    let e = errors(&csv);
    let got: Vec<(u64, &str)> = e.iter().map(|e| (e.row, e.column.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (3, "heating_area_m2"),
            (3, "meter_from"),
            (3, "gateway"),
            (3, "max_power_w"),
            (4, "meter")
        ]
    );
    assert!(e[1].message.contains("2025-13-01"), "{}", e[1]);
    assert_eq!(
        e[0].to_string().split(':').next(),
        Some("row 3, column heating_area_m2")
    );
    // meter_to before meter_from (row 2 of data = line 4) once the meter id is fixed
    let e = errors(
        &csv.replace("bad meter", "m3")
            .replace("hh-2,d,t,v,12x,hp,m2,2025-13-01,,GW_BAD,-5\n", ""),
    );
    assert_eq!((e[0].row, e[0].column.as_str()), (3, "meter_to"));
}

#[test]
fn header_problems_are_row_one() {
    let e = errors("household,district\nhh-1,d\n");
    assert!(e.iter().all(|e| e.row == 1));
    assert!(e.iter().any(|e| e.column == "meter_from"));
    let e = errors(&format!(
        "{}hh-1\n",
        HEADER.replace("max_power_w", "max_power_w,colour")
    ));
    assert_eq!((e[0].row, e[0].column.as_str()), (1, "colour"));
}

#[test]
fn inconsistent_households_and_double_meters_are_refused() {
    let csv = format!(
        "{HEADER}hh-1,d,t,v,120,hp,m1,2025-10-01,,gw-1,\n\
         hh-1,d,t,OTHER,120,hp,m2,2025-10-01,,gw-1,\n\
         hh-2,d,t,v,120,hp,m1,2025-11-01,,gw-1,\n"
    );
    let e = errors(&csv);
    assert_eq!((e[0].row, e[0].column.as_str()), (3, "village"));
    assert!(e[0].message.contains("row 2"));
    assert_eq!((e[1].row, e[1].column.as_str()), (4, "meter_from"));
    assert!(e[1].message.contains("hh-1"), "{}", e[1]);
}

#[test]
fn seasons_touched_by_a_meter() {
    let cal = Calendar::new(policy());
    let from = 1_759_248_000; // 2025-10-01 local
    let now = 1_767_225_600; // 2026-01-01 local
    assert_eq!(
        seasons_touched(&cal, from, None, now),
        vec![Season { start_year: 2025 }]
    );
    // installed in 2024, removed in summer 2025: only 2024-2025
    let from24 = from - 365 * 86_400;
    assert_eq!(
        seasons_touched(&cal, from24, Some(from - 60 * 86_400), now),
        vec![Season { start_year: 2024 }]
    );
}

#[tokio::test]
async fn reimport_updates_and_never_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/r.db", dir.path().display()))
        .await
        .unwrap();
    let now = 1_767_225_600;
    let v1 = format!(
        "{HEADER}hh-1,d,t,v,120,hp,m1,2025-10-01,,gw-1,\nhh-2,d,t,v,90,hp,m2,2025-10-01,,gw-1,\n"
    );
    let s = import(&store, v1.as_bytes(), &policy(), "test", now)
        .await
        .unwrap();
    assert_eq!(
        (s.households_added, s.meters_added, s.gateways_added),
        (2, 2, 1)
    );
    let again = import(&store, v1.as_bytes(), &policy(), "test", now)
        .await
        .unwrap();
    assert_eq!(
        again,
        ImportSummary {
            unchanged: 4,
            ..Default::default()
        }
    );
    assert_eq!(store.household_ids().await.unwrap(), vec!["hh-1", "hh-2"]);
    let version = store.registry_version().await.unwrap();
    // meter m1 replaced on Dec 10: the old row gets meter_to, a new row is added
    let v2 = format!(
        "{HEADER}hh-1,d,t,v,120,hp,m1,2025-10-01,2025-12-10,gw-1,\nhh-1,d,t,v,120,hp,m9,2025-12-10,,gw-2,\nhh-2,d,t,v,95,hp,m2,2025-10-01,,gw-1,\n"
    );
    let s = import(&store, v2.as_bytes(), &policy(), "test", now)
        .await
        .unwrap();
    assert_eq!(
        s,
        ImportSummary {
            households_updated: 1,
            meters_added: 1,
            meters_updated: 1,
            gateways_added: 1,
            unchanged: 2,
            ..Default::default()
        }
    );
    assert!(store.registry_version().await.unwrap() > version);
    let meters = store.meters_of("hh-1").await.unwrap();
    assert_eq!(
        meters.iter().map(|m| m.meter.as_str()).collect::<Vec<_>>(),
        vec!["m1", "m9"]
    );
    assert_eq!(meters[0].valid_to, Some(meters[1].valid_from));
    assert_eq!(
        store
            .household("hh-2")
            .await
            .unwrap()
            .unwrap()
            .heating_area_m2,
        "95"
    );
    let log = store.audit_log().await.unwrap();
    let updates: Vec<_> = log
        .iter()
        .filter(|e| e.action == "update")
        .map(|e| e.entity_key.as_str())
        .collect();
    assert_eq!(updates, vec!["hh-2", "hh-1/m1"]);
    let m1 = log
        .iter()
        .find(|e| e.entity_key == "hh-1/m1" && e.action == "update")
        .unwrap();
    assert!(
        m1.before_json
            .as_deref()
            .unwrap()
            .contains("\"valid_to\":null"),
        "{m1:?}"
    );
    // changed households are marked for recompute of the season
    let dirty = store.dirty(10).await.unwrap();
    assert!(dirty
        .iter()
        .any(|(h, s, _)| h == "hh-1" && s == "2025-2026"));
}

#[tokio::test]
async fn a_broken_file_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/r.db", dir.path().display()))
        .await
        .unwrap();
    let csv = format!(
        "{HEADER}hh-1,d,t,v,120,hp,m1,2025-10-01,,gw-1,\nhh-2,d,t,v,90,hp,m2,yesterday,,gw-1,\n"
    );
    let e = import(&store, csv.as_bytes(), &policy(), "test", 0)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string().lines().next().unwrap().split(':').next(),
        Some("row 3, column meter_from")
    );
    assert!(store.household_ids().await.unwrap().is_empty());
}
