//! The server's validation of one MQTT message (topic from the first bytes, payload the
//! rest), as ingest runs it; nothing may panic and every message leaves a trace.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qingnuan_server::ingest::validate::{message, Bindings};
use qingnuan_server::store::{Binding, IngestTx};

const NOW: i64 = 1_764_331_200;

fuzz_target!(|data: &[u8]| {
    let b = Bindings::new(
        ["gw-1".to_string()],
        vec![Binding {
            meter: "m1".into(),
            gateway: "gw-1".into(),
            household: "hh-1".into(),
            valid_from: NOW - 86_400,
            valid_to: None,
        }],
    );
    let (topic, payload) = match data.first() {
        Some(0) => ("qn/v1/gw/gw-1/status".to_string(), &data[1..]),
        Some(1) => {
            let cut = data.len().min(40);
            (String::from_utf8_lossy(&data[1..cut]).into_owned(), &data[cut..])
        }
        _ => ("qn/v1/gw/gw-1/readings".to_string(), data),
    };
    let mut tx = IngestTx::default();
    message(&topic, payload, &b, NOW, 300, &mut tx);
    let n = tx.readings.len() + tx.failures.len() + tx.statuses.len() + tx.quarantine.len();
    let empty = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("readings").and_then(|r| r.as_array()).map(Vec::len))
        == Some(0);
    assert!(n > 0 || empty);
});
