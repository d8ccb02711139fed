//! TLS on both sides against Mosquitto's TLS listener from `deploy/mosquitto/` (CA and
//! broker certificate made by rcgen at test time): the server (`mqtts://`, `ca_file`) and
//! an agent with the right CA get readings through; an agent given another CA refuses
//! the broker's certificate (and says so), so nothing of it arrives.

mod deploy_broker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deploy_broker::{DeployBroker, TlsFiles};
use qingnuan_server::config::Config;
use qingnuan_server::registry;
use qingnuan_server::store::Store;
use qingnuan_shared::clock::SystemClock;
use qingnuan_shared::policy::Policy;
use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, AgentProcess};
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// A self-signed CA: (certificate, key pair).
fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.self_signed(&key).unwrap(), key)
}

/// CA, broker certificate for 127.0.0.1 signed by it, and an unrelated CA's certificate.
fn make_certs(dir: &Path) -> (TlsFiles, std::path::PathBuf) {
    let (ca_cert, ca_key) = ca("qingnuan test CA");
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let (other, _) = ca("qingnuan other CA");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.ca, ca_cert.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    (files, other_ca)
}

const REGISTRY: &str = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
    hh-t,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,123456781012,2020-10-01,,gw-tls,\n\
    hh-x,怀柔区,雁栖镇,下辛庄村,100,air_source_heat_pump,123456781013,2020-10-01,,gw-x,\n";

async fn wait(what: &str, secs: u64, mut cond: impl AsyncFnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_the_right_ca_and_refused_with_another() {
    let certs = tempfile::tempdir().unwrap();
    let (files, other_ca) = make_certs(certs.path());
    let broker = DeployBroker::start(&["qingnuan-server", "gw-tls", "gw-x"], Some(&files));
    let tls_port = broker.tls_port.unwrap();
    let url = format!("mqtts://127.0.0.1:{tls_port}");

    // The server over TLS.
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nurl = \"{url}\"\nclient_id = \"qingnuan-server\"\n\
         username = \"qingnuan-server\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\n\
         [store]\nurl = \"sqlite://{}/tls.db\"\n",
        broker.password_file("qingnuan-server").display(),
        files.ca.display(),
        dir.path().display()
    );
    let config = Config::from_toml_str(&cfg).unwrap();
    let store = Store::open(&config.store.url).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    registry::import(
        &store,
        REGISTRY.as_bytes(),
        &Policy::beijing_2018(),
        "test",
        now,
    )
    .await
    .unwrap();
    let running = qingnuan_server::start_with_clock(config, Arc::new(SystemClock))
        .await
        .unwrap();

    // Two agents with the right password each; only their CA differs.
    let sim = Dlt645Sim::new(&[
        ("123456781012", SimMeter::new(7_654_320, Some(1_000), 900)),
        ("123456781013", SimMeter::new(1_000_000, Some(1_000), 900)),
    ])
    .unwrap();
    let tcp = sim.serve_tcp().await.unwrap();
    let agent = |gw: &str, meter: &str, ca: &Path| -> AgentProcess {
        let sub = dir.path().join(gw);
        std::fs::create_dir_all(&sub).unwrap();
        let bus = dlt645_tcp_bus(&tcp.address(), &[meter]);
        let mut cfg = AgentConfig::new(gw, &url, &sub.join("spool"), &bus);
        cfg.mqtt_extra = format!(
            "username = \"{gw}\"\npassword_file = \"{}\"\nca_file = \"{}\"",
            broker.password_file(gw).display(),
            ca.display()
        );
        AgentProcess::start(&cfg.write(&sub).unwrap(), None).unwrap()
    };
    let good = agent("gw-tls", "123456781012", &files.ca);
    let bad = agent("gw-x", "123456781013", &other_ca);

    let st = store.clone();
    wait("gw-tls's readings stored via TLS", 30, async || {
        st.gateway_state("gw-tls")
            .await
            .unwrap()
            .is_some_and(|(state, _)| state.as_deref() == Some("online"))
            && st.reading_counts().await.unwrap().0 > 0
    })
    .await;
    let _ = &good;
    // Give gw-x every chance: several reconnect attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = bad.log();
    assert!(
        log.to_lowercase().contains("certificate") || log.contains("UnknownIssuer"),
        "the agent should say it refused the certificate:\n{log}"
    );
    assert_eq!(
        store
            .gateway_state("gw-x")
            .await
            .unwrap()
            .and_then(|(state, _)| state),
        None,
        "nothing of gw-x arrived"
    );
    assert!(
        broker.log().contains("alert unknown ca") && !broker.log().contains("u'gw-x'"),
        "gw-x never logged in:\n{}",
        broker.log()
    );
    assert!(broker.log().contains("u'gw-tls'"), "{}", broker.log());
    running.stop().await;
}
