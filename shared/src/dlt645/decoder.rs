//! Stream decoding of DL/T 645 frames: a pure `decode` over a byte slice and a
//! fixed-capacity `FrameReader` for bytes that arrive in arbitrary chunks (TCP, serial).
//!
//! Rules (protocol-facts §5): skip any FE and garbage before 68H; require 68H at
//! +7; wait for 12+L bytes (L ≤ 200); check CS (sum mod 256 from the first 68H to
//! the last data byte) and the 16H end; undo +33H. On an invalid candidate the
//! scan resumes at the byte after its 68H. Never panics, whatever the input.

use heapless::Vec;

use super::address::Address;
use super::control::Control;
use super::frame::{
    checksum, Frame, FrameData, DATA_OFFSET, END, MAX_DATA_LEN, MAX_FRAME_LEN, OVERHEAD_LEN, START,
};

/// Why a candidate frame (bytes from a 68H) is not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidReason {
    /// The byte at +7 from the 68H is not 68H.
    #[error("no second 68H at offset 7")]
    NoSecondStart,
    /// L is above 200.
    #[error("length field above {MAX_DATA_LEN}")]
    LengthTooLong,
    /// The checksum byte does not match the sum.
    #[error("checksum mismatch")]
    BadChecksum,
    /// The byte after the checksum is not 16H.
    #[error("no 16H end byte")]
    BadEnd,
}

/// Why [`decode`] returned no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed. The first `skip` bytes hold no frame start (FE,
    /// garbage) and may be dropped.
    #[error("incomplete frame")]
    Incomplete {
        /// Leading bytes that can be discarded.
        skip: usize,
    },
    /// The candidate starting at `skip - 1` is not a frame: drop `skip` bytes
    /// (through its 68H) and decode again.
    #[error("invalid frame: {reason}")]
    Invalid {
        /// What was wrong.
        reason: InvalidReason,
        /// Leading bytes to discard before trying again.
        skip: usize,
    },
}

/// What one candidate start yields.
enum Candidate {
    /// A valid frame of this many bytes from its 68H.
    Valid(usize),
    Incomplete,
    Invalid(InvalidReason),
}

/// Decodes the first frame in `buf`.
///
/// Returns the frame and the number of bytes consumed (everything up to and
/// including its 16H, so leading FE and garbage too). If the first candidate is
/// incomplete but a later 68H starts a complete valid frame, that frame is
/// returned: a stray 68H in garbage must not hold back a real reply until more
/// bytes arrive.
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let Some(start) = find_start(buf, 0) else {
        return Err(DecodeError::Incomplete { skip: buf.len() });
    };
    match candidate(buf, start) {
        Candidate::Valid(len) => Ok((build(buf, start, len), start + len)),
        Candidate::Invalid(reason) => Err(DecodeError::Invalid {
            reason,
            skip: start + 1,
        }),
        Candidate::Incomplete => {
            let mut from = start + 1;
            while let Some(next) = find_start(buf, from) {
                if let Candidate::Valid(len) = candidate(buf, next) {
                    return Ok((build(buf, next, len), next + len));
                }
                from = next + 1;
            }
            Err(DecodeError::Incomplete { skip: start })
        }
    }
}

fn find_start(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.iter().position(|&b| b == START).map(|i| i + from)
}

/// Examines the bytes from the 68H at `start`.
fn candidate(buf: &[u8], start: usize) -> Candidate {
    let Some(bytes) = buf.get(start..) else {
        return Candidate::Incomplete;
    };
    match bytes.get(7) {
        None => return Candidate::Incomplete,
        Some(&b) if b != START => return Candidate::Invalid(InvalidReason::NoSecondStart),
        Some(_) => {}
    }
    let Some(&len) = bytes.get(9) else {
        return Candidate::Incomplete;
    };
    let len = usize::from(len);
    if len > MAX_DATA_LEN {
        return Candidate::Invalid(InvalidReason::LengthTooLong);
    }
    let total = OVERHEAD_LEN + len;
    let Some(frame) = bytes.get(..total) else {
        return Candidate::Incomplete;
    };
    let (summed, tail) = frame.split_at(10 + len);
    let (Some(&cs), Some(&end)) = (tail.first(), tail.get(1)) else {
        return Candidate::Incomplete;
    };
    if checksum(summed) != cs {
        return Candidate::Invalid(InvalidReason::BadChecksum);
    }
    if end != END {
        return Candidate::Invalid(InvalidReason::BadEnd);
    }
    Candidate::Valid(total)
}

/// The frame of `len` bytes at `start`, already validated by [`candidate`].
fn build(buf: &[u8], start: usize, len: usize) -> Frame {
    let summed = buf.get(start..start + len.saturating_sub(2)).unwrap_or(&[]);
    let mut address = [0u8; 6];
    for (slot, b) in address.iter_mut().zip(summed.iter().skip(1)) {
        *slot = *b;
    }
    let mut data = FrameData::new();
    for &b in summed.iter().skip(10) {
        // At most MAX_DATA_LEN bytes, checked above, so every push fits.
        let _ = data.push(b.wrapping_sub(DATA_OFFSET));
    }
    let control = Control(summed.get(8).copied().unwrap_or(0));
    Frame {
        address: Address::from_wire(address),
        control,
        data,
    }
}

/// A fixed-capacity reassembly buffer in front of [`decode`].
///
/// Feed bytes as they arrive, then take frames until [`FrameReader::next_frame`]
/// returns `None`. `N` must be at least [`MAX_FRAME_LEN`] (checked at compile
/// time); then after draining, at most one partial frame (< 212 bytes) stays
/// buffered, so every `feed` after a drain takes at least `N - 211` bytes.
#[derive(Clone, Debug)]
pub struct FrameReader<const N: usize = 512> {
    buf: Vec<u8, N>,
}

impl<const N: usize> FrameReader<N> {
    const CAPACITY_OK: () = assert!(
        N >= MAX_FRAME_LEN,
        "FrameReader needs room for a whole frame"
    );

    /// An empty reader.
    pub const fn new() -> Self {
        let () = Self::CAPACITY_OK;
        Self { buf: Vec::new() }
    }

    /// Appends as many of `bytes` as fit; returns how many were taken. Drain with
    /// [`FrameReader::next_frame`] and feed the rest.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let take = bytes.len().min(N - self.buf.len());
        let taken = bytes.get(..take).unwrap_or(&[]);
        // `take` is bounded by the free capacity, so this cannot fail.
        let _ = self.buf.extend_from_slice(taken);
        take
    }

    /// The next frame, an invalid candidate (already skipped, for logging), or
    /// `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, InvalidReason>> {
        match decode(&self.buf) {
            Ok((frame, used)) => {
                self.discard(used);
                Some(Ok(frame))
            }
            Err(DecodeError::Invalid { reason, skip }) => {
                self.discard(skip);
                Some(Err(reason))
            }
            Err(DecodeError::Incomplete { skip }) => {
                self.discard(skip);
                None
            }
        }
    }

    /// Feeds all of `bytes`, calling `on_frame` for every frame or invalid
    /// candidate found on the way.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(Result<Frame, InvalidReason>),
    ) {
        loop {
            let taken = self.feed(bytes);
            bytes = bytes.get(taken..).unwrap_or(&[]);
            while let Some(result) = self.next_frame() {
                on_frame(result);
            }
            if bytes.is_empty() {
                break;
            }
        }
    }

    /// Bytes held (a partial frame, or garbage not yet scanned).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Drops everything held, e.g. before a new request on a half-duplex bus.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn discard(&mut self, n: usize) {
        // Drop the first `n` bytes in place (the buffer is small and `n` usually all of it).
        let n = n.min(self.buf.len());
        let keep = self.buf.len() - n;
        self.buf.copy_within(n.., 0);
        self.buf.truncate(keep);
    }
}

impl<const N: usize> Default for FrameReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    const VOLTS: &str = "68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16";

    #[test]
    fn decodes_with_preamble_and_garbage() {
        let mut bytes = hex("00 FE 13 FE FE");
        bytes.extend(hex(VOLTS));
        bytes.extend(hex("FE FE"));
        let (frame, used) = decode(&bytes).unwrap();
        assert_eq!(used, 5 + 18);
        assert_eq!(frame.address.to_string(), "000000000161");
        assert_eq!(frame.control, Control(0x91));
        assert_eq!(frame.data.as_slice(), &[0x00, 0x01, 0x01, 0x02, 0x01, 0x10]);
    }

    #[test]
    fn reports_incomplete_and_invalid() {
        let full = hex(VOLTS);
        for cut in 0..full.len() {
            // The 68H at 0 may start a frame, so nothing can be dropped yet.
            assert_eq!(
                decode(&full[..cut]),
                Err(DecodeError::Incomplete { skip: 0 }),
                "cut {cut}"
            );
        }
        assert_eq!(
            decode(&hex("FE FE 01")),
            Err(DecodeError::Incomplete { skip: 3 })
        );
        let mut bad_cs = full.clone();
        bad_cs[16] ^= 1;
        assert_eq!(
            decode(&bad_cs),
            Err(DecodeError::Invalid {
                reason: InvalidReason::BadChecksum,
                skip: 1
            })
        );
        let mut bad_end = full.clone();
        bad_end[17] = 0x17;
        assert_eq!(
            decode(&bad_end),
            Err(DecodeError::Invalid {
                reason: InvalidReason::BadEnd,
                skip: 1
            })
        );
        let mut no_second = full.clone();
        no_second[7] = 0x00;
        assert_eq!(
            decode(&no_second[..8]),
            Err(DecodeError::Invalid {
                reason: InvalidReason::NoSecondStart,
                skip: 1
            })
        );
        let mut too_long = full.clone();
        too_long[9] = 201;
        assert_eq!(
            decode(&too_long[..10]),
            Err(DecodeError::Invalid {
                reason: InvalidReason::LengthTooLong,
                skip: 1
            })
        );
    }

    #[test]
    fn a_stray_start_does_not_hold_back_a_frame() {
        // 68 .. 68 with L = 0x61 claims 109 bytes, but a complete frame follows.
        let mut bytes = hex("68 00 00 00 00 00 00 68 11 61");
        bytes.extend(hex(VOLTS));
        let (frame, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.control, Control(0x91));
    }

    #[test]
    fn reader_resynchronises_after_a_bad_frame() {
        let mut bad = hex(VOLTS);
        bad[16] ^= 0xFF;
        let mut stream = bad;
        stream.extend(hex(VOLTS));
        let mut reader: FrameReader = FrameReader::new();
        let mut seen = std::vec::Vec::new();
        reader.push(&stream, |r| seen.push(r.map(|f| f.control)));
        // The bad frame's second 68H is tried too (scan resumes at the next byte).
        assert_eq!(
            seen,
            vec![
                Err(InvalidReason::BadChecksum),
                Err(InvalidReason::NoSecondStart),
                Ok(Control(0x91))
            ]
        );
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn reader_takes_long_garbage_in_pieces() {
        let mut stream = std::vec![0x00u8; 2000];
        stream.extend(hex(VOLTS));
        let mut reader: FrameReader<256> = FrameReader::new();
        let mut frames = 0;
        reader.push(&stream, |r| frames += usize::from(r.is_ok()));
        assert_eq!(frames, 1);
    }
}
