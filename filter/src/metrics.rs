//! Metric names: what meshguard reports through Envoy's stats.
//!
//! Names put the variable parts last, Envoy style:
//! `meshguard.<metric>.service.<cluster>[.host.<address>]` and
//! `meshguard.<metric>.service.<cluster>.<label>.<value>`, so that Envoy's
//! `stats_tags` can turn `service`, `host` and the label into tags with one
//! regex each (see docs/observability.md). Per-host names
//! exist only for hosts that were graded (not Healthy), and each worker
//! defines at most 2,048 of them, apart from the service-level names
//! (see `state::metrics`).

use crate::classify::FailureKind;
use crate::health::Reason;
use crate::model::BreakerState;
use crate::model::HostState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Every metric meshguard defines: name (without tags), kind, tag names,
/// meaning. The metrics table of docs/observability.md
/// (filter/tests/docs_metrics.rs) and the dashboard test are checked against it.
pub const CATALOGUE: &[(&str, Kind, &str, &str)] = &[
    ("requests", Kind::Counter, "service", "requests whose outcome meshguard recorded"),
    ("failures", Kind::Counter, "service, kind", "failed requests by kind: server_error, gateway, status, grpc, local_origin, client_cancelled"),
    ("attempts", Kind::Counter, "service", "attempts an upstream instance (mode upstream) recorded, retried ones included"),
    ("attempt_failures", Kind::Counter, "service, kind", "failed attempts an upstream instance recorded, by kind as failures"),
    ("transitions", Kind::Counter, "service, from, to", "host grade changes"),
    ("ejections", Kind::Counter, "service, reason", "ejections by reason: failure_rate, consecutive, warmup_failure"),
    ("host_ejections", Kind::Counter, "service, host", "ejections of one host"),
    ("ejections_refused", Kind::Counter, "service", "ejections refused by maxEjectionPercent"),
    ("hosts", Kind::Gauge, "service, state", "known hosts by state: healthy, degraded, unhealthy, warming_up"),
    ("host_state", Kind::Gauge, "service, host", "one host's state: 0 healthy, 1 degraded, 2 unhealthy, 3 warming up"),
    ("steered", Kind::Counter, "service", "requests meshguard steered to a chosen host"),
    ("watched_hosts", Kind::Gauge, "service", "hosts with failures on record in the shared state (every other host is Healthy)"),
    ("hosts_not_tracked", Kind::Counter, "service", "outcomes of hosts left out by limits.maxHostsPerService or limits.maxWatchedHostsPerService"),
    ("inferred_attempts", Kind::Counter, "service", "failed attempts Envoy retried elsewhere that a downstream instance attributed to their host (from upstream.request_attempt_count and its steering list)"),
    ("unattributed_retries", Kind::Counter, "service", "retried requests whose failed attempts a downstream instance could not attribute to a host (it then names the retries' hosts in its steering)"),
    ("breaker_state", Kind::Gauge, "service", "circuit breaker: 0 closed, 1 open, 2 half-open"),
    ("breaker_trips", Kind::Counter, "service", "times the breaker opened"),
    ("local_replies", Kind::Counter, "service", "requests answered by the open breaker"),
    ("config_rejected", Kind::Counter, "", "plugin configurations refused"),
    ("host_metrics_dropped", Kind::Counter, "", "per-host metric updates dropped because a worker reached its bound of 2,048 per-host names (service-level metrics have their own)"),
    ("plugin_instances_dropped", Kind::Counter, "", "plugin instances a VM dropped at its limit of 64 live ones (configuration pushed faster than listeners drain); their requests pass through unobserved"),
];

/// Envoy's Prometheus name of a catalogue entry (`wasmcustom.` is Envoy's
/// custom namespace, dropped in `/stats/prometheus`).
pub fn prometheus_name(metric: &str) -> String {
    format!("meshguard_{metric}")
}

pub fn service_metric(metric: &str, service: &str) -> String {
    format!("meshguard.{metric}.service.{}", sanitize(service))
}

pub fn labelled(metric: &str, service: &str, label: &str, value: &str) -> String {
    format!(
        "meshguard.{metric}.service.{}.{label}.{value}",
        sanitize(service)
    )
}

pub fn host_metric(metric: &str, service: &str, host: &str) -> String {
    format!(
        "meshguard.{metric}.service.{}.host.{}",
        sanitize(service),
        sanitize(host)
    )
}

pub fn global(metric: &str) -> String {
    format!("meshguard.{metric}")
}

/// Stat names must not contain characters Envoy's stats (or Prometheus
/// label values) choke on; keep what cluster names and addresses use.
fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '|' | ':' | '-' | '_' | '[' | ']' => c,
            _ => '_',
        })
        .collect()
}

pub fn state_label(state: HostState) -> &'static str {
    match state {
        HostState::Healthy => "healthy",
        HostState::Degraded => "degraded",
        HostState::Unhealthy => "unhealthy",
        HostState::WarmingUp => "warming_up",
    }
}

pub fn state_value(state: HostState) -> u64 {
    match state {
        HostState::Healthy => 0,
        HostState::Degraded => 1,
        HostState::Unhealthy => 2,
        HostState::WarmingUp => 3,
    }
}

pub fn breaker_value(state: BreakerState) -> u64 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

/// Failure kinds as the `kind` label, and their index in per-kind counts.
pub const FAILURE_KINDS: [&str; 6] = [
    "server_error",
    "gateway",
    "status",
    "grpc",
    "local_origin",
    "client_cancelled",
];

pub fn failure_index(kind: FailureKind) -> usize {
    match kind {
        FailureKind::ServerError(_) => 0,
        FailureKind::Gateway(_) => 1,
        FailureKind::Status(_) => 2,
        FailureKind::Grpc(_) => 3,
        FailureKind::LocalOrigin(_) => 4,
        FailureKind::ClientCancelled => 5,
    }
}

pub fn ejection_reason(reason: &Reason) -> &'static str {
    match reason {
        Reason::Consecutive { .. } => "consecutive",
        Reason::FailedInWarmup { .. } => "warmup_failure",
        _ => "failure_rate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_put_variable_parts_last() {
        assert_eq!(
            service_metric("requests", "outbound|80||reviews.shop.svc.cluster.local"),
            "meshguard.requests.service.outbound|80||reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            host_metric("host_state", "demo", "10.0.0.1:8080"),
            "meshguard.host_state.service.demo.host.10.0.0.1:8080"
        );
        assert_eq!(
            labelled("failures", "demo", "kind", "gateway"),
            "meshguard.failures.service.demo.kind.gateway"
        );
        assert_eq!(
            service_metric("requests", "a b\nc"),
            "meshguard.requests.service.a_b_c"
        );
    }

    #[test]
    fn every_catalogue_entry_is_unique_and_documented() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|(n, ..)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        assert!(CATALOGUE
            .iter()
            .all(|(_, _, _, meaning)| !meaning.is_empty()));
    }
}
