//! Modbus RTU read frames (FC 03/04): the request bytes and the response parser,
//! for test vectors and simulators (the agent's transport is tokio-modbus).

use super::crc::{check_crc, crc_bytes, CrcError};
use super::ReadFunction;

/// Why an RTU response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtuError {
    /// CRC missing or wrong.
    #[error(transparent)]
    Crc(#[from] CrcError),
    /// The frame is shorter than its header says.
    #[error("response too short")]
    TooShort,
    /// The byte count disagrees with the frame length or is odd.
    #[error("byte count {0} does not match the frame")]
    ByteCount(u8),
    /// An exception response (function | 80H) with its exception code.
    #[error("exception {code:02X} to function {function:02X}")]
    Exception {
        /// The function that failed (without the 80H bit).
        function: u8,
        /// The exception code (2 = illegal data address, ...).
        code: u8,
    },
}

/// The 8-byte read request `unit fn addr(2) count(2) crc(2)`.
pub fn read_request(unit: u8, function: ReadFunction, address: u16, count: u16) -> [u8; 8] {
    let [ah, al] = address.to_be_bytes();
    let [ch, cl] = count.to_be_bytes();
    let body = [unit, function.code(), ah, al, ch, cl];
    let [lo, hi] = crc_bytes(&body);
    [unit, function.code(), ah, al, ch, cl, lo, hi]
}

/// A checked read response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResponse<'a> {
    /// Slave id.
    pub unit: u8,
    /// Function code (03 or 04).
    pub function: u8,
    /// The register bytes (2 per register, big-endian).
    pub data: &'a [u8],
}

impl ReadResponse<'_> {
    /// The number of registers.
    pub fn len(&self) -> usize {
        self.data.len() / 2
    }

    /// True when no register came back.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The registers, in order.
    pub fn registers(&self) -> impl Iterator<Item = u16> + '_ {
        self.data.chunks_exact(2).map(|w| match w {
            [h, l] => u16::from_be_bytes([*h, *l]),
            _ => 0,
        })
    }
}

/// Parses `unit fn count data.. crc` (or an exception `unit fn|80 code crc`).
pub fn parse_read_response(frame: &[u8]) -> Result<ReadResponse<'_>, RtuError> {
    let body = check_crc(frame)?;
    let (&unit, rest) = body.split_first().ok_or(RtuError::TooShort)?;
    let (&function, rest) = rest.split_first().ok_or(RtuError::TooShort)?;
    if function & 0x80 != 0 {
        let code = rest.first().copied().ok_or(RtuError::TooShort)?;
        return Err(RtuError::Exception {
            function: function & 0x7F,
            code,
        });
    }
    let (&count, data) = rest.split_first().ok_or(RtuError::TooShort)?;
    if usize::from(count) != data.len() || count % 2 != 0 {
        return Err(RtuError::ByteCount(count));
    }
    Ok(ReadResponse {
        unit,
        function,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses() {
        assert_eq!(
            read_request(1, ReadFunction::Input, 0x0156, 2),
            [0x01, 0x04, 0x01, 0x56, 0x00, 0x02, 0x90, 0x27]
        );
        assert_eq!(
            read_request(1, ReadFunction::Holding, 0x4000, 2),
            [0x01, 0x03, 0x40, 0x00, 0x00, 0x02, 0xD1, 0xCB]
        );
        let r =
            parse_read_response(&[0x01, 0x04, 0x04, 0x43, 0x66, 0x33, 0x34, 0x1B, 0x38]).unwrap();
        assert_eq!((r.unit, r.function, r.len()), (1, 4, 2));
        assert_eq!(r.registers().collect::<Vec<_>>(), vec![0x4366, 0x3334]);
        let mut exc = vec![0x01, 0x84, 0x02];
        exc.extend(crc_bytes(&exc));
        assert_eq!(
            parse_read_response(&exc),
            Err(RtuError::Exception {
                function: 4,
                code: 2
            })
        );
        let mut odd = vec![0x01, 0x04, 0x03, 0x43, 0x66, 0x33];
        odd.extend(crc_bytes(&odd));
        assert_eq!(parse_read_response(&odd), Err(RtuError::ByteCount(3)));
        let mut short = vec![0x01];
        short.extend(crc_bytes(&short));
        assert_eq!(parse_read_response(&short), Err(RtuError::TooShort));
    }
}
