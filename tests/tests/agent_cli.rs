//! The installer's commands on the real binary: `check-config` (OK and a summary, or the
//! error with its key and line), `probe` against a simulated line, `--version`.

use std::process::Command;

use qingnuan_tests::agent_proc::agent_bin;
use qingnuan_tests::dlt645_sim::{Dlt645Sim, SimMeter};

const GOOD: &str = r#"gateway_id = "gw-0001"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[bus]]
kind = "dlt645-tcp"
address = "127.0.0.1:8021"
meters = ["123456781012"]
"#;

#[test]
fn check_config_says_ok_or_names_key_and_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD)?;
    let out = Command::new(agent_bin()?)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("OK"), "{stdout}");
    assert!(
        stdout.contains("bus[0] dlt645-tcp 127.0.0.1:8021: 1 meters 123456781012"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        GOOD.replace(
            "address = \"127.0.0.1:8021\"",
            "address = \"127.0.0.1:8021\"\nbaud_rate = 9600",
        ),
    )?;
    let out = Command::new(agent_bin()?)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("line 9") && stderr.contains("bus[0].baud_rate"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_deploy_example_config_checks_ok() -> anyhow::Result<()> {
    let example = qingnuan_tests::agent_proc::workspace_root().join("deploy/agent.example.toml");
    let out = Command::new(agent_bin()?)
        .args(["check-config", "--config"])
        .arg(&example)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("bus[0] dlt645-serial /dev/ttyUSB0 2400 8E1: 2 meters"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn version_and_help() -> anyhow::Result<()> {
    let out = Command::new(agent_bin()?).arg("--version").output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(agent_bin()?).arg("--help").output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check-config", "probe"] {
        assert!(help.contains(word), "{help}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_finds_the_meter_on_a_point_to_point_line() -> anyhow::Result<()> {
    let sim = Dlt645Sim::new(&[(
        "123456781012",
        SimMeter::new(1_234_560, Some(456_780), 2150),
    )])?;
    let tcp = sim.serve_tcp().await?;
    let bin = agent_bin()?;
    let addr = tcp.address();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin).args(["probe", "--tcp", &addr]).output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("meter 123456781012 answered"), "{stdout}");
    assert!(
        stdout.contains("total 1234.560 kWh, valley (T4) 456.780 kWh, power 2150 W"),
        "{stdout}"
    );
    Ok(())
}
