//! Golden vectors (tests/data/dlt645-modbus-vectors.json, 54 frames from public
//! sources, the PyPI peer and computed): every one decodes to its stated meaning.

use qingnuan_shared::dlt645::{
    self, address_value, decode, decode_value, parse_address_reply, parse_follow_up_reply,
    parse_reply, parse_request, voltage_dv, Address, Control, DataError, Di, ErrorBits, Frame,
    Function, MeterDate, MeterDateTime, MeterTime, Preamble, ReplyError, Request, RequestError,
    Value,
};
use qingnuan_shared::modbus::{self, CrcError, ReadFunction};
use qingnuan_shared::units::Wh;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    protocol: String,
    hex: String,
    decoded: Option<String>,
    checksum_ok: bool,
    expected_valid: bool,
    checksum: Option<String>,
    crc16: Option<String>,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("data/dlt645-modbus-vectors.json")).expect("vectors parse")
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

/// An exact decimal string ("123456.78") scaled by `unit` (1000 for kWh → Wh), no floats.
fn decimal(s: &str, unit: i64) -> i64 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut scale = unit;
    let mut v: i64 = int.parse::<i64>().unwrap() * unit;
    for c in frac.chars() {
        assert_eq!(scale % 10, 0, "too many decimals in {s}");
        scale /= 10;
        v += i64::from(c.to_digit(10).unwrap()) * scale;
    }
    if neg {
        -v
    } else {
        v
    }
}

fn kwh(s: &str) -> Value {
    Value::Energy(Wh(decimal(s, 1000)))
}

fn addr(s: &str) -> Address {
    s.parse().expect("address")
}

/// What a vector's "meaning" says its value is.
enum Meaning {
    Value(Value),
    VoltageBlock([&'static str; 3]),
    Abnormal(ErrorBits),
    AddressReply(&'static str),
}

fn meanings() -> Vec<(&'static str, Meaning)> {
    use Meaning as M;
    vec![
        ("read_fwd_active_total_resp_0.26kWh", M::Value(kwh("0.26"))),
        ("read_rev_active_total_resp_1.26kWh", M::Value(kwh("1.26"))),
        (
            "read_voltageA_resp_100.1V",
            M::Value(Value::VoltageDv(1001)),
        ),
        (
            "read_combined_active_total_resp_0.00kWh",
            M::Value(kwh("0.00")),
        ),
        (
            "read_voltage_block_resp_0_0_239.4V",
            M::VoltageBlock(["0.0", "0.0", "239.4"]),
        ),
        (
            "read_fwd_total_resp_123456.78kWh",
            M::Value(kwh("123456.78")),
        ),
        (
            "read_fwd_total_resp_0.06kWh_addr218231000114",
            M::Value(kwh("0.06")),
        ),
        (
            "read_voltageC_resp_220.0V_addr000000001111",
            M::Value(Value::VoltageDv(2200)),
        ),
        (
            "read_frequency_resp_50.03Hz",
            M::Value(Value::FrequencyChz(5003)),
        ),
        (
            "read_address_resp_000000000001",
            M::AddressReply("000000000001"),
        ),
        (
            "read_address_resp_000010604867",
            M::AddressReply("000010604867"),
        ),
        (
            "read_meter_number_04000402_resp",
            M::Value(Value::Address(addr("002241020208"))),
        ),
        (
            "abnormal_resp_no_requested_data_addr123456789012",
            M::Abnormal(ErrorBits::NO_DATA),
        ),
        (
            "abnormal_resp_ERR2_no_requested_data",
            M::Abnormal(ErrorBits::NO_DATA),
        ),
        (
            "abnormal_resp_addr980799600051",
            M::Abnormal(ErrorBits::NO_DATA),
        ),
        (
            "abnormal_resp_with_preamble_addr000006605518",
            M::Abnormal(ErrorBits::NO_DATA),
        ),
        (
            "peer_read_address_resp_bigendian_quirk",
            M::AddressReply("121078563412"),
        ),
        (
            "peer_read_fwd_total_resp_12345.67",
            M::Value(kwh("12345.67")),
        ),
        ("peer_read_tariff1_resp_100.01", M::Value(kwh("100.01"))),
        ("peer_read_tariff4_resp_4000.04", M::Value(kwh("4000.04"))),
        (
            "peer_read_currentA_minus1.234A_resp",
            M::Value(Value::CurrentMa(-1234)),
        ),
        (
            "peer_read_active_power_resp_1.2345kW",
            M::Value(Value::PowerDw(12_345)),
        ),
        (
            "peer_abnormal_unknown_DI_0001FF00",
            M::Abnormal(ErrorBits::NO_DATA),
        ),
        (
            "peer_abnormal_wrong_address_ERR01",
            M::Abnormal(ErrorBits::OTHER),
        ),
        (
            "peer_read_date_04000101_resp_2026-05-17_Sun",
            M::Value(Value::Date(MeterDate {
                year: 2026,
                month: 5,
                day: 17,
                weekday: 0,
            })),
        ),
        (
            "peer_read_time_04000102_resp_12:30:00",
            M::Value(Value::Time(MeterTime {
                hour: 12,
                minute: 30,
                second: 0,
            })),
        ),
        (
            "peer_read_comm_address_04000401_resp",
            M::Value(Value::Address(addr("123456781012"))),
        ),
        (
            "peer_read_followup_unsupported_D2",
            M::Abnormal(ErrorBits::OTHER),
        ),
    ]
}

/// Checks the "decoded" field key by key against the frame; every key must be known.
fn check_decoded_field(v: &Vector, frame: &Frame) {
    let decoded = v
        .decoded
        .as_deref()
        .expect("DL/T vectors have a decoded field");
    for part in decoded.split(", ") {
        let (key, value) = part
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: odd part {part}", v.name));
        match key {
            "addr" => assert_eq!(frame.address.to_string(), value, "{}", v.name),
            "C" => assert_eq!(
                frame.control.0,
                u8::from_str_radix(&value[2..4], 16).unwrap(),
                "{}",
                v.name
            ),
            "L" => assert_eq!(
                frame.data.len(),
                value.parse::<usize>().unwrap(),
                "{}",
                v.name
            ),
            "DI" => assert_eq!(
                Di::from_data(&frame.data),
                Some(value.parse().unwrap()),
                "{}",
                v.name
            ),
            "payload(-33,wire order)" => {
                assert_eq!(&frame.data[4..], hex(value).as_slice(), "{}", v.name)
            }
            "data(-33)" => assert_eq!(frame.data.as_slice(), hex(value).as_slice(), "{}", v.name),
            "address_in_data" => {
                assert_eq!(
                    address_value(&frame.data).unwrap().to_string(),
                    value,
                    "{}",
                    v.name
                )
            }
            "ERR" => {
                let (bits, names) = value.split_once(' ').unwrap();
                let err = ErrorBits(u8::from_str_radix(&bits[2..], 16).unwrap());
                assert_eq!(frame.data.as_slice(), &[err.bits()], "{}", v.name);
                let named: Vec<String> = err.iter().map(|b| format!("'{}'", b.name())).collect();
                assert_eq!(format!("[{}]", named.join(", ")), names, "{}", v.name);
            }
            other => panic!("{}: unchecked key {other}", v.name),
        }
    }
}

/// Checks the application meaning: requests as a meter parses them, replies as a master does.
fn check_meaning(v: &Vector, frame: &Frame, table: &[(&str, Meaning)]) {
    let meaning = table.iter().find(|(n, _)| *n == v.name).map(|(_, m)| m);
    let di = Di::from_data(&frame.data);
    match (frame.control.0, meaning) {
        (0x11, None) => assert_eq!(
            parse_request(frame),
            Ok(Request::ReadData {
                address: frame.address,
                di: di.unwrap()
            }),
            "{}",
            v.name
        ),
        (0x12, None) => assert_eq!(
            parse_request(frame),
            Ok(Request::ReadFollowUp {
                address: frame.address,
                di: di.unwrap(),
                seq: 1
            }),
            "{}",
            v.name
        ),
        (0x13, None) => {
            assert_eq!(
                parse_request(frame),
                Ok(Request::ReadAddress {
                    address: Address::WILDCARD
                }),
                "{}",
                v.name
            )
        }
        (0x08, None) => check_broadcast(v, frame),
        (0x91, Some(Meaning::Value(expected))) => {
            let reply = parse_reply(frame, &frame.address, di.unwrap()).unwrap();
            assert_eq!(
                decode_value(reply.di, reply.value),
                Some(Ok(*expected)),
                "{}",
                v.name
            );
        }
        (0x91, Some(Meaning::VoltageBlock(volts))) => {
            let reply = parse_reply(frame, &frame.address, dlt645::di::VOLTAGE_BLOCK).unwrap();
            let got: Vec<u32> = reply
                .value
                .chunks(2)
                .map(|c| voltage_dv(c).unwrap())
                .collect();
            let want: Vec<u32> = volts
                .iter()
                .map(|s| u32::try_from(decimal(s, 10)).unwrap())
                .collect();
            assert_eq!(got, want, "{}", v.name);
        }
        (0x93, Some(Meaning::AddressReply(a))) => {
            assert_eq!(parse_address_reply(frame), Ok(addr(a)), "{}", v.name)
        }
        (0xD1, Some(Meaning::Abnormal(bits))) => {
            // Whatever DI was asked, the abnormal reply maps to the named bits.
            let asked = dlt645::di::FORWARD_ACTIVE_TOTAL;
            assert_eq!(
                parse_reply(frame, &frame.address, asked),
                Err(ReplyError::Abnormal(*bits)),
                "{}",
                v.name
            );
            // Through a wildcard request too: the real address is in the reply.
            assert_eq!(
                parse_reply(frame, &Address::WILDCARD, asked),
                Err(ReplyError::Abnormal(*bits)),
                "{}",
                v.name
            );
        }
        (0xD2, Some(Meaning::Abnormal(bits))) => assert_eq!(
            parse_follow_up_reply(frame, &frame.address, dlt645::di::FORWARD_ACTIVE_TOTAL, 1),
            Err(ReplyError::Abnormal(*bits)),
            "{}",
            v.name
        ),
        (c, m) => panic!(
            "{}: no meaning check for C={c:02X} (table entry: {})",
            v.name,
            m.is_some()
        ),
    }
}

fn check_broadcast(v: &Vector, frame: &Frame) {
    assert_eq!(frame.address, Address::BROADCAST, "{}", v.name);
    let parsed = parse_request(frame);
    match v.name.as_str() {
        "computed_broadcast_time_spec_order" => {
            let at = MeterDateTime::new(2026, 5, 17, 12, 30, 0).unwrap();
            assert_eq!(
                parsed,
                Ok(Request::BroadcastTime {
                    address: Address::BROADCAST,
                    at
                })
            );
            assert_eq!(
                dlt645::broadcast_time(&at, Preamble::NONE).as_slice(),
                hex(&v.hex).as_slice()
            );
        }
        // The PyPI client writes YY first: in spec order that is month 30.
        "peer_broadcast_time_natural_order" => {
            assert_eq!(parsed, Err(RequestError::BadTime(DataError::OutOfRange)))
        }
        "broadcast_time_L0_nonstandard" => assert_eq!(
            parsed,
            Err(RequestError::BadLength {
                function: Function::BroadcastTime,
                len: 0
            })
        ),
        other => panic!("{other}: unexpected broadcast vector"),
    }
}

#[test]
fn every_dlt645_vector_decodes_to_its_meaning() {
    let table = meanings();
    let all = vectors();
    assert_eq!(all.len(), 54);
    let dlt: Vec<&Vector> = all
        .iter()
        .filter(|v| v.protocol == "DL/T 645-2007")
        .collect();
    assert_eq!(dlt.len(), 46);
    for v in &dlt {
        assert!(v.checksum_ok, "{}", v.name);
        let bytes = hex(&v.hex);
        let (frame, used) = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", v.name));
        assert_eq!(used, bytes.len(), "{}", v.name);
        // The stated checksum is the CS byte, and the encoder reproduces the exact bytes.
        let cs = u8::from_str_radix(v.checksum.as_deref().unwrap(), 16).unwrap();
        assert_eq!(bytes[bytes.len() - 2], cs, "{}", v.name);
        let fe = bytes.iter().take_while(|&&b| b == 0xFE).count();
        let preamble = Preamble::new(u8::try_from(fe).unwrap()).unwrap();
        assert_eq!(
            frame.encode(preamble).as_slice(),
            bytes.as_slice(),
            "{}",
            v.name
        );
        check_decoded_field(v, &frame);
        check_meaning(v, &frame, &table);
        // A corrupted checksum is always refused.
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] = bad[last].wrapping_add(1);
        assert!(
            matches!(
                decode(&bad),
                Err(dlt645::DecodeError::Invalid {
                    reason: dlt645::InvalidReason::BadChecksum,
                    ..
                })
            ),
            "{}",
            v.name
        );
    }
    // Every table entry names a real vector.
    for (name, _) in &table {
        assert!(
            dlt.iter().any(|v| v.name == *name),
            "table names unknown vector {name}"
        );
    }
    // The one link-valid but application-invalid DL/T frame is the bare broadcast.
    let invalid: Vec<&str> = dlt
        .iter()
        .filter(|v| !v.expected_valid)
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(invalid, ["broadcast_time_L0_nonstandard"]);
}

#[test]
fn the_power_vector_rounds_to_whole_watts() {
    // 1.2345 kW = 1234.5 W: the documented rule rounds the tie up on the magnitude.
    assert_eq!(dlt645::power_w(&[0x45, 0x23, 0x01]).unwrap().0, 1235);
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "peer_read_active_power_resp_1.2345kW")
        .unwrap();
    let (frame, _) = decode(&hex(&v.hex)).unwrap();
    let reply = parse_reply(&frame, &frame.address, dlt645::di::ACTIVE_POWER_TOTAL).unwrap();
    assert_eq!(dlt645::power_w(reply.value).unwrap().0, 1235);
    assert_eq!(frame.control, Control(0x91));
}

#[test]
fn every_modbus_vector_checks_out() {
    let all = vectors();
    let mb: Vec<&Vector> = all.iter().filter(|v| v.protocol == "Modbus RTU").collect();
    assert_eq!(mb.len(), 8);
    let sdm120 = modbus::model("sdm120").unwrap();
    let sdm630 = modbus::model("SDM630").unwrap();
    let ddsu = modbus::model("ddsu666").unwrap();
    for v in mb {
        let bytes = hex(&v.hex);
        let stated = hex(v.crc16.as_deref().unwrap());
        let body = &bytes[..bytes.len() - 2];
        // The "crc16" field is the correct CRC, whether or not the frame carries it.
        assert_eq!(
            modbus::crc_bytes(body).as_slice(),
            stated.as_slice(),
            "{}",
            v.name
        );
        if !v.expected_valid {
            assert!(!v.checksum_ok);
            let found = u16::from_le_bytes([bytes[bytes.len() - 2], bytes[bytes.len() - 1]]);
            assert_eq!(
                modbus::check_crc(&bytes),
                Err(CrcError::Mismatch {
                    computed: modbus::crc16(body),
                    found
                }),
                "{}",
                v.name
            );
            continue;
        }
        assert_eq!(modbus::check_crc(&bytes), Ok(body), "{}", v.name);
        if bytes.len() == 8 {
            // A read request: rebuild it from its fields.
            let function = if bytes[1] == 3 {
                ReadFunction::Holding
            } else {
                ReadFunction::Input
            };
            let address = u16::from_be_bytes([bytes[2], bytes[3]]);
            let count = u16::from_be_bytes([bytes[4], bytes[5]]);
            assert_eq!(
                modbus::read_request(bytes[0], function, address, count).as_slice(),
                bytes.as_slice()
            );
            assert_eq!(count, 2, "{}", v.name);
            // The register the vector names is the one our maps read.
            match v.name.as_str() {
                "modbus_fc04_read_2regs_from_0" => {
                    assert_eq!(
                        (sdm120.voltage.address, sdm120.read_function),
                        (address, function)
                    )
                }
                "modbus_fc03_read_DDSU666_voltage_0x2000" => {
                    assert_eq!(
                        (ddsu.voltage.address, ddsu.read_function),
                        (address, function)
                    )
                }
                "computed_modbus_fc04_SDM_import_kWh_0x0048" => {
                    assert_eq!(
                        (sdm120.import_energy.address, sdm120.read_function),
                        (address, function)
                    );
                    assert_eq!(
                        (sdm630.import_energy.address, sdm630.read_function),
                        (address, function)
                    );
                }
                "computed_modbus_fc03_DDSU666_ImpEp_0x4000" => {
                    assert_eq!(
                        (ddsu.import_energy.address, ddsu.read_function),
                        (address, function)
                    )
                }
                // 30343 total energy (import + export): documented, not what the agent reads.
                "computed_modbus_fc04_SDM120_total_kWh_0x0156" => assert_eq!(address, 0x0156),
                other => panic!("{other}: unexpected request vector"),
            }
        } else {
            let response = modbus::parse_read_response(&bytes).unwrap();
            let regs: Vec<u16> = response.registers().collect();
            match v.name.as_str() {
                "modbus_fc04_resp_230.2V" => {
                    assert_eq!(ddsu.voltage_dv(&regs), Ok(2302));
                    assert_eq!(sdm120.voltage_dv(&regs), Ok(2302));
                }
                "computed_modbus_fc04_resp_1234.5" => {
                    assert_eq!(sdm120.energy_wh(&regs), Ok(Wh(1_234_500)));
                    assert_eq!(ddsu.energy_wh(&regs), Ok(Wh(1_234_500)));
                    assert_eq!(ddsu.power_w(&regs).map(|w| w.0), Ok(1_234_500));
                    assert_eq!(sdm630.power_w(&regs).map(|w| w.0), Ok(1235));
                }
                other => panic!("{other}: unexpected response vector"),
            }
        }
    }
}
