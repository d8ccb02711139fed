//! Through the store, on SQLite and PostgreSQL: a season delivered night by night (a meter
//! swapped in the middle of a night, glitches, valley glitches, an outage replayed days
//! later, a registry change) and recomputed after every night is resumed from saved
//! state, not recomputed whole, and ends with exactly the figures of one whole recompute
//! of everything.

mod pg_support;

use std::collections::{BTreeMap, BTreeSet};

use qingnuan_server::engine::Engine;
use qingnuan_server::recompute::{self, RESUMED_PAIRS, WHOLE_PAIRS};
use qingnuan_server::registry;
use qingnuan_server::store::{IngestTx, NewReading, NightRow, StatementRow, Store};
use qingnuan_shared::policy::Policy;

/// 2025-11-01 00:00 +08:00, the season's start.
const S0: i64 = 1_761_926_400;
const H: i64 = 3600;
const D: i64 = 86_400;
const NIGHTS: i64 = 45;
const SEASON: &str = "2025-2026";

/// 2025-11-20 02:00 +08:00: hh-b's meter is swapped in the middle of the night.
const SWAP: i64 = S0 + 19 * D + 2 * H;

fn csv(max_power_a: &str) -> String {
    format!(
        "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
         hh-a,d,t,v,100,hp,ma,2025-10-01,,gw-1,{max_power_a}\n\
         hh-b,d,t,v,100,hp,mb1,2025-10-01,2025-11-20T02:00:00+08:00,gw-1,\n\
         hh-b,d,t,v,100,hp,mb2,2025-11-20T02:00:00+08:00,,gw-1,\n\
         hh-c,d,t,v,100,hp,mc,2025-10-01,,gw-1,\n\
         hh-d,d,t,v,100,hp,md,2025-10-01,,gw-1,\n"
    )
}

fn household_of(meter: &str) -> &'static str {
    match meter {
        "ma" => "hh-a",
        "mb1" | "mb2" => "hh-b",
        "mc" => "hh-c",
        _ => "hh-d",
    }
}

/// (reading, the instant it arrives): boundary reads at 20:00 and 08:00, two reads in
/// between, glitches, and hh-c's nights 30 and 31 held back until night 34 closes.
fn season() -> Vec<(NewReading, i64)> {
    let mut out = Vec::new();
    for k in -1..NIGHTS {
        let open = S0 + k * D + 20 * H; // 20:00 local
        let times = [
            open + 5,
            open + 4 * H + 17,
            open + 9 * H + 3,
            open + 12 * H + 9,
        ];
        for (meter, base, per_s) in [
            ("ma", 2_000_000, 3),
            ("mb1", 7_000_000, 2),
            ("mb2", 10_000, 2),
            ("mc", 999_000_000, 4),
            ("md", 50_000, 1),
        ] {
            for (j, &ts) in times.iter().enumerate() {
                if (meter == "mb1" && ts > SWAP) || (meter == "mb2" && ts < SWAP) {
                    continue;
                }
                let mut e = (base + (ts - S0 + 40 * D) * per_s / 2) % 1_000_000_000;
                let mut valley = (meter == "md").then(|| e * 2 / 3);
                if meter == "ma" && k % 9 == 4 && j == 1 {
                    e = 0; // a glitch read of 0
                }
                if meter == "mc" && k % 11 == 7 && j == 2 {
                    e += 5_000_000; // a spike
                }
                if meter == "md" && k % 7 == 3 && j == 3 {
                    valley = Some(0); // a valley glitch
                }
                // After the night's 08:00 read (each night's reads arrive at its close).
                let mut arrives = (ts - S0 + 16 * H - 600).div_euclid(D) * D + S0 + 8 * H + 60;
                if meter == "mc" && (30..32).contains(&k) {
                    arrives = S0 + 35 * D + 8 * H + 60; // replayed after an outage
                }
                out.push((
                    NewReading {
                        meter: meter.into(),
                        ts,
                        e_wh: e,
                        e_valley_wh: valley,
                        p_w: None,
                        meter_ts: None,
                        gateway: "gw-1".into(),
                    },
                    arrives,
                ));
            }
        }
    }
    out
}

async fn commit(store: &Store, readings: Vec<NewReading>, now: i64) {
    let tx = IngestTx {
        readings,
        received: now,
        ..Default::default()
    };
    store
        .commit_ingest(&tx, |r, out: &mut BTreeSet<(String, String)>| {
            out.insert((household_of(&r.meter).into(), SEASON.into()));
        })
        .await
        .unwrap();
}

type Figures = BTreeMap<String, (StatementRow, Vec<NightRow>)>;

async fn figures(store: &Store) -> Figures {
    let mut out = BTreeMap::new();
    for hh in ["hh-a", "hh-b", "hh-c", "hh-d"] {
        let st = store.statement(hh, SEASON).await.unwrap().unwrap();
        out.insert(
            hh.to_string(),
            (st, store.nights(hh, SEASON).await.unwrap()),
        );
    }
    out
}

/// Night by night in `url`; returns the figures and the pairs resumed and recomputed whole.
async fn night_by_night(url: &str) -> (Figures, u64, u64) {
    let store = Store::open(url).await.unwrap();
    let policy = Policy::beijing_2018();
    registry::import(&store, csv("").as_bytes(), &policy, "test", S0)
        .await
        .unwrap();
    let mut engine = Engine::new(policy);
    let mut by_arrival: BTreeMap<i64, Vec<NewReading>> = BTreeMap::new();
    for (r, at) in season() {
        by_arrival.entry(at).or_default().push(r);
    }
    let (r0, w0) = (
        RESUMED_PAIRS.load(Ordering::Relaxed),
        WHOLE_PAIRS.load(Ordering::Relaxed),
    );
    for (at, readings) in by_arrival {
        commit(&store, readings, at).await;
        if at == S0 + 25 * D + 8 * H + 60 {
            // hh-a's power limit changes: its season is recomputed whole.
            registry::import(&store, csv("25000").as_bytes(), &policy, "test", at)
                .await
                .unwrap();
        }
        recompute::drain(&store, &mut engine, at).await.unwrap();
    }
    let resumed = RESUMED_PAIRS.load(Ordering::Relaxed) - r0;
    let whole = WHOLE_PAIRS.load(Ordering::Relaxed) - w0;
    (figures(&store).await, resumed, whole)
}

/// Everything at once into `url`, one whole recompute.
async fn at_once(url: &str) -> Figures {
    let store = Store::open(url).await.unwrap();
    let policy = Policy::beijing_2018();
    registry::import(&store, csv("25000").as_bytes(), &policy, "test", S0)
        .await
        .unwrap();
    let all = season();
    let last = all.iter().map(|r| r.1).max().unwrap();
    commit(&store, all.into_iter().map(|r| r.0).collect(), last).await;
    let mut engine = Engine::new(policy);
    recompute::drain(&store, &mut engine, last).await.unwrap();
    figures(&store).await
}

use std::sync::atomic::Ordering;

#[tokio::test]
async fn a_season_recomputed_night_by_night_is_resumed_and_equals_one_whole_recompute() {
    // One test for both backends: the counters are per process.
    for kind in [pg_support::Kind::Sqlite, pg_support::Kind::Postgres] {
        let (_a, url_a) = pg_support::url(kind);
        let (_b, url_b) = pg_support::url(pg_support::Kind::Sqlite);
        let (got, resumed, whole) = night_by_night(&url_a).await;
        let want = at_once(&url_b).await;
        // The run did what it says: nights were listed, money is owed, the swap and the
        // glitches left their marks, the replayed outage is counted.
        let (st_b, nights_b) = &want["hh-b"];
        assert_eq!(i64::try_from(nights_b.len()).unwrap(), NIGHTS + 1);
        assert!(st_b.city_fen > 0);
        let swap_night = nights_b.iter().find(|n| n.night == "2025-11-19").unwrap();
        assert!(swap_night.wh > 0 && swap_night.quality != "missing");
        assert!(want["hh-a"]
            .1
            .iter()
            .any(|n| n.flags.iter().any(|f| f == "rejected_reading")));
        assert!(want["hh-c"].1.iter().all(|n| n.quality != "missing"));
        for hh in want.keys() {
            assert_eq!(got[hh].0, want[hh].0, "{kind:?}: statement of {hh}");
            assert_eq!(got[hh].1, want[hh].1, "{kind:?}: nights of {hh}");
        }
        // Four households, 46 arrivals. Whole: the season's first nights (a resume needs a
        // saved state `max_gap_s` before the first night it recomputes) and hh-a after its
        // registry change; every other arrival resumes, the late replay included.
        assert!(
            resumed >= 4 * 36,
            "{kind:?}: only {resumed} pairs resumed ({whole} whole)"
        );
        assert!(whole <= 4 * 8, "{kind:?}: {whole} pairs recomputed whole");
    }
}
