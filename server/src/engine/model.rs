//! The engine's inputs (registry spans, raw readings) and outputs (boundary values,
//! parts, nights, the statement): plain data, every figure carrying how it was obtained.

use core::ops::Range;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use qingnuan_shared::calendar::{Night, Season};
use qingnuan_shared::units::{Fen, MeterId, Wh};
use qingnuan_shared::UnixTime;

/// One stored reading of a meter, as the store hands it over: wire-valid, not an
/// error read. Identity is `(meter, ts)`; the store already kept the first of
/// conflicting values (if two values still arrive for one `ts`, the engine keeps
/// the smaller `(e_wh, e_valley_wh)` so the result stays a function of the set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawReading {
    /// UTC Unix seconds at which the read completed.
    pub ts: UnixTime,
    /// Cumulative forward active energy register (`00010000`), Wh, as read (wraps at the modulus).
    pub e_wh: i64,
    /// The meter's valley register (`00010400`), Wh, as read, when the reading carries it.
    pub e_valley_wh: Option<i64>,
}

/// A meter's validity for a household: `[from, to)`, UTC Unix seconds. A meter may
/// appear in several spans and several households.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeterSpan {
    /// The meter.
    pub meter: MeterId,
    /// Install instant, UTC Unix seconds (inclusive).
    pub from: UnixTime,
    /// Removal instant, UTC Unix seconds (exclusive); `None` while installed.
    pub to: Option<UnixTime>,
}

/// A household as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HouseholdInput {
    /// Registry id (`hh-0001`); not used by the computation.
    pub id: String,
    /// Physical limit of the household's draw, W; `None` (or a non-positive value)
    /// means the policy's `default_max_power_w`.
    pub max_power_w: Option<i64>,
    /// The household's meters with their validity intervals.
    pub meters: Vec<MeterSpan>,
}

/// Where the engine gets a meter's readings: any order, repeats allowed.
pub trait ReadingSource {
    /// All stored readings of `meter` (an empty slice when there are none).
    fn readings_of(&self, meter: &MeterId) -> &[RawReading];
}

impl<S: BuildHasher> ReadingSource for HashMap<MeterId, Vec<RawReading>, S> {
    fn readings_of(&self, meter: &MeterId) -> &[RawReading] {
        self.get(meter).map_or(&[], Vec::as_slice)
    }
}

impl ReadingSource for BTreeMap<MeterId, Vec<RawReading>> {
    fn readings_of(&self, meter: &MeterId) -> &[RawReading] {
        self.get(meter).map_or(&[], Vec::as_slice)
    }
}

/// Quality of a boundary value or a night; ordered so that the worst is the largest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quality {
    /// A reading lies within `actual_within_s` of every boundary.
    Actual,
    /// Interpolated (or nearest, at install/removal) from readings further away.
    Estimated,
    /// No value: a reading is missing on one side, or the two are more than `max_gap_s` apart.
    Missing,
}

impl Quality {
    /// The contract's name: `actual`, `estimated`, `missing`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Quality::Actual => "actual",
            Quality::Estimated => "estimated",
            Quality::Missing => "missing",
        }
    }
}

impl core::str::FromStr for Quality {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        [Quality::Actual, Quality::Estimated, Quality::Missing]
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or(UnknownName)
    }
}

/// A quality or flag name that the engine does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown name")]
pub struct UnknownName;

/// What a boundary of a part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// The night opens here (20:00, or the season's first midnight): two-sided interpolation.
    Open,
    /// The night closes here (08:00, or the midnight ending the season): two-sided interpolation.
    Close,
    /// The meter's install instant (at or after the open): nearest reading inside the validity.
    Install,
    /// The meter's removal instant (at or before the close): nearest reading inside the validity.
    Removal,
}

/// An accepted reading as the computation used it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UsedReading {
    /// UTC Unix seconds.
    pub ts: UnixTime,
    /// Total register as read, Wh.
    pub e_wh: i64,
    /// Total register unwrapped (`e_wh` plus the register modulus once per accepted
    /// wrap since the span's first reading), Wh. This is what is interpolated.
    pub unwrapped_wh: i64,
    /// Valley register as read, Wh, when present and accepted.
    pub e_valley_wh: Option<i64>,
    /// Valley register unwrapped, Wh, when present and accepted.
    pub valley_unwrapped_wh: Option<i64>,
}

/// The register value at one boundary, with the readings it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BoundaryValue {
    /// The boundary instant, UTC Unix seconds.
    pub t: UnixTime,
    /// What the boundary is.
    pub kind: EdgeKind,
    /// Unwrapped total register at `t`, Wh: `E1 + (E2-E1)(t-t1)/(t2-t1)` rounded half up
    /// (or the nearest reading at install/removal); `None` when `missing`.
    pub e_wh: Option<Wh>,
    /// Unwrapped valley register at `t`, Wh, by the same rule; `None` when missing or
    /// when a reading used does not carry the valley register.
    pub valley_wh: Option<Wh>,
    /// `actual`, `estimated` or `missing`.
    pub quality: Quality,
    /// Latest accepted reading with `ts <= t` inside the validity, if any.
    pub r1: Option<UsedReading>,
    /// Earliest accepted reading with `ts >= t` inside the validity, if any.
    pub r2: Option<UsedReading>,
}

/// One meter's share of one night: the night span clipped to the meter's validity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    /// Index of the meter span in [`HouseholdInput::meters`].
    pub span: usize,
    /// Boundary value where the part starts.
    pub start: BoundaryValue,
    /// Boundary value where the part ends.
    pub end: BoundaryValue,
    /// `end.e_wh - start.e_wh`, Wh; `None` when a boundary is missing.
    pub wh: Option<Wh>,
    /// `end.valley_wh - start.valley_wh`, Wh; `None` when either is unknown.
    pub valley_wh: Option<Wh>,
    /// `register_wrap` / `rejected_reading` among the readings this part rests on.
    pub flags: Flags,
}

/// Flags of a night or a statement, a small bit set with contract names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// The valley register differs from the total by more than max(100 Wh, 2 %).
    pub const TOU_MISMATCH: Flags = Flags(1);
    /// The meters' validity covers only part of the night (install, removal, conversion).
    pub const PARTIAL: Flags = Flags(1 << 1);
    /// The register wrapped among the readings used.
    pub const REGISTER_WRAP: Flags = Flags(1 << 2);
    /// A rejected reading (spike, negative delta) lies among the readings used.
    pub const REJECTED_READING: Flags = Flags(1 << 3);
    /// The policy pays from the valley register and it is not available for the night.
    pub const VALLEY_UNAVAILABLE: Flags = Flags(1 << 4);
    /// Statement only: the season's cap was reached.
    pub const CAP_REACHED: Flags = Flags(1 << 5);

    const NAMES: [(Flags, &'static str); 6] = [
        (Flags::TOU_MISMATCH, "tou_mismatch"),
        (Flags::PARTIAL, "partial"),
        (Flags::REGISTER_WRAP, "register_wrap"),
        (Flags::REJECTED_READING, "rejected_reading"),
        (Flags::VALLEY_UNAVAILABLE, "valley_unavailable"),
        (Flags::CAP_REACHED, "cap_reached"),
    ];

    /// No flag set.
    pub const fn empty() -> Self {
        Flags(0)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flag named `name` (as [`Flags::names`] writes it).
    pub fn from_name(name: &str) -> Result<Flags, UnknownName> {
        Self::NAMES
            .into_iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| f)
            .ok_or(UnknownName)
    }

    /// The names of the flags set, in a fixed order (`["tou_mismatch", "partial"]`).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// One night of a household.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NightFigure {
    /// The night label (local date its window opens).
    pub night: Night,
    /// The night's subsidised span `[open, close)` (window clipped to the season), UTC Unix seconds.
    pub span: (UnixTime, UnixTime),
    /// The paid figure, Wh: sum of the parts (total register, or valley register when
    /// the policy says so); 0 when `missing`.
    pub wh: Wh,
    /// Worst quality of the parts' boundaries (and `missing` when the paid register is unavailable).
    pub quality: Quality,
    /// Night flags.
    pub flags: Flags,
    /// The same night from the total register, Wh (equal to `wh` unless the policy pays
    /// from the valley register); `None` when `missing`.
    pub total_wh: Option<Wh>,
    /// The same night from the valley register, Wh, when every part has it.
    pub valley_wh: Option<Wh>,
    /// Part of `wh` inside the season's cap, Wh (the cap is consumed in night order).
    pub subsidised_wh: Wh,
    /// Running sum of `wh` over the season up to and including this night, Wh.
    pub cumulative_wh: Wh,
    /// Indices of this night's parts in [`HouseholdSeason::parts`].
    pub parts: Range<usize>,
}

/// How many listed nights have each quality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NightCounts {
    /// Nights whose every boundary is `actual`.
    pub actual: u32,
    /// Nights with an `estimated` boundary and none `missing`.
    pub estimated: u32,
    /// Nights counted 0 for want of data.
    pub missing: u32,
}

/// The season statement of a household: exactly the figures of CONTRACT.md's statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Statement {
    /// Sum of the listed nights, Wh.
    pub offpeak_wh: Wh,
    /// `min(offpeak_wh, cap_wh)`, Wh.
    pub subsidised_wh: Wh,
    /// The policy's cap per household per season, Wh.
    pub cap_wh: Wh,
    /// The night on which the running sum reached the cap, if it did.
    pub cap_reached_on: Option<Night>,
    /// `round_half_up(subsidised_wh * city_fen_per_kwh / 1000)`, fen.
    pub city_fen: Fen,
    /// `round_half_up(subsidised_wh * district_fen_per_kwh / 1000)`, fen.
    pub district_fen: Fen,
    /// `round_half_up(offpeak_wh * price_fen_per_kwh / 1000)`, fen.
    pub valley_charge_fen: Fen,
    /// Nights by quality.
    pub nights: NightCounts,
    /// Union of the night flags, plus `cap_reached`.
    pub flags: Flags,
}

/// Why a reading (or its valley register) was set aside, or that it wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Rejected: rises faster than `max_power_w` (plus the 10 Wh register resolution).
    Spike,
    /// Rejected: below the baseline and not a plausible wrap.
    NegativeDelta,
    /// Accepted: below the baseline, and `e + modulus - baseline` is plausible.
    Wrap,
    /// Reading accepted, its valley register set aside: rises too fast.
    ValleySpike,
    /// Reading accepted, its valley register set aside: drops and is not a plausible wrap.
    ValleyNegativeDelta,
    /// Reading accepted, its valley register wrapped.
    ValleyWrap,
}

impl Verdict {
    /// Snake-case name (`spike`, `negative_delta`, `wrap`, `valley_spike`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Spike => "spike",
            Verdict::NegativeDelta => "negative_delta",
            Verdict::Wrap => "wrap",
            Verdict::ValleySpike => "valley_spike",
            Verdict::ValleyNegativeDelta => "valley_negative_delta",
            Verdict::ValleyWrap => "valley_wrap",
        }
    }

    /// Whether the whole reading was rejected (never used, baseline unchanged).
    pub const fn is_rejection(self) -> bool {
        matches!(self, Verdict::Spike | Verdict::NegativeDelta)
    }
}

/// A reading the judge did not simply accept: rejected, or accepted as a wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Judgement {
    /// Index of the meter span in [`HouseholdInput::meters`].
    pub span: usize,
    /// The reading as stored.
    pub reading: RawReading,
    /// What was decided.
    pub verdict: Verdict,
    /// The baseline it was judged against: `(ts, register as read)` of the latest
    /// accepted reading before it (of the valley register for valley verdicts); for a
    /// span's first reading contradicted by the two after it, the reading after it.
    pub baseline: (UnixTime, i64),
}

/// Everything the engine says about one household and one season.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HouseholdSeason {
    /// The season.
    pub season: Season,
    /// The listed nights, in order: closed (`span.1 <= now`) and with a valid meter.
    pub nights: Vec<NightFigure>,
    /// Every night's parts, in night order; see [`NightFigure::parts`].
    pub parts: Vec<Part>,
    /// Rejected readings and accepted wraps within `max_gap_s` of the season, by span
    /// (in the engine's span order) then time.
    pub judged: Vec<Judgement>,
    /// The season figures.
    pub statement: Statement,
}

impl HouseholdSeason {
    /// The parts of one of this season's nights (empty for a foreign figure).
    pub fn parts_of(&self, night: &NightFigure) -> &[Part] {
        self.parts.get(night.parts.clone()).unwrap_or(&[])
    }

    /// The figure of a night, if listed.
    pub fn night(&self, night: Night) -> Option<&NightFigure> {
        self.nights
            .binary_search_by(|n| n.night.cmp(&night))
            .ok()
            .and_then(|i| self.nights.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for q in [Quality::Actual, Quality::Estimated, Quality::Missing] {
            assert_eq!(q.as_str().parse::<Quality>(), Ok(q));
        }
        assert_eq!("late".parse::<Quality>(), Err(UnknownName));
        let all =
            Flags::TOU_MISMATCH | Flags::PARTIAL | Flags::REGISTER_WRAP | Flags::REJECTED_READING;
        let all = all | Flags::VALLEY_UNAVAILABLE | Flags::CAP_REACHED;
        let names: Vec<_> = all.names().collect();
        assert_eq!(names.len(), 6);
        let mut back = Flags::empty();
        for n in names {
            back.insert(Flags::from_name(n).unwrap());
        }
        assert_eq!(back, all);
        assert_eq!(
            (Flags::PARTIAL | Flags::TOU_MISMATCH)
                .names()
                .collect::<Vec<_>>(),
            ["tou_mismatch", "partial"]
        );
        assert_eq!(Flags::from_name("x"), Err(UnknownName));
    }
}
