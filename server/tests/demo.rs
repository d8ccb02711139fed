//! `qingnuan-server demo` as a newcomer runs it: the binary, nothing installed, for a
//! bounded time at 3600× — gateways come online, readings flow (and an external
//! `mosquitto_sub` sees them on the embedded broker), two nights close with figures equal
//! to the fleet's truth, the injected faults raise their alarms, Ctrl-C stops it cleanly,
//! and a second run resumes. Also `run` without `[mqtt] url` on its embedded broker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qingnuan_server::demo::state::DemoState;
use qingnuan_shared::calendar::Night;
use qingnuan_tests::fleet::REGISTER_RESOLUTION_WH;
use serde_json::Value;

/// One simulated hour per real second.
const SPEED: &str = "3600";
const START: &str = "2025-12-10";
const SEASON: &str = "2025-2026";
/// The nights that close during the run (the village starts on Dec 10 at 17:00).
const NIGHTS: [&str; 2] = ["2025-12-10", "2025-12-11"];

/// The demo process with its standard output as a stream of lines; killed on drop.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(dir: &Path, extra: &[&str]) -> Demo {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("demo-stderr.log"))
            .expect("stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_qingnuan-server"))
            .args(["demo", "--speed", SPEED, "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning qingnuan-server demo");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("demo> {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (seen or to come within `max`) that contains `needle`.
    fn wait_line(&mut self, needle: &str, max: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let end = Instant::now() + max;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {max:?}; got {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Ctrl-C, then wait for a clean exit.
    fn interrupt(&mut self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "demo exited with {status}");
                return;
            }
            assert!(
                Instant::now() < end,
                "demo did not stop within 30 s of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `host:port` after `prefix` in `line`.
fn addr_after(line: &str, prefix: &str) -> SocketAddr {
    let rest = &line[line.find(prefix).expect(prefix) + prefix.len()..];
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// `GET path` over HTTP/1.0: (status, JSON body).
fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect to the demo's API");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, v)
}

/// Wh from a `"12.345"` kWh string.
fn wh_of(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a kWh string: {v}"));
    let (k, f) = s.split_once('.').unwrap_or((s, "0"));
    k.parse::<i64>().expect("kWh") * 1000 + format!("{f:0<3}")[..3].parse::<i64>().expect("Wh")
}

/// The sum, over a night's interpolated boundaries, of the energy counted between the
/// two readings around each (zero where a reading lies at the boundary), Wh.
fn interpolation_bound(detail: &Value) -> i64 {
    let parts = detail["parts"].as_array().expect("night detail has parts");
    let mut bound = 0;
    for b in parts.iter().flat_map(|p| [&p["start"], &p["end"]]) {
        let (t, r1, r2) = (&b["t"], &b["r1"], &b["r2"]);
        if r1["ts"] == *t || r2["ts"] == *t {
            continue;
        }
        if let (Some(e1), Some(e2)) = (r1["unwrapped_wh"].as_i64(), r2["unwrapped_wh"].as_i64()) {
            bound += e2 - e1;
        }
    }
    bound
}

#[test]
fn the_demo_runs_a_village_whose_nights_match_the_truth() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut demo = Demo::start(dir, &["--fresh", "--start", START]);
    let api = addr_after(
        &demo.wait_line("dashboard and API:", Duration::from_secs(60)),
        "http://",
    );
    let mqtt = addr_after(
        &demo.wait_line("MQTT broker:", Duration::from_secs(5)),
        "mqtt://",
    );

    // An operator's own client sees the readings on the embedded broker.
    let sub = Command::new("/usr/bin/mosquitto_sub")
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-t", "qn/v1/gw/+/readings", "-v", "-C", "3", "-W", "30"])
        .output()
        .expect("mosquitto_sub");
    let out = String::from_utf8_lossy(&sub.stdout);
    assert!(
        sub.status.success(),
        "mosquitto_sub: {out} {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    let msgs: Vec<&str> = out.lines().collect();
    assert_eq!(msgs.len(), 3, "{out}");
    for m in msgs {
        let (topic, payload) = m.split_once(' ').expect("topic payload");
        let v: Value = serde_json::from_str(payload).expect("JSON payload");
        assert_eq!(
            topic,
            format!("qn/v1/gw/{}/readings", v["gw"].as_str().expect("gw"))
        );
        assert!(
            v["readings"].as_array().is_some_and(|r| !r.is_empty()),
            "{payload}"
        );
    }

    // Every gateway of the village reports online.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = get(api, "/api/v1/gateways");
        let online = v
            .as_array()
            .map_or(0, |a| a.iter().filter(|g| g["state"] == "online").count());
        if status == 200 && online == 3 {
            break;
        }
        assert!(
            Instant::now() < end,
            "gateways not all online: {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Two nights close; the demo says so.
    for n in NIGHTS {
        let line = demo.wait_line(&format!("night {n} closed"), Duration::from_secs(90));
        assert!(line.contains("over 24 households"), "{line}");
    }
    let state = DemoState::load(dir).expect("state").expect("a state file");
    let fleet = state.fleet();
    let cal = &fleet.calendar;
    let tolerance = 2 * REGISTER_RESOLUTION_WH; // one register step at each boundary
    for h in &fleet.households {
        let (status, list) = get(
            api,
            &format!("/api/v1/households/{}/nights?season={SEASON}", h.id),
        );
        assert_eq!(status, 200, "{}: {list}", h.id);
        let mut total = 0;
        for n in NIGHTS {
            let row = list
                .as_array()
                .and_then(|a| a.iter().find(|r| r["night"] == n))
                .unwrap_or_else(|| panic!("{} has no night {n}: {list}", h.id));
            let wh = wh_of(&row["kwh"]);
            let truth = h.true_night_wh(cal, n.parse::<Night>().expect("night")).0;
            assert!(
                truth > 0,
                "{} {n}: a heat pump in December draws energy",
                h.id
            );
            // A boundary between two readings is interpolated: the truth lies between
            // them, so the error is at most what the meter counted across the gap. At
            // 3600× a loaded machine can stretch a boundary sweep past the 5 simulated
            // minutes (83 ms) of `actual`, and the night is `estimated`, not wrong.
            let (status, detail) = get(api, &format!("/api/v1/households/{}/nights/{n}", h.id));
            assert_eq!(status, 200, "{} {n}: {detail}", h.id);
            let gaps = interpolation_bound(&detail["detail"]);
            assert!(
                (wh - truth).abs() <= tolerance + gaps,
                "{} night {n}: server {wh} Wh, truth {truth} Wh, interpolation bound {gaps} Wh ({detail})",
                h.id
            );
            assert_ne!(row["quality"], "missing", "{} {n}: {row}", h.id);
            total += wh;
        }
        // The statement adds up the nights listed (more may have closed meanwhile).
        let (status, st) = get(
            api,
            &format!("/api/v1/households/{}/seasons/{SEASON}", h.id),
        );
        assert_eq!(status, 200, "{}: {st}", h.id);
        assert!(wh_of(&st["offpeak_kwh"]) >= total, "{}: {st}", h.id);
    }

    // The injected faults raised their alarms: the first night's uplink cut of gw-0001,
    // and the first day's silent meter (both also announced on standard output).
    let cut = demo.wait_line("loses its uplink", Duration::from_secs(1));
    assert!(cut.contains("gw-0001"), "{cut}");
    let silent = demo.wait_line("stops answering", Duration::from_secs(1));
    let meter = silent
        .split_whitespace()
        .skip_while(|w| *w != "meter")
        .nth(1)
        .unwrap_or_else(|| panic!("{silent}"));
    let (status, alarms) = get(api, "/api/v1/alarms?state=all");
    assert_eq!(status, 200, "{alarms}");
    let raised = |kind: &str, key: &str, id: &str| {
        alarms
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["kind"] == kind && x[key] == id))
    };
    assert!(raised("gateway_offline", "gateway", "gw-0001"), "{alarms}");
    assert!(raised("meter_silent", "meter", meter), "{meter}: {alarms}");

    demo.interrupt();
    assert!(demo
        .wait_line("stopped at", Duration::from_secs(5))
        .contains("resume"));
    let saved = DemoState::load(dir).expect("state").expect("state file");
    assert!(saved.sim_now_ms > state.sim_now_ms);
    eprintln!("first run done after {:?}", started.elapsed());

    // A second run resumes where the first stopped, on the same store.
    let mut again = Demo::start(dir, &[]);
    let line = again.wait_line("resumed at", Duration::from_secs(60));
    assert!(line.contains("2025-12-12"), "{line}");
    let api = addr_after(
        &again.wait_line("dashboard and API:", Duration::from_secs(5)),
        "http://",
    );
    let (status, list) = get(
        api,
        &format!("/api/v1/households/hh-0001/nights?season={SEASON}"),
    );
    assert_eq!(status, 200);
    assert!(
        list.as_array().is_some_and(|a| a.len() >= NIGHTS.len()),
        "{list}"
    );
    again.interrupt();
    eprintln!("test done after {:?}", started.elapsed());
}

/// A free loopback port (below the ephemeral range: qingnuan_tests::broker::free_port).
fn free_port() -> u16 {
    qingnuan_tests::broker::free_port().expect("free port")
}

#[test]
fn run_without_a_broker_url_serves_its_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (http, mqtt) = (free_port(), free_port());
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http}\"\n\n[mqtt]\nembedded_listen = \"127.0.0.1:{mqtt}\"\n\n[store]\nurl = \"sqlite://{}\"\n",
            tmp.path().join("q.db").display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(tmp.path().join("server.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_qingnuan-server"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawning qingnuan-server run");
    let (tx, lines) = mpsc::channel();
    drop(tx);
    let mut server = Demo {
        child,
        lines,
        seen: Vec::new(),
    };
    let api: SocketAddr = ([127, 0, 0, 1], http).into();
    let end = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(api).is_err() {
        assert!(
            Instant::now() < end,
            "the server did not listen: {}",
            read_log(tmp.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A batch from a gateway the registry does not know: ingest receives it through the
    // embedded broker and quarantines it.
    let batch = r#"{"v":1,"gw":"gw-0099","seq":1,"boot":"b1","readings":[{"meter":"123456781012","ts":1764331200,"e_wh":1000}]}"#;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        // The API may answer before the embedded broker listens: retry until the deadline.
        let out = Command::new("/usr/bin/mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-q", "1"])
            .args(["-t", "qn/v1/gw/gw-0099/readings", "-m", batch])
            .output()
            .expect("mosquitto_pub");
        if !out.status.success() {
            assert!(
                Instant::now() < end,
                "the embedded broker refused mosquitto_pub: {} {}",
                String::from_utf8_lossy(&out.stderr),
                read_log(tmp.path())
            );
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let (status, q) = get(api, "/api/v1/quarantine");
        if status == 200 && q["since_start"]["messages"].as_i64().unwrap_or(0) >= 1 {
            assert!(q["total"].as_i64().unwrap_or(0) >= 1, "{q}");
            break;
        }
        assert!(
            Instant::now() < end,
            "ingest saw nothing: {q} {}",
            read_log(tmp.path())
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    server.interrupt();
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}
