//! The register value `E(b)` at a boundary and its quality (DESIGN "Register value at
//! a boundary"): exact interpolation between the accepted readings around `b`, rounded
//! half up to the Wh; nearest reading inside the validity at install/removal instants.

use qingnuan_shared::policy::Rules;
use qingnuan_shared::units::{div_round_half_up, Wh};
use qingnuan_shared::UnixTime;

use super::model::{BoundaryValue, EdgeKind, Quality, UsedReading};

/// The value at `b` from `acc` (accepted readings of one meter span, strictly
/// increasing `ts`, all inside the validity).
///
/// - [`EdgeKind::Open`] / [`EdgeKind::Close`]: `r1` = latest with `t1 <= b`, `r2` =
///   earliest with `t2 >= b`; `missing` if either is absent or `t2 - t1 > max_gap_s`;
///   `actual` if `min(b - t1, t2 - b) <= actual_within_s`; `estimated` otherwise.
/// - [`EdgeKind::Install`] / [`EdgeKind::Removal`]: nothing lies on the other side, so
///   the nearest reading is taken as is (no extrapolation); its distance to `b` decides
///   the quality by the same thresholds.
///
/// `hint` is the index a previous call for an earlier boundary returned in it (0 to
/// start): the search gallops forward from there, so a night-ordered sweep over a
/// span is one linear pass. Any hint gives the same result.
pub(crate) fn value_at(
    acc: &[UsedReading],
    b: UnixTime,
    kind: EdgeKind,
    rules: &Rules,
    hint: &mut usize,
) -> BoundaryValue {
    let idx = upper_bound_from(acc, *hint, b);
    *hint = idx;
    let r1 = idx.checked_sub(1).and_then(|i| acc.get(i)).copied();
    let r2 = match r1 {
        Some(r) if r.ts == b => Some(r),
        _ => acc.get(idx).copied(),
    };
    let mut out = BoundaryValue {
        t: b,
        kind,
        e_wh: None,
        valley_wh: None,
        quality: Quality::Missing,
        r1,
        r2,
    };
    match kind {
        EdgeKind::Open | EdgeKind::Close => {
            let (Some(a), Some(c)) = (r1, r2) else {
                return out;
            };
            if c.ts.saturating_sub(a.ts) > rules.max_gap_s {
                return out;
            }
            out.quality = quality(b.saturating_sub(a.ts).min(c.ts.saturating_sub(b)), rules);
            out.e_wh = Some(Wh(interpolate(
                a.ts,
                a.unwrapped_wh,
                c.ts,
                c.unwrapped_wh,
                b,
            )));
            out.valley_wh = match (a.valley_unwrapped_wh, c.valley_unwrapped_wh) {
                (Some(va), Some(vc)) => Some(Wh(interpolate(a.ts, va, c.ts, vc, b))),
                _ => None,
            };
        }
        EdgeKind::Install | EdgeKind::Removal => {
            let nearest = if kind == EdgeKind::Install { r2 } else { r1 };
            let Some(n) = nearest else { return out };
            let distance = n.ts.saturating_sub(b).saturating_abs();
            if distance > rules.max_gap_s {
                return out;
            }
            out.quality = quality(distance, rules);
            out.e_wh = Some(Wh(n.unwrapped_wh));
            out.valley_wh = n.valley_unwrapped_wh.map(Wh);
        }
    }
    out
}

/// The first index whose `ts > b`, galloping forward from `hint`.
fn upper_bound_from(acc: &[UsedReading], hint: usize, b: UnixTime) -> usize {
    let mut lo = hint.min(acc.len());
    if lo > 0 && acc.get(lo - 1).is_some_and(|r| r.ts > b) {
        return acc.partition_point(|r| r.ts <= b);
    }
    // Invariant: every reading before `lo` has `ts <= b`.
    let mut step = 1usize;
    loop {
        let probe = lo.saturating_add(step - 1);
        match acc.get(probe) {
            Some(r) if r.ts <= b => {
                lo = probe + 1;
                step = step.saturating_mul(2);
            }
            Some(_) => {
                return lo
                    + acc
                        .get(lo..probe)
                        .map_or(0, |s| s.partition_point(|r| r.ts <= b))
            }
            None => {
                return lo
                    + acc
                        .get(lo..)
                        .map_or(0, |s| s.partition_point(|r| r.ts <= b))
            }
        }
    }
}

fn quality(distance_s: i64, rules: &Rules) -> Quality {
    if distance_s <= rules.actual_within_s {
        Quality::Actual
    } else {
        Quality::Estimated
    }
}

/// `e1 + (e2 - e1) * (b - t1) / (t2 - t1)`, exact, rounded half up to the Wh; `e1`
/// when `t1 == b` (or `t1 == t2`).
pub(crate) fn interpolate(t1: UnixTime, e1: i64, t2: UnixTime, e2: i64, b: UnixTime) -> i64 {
    if t1 == b || t2 <= t1 {
        return e1;
    }
    // Fast path in i64 (a night's rise times a gap of hours fits easily); the same
    // floor((2a + d) / 2d) half-up rule as `div_round_half_up`, exact either way.
    let small = e2
        .checked_sub(e1)
        .and_then(|de| de.checked_mul(b.checked_sub(t1)?))
        .and_then(|num| {
            let d = t2.checked_sub(t1)?;
            let q = num
                .checked_mul(2)?
                .checked_add(d)?
                .div_euclid(d.checked_mul(2)?);
            e1.checked_add(q)
        });
    if let Some(v) = small {
        return v;
    }
    let num = (i128::from(e2) - i128::from(e1)) * (i128::from(b) - i128::from(t1));
    let v = i128::from(e1) + div_round_half_up(num, i128::from(t2) - i128::from(t1));
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(points: &[(i64, i64)]) -> Vec<UsedReading> {
        points
            .iter()
            .map(|&(ts, e)| UsedReading {
                ts,
                e_wh: e,
                unwrapped_wh: e,
                e_valley_wh: None,
                valley_unwrapped_wh: None,
            })
            .collect()
    }

    fn value_at(acc: &[UsedReading], b: UnixTime, kind: EdgeKind, rules: &Rules) -> BoundaryValue {
        let v = super::value_at(acc, b, kind, rules, &mut 0);
        // Every hint gives the same answer.
        for hint in 0..=acc.len() + 1 {
            assert_eq!(super::value_at(acc, b, kind, rules, &mut { hint }), v);
        }
        v
    }

    #[test]
    fn galloping_finds_the_upper_bound_from_any_hint() {
        let a = acc(&(0..50).map(|i| (i * 10, i)).collect::<Vec<_>>());
        for b in -5..510 {
            let expect = a.partition_point(|r| r.ts <= b);
            for hint in 0..=52 {
                assert_eq!(upper_bound_from(&a, hint, b), expect, "b {b} hint {hint}");
            }
        }
    }

    #[test]
    fn interpolation_is_exact_and_rounds_half_up() {
        assert_eq!(interpolate(0, 1000, 900, 1300, 450), 1150);
        // 1000 + 10 * 1/4 = 1002.5 -> 1003
        assert_eq!(interpolate(0, 1000, 4, 1010, 1), 1003);
        // 1000 + 10 * 1/3 = 1003.33 -> 1003; 2/3 -> 1006.67 -> 1007
        assert_eq!(interpolate(0, 1000, 3, 1010, 1), 1003);
        assert_eq!(interpolate(0, 1000, 3, 1010, 2), 1007);
        assert_eq!(interpolate(5, 1000, 9, 2000, 5), 1000);
        // The i128 path (products beyond i64) agrees with the same rule.
        let big = i64::MAX / 4;
        assert_eq!(interpolate(0, 0, 4, big, 3), 3 * (big / 4) + 2); // big = 4k + 3: 3k + 2.25 -> 3k + 2
        assert_eq!(interpolate(0, 0, 2, 3, 1), 2); // 1.5 -> 2
    }

    #[test]
    fn quality_by_distance_and_gap() {
        let r = Rules::DEFAULT;
        let a = acc(&[(0, 1000), (1000, 2000)]);
        let v = value_at(&a, 120, EdgeKind::Open, &r);
        assert_eq!((v.quality, v.e_wh), (Quality::Actual, Some(Wh(1120))));
        let v = value_at(&a, 500, EdgeKind::Close, &r);
        assert_eq!((v.quality, v.e_wh), (Quality::Estimated, Some(Wh(1500))));
        let v = value_at(&a, 1000, EdgeKind::Close, &r);
        assert_eq!(
            (v.quality, v.e_wh, v.r1.map(|x| x.ts)),
            (Quality::Actual, Some(Wh(2000)), Some(1000))
        );
        assert_eq!(
            value_at(&a, 1001, EdgeKind::Close, &r).quality,
            Quality::Missing
        );
        assert_eq!(
            value_at(&a, -1, EdgeKind::Open, &r).quality,
            Quality::Missing
        );
        let far = acc(&[(0, 1000), (r.max_gap_s + 1, 2000)]);
        assert_eq!(
            value_at(&far, 60, EdgeKind::Open, &r).quality,
            Quality::Missing
        );
        let edge = acc(&[(0, 1000), (r.max_gap_s, 2000)]);
        assert_eq!(
            value_at(&edge, 60, EdgeKind::Open, &r).quality,
            Quality::Actual
        );
    }

    #[test]
    fn install_and_removal_take_the_nearest_reading_inside() {
        let r = Rules::DEFAULT;
        let a = acc(&[(300, 1000), (900, 1600)]);
        let v = value_at(&a, 0, EdgeKind::Install, &r);
        assert_eq!((v.quality, v.e_wh), (Quality::Estimated, Some(Wh(1000))));
        let v = value_at(&a, 1000, EdgeKind::Removal, &r);
        assert_eq!((v.quality, v.e_wh), (Quality::Actual, Some(Wh(1600))));
        assert_eq!(
            value_at(&[], 0, EdgeKind::Install, &r).quality,
            Quality::Missing
        );
    }
}
