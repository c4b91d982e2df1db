//! The Grafana dashboard may only query metrics the filter defines: a
//! renamed metric must not leave an empty panel behind.

use meshguard::metrics::{prometheus_name, Kind, CATALOGUE};

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

/// Every client sidecar reports its own view of the same upstream hosts:
/// a gauge of host or breaker state may be summed over pods only as a
/// count (`== bool`), never as values, and state gauges (whose numeric
/// codes are not ordered by severity) never go through max() raw.
#[test]
fn gauges_are_not_summed_over_client_pods_nor_ranked_by_raw_code() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let gauges: Vec<String> = CATALOGUE
        .iter()
        .filter(|(_, kind, ..)| *kind == Kind::Gauge)
        .map(|(name, ..)| prometheus_name(name))
        .collect();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for gauge in &gauges {
                for (at, _) in expr.match_indices(&format!("{gauge}{{")) {
                    // The innermost aggregation around this selector.
                    let before = &expr[..at];
                    let inner = ["sum by", "max by", "count by", "min by", "avg by"]
                        .iter()
                        .filter_map(|a| before.rfind(a).map(|i| (i, *a)))
                        .max();
                    let after = &expr[at..];
                    let close = after.find('}').map_or(after, |i| &after[i + 1..]);
                    let counted = close.trim_start().starts_with("== bool");
                    match inner {
                        Some((_, "sum by")) => assert!(
                            counted,
                            "{}: `{expr}` sums {gauge} over client pods",
                            panel["title"]
                        ),
                        Some((_, "max by")) if gauge.ends_with("_state") => assert!(
                            counted,
                            "{}: `{expr}` ranks {gauge} by its raw code",
                            panel["title"]
                        ),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A table is a row per entity: its queries are instant, in table format,
/// and merged into one frame.
#[test]
fn tables_merge_instant_queries() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let tables: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "table")
        .collect();
    assert!(!tables.is_empty());
    for panel in tables {
        for target in panel["targets"].as_array().expect("targets") {
            assert!(
                target["instant"] == true && target["format"] == "table",
                "{}: query {} is not an instant table query",
                panel["title"],
                target["refId"]
            );
        }
        let merged = panel["transformations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == "merge"));
        assert!(merged, "{}: queries not merged", panel["title"]);
    }
}

const ALERTS: &str = include_str!("../../istio/prometheus/meshguard-alerts.yaml");

/// The alert rules, too, may only query metrics the filter defines.
#[test]
fn every_alerted_metric_is_defined_by_the_filter() {
    let defined: Vec<String> = CATALOGUE
        .iter()
        .map(|(name, ..)| prometheus_name(name))
        .collect();
    let labels = ["service", "host", "kind", "state", "reason", "from", "to"];
    let mut checked = 0;
    for line in ALERTS.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for name in queried_metrics(line) {
            if labels.iter().any(|l| name == format!("meshguard_{l}")) {
                continue;
            }
            assert!(
                defined.contains(&name),
                "{name} in `{line}` is not a meshguard metric"
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} metric references found");
}
