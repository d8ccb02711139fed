//! The real `qingnuan-server` as a child process: built once through cargo, configured
//! with a SQLite store in the test's directory, started (with an accelerated clock),
//! killed with SIGKILL and started again on the same store; plus a tiny HTTP GET.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent_proc::workspace_root;

/// Builds `qingnuan-server` (debug) once per test process and returns its path; respects
/// `CARGO_TARGET_DIR`, and a clean clone builds it on first use.
pub fn server_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build("qingnuan-server"))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build(package: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", package, "--bin", package])
        .current_dir(&root);
    // As in `agent_proc`: cargo's variables for this test process would make build
    // scripts think their environment changed; give the build a clean one.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let keep = matches!(
            k.as_str(),
            "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_BUILD_JOBS"
        );
        if (k.starts_with("CARGO_") && !keep) || k == "LD_LIBRARY_PATH" || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p {package} failed: {status}"));
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug").join(package);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} missing after the build", bin.display()))
    }
}

/// A server process with its config; SIGKILLed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl ServerProcess {
    /// Writes `server.toml` in `dir` (store `dir/server.db`, API on `http_port`).
    pub fn configure(dir: &Path, broker_url: &str, http_port: u16) -> anyhow::Result<Self> {
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n[mqtt]\nurl = \"{broker_url}\"\n\
             client_id = \"qingnuan-server-village\"\nkeep_alive_s = 5\n\n\
             [store]\nurl = \"sqlite://{}/server.db\"\n\n\
             # Processes start their accelerated clocks a few real ms apart: minutes simulated.\n\
             [ingest]\nfuture_tolerance_s = 3600\n",
            dir.display()
        );
        let config = dir.join("server.toml");
        std::fs::write(&config, text)?;
        Ok(Self {
            config,
            port: http_port,
            child: None,
        })
    }

    /// `qingnuan-server registry import --config … FILE` with the given clock.
    pub fn import_registry(&self, csv: &Path, clock: &str) -> anyhow::Result<()> {
        let out = Command::new(server_bin()?)
            .args(["registry", "import", "--config"])
            .arg(&self.config)
            .arg(csv)
            .env(qingnuan_shared::clock::CLOCK_ENV, clock)
            .output()
            .context("running registry import")?;
        anyhow::ensure!(
            out.status.success(),
            "registry import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts `qingnuan-server run` (appending to `server.log`) and waits for `/api/v1/health`.
    pub async fn start(&mut self, clock: &str) -> anyhow::Result<()> {
        let log = self.config.with_extension("log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(server_bin()?)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env(qingnuan_shared::clock::CLOCK_ENV, clock)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("spawning qingnuan-server")?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.get("/api/v1/health").await {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < end, "server not healthy: {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    /// `GET path`: (status, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.port, path).await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET path` over HTTP/1.0 on loopback: (status, body).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
