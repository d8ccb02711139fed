//! The control code C (direction, abnormal and follow-up bits, function code) and
//! the error word ERR of abnormal replies (protocol-facts §1.3, §1.4).

use core::fmt;

/// Function code, bits D4..D0 of C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Function {
    /// 08H broadcast time 广播校时 (address 99×6, L=6, no reply).
    BroadcastTime,
    /// 11H read data 读数据.
    ReadData,
    /// 12H read follow-up data 读后续数据.
    ReadFollowUp,
    /// 13H read communication address 读通信地址.
    ReadAddress,
    /// 14H write data 写数据.
    WriteData,
    /// 15H write communication address.
    WriteAddress,
    /// 16H freeze 冻结.
    Freeze,
    /// 17H change baud rate.
    ChangeBaud,
    /// 18H change password.
    ChangePassword,
    /// 19H maximum-demand clear.
    ClearDemand,
    /// 1AH meter clear 电表清零.
    ClearMeter,
    /// 1BH event clear.
    ClearEvents,
    /// 1CH relay trip/close (State Grid extension).
    Relay,
    /// Any other 5-bit code (`0..=0x1F`).
    Other(u8),
}

impl Function {
    /// The 5-bit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::BroadcastTime => 0x08,
            Self::ReadData => 0x11,
            Self::ReadFollowUp => 0x12,
            Self::ReadAddress => 0x13,
            Self::WriteData => 0x14,
            Self::WriteAddress => 0x15,
            Self::Freeze => 0x16,
            Self::ChangeBaud => 0x17,
            Self::ChangePassword => 0x18,
            Self::ClearDemand => 0x19,
            Self::ClearMeter => 0x1A,
            Self::ClearEvents => 0x1B,
            Self::Relay => 0x1C,
            Self::Other(c) => c & 0x1F,
        }
    }

    /// The function of a 5-bit code (higher bits are ignored).
    pub const fn from_code(code: u8) -> Self {
        match code & 0x1F {
            0x08 => Self::BroadcastTime,
            0x11 => Self::ReadData,
            0x12 => Self::ReadFollowUp,
            0x13 => Self::ReadAddress,
            0x14 => Self::WriteData,
            0x15 => Self::WriteAddress,
            0x16 => Self::Freeze,
            0x17 => Self::ChangeBaud,
            0x18 => Self::ChangePassword,
            0x19 => Self::ClearDemand,
            0x1A => Self::ClearMeter,
            0x1B => Self::ClearEvents,
            0x1C => Self::Relay,
            c => Self::Other(c),
        }
    }
}

/// What kind of reply a control code with D7=1 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// D6=0, D5=0: normal, last frame (e.g. 91H, 92H, 93H).
    Normal,
    /// D6=0, D5=1: normal, follow-up frames exist (e.g. B1H, B2H).
    FollowUp,
    /// D6=1: abnormal; the data is the ERR byte (e.g. D1H, D2H).
    Abnormal,
}

/// The control code C: D7 direction, D6 abnormal, D5 follow-up, D4..D0 function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Control(pub u8);

impl Control {
    const REPLY: u8 = 0x80;
    const ABNORMAL: u8 = 0x40;
    const FOLLOW_UP: u8 = 0x20;

    /// A master → meter command (D7=D6=D5=0).
    pub const fn request(function: Function) -> Self {
        Self(function.code())
    }

    /// A meter → master reply of `kind` to `function` (91H, B1H, D1H for read data).
    pub const fn reply(function: Function, kind: ReplyKind) -> Self {
        let bits = match kind {
            ReplyKind::Normal => Self::REPLY,
            ReplyKind::FollowUp => Self::REPLY | Self::FOLLOW_UP,
            ReplyKind::Abnormal => Self::REPLY | Self::ABNORMAL,
        };
        Self(bits | function.code())
    }

    /// D7: true for meter → master.
    pub const fn is_reply(self) -> bool {
        self.0 & Self::REPLY != 0
    }

    /// D6: abnormal reply.
    pub const fn is_abnormal(self) -> bool {
        self.0 & Self::ABNORMAL != 0
    }

    /// D5: follow-up frames exist.
    pub const fn has_follow_up(self) -> bool {
        self.0 & Self::FOLLOW_UP != 0
    }

    /// D4..D0.
    pub const fn function(self) -> Function {
        Function::from_code(self.0)
    }

    /// The reply kind, or `None` for a command (D7=0). D6 wins over D5.
    pub const fn reply_kind(self) -> Option<ReplyKind> {
        if !self.is_reply() {
            None
        } else if self.is_abnormal() {
            Some(ReplyKind::Abnormal)
        } else if self.has_follow_up() {
            Some(ReplyKind::FollowUp)
        } else {
            Some(ReplyKind::Normal)
        }
    }
}

/// One named bit of the error word ERR (§1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorBit {
    /// D0 other error 其他错误.
    Other,
    /// D1 no requested data 无请求数据 (unknown or unsupported DI).
    NoData,
    /// D2 password error / unauthorised 密码错/未授权.
    Unauthorized,
    /// D3 baud rate cannot be changed 通信速率不能更改.
    BaudNotChangeable,
    /// D4 year time-zone count exceeded 年时区数超.
    YearZones,
    /// D5 day time-slot count exceeded 日时段数超.
    DaySlots,
    /// D6 tariff count exceeded 费率数超.
    Tariffs,
    /// D7 reserved.
    Reserved,
}

impl ErrorBit {
    /// All bits, D0 first.
    pub const ALL: [ErrorBit; 8] = [
        Self::Other,
        Self::NoData,
        Self::Unauthorized,
        Self::BaudNotChangeable,
        Self::YearZones,
        Self::DaySlots,
        Self::Tariffs,
        Self::Reserved,
    ];

    /// The bit's mask in ERR.
    pub const fn mask(self) -> u8 {
        match self {
            Self::Other => 0x01,
            Self::NoData => 0x02,
            Self::Unauthorized => 0x04,
            Self::BaudNotChangeable => 0x08,
            Self::YearZones => 0x10,
            Self::DaySlots => 0x20,
            Self::Tariffs => 0x40,
            Self::Reserved => 0x80,
        }
    }

    /// An English name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Other => "other error",
            Self::NoData => "no requested data",
            Self::Unauthorized => "password error or unauthorised",
            Self::BaudNotChangeable => "baud rate cannot be changed",
            Self::YearZones => "year time-zone count exceeded",
            Self::DaySlots => "day time-slot count exceeded",
            Self::Tariffs => "tariff count exceeded",
            Self::Reserved => "reserved bit 7",
        }
    }
}

/// The error word ERR of an abnormal reply (the data byte after -33H).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrorBits(pub u8);

impl ErrorBits {
    /// D0 other error.
    pub const OTHER: Self = Self(0x01);
    /// D1 no requested data.
    pub const NO_DATA: Self = Self(0x02);
    /// D2 password error / unauthorised.
    pub const UNAUTHORIZED: Self = Self(0x04);
    /// D3 baud rate cannot be changed.
    pub const BAUD_NOT_CHANGEABLE: Self = Self(0x08);
    /// D4 year time-zone count exceeded.
    pub const YEAR_ZONES: Self = Self(0x10);
    /// D5 day time-slot count exceeded.
    pub const DAY_SLOTS: Self = Self(0x20);
    /// D6 tariff count exceeded.
    pub const TARIFFS: Self = Self(0x40);

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True if every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if `bit` is set.
    pub const fn has(self, bit: ErrorBit) -> bool {
        self.0 & bit.mask() != 0
    }

    /// The set bits, D0 first.
    pub fn iter(self) -> impl Iterator<Item = ErrorBit> {
        ErrorBit::ALL.into_iter().filter(move |b| self.has(*b))
    }
}

impl core::ops::BitOr for ErrorBits {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Display for ErrorBits {
    /// `ERR=02 (no requested data)`; names joined by ", ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERR={:02X} (", self.0)?;
        for (i, bit) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(bit.name())?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bits() {
        let table: [(u8, bool, Option<ReplyKind>, Function); 7] = [
            (0x11, false, None, Function::ReadData),
            (0x91, true, Some(ReplyKind::Normal), Function::ReadData),
            (0xB1, true, Some(ReplyKind::FollowUp), Function::ReadData),
            (0xD1, true, Some(ReplyKind::Abnormal), Function::ReadData),
            (
                0xD2,
                true,
                Some(ReplyKind::Abnormal),
                Function::ReadFollowUp,
            ),
            (0x93, true, Some(ReplyKind::Normal), Function::ReadAddress),
            (0x08, false, None, Function::BroadcastTime),
        ];
        for (c, reply, kind, function) in table {
            let c = Control(c);
            assert_eq!(c.is_reply(), reply, "{c:?}");
            assert_eq!(c.reply_kind(), kind, "{c:?}");
            assert_eq!(c.function(), function, "{c:?}");
        }
        assert_eq!(
            Control::reply(Function::ReadData, ReplyKind::FollowUp),
            Control(0xB1)
        );
        assert_eq!(
            Control::reply(Function::ReadData, ReplyKind::Abnormal),
            Control(0xD1)
        );
        assert_eq!(Control::request(Function::ReadAddress), Control(0x13));
        for code in 0..=0x1F {
            assert_eq!(Function::from_code(code).code(), code);
        }
    }

    #[test]
    fn error_bits_are_named() {
        let e = ErrorBits(0x02);
        assert!(e.contains(ErrorBits::NO_DATA));
        assert!(!e.contains(ErrorBits::OTHER));
        assert_eq!(e.iter().collect::<Vec<_>>(), vec![ErrorBit::NoData]);
        assert_eq!(e.to_string(), "ERR=02 (no requested data)");
        let both = ErrorBits::OTHER | ErrorBits::TARIFFS;
        assert_eq!(both.bits(), 0x41);
        assert_eq!(
            both.iter().collect::<Vec<_>>(),
            vec![ErrorBit::Other, ErrorBit::Tariffs]
        );
        assert_eq!(ErrorBits(0xFF).iter().count(), 8);
    }
}
