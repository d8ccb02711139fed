//! Unit tests of config parsing: defaults, meter forms, errors with key and line.

use super::*;

const EXAMPLE: &str = r#"
gateway_id = "gw-0001"

[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "gw-0001"

[schedule]
interval_s = 60

[spool]
dir = "/tmp/qn-spool"
max_bytes = 1048576

[[bus]]
kind = "dlt645-tcp"
address = "127.0.0.1:8021"
timeout_ms = 1500
meters = ["123456781012", "123456781013"]

[[bus]]
kind = "modbus-rtu"
device = "/dev/ttyUSB1"
meters = ["1:sdm120", "2:ddsu666:pump-2", { id = "sdm-kitchen", unit = 3, model = "sdm630" }]
"#;

#[test]
fn example_parses_with_defaults() {
    let c = Config::from_toml_str(EXAMPLE).unwrap();
    assert_eq!(c.gateway_id.as_str(), "gw-0001");
    assert_eq!(c.client_id(), "qn-agent-gw-0001");
    assert_eq!(c.schedule.interval_s, 60);
    assert_eq!(c.schedule.heartbeat_s, 3600);
    assert!(!c.schedule.always);
    assert_eq!(c.spool.max_bytes, 1 << 20);
    assert_eq!(c.buses.len(), 2);
    let dl = &c.buses[0];
    assert_eq!(
        (dl.kind, dl.baud, dl.parity, dl.data_bits, dl.stop_bits),
        (BusKind::Dlt645Tcp, 2400, Parity::Even, 8, 1)
    );
    assert_eq!(dl.meters[1].id.as_str(), "123456781013");
    let mb = &c.buses[1];
    assert_eq!((mb.baud, mb.parity), (9600, Parity::None));
    let ids: Vec<_> = mb
        .meters
        .iter()
        .map(|m| (m.id.as_str(), m.unit, m.model.as_str()))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("sdm120-1", 1, "sdm120"),
            ("pump-2", 2, "ddsu666"),
            ("sdm-kitchen", 3, "sdm630")
        ]
    );
    assert_eq!(c.meter_count(), 5);
    assert!(c
        .summary()
        .contains("bus[1] modbus-rtu /dev/ttyUSB1 9600 8N1: 3 meters"));
}

fn err(text: &str) -> ConfigError {
    Config::from_toml_str(text).unwrap_err()
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err(&EXAMPLE.replace("interval_s = 60", "interval_s = 60\nintervall = 5"));
    assert_eq!(e.line, Some(10));
    assert!(e.message.contains("intervall"), "{e}");
    assert_eq!(e.key.as_deref(), Some("schedule.intervall"));
}

#[test]
fn bad_value_names_key_and_line() {
    let e = err(&EXAMPLE.replace("interval_s = 60", "interval_s = \"often\""));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(9), Some("schedule.interval_s")),
        "{e}"
    );
    let e = err(&EXAMPLE.replace("gw-0001\"\n\n", "GW 1\"\n\n"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("gateway_id")),
        "{e}"
    );
}

#[test]
fn bus_errors_point_into_the_bus_table() {
    let e = err(&EXAMPLE.replace("address = \"127.0.0.1:8021\"\n", ""));
    assert!(e.message.contains("needs `address"), "{e}");
    assert_eq!(
        e.key.as_deref().map(|k| k.starts_with("bus[0]")),
        Some(true),
        "{e}"
    );
    let e = err(&EXAMPLE.replace("\"123456781013\"", "\"12345\""));
    assert!(e.message.contains("12 digits"), "{e}");
    let e = err(&EXAMPLE.replace("1:sdm120", "1:sdm999"));
    assert!(e.message.contains("sdm999"), "{e}");
    assert!(
        e.key.as_deref().is_some_and(|k| k.starts_with("bus[1]")),
        "{e}"
    );
}

#[test]
fn semantic_errors_name_key_and_line() {
    let e = err(&EXAMPLE.replace("mqtt://127.0.0.1:1883", "http://x"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(5), Some("mqtt.url")),
        "{e}"
    );
    let e = err(&EXAMPLE.replace("\"123456781013\"", "\"123456781012\""));
    assert_eq!(e.key.as_deref(), Some("bus[0].meters"), "{e}");
    assert!(e.message.contains("twice"));
    let e = err(&EXAMPLE.replace("max_bytes = 1048576", "max_bytes = 100"));
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(13), Some("spool.max_bytes")),
        "{e}"
    );
}

#[test]
fn contract_example_parses() {
    let text = r#"
gateway_id = "gw-0001"
# policy_file = "policy.toml"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[schedule]
interval_s = 900
heartbeat_s = 3600
always = false
[spool]
dir = "/var/lib/qingnuan-agent"
max_bytes = 67108864
[[bus]]
kind = "dlt645-tcp"
address = "127.0.0.1:8021"
timeout_ms = 1500
meters = ["123456781012"]
"#;
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.buses[0].timeout_ms, 1500);
    assert_eq!(c.spool.max_bytes, 67_108_864);
}
