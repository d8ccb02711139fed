//! Nights of a household: each night's span clipped to every meter's validity gives a
//! part with two boundary values; parts add up to the night, the worst boundary gives
//! its quality, and the valley register cross-checks it (`tou_mismatch`).

use qingnuan_shared::calendar::{Calendar, Night, Season};
use qingnuan_shared::policy::{EnergySource, Policy, Rules};
use qingnuan_shared::units::Wh;
use qingnuan_shared::UnixTime;

use super::boundary::value_at;
use super::model::{EdgeKind, Flags, Judgement, NightFigure, Part, Quality, UsedReading, Verdict};

/// The listed nights of one season as of `now`, computed once and shared by every
/// household (the calendar arithmetic is then off the per-household path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeasonFrame {
    season: Season,
    span: (UnixTime, UnixTime),
    now: UnixTime,
    nights: Vec<(Night, UnixTime, UnixTime)>,
    /// The season's next nights not closed yet (at most [`AHEAD`]).
    ahead: Vec<(Night, UnixTime, UnixTime)>,
}

/// Upcoming nights a frame knows of (for states saved ahead of a night close).
pub const AHEAD: usize = 2;

impl SeasonFrame {
    /// The nights of `season` whose span (window clipped to the season) has closed by
    /// `now` (UTC Unix seconds), in order.
    pub fn new(calendar: &Calendar, season: Season, now: UnixTime) -> Self {
        let mut nights = Vec::new();
        let mut ahead = Vec::new();
        for n in calendar
            .nights(season)
            .filter_map(|n| calendar.night_span(n).map(|(a, c)| (n, a, c)))
        {
            if n.2 <= now {
                nights.push(n);
            } else if ahead.len() < AHEAD {
                ahead.push(n);
            } else {
                break;
            }
        }
        Self {
            season,
            span: calendar.season_span(season),
            now,
            nights,
            ahead,
        }
    }

    /// The season.
    pub fn season(&self) -> Season {
        self.season
    }

    /// The season's `[start, end)`, UTC Unix seconds.
    pub fn span(&self) -> (UnixTime, UnixTime) {
        self.span
    }

    /// The instant the frame was cut at, UTC Unix seconds.
    pub fn now(&self) -> UnixTime {
        self.now
    }

    /// `(night, open, close)` of every closed night, UTC Unix seconds, in order.
    pub fn nights(&self) -> &[(Night, UnixTime, UnixTime)] {
        &self.nights
    }

    /// The same for the season's next nights, not closed yet (at most [`AHEAD`]): night
    /// `k` of the season is `nights()[k]`, then `ahead()[k - nights().len()]`.
    pub fn ahead(&self) -> &[(Night, UnixTime, UnixTime)] {
        &self.ahead
    }
}

/// One meter span as the night assembly sees it.
pub(crate) struct SpanView<'a> {
    /// Index in `HouseholdInput::meters`.
    pub index: usize,
    /// Validity `[from, to)`, UTC Unix seconds.
    pub from: UnixTime,
    pub to: Option<UnixTime>,
    /// Accepted readings, increasing `ts`.
    pub accepted: &'a [UsedReading],
    /// Judgements of this span, increasing `ts`.
    pub judged: &'a [Judgement],
    /// Search hint into `accepted` for the next boundary (boundaries come in order).
    pub hint: usize,
}

/// Appends the household's listed nights and their parts. `subsidised_wh` and
/// `cumulative_wh` are left 0 for the season step.
pub(crate) fn assemble(
    frame: &SeasonFrame,
    spans: &mut [SpanView<'_>],
    policy: &Policy,
    nights: &mut Vec<NightFigure>,
    parts: &mut Vec<Part>,
) {
    let rules = &policy.rules;
    for &(night, open, close) in &frame.nights {
        let first = parts.len();
        // Spans come sorted by `from`, so part starts never decrease: one sweep finds
        // whether the union of the parts covers the whole night.
        let mut covered_until = open;
        let mut gap = false;
        for sv in spans.iter_mut() {
            let start = open.max(sv.from);
            let end = sv.to.map_or(close, |to| close.min(to));
            if start >= end {
                continue;
            }
            let start_kind = if sv.from >= open {
                EdgeKind::Install
            } else {
                EdgeKind::Open
            };
            let end_kind = if sv.to.is_some_and(|to| to <= close) {
                EdgeKind::Removal
            } else {
                EdgeKind::Close
            };
            parts.push(part(sv, start, start_kind, end, end_kind, rules));
            gap |= start > covered_until;
            covered_until = covered_until.max(end);
        }
        let these = parts.get(first..).unwrap_or(&[]);
        if these.is_empty() {
            continue;
        }
        nights.push(figure(
            night,
            (open, close),
            gap || covered_until < close,
            these,
            first..parts.len(),
            policy,
        ));
    }
}

fn part(
    sv: &mut SpanView<'_>,
    start: UnixTime,
    sk: EdgeKind,
    end: UnixTime,
    ek: EdgeKind,
    rules: &Rules,
) -> Part {
    let s = value_at(sv.accepted, start, sk, rules, &mut sv.hint);
    let e = value_at(sv.accepted, end, ek, rules, &mut sv.hint);
    let diff = |a: Option<Wh>, b: Option<Wh>| match (a, b) {
        (Some(a), Some(b)) => Some(Wh(b.0.saturating_sub(a.0))),
        _ => None,
    };
    // The readings this part rests on run from the earliest used at its start to the
    // latest used at its end; a wrap or a rejection among them is worth a flag.
    let ts = |r: Option<UsedReading>| r.map(|r| r.ts);
    let lo = [Some(start), ts(s.r1), ts(s.r2)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(start);
    let hi = [Some(end), ts(e.r1), ts(e.r2)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(end);
    let mut flags = Flags::empty();
    let from = sv.judged.partition_point(|j| j.reading.ts < lo);
    for j in sv
        .judged
        .get(from..)
        .unwrap_or(&[])
        .iter()
        .take_while(|j| j.reading.ts <= hi)
    {
        flags.insert(match j.verdict {
            Verdict::Wrap | Verdict::ValleyWrap => Flags::REGISTER_WRAP,
            Verdict::Spike
            | Verdict::NegativeDelta
            | Verdict::ValleySpike
            | Verdict::ValleyNegativeDelta => Flags::REJECTED_READING,
        });
    }
    Part {
        span: sv.index,
        start: s,
        end: e,
        wh: diff(s.e_wh, e.e_wh),
        valley_wh: diff(s.valley_wh, e.valley_wh),
        flags,
    }
}

fn figure(
    night: Night,
    span: (UnixTime, UnixTime),
    partial: bool,
    parts: &[Part],
    range: core::ops::Range<usize>,
    policy: &Policy,
) -> NightFigure {
    let mut quality = Quality::Actual;
    let mut flags = Flags::empty();
    let mut total = Some(0i64);
    let mut valley = Some(0i64);
    for p in parts {
        quality = quality.max(p.start.quality).max(p.end.quality);
        flags.insert(p.flags);
        total = total.zip(p.wh).map(|(a, b)| a.saturating_add(b.0));
        valley = valley.zip(p.valley_wh).map(|(a, b)| a.saturating_add(b.0));
    }
    if partial {
        flags.insert(Flags::PARTIAL);
    }
    if quality == Quality::Missing {
        total = None;
        valley = None;
    }
    if let (Some(t), Some(v)) = (total, valley) {
        if tou_mismatch(t, v, &policy.rules) {
            flags.insert(Flags::TOU_MISMATCH);
        }
    }
    let paid = match policy.energy_source {
        EnergySource::TotalRegister => total,
        EnergySource::ValleyRegister => valley,
    };
    if paid.is_none() && quality != Quality::Missing {
        quality = Quality::Missing;
        flags.insert(Flags::VALLEY_UNAVAILABLE);
    }
    NightFigure {
        night,
        span,
        wh: Wh(paid.unwrap_or(0)),
        quality,
        flags,
        total_wh: total.map(Wh),
        valley_wh: valley.map(Wh),
        subsidised_wh: Wh(0),
        cumulative_wh: Wh(0),
        parts: range,
    }
}

/// `|total - valley| > max(tou_tolerance_wh, total * tou_tolerance_permille / 1000)`, exact.
pub(crate) fn tou_mismatch(total_wh: i64, valley_wh: i64, rules: &Rules) -> bool {
    let d = (i128::from(total_wh) - i128::from(valley_wh)).abs();
    d > i128::from(rules.tou_tolerance_wh)
        && d * 1000 > i128::from(rules.tou_tolerance_permille) * i128::from(total_wh).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tou_tolerance_is_the_larger_of_100_wh_and_2_percent() {
        let r = Rules::DEFAULT;
        // Small night: 100 Wh dominates.
        assert!(!tou_mismatch(1000, 900, &r));
        assert!(tou_mismatch(1000, 899, &r));
        // Large night: 2 % of 20 kWh = 400 Wh dominates.
        assert!(!tou_mismatch(20_000, 19_600, &r));
        assert!(tou_mismatch(20_000, 19_599, &r));
        assert!(tou_mismatch(20_000, 20_401, &r));
    }
}
