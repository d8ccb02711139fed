//! A real Mosquitto configured from `deploy/mosquitto/` (its `mosquitto.conf` and `acl`,
//! paths and port rewritten into a temporary directory), with users made by
//! `mosquitto_passwd` at test time; killed on drop. Optionally with a TLS listener.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qingnuan_tests::broker::{free_port, wait_for_port, MOSQUITTO};

const DEPLOY_CONF: &str = include_str!("../../../deploy/mosquitto/mosquitto.conf");
const DEPLOY_ACL: &str = include_str!("../../../deploy/mosquitto/acl");

/// The password of user `u` in these tests.
pub fn password(user: &str) -> String {
    format!("pw-of-{user}")
}

/// TLS files for the broker's second listener: CA, certificate, key (PEM paths).
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Mosquitto from the deploy files.
pub struct DeployBroker {
    dir: tempfile::TempDir,
    /// Plain listener.
    pub port: u16,
    /// TLS listener, when started with one.
    pub tls_port: Option<u16>,
    child: Child,
}

impl DeployBroker {
    /// Starts Mosquitto with `users` (each with [`password`]) and, with `tls`, the
    /// deploy file's commented TLS listener enabled.
    pub fn start(users: &[&str], tls: Option<&TlsFiles>) -> DeployBroker {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let passwd = d.join("passwd");
        std::fs::write(&passwd, "").unwrap();
        for u in users {
            let st = Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&passwd)
                .arg(u)
                .arg(password(u))
                .status()
                .unwrap();
            assert!(st.success(), "mosquitto_passwd for {u}");
        }
        std::fs::write(d.join("acl"), DEPLOY_ACL).unwrap();
        let port = free_port().unwrap();
        let tls_port = tls.map(|_| free_port().unwrap());
        let mut conf = String::new();
        for line in DEPLOY_CONF.lines() {
            let line = line.replace("/mosquitto/config/", &format!("{}/", d.display()));
            let line = line.replace("/mosquitto/data/", &format!("{}/", d.display()));
            let out = match (line.as_str(), tls, tls_port) {
                ("listener 1883", _, _) => format!("listener {port} 127.0.0.1"),
                ("#listener 8883", Some(_), Some(p)) => format!("listener {p} 127.0.0.1"),
                (l, Some(t), _) if l.starts_with("#cafile ") => {
                    format!("cafile {}", t.ca.display())
                }
                (l, Some(t), _) if l.starts_with("#certfile ") => {
                    format!("certfile {}", t.cert.display())
                }
                (l, Some(t), _) if l.starts_with("#keyfile ") => {
                    format!("keyfile {}", t.key.display())
                }
                (l, Some(_), _) if l.starts_with("#tls_version ") => l[1..].to_string(),
                ("log_dest stdout", _, _) => format!("log_dest file {}/mosquitto.log", d.display()),
                (l, _, _) => l.to_string(),
            };
            conf.push_str(&out);
            conf.push('\n');
        }
        conf.push_str("user root\nlog_type all\n");
        let conf_path = d.join("mosquitto.conf");
        std::fs::write(&conf_path, &conf).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = DeployBroker {
            dir,
            port,
            tls_port,
            child,
        };
        for p in [Some(port), tls_port].into_iter().flatten() {
            if let Err(e) = wait_for_port(p, Duration::from_secs(10)) {
                panic!("{e}\nconfig:\n{conf}\nlog:\n{}", b.log());
            }
        }
        b
    }

    /// The broker's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Writes `user`'s password to a file (for `password_file`) and returns its path.
    pub fn password_file(&self, user: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{user}.secret"));
        std::fs::write(&p, format!("{}\n", password(user))).unwrap();
        p
    }
}

impl Drop for DeployBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT client whose event loop runs in the background, keeping what it saw.
pub struct Client {
    pub client: rumqttc::AsyncClient,
    pub seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Client`] received.
#[derive(Debug, Default)]
pub struct Seen {
    /// (topic, payload) of every PUBLISH.
    pub publishes: Vec<(String, String)>,
    /// PUBACKs.
    pub acked: u64,
    /// SUBACK return codes, in order.
    pub suback: Vec<rumqttc::SubscribeReasonCode>,
    /// The first connection error (refused login, TLS failure), as text.
    pub error: Option<String>,
    /// Whether a CONNACK with success arrived.
    pub connected: bool,
}

impl Client {
    /// Connects `id` as `user` (no credentials when `None`) to `port`, with `transport`.
    pub fn connect(
        port: u16,
        id: &str,
        user: Option<(&str, &str)>,
        transport: Option<rumqttc::Transport>,
    ) -> Client {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        if let Some((u, p)) = user {
            o.set_credentials(u, p);
        }
        if let Some(t) = transport {
            o.set_transport(t);
        }
        let (client, mut ev) = rumqttc::AsyncClient::new(o, 100);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let e = ev.poll().await;
                let failed = e.is_err();
                {
                    let mut g = s.lock().unwrap();
                    record(&mut g, e);
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Client { client, seen, task }
    }

    /// Waits (up to 10 s) until `cond` holds on what was seen.
    pub async fn wait(&self, what: &str, cond: impl Fn(&Seen) -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < end {
            if cond(&self.seen.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "timed out waiting for {what}: {:?}",
            self.seen.lock().unwrap()
        );
    }
}

fn record(g: &mut Seen, e: Result<rumqttc::Event, rumqttc::ConnectionError>) {
    use rumqttc::{Event, Packet};
    match e {
        Ok(Event::Incoming(Packet::ConnAck(_))) => g.connected = true,
        Ok(Event::Incoming(Packet::Publish(p))) => g.publishes.push((
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        )),
        Ok(Event::Incoming(Packet::PubAck(_))) => g.acked += 1,
        Ok(Event::Incoming(Packet::SubAck(a))) => g.suback.extend(a.return_codes),
        Ok(_) => {}
        Err(e) => {
            if g.error.is_none() {
                g.error = Some(e.to_string());
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
