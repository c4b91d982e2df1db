//! Reporting through Envoy's stats: metric ids defined lazily and cached,
//! gauges written only when they change, counters added in batches.
//!
//! Envoy cannot delete a stat, so what is bounded is the names ever
//! defined, in two budgets: per-host names (`host_state`,
//! `host_ejections`, which exist only for hosts that were graded) have
//! their own, so that a mesh with many failing addresses cannot starve
//! the service-level names (ejections, transitions, the breaker...) of
//! theirs. Names past a budget are dropped and counted
//! ([`Metrics::take_dropped`]).

use std::collections::BTreeMap;

use super::host::Host;
use crate::metrics::Kind;

/// Service-level names one worker defines at most (about 35 per service:
/// 256 services with every label value seen).
const MAX_SERVICE_METRICS: usize = 8192;
/// Per-host names one worker defines at most.
pub const MAX_HOST_METRICS: usize = 2048;

/// A defined metric: Envoy's id and the last gauge value written.
struct Known {
    id: u32,
    last: Option<u64>,
}

/// Which budget a name counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One of the few names of the whole plugin: never refused.
    Global,
    /// A service's name.
    Service,
    /// One host's name.
    Host,
}

/// Keyed by name in an ordered map: every tick looks up each graded
/// host's gauge, so a scan over thousands of names would be the tick's
/// main cost (and a hash map would need random keys from the host).
#[derive(Default)]
pub struct Metrics {
    known: BTreeMap<String, Known>,
    service_names: usize,
    host_names: usize,
    /// Per-host updates dropped at the budget since last taken.
    dropped: u64,
}

impl Metrics {
    /// Names defined so far (the status endpoint's `vm.metricNames`).
    pub fn names(&self) -> usize {
        self.known.len()
    }

    fn entry(
        &mut self,
        host: &impl Host,
        name: String,
        kind: Kind,
        scope: Scope,
    ) -> Option<&mut Known> {
        if self.known.contains_key(&name) {
            return self.known.get_mut(&name);
        }
        let (count, max) = match scope {
            Scope::Global => (&mut self.service_names, usize::MAX),
            Scope::Service => (&mut self.service_names, MAX_SERVICE_METRICS),
            Scope::Host => (&mut self.host_names, MAX_HOST_METRICS),
        };
        if *count >= max {
            if scope == Scope::Host {
                self.dropped = self.dropped.saturating_add(1);
            }
            return None;
        }
        let id = host.define_metric(kind, &name)?;
        *count += 1;
        Some(self.known.entry(name).or_insert(Known { id, last: None }))
    }

    pub fn add(&mut self, host: &impl Host, name: String, delta: u64) {
        self.add_in(host, name, delta, Scope::Service);
    }

    pub fn add_in(&mut self, host: &impl Host, name: String, delta: u64, scope: Scope) {
        if delta == 0 {
            return;
        }
        if let Some(known) = self.entry(host, name, Kind::Counter, scope) {
            host.increment_metric(known.id, delta);
        }
    }

    pub fn set(&mut self, host: &impl Host, name: String, value: u64) {
        self.set_in(host, name, value, Scope::Service);
    }

    pub fn set_in(&mut self, host: &impl Host, name: String, value: u64, scope: Scope) {
        if let Some(known) = self.entry(host, name, Kind::Gauge, scope) {
            if known.last != Some(value) {
                host.record_metric(known.id, value);
                known.last = Some(value);
            }
        }
    }

    /// Per-host updates dropped at the budget since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}
