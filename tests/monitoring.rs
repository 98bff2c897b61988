//! The monitoring configs under configs/: the alert rules pass `promtool check rules` and their own
//! unit tests (`promtool test rules`), the Prometheus config passes `promtool check config`, and
//! the Grafana dashboard and the rules use only metric names the daemon exports
//! (`telemetry::ALL`, which `tests/daemon_monitoring.rs` checks against a real scrape), in PromQL
//! that promtool parses.

#[path = "common/daemon.rs"]
mod common;
use assimd::service::telemetry;
use common::*;
use std::collections::BTreeSet;

const DASHBOARD: &str = "configs/grafana/assimd.json";
const RULES: &str = "configs/assimd-alerts.yml";

/// Every `assimd_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("assimd_") {
        let start = i + off;
        let word_start =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if word_start {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Names that are not daemon metrics: Prometheus's own `up`.
fn unknown(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| telemetry::family_of(n).is_none())
        .cloned()
        .collect()
}

/// Every `"expr"` string anywhere in the dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap())
        .expect("the dashboard is JSON")
}

#[test]
fn name_extraction_finds_names_and_flags_unknown_ones() {
    let e = "histogram_quantile(0.9, sum by (le) (rate(assimd_cycle_duration_seconds_bucket[5m]))) / assimd_nonexistent_total + xassimd_no";
    assert_eq!(
        metric_names(e),
        vec![
            "assimd_cycle_duration_seconds_bucket",
            "assimd_nonexistent_total"
        ]
    );
    assert_eq!(unknown(&metric_names(e)), vec!["assimd_nonexistent_total"]);
}

#[test]
fn dashboard_uses_only_exported_metrics_and_covers_what_operators_watch() {
    let d = dashboard();
    let mut all = Vec::new();
    exprs(&d["panels"], &mut all);
    assert!(all.len() >= 20, "{} queries", all.len());
    let names: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    assert_eq!(
        unknown(&names),
        Vec::<String>::new(),
        "the dashboard queries metrics the daemon does not export"
    );
    let used: BTreeSet<&str> = names
        .iter()
        .filter_map(|n| telemetry::family_of(n))
        .collect();
    // What the issue asks the dashboard to show.
    for must in [
        telemetry::ANALYSIS_RMSE,
        telemetry::BACKGROUND_RMSE,
        telemetry::SPREAD,
        telemetry::SPREAD_SKILL,
        telemetry::OMB_RMS,
        telemetry::OMA_RMS,
        telemetry::OMB_MEAN,
        telemetry::OMA_MEAN,
        telemetry::OBS_RECEIVED,
        telemetry::OBS_REJECTED,
        telemetry::OBS_USED,
        telemetry::OBS_WITHHELD,
        telemetry::PHASE_SECONDS,
        telemetry::CYCLE_SECONDS,
        telemetry::ORT_PROVIDER,
        telemetry::STORE_BYTES,
        telemetry::MQTT_CONNECTED,
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
    for against in ["against=\"withheld\"", "against=\"truth\""] {
        assert!(
            all.iter().any(|e| e.contains(against)),
            "no panel of skill {against}"
        );
    }

    // Importable as is: a title and uid, unique panel ids, panels inside the 24-column grid, and
    // every query's data source is the dashboard's own datasource variable.
    assert!(d["title"].is_string() && d["uid"].is_string());
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, vec!["datasource", "domain", "instance"]);
    // Every query selects the chosen domain (the fleet label of configs/prometheus.yml).
    let mut all = Vec::new();
    exprs(&d["panels"], &mut all);
    for e in &all {
        assert!(e.contains("domain=~\"$domain\""), "{e}: no domain selector");
    }
}

/// Every dashboard query, with Grafana's variables filled in, as a recording rule: promtool parses
/// the PromQL (a typo in a query fails here, not on the operator's screen).
#[test]
fn dashboard_queries_parse_as_promql() {
    let mut all = Vec::new();
    exprs(&dashboard()["panels"], &mut all);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in all.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$domain", ".*");
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dashboard-rules.yml");
    std::fs::write(&f, &rules).unwrap();
    let (ok, out) = run_promtool(&["check", "rules", f.to_str().unwrap()], None);
    assert!(ok, "a dashboard query does not parse:\n{out}\n{rules}");
    assert!(out.contains(&format!("{} rules found", all.len())), "{out}");
    // The check can fail: a broken query is refused.
    std::fs::write(&f, "groups:\n  - name: d\n    rules:\n      - record: d:q\n        expr: \"sum by (le (rate(assimd_last_cycle[5m]))\"\n").unwrap();
    assert!(!run_promtool(&["check", "rules", f.to_str().unwrap()], None).0);
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let (ok, out) = run_promtool(&["check", "rules", RULES], None);
    assert!(ok, "{out}");
    let (ok, out) = run_promtool(&["test", "rules", "configs/assimd-alerts.test.yml"], None);
    assert!(ok, "the alert rules' unit tests fail:\n{out}");
    let (ok, out) = run_promtool(&["check", "config", "configs/prometheus.yml"], None);
    assert!(ok && out.contains("1 rule files found"), "{out}");
    // The four alerts the issue names exist, and the rules query only exported metrics.
    let text = std::fs::read_to_string(RULES).unwrap();
    for alert in [
        "AssimdFilterDivergence",
        "AssimdNoObservations",
        "AssimdCycleOverrun",
        "AssimdBrokerDisconnected",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
    }
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(metric_names)
        .collect();
    assert!(names.len() >= 10);
    assert_eq!(unknown(&names), Vec::<String>::new());
}
