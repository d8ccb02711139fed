//! Resuming a season from saved state: which nights new readings can change, and from
//! which judging states to recompute only those, so a night close costs a few nights, not 152.
//!
//! Why it is exact. Readings arrive with instants `>= since`. Judging is a fold in time
//! order; its state just before the latest accepted reading `C` at or before an instant
//! `t` (the accepted reading before `C` and the valley baseline: a [`Seed`]) depends only
//! on readings `<= t`, so for `t < since` the saved state is still the state, and judging
//! resumed from it gives `C`'s own verdicts (a wrap, a valley rejection) and every later
//! one exactly as the full run. A boundary `b` is decided by the accepted readings around
//! it; if an accepted `C` with `b <= C.ts < since` exists, neither `r1(b)` nor `r2(b)` can
//! change. So nights whose every boundary is at or before `C.ts` (for every meter span)
//! keep their figures, and so does the list of readings set aside near them when they end
//! more than `max_gap_s` before `since`. One exception looks ahead: a span's first
//! readings are judged against the two after them (`first_baseline` in judge.rs), so a
//! span installed after the saved state recomputes every night within `max_gap_s` of its
//! installation. Everything else is recomputed, resumed from a state early enough
//! (`max_gap_s` before the first recomputed night) that the readings set aside around it
//! are judged again too.
//!
//! Pure: no I/O. [`SeasonState`] is saved with each (household, season) figures and
//! read back as bytes; anything unreadable, or saved for other registry rows or another
//! policy, means a full recompute.

use crate::varint::{Reader, Writer};
use qingnuan_shared::calendar::Night;
use qingnuan_shared::units::Wh;
use qingnuan_shared::UnixTime;

use super::judge::Seed;
use super::model::{Flags, HouseholdInput, NightFigure, Quality, UsedReading};
use super::night::SeasonFrame;
use qingnuan_shared::policy::Policy;

/// Judging states are saved at the opens of this many latest listed nights; readings
/// older than that (a spool replayed after weeks) mean a full recompute.
pub const SEEDED_NIGHTS: usize = 16;

/// Format version of [`SeasonState::to_bytes`].
const VERSION: u8 = 1;

/// Bit of a saved night's flags: the night rests on a reading with a conflicting value.
pub const CONFLICT_BIT: u16 = 1 << 15;

/// One listed night as saved: the figures the season statement is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedNight {
    /// Index of the night in the [`SeasonFrame`].
    pub index: usize,
    /// The paid figure, Wh.
    pub wh: i64,
    /// Its quality.
    pub quality: Quality,
    /// Engine [`Flags`] bits, plus [`CONFLICT_BIT`].
    pub flags: u16,
}

/// What is saved with a (household, season)'s figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeasonState {
    /// [`fingerprint`] of the policy and registry rows the figures came from.
    pub fingerprint: u64,
    /// Nights in the frame when saved.
    pub frame_len: usize,
    /// Every listed night, in order.
    pub nights: Vec<SavedNight>,
    /// Frame index of the first night with saved judging states.
    pub first_seeded: usize,
    /// `seeds[span][k - first_seeded]`: span's state at the open of season night `k`, for
    /// `k` from `first_seeded` to the frame's last [`SeasonFrame::ahead`] night (spans by
    /// index in `HouseholdInput::meters`). A state at an instant stays true while no
    /// reading at or before it arrives, which [`plan`] checks with `since`.
    pub seeds: Vec<Vec<Option<Seed>>>,
}

/// How to recompute a pair from its [`SeasonState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Frame index of the first night recomputed; earlier ones keep their saved figures.
    pub from: usize,
    /// Frame index whose saved judging states seed the run.
    pub seeded_at: usize,
    /// Per span: the state to resume from (`None`: judge from the span's first reading).
    pub seeds: Vec<Option<Seed>>,
    /// Per span: the readings needed are those with `ts > lower` (`None`: all of them).
    pub lower: Vec<Option<UnixTime>>,
}

/// A stable 64-bit digest (FNV-1a) of what a household's figures depend on besides its
/// readings: the policy, the household's power limit and its meter spans.
pub fn fingerprint(policy: &Policy, household: &HouseholdInput) -> u64 {
    fingerprint_after(policy_digest(policy), household)
}

/// The FNV-1a state after a policy's bytes, where every [`fingerprint`] under that
/// policy goes on from: computed once for a round, not per household (formatting the
/// policy costs more than the rest of the digest).
pub fn policy_digest(policy: &Policy) -> u64 {
    fnv(FNV_START, format!("{policy:?}").as_bytes())
}

/// [`fingerprint`] from a [`policy_digest`].
pub fn fingerprint_after(policy_digest: u64, household: &HouseholdInput) -> u64 {
    let mut h = fnv(
        policy_digest,
        &household.max_power_w.unwrap_or(i64::MIN).to_le_bytes(),
    );
    for m in &household.meters {
        h = fnv(h, m.meter.as_str().as_bytes());
        h = fnv(h, &[0]);
        h = fnv(h, &m.from.to_le_bytes());
        h = fnv(h, &m.to.unwrap_or(i64::MIN).to_le_bytes());
    }
    h
}

/// The FNV-1a 64-bit offset basis: the state [`fnv`] starts from.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a from state `h` over `bytes`.
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The recompute plan for a pair whose new readings (and conflicts) all have `ts >=
/// since`, or `None` when only a full recompute is exact (state too old, a meter span
/// without a saved state where one is needed, a shrunken frame).
pub fn plan(
    frame: &SeasonFrame,
    household: &HouseholdInput,
    state: &SeasonState,
    since: UnixTime,
    max_gap_s: i64,
) -> Option<Plan> {
    let nights = frame.nights();
    let season: Vec<(Night, UnixTime, UnixTime)> =
        nights.iter().chain(frame.ahead()).copied().collect();
    if state.frame_len > nights.len() || state.seeds.len() != household.meters.len() {
        return None;
    }
    let seed = |span: usize, k: usize| -> Option<Option<Seed>> {
        let i = k.checked_sub(state.first_seeded)?;
        state.seeds.get(span)?.get(i).copied()
    };
    // The latest night opening before `since` (listed or not yet closed): the state at
    // its open is untouched, since every reading up to it was there when it was saved.
    let kstar = season
        .partition_point(|&(_, open, _)| open < since)
        .checked_sub(1)?;
    let (_, kopen, _) = *season.get(kstar)?;
    // Nights ending within `max_gap_s` before `since` list readings set aside near them.
    let mut from = nights.partition_point(|&(_, _, close)| close.saturating_add(max_gap_s) < since);
    for (i, m) in household.meters.iter().enumerate() {
        if m.to.is_some_and(|to| to < since) {
            continue; // nothing new is this span's
        }
        if m.from > kopen {
            // Every boundary of the span is after `kopen`, but the verdicts on its first
            // readings look ahead (judge.rs, `first_baseline`): new readings may set aside
            // old ones, listed with the nights up to `max_gap_s` before.
            from = from.min(
                nights.partition_point(|&(_, _, close)| close.saturating_add(max_gap_s) < m.from),
            );
            continue;
        }
        let c = seed(i, kstar)??;
        // Nights with a boundary after the accepted reading `c.latest` may change.
        from = from.min(nights.partition_point(|&(_, _, close)| close <= c.latest));
    }
    // `from` may be the first night not closed yet: then no listed figure changes, but
    // the saved states ahead are renewed.
    let from_open = season.get(from)?.1;
    // Resume early enough that readings set aside near night `from` are judged again.
    let seeded_at = season
        .partition_point(|&(_, open, _)| open <= from_open.saturating_sub(max_gap_s))
        .checked_sub(1)?
        .min(from);
    let (_, gopen, _) = *season.get(seeded_at)?;
    let mut seeds = Vec::with_capacity(household.meters.len());
    let mut lower = Vec::with_capacity(household.meters.len());
    for (i, m) in household.meters.iter().enumerate() {
        if m.from > gopen {
            seeds.push(None);
            lower.push(Some(m.from.saturating_sub(1)));
            continue;
        }
        let s = seed(i, seeded_at)?;
        lower.push(s.map(|s| s.last.ts));
        seeds.push(s);
    }
    Some(Plan {
        from,
        seeded_at,
        seeds,
        lower,
    })
}

/// Figures of a resumed run merged with the saved ones: nights before `plan.from` are
/// taken from `state`, the rest from `computed` (which must come from the same frame and
/// spans). Returns the merged nights, ready for the season step.
pub fn merge(
    frame: &SeasonFrame,
    plan: &Plan,
    state: &SeasonState,
    computed: Vec<NightFigure>,
) -> Vec<NightFigure> {
    let nights = frame.nights();
    let first_new = night_at(frame, plan.from);
    let mut out: Vec<NightFigure> = state
        .nights
        .iter()
        .filter(|n| n.index < plan.from)
        .filter_map(|n| {
            let &(night, open, close) = nights.get(n.index)?;
            Some(NightFigure {
                night,
                span: (open, close),
                wh: Wh(n.wh),
                quality: n.quality,
                flags: Flags(n.flags & !CONFLICT_BIT),
                total_wh: None,
                valley_wh: None,
                subsidised_wh: Wh(0),
                cumulative_wh: Wh(0),
                parts: 0..0,
            })
        })
        .collect();
    out.extend(
        computed
            .into_iter()
            .filter(|n| first_new.is_some_and(|f| n.night >= f)),
    );
    out
}

/// Whether a saved night before `from` rests on a conflicting reading.
pub fn conflict_before(state: &SeasonState, from: usize) -> bool {
    state
        .nights
        .iter()
        .any(|n| n.index < from && n.flags & CONFLICT_BIT != 0)
}

/// The saved state after a run: `nights` are the merged figures (each with whether it
/// rests on a conflicting reading), `fresh` gives span `i`'s state at the open of frame
/// night `k` for `k >= fresh_from` (computed by this run), older ones come from `old`.
pub fn next_state(
    fingerprint: u64,
    frame: &SeasonFrame,
    nights: &[(&NightFigure, bool)],
    spans: usize,
    fresh_from: usize,
    fresh: impl Fn(usize, usize) -> Option<Seed>,
    old: Option<&SeasonState>,
) -> SeasonState {
    let frame_nights = frame.nights();
    let frame_len = frame_nights.len();
    let first_seeded = frame_len.saturating_sub(SEEDED_NIGHTS);
    let end = frame_len + frame.ahead().len();
    let mut seeds = vec![Vec::with_capacity(end - first_seeded); spans];
    for (i, s) in seeds.iter_mut().enumerate() {
        for k in first_seeded..end {
            let v = if k >= fresh_from {
                fresh(i, k)
            } else {
                old.and_then(|o| {
                    o.seeds
                        .get(i)?
                        .get(k.checked_sub(o.first_seeded)?)
                        .copied()
                        .flatten()
                })
            };
            s.push(v);
        }
    }
    let mut saved = Vec::with_capacity(nights.len());
    saved.extend(nights.iter().filter_map(|(n, conflict)| {
        let index = frame_nights.binary_search_by(|f| f.0.cmp(&n.night)).ok()?;
        Some(SavedNight {
            index,
            wh: n.wh.0,
            quality: n.quality,
            flags: n.flags.0 | if *conflict { CONFLICT_BIT } else { 0 },
        })
    }));
    SeasonState {
        fingerprint,
        frame_len,
        nights: saved,
        first_seeded,
        seeds,
    }
}

/// The opens of frame nights `from..`, UTC Unix seconds (where [`Engine::seeds_at`]
/// is asked for states).
///
/// [`Engine::seeds_at`]: super::Engine::seeds_at
pub fn opens_from(frame: &SeasonFrame, from: usize) -> Vec<UnixTime> {
    frame
        .nights()
        .iter()
        .chain(frame.ahead())
        .skip(from)
        .map(|&(_, open, _)| open)
        .collect()
}

/// The label of the season's night `index` (listed in the frame, or one of its
/// [`SeasonFrame::ahead`] nights).
pub fn night_at(frame: &SeasonFrame, index: usize) -> Option<Night> {
    frame
        .nights()
        .iter()
        .chain(frame.ahead())
        .nth(index)
        .map(|n| n.0)
}

impl SeasonState {
    /// Compact bytes (LEB128 varints, zigzag for signed values).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Sized for the usual record lengths (a night ~5 bytes, a seed ~25), so that the
        // buffer is not grown and copied while written.
        let seeds: usize = self.seeds.iter().map(Vec::len).sum();
        let mut w = Writer(Vec::with_capacity(24 + self.nights.len() * 6 + seeds * 28));
        w.0.push(VERSION);
        w.0.extend_from_slice(&self.fingerprint.to_le_bytes());
        w.uint(self.frame_len as u64);
        w.uint(self.nights.len() as u64);
        let mut prev = 0usize;
        for n in &self.nights {
            w.uint(n.index.saturating_sub(prev) as u64);
            prev = n.index;
            w.int(n.wh);
            w.0.push(match n.quality {
                Quality::Actual => 0,
                Quality::Estimated => 1,
                Quality::Missing => 2,
            });
            w.uint(u64::from(n.flags));
        }
        w.uint(self.first_seeded as u64);
        w.uint(self.seeds.len() as u64);
        for span in &self.seeds {
            w.uint(span.len() as u64);
            for s in span {
                let Some(s) = s else {
                    w.0.push(0);
                    continue;
                };
                let l = s.last;
                let tag = 1
                    | u8::from(l.e_valley_wh.is_some()) << 1
                    | u8::from(l.valley_unwrapped_wh.is_some()) << 2
                    | u8::from(s.valley_base.is_some()) << 3;
                w.0.push(tag);
                w.int(s.latest);
                w.int(s.latest.saturating_sub(l.ts));
                w.int(l.e_wh);
                w.int(l.unwrapped_wh.saturating_sub(l.e_wh));
                if let Some(v) = l.e_valley_wh {
                    w.int(v);
                }
                if let Some(v) = l.valley_unwrapped_wh {
                    w.int(v.saturating_sub(l.e_valley_wh.unwrap_or(0)));
                }
                if let Some((ts, raw, unwrapped)) = s.valley_base {
                    w.int(l.ts.saturating_sub(ts));
                    w.int(raw);
                    w.int(unwrapped.saturating_sub(raw));
                }
            }
        }
        w.0
    }

    /// Reads [`SeasonState::to_bytes`]; `None` for anything else (never panics).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let mut r = Reader(b);
        if r.byte()? != VERSION {
            return None;
        }
        let fingerprint = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let frame_len = r.len()?;
        let n = r.len()?;
        let mut nights = Vec::with_capacity(n.min(1024));
        let mut index = 0usize;
        for _ in 0..n {
            index = index.checked_add(r.len()?)?;
            let wh = r.int()?;
            let quality = match r.byte()? {
                0 => Quality::Actual,
                1 => Quality::Estimated,
                2 => Quality::Missing,
                _ => return None,
            };
            let flags = u16::try_from(r.uint()?).ok()?;
            nights.push(SavedNight {
                index,
                wh,
                quality,
                flags,
            });
        }
        let first_seeded = r.len()?;
        let spans = r.len()?;
        let mut seeds = Vec::with_capacity(spans.min(64));
        for _ in 0..spans {
            let k = r.len()?;
            let mut span = Vec::with_capacity(k.min(SEEDED_NIGHTS));
            for _ in 0..k {
                let tag = r.byte()?;
                if tag == 0 {
                    span.push(None);
                    continue;
                }
                if tag & !0b1111 != 0 || tag & 1 == 0 {
                    return None;
                }
                let latest = r.int()?;
                let ts = latest.checked_sub(r.int()?)?;
                let e_wh = r.int()?;
                let unwrapped_wh = e_wh.checked_add(r.int()?)?;
                let e_valley_wh = if tag & 2 != 0 { Some(r.int()?) } else { None };
                let valley_unwrapped_wh = if tag & 4 != 0 {
                    Some(e_valley_wh.unwrap_or(0).checked_add(r.int()?)?)
                } else {
                    None
                };
                let valley_base = if tag & 8 != 0 {
                    let vts = ts.checked_sub(r.int()?)?;
                    let raw = r.int()?;
                    Some((vts, raw, raw.checked_add(r.int()?)?))
                } else {
                    None
                };
                span.push(Some(Seed {
                    latest,
                    last: UsedReading {
                        ts,
                        e_wh,
                        unwrapped_wh,
                        e_valley_wh,
                        valley_unwrapped_wh,
                    },
                    valley_base,
                }));
            }
            seeds.push(span);
        }
        if !r.0.is_empty() || first_seeded > frame_len {
            return None;
        }
        Some(SeasonState {
            fingerprint,
            frame_len,
            nights,
            first_seeded,
            seeds,
        })
    }
}
