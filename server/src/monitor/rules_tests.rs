//! Every rule raised and cleared, with the figures in its reason.

use super::*;
use crate::monitor::alarm::Decision;
use crate::monitor::MeterEvent;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::GatewayId;
use qingnuan_shared::wire::Status;

/// 2025-11-01 20:00 +08:00
const NOV1_20: i64 = 1_761_998_400;

fn cal() -> Calendar {
    Calendar::new(Policy::beijing_2018())
}

fn subject() -> Subject {
    Subject {
        household: Some("hh-1".into()),
        meter: Some("m1".into()),
        gateway: Some("gw-1".into()),
        district: Some("怀柔区".into()),
        village: Some("下辛庄村".into()),
    }
}

fn opened(d: Option<Decision>) -> Finding {
    match d {
        Some(Decision::Open(f)) => f,
        other => panic!("expected an open decision, got {other:?}"),
    }
}

fn cleared(d: Option<Decision>) -> String {
    match d {
        Some(Decision::Clear(k)) => k,
        other => panic!("expected a clear decision, got {other:?}"),
    }
}

fn online_at(t: i64) -> GatewayState {
    let mut g = GatewayState::default();
    g.on_status(
        &serde_json::from_str(r#"{"v":1,"gw":"gw-1","state":"online","ts":0}"#).unwrap(),
        t,
    );
    g
}

#[test]
fn gateway_offline_needs_15_minutes_inside_the_window_and_clears_when_back() {
    let (cal, cfg, s) = (cal(), MonitorConfig::default(), subject());
    let mut g = online_at(NOV1_20 - 7200);
    // Last will at 19:30: offline, but the window only opened at 20:00.
    g.on_status(
        &Status::offline(GatewayId::new("gw-1").unwrap()),
        NOV1_20 - 1800,
    );
    assert_eq!(
        gateway_offline("gw-1", &s, &g, NOV1_20 + 900, &cal, &cfg),
        None
    );
    let f = opened(gateway_offline("gw-1", &s, &g, NOV1_20 + 901, &cal, &cfg));
    assert_eq!(
        (f.key.as_str(), f.kind),
        ("gateway_offline:gw-1", AlarmKind::GatewayOffline)
    );
    assert!(f.reason.contains("since 2025-11-01 19:30"), "{}", f.reason);
    assert!(f.reason.contains("15 min"), "{}", f.reason);
    // Daytime: no decision, an open alarm stays open.
    assert_eq!(
        gateway_offline("gw-1", &s, &g, NOV1_20 + 14 * 3600, &cal, &cfg),
        None
    );
    g.on_status(
        &serde_json::from_str(r#"{"v":1,"gw":"gw-1","state":"online"}"#).unwrap(),
        NOV1_20 + 3600,
    );
    assert_eq!(
        cleared(gateway_offline("gw-1", &s, &g, NOV1_20 + 3601, &cal, &cfg)),
        "gateway_offline:gw-1"
    );
    // Never heard from: not deployed yet, no decision.
    assert_eq!(
        gateway_offline(
            "gw-1",
            &s,
            &GatewayState::default(),
            NOV1_20 + 3600,
            &cal,
            &cfg
        ),
        None
    );
}

#[test]
fn a_silent_gateway_counts_offline_from_when_it_was_last_heard() {
    let (cal, cfg, s) = (cal(), MonitorConfig::default(), subject());
    let g = online_at(NOV1_20);
    let t = NOV1_20 + cfg.gateway_stale_s + 1;
    let f = opened(gateway_offline("gw-1", &s, &g, t, &cal, &cfg));
    assert!(f.reason.contains("silent"), "{}", f.reason);
    // Out of season (summer): no window, no decision.
    assert_eq!(
        gateway_offline("gw-1", &s, &g, NOV1_20 + 200 * 86_400, &cal, &cfg),
        None
    );
}

#[test]
fn gateway_clock_raised_beyond_tolerance_and_cleared_within() {
    let (cfg, s) = (MonitorConfig::default(), subject());
    let mut g = GatewayState::default();
    assert_eq!(gateway_clock("gw-1", &s, &g, &cfg), None);
    g.on_batch(Some(1_000 - 301), 1_000);
    let f = opened(gateway_clock("gw-1", &s, &g, &cfg));
    assert!(f.reason.contains("301 s behind"), "{}", f.reason);
    g.on_batch(Some(2_000 + 300), 2_000);
    assert_eq!(
        cleared(gateway_clock("gw-1", &s, &g, &cfg)),
        "gateway_clock:gw-1"
    );
}

#[test]
fn spoofed_reading_raised_for_a_day_after_the_last_one() {
    let (cal, s) = (cal(), subject());
    let mut g = GatewayState::default();
    assert_eq!(spoofed_reading("gw-1", &s, &g, NOV1_20, &cal), None);
    g.on_spoofed(Some("m7"), NOV1_20);
    g.on_spoofed(Some("m9"), NOV1_20 + 60);
    let f = opened(spoofed_reading("gw-1", &s, &g, NOV1_20 + 3600, &cal));
    assert_eq!(f.key, "spoofed_reading:gw-1");
    assert!(
        f.reason.contains("sent 2 reading(s)")
            && f.reason.contains("m9")
            && f.reason.contains("2025-11-01 20:01"),
        "{}",
        f.reason
    );
    let last = NOV1_20 + 60;
    assert!(matches!(
        spoofed_reading("gw-1", &s, &g, last + SPOOFED_ALARM_S, &cal),
        Some(Decision::Open(_))
    ));
    assert_eq!(
        cleared(spoofed_reading(
            "gw-1",
            &s,
            &g,
            last + SPOOFED_ALARM_S + 1,
            &cal
        )),
        "spoofed_reading:gw-1"
    );
}

#[test]
fn meter_silent_after_three_failures_cleared_by_a_good_read() {
    let (cal, cfg, s) = (cal(), MonitorConfig::default(), subject());
    let mut m = MeterState::default();
    m.apply(
        MeterEvent::Good {
            ts: NOV1_20,
            e_wh: 1,
            p_w: None,
            meter_ts: None,
        },
        &cal,
    );
    for i in 1..=2 {
        m.apply(
            MeterEvent::Failed {
                ts: NOV1_20 + 900 * i,
                err: "timeout",
            },
            &cal,
        );
    }
    assert_eq!(
        cleared(Some(meter_silent("m1", &s, &m, &cal, &cfg))),
        "meter_silent:m1"
    );
    m.apply(
        MeterEvent::Failed {
            ts: NOV1_20 + 2700,
            err: "bad_frame",
        },
        &cal,
    );
    let f = opened(Some(meter_silent("m1", &s, &m, &cal, &cfg)));
    assert!(f.reason.contains("3 failed reads"), "{}", f.reason);
    assert!(
        f.reason.contains("last good read 2025-11-01 20:00"),
        "{}",
        f.reason
    );
    assert!(f.reason.contains("bad_frame×1, timeout×2"), "{}", f.reason);
    m.apply(
        MeterEvent::Good {
            ts: NOV1_20 + 3600,
            e_wh: 2,
            p_w: None,
            meter_ts: None,
        },
        &cal,
    );
    assert_eq!(
        cleared(Some(meter_silent("m1", &s, &m, &cal, &cfg))),
        "meter_silent:m1"
    );
}

#[test]
fn meter_clock_raised_beyond_five_minutes_and_cleared() {
    let (cal, cfg, s) = (cal(), MonitorConfig::default(), subject());
    let mut m = MeterState::default();
    m.apply(
        MeterEvent::Good {
            ts: NOV1_20,
            e_wh: 1,
            p_w: None,
            meter_ts: None,
        },
        &cal,
    );
    assert_eq!(meter_clock("m1", &s, &m, &cfg), None);
    m.apply(
        MeterEvent::Good {
            ts: NOV1_20 + 60,
            e_wh: 1,
            p_w: None,
            meter_ts: Some(NOV1_20 + 60 + 301),
        },
        &cal,
    );
    let f = opened(meter_clock("m1", &s, &m, &cfg));
    assert!(f.reason.contains("301 s ahead of"), "{}", f.reason);
    m.apply(
        MeterEvent::Good {
            ts: NOV1_20 + 120,
            e_wh: 1,
            p_w: None,
            meter_ts: Some(NOV1_20 + 120 - 300),
        },
        &cal,
    );
    assert_eq!(cleared(meter_clock("m1", &s, &m, &cfg)), "meter_clock:m1");
}

fn night(name: &str, wh: i64, quality: &str, flags: &[&str]) -> NightFact {
    NightFact {
        night: name.into(),
        wh,
        quality: quality.into(),
        flags: flags.iter().map(|f| f.to_string()).collect(),
        rejected: vec![],
    }
}

#[test]
fn no_consumption_after_three_quiet_nights_cleared_by_a_consuming_one() {
    let (cfg, s) = (MonitorConfig::default(), subject());
    let mut nights = vec![
        night("2025-11-01", 30_000, "actual", &[]),
        night("2025-11-02", 0, "actual", &[]),
        night("2025-11-03", 100, "estimated", &[]),
    ];
    // Only two quiet nights so far.
    assert_eq!(
        cleared(no_consumption("hh-1", &s, "2025-2026", &nights, &cfg)),
        "no_consumption:hh-1:2025-2026"
    );
    nights.push(night("2025-11-04", 0, "actual", &[]));
    let f = opened(no_consumption("hh-1", &s, "2025-2026", &nights, &cfg));
    assert!(
        f.reason
            .contains("2025-11-02 0.000 kWh, 2025-11-03 0.100 kWh, 2025-11-04 0.000 kWh"),
        "{}",
        f.reason
    );
    // A missing night is a data problem, not proof of no consumption.
    let mut gap = nights.clone();
    gap.push(night("2025-11-05", 0, "missing", &[]));
    assert!(matches!(
        no_consumption("hh-1", &s, "2025-2026", &gap, &cfg),
        Some(Decision::Clear(_))
    ));
    nights.push(night("2025-11-05", 101, "actual", &[]));
    assert!(matches!(
        no_consumption("hh-1", &s, "2025-2026", &nights, &cfg),
        Some(Decision::Clear(_))
    ));
    assert_eq!(
        no_consumption("hh-1", &s, "2025-2026", &nights[..2], &cfg),
        None
    );
}

#[test]
fn cap_near_at_ninety_percent_and_cleared_below() {
    let (cfg, s) = (MonitorConfig::default(), subject());
    let f = opened(cap_near(
        "hh-1",
        &s,
        "2025-2026",
        9_000_000,
        10_000_000,
        &cfg,
    ));
    assert_eq!(f.key, "cap_near:hh-1:2025-2026");
    assert!(
        f.reason
            .contains("9000.000 kWh off-peak in 2025-2026, 90.0 % of the 10000.000 kWh cap"),
        "{}",
        f.reason
    );
    let f = opened(cap_near(
        "hh-1",
        &s,
        "2025-2026",
        9_876_543,
        10_000_000,
        &cfg,
    ));
    assert!(f.reason.contains("98.7 %"), "{}", f.reason);
    assert!(matches!(
        cap_near("hh-1", &s, "2025-2026", 8_999_999, 10_000_000, &cfg),
        Some(Decision::Clear(_))
    ));
    assert_eq!(cap_near("hh-1", &s, "2025-2026", 1, 0, &cfg), None);
}

#[test]
fn tou_mismatch_on_the_latest_night_and_cleared_by_a_clean_one() {
    let s = subject();
    let mut nights = vec![
        night("2025-11-01", 1, "actual", &["tou_mismatch"]),
        night("2025-11-02", 1, "actual", &["partial", "tou_mismatch"]),
    ];
    let f = opened(tou_mismatch("hh-1", &s, &nights));
    assert!(
        f.reason.contains("night 2025-11-02") && f.reason.contains("2 of the last 2"),
        "{}",
        f.reason
    );
    nights.push(night("2025-11-03", 1, "actual", &[]));
    assert_eq!(
        cleared(tou_mismatch("hh-1", &s, &nights)),
        "tou_mismatch:hh-1"
    );
    assert_eq!(tou_mismatch("hh-1", &s, &[]), None);
}

#[test]
fn readings_rejected_names_meter_verdict_and_time_and_clears() {
    let (cal, s) = (cal(), subject());
    let mut n = night("2025-11-01", 1, "actual", &["rejected_reading"]);
    n.rejected = vec![
        Rejected {
            meter: "m1".into(),
            ts: NOV1_20 + 3 * 3600,
            verdict: "spike".into(),
        },
        Rejected {
            meter: "m1".into(),
            ts: NOV1_20 + 4 * 3600,
            verdict: "register_wrap".into(),
        },
        Rejected {
            meter: "m2".into(),
            ts: NOV1_20 + 5 * 3600,
            verdict: "negative_delta".into(),
        },
    ];
    let mut nights = vec![n];
    let f = opened(readings_rejected("hh-1", &s, &nights, &cal));
    assert!(f.reason.contains("2 reading(s) rejected"), "{}", f.reason);
    assert!(
        f.reason.contains(
            "meter m1 spike at 2025-11-01 23:00; meter m2 negative_delta at 2025-11-02 01:00"
        ),
        "{}",
        f.reason
    );
    nights.push(night("2025-11-02", 1, "actual", &[]));
    assert_eq!(
        cleared(readings_rejected("hh-1", &s, &nights, &cal)),
        "readings_rejected:hh-1"
    );
}
