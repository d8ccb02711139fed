//! A real Mosquitto for tests: started on an ephemeral loopback port with its own
//! temporary directory (config, persistence, log), restartable with the same
//! persistence, killable with SIGKILL, and killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Where Mosquitto is installed (Debian package).
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A running (or stopped) Mosquitto broker owned by a test.
#[derive(Debug)]
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    extra: String,
    child: Option<Child>,
}

/// A free loopback TCP port for a program a test starts: bound once to check, then
/// released. Taken below the kernel's ephemeral range (`ip_local_port_range`), so no
/// outgoing connection can take it before the program binds it (a port from `bind(0)`
/// can: CI saw chromedriver's port answered by someone else), and never the same twice in
/// one process. Falls back to `bind(0)` when that range leaves no room.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let base = low.saturating_sub(12_000).max(10_000);
    if low > base {
        let span = low - base;
        // One start per process (test binaries run one after another, but spread them
        // anyway); from it, consecutive ports.
        static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            std::process::id().wrapping_mul(7_919)
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
        });
        for _ in 0..span {
            let k = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = base + (seed % span + k % span) % span;
            let Ok(port) = u16::try_from(port) else { break };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `port` on loopback accepts a TCP connection.
pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

impl Broker {
    /// Starts Mosquitto with anonymous access and persistence.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with("")
    }

    /// Starts Mosquitto with `extra` lines appended to its config (ACLs, password files, …).
    pub fn start_with(extra: &str) -> anyhow::Result<Self> {
        let mut b = Broker {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            extra: extra.to_owned(),
            child: None,
        };
        // The port is free when picked but could be taken before Mosquitto binds it: retry.
        let mut attempt = 0;
        loop {
            match b.launch() {
                Ok(()) => return Ok(b),
                Err(e) if attempt >= 4 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    b.port = free_port()?;
                }
            }
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
             log_dest file {dir}/mosquitto.log\nlog_type all\nuser root\nmax_queued_messages 100000\n{extra}\n",
            port = self.port,
            dir = d.display(),
            extra = self.extra
        );
        std::fs::write(self.config_path(), conf)?;
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {MOSQUITTO}"))?;
        self.child = Some(child);
        if let Err(e) = wait_for_port(self.port, Duration::from_secs(10)) {
            self.kill9();
            return Err(e.context(format!("mosquitto log:\n{}", self.log())));
        }
        Ok(())
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:{port}`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's directory (config, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the broker cleanly (SIGTERM; it saves its persistence) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the broker with SIGKILL (no persistence save) and waits.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port with the same persistence directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // The port can linger a moment after the old process exits.
                Err(e) if Instant::now() > end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports handed out are below the kernel's ephemeral range, never the same twice, and
    /// free when handed out.
    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = free_port().unwrap();
            assert!(p < low, "{p} is in the ephemeral range from {low}");
            assert!(seen.insert(p), "{p} handed out twice");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
