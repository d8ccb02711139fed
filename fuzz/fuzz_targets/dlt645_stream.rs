//! DL/T 645 stream decoder: arbitrary bytes, fed whole and then in chunks whose sizes
//! come from the input, through `decode` and a `FrameReader`; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qingnuan_shared::dlt645::{decode, decode_value, parse_reply, Address, Di, FrameReader};

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, used)) = decode(data) {
        assert!(used <= data.len());
        let di = Di::from_data(&frame.data).unwrap_or(Di(0));
        let _ = parse_reply(&frame, &Address::WILDCARD, di);
        if let Some(v) = frame.data.get(4..) {
            let _ = decode_value(di, v);
        }
    }
    let mut reader: FrameReader<256> = FrameReader::new();
    let (sizes, bytes) = data.split_at(data.len().min(4));
    let mut rest = bytes;
    for s in sizes.iter().cycle().take(64) {
        if rest.is_empty() {
            break;
        }
        let n = usize::from(*s).max(1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        reader.push(chunk, |_| {});
        assert!(reader.buffered() <= 256);
        rest = tail;
    }
    reader.push(rest, |_| {});
});
