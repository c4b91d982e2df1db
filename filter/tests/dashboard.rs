//! The Grafana dashboard may only query metrics the filter defines: a
//! renamed metric must not leave an empty panel behind.

use meshguard::metrics::{prometheus_name, CATALOGUE};

const DASHBOARD: &str = include_str!("../../istio/grafana/meshguard-dashboard.json");

fn queried_metrics(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("meshguard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_queried_metric_is_defined_by_the_filter() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let defined: Vec<String> = CATALOGUE
        .iter()
        .map(|(name, ..)| prometheus_name(name))
        .collect();
    let mut checked = 0;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    let templating = dashboard["templating"]["list"].to_string();
    exprs.push(templating);
    for expr in &exprs {
        for name in queried_metrics(expr) {
            // Label names (meshguard_service...) are tags, not metrics.
            let label = ["service", "host", "kind", "state", "reason", "from", "to"]
                .iter()
                .any(|l| name == format!("meshguard_{l}"));
            if label {
                continue;
            }
            assert!(
                defined.contains(&name),
                "{name} in `{expr}` is not a meshguard metric"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} metric references found");
}

#[test]
fn the_extractor_finds_names() {
    assert_eq!(
        queried_metrics("rate(meshguard_requests{meshguard_service=~\"x\"}[5m])"),
        ["meshguard_requests", "meshguard_service"]
    );
}
