//! The plugin's metrics after a whole incident, on the shipped module in
//! the wasmtime host: every counter and gauge must match what the
//! simulation saw happen (requests, failures by kind, steering, local
//! replies) and what the plugin said it did (its transition log lines).
//! Names: `filter/src/metrics.rs`; counters are added on each VM's 100 ms
//! tick, so the scenario settles for a few ticks before they are read.

use std::collections::BTreeMap;
use std::time::Duration;

use host_tests::wasm_host::scenario::{Behaviour, Report, Scenario};

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

const HOSTS: [&str; 4] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];

/// Discovery and retries off: a retried request reaches two hosts, and
/// this test matches the filter's counts against the hosts' exactly.
const CONFIG: &str = r#"{
    "detection": {"windowSize": 20, "minRequests": 10},
    "steering": {"discoveryPercent": 0, "retryOn": ""},
    "ejection": {"baseEjectionTime": "10s", "maxEjectionTime": "60s", "warmupDuration": "6s"},
    "circuitBreaker": {"windowSize": 40, "minRequests": 20, "failurePercent": 50,
                       "openDuration": "2s", "halfOpenRequests": 2, "closeAfterSuccesses": 3}
}"#;

fn name(metric: &str, suffix: &str) -> String {
    format!("meshguard.{metric}.service.demo{suffix}")
}

fn value(report: &Report, metric: &str, suffix: &str) -> i64 {
    report.metric(&name(metric, suffix)).unwrap_or(0)
}

fn label(state: &str) -> &'static str {
    match state {
        "Healthy" => "healthy",
        "Degraded" => "degraded",
        "Unhealthy" => "unhealthy",
        "WarmingUp" => "warming_up",
        other => panic!("unknown state {other}"),
    }
}

/// B fails hard (ejected, fails again in warm-up, back), C refuses
/// connections for a second (local-origin failures), then the whole
/// service fails for 2 s (breaker: open, local replies, probes, closed).
fn incident() -> Report {
    Scenario::new("metrics: B down, C refusing, then the whole service")
        .config(CONFIG)
        .workers(4)
        .hosts(4)
        .behaviour(1, s(5), Behaviour::Down)
        .behaviour(1, s(18), Behaviour::Healthy)
        .behaviour(2, s(8), Behaviour::Refusing)
        .behaviour(2, s(9), Behaviour::Healthy)
        .behaviour(0, s(70), Behaviour::Down)
        .behaviour(1, s(70), Behaviour::Down)
        .behaviour(2, s(70), Behaviour::Down)
        .behaviour(3, s(70), Behaviour::Down)
        .behaviour(0, s(72), Behaviour::Healthy)
        .behaviour(1, s(72), Behaviour::Healthy)
        .behaviour(2, s(72), Behaviour::Healthy)
        .behaviour(3, s(72), Behaviour::Healthy)
        .rate(200.0)
        .seed(11)
        .duration(s(100))
        .settle(Duration::from_millis(300))
        .run()
}

#[test]
fn metrics_match_what_happened() {
    let report = incident();
    println!("{}", report.render());
    let mut metrics: Vec<String> = report
        .metrics
        .iter()
        .map(|m| format!("{} = {}", m.name, m.value))
        .collect();
    metrics.sort();
    println!("{}", metrics.join("\n"));
    let breaker_lines: Vec<&str> = report
        .logs
        .iter()
        .map(|r| r.message.as_str())
        .filter(|m| m.contains("circuit breaker:"))
        .collect();
    println!("{}", breaker_lines.join("\n"));
    // Every line is there to compare with (none rate-limited away).
    let suppressed: Vec<_> = report
        .logs
        .iter()
        .filter(|r| r.message.contains("suppressed"))
        .collect();
    assert!(suppressed.is_empty(), "{suppressed:?}");

    // ---- counters the simulation can count itself.
    let sum = |f: &dyn Fn(&host_tests::wasm_host::scenario::HostCounts) -> u64| -> u64 {
        report
            .buckets
            .iter()
            .flat_map(|b| b.hosts.iter())
            .map(f)
            .sum()
    };
    let reached = sum(&|h| h.requests);
    let failed = sum(&|h| h.failures);
    let steered = sum(&|h| h.steered);
    // C's failures in [8 s, 10 s) are its refused connections (flag UF);
    // every other failure is a plain 503.
    let refused: u64 = report.buckets[8..10]
        .iter()
        .map(|b| b.hosts[2].failures)
        .sum();
    assert_eq!(value(&report, "requests", ""), reached as i64);
    assert_eq!(
        value(&report, "failures", ".kind.local_origin"),
        refused as i64
    );
    assert_eq!(
        value(&report, "failures", ".kind.gateway"),
        (failed - refused) as i64
    );
    for kind in ["server_error", "status", "grpc", "client_cancelled"] {
        assert_eq!(
            report.metric(&name("failures", &format!(".kind.{kind}"))),
            None
        );
    }
    assert_eq!(value(&report, "steered", ""), steered as i64);
    assert_eq!(
        value(&report, "local_replies", ""),
        report.local_replies.len() as i64
    );
    assert!(refused >= 5 && steered > 1000 && !report.local_replies.is_empty());

    // ---- transitions, ejections by reason and by host: as logged.
    let mut transitions: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut reasons: BTreeMap<&str, i64> = BTreeMap::new();
    let mut per_host = [0i64; 4];
    for t in &report.transitions {
        *transitions
            .entry((label(&t.from).to_string(), label(&t.to).to_string()))
            .or_default() += 1;
        if t.to == "Unhealthy" {
            let reason = if t.from == "WarmingUp" {
                "warmup_failure"
            } else if t.reason.contains("consecutive") {
                "consecutive"
            } else {
                "failure_rate"
            };
            *reasons.entry(reason).or_default() += 1;
            per_host[report.host_index(&t.host)] += 1;
        }
    }
    println!("transitions {transitions:?}\nejections {reasons:?} per host {per_host:?}");
    for from in ["healthy", "degraded", "unhealthy", "warming_up"] {
        for to in ["healthy", "degraded", "unhealthy", "warming_up"] {
            let expected = transitions
                .get(&(from.to_string(), to.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                value(&report, "transitions", &format!(".from.{from}.to.{to}")),
                expected,
                "{from} -> {to}"
            );
        }
    }
    for reason in ["consecutive", "warmup_failure", "failure_rate"] {
        assert_eq!(
            value(&report, "ejections", &format!(".reason.{reason}")),
            reasons.get(reason).copied().unwrap_or(0),
            "ejections by {reason}"
        );
    }
    assert!(reasons.get("consecutive").copied().unwrap_or(0) >= 2);
    assert!(reasons.get("warmup_failure").copied().unwrap_or(0) >= 1);
    for (index, host) in HOSTS.iter().enumerate() {
        assert_eq!(
            value(&report, "host_ejections", &format!(".host.{host}")),
            per_host[index],
            "ejections of {host}"
        );
    }
    assert_eq!(
        value(&report, "ejections_refused", ""),
        report.refusals.len() as i64
    );

    // ---- gauges: the final state of every host, and the counts by state.
    let end = Duration::from_secs(101);
    let finals = report.states_at(end);
    let mut by_state: BTreeMap<&str, i64> = BTreeMap::new();
    for (index, host) in HOSTS.iter().enumerate() {
        let logged = report
            .transitions_of(host)
            .last()
            .map_or("Healthy", |t| t.to.as_str());
        assert_eq!(finals[index], logged, "{host}: gauge vs log");
        let code = match logged {
            "Healthy" => 0,
            "Degraded" => 1,
            "Unhealthy" => 2,
            _ => 3,
        };
        assert_eq!(
            value(&report, "host_state", &format!(".host.{host}")),
            code,
            "{host}"
        );
        *by_state.entry(label(logged)).or_default() += 1;
    }
    for state in ["healthy", "degraded", "unhealthy", "warming_up"] {
        assert_eq!(
            report.metric(&name("hosts", &format!(".state.{state}"))),
            Some(by_state.get(state).copied().unwrap_or(0)),
            "hosts {state}"
        );
    }

    // ---- the breaker: trips as logged, and its final state.
    let trips = breaker_lines
        .iter()
        .filter(|l| l.contains("-> Open"))
        .count();
    assert!(trips >= 1, "{breaker_lines:?}");
    assert_eq!(value(&report, "breaker_trips", ""), trips as i64);
    let last = breaker_lines.last().expect("breaker lines");
    assert!(last.contains("-> Closed"), "{last}");
    assert_eq!(report.metric(&name("breaker_state", "")), Some(0));
    assert_eq!(report.metric("meshguard.config_rejected"), None);
}
