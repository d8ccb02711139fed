//! The deploy stack without a Docker engine: `deploy/docker-compose.yml` parses, every
//! bind-mounted host path exists, the secrets it names are what `init-secrets.sh` makes,
//! the Dockerfile builds the binary that exists, the server config in `deploy/` is
//! accepted by the server's own loaders, the Grafana and Mosquitto files point at paths
//! the compose file mounts, and the systemd unit runs the server hardened.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use qingnuan_server::config::Config;
use qingnuan_server::feed::FeedConfig;
use serde_norway::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn compose() -> Value {
    serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml parses")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// (host source, container target) of a service's short-syntax volumes.
fn mounts(service: &Value) -> Vec<(String, String)> {
    strs(&service["volumes"])
        .iter()
        .map(|v| {
            let mut parts = v.splitn(3, ':');
            let src = parts.next().unwrap().to_string();
            let dst = parts
                .next()
                .unwrap_or_else(|| panic!("volume {v}: no target"))
                .to_string();
            (src, dst)
        })
        .collect()
}

fn is_host_path(src: &str) -> bool {
    src.starts_with('.') || src.starts_with('/')
}

#[test]
fn compose_parses_and_every_mounted_file_exists() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for s in ["mosquitto", "influxdb", "grafana", "qingnuan-server"] {
        assert!(names.contains(s), "service {s}");
    }
    assert!(c["services"]["influxdb"]["image"]
        .as_str()
        .unwrap()
        .starts_with("influxdb:2"));
    let named: BTreeSet<String> = c["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let secrets: BTreeSet<String> = c["secrets"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let mut missing = Vec::new();
    for (name, svc) in services {
        for (src, _) in mounts(svc) {
            if is_host_path(&src) {
                if !deploy().join(&src).exists() {
                    missing.push(format!("{}: {src}", name.as_str().unwrap()));
                }
            } else {
                assert!(named.contains(&src), "volume {src} is declared");
            }
        }
        for s in strs(&svc["secrets"]) {
            assert!(secrets.contains(&s), "secret {s} is declared");
        }
    }
    assert!(missing.is_empty(), "missing host paths: {missing:?}");
    // The Dockerfile the server is built from.
    let build = &c["services"]["qingnuan-server"]["build"];
    let ctx = deploy().join(build["context"].as_str().unwrap());
    assert!(ctx.join(build["dockerfile"].as_str().unwrap()).is_file());
    assert!(
        ctx.join("Cargo.lock").is_file(),
        "--locked needs the lock file in the context"
    );
}

#[test]
fn init_secrets_makes_every_secret_the_stack_mounts() {
    let c = compose();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .arg(deploy().join("init-secrets.sh"))
        .env("SECRETS_DIR", tmp.path())
        .env("QN_SKIP_MOSQUITTO_PASSWD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, s) in c["secrets"].as_mapping().unwrap() {
        let file = s["file"].as_str().unwrap();
        let rel = file
            .strip_prefix("./secrets/")
            .unwrap_or_else(|| panic!("{file}"));
        let made = std::fs::read_to_string(tmp.path().join(rel)).unwrap();
        assert!(made.trim().len() >= 32, "{name:?}: {made:?}");
    }
    let tokens = qingnuan_server::http::auth::load_tokens(&tmp.path().join("api_tokens.toml"))
        .expect("the tokens file loads");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].sha256.len(), 64);
    // Run again: nothing is replaced.
    let before = std::fs::read(tmp.path().join("feed_key")).unwrap();
    let out = std::process::Command::new("sh")
        .arg(deploy().join("init-secrets.sh"))
        .env("SECRETS_DIR", tmp.path())
        .env("QN_SKIP_MOSQUITTO_PASSWD", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(tmp.path().join("feed_key")).unwrap(), before);
}

#[test]
fn the_dockerfile_builds_the_server_binary_and_runs_it_unprivileged() {
    let df = read("Dockerfile");
    let froms = df.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage");
    assert!(df.contains("cargo build --release -p qingnuan-server --locked"));
    let cargo: toml::Table =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(cargo["package"]["name"].as_str(), Some("qingnuan-server"));
    let bins: Vec<&str> = cargo["bin"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(bins.contains(&"qingnuan-server"));
    assert!(df.contains("target/release/qingnuan-server"));
    assert!(df.contains("ENTRYPOINT [\"/usr/local/bin/qingnuan-server\"]"));
    let user = df
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    let ignore = read("Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

#[test]
fn the_server_config_is_accepted_and_wired_to_the_stack() {
    let c = compose();
    let svc = &c["services"]["qingnuan-server"];
    let command = strs(&svc["command"]);
    let at = command.iter().position(|a| a == "--config").unwrap();
    let config_path = &command[at + 1];
    let m = mounts(svc);
    let (src, _) = m
        .iter()
        .find(|(_, dst)| dst == config_path)
        .expect("config mounted");
    let text = std::fs::read_to_string(deploy().join(src)).unwrap();
    let cfg = Config::from_toml_str(&text).expect("server.compose.toml parses");
    let feed = FeedConfig::from_table(cfg.feed.as_ref().expect("[feed]")).expect("[feed]");
    let influx =
        qingnuan_server::sink::InfluxConfig::from_table(cfg.influxdb.as_ref().expect("[influxdb]"))
            .expect("[influxdb]");
    let auth = qingnuan_server::http::auth::AuthConfig::of(&cfg).expect("[auth]");
    assert!(
        auth.tokens_file.is_some(),
        "listening beyond loopback needs tokens"
    );
    // Services by their compose names.
    let services: BTreeSet<&str> = c["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    let broker = cfg.broker().unwrap();
    assert!(services.contains(broker.host.as_str()), "{}", broker.host);
    let influx_host = influx
        .url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap();
    assert!(services.contains(influx_host), "{influx_host}");
    // Every secret file the config names is a secret of this service.
    let mine: BTreeSet<String> = strs(&svc["secrets"]).into_iter().collect();
    let mut files: Vec<PathBuf> = vec![feed.key_file.clone(), influx.token_file.clone()];
    files.extend(cfg.mqtt.password_file.clone());
    files.extend(auth.tokens_file.clone());
    for f in &files {
        let name = f
            .strip_prefix("/run/secrets")
            .unwrap_or_else(|_| panic!("{}", f.display()));
        assert!(mine.contains(name.to_str().unwrap()), "{}", f.display());
    }
    // The store lives on a volume.
    let db = cfg.store.url.trim_start_matches("sqlite://");
    assert!(
        m.iter()
            .any(|(src, dst)| !is_host_path(src) && db.starts_with(dst.as_str())),
        "{db}"
    );
    // The image's default command uses the same config path.
    assert!(read("Dockerfile").contains(&format!("\"--config\", \"{config_path}\"")));
}

/// `${VAR}` / `$VAR` names and `$__file{path}` paths in a Grafana provisioning file.
fn grafana_refs(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut vars, mut files) = (BTreeSet::new(), BTreeSet::new());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix("__file{") {
            files.insert(r[..r.find('}').unwrap()].to_string());
        } else if let Some(r) = rest.strip_prefix('{') {
            vars.insert(r[..r.find('}').unwrap()].to_string());
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                vars.insert(name);
            }
        }
    }
    (vars, files)
}

#[test]
fn grafana_and_mosquitto_files_point_at_mounted_paths() {
    let c = compose();
    let g = &c["services"]["grafana"];
    let env: BTreeMap<String, String> = g["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("{v:?}"));
            (k.as_str().unwrap().to_string(), v)
        })
        .collect();
    let secrets: BTreeSet<String> = strs(&g["secrets"]).into_iter().collect();
    let ds = read("grafana/provisioning/datasources/influxdb.yml");
    let _: Value = serde_norway::from_str(&ds).expect("datasource YAML");
    let (vars, files) = grafana_refs(&ds);
    for v in &vars {
        assert!(
            env.contains_key(v),
            "datasource uses ${v}, not set for grafana"
        );
    }
    for f in &files {
        let name = f
            .strip_prefix("/run/secrets/")
            .unwrap_or_else(|| panic!("{f}"));
        assert!(secrets.contains(name), "{f}");
    }
    let provider: Value =
        serde_norway::from_str(&read("grafana/provisioning/dashboards/qingnuan.yml")).unwrap();
    let gm = mounts(g);
    let (_, dash_dir) = gm
        .iter()
        .find(|(src, _)| src.trim_end_matches('/') == "./grafana/dashboards")
        .expect("dashboards mounted");
    for p in provider["providers"].as_sequence().unwrap() {
        let path = p["options"]["path"].as_str().unwrap();
        assert!(path.starts_with(dash_dir.as_str()), "{path} vs {dash_dir}");
    }
    let dash: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/qingnuan.json")).expect("dashboard JSON");
    assert!(dash.get("panels").is_some() || dash.get("dashboard").is_some());
    // Mosquitto: the files its config names are the ones mounted.
    let mm = mounts(&c["services"]["mosquitto"]);
    let conf = read("mosquitto/mosquitto.conf");
    for key in ["password_file", "acl_file"] {
        let path = conf
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("mosquitto.conf has no {key}"));
        assert!(
            mm.iter().any(|(_, dst)| dst == path),
            "{key} {path} is mounted"
        );
    }
    // The server's MQTT user exists and has an ACL.
    let server: Config = Config::from_toml_str(&read("server.compose.toml")).unwrap();
    let user = server.mqtt.username.unwrap();
    let acl = read("mosquitto/acl");
    assert!(
        acl.lines().any(|l| l.trim() == format!("user {user}")),
        "acl has user {user}"
    );
}

#[test]
fn the_systemd_unit_runs_the_server_hardened() {
    let unit = read("systemd/qingnuan-server.service");
    let mut kv: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in unit.lines().map(str::trim) {
        if let Some((k, v)) = l.split_once('=').filter(|_| !l.starts_with('#')) {
            kv.entry(k).or_default().push(v);
        }
    }
    let one = |k: &str| {
        kv.get(k)
            .and_then(|v| v.last().copied())
            .unwrap_or_default()
    };
    let exec = one("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/qingnuan-server run --config "),
        "{exec}"
    );
    assert_eq!(one("StateDirectory"), "qingnuan-server");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert!(one("DynamicUser") == "yes" || !one("User").is_empty());
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert!(unit.contains("[Install]") && one("WantedBy") == "multi-user.target");
    // The config it is meant for: accepted, its store in the StateDirectory, every secret
    // file one of the unit's credentials.
    let cfg = Config::from_toml_str(&read("systemd/server.toml")).expect("systemd/server.toml");
    assert!(exec.ends_with("/etc/qingnuan/server.toml"));
    let db = cfg.store.url.trim_start_matches("sqlite://");
    assert!(db.starts_with("/var/lib/qingnuan-server/"), "{db}");
    let feed = FeedConfig::from_table(cfg.feed.as_ref().unwrap()).unwrap();
    let influx =
        qingnuan_server::sink::InfluxConfig::from_table(cfg.influxdb.as_ref().unwrap()).unwrap();
    let auth = qingnuan_server::http::auth::AuthConfig::of(&cfg).unwrap();
    let creds: BTreeSet<&str> = kv["LoadCredential"]
        .iter()
        .map(|v| v.split(':').next().unwrap())
        .collect();
    let mut files = vec![feed.key_file, influx.token_file];
    files.extend(cfg.mqtt.password_file);
    files.extend(auth.tokens_file);
    for f in files {
        let name = f
            .strip_prefix("/run/credentials/qingnuan-server.service")
            .unwrap_or_else(|_| panic!("{}", f.display()));
        assert!(creds.contains(name.to_str().unwrap()), "{}", f.display());
    }
}

/// `deploy/server.example.toml` is accepted as shipped, and with every commented key
/// switched on (its comments document keys the server really takes).
#[test]
fn server_example_config_parses_with_every_key_on() {
    let text = read("server.example.toml");
    Config::from_toml_str(&text).expect("server.example.toml as shipped");
    let on: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.contains(' ') && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    for key in [
        "[influxdb]",
        "[feed]",
        "[auth]",
        "embedded_passwd_file",
        "share_group",
    ] {
        assert!(on.contains(key), "{key} documented");
    }
    let cfg = Config::from_toml_str(&on).unwrap_or_else(|e| panic!("every key on: {e}\n{on}"));
    assert_eq!(cfg.mqtt.share_group.as_deref(), Some("qingnuan"));
}
