//! VictoriaMetrics for the sink's tests: a real time-series server that speaks InfluxDB 2's
//! `/api/v2/write`, started on an ephemeral loopback port with its data in a temporary
//! directory, stoppable and restartable on the same port and data, killed on drop; and its
//! export API read back as series.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `victoria-metrics` package installs the server.
pub const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";

/// A VictoriaMetrics owned by a test.
#[derive(Debug)]
pub struct Vm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// One exported series: its labels (`__name__` is `measurement_field`) and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels: the point's tags and `__name__`.
    pub labels: BTreeMap<String, String>,
    /// (UTC Unix milliseconds, value), in time order; the sink writes only integers.
    pub samples: Vec<(i64, i64)>,
}

impl Vm {
    /// Starts one on a free port.
    pub fn start() -> Vm {
        Self::start_on(qingnuan_tests::broker::free_port().unwrap())
    }

    /// A stopped one that will listen on `port` (a sink can point at it before it runs).
    pub fn stopped_on(port: u16) -> Vm {
        Vm {
            dir: tempfile::tempdir().unwrap(),
            port,
            child: None,
        }
    }

    /// Starts one on `port`.
    pub fn start_on(port: u16) -> Vm {
        let mut vm = Self::stopped_on(port);
        vm.launch();
        vm
    }

    /// Starts (again) on the same port and data.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("vm.log")).unwrap();
        let child = Command::new(VICTORIA_METRICS)
            .arg("-retentionPeriod=100y")
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/victoria-metrics (Debian package victoria-metrics)");
        self.child = Some(child);
        qingnuan_tests::broker::wait_for_port(self.port, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// Stops it with SIGTERM (VictoriaMetrics then flushes what it holds in memory; a
    /// SIGKILL would lose its last seconds, which is its durability, not the sink's) and
    /// waits for the port to close.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vm.log")).unwrap_or_default()
    }

    /// Every series whose name matches the regex `name_re`, from `/api/v1/export` (after
    /// a forced flush, so what was written is searchable).
    pub async fn export(&self, name_re: &str) -> Vec<Series> {
        let _ = crate::common::http_get(self.port, "/internal/force_flush").await;
        let selector = format!("{{__name__=~\"{name_re}\"}}");
        let path = format!(
            "/api/v1/export?match[]={}&start=0",
            percent_encode(&selector)
        );
        let Some((200, body)) = crate::common::http_get(self.port, &path).await else {
            return Vec::new();
        };
        let mut out: Vec<Series> = body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let labels = v["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let ts = v["timestamps"].as_array().unwrap();
                let vals = v["values"].as_array().unwrap();
                let mut samples: Vec<(i64, i64)> = ts
                    .iter()
                    .zip(vals)
                    .map(|(t, v)| {
                        let v = v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"));
                        (t.as_i64().unwrap(), v)
                    })
                    .collect();
                samples.sort_by_key(|s| s.0);
                Series { labels, samples }
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
