//! Test support for the monitoring tests: a store with a registry, fed through the real
//! validation path (`ingest::validate::message`), the commit, the monitor hook, the
//! recompute and a tick, with a clock the test moves; and the router over it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use qingnuan_server::engine::Engine;
use qingnuan_server::http::{app, App, AppState};
use qingnuan_server::ingest::validate::{self, Bindings};
use qingnuan_server::ingest::IngestStats;
use qingnuan_server::monitor::{BatchSeen, Monitor, MonitorConfig};
use qingnuan_server::store::{IngestTx, Store};
use qingnuan_server::{recompute, registry};
use qingnuan_shared::calendar::Calendar;
use qingnuan_shared::clock::Clock;
use qingnuan_shared::policy::Policy;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tower::ServiceExt;

/// 2025-11-01 20:00 +08:00
pub const NOV1_20: i64 = 1_761_998_400;
/// Twelve hours, s.
pub const H12: i64 = 12 * 3600;
/// A day, s.
pub const DAY: i64 = 86_400;

/// A clock the test sets.
#[derive(Debug)]
pub struct Stepped(pub AtomicI64);

impl Clock for Stepped {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst) * 1000
    }
    fn real_until(&self, _t_ms: i64) -> Duration {
        Duration::ZERO
    }
}

/// The registry of the monitoring tests: two villages in 怀柔区, one in 延庆区, a
/// gateway in 密云区 that is never heard from; `hh-5` may draw 1 MW (cap test).
pub const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m1,2025-10-01,,gw-1,\n\
    hh-2,怀柔区,雁栖镇,下辛庄村,90,air_source_heat_pump,m2,2025-10-01,,gw-1,\n\
    hh-3,怀柔区,雁栖镇,上辛庄村,100,air_source_heat_pump,m3,2025-10-01,,gw-2,\n\
    hh-4,延庆区,康庄镇,小丰营村,100,ground_source_heat_pump,m4,2025-10-01,,gw-3,\n\
    hh-5,密云区,溪翁庄镇,金叵罗村,100,air_source_heat_pump,m5,2025-10-01,,gw-4,1000000\n";

/// A store, a monitor and the router over them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub monitor: Monitor,
    pub clock: Arc<Stepped>,
    pub app: axum::Router,
    pub policy: Policy,
    seq: u64,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/monitor.db", dir.path().display()))
            .await
            .unwrap();
        let policy = Policy::beijing_2018();
        registry::import(
            &store,
            REGISTRY.as_bytes(),
            &policy,
            "test",
            NOV1_20 - 30 * DAY,
        )
        .await
        .unwrap();
        let clock = Arc::new(Stepped(AtomicI64::new(NOV1_20)));
        let monitor = Monitor::new(store.clone(), policy, MonitorConfig::default());
        let state = AppState(Arc::new(App {
            store: store.clone(),
            policy,
            clock: clock.clone(),
            recompute: Arc::new(Notify::new()),
            stats: Arc::new(IngestStats::default()),
            feed: None,
            sink: None,
        }));
        Fixture {
            dir,
            store,
            monitor,
            clock,
            app: app(state),
            policy,
            seq: 0,
        }
    }

    pub fn now(&self) -> i64 {
        self.clock.0.load(Ordering::SeqCst)
    }

    /// Moves the clock to `t`, recomputes and ticks.
    pub async fn at(&self, t: i64) {
        self.clock.0.store(t, Ordering::SeqCst);
        recompute::drain(&self.store, &mut Engine::new(self.policy), t)
            .await
            .unwrap();
        self.monitor.tick(t).await.unwrap();
    }

    /// Receives MQTT messages at `t` exactly as ingest does (validate, commit), then the
    /// monitor hook, the recompute and a tick.
    pub async fn receive(&mut self, t: i64, messages: &[(String, String)]) {
        self.clock.0.store(t, Ordering::SeqCst);
        let bindings = Bindings::new(
            self.store.gateway_ids().await.unwrap(),
            self.store.bindings().await.unwrap(),
        );
        let cal = Calendar::new(self.policy);
        let mut tx = IngestTx {
            received: t,
            ..Default::default()
        };
        let mut seen = Vec::new();
        for (topic, payload) in messages {
            let before = tx.quarantine.len();
            validate::message(topic, payload.as_bytes(), &bindings, t, 300, &mut tx);
            assert_eq!(
                tx.quarantine.len(),
                before,
                "quarantined: {:?}",
                tx.quarantine
            );
            seen.extend(BatchSeen::from_message(topic, payload.as_bytes()));
        }
        self.store
            .commit_ingest(&tx, |r, out| bindings.dirty_of(r, &cal, t, out))
            .await
            .unwrap();
        self.monitor.on_ingest(&tx, &seen).await.unwrap();
        self.at(t).await;
    }

    /// A readings message of `gw` (sent = `sent`), readings as JSON objects.
    pub fn batch(&mut self, gw: &str, sent: Option<i64>, readings: Vec<Value>) -> (String, String) {
        self.seq += 1;
        let mut v = json!({"v": 1, "gw": gw, "seq": self.seq, "boot": "t", "readings": readings});
        if let Some(s) = sent {
            v["sent"] = json!(s);
        }
        (format!("qn/v1/gw/{gw}/readings"), v.to_string())
    }

    /// A status message of `gw`.
    pub fn status(gw: &str, online: bool, ts: i64) -> (String, String) {
        let v = if online {
            json!({"v": 1, "gw": gw, "state": "online", "ts": ts, "version": "0.1.0", "meters": 2, "spool_records": 3, "spool_dropped": 1})
        } else {
            json!({"v": 1, "gw": gw, "state": "offline"})
        };
        (format!("qn/v1/gw/{gw}/status"), v.to_string())
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body)));
        (status, v)
    }

    /// (status, content type, body) of `GET uri`.
    pub async fn get_text(&self, uri: &str) -> (StatusCode, String, String) {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    pub async fn ok(&self, uri: &str) -> Value {
        let (s, v) = self.get(uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        v
    }

    /// Open alarms of `kind` (keys).
    pub async fn open_keys(&self, kind: &str) -> Vec<String> {
        let v = self
            .ok(&format!("/api/v1/alarms?state=open&kind={kind}"))
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"].as_str().unwrap().to_string())
            .collect()
    }

    /// Cleared alarms of `kind` (keys).
    pub async fn cleared_keys(&self, kind: &str) -> Vec<String> {
        let v = self
            .ok(&format!("/api/v1/alarms?state=cleared&kind={kind}"))
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A good reading.
pub fn good(meter: &str, ts: i64, e_wh: i64, p_w: i64) -> Value {
    json!({"meter": meter, "ts": ts, "e_wh": e_wh, "p_w": p_w, "meter_ts": ts})
}

/// A failed reading.
pub fn failed(meter: &str, ts: i64, err: &str) -> Value {
    json!({"meter": meter, "ts": ts, "err": err})
}

/// Readings at night `k`'s 20:00 and 08:00 boundaries.
pub fn night(meter: &str, k: i64, e_open: i64, e_close: i64) -> Vec<Value> {
    let open = NOV1_20 + k * DAY;
    vec![
        good(meter, open, e_open, 2000),
        good(meter, open + H12, e_close, 2000),
    ]
}

/// Two nights of three households; the second night is running at 22:00.
pub async fn fleet(fx: &mut Fixture) {
    let t0 = NOV1_20 - 60;
    fx.receive(
        t0,
        &[
            Fixture::status("gw-1", true, t0),
            Fixture::status("gw-2", true, t0),
        ],
    )
    .await;
    let k1 = NOV1_20 + DAY;
    let mut g1 = night("m1", 0, 1_000_000, 1_024_000);
    g1.extend([
        good("m1", k1, 1_030_000, 2000),
        good("m1", k1 + 7200, 1_034_000, 2000),
    ]);
    g1.extend(night("m2", 0, 2_000_000, 2_006_000));
    g1.extend([
        good("m2", k1, 2_006_500, 250),
        good("m2", k1 + 7200, 2_007_000, 250),
    ]);
    let mut g2 = night("m3", 0, 3_000_000, 3_012_000);
    g2.extend([
        good("m3", k1, 3_012_100, 1500),
        good("m3", k1 + 7200, 3_015_100, 1500),
    ]);
    let (b1, b2) = (
        fx.batch("gw-1", Some(k1 + 7200), g1),
        fx.batch("gw-2", Some(k1 + 7200), g2),
    );
    fx.receive(k1 + 7200, &[b1, b2]).await;
}
