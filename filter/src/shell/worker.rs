//! One Envoy worker's view: the configuration in force, a cache of the
//! shared records, the outcomes not yet written, and the steering picker
//! per record. The request path only reads this cache; shared data is read
//! on ticks and written when a failure (or anything that could change a
//! grade) happens, so the healthy path costs no shared-data calls.
//!
//! A record ("unit") holds one upstream service's hosts and breaker, or,
//! for routes under an override with thresholds of its own, that
//! override's share of the service.

use std::rc::Rc;

use base64::Engine;

use super::host;
use super::metrics::Metrics;
use super::props;
use super::store::{Slot, Store, StoreError};
use crate::address_clusters::{AddressClusters, Lookup};
use crate::breaker::{Admission, BreakerState};
use crate::config::{Config, Encoding};
use crate::health::HostState;
use crate::metrics::{self as names, FAILURE_KINDS};
use crate::service::{Event, Observation, Pending, ServiceHealth};
use crate::steering::{self, SmoothPicker};

/// A touch of the service index at most this often keeps the slot ours.
const TOUCH_INTERVAL_MS: u64 = 60_000;
/// Routes whose VirtualService and override are remembered per worker.
const MAX_ROUTES: usize = 256;

/// What a route resolved to, once per route per worker.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub name: String,
    /// Envoy's virtual host: route names are unique only within one (two
    /// VirtualServices may both name a route `main`; unnamed routes abound).
    pub virtual_host: String,
    /// `namespace/name`, empty when the route is not from a VirtualService.
    pub virtual_service: String,
    pub override_index: Option<usize>,
}

struct Unit {
    /// Shared-data name: the cluster, plus the override's scope if any.
    key: String,
    cluster: String,
    scope: String,
    config: Rc<Config>,
    slot: Slot,
    snapshot: ServiceHealth,
    pending: Vec<(String, Pending)>,
    plan: Option<Plan>,
    last_touch_ms: u64,
    last_used_ms: u64,
    counts: Counts,
}

/// Per-unit counters kept on the request path (no host call) and added to
/// Envoy's stats on the tick.
#[derive(Default)]
struct Counts {
    requests: u64,
    failures: [u64; FAILURE_KINDS.len()],
    steered: u64,
    local_replies: u64,
}

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
            *entry = (entry.0.clone(), now, 0, 0);
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

/// Steering for one unit: the hosts' weights and their header values, in
/// the snapshot's host order.
struct Plan {
    weights: Vec<u8>,
    values: Vec<Vec<u8>>,
    picker: SmoothPicker,
}

pub struct Worker {
    config: Rc<Config>,
    /// Each override's merged configuration, by override index.
    override_configs: Vec<Rc<Config>>,
    store: Store,
    units: Vec<Unit>,
    routes: Vec<Route>,
    random: u64,
    metrics: Metrics,
    log_limiter: LogLimiter,
    /// Time of the last tick: precise enough for bookkeeping, and saves a
    /// host call per request.
    clock_ms: u64,
    /// Upstream address to cluster, so successes need not read the cluster.
    clusters: AddressClusters,
}

/// Addresses whose cluster a worker remembers (the default limits' hosts).
const MAX_ADDRESSES: usize = 4096;

fn position(units: &[Unit], cluster: &str, scope: &str) -> Option<usize> {
    units
        .iter()
        .position(|u| u.cluster == cluster && u.scope == scope)
}

/// The cache position of a unit this worker already has, marked used at
/// `now`. A free function, so a caller may hold a borrow of another field
/// (the address cache's answer) meanwhile.
fn known_unit(units: &mut [Unit], cluster: &str, scope: &str, now: u64) -> Option<usize> {
    let found = position(units, cluster, scope)?;
    units[found].last_used_ms = now;
    Some(found)
}

fn unit_key(cluster: &str, scope: &str) -> String {
    if scope.is_empty() {
        cluster.to_string()
    } else {
        format!("{cluster} [{scope}]")
    }
}

impl Worker {
    pub fn new(config: Rc<Config>, plugin: &str, now: u64, seed: u64) -> Self {
        let mut worker = Worker {
            config: Rc::clone(&config),
            override_configs: Vec::new(),
            store: Store::new(plugin),
            units: Vec::new(),
            routes: Vec::new(),
            random: seed | 1,
            metrics: Metrics::default(),
            log_limiter: LogLimiter::default(),
            clock_ms: now,
            clusters: AddressClusters::new(MAX_ADDRESSES),
        };
        worker.reconfigure(config);
        worker
    }

    pub fn config_base(&self) -> &Config {
        &self.config
    }

    pub fn reconfigure(&mut self, config: Rc<Config>) {
        self.override_configs = config
            .overrides
            .iter()
            .map(|o| Rc::new(o.config.clone()))
            .collect();
        self.config = config;
        // Units, routes and plans were derived from the old configuration.
        // Their outcomes are written first so nothing observed is lost.
        let now = self.clock_ms;
        for position in (0..self.units.len()).rev() {
            self.flush(position, now);
        }
        self.units.clear();
        self.routes.clear();
    }

    pub fn random(&mut self) -> u64 {
        self.random = steering::xorshift(self.random);
        self.random
    }

    /// Whether the request path needs the route (overrides, or header
    /// rules and replies that mention routes).
    pub fn route_aware(&self) -> bool {
        !self.config.overrides.is_empty()
            || !self.config.headers.request.is_empty()
            || !self.config.headers.response.is_empty()
    }

    /// Resolves a route by name, reading its metadata once per worker.
    pub fn route(&mut self, virtual_host: String, name: String) -> Route {
        if let Some(route) = self
            .routes
            .iter()
            .find(|r| r.name == name && r.virtual_host == virtual_host)
        {
            return route.clone();
        }
        let virtual_service = props::virtual_service().unwrap_or_default();
        let override_index = self
            .config
            .overrides
            .iter()
            .position(|o| o.matches(&virtual_service, &name));
        let route = Route {
            name,
            virtual_host,
            virtual_service,
            override_index,
        };
        if self.routes.len() >= MAX_ROUTES {
            self.routes.remove(0);
        }
        self.routes.push(route.clone());
        route
    }

    /// The configuration that governs a route, and the scope of its state
    /// (empty: the service's own).
    pub fn config_for(&self, route: Option<&Route>) -> (Rc<Config>, String) {
        let chosen = route.and_then(|r| r.override_index).and_then(|index| {
            let config = self.override_configs.get(index)?;
            let rule = self.config.overrides.get(index)?;
            let scope = if rule.has_own_state {
                rule.scope.clone()
            } else {
                String::new()
            };
            Some((Rc::clone(config), scope))
        });
        chosen.unwrap_or_else(|| (Rc::clone(&self.config), String::new()))
    }

    /// Whether any unit is steering or has a breaker that is not closed:
    /// only then must the request path look at the cluster at all.
    pub fn request_path_active(&self) -> bool {
        self.units
            .iter()
            .any(|u| u.plan.is_some() || u.snapshot.breaker.state() != BreakerState::Closed)
    }

    fn find(&self, cluster: &str, scope: &str) -> Option<usize> {
        position(&self.units, cluster, scope)
    }

    /// The breaker's answer for a new request. Closed and open are read
    /// from the cache; half-open takes a probe slot in shared data, so the
    /// probe limit holds across workers.
    pub fn admit(&mut self, cluster: &str, scope: &str) -> Admission {
        let Some(position) = self.find(cluster, scope) else {
            return Admission::Allowed;
        };
        let unit = &self.units[position];
        let settings = &unit.config.circuit_breaker;
        if !settings.enabled || unit.snapshot.breaker.state() == BreakerState::Closed {
            return Admission::Allowed;
        }
        let Ok(now) = host::now_ms() else {
            return Admission::Allowed;
        };
        let breaker = &unit.snapshot.breaker;
        if breaker.effective_state(now) == BreakerState::Open {
            return Admission::Rejected {
                retry_after_ms: breaker.open_until_ms().saturating_sub(now),
            };
        }
        let config = Rc::clone(&unit.config);
        let result = self.store.update(&unit.key, unit.slot, |record| {
            let (admission, transition) = record.breaker.admit(now, &config.circuit_breaker);
            (admission, transition.map(Event::Breaker))
        });
        match result {
            Ok(((admission, event), record)) => {
                self.units[position].snapshot = record;
                if let Some(event) = event {
                    self.report(position, &event, now);
                }
                admission
            }
            // Shared data unavailable: let the request through rather than
            // fail it on our account.
            Err(error) => {
                self.on_store_error(position, error);
                Admission::Allowed
            }
        }
    }

    pub fn breaker_state(&self, cluster: &str, scope: &str) -> BreakerState {
        self.find(cluster, scope).map_or(BreakerState::Closed, |p| {
            self.units[p]
                .snapshot
                .breaker
                .effective_state(self.clock_ms)
        })
    }

    /// The steering header value for the next request to this unit, if some
    /// of its hosts are below full weight; also the chosen host's address.
    pub fn steer(&mut self, cluster: &str, scope: &str) -> Option<(&[u8], &str)> {
        let position = self.find(cluster, scope)?;
        let unit = &mut self.units[position];
        let plan = unit.plan.as_mut()?;
        let index = plan.picker.pick(&plan.weights)?;
        let value = plan.values.get(index)?;
        let address = unit.snapshot.hosts.get(index)?.address.as_str();
        unit.counts.steered += 1;
        Some((value.as_slice(), address))
    }

    /// The status document: every record in shared data, not only the ones
    /// this worker has seen.
    pub fn status_json(&self, now: u64) -> String {
        let records = self.store.all().unwrap_or_default();
        crate::status::render(&records, now, &self.config)
    }

    pub fn count_local_reply(&mut self, cluster: &str, scope: &str) {
        if let Some(position) = self.find(cluster, scope) {
            self.units[position].counts.local_replies += 1;
        }
    }

    /// A host's grade; a host (or service) not graded yet is Healthy: there
    /// is no evidence against it.
    pub fn host_state(&self, cluster: &str, scope: &str, address: &str) -> HostState {
        self.find(cluster, scope)
            .and_then(|position| self.units[position].snapshot.host(address))
            .map_or(HostState::Healthy, |h| h.health.state())
    }

    /// The time of the last tick (or prompt write).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Records one finished request against its host and the breaker.
    /// `cluster` is known when the request path read it; otherwise it comes
    /// from the address cache, or from the host when the cache cannot say.
    pub fn observe_request(
        &mut self,
        cluster: Option<&str>,
        scope: &str,
        config: &Rc<Config>,
        address: &str,
        observation: Observation,
    ) {
        let read;
        let cluster = match cluster {
            Some(cluster) => {
                self.clusters.learn(address, cluster);
                cluster
            }
            None => {
                let matters =
                    observation.outcome.failed() || observation.breaker_slow || observation.probe;
                match self.clusters.lookup(address, matters) {
                    Lookup::Cached(cached) => {
                        let now = self.clock_ms;
                        if let Some(position) = known_unit(&mut self.units, cached, scope, now) {
                            return self.observe_at(position, config, address, observation);
                        }
                        read = cached.to_string();
                    }
                    Lookup::Ask => {
                        let Some(cluster) = props::cluster_name() else {
                            return;
                        };
                        self.clusters.learn(address, &cluster);
                        read = cluster;
                    }
                }
                &read
            }
        };
        let Some(position) = self.unit(cluster, scope, config, self.clock_ms) else {
            return;
        };
        self.observe_at(position, config, address, observation);
    }

    fn observe_at(
        &mut self,
        position: usize,
        config: &Rc<Config>,
        address: &str,
        observation: Observation,
    ) {
        let max_hosts = usize::from(config.limits.max_hosts_per_service);
        let unit = &mut self.units[position];
        unit.counts.requests += 1;
        if let Some(kind) = observation.outcome.failure {
            unit.counts.failures[names::failure_index(kind)] += 1;
        }
        match unit.pending.iter().position(|(a, _)| a == address) {
            Some(index) => unit.pending[index].1.add(observation),
            None if unit.pending.len() < max_hosts => {
                let mut pending = Pending::default();
                pending.add(observation);
                unit.pending.push((address.to_string(), pending));
            }
            // More distinct hosts in one flush interval than a service may
            // track: drop the outcome rather than grow.
            None => return,
        }
        // Write at once whatever could change a grade or the breaker; let a
        // quiet host's successes wait for the tick.
        let prompt = observation.outcome.failed()
            || observation.probe
            || !unit.snapshot.is_quiet(address)
            || unit.snapshot.breaker.state() != BreakerState::Closed;
        if prompt {
            if let Ok(now) = host::now_ms() {
                self.clock_ms = now;
                self.flush(position, now);
            }
        }
    }

    /// Periodic work: write pending outcomes and time-driven transitions,
    /// refresh the other workers' view, rebuild steering plans.
    pub fn tick(&mut self, now: u64) {
        self.clock_ms = now;
        self.adopt_known_services(now);
        let mut position = 0;
        while position < self.units.len() {
            let unit = &self.units[position];
            let dirty = unit.pending.iter().any(|(_, p)| !p.is_empty())
                || unit.snapshot.due(now, &unit.config);
            let kept = if dirty {
                self.flush(position, now)
            } else {
                self.refresh(position, now)
            };
            if kept {
                position += 1;
            }
        }
    }

    /// Returns false when the unit was dropped from this worker's cache.
    fn flush(&mut self, position: usize, now: u64) -> bool {
        let mut random = self.random();
        let unit = &mut self.units[position];
        let config = Rc::clone(&unit.config);
        let seen_writes = unit.snapshot.writes;
        for (_, pending) in &mut unit.pending {
            pending.seen_writes = seen_writes;
        }
        let pending = &unit.pending;
        let result = self.store.update(&unit.key, unit.slot, |record| {
            record.begin_write();
            let mut events = Vec::new();
            let mut next = || {
                random = steering::xorshift(random);
                random
            };
            record.advance(now, &config, &mut events);
            for (address, outcomes) in pending {
                record.apply(address, outcomes, now, &config, &mut next, &mut events);
            }
            events
        });
        match result {
            Ok((events, record)) => {
                let unit = &mut self.units[position];
                unit.pending.clear();
                unit.snapshot = record;
                for event in &events {
                    self.report(position, event, now);
                }
                self.after_sync(position, now);
                true
            }
            Err(error) => self.on_store_error(position, error),
        }
    }

    fn refresh(&mut self, position: usize, now: u64) -> bool {
        let unit = &self.units[position];
        match self.store.read(&unit.key, unit.slot) {
            Ok(record) => {
                self.units[position].snapshot = record;
                self.after_sync(position, now);
                true
            }
            Err(error) => self.on_store_error(position, error),
        }
    }

    fn on_store_error(&mut self, position: usize, error: StoreError) -> bool {
        match error {
            StoreError::Reassigned => {
                // Another service owns the slot now; look ours up afresh
                // on its next request.
                self.units.remove(position);
                false
            }
            other => {
                log::debug!("meshguard: shared data not updated, will retry: {other}");
                true
            }
        }
    }

    fn after_sync(&mut self, position: usize, now: u64) {
        let seed = self.random();
        let steering = self.config.steering.clone();
        let unit = &mut self.units[position];
        if now.saturating_sub(unit.last_touch_ms) >= TOUCH_INTERVAL_MS
            && unit.last_used_ms > unit.last_touch_ms
        {
            if let Err(StoreError::Reassigned) = self.store.touch(&unit.key, unit.slot, now) {
                unit.plan = None;
                return;
            }
            unit.last_touch_ms = now;
        }
        let weights = unit.snapshot.weights(now, &unit.config);
        unit.plan = plan(&unit.snapshot, weights, unit.plan.take(), &steering, seed);
        self.publish(position);
    }

    /// Adds the unit's batched counters to Envoy's stats and updates its
    /// gauges (written only when they change).
    fn publish(&mut self, position: usize) {
        let unit = &mut self.units[position];
        let counts = std::mem::take(&mut unit.counts);
        let key = unit.key.as_str();
        let metrics = &mut self.metrics;
        metrics.add(names::service_metric("requests", key), counts.requests);
        for (kind, count) in FAILURE_KINDS.iter().zip(counts.failures) {
            metrics.add(names::labelled("failures", key, "kind", kind), count);
        }
        metrics.add(names::service_metric("steered", key), counts.steered);
        metrics.add(
            names::service_metric("local_replies", key),
            counts.local_replies,
        );
        let mut by_state = [0u64; 4];
        for host in &unit.snapshot.hosts {
            let state = host.health.state();
            by_state[names::state_value(state) as usize] += 1;
            metrics.set(
                names::host_metric("host_state", key, &host.address),
                names::state_value(state),
            );
        }
        for state in [
            HostState::Healthy,
            HostState::Degraded,
            HostState::Unhealthy,
            HostState::WarmingUp,
        ] {
            let count = by_state[names::state_value(state) as usize];
            metrics.set(
                names::labelled("hosts", key, "state", names::state_label(state)),
                count,
            );
        }
        metrics.set(
            names::service_metric("breaker_state", key),
            names::breaker_value(unit.snapshot.breaker.state()),
        );
    }

    /// Counts an event in Envoy's stats and logs it (rate-limited per host).
    fn report(&mut self, position: usize, event: &Event, now: u64) {
        let key = self.units[position].key.clone();
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
                    format!(
                        "{}.from.{from}.to.{to}",
                        names::service_metric("transitions", &key)
                    ),
                    1,
                );
                if transition.to == HostState::Unhealthy {
                    let reason = names::ejection_reason(&transition.reason);
                    metrics.add(names::labelled("ejections", &key, "reason", reason), 1);
                    metrics.add(names::host_metric("host_ejections", &key, address), 1);
                }
                address.as_str()
            }
            Event::EjectionRefused { address, .. } => {
                metrics.add(names::service_metric("ejections_refused", &key), 1);
                address.as_str()
            }
            Event::HostNotTracked { address } => address.as_str(),
            Event::Breaker(transition) => {
                if transition.to == BreakerState::Open {
                    metrics.add(names::service_metric("breaker_trips", &key), 1);
                }
                "circuit breaker"
            }
        };
        let (allowed, suppressed) = self.log_limiter.allow(&format!("{key} {subject}"), now);
        if suppressed > 0 {
            log::info!("meshguard: {key} {subject}: {suppressed} more transition lines were suppressed in the last minute");
        }
        if allowed {
            log_event(&key, event);
        }
    }

    /// Takes on every record other workers have written, so that a worker
    /// honours an ejection or an open breaker from its very first request
    /// to a service, not only after one of its own requests completed.
    fn adopt_known_services(&mut self, now: u64) {
        let Ok(keys) = self.store.keys() else {
            return;
        };
        for key in keys {
            if self.units.len() >= usize::from(self.config.limits.max_services) {
                return;
            }
            if self.units.iter().any(|u| u.key == key) {
                continue;
            }
            let Some((cluster, scope, config)) = self.unit_of_key(&key) else {
                continue;
            };
            let _ = self.unit(&cluster, &scope, &config, now);
        }
    }

    /// The cluster, scope and configuration a record key stands for, if the
    /// configuration in force still has that scope.
    fn unit_of_key(&self, key: &str) -> Option<(String, String, Rc<Config>)> {
        let Some((cluster, scope)) = key.strip_suffix(']').and_then(|k| k.rsplit_once(" [")) else {
            return Some((key.to_string(), String::new(), Rc::clone(&self.config)));
        };
        let index = self
            .config
            .overrides
            .iter()
            .position(|o| o.scope == scope)?;
        let config = self.override_configs.get(index)?;
        Some((cluster.to_string(), scope.to_string(), Rc::clone(config)))
    }

    /// The cache position of a unit, resolving its shared slot the first
    /// time this worker sees it (and evicting the least recently used unit
    /// if the cache is full).
    fn unit(&mut self, cluster: &str, scope: &str, config: &Rc<Config>, now: u64) -> Option<usize> {
        if let Some(position) = known_unit(&mut self.units, cluster, scope, now) {
            return Some(position);
        }
        let key = unit_key(cluster, scope);
        let slot = match self.store.resolve(&key, now, &self.config.limits) {
            Ok(slot) => slot,
            Err(error) => {
                log::debug!("meshguard: not tracking {key}: {error}");
                return None;
            }
        };
        if self.units.len() >= usize::from(self.config.limits.max_services) {
            let oldest = self
                .units
                .iter()
                .enumerate()
                .min_by_key(|(_, u)| u.last_used_ms)
                .map(|(position, _)| position);
            // Write its outcomes before forgetting it (flush returns false
            // when it is already gone).
            if let Some(oldest) = oldest {
                if self.flush(oldest, now) {
                    self.units.remove(oldest);
                }
            }
        }
        let snapshot = self
            .store
            .read(&key, slot)
            .unwrap_or_else(|_| ServiceHealth::new(&key, slot.epoch));
        self.units.push(Unit {
            key,
            cluster: cluster.to_string(),
            scope: scope.to_string(),
            config: Rc::clone(config),
            slot,
            snapshot,
            pending: Vec::new(),
            plan: None,
            last_touch_ms: now,
            last_used_ms: now,
            counts: Counts::default(),
        });
        let position = self.units.len() - 1;
        self.after_sync(position, now);
        Some(position)
    }
}

/// Builds the steering plan for a snapshot, keeping the previous picker's
/// place in its cycle when the weights did not change.
fn plan(
    snapshot: &ServiceHealth,
    weights: Vec<u8>,
    previous: Option<Plan>,
    steering: &crate::config::Steering,
    seed: u64,
) -> Option<Plan> {
    if !steering.enabled || !steering::needs_steering(&weights) {
        return None;
    }
    if let Some(previous) = previous {
        if previous.weights == weights && previous.values.len() == snapshot.hosts.len() {
            return Some(previous);
        }
    }
    let values = snapshot
        .hosts
        .iter()
        .map(|h| match steering.encoding {
            Encoding::Plain => h.address.as_bytes().to_vec(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .encode(h.address.as_bytes())
                .into_bytes(),
        })
        .collect();
    let picker = SmoothPicker::new(&weights, seed);
    Some(Plan {
        weights,
        values,
        picker,
    })
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
        Event::HostNotTracked { address } => log::warn!(
            "meshguard: {unit} host {address}: not tracked, host table full (limits.maxHostsPerService)"
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
