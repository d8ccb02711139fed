//! Validity of readings: each reading of a meter span is judged in timestamp order
//! against the latest *accepted* reading (the baseline): wrap, spike or negative delta.
//!
//! The span's first reading has no baseline. DESIGN leaves it accepted; the engine
//! adds one guard so that a glitch as the very first reading cannot poison the span:
//! it is rejected when the two readings after it agree with each other and both
//! contradict it (see [`first_baseline`]).
//!
//! **Invariant:** accepted unwrapped values never decrease, so no segment is negative.
//! **Invariant:** a rejected reading never moves the baseline.

use qingnuan_shared::UnixTime;

use super::model::{Judgement, RawReading, UsedReading, Verdict};

/// The register resolution of a DL/T 645 meter (`XXXXXX.XX` kWh), Wh: two reads a
/// second apart may differ by one step without being a spike.
pub const REGISTER_RESOLUTION_WH: i64 = 10;

/// Thresholds of one judgement run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Household's physical limit, W (positive).
    pub max_power_w: i64,
    /// Register modulus, Wh (positive).
    pub modulus_wh: i64,
}

impl Limits {
    /// Whether a register rise of `rise_wh` in `dt_s` seconds is physically possible:
    /// `rise * 3600 <= max_power * dt + resolution * 3600`, exact.
    pub fn plausible(&self, rise_wh: i128, dt_s: i64) -> bool {
        rise_wh * 3600
            <= i128::from(self.max_power_w) * i128::from(dt_s)
                + i128::from(REGISTER_RESOLUTION_WH) * 3600
    }

    /// The accepted rise from `base` to `e` (a wrap when `e < base`), or the verdict rejecting it.
    pub(crate) fn rise(&self, base: i64, e: i64, dt_s: i64) -> Result<(i128, bool), Verdict> {
        // Fast path in i64 for ordinary registers; the i128 path below decides the rest
        // with the same rule.
        if let (Some(d), Some(allow)) = (
            e.checked_sub(base)
                .filter(|d| *d >= 0)
                .and_then(|d| d.checked_mul(3600)),
            self.max_power_w
                .checked_mul(dt_s)
                .and_then(|a| a.checked_add(REGISTER_RESOLUTION_WH * 3600)),
        ) {
            return if d <= allow {
                Ok((i128::from(e - base), false))
            } else {
                Err(Verdict::Spike)
            };
        }
        if e >= base {
            let rise = i128::from(e) - i128::from(base);
            if self.plausible(rise, dt_s) {
                Ok((rise, false))
            } else {
                Err(Verdict::Spike)
            }
        } else {
            let rise = i128::from(e) + i128::from(self.modulus_wh) - i128::from(base);
            if rise >= 0 && self.plausible(rise, dt_s) {
                Ok((rise, true))
            } else {
                Err(Verdict::NegativeDelta)
            }
        }
    }
}

/// The judging state of a meter span just before its latest accepted reading at or
/// before some instant `t`: enough to judge that reading and every later one exactly as a
/// run from the span's first reading does (its own verdicts, a wrap or a valley
/// rejection, included: they flag the nights resting on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Seed {
    /// When the latest accepted reading at or before `t` was read, UTC Unix seconds.
    pub latest: UnixTime,
    /// The accepted reading before that one, as the full run used it (unwrapped values
    /// included): the baseline the latest one was judged against.
    pub last: UsedReading,
    /// The valley register's baseline then: `(ts, valley as read, valley unwrapped)` of
    /// the latest accepted reading up to `last` whose valley was kept.
    pub valley_base: Option<(UnixTime, i64, i64)>,
}

impl Seed {
    /// The state for instant `t` from the accepted readings `acc` (increasing `ts`);
    /// `None` when fewer than two are at or before `t` (judge such a span from its first
    /// reading). `resumed`: the seed `acc` was judged from, whose valley baseline stands
    /// when no reading of `acc` before the latest one kept its valley.
    pub(crate) fn at(acc: &[UsedReading], t: UnixTime, resumed: Option<&Seed>) -> Option<Seed> {
        let n = acc.partition_point(|r| r.ts <= t);
        let latest = acc.get(n.checked_sub(1)?)?.ts;
        let before = acc.get(..n.checked_sub(1)?)?;
        let last = *before.last()?;
        let valley_base = before
            .iter()
            .rev()
            .find_map(|r| Some((r.ts, r.e_valley_wh?, r.valley_unwrapped_wh?)))
            .or_else(|| resumed.and_then(|s| s.valley_base));
        Some(Seed {
            latest,
            last,
            valley_base,
        })
    }
}

/// [`Seed::at`] for each instant of `at`, in one sweep of `acc` when `at` increases
/// (the opens of a season's nights do); otherwise one search each. Same answers.
pub(crate) fn seeds_each(
    acc: &[UsedReading],
    at: &[UnixTime],
    resumed: Option<&Seed>,
) -> Vec<Option<Seed>> {
    if !at.windows(2).all(|w| matches!(w, [a, b] if a <= b)) {
        return at.iter().map(|&t| Seed::at(acc, t, resumed)).collect();
    }
    let mut out = Vec::with_capacity(at.len());
    // `n`: readings at or before the current instant; `valley`: the latest reading with
    // both valley values among `acc[..scanned]`, where `scanned` trails `n - 1`.
    let (mut n, mut scanned) = (0usize, 0usize);
    let mut valley: Option<(UnixTime, i64, i64)> = None;
    for &t in at {
        while acc.get(n).is_some_and(|r| r.ts <= t) {
            n += 1;
        }
        let Some(before) = n.checked_sub(1).and_then(|k| acc.get(..k)) else {
            out.push(None);
            continue;
        };
        for r in before.get(scanned..).unwrap_or(&[]) {
            if let (Some(v), Some(u)) = (r.e_valley_wh, r.valley_unwrapped_wh) {
                valley = Some((r.ts, v, u));
            }
        }
        scanned = before.len();
        let (Some(last), Some(latest)) = (before.last(), acc.get(before.len())) else {
            out.push(None);
            continue;
        };
        out.push(Some(Seed {
            latest: latest.ts,
            last: *last,
            valley_base: valley.or_else(|| resumed.and_then(|s| s.valley_base)),
        }));
    }
    out
}

/// Sorts `raw` by `(ts, e_wh, e_valley_wh)` into `buf` unless it already is, and
/// returns the sorted slice. Exact repeats and same-`ts` conflicts stay; [`judge`]
/// keeps the first of each `ts`.
pub(crate) fn sorted<'a>(raw: &'a [RawReading], buf: &'a mut Vec<RawReading>) -> &'a [RawReading] {
    if raw.windows(2).all(|w| matches!(w, [a, b] if a <= b)) {
        return raw;
    }
    buf.clear();
    buf.extend_from_slice(raw);
    buf.sort_unstable();
    buf
}

/// Judges the readings of one meter span with `from <= ts <= to` (a reading at the
/// removal instant is the register value at that instant, so it belongs to the span).
///
/// `sorted` must be ordered by `(ts, e_wh, e_valley_wh)`. Appends the accepted readings
/// to `accepted` (cleared first) and the rejections and wraps to `judged`.
///
/// With a `seed` (the state a full run had) judging resumes after `seed.last`: earlier
/// readings are skipped, `seed.last` heads `accepted`, and the first-reading guard does
/// not apply. Everything after it is judged as the full run did.
#[allow(clippy::too_many_arguments)]
pub(crate) fn judge(
    sorted: &[RawReading],
    from: UnixTime,
    to: Option<UnixTime>,
    limits: Limits,
    span: usize,
    seed: Option<&Seed>,
    accepted: &mut Vec<UsedReading>,
    judged: &mut Vec<Judgement>,
) {
    accepted.clear();
    // Resumed: the readings up to the seed's were judged before and left this state.
    let from = match seed {
        Some(s) => from.max(s.last.ts.saturating_add(1)),
        None => from,
    };
    let lo = sorted.partition_point(|r| r.ts < from);
    let hi = match to {
        Some(to) => sorted.partition_point(|r| r.ts <= to),
        None => sorted.len(),
    };
    let Some(window) = sorted.get(lo..hi) else {
        return;
    };
    // The valley register's own baseline: the latest accepted reading whose valley was kept.
    let mut valley_base: Option<(UnixTime, i64, i64)> = None;
    let mut last_ts: Option<UnixTime> = None;
    let window = match seed {
        Some(s) => {
            accepted.push(s.last);
            valley_base = s.valley_base;
            last_ts = Some(s.last.ts);
            window
        }
        None => first_baseline(window, limits, span, judged),
    };
    for r in window {
        if last_ts == Some(r.ts) {
            continue; // a repeat, or a same-ts conflict: the first (smallest) is kept
        }
        last_ts = Some(r.ts);
        let unwrapped = match accepted.last() {
            None => r.e_wh,
            Some(base) => match limits.rise(base.e_wh, r.e_wh, r.ts.saturating_sub(base.ts)) {
                Ok((rise, wrapped)) => {
                    if wrapped {
                        judged.push(Judgement {
                            span,
                            reading: *r,
                            verdict: Verdict::Wrap,
                            baseline: (base.ts, base.e_wh),
                        });
                    }
                    saturating_add(base.unwrapped_wh, rise)
                }
                Err(verdict) => {
                    judged.push(Judgement {
                        span,
                        reading: *r,
                        verdict,
                        baseline: (base.ts, base.e_wh),
                    });
                    continue;
                }
            },
        };
        let mut used = UsedReading {
            ts: r.ts,
            e_wh: r.e_wh,
            unwrapped_wh: unwrapped,
            e_valley_wh: None,
            valley_unwrapped_wh: None,
        };
        if let Some(v) = r.e_valley_wh {
            let kept = match valley_base {
                None => Some(v),
                Some((vts, vraw, vu)) => match limits.rise(vraw, v, r.ts.saturating_sub(vts)) {
                    Ok((rise, wrapped)) => {
                        if wrapped {
                            judged.push(Judgement {
                                span,
                                reading: *r,
                                verdict: Verdict::ValleyWrap,
                                baseline: (vts, vraw),
                            });
                        }
                        Some(saturating_add(vu, rise))
                    }
                    Err(verdict) => {
                        let verdict = if verdict == Verdict::Spike {
                            Verdict::ValleySpike
                        } else {
                            Verdict::ValleyNegativeDelta
                        };
                        judged.push(Judgement {
                            span,
                            reading: *r,
                            verdict,
                            baseline: (vts, vraw),
                        });
                        None
                    }
                },
            };
            if let Some(vu) = kept {
                used.e_valley_wh = Some(v);
                used.valley_unwrapped_wh = Some(vu);
                valley_base = Some((r.ts, v, vu));
            }
        }
        accepted.push(used);
    }
}

/// The next reading after `from` with a different `ts` (repeats and same-ts
/// conflicts skipped), with its index in `w`.
fn next_distinct(w: &[RawReading], from: usize) -> Option<(usize, RawReading)> {
    let ts = w.get(from)?.ts;
    let i = from + w.get(from..)?.iter().position(|r| r.ts != ts)?;
    Some((i, *w.get(i)?))
}

/// Drops leading readings that the next two contradict: `r0` is rejected when neither
/// `r1` nor `r2` is plausible from it while `r2` is plausible from `r1`. The verdict is
/// `spike` when `r0` stands above `r1` and `negative_delta` when below; its baseline
/// is `r1`, the reading after it. Returns the readings left to judge.
fn first_baseline<'a>(
    mut w: &'a [RawReading],
    limits: Limits,
    span: usize,
    judged: &mut Vec<Judgement>,
) -> &'a [RawReading] {
    loop {
        let Some(&r0) = w.first() else { return w };
        let Some((i1, r1)) = next_distinct(w, 0) else {
            return w;
        };
        let Some((_, r2)) = next_distinct(w, i1) else {
            return w;
        };
        let contradicted = limits
            .rise(r0.e_wh, r1.e_wh, r1.ts.saturating_sub(r0.ts))
            .is_err()
            && limits
                .rise(r0.e_wh, r2.e_wh, r2.ts.saturating_sub(r0.ts))
                .is_err()
            && limits
                .rise(r1.e_wh, r2.e_wh, r2.ts.saturating_sub(r1.ts))
                .is_ok();
        if !contradicted {
            return w;
        }
        let verdict = if r0.e_wh > r1.e_wh {
            Verdict::Spike
        } else {
            Verdict::NegativeDelta
        };
        judged.push(Judgement {
            span,
            reading: r0,
            verdict,
            baseline: (r1.ts, r1.e_wh),
        });
        w = w.get(i1..).unwrap_or(&[]);
    }
}

pub(crate) fn saturating_add(a: i64, rise: i128) -> i64 {
    i64::try_from(i128::from(a) + rise).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_power_w: 30_000,
        modulus_wh: 1_000_000_000,
    };

    fn r(ts: i64, e: i64) -> RawReading {
        RawReading {
            ts,
            e_wh: e,
            e_valley_wh: None,
        }
    }

    fn run(readings: &[RawReading]) -> (Vec<UsedReading>, Vec<Judgement>) {
        let mut buf = Vec::new();
        let s = sorted(readings, &mut buf);
        let (mut acc, mut judged) = (Vec::new(), Vec::new());
        judge(s, i64::MIN, None, LIMITS, 0, None, &mut acc, &mut judged);
        (acc, judged)
    }

    #[test]
    fn plausibility_is_max_power_times_time_plus_one_register_step() {
        // 30 kW for 120 s = 1000 Wh, plus 10 Wh of resolution.
        assert!(LIMITS.plausible(1010, 120));
        assert!(!LIMITS.plausible(1011, 120));
        // Two reads one second apart: 8.33 Wh + 10 Wh.
        assert!(LIMITS.plausible(10, 1));
        assert!(LIMITS.plausible(18, 1));
        assert!(!LIMITS.plausible(19, 1));
    }

    #[test]
    fn the_fast_path_agrees_with_the_exact_rule() {
        for (base, e, dt) in [
            (0, 1010, 120),
            (0, 1011, 120),
            (5, i64::MAX, 1),
            (i64::MAX - 5, i64::MAX, 0),
            (100, 0, 60),
        ] {
            let fast = LIMITS.rise(base, e, dt);
            let exact = if e >= base {
                let r = i128::from(e) - i128::from(base);
                if LIMITS.plausible(r, dt) {
                    Ok((r, false))
                } else {
                    Err(Verdict::Spike)
                }
            } else {
                Err(Verdict::NegativeDelta)
            };
            assert_eq!(fast, exact, "{base} {e} {dt}");
        }
    }

    #[test]
    fn a_spike_is_rejected_and_does_not_move_the_baseline() {
        let (acc, judged) = run(&[r(0, 1000), r(60, 50_000), r(120, 1500), r(180, 1900)]);
        assert_eq!(
            acc.iter()
                .map(|a| (a.ts, a.unwrapped_wh))
                .collect::<Vec<_>>(),
            [(0, 1000), (120, 1500), (180, 1900)]
        );
        assert_eq!(judged.len(), 1);
        assert_eq!(judged[0].verdict, Verdict::Spike);
        assert_eq!(judged[0].baseline, (0, 1000));
    }

    #[test]
    fn a_plausible_drop_is_a_wrap_and_an_implausible_one_is_rejected() {
        let m = LIMITS.modulus_wh;
        // 999,999.99 kWh then 0.50 kWh 60 s later: 510 Wh in a minute, a wrap.
        let (acc, judged) = run(&[r(0, m - 10), r(60, 500), r(120, 900)]);
        assert_eq!(
            acc.iter().map(|a| a.unwrapped_wh).collect::<Vec<_>>(),
            [m - 10, m + 500, m + 900]
        );
        assert_eq!(
            judged.iter().map(|j| j.verdict).collect::<Vec<_>>(),
            [Verdict::Wrap]
        );
        // A glitch of 0 on a meter at 500,000 kWh.
        let (acc, judged) = run(&[r(0, 500_000_000), r(60, 0), r(120, 500_000_400)]);
        assert_eq!(
            acc.iter().map(|a| a.unwrapped_wh).collect::<Vec<_>>(),
            [500_000_000, 500_000_400]
        );
        assert_eq!(
            judged.iter().map(|j| j.verdict).collect::<Vec<_>>(),
            [Verdict::NegativeDelta]
        );
    }

    #[test]
    fn repeats_and_order_do_not_matter_and_the_span_limits_the_readings() {
        let a = [
            r(300, 3000),
            r(0, 1000),
            r(300, 3000),
            r(120, 2000),
            r(0, 1000),
        ];
        let b = [r(0, 1000), r(120, 2000), r(300, 3000)];
        assert_eq!(run(&a), run(&b));
        let (mut acc, mut judged) = (Vec::new(), Vec::new());
        judge(&b, 1, Some(120), LIMITS, 7, None, &mut acc, &mut judged);
        assert_eq!(acc.iter().map(|a| a.ts).collect::<Vec<_>>(), [120]);
    }

    #[test]
    fn a_glitch_as_the_first_reading_does_not_poison_the_span() {
        let (acc, judged) = run(&[
            r(0, 0),
            r(60, 500_000_000),
            r(120, 500_000_400),
            r(180, 500_000_900),
        ]);
        assert_eq!(acc.iter().map(|a| a.ts).collect::<Vec<_>>(), [60, 120, 180]);
        assert_eq!(judged.len(), 1);
        assert_eq!(
            (judged[0].verdict, judged[0].baseline),
            (Verdict::NegativeDelta, (60, 500_000_000))
        );
        // Too high a first reading is a spike.
        let (acc, judged) = run(&[r(0, 900_000), r(0, 900_000), r(60, 1000), r(120, 1400)]);
        assert_eq!(acc.iter().map(|a| a.ts).collect::<Vec<_>>(), [60, 120]);
        assert_eq!(judged[0].verdict, Verdict::Spike);
        // A glitch second reading is rejected by the ordinary rule instead.
        let (acc, judged) = run(&[r(0, 1000), r(60, 0), r(120, 1400)]);
        assert_eq!(acc.iter().map(|a| a.ts).collect::<Vec<_>>(), [0, 120]);
        assert_eq!(
            (judged[0].reading.ts, judged[0].verdict),
            (60, Verdict::NegativeDelta)
        );
        // With fewer than three readings, or no agreement after it, the first stands.
        assert_eq!(run(&[r(0, 0), r(60, 500_000_000)]).0.len(), 1);
        assert_eq!(
            run(&[r(0, 0), r(60, 500_000_000), r(120, 900_000_000)])
                .0
                .len(),
            1
        );
    }

    #[test]
    fn a_valley_glitch_drops_only_the_valley_value() {
        let v = |ts, e, ev| RawReading {
            ts,
            e_wh: e,
            e_valley_wh: Some(ev),
        };
        let (acc, judged) = run(&[v(0, 1000, 500), v(60, 1100, 0), v(120, 1200, 600)]);
        assert_eq!(acc.len(), 3);
        assert_eq!(
            acc.iter()
                .map(|a| a.valley_unwrapped_wh)
                .collect::<Vec<_>>(),
            [Some(500), None, Some(600)]
        );
        assert_eq!(
            judged.iter().map(|j| j.verdict).collect::<Vec<_>>(),
            [Verdict::ValleyNegativeDelta]
        );
    }

    proptest::proptest! {
        /// The one-sweep seeds are [`Seed::at`]'s, whether the instants increase or not,
        /// with valley values on some readings and a resumed valley baseline or none.
        #[test]
        fn seeds_each_agrees_with_seed_at(
            steps in proptest::collection::vec((1i64..5_000, proptest::option::of(0i64..1_000)), 0..40),
            at in proptest::collection::vec(0i64..120_000, 0..20),
            sort_at in proptest::bool::ANY,
            resumed_valley in proptest::option::of((0i64..10, 0i64..100)),
        ) {
            let mut ts = 0;
            let acc: Vec<UsedReading> = steps
                .iter()
                .enumerate()
                .map(|(k, &(dt, v))| {
                    ts += dt;
                    UsedReading {
                        ts,
                        e_wh: k as i64 * 10,
                        unwrapped_wh: k as i64 * 10,
                        e_valley_wh: v,
                        valley_unwrapped_wh: v.map(|v| v + 7),
                    }
                })
                .collect();
            let mut at = at;
            if sort_at {
                at.sort_unstable();
            }
            let resumed = acc.get(..2).and_then(|first| {
                Some(Seed {
                    latest: first.get(1)?.ts,
                    last: *first.first()?,
                    valley_base: resumed_valley.map(|(t, v)| (t, v, v)),
                })
            });
            let each = seeds_each(&acc, &at, resumed.as_ref());
            let one: Vec<_> = at.iter().map(|&t| Seed::at(&acc, t, resumed.as_ref())).collect();
            proptest::prop_assert_eq!(each, one);
        }
    }
}
