//! Plain-text explanations of engine figures for finance and operators: a night with
//! its parts, boundary values and the readings used, and the judged readings.

use core::fmt::Write;

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::units::Wh;
use qingnuan_shared::UnixTime;

use super::model::{
    BoundaryValue, EdgeKind, HouseholdInput, HouseholdSeason, Judgement, NightFigure, UsedReading,
};

/// Local `YYYY-MM-DD HH:MM:SS` of a UTC instant under the calendar's policy.
pub fn local_time(calendar: &Calendar, t: UnixTime) -> String {
    let secs = t
        .saturating_add(i64::from(calendar.policy().utc_offset_s))
        .rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}",
        Night(calendar.local_date(t)),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn meter_of(household: &HouseholdInput, span: usize) -> &str {
    household.meters.get(span).map_or("?", |m| m.meter.as_str())
}

fn reading(calendar: &Calendar, r: &UsedReading) -> String {
    let wrapped = if r.unwrapped_wh == r.e_wh {
        String::new()
    } else {
        format!(" (read {} Wh)", r.e_wh)
    };
    format!(
        "{} {} Wh{wrapped}",
        local_time(calendar, r.ts),
        r.unwrapped_wh
    )
}

fn boundary(calendar: &Calendar, label: &str, b: &BoundaryValue) -> String {
    let kind = match b.kind {
        EdgeKind::Open => "open",
        EdgeKind::Close => "close",
        EdgeKind::Install => "install",
        EdgeKind::Removal => "removal",
    };
    let head = format!("    {label} {} ({kind}): ", local_time(calendar, b.t));
    let how = match (b.e_wh, b.kind, b.r1, b.r2) {
        (None, ..) => {
            let seen: Vec<_> = [b.r1, b.r2].iter().flatten().map(|r| reading(calendar, r)).collect();
            format!("no value, missing (readings around it: {})", if seen.is_empty() { "none".into() } else { seen.join(", ") })
        }
        (Some(e), EdgeKind::Install, _, Some(r)) | (Some(e), EdgeKind::Removal, Some(r), _) => {
            format!("E = {} Wh, nearest reading inside the validity {}", e.0, reading(calendar, &r))
        }
        (Some(e), _, Some(r1), Some(r2)) if r1.ts == r2.ts => {
            format!("E = {} Wh, read at the boundary {}", e.0, reading(calendar, &r1))
        }
        (Some(e), _, Some(r1), Some(r2)) => format!(
            "E = E1 + (E2 - E1)(b - t1)/(t2 - t1) = {} + ({} - {})·{}/{} = {} Wh (rounded half up), r1 {}, r2 {}",
            r1.unwrapped_wh,
            r2.unwrapped_wh,
            r1.unwrapped_wh,
            b.t.saturating_sub(r1.ts),
            r2.ts.saturating_sub(r1.ts),
            e.0,
            reading(calendar, &r1),
            reading(calendar, &r2)
        ),
        (Some(e), ..) => format!("E = {} Wh", e.0),
    };
    let valley = b
        .valley_wh
        .map_or(String::new(), |v| format!("; valley register {} Wh", v.0));
    format!("{head}{how}{valley} [{}]", b.quality.as_str())
}

fn kwh(w: Option<Wh>) -> String {
    w.map_or_else(|| "-".into(), |w| format!("{} kWh", w.kwh_string()))
}

/// A night of `out` in words: the figure, then each part with its two boundary values
/// and the readings they came from.
pub fn explain_night(
    calendar: &Calendar,
    household: &HouseholdInput,
    out: &HouseholdSeason,
    night: &NightFigure,
) -> String {
    let mut s = String::new();
    let flags: Vec<_> = night.flags.names().collect();
    let _ = writeln!(
        s,
        "night {} [{} .. {}): {} kWh, {}{}; total register {}, valley register {}; subsidised {} kWh, season so far {} kWh",
        night.night,
        local_time(calendar, night.span.0),
        local_time(calendar, night.span.1),
        night.wh.kwh_string(),
        night.quality.as_str(),
        if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) },
        kwh(night.total_wh),
        kwh(night.valley_wh),
        night.subsidised_wh.kwh_string(),
        night.cumulative_wh.kwh_string(),
    );
    for p in out.parts_of(night) {
        let _ = writeln!(
            s,
            "  meter {} [{} .. {}): {}",
            meter_of(household, p.span),
            local_time(calendar, p.start.t),
            local_time(calendar, p.end.t),
            kwh(p.wh)
        );
        let _ = writeln!(s, "{}", boundary(calendar, "start", &p.start));
        let _ = writeln!(s, "{}", boundary(calendar, "end", &p.end));
    }
    s
}

/// A judged reading in words: `meter 1234 2025-12-05 23:00:00 0 Wh: negative_delta
/// against 2025-12-05 20:00:00 512345670 Wh`.
pub fn explain_judgement(calendar: &Calendar, household: &HouseholdInput, j: &Judgement) -> String {
    format!(
        "meter {} {} {} Wh: {} against {} {} Wh",
        meter_of(household, j.span),
        local_time(calendar, j.reading.ts),
        j.reading.e_wh,
        j.verdict.as_str(),
        local_time(calendar, j.baseline.0),
        j.baseline.1
    )
}
