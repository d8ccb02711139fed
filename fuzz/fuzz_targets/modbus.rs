//! Modbus RTU: arbitrary bytes as a read response (and with a valid CRC appended, so the
//! parser gets past the checksum), then every model's register decoders; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qingnuan_shared::modbus::{crc_bytes, kwh_f32_to_wh, parse_read_response, MODELS};

fn exercise(frame: &[u8]) {
    if let Ok(r) = parse_read_response(frame) {
        let regs: Vec<u16> = r.registers().collect();
        assert_eq!(regs.len() * 2, r.data.len());
        for m in &MODELS {
            let _ = m.energy_wh(&regs);
            let _ = m.power_w(&regs);
            let _ = m.voltage_dv(&regs);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut f = data.to_vec();
    f.extend_from_slice(&crc_bytes(data));
    exercise(&f);
    if let Some(b) = data.get(..4) {
        let _ = kwh_f32_to_wh(f32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    }
});
