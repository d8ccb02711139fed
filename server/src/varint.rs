//! LEB128 varints (zigzag for signed values), the byte format of the compact blobs the
//! store keeps: resume states (engine/resume.rs) and packed nights (store/nights.rs).

/// Appends varints to a byte buffer.
pub struct Writer(pub Vec<u8>);

impl Writer {
    /// An unsigned value, 7 bits a byte, low first.
    pub fn uint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }

    /// A signed value, zigzag-encoded (small magnitudes take one byte).
    pub fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

/// Reads what [`Writer`] wrote; every method gives `None` on truncated or overlong input.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// One raw byte.
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// The next `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    /// An unsigned varint.
    pub fn uint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A zigzag varint.
    pub fn int(&mut self) -> Option<i64> {
        let u = self.uint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A count or length, refused above 2^24 (a corrupt blob must not allocate gigabytes).
    pub fn len(&mut self) -> Option<usize> {
        usize::try_from(self.uint()?).ok().filter(|&n| n <= 1 << 24)
    }

    /// A length-prefixed byte string, as [`Writer::bytes`] wrote it.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_and_truncation_is_refused() {
        let mut w = Writer(Vec::new());
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            w.uint(v);
        }
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            w.int(v);
        }
        w.bytes(b"abc");
        let bytes = w.0;
        let mut r = Reader(&bytes);
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(r.uint(), Some(v));
        }
        for v in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            assert_eq!(r.int(), Some(v));
        }
        assert_eq!(r.bytes(), Some(&b"abc"[..]));
        assert!(r.is_empty());
        assert_eq!(r.byte(), None);
        assert_eq!(Reader(&[0x80]).uint(), None);
        assert_eq!(Reader(&[0xff; 11]).uint(), None);
        assert_eq!(Reader(&[5, b'a']).bytes(), None);
    }
}
