//! The alarm rules, each a pure function of one subject's state (and `now`, the
//! calendar, the thresholds) that decides open or clear for its dedup key; `None` when
//! the rule cannot tell yet (no data), which leaves an open alarm as it is.

use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::units::Wh;

use super::alarm::{key, AlarmKind, Decision, Finding, Subject};
use super::{GatewayState, MeterState, MonitorConfig};

/// A closed night of a household as the rules need it (from the stored nights).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NightFact {
    /// `YYYY-MM-DD`.
    pub night: String,
    /// The paid figure, Wh.
    pub wh: i64,
    /// `actual`, `estimated` or `missing`.
    pub quality: String,
    /// Night flags (`tou_mismatch`, `rejected_reading`, …).
    pub flags: Vec<String>,
    /// Readings the engine set aside inside the night's span.
    pub rejected: Vec<Rejected>,
}

/// A reading the engine set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Meter id.
    pub meter: String,
    /// Read at, UTC Unix seconds.
    pub ts: i64,
    /// `spike`, `negative_delta`, `valley_spike`, … (wraps are not rejections).
    pub verdict: String,
}

fn open(kind: AlarmKind, key: String, subject: &Subject, reason: String) -> Decision {
    Decision::Open(Finding {
        key,
        kind,
        subject: subject.clone(),
        reason,
    })
}

/// Local `YYYY-MM-DD HH:MM` of an instant.
pub fn local_time(cal: &Calendar, t: i64) -> String {
    let d = cal.local_date(t);
    let secs = t.saturating_sub(cal.local_midnight(d));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        d.year(),
        u8::from(d.month()),
        d.day(),
        secs / 3600,
        secs % 3600 / 60
    )
}

/// `gateway_offline`: offline for more than `gateway_offline_s` counted inside tonight's
/// off-peak span. Cleared when the gateway is online again; outside the window an open
/// alarm stays until then. A gateway never heard from decides nothing (not deployed yet).
pub fn gateway_offline(
    id: &str,
    subject: &Subject,
    g: &GatewayState,
    now: i64,
    cal: &Calendar,
    cfg: &MonitorConfig,
) -> Option<Decision> {
    let k = key(AlarmKind::GatewayOffline, id, None);
    g.online?;
    let Some(since) = g.offline_since(now, cfg) else {
        return Some(Decision::Clear(k));
    };
    let (open_at, _) = cal.night_of(now).and_then(|n| cal.night_span(n))?;
    let inside = now.saturating_sub(since.max(open_at));
    (inside > cfg.gateway_offline_s).then(|| {
        let how = if g.online == Some(false) {
            "last will / stopped"
        } else {
            "silent"
        };
        open(
            AlarmKind::GatewayOffline,
            k,
            subject,
            format!(
                "gateway {id} offline ({how}) since {}, {} min inside the off-peak window",
                if since == i64::MIN {
                    "?".to_string()
                } else {
                    local_time(cal, since)
                },
                inside / 60
            ),
        )
    })
}

/// `gateway_clock`: the latest batch's `sent` is more than the tolerance away from the
/// server's receive time.
pub fn gateway_clock(
    id: &str,
    subject: &Subject,
    g: &GatewayState,
    cfg: &MonitorConfig,
) -> Option<Decision> {
    let off = g.clock_offset_s?;
    let k = key(AlarmKind::GatewayClock, id, None);
    Some(if off.abs() > cfg.gateway_clock_tolerance_s {
        let dir = if off > 0 { "ahead of" } else { "behind" };
        let reason = format!(
            "gateway {id} clock {} s {dir} the server (batch sent vs received)",
            off.abs()
        );
        open(AlarmKind::GatewayClock, k, subject, reason)
    } else {
        Decision::Clear(k)
    })
}

/// How long a `spoofed_reading` alarm stays open after the last spoofed reading, seconds.
pub const SPOOFED_ALARM_S: i64 = 24 * 3600;

/// `spoofed_reading`: the gateway sent readings for a meter registered on another
/// gateway within the last [`SPOOFED_ALARM_S`]; cleared a day after the last one.
pub fn spoofed_reading(
    id: &str,
    subject: &Subject,
    g: &GatewayState,
    now: i64,
    cal: &Calendar,
) -> Option<Decision> {
    let last = g.spoofed_last?;
    let k = key(AlarmKind::SpoofedReading, id, None);
    Some(if now.saturating_sub(last) <= SPOOFED_ALARM_S {
        let meter = g.spoofed_meter.as_deref().unwrap_or("?");
        let reason = format!(
            "gateway {id} sent {} reading(s) for meters registered on other gateways \
             (latest: meter {meter} at {}); quarantined, not counted",
            g.spoofed,
            local_time(cal, last)
        );
        open(AlarmKind::SpoofedReading, k, subject, reason)
    } else {
        Decision::Clear(k)
    })
}

/// `meter_silent`: the last `meter_silent_reads` reads failed with no good read since.
pub fn meter_silent(
    id: &str,
    subject: &Subject,
    m: &MeterState,
    cal: &Calendar,
    cfg: &MonitorConfig,
) -> Decision {
    let k = key(AlarmKind::MeterSilent, id, None);
    if m.consecutive_failures < cfg.meter_silent_reads.max(1) {
        return Decision::Clear(k);
    }
    let kinds: Vec<String> = m.errors.iter().map(|(e, n)| format!("{e}×{n}")).collect();
    let since = m.last_good.map_or_else(
        || "never read".to_string(),
        |t| format!("last good read {}", local_time(cal, t)),
    );
    let reason = format!(
        "meter {id}: {} failed reads in a row ({since}); last error {}; errors {}",
        m.consecutive_failures,
        m.last_error.as_deref().unwrap_or("?"),
        kinds.join(", ")
    );
    open(AlarmKind::MeterSilent, k, subject, reason)
}

/// `meter_clock`: the meter's own clock (`meter_ts`) is more than the tolerance away
/// from the gateway's read time (`ts`) on its latest reading that carried it.
pub fn meter_clock(
    id: &str,
    subject: &Subject,
    m: &MeterState,
    cfg: &MonitorConfig,
) -> Option<Decision> {
    let off = m.clock_offset_s?;
    let k = key(AlarmKind::MeterClock, id, None);
    Some(if off.abs() > cfg.meter_clock_tolerance_s {
        let dir = if off > 0 { "ahead of" } else { "behind" };
        let reason = format!(
            "meter {id} clock {} s {dir} the gateway (meter_ts vs ts)",
            off.abs()
        );
        open(AlarmKind::MeterClock, k, subject, reason)
    } else {
        Decision::Clear(k)
    })
}

/// `no_consumption`: the last `no_consumption_nights` closed nights of the season all
/// have data (not `missing`) and at most `no_consumption_max_wh` each. `nights` are the
/// household's closed nights of `season` in order.
pub fn no_consumption(
    household: &str,
    subject: &Subject,
    season: &str,
    nights: &[NightFact],
    cfg: &MonitorConfig,
) -> Option<Decision> {
    let n = cfg.no_consumption_nights.max(1);
    let k = key(AlarmKind::NoConsumption, household, Some(season));
    let last = nights.get(nights.len().checked_sub(n)?..)?;
    let quiet = last
        .iter()
        .all(|f| f.quality != "missing" && f.wh <= cfg.no_consumption_max_wh);
    Some(if quiet {
        let list: Vec<String> = last
            .iter()
            .map(|f| format!("{} {} kWh", f.night, Wh(f.wh).kwh_string()))
            .collect();
        let reason = format!(
            "household {household}: no off-peak consumption for {n} nights ({}): heat pump off or back to coal?",
            list.join(", ")
        );
        open(AlarmKind::NoConsumption, k, subject, reason)
    } else {
        Decision::Clear(k)
    })
}

/// `cap_near`: the season's off-peak energy has reached `cap_alarm_permille` of the cap.
pub fn cap_near(
    household: &str,
    subject: &Subject,
    season: &str,
    offpeak_wh: i64,
    cap_wh: i64,
    cfg: &MonitorConfig,
) -> Option<Decision> {
    if cap_wh <= 0 {
        return None;
    }
    let k = key(AlarmKind::CapNear, household, Some(season));
    let permille = i128::from(offpeak_wh) * 1000 / i128::from(cap_wh);
    Some(if permille >= i128::from(cfg.cap_alarm_permille) {
        let reason = format!(
            "household {household}: {} kWh off-peak in {season}, {}.{} % of the {} kWh cap",
            Wh(offpeak_wh).kwh_string(),
            permille / 10,
            permille % 10,
            Wh(cap_wh).kwh_string()
        );
        open(AlarmKind::CapNear, k, subject, reason)
    } else {
        Decision::Clear(k)
    })
}

/// `tou_mismatch`: the latest closed night is flagged `tou_mismatch` (the meter's own
/// valley register disagrees with the policy's window); cleared by a night that is not.
pub fn tou_mismatch(household: &str, subject: &Subject, nights: &[NightFact]) -> Option<Decision> {
    let latest = nights.last()?;
    let k = key(AlarmKind::TouMismatch, household, None);
    let flagged = |f: &NightFact| f.flags.iter().any(|x| x == "tou_mismatch");
    Some(if flagged(latest) {
        let count = nights.iter().filter(|f| flagged(f)).count();
        let reason = format!(
            "household {household}: night {} valley register differs from the total register in the window \
             by more than the tolerance ({count} of the last {} nights); check the meter's time-of-use table",
            latest.night,
            nights.len()
        );
        open(AlarmKind::TouMismatch, k, subject, reason)
    } else {
        Decision::Clear(k)
    })
}

/// `readings_rejected`: the engine set readings aside (spike, negative delta) inside the
/// latest closed night; cleared by a night without.
pub fn readings_rejected(
    household: &str,
    subject: &Subject,
    nights: &[NightFact],
    cal: &Calendar,
) -> Option<Decision> {
    let latest = nights.last()?;
    let k = key(AlarmKind::ReadingsRejected, household, None);
    let bad: Vec<String> = latest
        .rejected
        .iter()
        .filter(|r| !r.verdict.contains("wrap"))
        .map(|r| {
            format!(
                "meter {} {} at {}",
                r.meter,
                r.verdict,
                local_time(cal, r.ts)
            )
        })
        .collect();
    Some(if bad.is_empty() {
        Decision::Clear(k)
    } else {
        let reason = format!(
            "household {household}: night {}: {} reading(s) rejected: {}",
            latest.night,
            bad.len(),
            bad.join("; ")
        );
        open(AlarmKind::ReadingsRejected, k, subject, reason)
    })
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
