//! Tests of the pure batch building: sums per village and district, digests that follow
//! the night's figures only, revisions and keys.

use super::*;

fn night(hh: &str, v: &str, wh: i64, quality: &str) -> FeedNight {
    FeedNight {
        household: hh.into(),
        night: "2025-11-01".into(),
        season: "2025-2026".into(),
        wh,
        quality: quality.into(),
        flags: vec![],
        district: if v == "c" { "密云区" } else { "怀柔区" }.into(),
        town: "雁栖镇".into(),
        village: v.into(),
    }
}

fn op(hh: &str, v: &str, live: bool, running: bool, gw: &str) -> HouseholdOp {
    HouseholdOp {
        id: hh.into(),
        district: if v == "c" { "密云区" } else { "怀柔区" }.into(),
        town: "雁栖镇".into(),
        village: v.into(),
        live,
        running,
        gateways: vec![gw.into()],
    }
}

fn statement(hh: &str, wh: i64, city: i64) -> StatementRow {
    StatementRow {
        household: hh.into(),
        season: "2025-2026".into(),
        offpeak_wh: wh,
        subsidised_wh: wh,
        cap_wh: 10_000_000,
        cap_reached_on: None,
        city_fen: city,
        district_fen: city,
        valley_charge_fen: 3 * city,
        nights_actual: 1,
        nights_estimated: 0,
        nights_missing: 0,
        flags: vec![],
    }
}

struct Fixture {
    nights: Vec<FeedNight>,
    households: Vec<HouseholdOp>,
    online: BTreeSet<String>,
    statements: Vec<(StatementRow, [String; 3])>,
    plan: Vec<PlanRow>,
    alarms: Vec<(Option<String>, Option<String>)>,
}

fn fixture() -> Fixture {
    let place = |v: &str| {
        let d = if v == "c" { "密云区" } else { "怀柔区" };
        [d.to_string(), "雁栖镇".to_string(), v.to_string()]
    };
    Fixture {
        nights: vec![
            night("hh-1", "a", 12_345, "actual"),
            night("hh-2", "a", 7_001, "estimated"),
            night("hh-3", "b", 0, "missing"),
            night("hh-4", "c", 999, "actual"),
            FeedNight {
                night: "2025-11-02".into(),
                ..night("hh-1", "a", 50_000, "actual")
            },
        ],
        households: vec![
            op("hh-1", "a", true, true, "gw-1"),
            op("hh-2", "a", true, false, "gw-1"),
            op("hh-3", "b", false, false, "gw-2"),
            op("hh-4", "c", true, true, "gw-3"),
            op("hh-5", "a", false, false, "gw-4"),
        ],
        online: ["gw-1".to_string(), "gw-3".to_string()].into(),
        statements: vec![
            (statement("hh-1", 100_000, 1_000), place("a")),
            (statement("hh-2", 50_000, 500), place("a")),
            (statement("hh-4", 9_000, 90), place("c")),
        ],
        plan: crate::monitor::progress::plan_2018(),
        alarms: vec![
            (Some("怀柔区".into()), Some("a".into())),
            (Some("怀柔区".into()), Some("a".into())),
            (Some("怀柔区".into()), None),
            (Some("密云区".into()), Some("c".into())),
            (None, None),
        ],
    }
}

fn build(f: &Fixture, at: i64) -> Vec<Draft> {
    drafts(&Inputs {
        night: "2025-11-01",
        season: "2025-2026",
        generated_at: at,
        nights: &f.nights,
        households: &f.households,
        gateways_online: &f.online,
        alarms_open: &f.alarms,
        statements: &f.statements,
        plan: &f.plan,
        with_households: true,
    })
}

#[test]
fn villages_and_districts_sum_their_households() {
    let f = fixture();
    let d = build(&f, 1);
    let subjects: Vec<&str> = d.iter().map(|x| x.subject.as_str()).collect();
    assert_eq!(
        subjects,
        vec![
            village_subject("密云区", "雁栖镇", "c").as_str(),
            village_subject("怀柔区", "雁栖镇", "a").as_str(),
            village_subject("怀柔区", "雁栖镇", "b").as_str(),
            district_subject("密云区").as_str(),
            district_subject("怀柔区").as_str(),
        ]
    );
    let a = &d[1].body;
    assert_eq!(a["night_totals"]["offpeak_wh"], json!(12_345 + 7_001));
    assert_eq!(a["night_totals"]["offpeak_kwh"], json!("19.346"));
    assert_eq!(
        (
            &a["night_totals"]["actual"],
            &a["night_totals"]["estimated"]
        ),
        (&json!(1), &json!(1))
    );
    assert_eq!(a["operation"]["households_enrolled"], json!(3));
    assert_eq!(a["operation"]["households_live"], json!(2));
    assert_eq!(a["operation"]["heat_pumps_running"], json!(1));
    assert_eq!(a["operation"]["gateways_total"], json!(2));
    assert_eq!(a["operation"]["gateways_online"], json!(1));
    assert_eq!(a["operation"]["alarms_open"], json!(2));
    assert_eq!(d[2].body["operation"]["alarms_open"], json!(0));
    assert_eq!(d[4].body["operation"]["alarms_open"], json!(3));
    assert_eq!(d[3].body["operation"]["alarms_open"], json!(1));
    assert_eq!(a["season_to_date"]["subsidy_fen"], json!(2 * (1_000 + 500)));
    assert_eq!(a["season_to_date"]["offpeak_wh"], json!(150_000));
    let hh = a["households"].as_array().unwrap();
    assert_eq!(
        hh.len(),
        2,
        "a household without a stored night is not listed"
    );
    assert_eq!(hh[0]["household"], json!("hh-1"));
    assert_eq!(hh[0]["offpeak_wh"], json!(12_345));
    let huairou = &d[4].body;
    assert_eq!(huairou["night_totals"]["offpeak_wh"], json!(12_345 + 7_001));
    assert_eq!(huairou["night_totals"]["missing"], json!(1));
    assert_eq!(huairou["operation"]["villages_enrolled"], json!(2));
    assert_eq!(huairou["operation"]["villages_live"], json!(1));
    assert_eq!(huairou["operation"]["villages_planned"], json!(17));
    assert_eq!(huairou["operation"]["households_enrolled"], json!(4));
    assert_eq!(huairou["season_to_date"]["city_subsidy_fen"], json!(1_500));
    assert_eq!(d[3].body["night_totals"]["offpeak_wh"], json!(999));
}

#[test]
fn the_digest_follows_the_nights_figures_only() {
    let mut f = fixture();
    let first = build(&f, 1);
    f.online.clear();
    f.alarms.clear();
    f.households[0].running = false;
    f.statements[0].0.city_fen += 7;
    let later = build(&f, 99);
    for (x, y) in first.iter().zip(&later) {
        assert_eq!(x.digest, y.digest, "{}", x.subject);
    }
    f.nights[1].wh += 1;
    let corrected = build(&f, 100);
    assert_ne!(first[1].digest, corrected[1].digest, "village a");
    assert_ne!(first[4].digest, corrected[4].digest, "district 怀柔区");
    assert_eq!(first[2].digest, corrected[2].digest, "village b");
    assert_eq!(first[3].digest, corrected[3].digest, "密云区");
}

#[test]
fn finalize_gives_revisions_and_names_the_corrected_batch() {
    let f = fixture();
    let d = build(&f, 1).remove(1);
    let b0 = finalize(d.clone(), None).unwrap();
    assert_eq!(b0.revision, 0);
    assert_eq!(b0.key, format!("{}:2025-11-01:r0", d.subject));
    let body: Value = serde_json::from_str(&b0.body).unwrap();
    assert_eq!(body["idempotency_key"], json!(b0.key));
    assert_eq!(body["corrects"], Value::Null);
    let latest = LatestRevision {
        revision: 0,
        digest: b0.digest.clone(),
        key: b0.key.clone(),
    };
    assert!(finalize(d.clone(), Some(&latest)).is_none());
    let changed = Draft {
        digest: "other".into(),
        ..d
    };
    let b1 = finalize(changed, Some(&latest)).unwrap();
    assert_eq!(b1.revision, 1);
    assert!(b1.key.ends_with(":r1"));
    let body: Value = serde_json::from_str(&b1.body).unwrap();
    assert_eq!(body["corrects"], json!(b0.key));
}

#[test]
fn keys_are_ascii_and_unambiguous() {
    assert_eq!(pct("a-b_c.d~e"), "a-b_c.d~e");
    assert_eq!(pct("a/b:c"), "a%2Fb%3Ac");
    assert_eq!(pct("区"), "%E5%8C%BA");
    let k = idempotency_key(
        &village_subject("怀柔区", "雁栖镇", "下辛庄村"),
        "2025-11-01",
        2,
    );
    assert!(k.is_ascii() && k.ends_with(":2025-11-01:r2"), "{k}");
    assert_eq!(k.matches(':').count(), 3);
}
