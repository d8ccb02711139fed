//! Tests of message validation: every kind of bad input is quarantined with its reason,
//! the good readings of the same message still count.

use qingnuan_shared::policy::Policy;

use super::*;

const NOW: i64 = 1_764_331_200; // 2025-11-28 20:00 +08:00

fn bindings() -> Bindings {
    Bindings::new(
        ["gw-1".to_string(), "gw-2".to_string()],
        vec![
            Binding {
                meter: "m1".into(),
                gateway: "gw-1".into(),
                household: "hh-1".into(),
                valid_from: NOW - 86_400 * 60,
                valid_to: None,
            },
            Binding {
                meter: "m2".into(),
                gateway: "gw-1".into(),
                household: "hh-2".into(),
                valid_from: NOW - 3600,
                valid_to: None,
            },
        ],
    )
}

fn run(topic: &str, payload: &str) -> IngestTx {
    let mut tx = IngestTx::default();
    message(topic, payload.as_bytes(), &bindings(), NOW, 300, &mut tx);
    tx
}

fn reasons(tx: &IngestTx) -> Vec<(i64, &str)> {
    tx.quarantine
        .iter()
        .map(|q| (q.item, q.reason.as_str()))
        .collect()
}

#[test]
fn one_bad_reading_does_not_sink_the_batch() {
    let p = format!(
        r#"{{"v":1,"gw":"gw-1","seq":1,"boot":"b","readings":[
          {{"meter":"m1","ts":{NOW},"e_wh":1000,"e_valley_wh":400,"p_w":2000}},
          {{"meter":"m1","ts":"soon","e_wh":1}},
          {{"meter":"m1","ts":{t1},"e_wh":-5}},
          {{"meter":"m9","ts":{NOW},"e_wh":5}},
          {{"meter":"m1","ts":{future},"e_wh":7}},
          {{"meter":"m2","ts":{early},"e_wh":7}},
          {{"meter":"m2","ts":{NOW},"err":"timeout"}},
          {{"meter":"m1","ts":{t2},"e_wh":1100}}
        ]}}"#,
        t1 = NOW + 1,
        t2 = NOW + 60,
        future = NOW + 301,
        early = NOW - 3601
    );
    let tx = run("qn/v1/gw/gw-1/readings", &p);
    assert_eq!(
        reasons(&tx),
        vec![
            (1, "bad_reading"),
            (2, "negative"),
            (3, "unbound_meter"),
            (4, "future_ts"),
            (5, "before_install")
        ]
    );
    assert!(
        tx.quarantine[0]
            .detail
            .starts_with("readings[1]: invalid type"),
        "{}",
        tx.quarantine[0].detail
    );
    assert_eq!(
        tx.readings
            .iter()
            .map(|r| (r.ts, r.e_wh))
            .collect::<Vec<_>>(),
        vec![(NOW, 1000), (NOW + 60, 1100)]
    );
    assert_eq!(tx.readings[0].e_valley_wh, Some(400));
    assert_eq!(tx.failures.len(), 1);
    assert_eq!(tx.failures[0].err, "timeout");
    // every row of one message shares its key; the key is stable
    assert!(tx
        .quarantine
        .iter()
        .all(|q| q.msg_key == tx.quarantine[0].msg_key));
    assert_eq!(
        run("qn/v1/gw/gw-1/readings", &p).quarantine[0].msg_key,
        tx.quarantine[0].msg_key
    );
}

#[test]
fn whole_message_failures() {
    let ok = r#"{"v":1,"gw":"gw-1","seq":1,"boot":"b","readings":[]}"#;
    assert!(run("qn/v1/gw/gw-1/readings", ok).quarantine.is_empty());
    let cases = [
        ("qn/v1/gw/GW/readings", ok.to_string(), "bad_topic"),
        (
            "qn/v1/gw/gw-9/readings",
            ok.replace("gw-1", "gw-9"),
            "unknown_gateway",
        ),
        (
            "qn/v1/gw/gw-1/readings",
            "{not json".to_string(),
            "not_json",
        ),
        (
            "qn/v1/gw/gw-1/readings",
            r#"{"v":1,"gw":"gw-1","seq":"x","boot":"b","readings":[]}"#.to_string(),
            "bad_envelope",
        ),
        (
            "qn/v1/gw/gw-1/readings",
            r#"[1,2]"#.to_string(),
            "bad_envelope",
        ),
        (
            "qn/v1/gw/gw-1/readings",
            ok.replace("\"v\":1", "\"v\":2"),
            "unsupported_version",
        ),
        (
            "qn/v1/gw/gw-1/readings",
            ok.replace("\"gw\":\"gw-1\"", "\"gw\":\"gw-2\""),
            "topic_mismatch",
        ),
        (
            "qn/v1/gw/gw-1/readings",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)),
            "too_large",
        ),
        (
            "qn/v1/gw/gw-1/status",
            r#"{"v":1,"gw":"gw-1","state":"sleeping"}"#.to_string(),
            "bad_envelope",
        ),
    ];
    for (topic, payload, reason) in cases {
        let tx = run(topic, &payload);
        assert_eq!(
            reasons(&tx),
            vec![(-1, reason)],
            "{topic} {}",
            &payload[..payload.len().min(60)]
        );
        assert!(tx.readings.is_empty());
        assert!(tx.quarantine[0].payload.len() <= KEPT_PAYLOAD_BYTES);
    }
}

#[test]
fn status_updates_the_gateway() {
    let tx = run(
        "qn/v1/gw/gw-1/status",
        r#"{"v":1,"gw":"gw-1","state":"offline"}"#,
    );
    assert_eq!(tx.statuses.len(), 1);
    assert_eq!(tx.statuses[0].state, "offline");
}

#[test]
fn dirty_pairs_follow_validity_and_season() {
    let cal = Calendar::new(Policy::beijing_2018());
    let b = Bindings::new(
        Vec::<String>::new(),
        vec![
            Binding {
                meter: "m1".into(),
                gateway: "g".into(),
                household: "old".into(),
                valid_from: 0,
                valid_to: Some(NOW - 10),
            },
            Binding {
                meter: "m1".into(),
                gateway: "g".into(),
                household: "new".into(),
                valid_from: NOW - 10,
                valid_to: None,
            },
        ],
    );
    let r = |ts| NewReading {
        meter: "m1".into(),
        ts,
        e_wh: 1,
        e_valley_wh: None,
        p_w: None,
        meter_ts: None,
        gateway: "g".into(),
    };
    let mut out = BTreeSet::new();
    b.dirty_of(&r(NOW), &cal, NOW, &mut out);
    assert_eq!(
        out.into_iter().collect::<Vec<_>>(),
        vec![("new".to_string(), "2025-2026".to_string())]
    );
    let mut out = BTreeSet::new();
    b.dirty_of(&r(NOW - 10), &cal, NOW, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
}

#[test]
fn spoofed_and_unbound_readings() {
    let b = Bindings::new(
        ["gw-1".to_string(), "gw-2".to_string()],
        vec![
            Binding {
                meter: "m1".into(),
                gateway: "gw-1".into(),
                household: "hh-1".into(),
                valid_from: NOW - 86_400,
                valid_to: Some(NOW - 3600),
            },
            // m1 was moved to gw-2 a while later (a gap on gw-1 afterwards).
            Binding {
                meter: "m1".into(),
                gateway: "gw-2".into(),
                household: "hh-1".into(),
                valid_from: NOW - 1800,
                valid_to: None,
            },
            Binding {
                meter: "m3".into(),
                gateway: "gw-2".into(),
                household: "hh-3".into(),
                valid_from: NOW - 86_400,
                valid_to: None,
            },
        ],
    );
    let p = format!(
        r#"{{"v":1,"gw":"gw-1","seq":1,"boot":"b","readings":[
          {{"meter":"m3","ts":{NOW},"e_wh":1000}},
          {{"meter":"m1","ts":{after},"e_wh":1000}},
          {{"meter":"m1","ts":{removal},"e_wh":900}},
          {{"meter":"m9","ts":{NOW},"e_wh":5}}
        ]}}"#,
        after = NOW - 3599,
        removal = NOW - 3600,
    );
    let mut tx = IngestTx::default();
    message(
        "qn/v1/gw/gw-1/readings",
        p.as_bytes(),
        &b,
        NOW,
        300,
        &mut tx,
    );
    assert_eq!(
        reasons(&tx),
        vec![(0, "spoofed"), (1, "unbound"), (3, "unbound_meter")]
    );
    assert_eq!(tx.quarantine[0].gateway.as_deref(), Some("gw-1"));
    assert!(
        tx.quarantine[0].detail.contains("m3"),
        "{}",
        tx.quarantine[0].detail
    );
    // The reading at the removal instant still belongs to the interval.
    assert_eq!(
        tx.readings.iter().map(|r| r.ts).collect::<Vec<_>>(),
        vec![NOW - 3600]
    );
    // The others are held with their values, for a registry change to admit.
    assert_eq!(
        held(&tx),
        vec![
            ("gw-1", "m3", NOW, 1000, "spoofed"),
            ("gw-1", "m1", NOW - 3599, 1000, "unbound"),
            ("gw-1", "m9", NOW, 5, "unbound_meter"),
        ]
    );
    assert!(b.admit("gw-2", "m1", NOW - 1800).is_ok());
    assert_eq!(
        b.admit("gw-2", "m1", NOW - 1801).unwrap_err().0,
        "before_install"
    );
    // The same meter from the gateway it is on now is fine.
    let p = format!(
        r#"{{"v":1,"gw":"gw-2","seq":1,"boot":"b","readings":[{{"meter":"m1","ts":{NOW},"e_wh":1000}}]}}"#
    );
    let mut tx = IngestTx::default();
    message(
        "qn/v1/gw/gw-2/readings",
        p.as_bytes(),
        &b,
        NOW,
        300,
        &mut tx,
    );
    assert!(tx.quarantine.is_empty(), "{:?}", reasons(&tx));
    assert_eq!(tx.readings.len(), 1);
}

fn held(tx: &IngestTx) -> Vec<(&str, &str, i64, i64, &str)> {
    tx.held
        .iter()
        .map(|h| {
            let r = &h.reading;
            (
                r.gateway.as_str(),
                r.meter.as_str(),
                r.ts,
                r.e_wh,
                h.reason.as_str(),
            )
        })
        .collect()
}

/// A gateway not in the registry yet (an agent installed before the import): the message
/// is quarantined whole, as before, and its good readings are held for the import to
/// admit; a reading from the future, a failed read and a malformed reading are not.
#[test]
fn an_unknown_gateways_readings_are_held() {
    let p = format!(
        r#"{{"v":1,"gw":"gw-9","seq":1,"boot":"b","readings":[
          {{"meter":"m1","ts":{NOW},"e_wh":1000,"e_valley_wh":400,"p_w":1500,"meter_ts":{mts}}},
          {{"meter":"m2","ts":{future},"e_wh":2000}},
          {{"meter":"m2","ts":{NOW},"err":"timeout"}},
          {{"meter":"m2","ts":"x","e_wh":3}},
          {{"meter":"m2","ts":{earlier},"e_wh":1900}}
        ]}}"#,
        mts = NOW + 2,
        future = NOW + 3600,
        earlier = NOW - 60,
    );
    let tx = run("qn/v1/gw/gw-9/readings", &p);
    assert_eq!(reasons(&tx), vec![(-1, "unknown_gateway")]);
    assert!(tx.readings.is_empty() && tx.failures.is_empty());
    assert_eq!(
        held(&tx),
        vec![
            ("gw-9", "m1", NOW, 1000, "unknown_gateway"),
            ("gw-9", "m2", NOW - 60, 1900, "unknown_gateway"),
        ]
    );
    let r = &tx.held[0].reading;
    assert_eq!(
        (r.e_valley_wh, r.p_w, r.meter_ts),
        (Some(400), Some(1500), Some(NOW + 2))
    );
    // A status of an unknown gateway is quarantined and nothing else.
    let status = r#"{"v":1,"gw":"gw-9","state":"online","ts":1}"#;
    let tx = run("qn/v1/gw/gw-9/status", status);
    assert_eq!(reasons(&tx), vec![(-1, "unknown_gateway")]);
    assert!(tx.statuses.is_empty() && tx.held.is_empty());
}
