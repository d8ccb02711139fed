//! One poll cycle's readings as `readings` envelopes (CONTRACT.md): `v`, `gw`, `seq`,
//! `boot`, split so that no payload exceeds the 64 KiB limit. `sent` is added at
//! publish time, because a replayed batch gets a new one.

use qingnuan_shared::units::GatewayId;
use qingnuan_shared::wire::{BootId, Reading, ReadingsBatch, MAX_PAYLOAD_BYTES, VERSION};

/// Room left in a payload for `"sent":…,`, bytes.
const SENT_ROOM: usize = 32;

/// Numbers batches within one agent start.
#[derive(Debug, Clone)]
pub struct Batcher {
    gw: GatewayId,
    boot: BootId,
    seq: u64,
}

impl Batcher {
    /// A batcher for `gw` with a fresh random boot id (8 hex digits).
    pub fn new(gw: GatewayId) -> Self {
        let mut boot = BootId::new();
        let id = format!("{:08x}", rand::random::<u32>());
        let _ = boot.push_str(&id);
        Self { gw, boot, seq: 0 }
    }

    /// This start's boot id.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// Encodes one cycle's readings into one or more envelopes (JSON, without `sent`).
    pub fn encode(&mut self, readings: Vec<Reading>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = readings;
        while !rest.is_empty() {
            // Take as many readings as fit; halve until the payload is small enough.
            let mut n = rest.len();
            loop {
                let batch = ReadingsBatch {
                    v: VERSION,
                    gw: self.gw.clone(),
                    seq: self.seq + 1,
                    boot: self.boot.clone(),
                    sent: None,
                    readings: rest.get(..n).unwrap_or(&[]).to_vec(),
                };
                let bytes = serde_json::to_vec(&batch).unwrap_or_default();
                if bytes.len() + SENT_ROOM <= MAX_PAYLOAD_BYTES || n == 1 {
                    self.seq += 1;
                    out.push(bytes);
                    rest.drain(..n);
                    break;
                }
                n = n.div_ceil(2);
            }
        }
        out
    }
}

/// The payload as published: the stored envelope with `"sent":<now>` added in front.
pub fn with_sent(stored: &[u8], sent: i64) -> Vec<u8> {
    let body = stored.strip_prefix(b"{").unwrap_or(stored);
    let mut out = Vec::with_capacity(stored.len() + SENT_ROOM);
    out.extend_from_slice(format!("{{\"sent\":{sent},").as_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::units::MeterId;

    fn reading(i: i64) -> Reading {
        Reading {
            meter: MeterId::new(&format!("{:012}", 123_456_780_000 + i)).unwrap(),
            ts: 1_764_331_200 + i,
            e_wh: Some(1_000_000 + i),
            e_valley_wh: Some(400_000 + i),
            p_w: Some(2150),
            meter_ts: Some(1_764_331_199 + i),
            err: None,
        }
    }

    #[test]
    fn seq_increases_and_sent_is_added() {
        let mut b = Batcher::new(GatewayId::new("gw-0001").unwrap());
        let one = b.encode(vec![reading(1), reading(2)]);
        let two = b.encode(vec![reading(3)]);
        assert_eq!((one.len(), two.len()), (1, 1));
        let p: ReadingsBatch = serde_json::from_slice(&with_sent(&two[0], 1_764_331_260)).unwrap();
        assert_eq!(p.seq, 2);
        assert_eq!(p.sent, Some(1_764_331_260));
        assert_eq!(p.boot.as_str(), b.boot());
        assert_eq!(p.readings, vec![reading(3)]);
        let first: ReadingsBatch = serde_json::from_slice(&one[0]).unwrap();
        assert_eq!((first.seq, first.sent, first.readings.len()), (1, None, 2));
    }

    #[test]
    fn large_cycles_are_split_under_64_kib_in_order() {
        let mut b = Batcher::new(GatewayId::new("gw-0001").unwrap());
        let all: Vec<_> = (0..2000).map(reading).collect();
        let parts = b.encode(all.clone());
        assert!(parts.len() > 1);
        let mut back = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.len() + SENT_ROOM <= MAX_PAYLOAD_BYTES);
            let batch: ReadingsBatch = serde_json::from_slice(p).unwrap();
            assert_eq!(batch.seq, i as u64 + 1);
            back.extend(batch.readings);
        }
        assert_eq!(back, all);
    }
}
