//! The Grafana provisioning in `deploy/grafana`: the dashboard JSON is valid, every panel
//! uses the provisioned InfluxDB (Flux) datasource, and its queries name only measurements,
//! fields and tags the sink writes (the names come from `sink::schema`, the code's truth).

use std::collections::BTreeSet;
use std::path::PathBuf;

use qingnuan_server::sink::schema::MEASUREMENTS;
use serde_json::Value;

fn deploy(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The string literals following `needle` in `query` (`r._field == "wh"` → `wh`).
fn literals_after(query: &str, needle: &str) -> Vec<String> {
    query
        .match_indices(needle)
        .filter_map(|(i, _)| {
            let rest = query.get(i + needle.len()..)?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// Columns named in `group(columns: [...])`.
fn group_columns(query: &str) -> Vec<String> {
    query
        .match_indices("group(columns: [")
        .flat_map(|(i, m)| {
            let rest = &query[i + m.len()..];
            let list = rest.split(']').next().unwrap_or("");
            list.split(',')
                .map(|c| c.trim().trim_matches('"').to_string())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Checks one Flux query against the sink's schema: it names at least one measurement and
/// field, all written by the sink, and groups only by tags of those measurements.
fn check_query(query: &str) -> Result<(), String> {
    let ms = literals_after(query, "r._measurement ==");
    let fs = literals_after(query, "r._field ==");
    if ms.is_empty() || fs.is_empty() {
        return Err(format!("names no measurement or no field: {query}"));
    }
    let mut fields = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for m in &ms {
        let (_, f, t) = MEASUREMENTS
            .iter()
            .find(|(name, _, _)| name == m)
            .ok_or_else(|| format!("measurement {m:?} is not written by the sink"))?;
        fields.extend(f.iter().copied());
        tags.extend(t.iter().copied());
    }
    for f in &fs {
        if !fields.contains(f.as_str()) {
            return Err(format!("field {f:?} is not a field of {ms:?}"));
        }
    }
    for c in group_columns(query) {
        if !tags.contains(c.as_str()) && c != "_measurement" && c != "_field" {
            return Err(format!("group column {c:?} is not a tag of {ms:?}"));
        }
    }
    if !query.contains("from(bucket: v.defaultBucket)") {
        return Err(format!("not reading the datasource's bucket: {query}"));
    }
    Ok(())
}

fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        // Panels inside collapsed rows.
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

#[test]
fn the_dashboard_queries_only_what_the_sink_writes() {
    let dash: Value =
        serde_json::from_str(&deploy("dashboards/qingnuan.json")).expect("valid JSON");
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let ds: Value =
        serde_norway::from_str(&deploy("provisioning/datasources/influxdb.yml")).unwrap();
    let source = &ds["datasources"][0];
    assert_eq!(source["type"], "influxdb");
    assert_eq!(source["jsonData"]["version"], "Flux");
    let uid = source["uid"].as_str().expect("datasource uid");

    let panels = panels(&dash);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "{title}: duplicate id"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].as_i64().is_some(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], uid, "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let q = t["query"].as_str().expect("a Flux query");
            check_query(q).unwrap_or_else(|e| panic!("{title}: {e}"));
            queries += 1;
        }
    }
    assert!(queries >= 3);
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Gateways online",
        "Heat pumps running",
        "Nightly kWh by village",
    ] {
        assert!(titles.contains(want), "no panel {want:?}: {titles:?}");
    }
}

#[test]
fn the_provider_loads_the_dashboards_directory() {
    let p: Value = serde_norway::from_str(&deploy("provisioning/dashboards/qingnuan.yml")).unwrap();
    let provider = &p["providers"][0];
    assert_eq!(provider["type"], "file");
    // docker-compose.yml mounts deploy/grafana/dashboards there.
    assert_eq!(provider["options"]["path"], "/var/lib/grafana/dashboards");
}

#[test]
fn the_check_refuses_names_the_sink_does_not_write() {
    let ok = "from(bucket: v.defaultBucket)\n |> filter(fn: (r) => r._measurement == \"qn_night\" and r._field == \"wh\")\n |> group(columns: [\"village\"])";
    assert_eq!(check_query(ok), Ok(()));
    for (bad, why) in [
        (ok.replace("qn_night", "qn_nights"), "measurement"),
        (ok.replace("\"wh\"", "\"kwh\""), "field"),
        (ok.replace("[\"village\"]", "[\"town\"]"), "group column"),
        (ok.replace("r._field == \"wh\"", "true"), "names no"),
    ] {
        let e = check_query(&bad).unwrap_err();
        assert!(e.contains(why), "{why}: {e}");
    }
}
