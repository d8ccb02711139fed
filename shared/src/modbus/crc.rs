//! CRC-16/MODBUS (poly A001 reflected, init FFFF), sent low byte first.

/// CRC-16/MODBUS of `bytes`.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The CRC bytes as they go on the wire (low byte first).
pub fn crc_bytes(bytes: &[u8]) -> [u8; 2] {
    crc16(bytes).to_le_bytes()
}

/// Why an RTU frame failed its CRC check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrcError {
    /// Fewer than 3 bytes: no room for a CRC.
    #[error("frame too short for a CRC")]
    TooShort,
    /// The trailing CRC does not match.
    #[error("CRC mismatch: computed {computed:04X}, frame has {found:04X}")]
    Mismatch {
        /// CRC of the bytes before it.
        computed: u16,
        /// CRC carried by the frame (read low byte first).
        found: u16,
    },
}

/// Checks the trailing CRC of an RTU frame and returns the bytes before it.
pub fn check_crc(frame: &[u8]) -> Result<&[u8], CrcError> {
    if frame.len() < 3 {
        return Err(CrcError::TooShort);
    }
    let (body, tail) = frame.split_at(frame.len() - 2);
    let found = match tail {
        [lo, hi] => u16::from_le_bytes([*lo, *hi]),
        _ => return Err(CrcError::TooShort),
    };
    let computed = crc16(body);
    if computed != found {
        return Err(CrcError::Mismatch { computed, found });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_frames() {
        let table: [(&[u8], [u8; 2]); 4] = [
            (&[0x01, 0x04, 0x00, 0x00, 0x00, 0x02], [0x71, 0xCB]),
            (&[0x01, 0x03, 0x20, 0x00, 0x00, 0x02], [0xCF, 0xCB]),
            (&[0x01, 0x04, 0x04, 0x43, 0x66, 0x33, 0x34], [0x1B, 0x38]),
            (b"123456789", [0x37, 0x4B]), // the catalogue check value 4B37
        ];
        for (body, crc) in table {
            assert_eq!(crc_bytes(body), crc, "{body:02X?}");
        }
        assert_eq!(
            check_crc(&[0x01, 0x03, 0x20, 0x00, 0x00, 0x02, 0xCF, 0xCB]),
            Ok(&[0x01, 0x03, 0x20, 0x00, 0x00, 0x02][..])
        );
        assert_eq!(
            check_crc(&[0x01, 0x03, 0x20, 0x00, 0x00, 0x02, 0x76, 0x29]),
            Err(CrcError::Mismatch {
                computed: 0xCBCF,
                found: 0x2976
            })
        );
        assert_eq!(check_crc(&[0x01, 0x03]), Err(CrcError::TooShort));
    }
}
