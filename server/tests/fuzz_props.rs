//! Hostile input, in CI: arbitrary and mutated bytes (20,000 cases each) through the
//! ingest validation of one MQTT message and the registry CSV parser. Nothing panics;
//! every message yields something (stored, failed read, status or quarantine row) or
//! nothing only when it is an empty batch. The same targets run under cargo-fuzz in `fuzz/`.

use proptest::prelude::*;
use qingnuan_server::ingest::validate::{message, Bindings};
use qingnuan_server::registry::{parse_csv, ImportError};
use qingnuan_server::store::{Binding, IngestTx};
use qingnuan_shared::policy::Policy;

const NOW: i64 = 1_764_331_200;

fn bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), 0..max_len).prop_map(|(seed, len)| {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    })
}

/// Random edits (overwrite, delete, insert a structural character) of `base`.
fn mutated(base: &'static str, alphabet: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8).prop_map(
        move |edits| {
            let mut p = base.as_bytes().to_vec();
            for (at, b) in edits {
                if p.is_empty() {
                    break;
                }
                let i = at.index(p.len());
                match b % 3 {
                    0 => p[i] = b,
                    1 => {
                        p.remove(i);
                    }
                    _ => p.insert(
                        i,
                        alphabet
                            .get(usize::from(b) % alphabet.len())
                            .copied()
                            .unwrap_or(b'0'),
                    ),
                }
            }
            p
        },
    )
}

fn bindings() -> Bindings {
    Bindings::new(
        ["gw-1".to_string()],
        vec![Binding {
            meter: "m1".into(),
            gateway: "gw-1".into(),
            household: "hh-1".into(),
            valid_from: NOW - 86_400,
            valid_to: None,
        }],
    )
}

const BATCH: &str = r#"{"v":1,"gw":"gw-1","seq":7,"boot":"b1","sent":1764331200,"readings":[{"meter":"m1","ts":1764331100,"e_wh":1000,"e_valley_wh":10,"p_w":-5,"meter_ts":1764331100},{"meter":"m1","ts":1764331150,"err":"timeout"},{"meter":"m2","ts":1764331150,"e_wh":1}]}"#;
const STATUS: &str = r#"{"v":1,"gw":"gw-1","state":"online","ts":1764331200,"version":"0.1.0","meters":1,"spool_records":0,"spool_dropped":0}"#;
const CSV: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m1,2025-10-01,,gw-1,30000\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m2,2025-10-01T00:00:00+08:00,2026-01-01,gw-1,30000\n";

/// Validates one message; checks it is accounted for.
fn check(topic: &str, payload: &[u8]) {
    let b = bindings();
    let mut tx = IngestTx::default();
    message(topic, payload, &b, NOW, 300, &mut tx);
    let yielded = tx.readings.len() + tx.failures.len() + tx.statuses.len() + tx.quarantine.len();
    let empty_batch = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("readings").and_then(|r| r.as_array()).map(Vec::len))
        == Some(0);
    assert!(
        yielded > 0 || empty_batch,
        "{topic} {:?} left no trace",
        String::from_utf8_lossy(payload)
    );
    for q in &tx.quarantine {
        assert!(q.payload.len() <= 4 * 1024, "kept payload is bounded");
        assert!(!q.reason.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_on_any_topic(raw in bytes(300), topic in "\\PC{0,40}") {
        check("qn/v1/gw/gw-1/readings", &raw);
        check("qn/v1/gw/gw-1/status", &raw);
        check(&topic, &raw);
    }

    #[test]
    fn mutated_batches_and_statuses(b in mutated(BATCH, b"\"{}[],:-0123456789e.nul"), s in mutated(STATUS, b"\"{}[],:-0123456789e.nul")) {
        check("qn/v1/gw/gw-1/readings", &b);
        check("qn/v1/gw/gw-1/status", &s);
    }

    #[test]
    fn registry_csv_never_panics(raw in bytes(400), m in mutated(CSV, b",\n\"-:T+0123456789.")) {
        let policy = Policy::beijing_2018();
        for data in [&raw, &m] {
            match parse_csv(data, &policy) {
                Ok(reg) => {
                    for meter in &reg.meters {
                        assert!(meter.valid_to.is_none_or(|to| to > meter.valid_from));
                    }
                }
                Err(ImportError::Invalid(rows)) => assert!(!rows.is_empty() && rows.len() <= 60),
                Err(ImportError::Store(e)) => panic!("parsing touched the store: {e}"),
            }
        }
    }
}

#[test]
fn the_seeds_are_valid() {
    let mut tx = IngestTx::default();
    message(
        "qn/v1/gw/gw-1/readings",
        BATCH.as_bytes(),
        &bindings(),
        NOW,
        300,
        &mut tx,
    );
    assert_eq!(
        (tx.readings.len(), tx.failures.len(), tx.quarantine.len()),
        (1, 1, 1)
    );
    let reg = parse_csv(CSV.as_bytes(), &Policy::beijing_2018()).unwrap();
    assert_eq!((reg.households.len(), reg.meters.len()), (1, 2));
}
