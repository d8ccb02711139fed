/*!
The off-peak computation of DESIGN.md ("Off-peak energy: the computation",
normative): from a household's registry spans and the *set* of its meters' readings
to nights, the season statement and the money, in integers, every figure explainable.

Pure: no I/O, no SQL, no async, no clock. The output is a function of the policy,
the season, `now`, the household's spans and the set of readings — order and
repeats of the readings do not matter.

# Layout
- [`model`]: inputs ([`RawReading`], [`MeterSpan`], [`HouseholdInput`],
  [`ReadingSource`]) and outputs ([`HouseholdSeason`], [`NightFigure`], [`Part`],
  [`BoundaryValue`], [`Statement`], [`Judgement`]).
- `judge`: validity of readings against the accepted baseline (wrap, `spike`,
  `negative_delta`), unwrapping the register.
- `boundary`: `E(b)` by exact interpolation rounded half up, and its quality.
- `night`: [`SeasonFrame`] (the closed nights of a season) and the parts of each
  night per meter validity; night quality, flags, `tou_mismatch`.
- `season`: the cap consumed in night order, `cap_reached_on`, money.
- [`explain`]: a night or a judged reading in words, with the readings used.
- [`thin`]: bounded state: the readings a settled season can do without ([`Thinning`]).

# How a figure is explained
A [`NightFigure`] lists its [`Part`]s (one per meter valid that night, split at an
install/removal instant); each part holds its two [`BoundaryValue`]s with the
readings `r1`, `r2` used, `E(b)`, and the quality. Rejected readings and wraps are in
[`HouseholdSeason::judged`] with the baseline they were judged against.
[`explain_night`] and [`explain_judgement`] put that into words.

# Usage
```
use std::collections::HashMap;
use qingnuan_server::engine::{Engine, HouseholdInput, MeterSpan, RawReading};
use qingnuan_shared::calendar::Season;
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::MeterId;

let mut engine = Engine::new(Policy::beijing_2018());
let season = Season { start_year: 2025 };
let now = 1_774_972_800; // 2026-04-01 00:00 +08:00: the whole season has closed
let frame = engine.frame(season, now); // once per season and `now`, shared by households
let meter = MeterId::new("123456781012").unwrap();
let household = HouseholdInput {
    id: "hh-0001".into(),
    max_power_w: None,
    meters: vec![MeterSpan { meter: meter.clone(), from: 0, to: None }],
};
let mut readings = HashMap::new();
// Nov 1 20:00 and Nov 2 08:00 local: 1 761 998 400 and 1 762 041 600.
readings.insert(meter, vec![
    RawReading { ts: 1_761_998_400, e_wh: 1_000_000, e_valley_wh: None },
    RawReading { ts: 1_762_041_600, e_wh: 1_030_000, e_valley_wh: None },
]);
let out = engine.household(&frame, &household, &readings);
let nov1 = out.nights.iter().find(|n| n.night.to_string() == "2025-11-01").unwrap();
assert_eq!(nov1.wh.0, 30_000);
assert_eq!(out.parts_of(nov1)[0].start.e_wh.map(|e| e.0), Some(1_000_000));
assert_eq!(out.statement.offpeak_wh.0, 30_000);
assert_eq!(out.statement.city_fen.0, 300); // 30 kWh × 10 fen
// Every other closed night lacks readings: listed as missing, counted 0.
assert_eq!((out.statement.nights.actual, out.statement.nights.missing), (1, 151));
```

# Mapping to CONTRACT.md
Statement: `offpeak_kwh` = `offpeak_wh.kwh_string()`, likewise `subsidised_kwh`,
`cap_kwh`; `cap_reached_on` = `cap_reached_on` (a [`Night`](qingnuan_shared::calendar::Night),
`Display` is `YYYY-MM-DD`); `city_subsidy_yuan` = `city_fen.yuan_string()`, likewise
`district_subsidy_yuan`, `valley_charge_yuan`; `nights` = [`NightCounts`]; `flags` =
`flags.names()`. Nights: `night`, `kwh` = `wh.kwh_string()`, `quality` =
`quality.as_str()`, `flags` = `flags.names()`.

# Performance
Sort once per meter (skipped when already sorted), one linear judging pass, boundary
search galloping forward from the previous boundary, three allocations per household
for the output. Measured single-threaded in release on the shared 2-core machine:
about 20–45 µs per household-season with 300–1,200 readings per meter.
*/

mod boundary;
pub mod explain;
mod judge;
pub mod model;
mod night;
pub mod resume;
mod season;
pub mod thin;

#[cfg(test)]
mod tests;

use qingnuan_shared::calendar::{Calendar, Season};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::UnixTime;

pub use explain::{explain_judgement, explain_night, local_time};
pub use judge::{Seed, REGISTER_RESOLUTION_WH};
pub use model::{
    BoundaryValue, EdgeKind, Flags, HouseholdInput, HouseholdSeason, Judgement, MeterSpan,
    NightCounts, NightFigure, Part, Quality, RawReading, ReadingSource, Statement, UnknownName,
    UsedReading, Verdict,
};
pub use night::{SeasonFrame, AHEAD};
pub use thin::Thinning;

use judge::Limits;
use model::UsedReading as Used;
use night::SpanView;

/// The computation with reusable scratch buffers: one per thread, then
/// [`Engine::household`] for each household (no allocation per reading).
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Policy,
    calendar: Calendar,
    sort_buf: Vec<RawReading>,
    accepted: Vec<Vec<Used>>,
    order: Vec<usize>,
    /// The seed each slot of the last run was resumed from.
    resumed: Vec<Option<Seed>>,
    /// Buffers of a result handed back ([`Engine::recycle`]), emptied: the next run fills
    /// them instead of allocating a season's nights and parts again.
    spare: Spare,
}

/// Emptied result buffers kept for the next run.
#[derive(Debug, Clone, Default)]
struct Spare {
    nights: Vec<NightFigure>,
    parts: Vec<Part>,
    judged: Vec<Judgement>,
}

impl Engine {
    /// An engine for `policy` (validated by the caller: `Policy::validate`).
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            calendar: Calendar::new(policy),
            sort_buf: Vec::new(),
            accepted: Vec::new(),
            order: Vec::new(),
            resumed: Vec::new(),
            spare: Spare::default(),
        }
    }

    /// Takes back a result's buffers for the next household: a round computing many
    /// households then allocates its nights and parts once, not once per household
    /// (freed and allocated again, each season's parts, tens of KiB, cost page faults).
    pub fn recycle(&mut self, out: HouseholdSeason) {
        let HouseholdSeason {
            mut nights,
            mut parts,
            mut judged,
            ..
        } = out;
        nights.clear();
        parts.clear();
        judged.clear();
        self.spare = Spare {
            nights,
            parts,
            judged,
        };
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The calendar of the policy.
    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    /// The closed nights of `season` as of `now` (UTC Unix seconds); build it once and
    /// pass it to [`Engine::household`] for every household.
    pub fn frame(&self, season: Season, now: UnixTime) -> SeasonFrame {
        SeasonFrame::new(&self.calendar, season, now)
    }

    /// Nights, parts, judgements and the statement of one household for the frame's
    /// season. Readings outside a span's validity `[from, to]` are not that span's.
    pub fn household<R: ReadingSource + ?Sized>(
        &mut self,
        frame: &SeasonFrame,
        household: &HouseholdInput,
        readings: &R,
    ) -> HouseholdSeason {
        self.household_resumed(frame, household, readings, &[])
    }

    /// [`Engine::household`] resumed from saved judging states: `seeds[i]` (by index in
    /// `household.meters`; missing or `None`: from the span's first reading) is what
    /// [`Engine::seeds_at`] returned for span `i` at some instant `t`, and `readings` must
    /// hold at least that span's readings after `seeds[i].last`. Then every judgement
    /// after `seeds[i].last` and every boundary after `t` equal the full run's; figures
    /// of nights with a boundary at or before `t` are not meaningful.
    pub fn household_resumed<R: ReadingSource + ?Sized>(
        &mut self,
        frame: &SeasonFrame,
        household: &HouseholdInput,
        readings: &R,
        seeds: &[Option<Seed>],
    ) -> HouseholdSeason {
        let mut out = self.run(frame, household, readings, seeds);
        // Judgements far from this season (other seasons of a long-lived span) are not
        // part of its explanation; they could only matter through a boundary's gap.
        let (lo, hi) = frame.span();
        let gap = self.policy.rules.max_gap_s;
        out.judged.retain(|j| {
            lo.saturating_sub(gap) <= j.reading.ts && j.reading.ts <= hi.saturating_add(gap)
        });
        out
    }

    /// The judging thresholds of `household`.
    fn limits(&self, household: &HouseholdInput) -> Limits {
        let rules = &self.policy.rules;
        Limits {
            max_power_w: household
                .max_power_w
                .filter(|&p| p > 0)
                .unwrap_or(rules.default_max_power_w)
                .max(0),
            modulus_wh: rules.register_modulus_wh.max(1),
        }
    }

    /// [`Engine::household_resumed`] with every judgement of the spans, this season's
    /// or not; leaves each span's accepted readings in `self.accepted` (slot order).
    fn run<R: ReadingSource + ?Sized>(
        &mut self,
        frame: &SeasonFrame,
        household: &HouseholdInput,
        readings: &R,
        seeds: &[Option<Seed>],
    ) -> HouseholdSeason {
        let limits = self.limits(household);
        // Deterministic span order whatever the registry's row order.
        self.order.clear();
        self.order.extend(0..household.meters.len());
        let meters = &household.meters;
        self.order
            .sort_by(|&a, &b| match (meters.get(a), meters.get(b)) {
                (Some(x), Some(y)) => (x.from, x.to.unwrap_or(UnixTime::MAX), &x.meter).cmp(&(
                    y.from,
                    y.to.unwrap_or(UnixTime::MAX),
                    &y.meter,
                )),
                _ => a.cmp(&b),
            });
        if self.accepted.len() < meters.len() {
            self.accepted.resize_with(meters.len(), Vec::new);
        }
        self.resumed.clear();
        self.resumed.resize(meters.len(), None);
        let Spare {
            mut nights,
            mut parts,
            mut judged,
        } = std::mem::take(&mut self.spare);
        let mut judged_ranges = Vec::with_capacity(meters.len());
        for (slot, &i) in self.order.iter().enumerate() {
            let before = judged.len();
            let (Some(span), Some(acc)) = (meters.get(i), self.accepted.get_mut(slot)) else {
                judged_ranges.push(before..before);
                continue;
            };
            let sorted = judge::sorted(readings.readings_of(&span.meter), &mut self.sort_buf);
            let seed = seeds.get(i).and_then(Option::as_ref);
            if let Some(r) = self.resumed.get_mut(slot) {
                *r = seed.copied();
            }
            judge::judge(
                sorted,
                span.from,
                span.to,
                limits,
                i,
                seed,
                acc,
                &mut judged,
            );
            judged_ranges.push(before..judged.len());
        }
        let mut views: Vec<SpanView<'_>> = self
            .order
            .iter()
            .zip(&self.accepted)
            .zip(&judged_ranges)
            .filter_map(|((&i, acc), range)| {
                let span = meters.get(i)?;
                Some(SpanView {
                    index: i,
                    from: span.from,
                    to: span.to,
                    accepted: acc,
                    judged: judged.get(range.clone()).unwrap_or(&[]),
                    hint: 0,
                })
            })
            .collect();
        nights.reserve(frame.nights().len());
        parts.reserve(frame.nights().len());
        night::assemble(frame, &mut views, &self.policy, &mut nights, &mut parts);
        drop(views);
        let statement = season::settle(&mut nights, &self.policy);
        HouseholdSeason {
            season: frame.season(),
            nights,
            parts,
            judged,
            statement,
        }
    }
}

impl Engine {
    /// The judging state of each span of `household` (by index in `household.meters`)
    /// at each instant of `at`, from the accepted readings of the last
    /// [`Engine::household`] (or resumed) run for that same household: `out[i][k]` is
    /// `None` when span `i` had no accepted reading at or before `at[k]`.
    pub fn seeds_at(&self, household: &HouseholdInput, at: &[UnixTime]) -> Vec<Vec<Option<Seed>>> {
        let mut out = vec![Vec::new(); household.meters.len()];
        for (slot, &i) in self.order.iter().enumerate() {
            let (Some(acc), Some(o)) = (self.accepted.get(slot), out.get_mut(i)) else {
                continue;
            };
            let resumed = self.resumed.get(slot).and_then(Option::as_ref);
            *o = judge::seeds_each(acc, at, resumed);
        }
        out
    }

    /// The season step alone: fills each night's `subsidised_wh` and `cumulative_wh`
    /// and returns the statement (for nights merged from stored and computed figures).
    pub fn settle(&self, nights: &mut [NightFigure]) -> Statement {
        season::settle(nights, &self.policy)
    }
}

/// One-shot form of [`Engine::household`]: builds the frame and scratch buffers for a
/// single household (use an [`Engine`] to compute many).
pub fn compute_household_season<R: ReadingSource + ?Sized>(
    policy: &Policy,
    season: Season,
    now: UnixTime,
    household: &HouseholdInput,
    readings: &R,
) -> HouseholdSeason {
    let mut engine = Engine::new(*policy);
    let frame = engine.frame(season, now);
    engine.household(&frame, household, readings)
}
