//! Hostile input, in CI: arbitrary bytes (20,000 cases each) through the Modbus RTU
//! response parser and register decoders, the DL/T 645 stream reader fed in arbitrary
//! chunks, and the wire payloads and topics. Nothing may panic; what is accepted is
//! consistent. The same targets run under cargo-fuzz in `fuzz/`.

use proptest::prelude::*;
use qingnuan_shared::dlt645::FrameReader;
use qingnuan_shared::modbus::{self, crc_bytes, parse_read_response, MODELS};
use qingnuan_shared::units::GatewayId;
use qingnuan_shared::wire::{parse_topic, ReadingsBatch, Status};

/// Bytes from a seed (a per-byte strategy makes 20k cases slow in a debug build).
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

/// Registers of a response body, as the agent would take them.
fn registers(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

fn exercise_modbus(frame: &[u8]) {
    if let Ok(r) = parse_read_response(frame) {
        assert_eq!(r.len() * 2, r.data.len());
        assert!(r.data.len() + 5 <= frame.len());
        let regs: Vec<u16> = r.registers().collect();
        assert_eq!(regs.len(), r.len());
        for m in &MODELS {
            let _ = m.energy_wh(&regs);
            let _ = m.power_w(&regs);
            let _ = m.voltage_dv(&regs);
        }
    }
}

/// `body` with its CRC appended, so the parser goes past the checksum.
fn with_crc(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend_from_slice(&crc_bytes(body));
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn modbus_responses_never_panic(raw in bytes(300)) {
        exercise_modbus(&raw);
        exercise_modbus(&with_crc(&raw));
        // Shaped like a read response: unit, function, byte count, then data.
        if raw.len() >= 2 {
            let mut body = vec![raw[0], raw[1] & 0x87];
            let n = u8::try_from((raw.len() - 2).min(250)).unwrap_or(0);
            body.push(n);
            body.extend_from_slice(&raw[2..2 + usize::from(n)]);
            exercise_modbus(&with_crc(&body));
        }
    }

    #[test]
    fn modbus_register_decoders_never_panic(raw in bytes(16), bits in any::<u32>()) {
        let regs = registers(&raw);
        for m in &MODELS {
            let _ = m.energy_wh(&regs);
            let _ = m.power_w(&regs);
            let _ = m.voltage_dv(&regs);
        }
        let _ = modbus::kwh_f32_to_wh(f32::from_bits(bits));
    }

    #[test]
    fn dlt645_stream_reader_survives_any_chunking(raw in bytes(600), cuts in proptest::collection::vec(0usize..600, 0..8)) {
        let mut reader: FrameReader<256> = FrameReader::new();
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= raw.len()).collect();
        cuts.sort_unstable();
        let mut events = 0usize;
        let mut at = 0;
        for c in cuts.into_iter().chain([raw.len()]) {
            reader.push(&raw[at..c], |_| events += 1);
            assert!(reader.buffered() <= 256);
            at = c;
        }
        assert!(events <= raw.len());
    }

    #[test]
    fn wire_payloads_and_topics_never_panic(raw in bytes(400), t in "\\PC{0,80}") {
        let gw = GatewayId::new("gw-1").unwrap();
        if let Ok(b) = serde_json::from_slice::<ReadingsBatch>(&raw) {
            let _ = b.validate(&gw);
        }
        if let Ok(s) = serde_json::from_slice::<Status>(&raw) {
            let _ = s.validate(&gw);
        }
        let _ = parse_topic(&t);
        let _ = parse_topic(&String::from_utf8_lossy(&raw));
        let _ = parse_topic(&format!("qn/v1/gw/{t}"));
    }

    #[test]
    fn mutated_batches_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut p = VALID_BATCH.as_bytes().to_vec();
        for (at, b) in edits {
            let i = at.index(p.len());
            match b % 3 {
                0 => p[i] = b,
                1 => { p.remove(i); }
                _ => p.insert(i, b"\"{}[],:-0123456789e.".get(usize::from(b) % 17).copied().unwrap_or(b'0')),
            }
        }
        let gw = GatewayId::new("gw-0001").unwrap();
        if let Ok(b) = serde_json::from_slice::<ReadingsBatch>(&p) {
            let _ = b.validate(&gw);
        }
    }
}

const VALID_BATCH: &str = r#"{"v":1,"gw":"gw-0001","seq":1842,"boot":"b3f1c2","sent":1764331260,"readings":[{"meter":"123456781012","ts":1764331200,"e_wh":1234560,"e_valley_wh":456780,"p_w":2150,"meter_ts":1764331199},{"meter":"123456781013","ts":1764331203,"err":"timeout"}]}"#;
