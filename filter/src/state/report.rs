//! What a worker tells the operator: Envoy stats for every unit (counters
//! batched from the request path, gauges written when they change) and one
//! log line per grade or breaker change, rate-limited per host.

use super::host::Host;
use super::metrics::{Metrics, Scope, MAX_HOST_METRICS};
use super::unit::Unit;
use crate::config::Mode;
use crate::events::{BreakerLine, HostLine};
use crate::metrics::{self as names, Metric, FAILURE_KINDS};
use crate::model::BreakerState;
use crate::model::HostState;
use crate::service::Event;

/// Transition lines one host (or breaker) may log per window; a flapping
/// host must not flood the log.
const LOG_LINES_PER_WINDOW: u16 = 6;
const LOG_WINDOW_MS: u64 = 60_000;
/// Hosts (and services) whose lines are counted. Keys of hosts and of
/// services are kept apart: thousands of hosts changing grade must not
/// push a service's warning out of its count, which would start its
/// window afresh.
const MAX_HOST_LOG_KEYS: usize = 256;
const MAX_SERVICE_LOG_KEYS: usize = 1024;
/// The line saying per-host metrics were dropped: once, then at most this
/// often.
const DROPPED_LOG_MS: u64 = 600_000;

struct LogLimiter {
    /// (unit and host, window start, lines logged, lines suppressed)
    keys: Vec<(String, u64, u16, u32)>,
    capacity: usize,
}

impl LogLimiter {
    fn new(capacity: usize) -> Self {
        LogLimiter {
            keys: Vec::new(),
            capacity,
        }
    }

    /// Whether a line about `key` may be logged now; reports how many were
    /// suppressed in the window that just ended.
    fn allow(&mut self, key: &str, now: u64) -> (bool, u32) {
        let index = match self.keys.iter().position(|(k, ..)| k == key) {
            Some(index) => index,
            None => {
                if self.keys.len() >= self.capacity {
                    // The key whose window began first (ended, if any has).
                    let oldest = self
                        .keys
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, start, ..))| *start)
                        .map_or(0, |(index, _)| index);
                    self.keys.swap_remove(oldest);
                }
                self.keys.push((key.to_string(), now, 0, 0));
                self.keys.len() - 1
            }
        };
        let entry = &mut self.keys[index];
        let mut ended_suppressed = 0;
        if now.saturating_sub(entry.1) >= LOG_WINDOW_MS {
            ended_suppressed = entry.3;
            entry.1 = now;
            entry.2 = 0;
            entry.3 = 0;
        }
        if entry.2 < LOG_LINES_PER_WINDOW {
            entry.2 += 1;
            (true, ended_suppressed)
        } else {
            entry.3 = entry.3.saturating_add(1);
            (false, ended_suppressed)
        }
    }
}

pub struct Reporter {
    metrics: Metrics,
    /// Lines about one host.
    hosts: LogLimiter,
    /// Lines about a service as a whole (its host table, its breaker).
    services: LogLimiter,
    /// When the dropped per-host metrics were last logged.
    dropped_logged_ms: Option<u64>,
    dropped_since_log: u64,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter {
            metrics: Metrics::default(),
            hosts: LogLimiter::new(MAX_HOST_LOG_KEYS),
            services: LogLimiter::new(MAX_SERVICE_LOG_KEYS),
            dropped_logged_ms: None,
            dropped_since_log: 0,
        }
    }
}

impl Reporter {
    /// Metric names this worker defined.
    pub fn metric_names(&self) -> usize {
        self.metrics.names()
    }

    /// Counts per-host metric updates dropped at the bound, and says so
    /// once (then at most every ten minutes).
    fn report_dropped(&mut self, host: &impl Host, now: u64) {
        let dropped = self.metrics.take_dropped();
        if dropped == 0 {
            return;
        }
        self.metrics.add_in(
            host,
            Metric::HostMetricsDropped.global(),
            dropped,
            Scope::Global,
        );
        self.dropped_since_log = self.dropped_since_log.saturating_add(dropped);
        let due = self
            .dropped_logged_ms
            .is_none_or(|at| now.saturating_sub(at) >= DROPPED_LOG_MS);
        if due {
            log::warn!(
                "meshguard: {} per-host metric updates dropped at the bound of {MAX_HOST_METRICS} per-host names; service metrics are unaffected (see host_metrics_dropped)",
                self.dropped_since_log
            );
            self.dropped_logged_ms = Some(now);
            self.dropped_since_log = 0;
        }
    }

    /// Adds the unit's batched counters to Envoy's stats.
    pub fn publish_counts(&mut self, host: &impl Host, unit: &mut Unit, now: u64) {
        if unit.counts.is_empty() {
            return;
        }
        let counts = std::mem::take(&mut unit.counts);
        let key = unit.key.as_str();
        let metrics = &mut self.metrics;
        // An upstream instance counts attempts, not the requests the
        // downstream instance counts already.
        let (requests, failures) = match unit.config.mode {
            Mode::Downstream => (Metric::Requests, Metric::Failures),
            Mode::Upstream => (Metric::Attempts, Metric::AttemptFailures),
        };
        metrics.add(host, requests.stat(key, &[]), counts.requests);
        for (kind, count) in FAILURE_KINDS.iter().zip(counts.failures) {
            metrics.add(host, failures.stat(key, &[kind]), count);
        }
        metrics.add(host, Metric::Steered.stat(key, &[]), counts.steered);
        metrics.add(
            host,
            Metric::LocalReplies.stat(key, &[]),
            counts.local_replies,
        );
        for (name, count) in [
            (Metric::InferredAttempts, counts.inferred_attempts),
            (Metric::UnattributedRetries, counts.unattributed_retries),
        ] {
            if count > 0 {
                metrics.add(host, name.stat(key, &[]), count);
            }
        }
        if counts.not_tracked > 0 {
            metrics.add(
                host,
                Metric::HostsNotTracked.stat(key, &[]),
                counts.not_tracked,
            );
            let line = format!("{key} host table");
            if self.services.allow(&line, now).0 {
                log::warn!(
                    "meshguard: {key}: {} hosts not tracked, the service has more than limits.maxHostsPerService ({}); they get only the requests left to Envoy's load balancer",
                    counts.not_tracked,
                    unit.config.limits.max_hosts_per_service
                );
            }
        }
    }

    /// Counters and gauges of a unit after its record was read or written.
    pub fn publish(&mut self, host: &impl Host, unit: &mut Unit, now: u64) {
        self.publish_counts(host, unit, now);
        let key = unit.key.as_str();
        let metrics = &mut self.metrics;
        let mut by_state = [0u64; 4];
        let mut graded = Vec::new();
        // A host's gauge exists only once it is graded (not for every
        // watched host, Healthy with a failure or two), and is set back
        // to 0 when it is Healthy again or no longer watched. Both lists
        // are in address order.
        for entry in &unit.snapshot.hosts {
            let state = entry.health.state();
            by_state[names::state_value(state) as usize] += 1;
            let was_graded = unit
                .graded_gauges
                .binary_search_by(|a| a.as_str().cmp(&entry.address))
                .is_ok();
            if state != HostState::Healthy || was_graded {
                metrics.set_in(
                    host,
                    Metric::HostState.stat(key, &[&entry.address]),
                    names::state_value(state),
                    Scope::Host,
                );
            }
            if state != HostState::Healthy {
                graded.push(entry.address.clone());
            }
        }
        for address in &unit.graded_gauges {
            if unit.snapshot.host(address).is_none() {
                metrics.set_in(
                    host,
                    Metric::HostState.stat(key, &[address]),
                    0,
                    Scope::Host,
                );
            }
        }
        unit.graded_gauges = graded;
        // Hosts without a record are Healthy.
        let size = unit.snapshot.size().max(unit.members.len()) as u64;
        let watched_healthy = by_state[names::state_value(HostState::Healthy) as usize];
        let graded_count: u64 = by_state.iter().sum::<u64>() - watched_healthy;
        by_state[names::state_value(HostState::Healthy) as usize] =
            size.saturating_sub(graded_count);
        for state in [
            HostState::Healthy,
            HostState::Degraded,
            HostState::Unhealthy,
            HostState::WarmingUp,
        ] {
            let count = by_state[names::state_value(state) as usize];
            metrics.set(
                host,
                Metric::Hosts.stat(key, &[names::state_label(state)]),
                count,
            );
        }
        metrics.set(
            host,
            Metric::WatchedHosts.stat(key, &[]),
            unit.snapshot.hosts.len() as u64,
        );
        metrics.set(
            host,
            Metric::BreakerState.stat(key, &[]),
            names::breaker_value(unit.snapshot.breaker.state()),
        );
        self.report_dropped(host, now);
    }

    /// Counts an event in Envoy's stats and logs it (rate-limited per host).
    pub fn report(&mut self, host: &impl Host, key: &str, event: &Event, now: u64) {
        let metrics = &mut self.metrics;
        let subject = match event {
            Event::Transition {
                address,
                transition,
            } => {
                let (from, to) = (
                    names::state_label(transition.from),
                    names::state_label(transition.to),
                );
                metrics.add(host, Metric::Transitions.stat(key, &[from, to]), 1);
                if transition.to == HostState::Unhealthy {
                    let reason = names::ejection_reason(&transition.reason);
                    metrics.add(host, Metric::Ejections.stat(key, &[reason]), 1);
                    metrics.add_in(
                        host,
                        Metric::HostEjections.stat(key, &[address]),
                        1,
                        Scope::Host,
                    );
                }
                address.as_str()
            }
            Event::EjectionRefused { address, .. } => {
                metrics.add(host, Metric::EjectionsRefused.stat(key, &[]), 1);
                address.as_str()
            }
            Event::HostNotTracked { .. } => {
                metrics.add(host, Metric::HostsNotTracked.stat(key, &[]), 1);
                "host table"
            }
            Event::Breaker(transition) => {
                if transition.to == BreakerState::Open {
                    metrics.add(host, Metric::BreakerTrips.stat(key, &[]), 1);
                }
                "circuit breaker"
            }
        };
        let limiter = match event {
            Event::HostNotTracked { .. } | Event::Breaker(_) => &mut self.services,
            _ => &mut self.hosts,
        };
        let (allowed, suppressed) = limiter.allow(&format!("{key} {subject}"), now);
        if suppressed > 0 {
            log::info!("meshguard: {key} {subject}: {suppressed} more lines were suppressed in the last minute");
        }
        if allowed {
            log_event(key, event);
        }
        self.report_dropped(host, now);
    }
}

/// One line per grade or breaker change (`events` holds their wording).
/// Envoy already prefixes wasm logs with the plugin's name, root id and VM
/// id.
fn log_event(unit: &str, event: &Event) {
    match event {
        Event::Transition {
            address,
            transition: t,
        } => log::info!(
            "{}",
            HostLine {
                unit,
                address,
                from: t.from,
                to: t.to,
                reason: &t.reason,
                ejected: t.ejected_for_ms.map(|ms| (ms, t.times_ejected)),
            }
        ),
        Event::EjectionRefused { address, reason } => log::info!(
            "meshguard: {unit} host {address}: ejection refused by maxEjectionPercent ({reason})"
        ),
        Event::HostNotTracked { address, limit } => log::warn!(
            "meshguard: {unit} host {address}: not tracked, the table of hosts with failures is full of hosts with more ({limit})"
        ),
        Event::Breaker(t) => log::info!(
            "{}",
            BreakerLine {
                unit,
                from: t.from,
                to: t.to,
                reason: &t.reason,
                open_for_ms: t.open_for_ms,
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::state::memory::{MemoryHost, SharedData};

    #[test]
    fn churning_hosts_do_not_reset_a_services_warning_count() {
        let mut reporter = Reporter::default();
        let table = "svc host table";
        let allowed = (0..10)
            .filter(|_| reporter.services.allow(table, 1_000).0)
            .count();
        assert_eq!(allowed, usize::from(LOG_LINES_PER_WINDOW));
        // Thousands of hosts change grade within the same minute.
        for i in 0..5_000 {
            reporter
                .hosts
                .allow(&format!("svc 10.0.{}.{}:80", i / 256, i % 256), 2_000);
        }
        assert!(!reporter.services.allow(table, 3_000).0, "still suppressed");
        // A host key's count survives churn of keys that began later.
        let mut hosts = LogLimiter::new(4);
        for _ in 0..LOG_LINES_PER_WINDOW {
            assert!(hosts.allow("a", 0).0);
        }
        for (i, key) in ["b", "c", "d"].iter().enumerate() {
            hosts.allow(key, 10 + i as u64);
        }
        hosts.allow("e", 20);
        assert_eq!(hosts.keys.len(), 4);
        assert!(
            hosts.keys.iter().all(|(k, ..)| k != "a"),
            "the oldest window went"
        );
        // After its window the line comes back, with the count suppressed.
        assert_eq!(reporter.services.allow(table, 61_000), (true, 5));
    }

    #[test]
    fn per_host_names_have_their_own_bound_and_drops_are_counted() {
        let host = MemoryHost::new(Rc::new(SharedData::default()));
        let mut metrics = Metrics::default();
        for i in 0..MAX_HOST_METRICS + 100 {
            let address = format!("10.0.{}.{}:80", i / 256, i % 256);
            metrics.set_in(
                &host,
                Metric::HostState.stat("svc", &[&address]),
                1,
                Scope::Host,
            );
        }
        assert_eq!(metrics.take_dropped(), 100);
        assert_eq!(metrics.take_dropped(), 0);
        // Service-level names are not starved.
        metrics.add(&host, Metric::Ejections.stat("svc", &[]), 1);
        assert_eq!(host.metric("meshguard.ejections.service.svc"), Some(1));
        // A host name defined before the bound keeps working.
        let first = Metric::HostState.stat("svc", &["10.0.0.0:80"]);
        metrics.set_in(&host, first.clone(), 2, Scope::Host);
        assert_eq!(host.metric(&first), Some(2));
        assert_eq!(metrics.take_dropped(), 0);
        let mut reporter = Reporter {
            metrics,
            ..Reporter::default()
        };
        reporter.metrics.set_in(
            &host,
            "meshguard.x.service.s.host.new".into(),
            1,
            Scope::Host,
        );
        reporter.report_dropped(&host, 5_000);
        assert_eq!(host.metric("meshguard.host_metrics_dropped"), Some(1));
        assert_eq!(reporter.dropped_logged_ms, Some(5_000));
    }
}
