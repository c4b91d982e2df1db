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

/// Declares [`Metric`] and [`CATALOGUE`] from one table, so that what the
/// filter emits, what the docs list and what the dashboard may query
/// cannot drift apart.
macro_rules! metrics {
    ($($variant:ident => $name:literal, $kind:ident, $tags:literal, $help:literal;)*) => {
        /// Every metric meshguard defines.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Metric {
            $($variant,)*
        }

        impl Metric {
            pub const ALL: &[Metric] = &[$(Metric::$variant,)*];

            /// The name without tags (`requests`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)*
                }
            }

            pub const fn kind(self) -> Kind {
                match self {
                    $(Metric::$variant => Kind::$kind,)*
                }
            }

            /// Its tags in name order, comma-separated (`service, kind`).
            pub const fn tags(self) -> &'static str {
                match self {
                    $(Metric::$variant => $tags,)*
                }
            }
        }

        /// Every metric: name (without tags), kind, tag names, meaning. The
        /// metrics table of docs/observability.md (filter/tests/docs_metrics.rs)
        /// and the dashboard test are checked against it.
        pub const CATALOGUE: &[(&str, Kind, &str, &str)] = &[
            $(($name, Kind::$kind, $tags, $help),)*
        ];
    };
}

metrics! {
    Requests => "requests", Counter, "service", "requests whose outcome meshguard recorded";
    Failures => "failures", Counter, "service, kind", "failed requests by kind: server_error, gateway, status, grpc, local_origin, client_cancelled";
    Attempts => "attempts", Counter, "service", "attempts an upstream instance (mode upstream) recorded, retried ones included";
    AttemptFailures => "attempt_failures", Counter, "service, kind", "failed attempts an upstream instance recorded, by kind as failures";
    Transitions => "transitions", Counter, "service, from, to", "host grade changes";
    Ejections => "ejections", Counter, "service, reason", "ejections by reason: failure_rate, consecutive, warmup_failure";
    HostEjections => "host_ejections", Counter, "service, host", "ejections of one host";
    EjectionsRefused => "ejections_refused", Counter, "service", "ejections refused by maxEjectionPercent";
    Hosts => "hosts", Gauge, "service, state", "known hosts by state: healthy, degraded, unhealthy, warming_up";
    HostState => "host_state", Gauge, "service, host", "one host's state: 0 healthy, 1 degraded, 2 unhealthy, 3 warming up";
    Steered => "steered", Counter, "service", "requests meshguard steered to a chosen host";
    WatchedHosts => "watched_hosts", Gauge, "service", "hosts with failures on record in the shared state (every other host is Healthy)";
    HostsNotTracked => "hosts_not_tracked", Counter, "service", "outcomes of hosts left out by limits.maxHostsPerService or limits.maxWatchedHostsPerService";
    InferredAttempts => "inferred_attempts", Counter, "service", "failed attempts Envoy retried elsewhere that a downstream instance attributed to their host (from upstream.request_attempt_count and its steering list)";
    UnattributedRetries => "unattributed_retries", Counter, "service", "retried requests whose failed attempts a downstream instance could not attribute to a host (it then names the retries' hosts in its steering)";
    BreakerState => "breaker_state", Gauge, "service", "circuit breaker: 0 closed, 1 open, 2 half-open";
    BreakerTrips => "breaker_trips", Counter, "service", "times the breaker opened";
    LocalReplies => "local_replies", Counter, "service", "requests answered by the open breaker";
    ConfigRejected => "config_rejected", Counter, "", "plugin configurations refused";
    HostMetricsDropped => "host_metrics_dropped", Counter, "", "per-host metric updates dropped because a worker reached its bound of 2,048 per-host names (service-level metrics have their own)";
    PluginInstancesDropped => "plugin_instances_dropped", Counter, "", "plugin instances a VM set aside at its limit of 64 running ones (configuration pushed faster than listeners drain): their tables are freed, and a request of one brings it back with its configuration and empty tables";
}

impl Metric {
    /// Envoy's stat name: `meshguard.<name>`, then `.service.<service>`
    /// and `.<tag>.<value>` for each further tag, in order (values
    /// sanitised). `service` is ignored for a metric without tags; missing
    /// values leave their tags out.
    pub fn stat(self, service: &str, values: &[&str]) -> String {
        let mut out = format!("meshguard.{}", self.name());
        let mut tags = self.tags().split(", ").filter(|t| !t.is_empty());
        if tags.next().is_some() {
            out.push_str(".service.");
            push_sanitized(&mut out, service);
        }
        for (tag, value) in tags.zip(values) {
            out.push('.');
            out.push_str(tag);
            out.push('.');
            push_sanitized(&mut out, value);
        }
        out
    }

    /// A metric of the whole VM (no tags).
    pub fn global(self) -> String {
        self.stat("", &[])
    }
}

/// Envoy's Prometheus name of a catalogue entry (`wasmcustom.` is Envoy's
/// custom namespace, dropped in `/stats/prometheus`).
pub fn prometheus_name(metric: &str) -> String {
    format!("meshguard_{metric}")
}

/// Stat names must not contain characters Envoy's stats (or Prometheus
/// label values) choke on; keep what cluster names and addresses use.
fn push_sanitized(out: &mut String, part: &str) {
    out.extend(part.chars().map(|c| match c {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '|' | ':' | '-' | '_' | '[' | ']' => c,
        _ => '_',
    }));
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
            Metric::Requests.stat("outbound|80||reviews.shop.svc.cluster.local", &[]),
            "meshguard.requests.service.outbound|80||reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            Metric::HostState.stat("demo", &["10.0.0.1:8080"]),
            "meshguard.host_state.service.demo.host.10.0.0.1:8080"
        );
        assert_eq!(
            Metric::Failures.stat("demo", &["gateway"]),
            "meshguard.failures.service.demo.kind.gateway"
        );
        assert_eq!(
            Metric::Transitions.stat("demo", &["healthy", "unhealthy"]),
            "meshguard.transitions.service.demo.from.healthy.to.unhealthy"
        );
        assert_eq!(
            Metric::Requests.stat("a b\nc", &[]),
            "meshguard.requests.service.a_b_c"
        );
        assert_eq!(Metric::ConfigRejected.global(), "meshguard.config_rejected");
        assert_eq!(
            Metric::HostState.stat("envoy://connect_originate/10.1.2.3:8080", &["x y"]),
            "meshguard.host_state.service.envoy:__connect_originate_10.1.2.3:8080.host.x_y"
        );
    }

    #[test]
    fn the_enum_and_the_catalogue_are_one_table() {
        assert_eq!(Metric::ALL.len(), CATALOGUE.len());
        for (metric, (name, kind, tags, _)) in Metric::ALL.iter().zip(CATALOGUE) {
            assert_eq!(
                (metric.name(), metric.kind(), metric.tags()),
                (*name, *kind, *tags)
            );
        }
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
