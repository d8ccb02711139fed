//! `mqtts://` with a CA file and per-gateway credentials against a real Mosquitto TLS
//! listener (certificates made by openssl for the test): the right password gets the
//! readings through, a wrong one gets nothing through.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qingnuan_tests::agent_proc::{dlt645_tcp_bus, AgentConfig, AgentProcess, Collector};
use qingnuan_tests::broker::{free_port, Broker};
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

fn run(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        st.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) -> anyhow::Result<()> {
    run(
        dir,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=qingnuan-test-ca",
        ],
    )?;
    run(
        dir,
        &[
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(
        dir,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_ca_file_and_password() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let c = certs.path();
    make_certs(c)?;
    run(
        c,
        &[
            "mosquitto_passwd",
            "-c",
            "-b",
            "passwd",
            "gw-tls",
            "s3cret-pass",
        ],
    )?;
    let tls_port = free_port()?;
    let extra = format!(
        "password_file {d}/passwd\nlistener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        d = c.display()
    );
    let broker = Broker::start_with(&extra)?;
    let sim = Dlt645Sim::new(&[("123456781012", SimMeter::new(7_654_320, Some(1_000), 900))])?;
    let tcp = sim.serve_tcp().await?;
    let collector = Collector::start(&broker.url(), "qn/v1/gw/+/readings").await?;

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("good.secret"), "s3cret-pass\n")?;
    std::fs::write(dir.path().join("bad.secret"), "guess\n")?;
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let bus = dlt645_tcp_bus(&tcp.address(), &["123456781012"]);
    let agent_with = |gw: &str, secret: &str, sub: &str| -> anyhow::Result<AgentProcess> {
        let sub_dir = dir.path().join(sub);
        std::fs::create_dir_all(&sub_dir)?;
        let mut cfg = AgentConfig::new(gw, &url, &sub_dir.join("spool"), &bus);
        cfg.mqtt_extra = format!(
            "username = \"gw-tls\"\npassword_file = \"{}\"\nca_file = \"{}/ca.pem\"",
            dir.path().join(secret).display(),
            c.display()
        );
        AgentProcess::start(&cfg.write(&sub_dir)?, None)
    };
    let good = agent_with("gw-tls", "good.secret", "good")?;
    let bad = agent_with("gw-tls-bad", "bad.secret", "bad")?;
    collector
        .wait_for(Duration::from_secs(30), "a batch over TLS", |c| {
            c.batches().iter().any(|b| b.gw.as_str() == "gw-tls")
        })
        .await
        .map_err(|e| e.context(good.log()).context(broker.log()))?;
    let b = collector
        .batches()
        .into_iter()
        .find(|b| b.gw.as_str() == "gw-tls")
        .ok_or_else(|| anyhow::anyhow!("none"))?;
    assert_eq!(b.readings[0].e_wh, Some(7_654_320));
    // The wrong password never gets a batch through, and the agent keeps its readings spooled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !collector
            .batches()
            .iter()
            .any(|b| b.gw.as_str() == "gw-tls-bad"),
        "{}",
        bad.log()
    );
    assert!(
        bad.log().contains("cannot reach the broker"),
        "{}",
        bad.log()
    );
    Ok(())
}
