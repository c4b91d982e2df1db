//! What a worker tells the operator: Envoy stats for every unit (counters
//! batched from the request path, gauges written when they change) and one
//! log line per grade or breaker change, rate-limited per host.

use super::host::Host;
use super::metrics::Metrics;
use super::unit::Unit;
use crate::breaker::BreakerState;
use crate::config::Mode;
use crate::health::HostState;
use crate::metrics::{self as names, FAILURE_KINDS};
use crate::service::Event;

/// Transition lines one host (or breaker) may log per window; a flapping
/// host must not flood the log.
const LOG_LINES_PER_WINDOW: u16 = 6;
const LOG_WINDOW_MS: u64 = 60_000;
const MAX_LOG_KEYS: usize = 256;

#[derive(Default)]
struct LogLimiter {
    /// (unit and host, window start, lines logged, lines suppressed)
    keys: Vec<(String, u64, u16, u32)>,
}

impl LogLimiter {
    /// Whether a line about `key` may be logged now; reports how many were
    /// suppressed in the window that just ended.
    fn allow(&mut self, key: &str, now: u64) -> (bool, u32) {
        let index = match self.keys.iter().position(|(k, ..)| k == key) {
            Some(index) => index,
            None => {
                if self.keys.len() >= MAX_LOG_KEYS {
                    self.keys.remove(0);
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

#[derive(Default)]
pub struct Reporter {
    metrics: Metrics,
    limiter: LogLimiter,
}

impl Reporter {
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
            Mode::Downstream => ("requests", "failures"),
            Mode::Upstream => ("attempts", "attempt_failures"),
        };
        metrics.add(host, names::service_metric(requests, key), counts.requests);
        for (kind, count) in FAILURE_KINDS.iter().zip(counts.failures) {
            metrics.add(host, names::labelled(failures, key, "kind", kind), count);
        }
        metrics.add(host, names::service_metric("steered", key), counts.steered);
        metrics.add(
            host,
            names::service_metric("local_replies", key),
            counts.local_replies,
        );
        for (name, count) in [
            ("inferred_attempts", counts.inferred_attempts),
            ("unattributed_retries", counts.unattributed_retries),
        ] {
            if count > 0 {
                metrics.add(host, names::service_metric(name, key), count);
            }
        }
        if counts.not_tracked > 0 {
            metrics.add(
                host,
                names::service_metric("hosts_not_tracked", key),
                counts.not_tracked,
            );
            let line = format!("{key} host table");
            if self.limiter.allow(&line, now).0 {
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
        for entry in &unit.snapshot.hosts {
            let state = entry.health.state();
            by_state[names::state_value(state) as usize] += 1;
            metrics.set(
                host,
                names::host_metric("host_state", key, &entry.address),
                names::state_value(state),
            );
            if state != HostState::Healthy {
                graded.push(entry.address.clone());
            }
        }
        // Hosts no longer watched are Healthy again.
        for address in &unit.graded_gauges {
            if unit.snapshot.host(address).is_none() {
                metrics.set(host, names::host_metric("host_state", key, address), 0);
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
                names::labelled("hosts", key, "state", names::state_label(state)),
                count,
            );
        }
        metrics.set(
            host,
            names::service_metric("watched_hosts", key),
            unit.snapshot.hosts.len() as u64,
        );
        metrics.set(
            host,
            names::service_metric("breaker_state", key),
            names::breaker_value(unit.snapshot.breaker.state()),
        );
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
                metrics.add(
                    host,
                    format!(
                        "{}.from.{from}.to.{to}",
                        names::service_metric("transitions", key)
                    ),
                    1,
                );
                if transition.to == HostState::Unhealthy {
                    let reason = names::ejection_reason(&transition.reason);
                    metrics.add(host, names::labelled("ejections", key, "reason", reason), 1);
                    metrics.add(host, names::host_metric("host_ejections", key, address), 1);
                }
                address.as_str()
            }
            Event::EjectionRefused { address, .. } => {
                metrics.add(host, names::service_metric("ejections_refused", key), 1);
                address.as_str()
            }
            Event::HostNotTracked { .. } => {
                metrics.add(host, names::service_metric("hosts_not_tracked", key), 1);
                "host table"
            }
            Event::Breaker(transition) => {
                if transition.to == BreakerState::Open {
                    metrics.add(host, names::service_metric("breaker_trips", key), 1);
                }
                "circuit breaker"
            }
        };
        let (allowed, suppressed) = self.limiter.allow(&format!("{key} {subject}"), now);
        if suppressed > 0 {
            log::info!("meshguard: {key} {subject}: {suppressed} more lines were suppressed in the last minute");
        }
        if allowed {
            log_event(key, event);
        }
    }
}

/// One line per grade or breaker change. Envoy already prefixes wasm logs
/// with the plugin's name, root id and VM id.
fn log_event(unit: &str, event: &Event) {
    match event {
        Event::Transition {
            address,
            transition: t,
        } => match t.ejected_for_ms {
            Some(ms) => log::info!(
                "meshguard: {unit} host {address}: {} -> {}: {}; ejected for {}.{:03}s (ejection #{})",
                t.from,
                t.to,
                t.reason,
                ms / 1000,
                ms % 1000,
                t.times_ejected
            ),
            None => log::info!(
                "meshguard: {unit} host {address}: {} -> {}: {}",
                t.from,
                t.to,
                t.reason
            ),
        },
        Event::EjectionRefused { address, reason } => log::info!(
            "meshguard: {unit} host {address}: ejection refused by maxEjectionPercent ({reason})"
        ),
        Event::HostNotTracked { address, limit } => log::warn!(
            "meshguard: {unit} host {address}: not tracked, the table of hosts with failures is full of hosts with more ({limit})"
        ),
        Event::Breaker(t) => match t.open_for_ms {
            Some(ms) => log::info!(
                "meshguard: {unit} circuit breaker: {} -> {}: {}; open for {}.{:03}s",
                t.from,
                t.to,
                t.reason,
                ms / 1000,
                ms % 1000
            ),
            None => log::info!("meshguard: {unit} circuit breaker: {} -> {}: {}", t.from, t.to, t.reason),
        },
    }
}
