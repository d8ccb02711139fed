//! The monitoring API through the router: every alarm rule raised AND cleared from
//! messages fed through the real validation path, and the gateways, alarms, progress,
//! overview and household endpoints checked against figures derived from the readings.

mod monitor_support;

use axum::http::StatusCode;
use monitor_support::*;
use serde_json::Value;

fn only<'a>(v: &'a Value, key: &str) -> &'a Value {
    let list = v.as_array().unwrap();
    list.iter()
        .find(|a| a["key"] == key)
        .unwrap_or_else(|| panic!("{key} not in {v}"))
}

#[tokio::test]
async fn gateway_offline_inside_the_window_raised_deduplicated_and_cleared() {
    let mut fx = Fixture::new().await;
    fx.receive(
        NOV1_20 - 3600,
        &[Fixture::status("gw-1", true, NOV1_20 - 3600)],
    )
    .await;
    // The last will at 19:50.
    fx.receive(NOV1_20 - 600, &[Fixture::status("gw-1", false, 0)])
        .await;
    fx.at(NOV1_20 + 900).await;
    assert!(
        fx.open_keys("gateway_offline").await.is_empty(),
        "only 15 min inside the window so far"
    );
    fx.at(NOV1_20 + 901).await;
    fx.at(NOV1_20 + 1200).await;
    let open = fx
        .ok("/api/v1/alarms?state=open&kind=gateway_offline")
        .await;
    assert_eq!(
        open.as_array().unwrap().len(),
        1,
        "one alarm however often raised: {open}"
    );
    let a = only(&open, "gateway_offline:gw-1");
    assert_eq!(
        (
            a["gateway"].as_str(),
            a["district"].as_str(),
            a["village"].as_str()
        ),
        (Some("gw-1"), Some("怀柔区"), Some("下辛庄村"))
    );
    assert_eq!(a["opened"], NOV1_20 + 901);
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("since 2025-11-01 19:50"),
        "{a}"
    );
    assert_eq!(
        fx.ok("/api/v1/alarms?district=怀柔区&village=下辛庄村")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(fx
        .ok("/api/v1/alarms?district=延庆区")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    let gws = fx.ok("/api/v1/gateways").await;
    let state = |id: &str| {
        gws.as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(
        (state("gw-1"), state("gw-4")),
        ("offline".into(), "unknown".into())
    );
    // Back online at 20:30: cleared, kept as history.
    fx.receive(
        NOV1_20 + 1800,
        &[Fixture::status("gw-1", true, NOV1_20 + 1800)],
    )
    .await;
    assert!(fx.open_keys("gateway_offline").await.is_empty());
    let cleared = fx
        .ok("/api/v1/alarms?state=cleared&kind=gateway_offline")
        .await;
    let a = only(&cleared, "gateway_offline:gw-1");
    assert_eq!(
        (a["state"].as_str(), a["cleared"].as_i64()),
        (Some("cleared"), Some(NOV1_20 + 1800))
    );
    assert_eq!(
        fx.ok("/api/v1/alarms?state=all")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn gateway_clock_from_sent_raised_and_cleared() {
    let mut fx = Fixture::new().await;
    let t = NOV1_20 + 60;
    let b = fx.batch("gw-2", Some(t + 600), vec![good("m3", t, 1_000, 2000)]);
    fx.receive(t, &[b]).await;
    assert_eq!(
        fx.open_keys("gateway_clock").await,
        vec!["gateway_clock:gw-2"]
    );
    let gw = fx.ok("/api/v1/gateways/gw-2").await;
    assert_eq!(gw["clock_offset_s"], 600);
    assert!(
        gw["open_alarms"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("600 s ahead of"),
        "{gw}"
    );
    let b = fx.batch(
        "gw-2",
        Some(t + 900 - 30),
        vec![good("m3", t + 900, 1_500, 2000)],
    );
    fx.receive(t + 900, &[b]).await;
    assert!(fx.open_keys("gateway_clock").await.is_empty());
    assert_eq!(
        fx.cleared_keys("gateway_clock").await,
        vec!["gateway_clock:gw-2"]
    );
}

#[tokio::test]
async fn meter_silent_after_three_failed_reads_and_cleared_by_a_good_one() {
    let mut fx = Fixture::new().await;
    let b = fx.batch("gw-1", None, vec![good("m1", NOV1_20, 1_000, 2000)]);
    fx.receive(NOV1_20, &[b]).await;
    for (i, err) in ["timeout", "meter_error:51", "timeout"].iter().enumerate() {
        assert!(
            fx.open_keys("meter_silent").await.is_empty(),
            "after {i} failures"
        );
        let t = NOV1_20 + 900 * (i as i64 + 1);
        let b = fx.batch("gw-1", None, vec![failed("m1", t, err)]);
        fx.receive(t, &[b]).await;
    }
    assert_eq!(fx.open_keys("meter_silent").await, vec!["meter_silent:m1"]);
    let a = fx.ok("/api/v1/alarms?kind=meter_silent").await;
    assert_eq!(
        (a[0]["household"].as_str(), a[0]["meter"].as_str()),
        (Some("hh-1"), Some("m1"))
    );
    let gw = fx.ok("/api/v1/gateways/gw-1").await;
    let m1 = gw["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == "m1")
        .unwrap();
    assert_eq!(m1["consecutive_failures"], 3);
    assert_eq!(
        m1["errors"],
        serde_json::json!({"timeout": 2, "meter_error": 1})
    );
    assert_eq!(m1["last_good"], NOV1_20);
    let b = fx.batch("gw-1", None, vec![good("m1", NOV1_20 + 3600, 3_000, 2000)]);
    fx.receive(NOV1_20 + 3600, &[b]).await;
    assert!(fx.open_keys("meter_silent").await.is_empty());
    assert_eq!(
        fx.cleared_keys("meter_silent").await,
        vec!["meter_silent:m1"]
    );
}

#[tokio::test]
async fn meter_clock_raised_and_cleared() {
    let mut fx = Fixture::new().await;
    let mut r = good("m2", NOV1_20, 1_000, 100);
    r["meter_ts"] = (NOV1_20 - 400).into();
    let b = fx.batch("gw-1", None, vec![r]);
    fx.receive(NOV1_20, &[b]).await;
    assert_eq!(fx.open_keys("meter_clock").await, vec!["meter_clock:m2"]);
    let a = fx.ok("/api/v1/alarms?kind=meter_clock").await;
    assert!(
        a[0]["reason"].as_str().unwrap().contains("400 s behind"),
        "{a}"
    );
    let b = fx.batch("gw-1", None, vec![good("m2", NOV1_20 + 900, 1_100, 100)]);
    fx.receive(NOV1_20 + 900, &[b]).await;
    assert!(fx.open_keys("meter_clock").await.is_empty());
    assert_eq!(fx.cleared_keys("meter_clock").await, vec!["meter_clock:m2"]);
}

#[tokio::test]
async fn no_consumption_for_three_nights_raised_and_cleared() {
    let mut fx = Fixture::new().await;
    let e = 2_000_000;
    let mut rs = night("m2", 0, e, e);
    rs.extend(night("m2", 1, e, e + 50));
    let b = fx.batch("gw-1", None, rs);
    fx.receive(NOV1_20 + DAY + H12 + 60, &[b]).await;
    assert!(
        fx.open_keys("no_consumption").await.is_empty(),
        "two quiet nights only"
    );
    let b = fx.batch("gw-1", None, night("m2", 2, e + 50, e + 50));
    fx.receive(NOV1_20 + 2 * DAY + H12 + 60, &[b]).await;
    assert_eq!(
        fx.open_keys("no_consumption").await,
        vec!["no_consumption:hh-2:2025-2026"]
    );
    let a = fx.ok("/api/v1/alarms?kind=no_consumption").await;
    assert!(
        a[0]["reason"]
            .as_str()
            .unwrap()
            .contains("2025-11-02 0.050 kWh"),
        "{a}"
    );
    let b = fx.batch("gw-1", None, night("m2", 3, e + 50, e + 5_050));
    fx.receive(NOV1_20 + 3 * DAY + H12 + 60, &[b]).await;
    assert!(fx.open_keys("no_consumption").await.is_empty());
    assert_eq!(
        fx.cleared_keys("no_consumption").await,
        vec!["no_consumption:hh-2:2025-2026"]
    );
}

#[tokio::test]
async fn cap_near_past_ninety_percent_raised_and_cleared_with_the_season() {
    let mut fx = Fixture::new().await;
    let b = fx.batch("gw-4", None, night("m5", 0, 0, 9_100_000));
    fx.receive(NOV1_20 + H12 + 60, &[b]).await;
    assert_eq!(
        fx.open_keys("cap_near").await,
        vec!["cap_near:hh-5:2025-2026"]
    );
    let a = fx.ok("/api/v1/alarms?kind=cap_near&district=密云区").await;
    assert!(
        a[0]["reason"]
            .as_str()
            .unwrap()
            .contains("9100.000 kWh off-peak in 2025-2026, 91.0 %"),
        "{a}"
    );
    // The next season starts: the alarm of the last one is cleared.
    fx.at(NOV1_20 + 365 * DAY + DAY).await;
    assert!(fx.open_keys("cap_near").await.is_empty());
    assert_eq!(
        fx.cleared_keys("cap_near").await,
        vec!["cap_near:hh-5:2025-2026"]
    );
}

#[tokio::test]
async fn tou_mismatch_raised_and_cleared() {
    let mut fx = Fixture::new().await;
    let with_valley = |meter: &str, k: i64, e: (i64, i64), v: (i64, i64)| {
        let mut rs = night(meter, k, e.0, e.1);
        rs[0]["e_valley_wh"] = v.0.into();
        rs[1]["e_valley_wh"] = v.1.into();
        rs
    };
    let b = fx.batch(
        "gw-2",
        None,
        with_valley("m3", 0, (1_000_000, 1_024_000), (500_000, 512_000)),
    );
    fx.receive(NOV1_20 + H12 + 60, &[b]).await;
    assert_eq!(
        fx.open_keys("tou_mismatch").await,
        vec!["tou_mismatch:hh-3"]
    );
    let b = fx.batch(
        "gw-2",
        None,
        with_valley("m3", 1, (1_030_000, 1_054_000), (518_000, 542_000)),
    );
    fx.receive(NOV1_20 + DAY + H12 + 60, &[b]).await;
    assert!(fx.open_keys("tou_mismatch").await.is_empty());
    assert_eq!(
        fx.cleared_keys("tou_mismatch").await,
        vec!["tou_mismatch:hh-3"]
    );
}

#[tokio::test]
async fn readings_rejected_raised_and_cleared() {
    let mut fx = Fixture::new().await;
    let mut rs = night("m1", 0, 1_000_000, 1_024_000);
    // 500 kWh in three hours: far above 30 kW, a spike.
    rs.push(good("m1", NOV1_20 + 3 * 3600, 1_500_000, 2000));
    let b = fx.batch("gw-1", None, rs);
    fx.receive(NOV1_20 + H12 + 60, &[b]).await;
    assert_eq!(
        fx.open_keys("readings_rejected").await,
        vec!["readings_rejected:hh-1"]
    );
    let a = fx.ok("/api/v1/alarms?kind=readings_rejected").await;
    assert!(
        a[0]["reason"]
            .as_str()
            .unwrap()
            .contains("meter m1 spike at 2025-11-01 23:00"),
        "{a}"
    );
    let b = fx.batch("gw-1", None, night("m1", 1, 1_030_000, 1_054_000));
    fx.receive(NOV1_20 + DAY + H12 + 60, &[b]).await;
    assert!(fx.open_keys("readings_rejected").await.is_empty());
    assert_eq!(
        fx.cleared_keys("readings_rejected").await,
        vec!["readings_rejected:hh-1"]
    );
}

#[tokio::test]
async fn overview_progress_households_and_gateways_agree_with_the_readings() {
    let mut fx = Fixture::new().await;
    fleet(&mut fx).await;
    let o = fx.ok("/api/v1/overview").await;
    assert_eq!(o["season"], "2025-2026");
    assert_eq!(
        o["gateways"],
        serde_json::json!({"total": 4, "online": 2, "offline": 0, "never_heard": 2})
    );
    assert_eq!(
        o["heat_pumps_running"], 2,
        "m1 at 2000 W and m3 at 1500 W; m2 at 250 W is below 300 W"
    );
    assert_eq!(
        o["households"],
        serde_json::json!({"enrolled": 5, "live": 3, "running": 2})
    );
    // Tonight so far: 4.000 + 0.500 + 3.000 kWh; 20 fen/kWh of subsidy.
    assert_eq!(
        (
            o["tonight"]["night"].as_str(),
            o["tonight"]["kwh"].as_str(),
            o["tonight"]["subsidy_yuan"].as_str()
        ),
        (Some("2025-11-02"), Some("7.500"), Some("1.50"))
    );
    assert_eq!(
        (
            o["last_night"]["night"].as_str(),
            o["last_night"]["kwh"].as_str(),
            o["last_night"]["subsidy_yuan"].as_str()
        ),
        (Some("2025-11-01"), Some("42.000"), Some("8.40"))
    );
    assert_eq!(o["last_night"]["quality"]["actual"], 3);
    // The season total equals the sum of the statements.
    let st = fx.ok("/api/v1/seasons/2025-2026/statements").await;
    let milli: i64 = st
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["offpeak_kwh"]
                .as_str()
                .unwrap()
                .replace('.', "")
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(milli, 42_000);
    assert_eq!(
        (
            o["season_total"]["offpeak_kwh"].as_str(),
            o["season_total"]["subsidy_yuan"].as_str(),
            o["season_total"]["city_subsidy_yuan"].as_str()
        ),
        (Some("42.000"), Some("8.40"), Some("4.20"))
    );
    let open = fx.ok("/api/v1/alarms?state=open").await;
    assert_eq!(o["alarms"]["open"], open.as_array().unwrap().len());

    let p = fx.ok("/api/v1/progress").await;
    let d = |name: &str| {
        p["districts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["district"] == name)
            .unwrap()
            .clone()
    };
    let h = d("怀柔区");
    assert_eq!(
        (h["villages_enrolled"].as_u64(), h["villages_live"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        (
            h["households_enrolled"].as_u64(),
            h["households_live"].as_u64(),
            h["households_running"].as_u64()
        ),
        (Some(3), Some(3), Some(2))
    );
    assert_eq!(
        (
            h["plan"]["villages"].as_u64(),
            h["plan"]["seed_agriculture_m2"].as_u64()
        ),
        (Some(17), Some(14_000))
    );
    assert_eq!(h["villages_live_permille"], 2 * 1000 / 17);
    let v = h["villages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["village"] == "下辛庄村")
        .unwrap()
        .clone();
    assert_eq!(
        (
            v["enrolled"].as_u64(),
            v["live"].as_u64(),
            v["running"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );
    assert_eq!(
        (
            d("延庆区")["households_enrolled"].as_u64(),
            d("延庆区")["households_live"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(p["districts"].as_array().unwrap().len(), 8);

    let hs = fx
        .ok("/api/v1/households?district=怀柔区&village=下辛庄村")
        .await;
    let list = hs["households"].as_array().unwrap();
    assert_eq!(
        list.iter()
            .map(|h| h["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["hh-1", "hh-2"]
    );
    assert_eq!(
        (
            list[0]["running"].as_bool(),
            list[0]["meters"][0]["p_w"].as_i64()
        ),
        (Some(true), Some(2000))
    );
    assert_eq!(
        (
            list[1]["running"].as_bool(),
            list[1]["season"]["offpeak_kwh"].as_str()
        ),
        (Some(false), Some("6.000"))
    );
    assert_eq!(list[0]["season"]["subsidy_yuan"], "4.80");
    let one = fx.ok("/api/v1/households/hh-1/monitor").await;
    assert_eq!(
        (
            one["gateways"][0]["id"].as_str(),
            one["gateways"][0]["online"].as_bool()
        ),
        (Some("gw-1"), Some(true))
    );
    assert_eq!(one["meters"][0]["last_kwh"], "1034.000");

    let gw = fx.ok("/api/v1/gateways/gw-1").await;
    assert_eq!(
        (
            gw["state"].as_str(),
            gw["version"].as_str(),
            gw["spool_records"].as_u64(),
            gw["spool_dropped"].as_u64()
        ),
        (Some("online"), Some("0.1.0"), Some(3), Some(1))
    );
    assert_eq!(
        (gw["last_seen"].as_i64(), gw["batches"].as_u64()),
        (Some(NOV1_20 + DAY + 7200), Some(1))
    );
    assert_eq!(gw["meters"].as_array().unwrap().len(), 2);
    assert_eq!(
        fx.ok("/api/v1/gateways?district=怀柔区")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn unknown_ids_are_404_and_bad_filters_400() {
    let fx = Fixture::new().await;
    for uri in ["/api/v1/gateways/nope", "/api/v1/households/nope/monitor"] {
        let (s, v) = fx.get(uri).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(v["error"].as_str().unwrap().contains("nope"));
    }
    for uri in [
        "/api/v1/alarms?state=bogus",
        "/api/v1/alarms?kind=bogus",
        "/api/v1/alarms?limit=0",
    ] {
        let (s, v) = fx.get(uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
}

#[tokio::test]
async fn the_dashboard_is_served_by_the_server_with_no_external_asset() {
    let fx = Fixture::new().await;
    let (s, ctype, html) = fx.get_text("/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(
        html.contains(r#"<html lang="zh">"#) && html.contains("总览"),
        "Chinese by default"
    );
    let (_, _, en) = fx.get_text("/?lang=en").await;
    assert!(en.contains(r#"<html lang="en">"#));
    let (s, ctype, js) = fx.get_text("/assets/app.js").await;
    assert_eq!(
        (s, ctype.starts_with("text/javascript")),
        (StatusCode::OK, true)
    );
    let (s, ctype, css) = fx.get_text("/assets/app.css").await;
    assert_eq!((s, ctype.starts_with("text/css")), (StatusCode::OK, true));
    for (name, text) in [("html", &html), ("js", &js), ("css", &css)] {
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{name} refers to an outside asset"
        );
    }
    // Every string key used in the Chinese table exists in the English one.
    let zh = js
        .split("zh: {")
        .nth(1)
        .unwrap()
        .split("en: {")
        .next()
        .unwrap();
    let en = js
        .split("en: {")
        .nth(1)
        .unwrap()
        .split("};")
        .next()
        .unwrap();
    let keys = |s: &str| -> Vec<String> {
        s.split(',')
            .filter_map(|kv| kv.split_once(':').map(|(k, _)| k.trim().to_string()))
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect()
    };
    let (zk, ek) = (keys(zh), keys(en));
    assert!(zk.len() > 50, "{zk:?}");
    for k in &zk {
        assert!(ek.contains(k), "English lacks {k}");
    }
}
