//! Application-layer checks on decoded frames: a master's view of replies
//! (`parse_reply`, `parse_address_reply`) and a meter's view of requests
//! (`parse_request`, used by the meter simulator).

use super::address::Address;
use super::control::{ErrorBits, Function};
use super::data::{address_value, DataError};
use super::datetime::MeterDateTime;
use super::di::Di;
use super::frame::Frame;

/// A read-data reply (91H/B1H, or 92H/B2H to a follow-up read) that answers the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The meter's real address (a wildcard request learns it here).
    pub address: Address,
    /// The echoed DI (equal to the requested one).
    pub di: Di,
    /// The value bytes after the DI (and before SEQ), wire order, -33H done.
    pub value: &'a [u8],
    /// D5: more data follows; read it with 12H (DI + SEQ).
    pub follow_up: bool,
    /// The SEQ byte of a follow-up reply (92H/B2H), `None` for 91H/B1H.
    pub seq: Option<u8>,
}

/// Why a frame is not the awaited reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// D7=0: a command (e.g. our own request echoed on a 2-wire bus).
    #[error("frame is a command, not a reply")]
    NotAReply,
    /// The reply is to another function.
    #[error("reply to function {got:?}, expected {expected:?}")]
    WrongFunction {
        /// The function requested.
        expected: Function,
        /// The function in the reply.
        got: Function,
    },
    /// The reply comes from a meter the request was not addressed to.
    #[error("reply from {got}, expected {expected}")]
    WrongAddress {
        /// The request address (may hold AA wildcards).
        expected: Address,
        /// The reply address.
        got: Address,
    },
    /// D6=1: the meter refused, with its error word.
    #[error("abnormal reply: {0}")]
    Abnormal(ErrorBits),
    /// D6=1 but no ERR byte.
    #[error("abnormal reply without error word")]
    MissingErrorWord,
    /// The data is shorter than the DI (plus SEQ).
    #[error("reply data too short")]
    TooShort,
    /// The echoed DI is not the requested one.
    #[error("reply for DI {got}, expected {expected}")]
    WrongDi {
        /// The DI requested.
        expected: Di,
        /// The DI echoed.
        got: Di,
    },
    /// A follow-up reply with another SEQ.
    #[error("follow-up SEQ {got}, expected {expected}")]
    WrongSeq {
        /// The SEQ requested.
        expected: u8,
        /// The SEQ in the reply.
        got: u8,
    },
    /// A read-address reply whose data is not a BCD address equal to its header.
    #[error("read-address reply data is not the header address")]
    BadAddressData,
}

/// Direction, function, address, then the abnormal bit: the checks every reply gets.
fn check_header(frame: &Frame, function: Function, expected: &Address) -> Result<(), ReplyError> {
    if !frame.control.is_reply() {
        return Err(ReplyError::NotAReply);
    }
    let got = frame.control.function();
    if got != function {
        return Err(ReplyError::WrongFunction {
            expected: function,
            got,
        });
    }
    if !expected.matches(&frame.address) {
        return Err(ReplyError::WrongAddress {
            expected: *expected,
            got: frame.address,
        });
    }
    if frame.control.is_abnormal() {
        let err = frame.data.first().ok_or(ReplyError::MissingErrorWord)?;
        return Err(ReplyError::Abnormal(ErrorBits(*err)));
    }
    Ok(())
}

/// The value bytes of a reply whose data echoes `di` first.
pub fn reply_value(frame: &Frame, di: Di) -> Result<&[u8], ReplyError> {
    let got = Di::from_data(&frame.data).ok_or(ReplyError::TooShort)?;
    if got != di {
        return Err(ReplyError::WrongDi { expected: di, got });
    }
    frame.data.get(4..).ok_or(ReplyError::TooShort)
}

/// Checks a reply to read data 11H sent to `expected_addr` (wildcards allowed) for
/// `expected_di`: direction, function, address, abnormal bit (→ [`ReplyError::Abnormal`]
/// with the named ERR bits), DI echo.
pub fn parse_reply<'a>(
    frame: &'a Frame,
    expected_addr: &Address,
    expected_di: Di,
) -> Result<Reply<'a>, ReplyError> {
    check_header(frame, Function::ReadData, expected_addr)?;
    let value = reply_value(frame, expected_di)?;
    Ok(Reply {
        address: frame.address,
        di: expected_di,
        value,
        follow_up: frame.control.has_follow_up(),
        seq: None,
    })
}

/// Checks a reply to read follow-up 12H (`expected_di` + `expected_seq`): as
/// [`parse_reply`], plus the trailing SEQ byte.
pub fn parse_follow_up_reply<'a>(
    frame: &'a Frame,
    expected_addr: &Address,
    expected_di: Di,
    expected_seq: u8,
) -> Result<Reply<'a>, ReplyError> {
    check_header(frame, Function::ReadFollowUp, expected_addr)?;
    let rest = reply_value(frame, expected_di)?;
    let (&seq, value) = rest.split_last().ok_or(ReplyError::TooShort)?;
    if seq != expected_seq {
        return Err(ReplyError::WrongSeq {
            expected: expected_seq,
            got: seq,
        });
    }
    Ok(Reply {
        address: frame.address,
        di: expected_di,
        value,
        follow_up: frame.control.has_follow_up(),
        seq: Some(seq),
    })
}

/// Checks a reply to read address 13H and returns the meter's address (the data,
/// which must be 6 BCD bytes equal to the header address).
pub fn parse_address_reply(frame: &Frame) -> Result<Address, ReplyError> {
    check_header(frame, Function::ReadAddress, &Address::WILDCARD)?;
    let address = address_value(&frame.data).map_err(|_| ReplyError::BadAddressData)?;
    if address != frame.address {
        return Err(ReplyError::BadAddressData);
    }
    Ok(address)
}

/// A command as a meter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// 11H with L=4.
    ReadData {
        /// The request address (may hold AA wildcards; see [`Address::matches`]).
        address: Address,
        /// The DI asked for.
        di: Di,
    },
    /// 12H with L=5.
    ReadFollowUp {
        /// The request address.
        address: Address,
        /// The DI being continued.
        di: Di,
        /// The frame number asked for (1, 2, ...).
        seq: u8,
    },
    /// 13H with L=0 (to AA×6 in practice).
    ReadAddress {
        /// The request address.
        address: Address,
    },
    /// 08H with L=6: set the clock; never answered.
    BroadcastTime {
        /// The request address (99×6 in practice).
        address: Address,
        /// The time sent, decoded in spec order `ss mm hh DD MM YY`.
        at: MeterDateTime,
    },
    /// Any other command (a meter answers with an abnormal reply or stays silent).
    Other {
        /// The request address.
        address: Address,
        /// Its function.
        function: Function,
    },
}

/// Why a command frame is not a well-formed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// D7=1: a reply.
    #[error("frame is a reply, not a command")]
    NotARequest,
    /// The data length does not fit the function (e.g. broadcast time with L=0).
    #[error("function {function:?} with L={len}")]
    BadLength {
        /// The function.
        function: Function,
        /// L as received.
        len: usize,
    },
    /// Broadcast-time data is not a valid `ss mm hh DD MM YY`.
    #[error("bad broadcast time: {0}")]
    BadTime(DataError),
}

/// Classifies a command frame for a meter (simulator).
pub fn parse_request(frame: &Frame) -> Result<Request, RequestError> {
    if frame.control.is_reply() {
        return Err(RequestError::NotARequest);
    }
    let address = frame.address;
    let function = frame.control.function();
    let data = frame.data.as_slice();
    let bad_length = || RequestError::BadLength {
        function,
        len: data.len(),
    };
    match function {
        Function::ReadData => match data {
            [a, b, c, d] => Ok(Request::ReadData {
                address,
                di: Di::from_wire([*a, *b, *c, *d]),
            }),
            _ => Err(bad_length()),
        },
        Function::ReadFollowUp => match data {
            [a, b, c, d, seq] => Ok(Request::ReadFollowUp {
                address,
                di: Di::from_wire([*a, *b, *c, *d]),
                seq: *seq,
            }),
            _ => Err(bad_length()),
        },
        Function::ReadAddress if data.is_empty() => Ok(Request::ReadAddress { address }),
        Function::ReadAddress => Err(bad_length()),
        Function::BroadcastTime if data.len() == 6 => {
            let at = MeterDateTime::decode_broadcast(data).map_err(RequestError::BadTime)?;
            Ok(Request::BroadcastTime { address, at })
        }
        Function::BroadcastTime => Err(bad_length()),
        function => Ok(Request::Other { address, function }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlt645::control::{Control, ReplyKind};
    use crate::dlt645::di;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn reply_checks_in_order() {
        let meter = addr("123456789012");
        let ok = Frame::data_reply(
            meter,
            di::FORWARD_ACTIVE_TOTAL,
            &[0x78, 0x56, 0x34, 0x12],
            false,
        )
        .unwrap();
        let r = parse_reply(&ok, &meter, di::FORWARD_ACTIVE_TOTAL).unwrap();
        assert_eq!(
            (r.address, r.value, r.follow_up, r.seq),
            (meter, &[0x78, 0x56, 0x34, 0x12][..], false, None)
        );
        assert_eq!(
            parse_reply(&ok, &addr("AAAAAAAA9012"), di::FORWARD_ACTIVE_TOTAL).map(|r| r.address),
            Ok(meter)
        );
        assert_eq!(
            parse_reply(&ok, &addr("123456789013"), di::FORWARD_ACTIVE_TOTAL),
            Err(ReplyError::WrongAddress {
                expected: addr("123456789013"),
                got: meter
            })
        );
        assert_eq!(
            parse_reply(&ok, &meter, di::FORWARD_ACTIVE_T4),
            Err(ReplyError::WrongDi {
                expected: di::FORWARD_ACTIVE_T4,
                got: di::FORWARD_ACTIVE_TOTAL
            })
        );
        let request = Frame::read_data(meter, di::FORWARD_ACTIVE_TOTAL);
        assert_eq!(
            parse_reply(&request, &meter, di::FORWARD_ACTIVE_TOTAL),
            Err(ReplyError::NotAReply)
        );
        let refused = Frame::abnormal_reply(meter, Function::ReadData, ErrorBits::NO_DATA);
        assert_eq!(
            parse_reply(&refused, &meter, di::FORWARD_ACTIVE_TOTAL),
            Err(ReplyError::Abnormal(ErrorBits::NO_DATA))
        );
        let empty_err = Frame::new(meter, Control(0xD1), &[]).unwrap();
        assert_eq!(
            parse_reply(&empty_err, &meter, di::FORWARD_ACTIVE_TOTAL),
            Err(ReplyError::MissingErrorWord)
        );
        let old = Frame::new(meter, Control(0x81), &[0x10, 0x90, 0, 0]).unwrap();
        assert_eq!(
            parse_reply(&old, &meter, di::FORWARD_ACTIVE_TOTAL),
            Err(ReplyError::WrongFunction {
                expected: Function::ReadData,
                got: Function::Other(1)
            })
        );
        let short = Frame::new(meter, Control(0x91), &[0, 0, 1]).unwrap();
        assert_eq!(
            parse_reply(&short, &meter, di::FORWARD_ACTIVE_TOTAL),
            Err(ReplyError::TooShort)
        );
        let more = Frame::data_reply(meter, di::FORWARD_ACTIVE_BLOCK, &[1; 8], true).unwrap();
        assert!(
            parse_reply(&more, &meter, di::FORWARD_ACTIVE_BLOCK)
                .unwrap()
                .follow_up
        );
    }

    #[test]
    fn follow_up_and_address_replies() {
        let meter = addr("123456781012");
        let f = Frame::follow_up_reply(meter, di::FORWARD_ACTIVE_BLOCK, &[1, 2], 3, false).unwrap();
        assert_eq!(
            f.control,
            Control::reply(Function::ReadFollowUp, ReplyKind::Normal)
        );
        let r = parse_follow_up_reply(&f, &meter, di::FORWARD_ACTIVE_BLOCK, 3).unwrap();
        assert_eq!((r.value, r.seq), (&[1u8, 2][..], Some(3)));
        assert_eq!(
            parse_follow_up_reply(&f, &meter, di::FORWARD_ACTIVE_BLOCK, 2),
            Err(ReplyError::WrongSeq {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(parse_address_reply(&Frame::address_reply(meter)), Ok(meter));
        let mut lying = Frame::address_reply(meter);
        lying.address = addr("1");
        assert_eq!(parse_address_reply(&lying), Err(ReplyError::BadAddressData));
    }

    #[test]
    fn requests_as_a_meter_sees_them() {
        let meter = addr("161");
        assert_eq!(
            parse_request(&Frame::read_data(meter, di::VOLTAGE_A)),
            Ok(Request::ReadData {
                address: meter,
                di: di::VOLTAGE_A
            })
        );
        assert_eq!(
            parse_request(&Frame::read_follow_up(meter, di::VOLTAGE_A, 1)),
            Ok(Request::ReadFollowUp {
                address: meter,
                di: di::VOLTAGE_A,
                seq: 1
            })
        );
        assert_eq!(
            parse_request(&Frame::read_address()),
            Ok(Request::ReadAddress {
                address: Address::WILDCARD
            })
        );
        let t = MeterDateTime::new(2026, 5, 17, 12, 30, 0).unwrap();
        assert_eq!(
            parse_request(&Frame::broadcast_time(&t)),
            Ok(Request::BroadcastTime {
                address: Address::BROADCAST,
                at: t
            })
        );
        let bare = Frame::new(Address::BROADCAST, Control(0x08), &[]).unwrap();
        assert_eq!(
            parse_request(&bare),
            Err(RequestError::BadLength {
                function: Function::BroadcastTime,
                len: 0
            })
        );
        let wrong = Frame::new(meter, Control(0x11), &[0, 0, 1]).unwrap();
        assert_eq!(
            parse_request(&wrong),
            Err(RequestError::BadLength {
                function: Function::ReadData,
                len: 3
            })
        );
        assert_eq!(
            parse_request(&Frame::address_reply(meter)),
            Err(RequestError::NotARequest)
        );
        let write = Frame::new(meter, Control(0x14), &[0; 12]).unwrap();
        assert_eq!(
            parse_request(&write),
            Ok(Request::Other {
                address: meter,
                function: Function::WriteData
            })
        );
    }
}
