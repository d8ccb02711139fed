//! The API's protection on the real server over TCP (`[auth] tokens_file`): 401 without
//! or with an unknown token, 403 for a role too low, 400/404 for injection-shaped
//! parameters, 413 for an oversized body, 429 past the per-client rate, and a registry
//! upload by an admin that lands in the audit log under the token's name.

use std::sync::Arc;
use std::time::Duration;

use qingnuan_server::config::Config;
use qingnuan_server::http::auth::{add_token, Role};
use qingnuan_server::store::Store;
use qingnuan_shared::clock::Clock;
use qingnuan_tests::broker::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 2025-11-04 12:00 +08:00
const NOW: i64 = 1_761_998_400 + 2 * 86_400 + 16 * 3600;

#[derive(Debug)]
struct Fixed(i64);

impl Clock for Fixed {
    fn now_ms(&self) -> i64 {
        self.0 * 1000
    }
    fn real_until(&self, _t_ms: i64) -> Duration {
        Duration::ZERO
    }
}

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-1,怀柔区,雁栖镇,下辛庄村,120,air_source_heat_pump,m1,2025-10-01,,gw-1,\n";

/// One HTTP/1.1 request with `Connection: close`: (status, body).
async fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    parse(&buf)
}

fn parse(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Server {
    dir: tempfile::TempDir,
    port: u16,
    db: String,
    running: Option<qingnuan_server::Running>,
    admin: String,
    viewer: String,
}

async fn start(extra_auth: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let admin = add_token(&tokens, "alice", Role::Admin).unwrap();
    let viewer = add_token(&tokens, "vic", Role::Viewer).unwrap();
    let port = free_port().unwrap();
    let db = format!("sqlite://{}/auth.db", dir.path().display());
    let cfg = format!(
        "[http]\nlisten = \"0.0.0.0:{port}\"\n\n[mqtt]\nembedded_listen = \"127.0.0.1:{}\"\n\n\
         [store]\nurl = \"{db}\"\n\n[auth]\ntokens_file = \"{}\"\n{extra_auth}",
        free_port().unwrap(),
        tokens.display()
    );
    let cfg = Config::from_toml_str(&cfg).unwrap();
    let running = qingnuan_server::start_with_clock(cfg, Arc::new(Fixed(NOW)))
        .await
        .unwrap();
    Server {
        dir,
        port,
        db,
        running: Some(running),
        admin,
        viewer,
    }
}

impl Server {
    /// Stops the server; the store stays until the returned directory is dropped.
    async fn stop(mut self) -> (tempfile::TempDir, String) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        (self.dir, self.db)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_the_audit_log() {
    let s = start("").await;
    let p = s.port;
    // Open paths.
    assert_eq!(request(p, "GET", "/api/v1/health", None, b"").await.0, 200);
    assert_eq!(request(p, "GET", "/assets/app.js", None, b"").await.0, 200);
    assert_eq!(request(p, "GET", "/", None, b"").await.0, 200);
    // No token, an unknown token.
    let (st, body) = request(p, "GET", "/api/v1/alarms", None, b"").await;
    assert_eq!(st, 401, "{body}");
    let (st, _) = request(p, "GET", "/api/v1/alarms", Some("qn_guess"), b"").await;
    assert_eq!(st, 401);
    let (st, _) = request(p, "POST", "/api/v1/registry", None, REGISTRY.as_bytes()).await;
    assert_eq!(st, 401);
    // A viewer reads, but may not change the registry.
    let (st, body) = request(p, "GET", "/api/v1/alarms", Some(&s.viewer), b"").await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = request(
        p,
        "POST",
        "/api/v1/registry",
        Some(&s.viewer),
        REGISTRY.as_bytes(),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("admin"), "{body}");
    // Nothing was imported by the refused requests.
    let (st, _) = request(
        p,
        "GET",
        "/api/v1/households/hh-1/seasons/2025-2026",
        Some(&s.viewer),
        b"",
    )
    .await;
    assert_eq!(st, 404);
    // Personal fields are not part of the registry: a CSV carrying them is refused and
    // their values are not echoed back.
    let personal = REGISTRY
        .replacen("max_power_w", "max_power_w,name,phone", 1)
        .replace("gw-1,\n", "gw-1,,张三,13800138000\n");
    let (st, body) = request(
        p,
        "POST",
        "/api/v1/registry",
        Some(&s.admin),
        personal.as_bytes(),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body.contains("phone") && !body.contains("13800138000") && !body.contains("张三"),
        "{body}"
    );
    // The admin imports; the audit log names her.
    let (st, body) = request(
        p,
        "POST",
        "/api/v1/registry",
        Some(&s.admin),
        REGISTRY.as_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"households_added\":1"), "{body}");
    let (st, body) = request(
        p,
        "GET",
        "/api/v1/households/hh-1/seasons/2025-2026",
        Some(&s.viewer),
        b"",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // Injection-shaped parameters: 400 or 404, never data nor a 500.
    for (path, want) in [
        (
            "/api/v1/households/hh-1'%20OR%20'1'='1/seasons/2025-2026",
            404,
        ),
        (
            "/api/v1/seasons/2025-2026'%3B%20DROP%20TABLE%20readings--/statements",
            400,
        ),
        ("/api/v1/households/hh-1/nights?season=2025'--", 400),
        ("/api/v1/households/hh-1/nights/2025-11-01%00", 400),
        ("/api/v1/gateways/gw-1'%20OR%201=1--", 404),
        (
            "/api/v1/households/..%2F..%2Fetc%2Fpasswd/seasons/2025-2026",
            404,
        ),
    ] {
        let (st, body) = request(p, "GET", path, Some(&s.viewer), b"").await;
        assert_eq!(st, want, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
    }
    let (st, body) = request(
        p,
        "GET",
        "/api/v1/seasons/2025-2026/statements?district='%20OR%20'1'='1",
        Some(&s.viewer),
        b"",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(!body.contains("hh-1"), "a quoted filter matched: {body}");
    // Oversized bodies: declared past the registry limit, and past the small limit elsewhere.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", p))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/registry HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        s.admin,
        64 * 1024 * 1024 + 1
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = sock.read_to_end(&mut buf).await;
    assert_eq!(parse(&buf).0, 413, "{}", String::from_utf8_lossy(&buf));
    let big = vec![b'x'; 200 * 1024];
    let (st, _) = request(p, "POST", "/api/v1/alarms", Some(&s.admin), &big).await;
    assert_eq!(st, 413);

    let (_dir, db) = s.stop().await;
    let store = Store::open(&db).await.unwrap();
    let log = store.audit_log().await.unwrap();
    let by_api: Vec<_> = log.iter().filter(|e| e.source.starts_with("api")).collect();
    assert!(!by_api.is_empty(), "{log:?}");
    assert!(
        by_api.iter().all(|e| e.source == "api:alice"),
        "every API change names the token: {by_api:?}"
    );
    assert!(by_api
        .iter()
        .any(|e| e.entity == "household" && e.entity_key == "hh-1" && e.action == "insert"));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_client() {
    let s = start("rate_per_s = 1\nrate_burst = 5\n").await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            request(s.port, "GET", "/api/v1/alarms", Some(&s.viewer), b"")
                .await
                .0,
        );
    }
    let ok = codes.iter().filter(|&&c| c == 200).count();
    let limited = codes.iter().filter(|&&c| c == 429).count();
    // Five at once; at most one more refilled while the loop ran.
    assert!((5..=6).contains(&ok) && ok + limited == 8, "{codes:?}");
    // Even the open paths count (they are where a flood would go).
    assert_eq!(
        request(s.port, "GET", "/api/v1/health", None, b"").await.0,
        429
    );
    s.stop().await;
}

#[test]
fn without_tokens_the_api_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml_str(&format!(
        "[http]\nlisten = \"0.0.0.0:0\"\n[store]\nurl = \"sqlite://{}/x.db\"\n",
        dir.path().display()
    ))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(qingnuan_server::start_with_clock(cfg, Arc::new(Fixed(NOW))))
        .err()
        .expect("a non-loopback listen without tokens must be refused")
        .to_string();
    assert!(
        e.contains("http.listen") && e.contains("auth.tokens_file"),
        "{e}"
    );
}

#[test]
fn token_add_prints_the_token_once_and_stores_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let add = |name: &str, role: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qingnuan-server"))
            .args(["token", "add", "--name", name, "--role", role, "--file"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = add("ops-li", "operator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("qn_") && token.len() == 67, "{token}");
    let entries = qingnuan_server::http::auth::load_tokens(&file).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].name.as_str(), entries[0].role),
        ("ops-li", Role::Operator)
    );
    assert_eq!(
        entries[0].sha256,
        qingnuan_server::http::auth::hash_token(&token)
    );
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&token));
    let out = add("x", "root");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("viewer, operator or admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_and_peers_are_known() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    let app = axum::Router::new().route(
        "/peer",
        axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
            peer.ip().to_string()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(qingnuan_server::http::serve::serve_with(
        listener,
        app,
        rx,
        Duration::from_millis(500),
    ));
    assert_eq!(
        request(port, "GET", "/peer", None, b"").await,
        (200, "127.0.0.1".to_string())
    );
    // A head that never ends: the server hangs up after the timeout.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client was not cut off");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after stop")
        .unwrap();
}

/// `[auth] request_timeout_s` and the body limits on the accept loop the server uses: a slow
/// handler and a body that stops arriving both get 503 after the timeout; a chunked body
/// (no Content-Length to refuse up front) past 64 KiB gets 413 as it is read, one under it
/// gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_and_chunked_bodies_are_limited() {
    use qingnuan_server::http::auth::{protect, AuthConfig, Guard, OTHER_MAX_BYTES};
    let app = axum::Router::new()
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    let guard = Guard::new(&AuthConfig {
        request_timeout_s: 1,
        ..AuthConfig::default()
    })
    .unwrap();
    let app = protect(app, Arc::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(qingnuan_server::http::serve::serve_with(
        listener,
        app,
        rx,
        Duration::from_secs(10),
    ));
    // A slow handler.
    let started = std::time::Instant::now();
    let (status, body) = request(port, "GET", "/slow", None, b"").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("timed out"), "{body}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // A body that promises 100 bytes and sends 10.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer before the client gives up")
        .unwrap();
    assert_eq!(parse(&buf[..n]).0, 503);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Chunked bodies: one chunk each, just over and just under the limit.
    for (size, want) in [(OTHER_MAX_BYTES + 1, 413), (OTHER_MAX_BYTES - 1, 200)] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{size:x}\r\n"
        );
        // The server may answer and close before the whole body is written.
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&vec![b'x'; size]).await;
        let _ = s.write_all(b"\r\n0\r\n\r\n").await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let (status, body) = parse(&buf);
        assert_eq!(status, want, "{size} bytes: {body}");
        if want == 200 {
            assert_eq!(body, size.to_string());
        }
    }
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after stop")
        .unwrap();
}
