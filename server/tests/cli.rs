//! The command line: errors name the config key and line, the CSV row and column, and the
//! missing broker; nothing is imported from a broken registry file.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_qingnuan-server");

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\nqos = 1\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["--config", "bad.toml"], dir.path());
    assert!(!ok);
    assert!(
        err.contains("bad.toml: line 6") && err.contains("qos"),
        "{err}"
    );
    // plain `--config` and `run --config` are the same command (without `[mqtt] url` the
    // embedded broker serves, and it refuses to listen beyond loopback)
    std::fs::write(
        dir.path().join("nobroker.toml"),
        "[mqtt]\nembedded_listen = \"0.0.0.0:1883\"\n\n[store]\nurl = \"sqlite://./x.db\"\n",
    )
    .unwrap();
    for args in [
        &["--config", "nobroker.toml"][..],
        &["run", "--config", "nobroker.toml"][..],
    ] {
        let (ok, _, err) = run(args, dir.path());
        assert!(!ok);
        assert!(
            err.contains("mqtt.embedded_listen") && err.contains("embedded broker"),
            "{err}"
        );
    }
    let (ok, _, err) = run(&["run"], dir.path());
    assert!(!ok && err.contains("--config"), "{err}");
}

/// A directory holding `s.toml`, a config whose store is `./data/s.db`.
fn with_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("s.toml"),
        "[store]\nurl = \"sqlite://./data/s.db\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn registry_import_reports_row_and_column() {
    let dir = with_config();
    let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
               hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-1,\n\
               hh-2,d,t,v,100,hp,m2,2025-10-01,,gw 2,\n";
    std::fs::write(dir.path().join("r.csv"), csv).unwrap();
    let (ok, _, err) = run(
        &["registry", "import", "--config", "s.toml", "r.csv"],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("row 3, column gateway"), "{err}");
    // fixed, it imports; the store file was created with its directory
    std::fs::write(dir.path().join("r.csv"), csv.replace("gw 2", "gw-2")).unwrap();
    let (ok, out, err) = run(
        &["registry", "import", "--config", "s.toml", "r.csv"],
        dir.path(),
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["households_added"].as_i64(), v["gateways_added"].as_i64()),
        (Some(2), Some(2))
    );
    assert!(dir.path().join("data/s.db").exists());
    let (ok, _, err) = run(
        &["export", "--config", "s.toml", "--season", "2025-26"],
        dir.path(),
    );
    assert!(!ok && err.contains("YYYY-YYYY"), "{err}");
}

#[test]
fn settle_reports_its_cut_and_then_registry_changes_before_it_are_refused() {
    let dir = with_config();
    let csv = "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n\
               hh-1,d,t,v,100,hp,m1,2025-10-01,,gw-1,\n";
    std::fs::write(dir.path().join("r.csv"), csv).unwrap();
    let (ok, _, err) = run(
        &["registry", "import", "--config", "s.toml", "r.csv"],
        dir.path(),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &["settle", "--config", "s.toml", "--before", "2025-13-01"],
        dir.path(),
    );
    assert!(!ok && err.contains("--before"), "{err}");
    let (ok, _, err) = run(
        &["settle", "--config", "s.toml", "--before", "2999-01-01"],
        dir.path(),
    );
    assert!(!ok && err.contains("has not passed yet"), "{err}");
    let (ok, out, err) = run(
        &["settle", "--config", "s.toml", "--before", "2025-11-06"],
        dir.path(),
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 2025-11-06 08:00 +08:00
    assert_eq!(v["cut"].as_i64(), Some(1_762_387_200), "{out}");
    assert_eq!(v["households"].as_i64(), Some(1), "{out}");
    std::fs::write(
        dir.path().join("r.csv"),
        csv.replace("2025-10-01", "2025-10-20"),
    )
    .unwrap();
    let (ok, _, err) = run(
        &["registry", "import", "--config", "s.toml", "r.csv"],
        dir.path(),
    );
    assert!(
        !ok && err.contains("row 2, column meter_from") && err.contains("settled cut"),
        "{err}"
    );
}
