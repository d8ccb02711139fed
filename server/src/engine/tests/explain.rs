//! The explanations name the readings and the arithmetic behind each figure.

use super::sim::*;
use crate::engine::{explain_judgement, explain_night, local_time, RawReading};

#[test]
fn a_night_is_explained_by_its_boundaries_and_readings() {
    let (s0, s1) = season_span();
    let m = SimMeter::new(
        "123456781012",
        Curve::heating(s0 - 48 * H, s1 + 48 * H, 3000, 800, 41),
        1_000_000,
    );
    let times = every(s0 - 24 * H + 7 * 60, 15 * 60, s1 + 24 * H);
    let mut reads = m.reads(&times);
    let t = at("2025-12-24", 23, 1);
    reads.push(RawReading {
        ts: t,
        e_wh: 0,
        e_valley_wh: None,
    });
    let hh = household(&[(&m, s0 - 30 * 24 * H, None)]);
    let out = run(&hh, &source(vec![(&m, reads)]));
    let c = cal();
    let fig = out.night(night("2025-12-24")).unwrap();
    let text = explain_night(&c, &hh, &out, fig);
    let b = at("2025-12-24", 20, 0);
    let e = reference_e(&times, |t| m.register(t), b).0;
    let (r1, r2) = (m.register(b - 8 * 60), m.register(b + 7 * 60));
    let line = format!("= {r1} + ({r2} - {r1})·480/900 = {e} Wh (rounded half up)");
    assert!(text.contains(&line), "{text}\nwants {line}");
    assert!(
        text.contains("night 2025-12-24 [2025-12-24 20:00:00 .. 2025-12-25 08:00:00)"),
        "{text}"
    );
    assert!(text.contains("meter 123456781012"), "{text}");
    assert!(
        text.contains(&format!(
            "{} kWh, estimated (rejected_reading)",
            fig.wh.kwh_string()
        )),
        "{text}"
    );
    let j = explain_judgement(&c, &hh, &out.judged[0]);
    assert_eq!(
        j,
        format!(
            "meter 123456781012 2025-12-24 23:01:00 0 Wh: negative_delta against 2025-12-24 22:52:00 {} Wh",
            m.register(at("2025-12-24", 22, 52))
        )
    );
    assert_eq!(local_time(&c, s0), "2025-11-01 00:00:00");
}
