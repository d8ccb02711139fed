//! DL/T 645 frames and their encoder: the `Frame` value, the FE preamble, and the
//! builders for the commands a master sends and the replies a meter sends.
//!
//! Wire layout (protocol-facts §1.2):
//! `[FE×n] 68 A0..A5 68 C L DATA(+33H each) CS 16`, CS = sum mod 256 from the
//! first 68 to the last data byte.

use heapless::Vec;

use super::address::Address;
use super::control::{Control, ErrorBits, Function, ReplyKind};
use super::datetime::MeterDateTime;
use super::di::Di;

/// Largest data field L a frame may carry (reads are limited to 200 bytes).
pub const MAX_DATA_LEN: usize = 200;
/// Bytes of a frame around its data: 68, 6 address bytes, 68, C, L, CS, 16.
pub const OVERHEAD_LEN: usize = 12;
/// Most FE bytes the encoder writes.
pub const MAX_PREAMBLE: u8 = 4;
/// Longest encoded frame: 4 FE + 12 + 200.
pub const MAX_FRAME_LEN: usize = MAX_PREAMBLE as usize + OVERHEAD_LEN + MAX_DATA_LEN;

/// Start byte 68H.
pub const START: u8 = 0x68;
/// End byte 16H.
pub const END: u8 = 0x16;
/// Preamble (wake-up) byte FEH.
pub const WAKE: u8 = 0xFE;
/// Offset the sender adds to every data byte.
pub const DATA_OFFSET: u8 = 0x33;

/// An encoded frame, preamble included.
pub type FrameBytes = Vec<u8, MAX_FRAME_LEN>;
/// A frame's data field (after -33H).
pub type FrameData = Vec<u8, MAX_DATA_LEN>;

/// Number of FE wake-up bytes before a frame: 0 to 4, default 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Preamble(u8);

impl Preamble {
    /// No FE bytes (some meters reply this way).
    pub const NONE: Self = Self(0);
    /// Four FE bytes, what a master sends.
    pub const FOUR: Self = Self(4);

    /// `n` FE bytes, or `None` above [`MAX_PREAMBLE`].
    pub const fn new(n: u8) -> Option<Self> {
        if n <= MAX_PREAMBLE {
            Some(Self(n))
        } else {
            None
        }
    }

    /// The number of FE bytes.
    pub const fn count(self) -> u8 {
        self.0
    }
}

impl Default for Preamble {
    fn default() -> Self {
        Self::FOUR
    }
}

/// Why a frame could not be built or encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The data field would exceed [`MAX_DATA_LEN`] bytes.
    #[error("data field longer than {MAX_DATA_LEN} bytes")]
    DataTooLong,
    /// The output buffer is shorter than the encoded frame.
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
    },
}

/// One DL/T 645 frame, with its data field in plain form (the +33H step undone).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The address field (the meter's real address in a reply).
    pub address: Address,
    /// The control code C.
    pub control: Control,
    /// The data field after -33H; its length is L (at most [`MAX_DATA_LEN`]).
    pub data: FrameData,
}

impl Frame {
    /// A frame with `data` in plain form (before +33H).
    pub fn new(address: Address, control: Control, data: &[u8]) -> Result<Self, EncodeError> {
        let data = Vec::from_slice(data).map_err(|()| EncodeError::DataTooLong)?;
        Ok(Self {
            address,
            control,
            data,
        })
    }

    /// Read data 11H: DI, L=4.
    pub fn read_data(address: Address, di: Di) -> Self {
        Self::with_parts(
            address,
            Control::request(Function::ReadData),
            &[&di.to_wire()],
        )
    }

    /// Read follow-up 12H: DI + SEQ, L=5.
    pub fn read_follow_up(address: Address, di: Di, seq: u8) -> Self {
        Self::with_parts(
            address,
            Control::request(Function::ReadFollowUp),
            &[&di.to_wire(), &[seq]],
        )
    }

    /// Read communication address 13H: address AA×6, L=0.
    pub fn read_address() -> Self {
        Self::with_parts(
            Address::WILDCARD,
            Control::request(Function::ReadAddress),
            &[],
        )
    }

    /// Broadcast time 08H: address 99×6, L=6, data `ss mm hh DD MM YY` (BCD). No reply.
    pub fn broadcast_time(at: &MeterDateTime) -> Self {
        Self::with_parts(
            Address::BROADCAST,
            Control::request(Function::BroadcastTime),
            &[&at.to_broadcast_bytes()],
        )
    }

    /// Read-data reply: 91H (or B1H when `follow_up`), data = DI + `value`.
    pub fn data_reply(
        address: Address,
        di: Di,
        value: &[u8],
        follow_up: bool,
    ) -> Result<Self, EncodeError> {
        let kind = if follow_up {
            ReplyKind::FollowUp
        } else {
            ReplyKind::Normal
        };
        Self::checked_parts(
            address,
            Control::reply(Function::ReadData, kind),
            &[&di.to_wire(), value],
        )
    }

    /// Read-follow-up reply: 92H (or B2H when `more` follow), data = DI + `value` + SEQ.
    pub fn follow_up_reply(
        address: Address,
        di: Di,
        value: &[u8],
        seq: u8,
        more: bool,
    ) -> Result<Self, EncodeError> {
        let kind = if more {
            ReplyKind::FollowUp
        } else {
            ReplyKind::Normal
        };
        Self::checked_parts(
            address,
            Control::reply(Function::ReadFollowUp, kind),
            &[&di.to_wire(), value, &[seq]],
        )
    }

    /// Abnormal reply to `function` (D1H for read data): data = the ERR byte, L=1.
    pub fn abnormal_reply(address: Address, function: Function, err: ErrorBits) -> Self {
        Self::with_parts(
            address,
            Control::reply(function, ReplyKind::Abnormal),
            &[&[err.bits()]],
        )
    }

    /// Read-address reply 93H: the real address in the header and in the data (L=6).
    pub fn address_reply(address: Address) -> Self {
        Self::with_parts(
            address,
            Control::reply(Function::ReadAddress, ReplyKind::Normal),
            &[&address.to_wire()],
        )
    }

    /// The length of this frame on the wire with `preamble`.
    pub fn encoded_len(&self, preamble: Preamble) -> usize {
        usize::from(preamble.count()) + OVERHEAD_LEN + self.data.len()
    }

    /// Encodes into a fresh buffer; cannot fail, the type bounds every part.
    pub fn encode(&self, preamble: Preamble) -> FrameBytes {
        let mut out = [0u8; MAX_FRAME_LEN];
        let n = self.encode_into(preamble, &mut out).unwrap_or(0);
        // `n <= MAX_FRAME_LEN` by construction, so this copy always fits.
        Vec::from_slice(out.get(..n).unwrap_or(&[])).unwrap_or_default()
    }

    /// Encodes into `out`, returning the number of bytes written.
    pub fn encode_into(&self, preamble: Preamble, out: &mut [u8]) -> Result<usize, EncodeError> {
        let needed = self.encoded_len(preamble);
        let out = out
            .get_mut(..needed)
            .ok_or(EncodeError::BufferTooSmall { needed })?;
        let pre = usize::from(preamble.count());
        let (fe, body) = out.split_at_mut(pre);
        fe.fill(WAKE);
        let mut w = Writer { buf: body, pos: 0 };
        w.put(START);
        for b in self.address.to_wire() {
            w.put(b);
        }
        w.put(START);
        w.put(self.control.0);
        // The data Vec holds at most MAX_DATA_LEN (200) bytes, so L fits a byte.
        w.put(u8::try_from(self.data.len()).unwrap_or(u8::MAX));
        for &b in &self.data {
            w.put(b.wrapping_add(DATA_OFFSET));
        }
        let cs = checksum(w.buf.get(..w.pos).unwrap_or(&[]));
        w.put(cs);
        w.put(END);
        Ok(needed)
    }

    /// If this is a read reply whose data starts with `di`, the value bytes after it.
    pub fn value_for(&self, di: Di) -> Option<&[u8]> {
        match Di::from_data(&self.data) {
            Some(echo) if echo == di => self.data.get(4..),
            _ => None,
        }
    }

    fn with_parts(address: Address, control: Control, parts: &[&[u8]]) -> Self {
        // Callers pass at most 6 bytes, far below MAX_DATA_LEN.
        Self::checked_parts(address, control, parts).unwrap_or(Self {
            address,
            control,
            data: Vec::new(),
        })
    }

    fn checked_parts(
        address: Address,
        control: Control,
        parts: &[&[u8]],
    ) -> Result<Self, EncodeError> {
        let mut data = FrameData::new();
        for part in parts {
            data.extend_from_slice(part)
                .map_err(|()| EncodeError::DataTooLong)?;
        }
        Ok(Self {
            address,
            control,
            data,
        })
    }
}

impl core::fmt::Display for Frame {
    /// `123456789012 C=91 L=8 [00 00 01 00 78 56 34 12]` (data after -33H), for logs.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} C={:02X} L={} [",
            self.address,
            self.control.0,
            self.data.len()
        )?;
        for (i, b) in self.data.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{b:02X}")?;
        }
        f.write_str("]")
    }
}

/// Writes bytes into a slice whose length was checked up front.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.pos) {
            *slot = b;
        }
        self.pos += 1;
    }
}

/// The DL/T 645 checksum: the sum of `bytes` modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |cs, &b| cs.wrapping_add(b))
}

/// Read data 11H for `di` from `address`, encoded.
pub fn read_data(address: Address, di: Di, preamble: Preamble) -> FrameBytes {
    Frame::read_data(address, di).encode(preamble)
}

/// Read follow-up 12H (`di` + `seq`) from `address`, encoded.
pub fn read_follow_up(address: Address, di: Di, seq: u8, preamble: Preamble) -> FrameBytes {
    Frame::read_follow_up(address, di, seq).encode(preamble)
}

/// Read communication address 13H (to AA×6), encoded. Point-to-point only.
pub fn read_address(preamble: Preamble) -> FrameBytes {
    Frame::read_address().encode(preamble)
}

/// Broadcast time 08H (to 99×6), encoded. Meters do not reply.
pub fn broadcast_time(at: &MeterDateTime, preamble: Preamble) -> FrameBytes {
    Frame::broadcast_time(at).encode(preamble)
}

/// Encodes any frame (the meter simulator's replies too).
pub fn encode(frame: &Frame, preamble: Preamble) -> FrameBytes {
    frame.encode(preamble)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlt645::di;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    #[test]
    fn builds_the_golden_requests() {
        let a: Address = "000000000161".parse().unwrap();
        assert_eq!(
            read_data(a, di::FORWARD_ACTIVE_TOTAL, Preamble::NONE).as_slice(),
            hex("68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
        );
        assert_eq!(
            read_data(a, di::CURRENT_A, Preamble::FOUR).as_slice(),
            hex("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 34 35 35 18 16")
        );
        assert_eq!(
            read_address(Preamble::default()).as_slice(),
            hex("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
        );
        let b: Address = "123456781012".parse().unwrap();
        assert_eq!(
            read_follow_up(b, di::FORWARD_ACTIVE_TOTAL, 1, Preamble::FOUR).as_slice(),
            hex("FE FE FE FE 68 12 10 78 56 34 12 68 12 05 33 33 34 33 34 1E 16")
        );
        let t = MeterDateTime::new(2026, 5, 17, 12, 30, 0).unwrap();
        assert_eq!(
            broadcast_time(&t, Preamble::NONE).as_slice(),
            hex("68 99 99 99 99 99 99 68 08 06 33 63 45 4A 38 59 2A 16")
        );
    }

    #[test]
    fn builds_the_golden_replies() {
        let a: Address = "123456789012".parse().unwrap();
        let f = Frame::data_reply(
            a,
            di::FORWARD_ACTIVE_TOTAL,
            &[0x78, 0x56, 0x34, 0x12],
            false,
        )
        .unwrap();
        assert_eq!(
            f.encode(Preamble::NONE).as_slice(),
            hex("68 12 90 78 56 34 12 68 91 08 33 33 34 33 AB 89 67 45 CC 16")
        );
        let e = Frame::abnormal_reply(a, Function::ReadData, ErrorBits::NO_DATA);
        assert_eq!(
            e.encode(Preamble::NONE).as_slice(),
            hex("68 12 90 78 56 34 12 68 D1 01 35 8D 16")
        );
        let r = Frame::address_reply("000000000001".parse().unwrap());
        assert_eq!(
            r.encode(Preamble::NONE).as_slice(),
            hex("68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16")
        );
        assert_eq!(
            f.value_for(di::FORWARD_ACTIVE_TOTAL),
            Some(&[0x78, 0x56, 0x34, 0x12][..])
        );
        assert_eq!(f.value_for(di::FORWARD_ACTIVE_T4), None);
        assert_eq!(
            f.to_string(),
            "123456789012 C=91 L=8 [00 00 01 00 78 56 34 12]"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let a = Address::WILDCARD;
        assert!(Frame::data_reply(a, di::FORWARD_ACTIVE_BLOCK, &[0; 196], false).is_ok());
        assert_eq!(
            Frame::data_reply(a, di::FORWARD_ACTIVE_BLOCK, &[0; 197], false),
            Err(EncodeError::DataTooLong)
        );
        assert_eq!(
            Frame::new(a, Control(0x91), &[0; 201]),
            Err(EncodeError::DataTooLong)
        );
        let big = Frame::new(a, Control(0x91), &[0; 200]).unwrap();
        assert_eq!(big.encode(Preamble::FOUR).len(), MAX_FRAME_LEN);
        let mut small = [0u8; 15];
        assert_eq!(
            Frame::read_address().encode_into(Preamble::FOUR, &mut small),
            Err(EncodeError::BufferTooSmall { needed: 16 })
        );
        assert_eq!(Preamble::new(5), None);
        assert_eq!(Preamble::new(2).map(Preamble::count), Some(2));
    }
}
