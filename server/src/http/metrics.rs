//! `GET /metrics` in the Prometheus text format (no auth, CONTRACT.md): ingest counters,
//! quarantine by reason, ingest lag, queue depths, alarms open, sink and feed counters.
//!
//! Written by hand (a dozen families do not need a registry crate); [`Exposition`] escapes
//! label values and writes each family's HELP and TYPE once.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::{ApiError, App, AppState};
use crate::monitor::{Monitor, MonitorConfig};
use crate::sink::SinkStats;

/// The `/metrics` route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = render(&s.0).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// Prometheus text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: `kind` is `counter` or `gauge`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: i64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: i64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The text so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn n(a: &AtomicU64) -> i64 {
    i64::try_from(a.load(Relaxed)).unwrap_or(i64::MAX)
}

fn g(a: &AtomicI64) -> i64 {
    a.load(Relaxed)
}

async fn render(app: &App) -> Result<String, ApiError> {
    let mut e = Exposition::default();
    let st = &app.stats;
    e.single(
        "qingnuan_ingest_messages_total",
        "counter",
        "MQTT messages committed and acknowledged.",
        n(&st.messages),
    );
    e.family("qingnuan_ingest_readings_total", "counter", "Readings by outcome: accepted (stored for the first time), repeat (same value already stored), conflict (another value already stored; first kept).");
    for (outcome, v) in [
        ("accepted", &st.new_readings),
        ("repeat", &st.repeats),
        ("conflict", &st.conflicts),
    ] {
        e.sample(
            "qingnuan_ingest_readings_total",
            &[("outcome", outcome)],
            n(v),
        );
    }
    e.single(
        "qingnuan_ingest_quarantined_total",
        "counter",
        "Quarantine rows written since start (messages or readings rejected).",
        n(&st.quarantined),
    );
    e.single(
        "qingnuan_ingest_commits_total",
        "counter",
        "Store transactions committed by ingest.",
        n(&st.commits),
    );
    e.single(
        "qingnuan_ingest_subscribed",
        "gauge",
        "1 while the broker has acknowledged the subscriptions.",
        i64::from(st.subscribed.load(Relaxed)),
    );
    e.single(
        "qingnuan_ingest_behind",
        "gauge",
        "1 while ingest is behind the broker (its last batch was full): recompute rests between rounds.",
        i64::from(st.backlog.is_behind()),
    );
    e.family(
        "qingnuan_broker_acl_denied_total",
        "counter",
        "Embedded broker: PUBLISH packets dropped and SUBSCRIBE filters refused by its ACL.",
    );
    for (what, v) in [
        ("publish", &crate::broker::DENIED_PUBLISHES),
        ("subscribe", &crate::broker::DENIED_SUBSCRIPTIONS),
    ] {
        e.sample("qingnuan_broker_acl_denied_total", &[("what", what)], n(v));
    }

    e.family(
        "qingnuan_recompute_pairs_total",
        "counter",
        "(household, season) pairs recomputed, resumed from their saved state (only the nights new readings can change) or whole.",
    );
    for (mode, v) in [
        ("resumed", &crate::recompute::RESUMED_PAIRS),
        ("whole", &crate::recompute::WHOLE_PAIRS),
    ] {
        e.sample("qingnuan_recompute_pairs_total", &[("mode", mode)], n(v));
    }
    e.family(
        "qingnuan_recompute_microseconds_total",
        "counter",
        "Time recompute rounds spent, by phase: read (dirty marks, registry, saved states, readings), compute, save (figures, states, statements).",
    );
    let rm = &crate::recompute::ROUND_MICROS;
    for (phase, v) in [
        ("read", &rm.read),
        ("compute", &rm.compute),
        ("save", &rm.save),
    ] {
        e.sample(
            "qingnuan_recompute_microseconds_total",
            &[("phase", phase)],
            n(v),
        );
    }
    e.family(
        "qingnuan_packed_readings_total",
        "counter",
        "Readings packed into reading packs (store/packs.rs: a closed 16-day chunk of a meter as one row, what recompute rounds read).",
    );
    e.sample(
        "qingnuan_packed_readings_total",
        &[],
        n(&crate::store::packs::PACKED_READINGS),
    );
    e.family(
        "qingnuan_pack_invalidations_total",
        "counter",
        "Meters whose reading packs a late reading fell into: the packs from its chunk on were dropped and are packed again.",
    );
    e.sample(
        "qingnuan_pack_invalidations_total",
        &[],
        n(&crate::store::packs::INVALIDATED_METERS),
    );

    e.family(
        "qingnuan_quarantine_rows",
        "gauge",
        "Quarantined messages and readings in the store, by reason (all time).",
    );
    for (reason, count) in app.store.quarantine_counts().await? {
        e.sample("qingnuan_quarantine_rows", &[("reason", &reason)], count);
    }

    e.single(
        "qingnuan_settled_before_seconds",
        "gauge",
        "The settled cut, UTC Unix seconds (0: nothing settled): readings before it were thinned to those the figures rest on, and later ones there are quarantined (docs/bounded-state.md).",
        app.store.settled_before().await?.unwrap_or(0),
    );

    e.family(
        "qingnuan_held_readings",
        "gauge",
        "Readings held back because the registry does not bind them (yet), by quarantine reason; a registry change that binds them admits them.",
    );
    for (reason, count) in app.store.held_counts().await? {
        e.sample("qingnuan_held_readings", &[("reason", &reason)], count);
    }
    e.single(
        "qingnuan_held_admitted_total",
        "counter",
        "Held readings admitted after a registry change, since start.",
        n(&st.held_admitted),
    );
    e.single(
        "qingnuan_held_dropped_total",
        "counter",
        "Held readings dropped over [ingest] held_max (the earliest received), since start.",
        n(&st.held_dropped),
    );

    let now = app.clock.now();
    let monitor = Monitor::new(app.store.clone(), app.policy, MonitorConfig::default());
    let snap = monitor.snapshot(now).await?;
    let cfg = monitor.config();
    // Ingest lag: how far the newest stored reading (gateway clock) and the newest batch
    // or status (server clock) are behind now. With meters read every few minutes the
    // first is normally below the read interval; growing, it means readings are not arriving.
    let newest_read = snap.meters.values().filter_map(|(_, m)| m.last_good).max();
    let last_heard = snap.gateways.values().filter_map(|g| g.last_seen).max();
    e.single(
        "qingnuan_ingest_newest_reading_age_seconds",
        "gauge",
        "Now minus the newest stored reading's ts (-1: none yet).",
        newest_read.map_or(-1, |t| now - t),
    );
    e.single(
        "qingnuan_ingest_last_heard_age_seconds",
        "gauge",
        "Now minus the last batch or status received from any gateway (-1: none yet).",
        last_heard.map_or(-1, |t| now - t),
    );
    e.single(
        "qingnuan_gateways",
        "gauge",
        "Gateways in the registry or heard from.",
        snap.gateways.len() as i64,
    );
    e.single(
        "qingnuan_gateways_online",
        "gauge",
        "Gateways counting as online now.",
        snap.gateways
            .values()
            .filter(|g| g.is_online(now, cfg))
            .count() as i64,
    );

    e.family("qingnuan_queue_depth", "gauge", "Work waiting: gateway_spool (records in the gateways' spools, as last reported), recompute ((household, season) pairs marked dirty), sink_readings and sink_seasons (not yet written to InfluxDB).");
    let spool: u64 = snap.gateways.values().filter_map(|g| g.spool_records).sum();
    e.sample(
        "qingnuan_queue_depth",
        &[("queue", "gateway_spool")],
        i64::try_from(spool).unwrap_or(i64::MAX),
    );
    e.sample(
        "qingnuan_queue_depth",
        &[("queue", "recompute")],
        app.store.dirty_count().await?,
    );
    if let Some(s) = &app.sink {
        e.sample(
            "qingnuan_queue_depth",
            &[("queue", "sink_readings")],
            g(&s.backlog_readings),
        );
        e.sample(
            "qingnuan_queue_depth",
            &[("queue", "sink_seasons")],
            g(&s.backlog_seasons),
        );
    }

    e.family("qingnuan_alarms_open", "gauge", "Open alarms by rule.");
    for (kind, count) in app.store.open_alarms_by_kind().await? {
        e.sample("qingnuan_alarms_open", &[("rule", &kind)], count);
    }

    if let Some(s) = &app.sink {
        sink(&mut e, s);
    }
    let mut out = e.finish();
    if let Some(f) = &app.feed {
        out.push_str(&f.prometheus());
    }
    Ok(out)
}

fn sink(e: &mut Exposition, s: &SinkStats) {
    e.family(
        "qingnuan_sink_points_written_total",
        "counter",
        "Points written to InfluxDB, by measurement.",
    );
    for (m, v) in [
        (crate::sink::schema::READING, &s.readings_written),
        (crate::sink::schema::NIGHT, &s.nights_written),
        (crate::sink::schema::VILLAGE, &s.village_points_written),
    ] {
        e.sample(
            "qingnuan_sink_points_written_total",
            &[("measurement", m)],
            n(v),
        );
    }
    e.single(
        "qingnuan_sink_active",
        "gauge",
        "1 while this replica holds the sink's lease and exports (one replica at a time on PostgreSQL).",
        i64::from(s.active.load(std::sync::atomic::Ordering::Relaxed)),
    );
    e.single(
        "qingnuan_sink_writes_total",
        "counter",
        "Successful writes to InfluxDB.",
        n(&s.writes),
    );
    e.family(
        "qingnuan_sink_errors_total",
        "counter",
        "Sink failures: write (InfluxDB unreachable, refused or slow; each retry counts), store.",
    );
    e.sample(
        "qingnuan_sink_errors_total",
        &[("kind", "write")],
        n(&s.write_errors),
    );
    e.sample(
        "qingnuan_sink_errors_total",
        &[("kind", "store")],
        n(&s.store_errors),
    );
    e.family("qingnuan_sink_dropped_total", "counter", "Points never written (backlog over its bound, or refused as malformed), all time; the store still has them.");
    e.sample(
        "qingnuan_sink_dropped_total",
        &[("measurement", crate::sink::schema::READING)],
        n(&s.readings_dropped),
    );
    e.sample(
        "qingnuan_sink_dropped_total",
        &[("measurement", crate::sink::schema::NIGHT)],
        n(&s.nights_dropped),
    );
    e.single(
        "qingnuan_sink_up",
        "gauge",
        "1 when the last write to InfluxDB succeeded.",
        i64::from(s.up.load(Relaxed)),
    );
    e.single(
        "qingnuan_sink_last_write_timestamp_seconds",
        "gauge",
        "Last successful write, UTC Unix seconds (0: none yet).",
        g(&s.last_write),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "X.").sample(
            "x_total",
            &[("reason", "a\"b\\c\nd"), ("k", "v")],
            3,
        );
        e.single("y", "gauge", "Y.", -1);
        assert_eq!(
            e.finish(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{reason=\"a\\\"b\\\\c\\nd\",k=\"v\"} 3\n\
             # HELP y Y.\n# TYPE y gauge\ny -1\n"
        );
    }
}
