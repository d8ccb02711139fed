//! The dashboard in headless Chromium (Debian's `chromium`) against a server fed with
//! readings: the overview numbers equal the API's, the English switch, the drill-down
//! district → village → household with its nightly chart; screenshots are saved under
//! `target/test-artifacts/`.

mod monitor_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_support::*;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout. Virtual time lets
/// the page's fetches and rendering finish before the DOM is dumped.
async fn chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "headless Chromium is needed: apt-get install -y chromium chromium-driver"
    );
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium took over 2 minutes")
        .expect("chromium did not start");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text inside the element with `id` (a simple scan: the dashboard's ids are unique
/// and their elements hold text only).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium_matches_the_api_switches_language_and_drills_down() {
    let mut fx = Fixture::new().await;
    fleet(&mut fx).await;
    // Some alarms to show: a meter clock off on hh-2's meter.
    let mut r = good("m2", NOV1_20 + DAY + 7200 + 60, 2_007_010, 250);
    r["meter_ts"] = (NOV1_20 + DAY + 7200 + 60 + 900).into();
    let b = fx.batch("gw-1", None, vec![r]);
    fx.receive(NOV1_20 + DAY + 7200 + 60, &[b]).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = fx.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let base = format!("http://{addr}");
    let profile = tempfile::tempdir().unwrap();
    let shots = artifacts();

    // Overview, Chinese by default: the numbers are the API's.
    let o: Value = fx.ok("/api/v1/overview").await;
    let dom = chromium(profile.path(), &format!("{base}/"), &["--dump-dom"]).await;
    assert!(
        dom.contains("在线网关") && dom.contains("各区进度"),
        "Chinese by default"
    );
    assert_eq!(
        text_of(&dom, "ov-gateways-online"),
        format!("{} / {}", o["gateways"]["online"], o["gateways"]["total"])
    );
    assert_eq!(
        text_of(&dom, "ov-running"),
        o["heat_pumps_running"].to_string()
    );
    assert_eq!(text_of(&dom, "ov-alarms"), o["alarms"]["open"].to_string());
    assert!(o["alarms"]["open"].as_u64().unwrap() >= 1);
    assert_eq!(
        text_of(&dom, "ov-tonight-kwh"),
        o["tonight"]["kwh"].as_str().unwrap()
    );
    assert_eq!(
        text_of(&dom, "ov-tonight-yuan"),
        o["tonight"]["subsidy_yuan"].as_str().unwrap()
    );
    assert_eq!(
        text_of(&dom, "ov-season-kwh"),
        o["season_total"]["offpeak_kwh"].as_str().unwrap()
    );
    assert_eq!(
        text_of(&dom, "ov-season-yuan"),
        o["season_total"]["subsidy_yuan"].as_str().unwrap()
    );
    assert_eq!(
        text_of(&dom, "ov-live"),
        o["households"]["live"].to_string()
    );

    // The English switch.
    let dom = chromium(profile.path(), &format!("{base}/?lang=en"), &["--dump-dom"]).await;
    assert!(
        dom.contains("Gateways online") && dom.contains("District progress against the 2018 plan"),
        "English"
    );
    assert!(
        !dom.contains("在线网关"),
        "no Chinese label left in English"
    );

    // Drill-down: district → village → household.
    let dom = chromium(
        profile.path(),
        &format!("{base}/#/district/怀柔区"),
        &["--dump-dom"],
    )
    .await;
    assert!(
        dom.contains("下辛庄村") && dom.contains("上辛庄村") && dom.contains("gw-1"),
        "{dom}"
    );
    let dom = chromium(
        profile.path(),
        &format!("{base}/#/village/怀柔区/下辛庄村"),
        &["--dump-dom"],
    )
    .await;
    assert!(
        dom.contains("#/household/hh-1")
            && dom.contains("#/household/hh-2")
            && !dom.contains("#/household/hh-3")
    );
    let url = format!("{base}/#/household/hh-1");
    let dom = chromium(profile.path(), &url, &["--dump-dom"]).await;
    assert!(dom.contains("id=\"night-chart\""), "the household's chart");
    let nights: Value = fx
        .ok("/api/v1/households/hh-1/nights?season=2025-2026")
        .await;
    for q in ["actual", "estimated", "missing"] {
        let want = nights
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["quality"] == q)
            .count();
        assert_eq!(
            dom.matches(&format!("class=\"bar bar-{q}\"")).count(),
            want,
            "{q} bars"
        );
    }
    let st: Value = fx.ok("/api/v1/households/hh-1/seasons/2025-2026").await;
    assert_eq!(
        text_of(&dom, "st-offpeak"),
        format!("{} kWh", st["offpeak_kwh"].as_str().unwrap())
    );
    assert!(
        dom.contains("a reading at the boundary") || dom.contains("E1 + (E2 - E1)"),
        "how each figure was obtained"
    );

    // Alarms list with a filter.
    let dom = chromium(
        profile.path(),
        &format!("{base}/#/alarms?state=open&kind=meter_clock"),
        &["--dump-dom"],
    )
    .await;
    assert_eq!(text_of(&dom, "alarm-count"), "1");
    assert!(dom.contains("m2") && dom.contains("电表时钟偏差"));

    // Screenshots: the household on a laptop, the overview on a phone.
    for (name, url, size) in [
        ("dashboard-household.png", url.as_str(), "1280,1400"),
        ("dashboard-phone.png", &format!("{base}/"), "390,1200"),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        chromium(
            profile.path(),
            url,
            &[
                &format!("--window-size={size}"),
                &format!("--screenshot={}", path.display()),
            ],
        )
        .await;
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            png.len() > 10_000 && png.starts_with(b"\x89PNG"),
            "{name} is a real PNG"
        );
    }
    server.abort();
}

/// A minimal W3C WebDriver client over HTTP/1.1 (one request per connection), enough
/// to drive `chromedriver`: navigate, find, click, run a script.
struct WebDriver {
    port: u16,
    session: String,
    /// The browser's process id (`goog:processID`), killed on drop if still there.
    browser_pid: Option<u64>,
    _driver: tokio::process::Child,
}

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One WebDriver request; the parsed answer, or the transport's error (connection refused
/// or reset: chromedriver not listening yet, or gone).
async fn try_wd_call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{method} {path}: connection closed early"),
        )
    };
    let (head_len, body_len) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(closed());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{method} {path}: no Content-Length in {head}"));
            break (i + 4, len);
        }
    };
    while buf.len() < head_len + body_len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(closed());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let json = String::from_utf8_lossy(&buf[head_len..head_len + body_len]).into_owned();
    Ok(serde_json::from_str(&json).unwrap_or_else(|e| panic!("{method} {path}: {e}: {json}")))
}

/// A WebDriver request to a session that is up: a transport error fails the test.
async fn wd_call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    try_wd_call(port, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

impl WebDriver {
    /// Starts chromedriver and a headless Chromium session, on a port below the ephemeral
    /// range (`free_port`: CI once saw "connection reset by peer" on a port from
    /// `bind(0)`, taken by another process before chromedriver bound it). A start whose
    /// session request still fails in transport is retried with a new chromedriver on a
    /// new port, up to three times; chromedriver's log is kept in the profile directory
    /// and printed when every attempt failed.
    async fn start(profile: &Path) -> WebDriver {
        assert!(
            Path::new("/usr/bin/chromedriver").exists(),
            "chromedriver is needed: apt-get install -y chromium chromium-driver"
        );
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            let port = qingnuan_tests::broker::free_port().unwrap();
            let log = profile.join(format!("chromedriver-{attempt}.log"));
            let mut driver = tokio::process::Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                    || driver.try_wait().ok().flatten().is_some()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let data_dir = profile.join(format!("browser-{attempt}"));
            let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,1000", format!("--user-data-dir={}", data_dir.display()),
                ]},
            }}});
            match try_wd_call(port, "POST", "/session", Some(&caps)).await {
                Ok(v) => {
                    let session = v["value"]["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no session: {v}"))
                        .to_string();
                    let browser_pid = v["value"]["capabilities"]["goog:processID"].as_u64();
                    return WebDriver {
                        port,
                        session,
                        browser_pid,
                        _driver: driver,
                    };
                }
                Err(e) => {
                    let exited = driver.try_wait().ok().flatten();
                    let _ = driver.kill().await;
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                    eprintln!("chromedriver attempt {attempt} on port {port}: {e} (exited: {exited:?})\n{tail}");
                    failures.push(format!("attempt {attempt}: {e}\n{tail}"));
                }
            }
        }
        panic!("chromedriver gave no session:\n{}", failures.join("\n"));
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let v = wd_call(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            Some(&body),
        )
        .await;
        assert!(v["value"].get("error").is_none(), "{path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", serde_json::json!({"url": url}))
            .await;
    }

    async fn click(&self, css: &str) {
        let el = self
            .cmd(
                "POST",
                "/element",
                serde_json::json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = el[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {el}"))
            .to_string();
        self.cmd(
            "POST",
            &format!("/element/{id}/click"),
            serde_json::json!({}),
        )
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            serde_json::json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until it returns something truthy (a non-empty string or `true`).
    async fn wait_for(&self, script: &str) -> Value {
        for _ in 0..100 {
            let v = self.js(script).await;
            if v.as_bool() == Some(true) || v.as_str().is_some_and(|s| !s.is_empty()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {script}");
    }

    /// Ends the session (see `Drop`).
    fn quit(self) {}
}

impl Drop for WebDriver {
    /// Ends the session so chromedriver stops its browser, then makes sure the browser
    /// process it reported is gone, even when the test panicked. Blocking: drop cannot await.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
                self.session, self.port
            );
            let _ = s.write_all(req.as_bytes());
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
        }
        if let Some(pid) = self.browser_pid {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_driven_by_webdriver_switch_button_and_clicks_down_to_a_household() {
    let mut fx = Fixture::new().await;
    fleet(&mut fx).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = fx.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let profile = tempfile::tempdir().unwrap();
    let wd = WebDriver::start(profile.path()).await;

    wd.goto(&format!("http://{addr}/")).await;
    let running = wd
        .wait_for("const e = document.getElementById('ov-running'); return e ? e.textContent : ''")
        .await;
    let o = fx.ok("/api/v1/overview").await;
    assert_eq!(
        running.as_str().unwrap(),
        o["heat_pumps_running"].to_string()
    );
    let label =
        "document.querySelector('#ov-running').parentElement.querySelector('.label').textContent";
    assert_eq!(wd.js(&format!("return {label}")).await, "运行中热泵");

    // The switch button: every label changes, the numbers stay.
    wd.click("#lang").await;
    wd.wait_for(
        "return document.body.dataset.lang === 'en' && !!document.getElementById('ov-running')",
    )
    .await;
    assert_eq!(
        wd.wait_for(&format!(
            "const t = {label}; return t === 'Heat pumps running' ? t : ''"
        ))
        .await,
        "Heat pumps running"
    );
    assert_eq!(
        wd.js("return document.querySelector('nav a').textContent")
            .await,
        "Overview"
    );
    assert_eq!(
        wd.js("return document.getElementById('ov-running').textContent")
            .await,
        running
    );

    // Clicks down: district → village → household, and the chart is there.
    wd.click("a[href='#/district/%E6%80%80%E6%9F%94%E5%8C%BA']")
        .await;
    wd.wait_for("return document.querySelector(\"a[href^='#/village/']\") ? 'yes' : ''")
        .await;
    wd.click("a[href$='/%E4%B8%8B%E8%BE%9B%E5%BA%84%E6%9D%91']")
        .await;
    wd.wait_for("return document.querySelector(\"a[href='#/household/hh-1']\") ? 'yes' : ''")
        .await;
    wd.click("a[href='#/household/hh-1']").await;
    let bars = wd
        .wait_for("return document.querySelectorAll('#night-chart rect.bar').length ? String(document.querySelectorAll('#night-chart rect.bar').length) : ''")
        .await;
    let nights = fx
        .ok("/api/v1/households/hh-1/nights?season=2025-2026")
        .await;
    assert_eq!(
        bars.as_str().unwrap(),
        nights.as_array().unwrap().len().to_string()
    );
    assert!(wd
        .js("return document.getElementById('hh-title').textContent")
        .await
        .as_str()
        .unwrap()
        .starts_with("Household hh-1"));
    wd.quit();
    server.abort();
}

/// A WebDriver call whose answer may be an error (a prompt not open yet, navigation
/// interrupted by one): the `value` as it came.
async fn wd_try(wd: &WebDriver, method: &str, path: &str, body: Value) -> Value {
    wd_call(
        wd.port,
        method,
        &format!("/session/{}{path}", wd.session),
        Some(&body),
    )
    .await["value"]
        .clone()
}

/// With `[auth] tokens_file` the API answers 401 to the dashboard's first requests: the
/// dashboard asks for a token once (a browser prompt), sends it as a bearer token, and its
/// data loads; the figures equal the API's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_the_token_on_401_and_then_loads() {
    use qingnuan_server::http::auth::{add_token, protect, AuthConfig, Guard, Role};
    let mut fx = Fixture::new().await;
    fleet(&mut fx).await;
    let tokens = tempfile::tempdir().unwrap();
    let file = tokens.path().join("tokens.toml");
    let token = add_token(&file, "vic", Role::Viewer).unwrap();
    let guard = Guard::new(&AuthConfig {
        tokens_file: Some(file),
        ..AuthConfig::default()
    })
    .unwrap();
    let router = protect(fx.app.clone(), std::sync::Arc::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let (status, _) = http_status(addr, "/api/v1/overview").await;
    assert_eq!(status, 401, "the API is protected");
    let profile = tempfile::tempdir().unwrap();
    let wd = WebDriver::start(profile.path()).await;

    // Navigation may return early with "unexpected alert open": that is the prompt.
    let _ = wd_try(
        &wd,
        "POST",
        "/url",
        serde_json::json!({"url": format!("http://{addr}/")}),
    )
    .await;
    let mut prompt = Value::Null;
    for _ in 0..100 {
        prompt = wd_try(&wd, "GET", "/alert/text", serde_json::json!({})).await;
        if prompt.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        prompt.as_str().is_some_and(|t| t.contains("API token")),
        "no token prompt: {prompt}"
    );
    let sent = wd_try(
        &wd,
        "POST",
        "/alert/text",
        serde_json::json!({"text": token}),
    )
    .await;
    assert!(sent.get("error").is_none(), "{sent}");
    wd.cmd("POST", "/alert/accept", serde_json::json!({})).await;
    let running = wd
        .wait_for("const e = document.getElementById('ov-running'); return e ? e.textContent : ''")
        .await;
    let o = fx.ok("/api/v1/overview").await;
    assert_eq!(
        running.as_str().unwrap(),
        o["heat_pumps_running"].to_string()
    );
    // Kept for the next page load: no second prompt.
    assert_eq!(
        wd.js("return localStorage.getItem('qn-token')").await,
        Value::String(token.clone())
    );
    wd.goto(&format!("http://{addr}/?lang=en")).await;
    let again = wd
        .wait_for("const e = document.getElementById('ov-running'); return e ? e.textContent : ''")
        .await;
    assert_eq!(again, running);
    wd.quit();
    server.abort();
}

/// `GET path` over HTTP/1.0: the status and the body.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
