//! Bounded state (DESIGN.md "Late and repeated data"): which stored readings of a
//! household's meters no figure of a season needs, so that a settled span can keep only
//! the readings that decide and explain its money.
//!
//! # What is kept
//! Of the readings at instants in `[season start, cut)`, [`Engine::thin`] keeps:
//! - both readings `r1`, `r2` used at every boundary of every night (total and valley
//!   register values, quality and gap all come from them);
//! - every judged reading (rejected, wrap, valley verdicts) and the baseline it was
//!   judged against, so that it is judged again exactly so and still shown;
//! - each span's judging state at the cut: its latest accepted reading before the cut and
//!   the latest whose valley register was kept, so that a reading arriving later at or
//!   after the cut is judged against the same baselines;
//! - any accepted reading without which the next one would be judged differently: the
//!   judging rule is not transitive (the 10 Wh register resolution is allowed per step),
//!   so an accepted reading goes only when the next accepted one, judged against the last
//!   kept one, is accepted with the same unwrapped value (and likewise on the valley
//!   register's own chain).
//!
//! # Why the result is exact
//! Judging is causal: a reading's verdict depends only on the accepted reading before it.
//! By induction over the kept readings in time order, each is judged against the same
//! baseline value with the same outcome and unwrapped value as in the full run, so every
//! boundary sees the same `r1`, `r2`. The first-reading guard of a span sees its first
//! reading and then kept ones: an accepted one is plausible from it (the chain check
//! above), and a rejected one was judged against a kept baseline at or after it, so the
//! guard decides as in the full run. The figures are then the same. [`Engine::thin`]
//! does not rely on this argument alone: it computes the household again from the kept
//! readings and drops nothing unless everything (nights, parts, every judgement of the
//! spans, the statement) is equal.
//!
//! # What it does not cover
//! A reading that arrives later inside a thinned range would be judged against a
//! different baseline than the dropped readings gave it: no bounded state can judge it
//! as the rules do. So the caller must refuse readings, and registry or policy changes,
//! that reach before the cut once it has dropped readings there (docs/bounded-state.md).

use std::collections::{BTreeMap, HashMap};

use qingnuan_shared::units::MeterId;
use qingnuan_shared::UnixTime;

use super::judge::{self, saturating_add, Limits};
use super::model::{HouseholdInput, RawReading, ReadingSource, UsedReading};
use super::{Engine, SeasonFrame};

/// What [`Engine::thin`] found for one household and one season.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thinning {
    /// Per meter, the instants (increasing, UTC Unix seconds) whose stored readings can
    /// go: every stored row of that meter at such a `ts`.
    pub drop: BTreeMap<MeterId, Vec<UnixTime>>,
    /// Distinct reading instants in `[season start, cut)` within the household's spans.
    pub considered: usize,
    /// Whether the computation from the kept readings equalled the full one. `false`
    /// leaves `drop` empty: nothing may go.
    pub verified: bool,
}

impl Thinning {
    /// Instants that can go, all meters.
    pub fn dropped(&self) -> usize {
        self.drop.values().map(Vec::len).sum()
    }
}

impl Engine {
    /// The readings of `household` at instants in `[season start, cut)` that no figure
    /// of `frame`'s season needs, with `cut = min(before, close of the frame's last
    /// closed night)`: the household computed from the other readings gives the same
    /// nights, parts, judgements and statement (checked here, see the module doc).
    ///
    /// Readings outside the household's spans are never dropped (another household may
    /// use them), nor readings outside the season.
    pub fn thin<R: ReadingSource + ?Sized>(
        &mut self,
        frame: &SeasonFrame,
        household: &HouseholdInput,
        readings: &R,
        before: UnixTime,
    ) -> Thinning {
        let (lo, hi) = frame.span();
        let Some(&(_, _, last_close)) = frame.nights().last() else {
            return Thinning {
                verified: true,
                ..Thinning::default()
            };
        };
        let cut = before.min(last_close).min(hi);
        let full = self.run(frame, household, readings, &[]);
        let limits = self.limits(household);
        let meters = &household.meters;
        let in_range = |t: UnixTime| lo <= t && t < cut;

        // The household's distinct meters; per meter, sorted instants.
        let mut ids: Vec<&MeterId> = Vec::with_capacity(meters.len());
        for span in meters {
            if !ids.contains(&&span.meter) {
                ids.push(&span.meter);
            }
        }
        let slot_of = |span: usize| {
            let m = &meters.get(span)?.meter;
            ids.iter().position(|x| *x == m)
        };
        // Instants some figure or judgement rests on.
        let mut keep: Vec<Vec<UnixTime>> = vec![Vec::new(); ids.len()];
        for p in &full.parts {
            if let Some(k) = slot_of(p.span).and_then(|m| keep.get_mut(m)) {
                for b in [p.start, p.end] {
                    k.extend(b.r1.map(|r| r.ts));
                    k.extend(b.r2.map(|r| r.ts));
                }
            }
        }
        for j in &full.judged {
            if let Some(k) = slot_of(j.span).and_then(|m| keep.get_mut(m)) {
                k.push(j.reading.ts);
                k.push(j.baseline.0);
            }
        }
        // The judging state at the cut, for readings that arrive later at or after it:
        // each span's latest accepted reading before the cut and the latest whose valley
        // register was kept (the baselines such a reading is judged against).
        for (slot, &i) in self.order.iter().enumerate() {
            let (Some(k), Some(acc)) = (
                slot_of(i).and_then(|m| keep.get_mut(m)),
                self.accepted.get(slot),
            ) else {
                continue;
            };
            let below = acc
                .get(..acc.partition_point(|r| r.ts < cut))
                .unwrap_or(&[]);
            k.extend(below.last().map(|r| r.ts));
            k.extend(
                below
                    .iter()
                    .rev()
                    .find(|r| r.valley_unwrapped_wh.is_some())
                    .map(|r| r.ts),
            );
        }
        for k in &mut keep {
            k.sort_unstable();
            k.dedup();
        }
        // Then what each span's chain of accepted readings can do without; what a chain
        // keeps, no other span of the same meter may drop.
        let mut cands: Vec<Vec<UnixTime>> = vec![Vec::new(); ids.len()];
        let mut chain_kept: Vec<Vec<UnixTime>> = vec![Vec::new(); ids.len()];
        for (slot, &i) in self.order.iter().enumerate() {
            let (Some(m), Some(acc)) = (slot_of(i), self.accepted.get(slot)) else {
                continue;
            };
            let (Some(required), Some(c), Some(ck)) =
                (keep.get(m), cands.get_mut(m), chain_kept.get_mut(m))
            else {
                continue;
            };
            let mut absent = not_in(required);
            chain(acc, limits, |t| in_range(t) && absent(t), c, ck);
        }
        let mut out = Thinning::default();
        for (((id, mut k), mut c), ck) in ids.iter().zip(keep).zip(cands).zip(chain_kept) {
            k.extend(ck);
            k.sort_unstable();
            c.sort_unstable();
            c.dedup();
            let mut absent = not_in(&k);
            c.retain(|&t| absent(t));
            if !c.is_empty() {
                out.drop.insert((*id).clone(), c);
            }
            let sorted = judge::sorted(readings.readings_of(id), &mut self.sort_buf);
            let mut last = None;
            for r in sorted {
                if last != Some(r.ts)
                    && in_range(r.ts)
                    && meters.iter().any(|s| {
                        s.meter == **id && s.from <= r.ts && s.to.is_none_or(|to| r.ts <= to)
                    })
                {
                    out.considered += 1;
                }
                last = Some(r.ts);
            }
        }

        // The check: the kept readings must give exactly the same household season.
        let mut kept: HashMap<MeterId, Vec<RawReading>> = HashMap::with_capacity(ids.len());
        for id in ids {
            let mut absent = not_in(out.drop.get(id).map_or(&[][..], Vec::as_slice));
            let rs = judge::sorted(readings.readings_of(id), &mut self.sort_buf)
                .iter()
                .filter(|r| absent(r.ts))
                .copied()
                .collect();
            kept.insert(id.clone(), rs);
        }
        let again = self.run(frame, household, &kept, &[]);
        out.verified = again == full;
        if !out.verified {
            out.drop.clear();
        }
        out
    }
}

/// Appends to `out` (increasing) the accepted readings of one span's chain `acc` that
/// `droppable` allows to go and that no later accepted reading needs as its baseline
/// (those it allows but keeps go to `kept`):
/// the next accepted reading, judged against the last kept one, is accepted with the same
/// unwrapped value and no wrap; for a reading whose valley register was kept, the same
/// holds for the next such reading on the valley register's chain.
fn chain(
    acc: &[UsedReading],
    limits: Limits,
    mut droppable: impl FnMut(UnixTime) -> bool,
    out: &mut Vec<UnixTime>,
    kept: &mut Vec<UnixTime>,
) {
    let Some(&first) = acc.first() else { return };
    // next_valley[i]: the first index > i whose valley register was kept.
    let mut next_valley = vec![None; acc.len()];
    let mut next = None;
    for (i, r) in acc.iter().enumerate().rev() {
        if let Some(slot) = next_valley.get_mut(i) {
            *slot = next;
        }
        if r.valley_unwrapped_wh.is_some() {
            next = Some(i);
        }
    }
    if droppable(first.ts) {
        kept.push(first.ts);
    }
    let mut base = first;
    let mut vbase = first.valley_unwrapped_wh.map(|_| first);
    for (i, x) in acc.iter().enumerate().skip(1) {
        let total_ok = acc.get(i + 1).is_some_and(|y| {
            same_rise(
                limits,
                (base.ts, base.e_wh, base.unwrapped_wh),
                (y.ts, y.e_wh, y.unwrapped_wh),
            )
        });
        // Nothing later reads `x`'s valley when no later reading kept one (the state at
        // the cut is kept apart, for readings still to come). With no kept valley before
        // `x`, the next one starts the chain at its own value, as it stands after `x`
        // unless it wrapped from `x`, and a wrap is judged with `x` as its baseline,
        // which is then kept.
        let valley_ok = x.valley_unwrapped_wh.is_none()
            || match (vbase, next_valley.get(i).copied().flatten()) {
                (_, None) | (None, Some(_)) => true,
                (Some(va), Some(z)) => acc.get(z).is_some_and(|z| {
                    matches!(
                        (va.e_valley_wh, va.valley_unwrapped_wh, z.e_valley_wh, z.valley_unwrapped_wh),
                        (Some(ve), Some(vu), Some(ze), Some(zu))
                            if same_rise(limits, (va.ts, ve, vu), (z.ts, ze, zu))
                    )
                }),
            };
        let allowed = droppable(x.ts);
        if allowed && total_ok && valley_ok {
            out.push(x.ts);
        } else {
            if allowed {
                kept.push(x.ts);
            }
            base = *x;
            if x.valley_unwrapped_wh.is_some() {
                vbase = Some(*x);
            }
        }
    }
}

/// A membership test against the sorted `set` for instants asked in increasing order:
/// `true` when the instant is not in it (a merge, no search).
fn not_in(set: &[UnixTime]) -> impl FnMut(UnixTime) -> bool + '_ {
    let mut at = 0;
    move |t| {
        while set.get(at).is_some_and(|&r| r < t) {
            at += 1;
        }
        set.get(at) != Some(&t)
    }
}

/// Whether `b = (ts, as read, unwrapped)`, judged against `a`, is accepted without a wrap
/// at the same unwrapped value.
fn same_rise(limits: Limits, a: (UnixTime, i64, i64), b: (UnixTime, i64, i64)) -> bool {
    matches!(
        limits.rise(a.1, b.1, b.0.saturating_sub(a.0)),
        Ok((rise, false)) if saturating_add(a.2, rise) == b.2
    )
}
