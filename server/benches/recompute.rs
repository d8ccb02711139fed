//! Recompute benchmark: a whole heating season (152 nights, a read at every 20:00 and
//! 08:00) for N households from the stored state, seconds and peak memory per size: cold
//! (151 nights, nothing computed yet) and at a night close (every household dirty, one new night).
//!
//! `cargo bench -p qingnuan-server --bench recompute` (env `BENCH_SIZES`, default
//! `10000,30000,100000`). The store is filled with SQL straight into the migrated schema
//! (through ingest it would take longer than the measurement); the figures are then
//! checked against the closed form of the synthetic registers, so a fast wrong answer fails.
//! `BENCH_STORE=postgres`: the same on a PostgreSQL server the bench starts (fsync on).
//! The readings of closed chunks are packed first, as the running server does while the
//! season goes on (store/packs.rs; timed apart); `BENCH_PACK=0` skips that.

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::time::Instant;

use qingnuan_server::engine::Engine;
use qingnuan_server::recompute;
use qingnuan_server::store::{packs, Store};
use qingnuan_shared::policy::Policy;
use qingnuan_shared::units::div_round_half_up;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

/// 2025-10-31 20:00 +08:00, the first night of the 2025-2026 season opens.
const FIRST_OPEN: i64 = 1_761_912_000;
/// Nights in the 2025-2026 season (Oct 31 … Mar 31).
const NIGHTS: i64 = 152;
/// 2025-10-01 00:00 +08:00, when every meter was installed.
const INSTALLED: i64 = 1_759_248_000;
/// 2026-03-31 12:00 +08:00: every night but the last (Mar 31) has closed.
const LAST_OPEN: i64 = FIRST_OPEN + (NIGHTS - 1) * 86_400 - 8 * 3600;
/// 2026-04-02 12:00 +08:00: the season is over and every night closed.
const NOW: i64 = 1_775_102_400;

/// Wh household `h` draws over night `n`'s whole window, as the synthetic registers make it.
fn night_wh(h: i64, n: i64) -> i64 {
    20_000 + (h * 11 + n * 3) % 10_000
}

/// Off-peak Wh of night `n` in the season: the first night counts from Nov 1 00:00 and the
/// last up to Apr 1 00:00 (4 of its 12 hours), at the register interpolated half up.
fn season_night_wh(h: i64, n: i64) -> i64 {
    let wh = night_wh(h, n);
    let third = i64::try_from(div_round_half_up(i128::from(wh), 3)).unwrap_or(i64::MAX);
    match n {
        0 => wh - third,
        n if n == NIGHTS - 1 => third,
        _ => wh,
    }
}

/// Peak resident memory of this process since the last reset, KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The recompute rounds' time so far by phase (read, compute, save), µs.
fn phases() -> [u64; 3] {
    let r = &recompute::ROUND_MICROS;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    [l(&r.read), l(&r.compute), l(&r.save)]
}

/// The phases' time since `before`, as `r / c / s` seconds.
fn since(before: [u64; 3]) -> String {
    let now = phases();
    let s = |i: usize| (now[i] - before[i]) as f64 / 1e6;
    format!("{:.2} / {:.2} / {:.2} s", s(0), s(1), s(2))
}

/// Tells a `perf record --control fifo:<path> -D -1` started around the bench to sample
/// (`enable`) or not (`disable`), when `BENCH_PERF_CTL` names that fifo: profiles of the
/// cold recompute alone, without the fill and the packing.
fn perf_ctl(cmd: &str) {
    if let Ok(path) = std::env::var("BENCH_PERF_CTL") {
        let _ = std::fs::write(path, format!("{cmd}\n"));
    }
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Registry and readings of nights `nights` for `n` households (one meter each, 40 per
/// gateway), in SQL; with `registry` false only the readings and the dirty marks.
async fn fill(url: &str, n: i64, nights: std::ops::Range<i64>, registry: bool) {
    if url.starts_with("postgres") {
        return fill_pg(url, n, nights, registry).await;
    }
    let mut c = SqliteConnectOptions::new()
        .filename(url.trim_start_matches("sqlite://"))
        .pragma("cache_size", "-262144")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (first, end) = (nights.start, nights.end);
    let since = since_of(first, registry);
    let series = format!(
        "WITH RECURSIVE h(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM h WHERE i + 1 < {n})"
    );
    let statements = [
        format!("{series} INSERT INTO households (id, district, town, village, heating_area_m2, device, max_power_w)
                 SELECT printf('hh-%07d', i), '怀柔区', '雁栖镇', printf('村%d', i / 400), '100', 'air_source_heat_pump', NULL FROM h"),
        format!("{series} INSERT INTO gateways (id) SELECT DISTINCT printf('gw-%05d', i / 40) FROM h"),
        format!("{series} INSERT INTO meters (household, meter, valid_from, valid_to, gateway)
                 SELECT printf('hh-%07d', i), printf('%012d', i), {INSTALLED}, NULL, printf('gw-%05d', i / 40) FROM h"),
        // e(open n) = 1,000,000 + 40,000 n + (7h + 13n) mod 5,000; e(close n) adds night_wh(h, n).
        format!("{series}, nn(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM nn WHERE n + 1 < {end})
                 INSERT INTO readings (meter, ts, e_wh, e_valley_wh, p_w, meter_ts, gateway, received)
                 SELECT printf('%012d', i), {FIRST_OPEN} + n * 86400 + k * 43200,
                        1000000 + 40000 * n + (7 * i + 13 * n) % 5000 + k * (20000 + (i * 11 + n * 3) % 10000),
                        NULL, NULL, NULL, printf('gw-%05d', i / 40), {NOW}
                 FROM h, nn, (SELECT 0 AS k UNION ALL SELECT 1)
                 ORDER BY 1, 2"),
        // Marked as ingest marks them: from the first new reading (a first fill: whole).
        format!("INSERT INTO dirty (household, season, gen, since) SELECT id, '2025-2026', 1, {since} FROM households WHERE 1
         ON CONFLICT (household, season) DO UPDATE SET gen = dirty.gen + 1, since = excluded.since"),
    ];
    for (i, s) in statements.into_iter().enumerate() {
        if !registry && i < 3 {
            continue;
        }
        sqlx::query(&s)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}: {s}"));
    }
}

/// The dirty marks' `since`: the first new reading's instant, or NULL (whole) on a first fill.
fn since_of(first_night: i64, registry: bool) -> String {
    if registry {
        "NULL".into()
    } else {
        (FIRST_OPEN + first_night * 86_400).to_string()
    }
}

/// [`fill`] in PostgreSQL's dialect (the same rows).
async fn fill_pg(url: &str, n: i64, nights: std::ops::Range<i64>, registry: bool) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (first, last) = (nights.start, nights.end - 1);
    let since = since_of(first, registry);
    let h = format!("generate_series(0, {}) i", n - 1);
    let statements = [
        format!("INSERT INTO households (id, district, town, village, heating_area_m2, device, max_power_w)
                 SELECT 'hh-' || lpad(i::text, 7, '0'), '怀柔区', '雁栖镇', '村' || (i / 400), '100', 'air_source_heat_pump', NULL FROM {h}"),
        format!("INSERT INTO gateways (id) SELECT DISTINCT 'gw-' || lpad((i / 40)::text, 5, '0') FROM {h}"),
        format!("INSERT INTO meters (household, meter, valid_from, valid_to, gateway)
                 SELECT 'hh-' || lpad(i::text, 7, '0'), lpad(i::text, 12, '0'), {INSTALLED}, NULL, 'gw-' || lpad((i / 40)::text, 5, '0') FROM {h}"),
        format!("INSERT INTO readings (meter, ts, e_wh, e_valley_wh, p_w, meter_ts, gateway, received)
                 SELECT lpad(i::text, 12, '0'), {FIRST_OPEN} + n * 86400 + k * 43200,
                        1000000 + 40000 * n + (7 * i + 13 * n) % 5000 + k * (20000 + (i * 11 + n * 3) % 10000),
                        NULL, NULL, NULL, 'gw-' || lpad((i / 40)::text, 5, '0'), {NOW}
                 FROM {h}, generate_series({first}, {last}) n, (VALUES (0), (1)) kk(k)
                 ORDER BY 1, 2"),
        format!("INSERT INTO dirty (household, season, gen, since) SELECT id, '2025-2026', 1, {since} FROM households
         ON CONFLICT (household, season) DO UPDATE SET gen = dirty.gen + 1, since = excluded.since"),
        "ANALYZE".to_string(),
    ];
    for (i, s) in statements.into_iter().enumerate() {
        if !registry && i < 3 {
            continue;
        }
        sqlx::query(&s)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}: {s}"));
    }
}

fn main() {
    let sizes: Vec<i64> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,30000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let pg = (std::env::var("BENCH_STORE").as_deref() == Ok("postgres"))
        .then(|| pg_support::PgServer::start(true));
    println!(
        "recompute bench: a full season (152 nights, 2 reads a night) per household, on {}",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" }
    );
    rt.block_on(async {
        for n in sizes {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let url = match &pg {
                Some(pg) => pg.fresh_url(),
                None => format!("sqlite://{}/recompute.db", dir.path().display()),
            };
            let store = Store::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
            // Cold: every night but the last is stored, nothing computed yet.
            let t = Instant::now();
            fill(&url, n, 0..NIGHTS - 1, true).await;
            let filled = t.elapsed().as_secs_f64();
            // What the running server's idle packing has done by then (a chunk at a time,
            // two days after each closes): BENCH_PACK=0 leaves every reading to the table.
            if std::env::var("BENCH_PACK").as_deref() != Ok("0") {
                let t = Instant::now();
                let s = store
                    .pack_all(packs::horizon_at(LAST_OPEN))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                println!(
                    "{n:>8} households: {} readings packed into {} packs in {:.2} s (done a chunk at a time while the season runs)",
                    s.readings,
                    s.packs,
                    t.elapsed().as_secs_f64()
                );
            }
            reset_peak_rss();
            let before = peak_rss_kib();
            let mut engine = Engine::new(Policy::beijing_2018());
            let phases0 = phases();
            let t = Instant::now();
            perf_ctl("enable");
            let done = recompute::drain(&store, &mut engine, LAST_OPEN)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            perf_ctl("disable");
            let cold = t.elapsed().as_secs_f64();
            let cold_peak = peak_rss_kib();
            let cold_phases = since(phases0);
            assert_eq!(done as i64, n, "pairs recomputed");
            // Warm: the last night closes, every household is dirty, one night is new.
            fill(&url, n, NIGHTS - 1..NIGHTS, false).await;
            let resumed0 = recompute::RESUMED_PAIRS.load(std::sync::atomic::Ordering::Relaxed);
            let phases0 = phases();
            reset_peak_rss();
            let t = Instant::now();
            let done = recompute::drain(&store, &mut engine, NOW)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let warm = t.elapsed().as_secs_f64();
            let warm_peak = peak_rss_kib();
            let warm_phases = since(phases0);
            assert_eq!(done as i64, n, "pairs recomputed");
            for h in [0, n / 2, n - 1] {
                let s = store
                    .statement(&format!("hh-{h:07}"), "2025-2026")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("no statement for household {h}"));
                let want: i64 = (0..NIGHTS).map(|k| season_night_wh(h, k)).sum();
                assert_eq!(s.offpeak_wh, want, "household {h}");
                // The edge nights rest on the register interpolated at midnight, 4 h from a read.
                assert_eq!(
                    (s.nights_actual, s.nights_estimated),
                    (NIGHTS - 2, 2),
                    "household {h}"
                );
            }
            println!(
                "{n:>8} households: cold {cold:>7.2} s ({:>6.0}/s, peak RSS {:>6.1} MiB), \
                 night close {warm:>7.2} s ({:>6.0}/s, peak RSS {:>6.1} MiB, {} of {n} resumed); \
                 {:.1} MiB before, store filled in {filled:.1} s",
                n as f64 / cold,
                cold_peak as f64 / 1024.0,
                n as f64 / warm,
                warm_peak as f64 / 1024.0,
                recompute::RESUMED_PAIRS.load(std::sync::atomic::Ordering::Relaxed) - resumed0,
                before as f64 / 1024.0
            );
            println!("{:>8}  rounds' time, read / compute / save: cold {cold_phases}; night close {warm_phases}", "");
            store.close().await;
        }
    });
}
