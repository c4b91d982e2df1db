//! One Envoy worker's view: the configuration in force, a cache of the
//! shared service records, the outcomes not yet written, and the steering
//! picker per service. The request path only reads this cache; shared data
//! is read on ticks and written when a failure (or anything that could
//! change a grade) happens, so the healthy path costs no shared-data calls.

use std::rc::Rc;

use base64::Engine;

use super::host;
use super::store::{Slot, Store, StoreError};
use crate::classify::Outcome;
use crate::config::{Config, Encoding};
use crate::service::{Event, Pending, ServiceHealth};
use crate::steering::{self, SmoothPicker};

/// A touch of the service index at most this often keeps the slot ours.
const TOUCH_INTERVAL_MS: u64 = 60_000;

struct LocalService {
    name: String,
    slot: Slot,
    snapshot: ServiceHealth,
    pending: Vec<(String, Pending)>,
    plan: Option<Plan>,
    last_touch_ms: u64,
    last_used_ms: u64,
}

/// Steering for one service: the hosts' weights and their header values,
/// in the snapshot's host order.
struct Plan {
    weights: Vec<u8>,
    values: Vec<Vec<u8>>,
    picker: SmoothPicker,
}

pub struct Worker {
    pub config: Rc<Config>,
    store: Store,
    services: Vec<LocalService>,
    random: u64,
    /// Time of the last tick: precise enough for bookkeeping, and saves a
    /// host call per request.
    clock_ms: u64,
}

impl Worker {
    pub fn new(config: Rc<Config>, plugin: &str, now: u64) -> Self {
        Worker {
            config,
            store: Store::new(plugin),
            services: Vec::new(),
            random: now | 1,
            clock_ms: now,
        }
    }

    pub fn reconfigure(&mut self, config: Rc<Config>) {
        self.config = config;
        // Plans depend on weights and header settings; rebuild on next tick.
        for service in &mut self.services {
            service.plan = None;
        }
    }

    fn next_random(&mut self) -> u64 {
        self.random = steering::xorshift(self.random);
        self.random
    }

    /// Whether any service is being steered, so the request path can skip
    /// even reading the cluster name when nothing is.
    pub fn steering_active(&self) -> bool {
        self.services.iter().any(|s| s.plan.is_some())
    }

    /// The steering header value for the next request to `cluster`, if the
    /// service has hosts below full weight.
    pub fn steer(&mut self, cluster: &str) -> Option<&[u8]> {
        let service = self.services.iter_mut().find(|s| s.name == cluster)?;
        let plan = service.plan.as_mut()?;
        let index = plan.picker.pick(&plan.weights)?;
        plan.values.get(index).map(Vec::as_slice)
    }

    /// Records one request's outcome against its host.
    pub fn observe(&mut self, cluster: &str, address: &str, outcome: Outcome) {
        let Some(position) = self.local_service(cluster) else {
            return;
        };
        let max_hosts = usize::from(self.config.limits.max_hosts_per_service);
        let service = &mut self.services[position];
        match service.pending.iter().position(|(a, _)| a == address) {
            Some(index) => service.pending[index].1.add(outcome),
            None if service.pending.len() < max_hosts => {
                let mut pending = Pending::default();
                pending.add(outcome);
                service.pending.push((address.to_string(), pending));
            }
            // More distinct hosts in one flush interval than a service may
            // track: drop the outcome rather than grow.
            None => return,
        }
        // Write at once whatever could change a grade; let a quiet host's
        // successes wait for the tick.
        if outcome.failed() || !service.snapshot.is_quiet(address) {
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
        let mut position = 0;
        while position < self.services.len() {
            let service = &self.services[position];
            let dirty = service.pending.iter().any(|(_, p)| !p.is_empty())
                || service.snapshot.due(now, &self.config);
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

    /// Returns false when the service was dropped from this worker's cache.
    fn flush(&mut self, position: usize, now: u64) -> bool {
        let config = Rc::clone(&self.config);
        let mut random = self.next_random();
        let service = &mut self.services[position];
        let pending = &service.pending;
        let result = self.store.update(&service.name, service.slot, |record| {
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
                let service = &mut self.services[position];
                service.pending.clear();
                service.snapshot = record;
                for event in &events {
                    log_event(&service.name, event);
                }
                self.after_sync(position, now);
                true
            }
            Err(error) => self.on_store_error(position, error),
        }
    }

    fn refresh(&mut self, position: usize, now: u64) -> bool {
        let service = &self.services[position];
        match self.store.read(&service.name, service.slot) {
            Ok(record) => {
                self.services[position].snapshot = record;
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
                self.services.remove(position);
                false
            }
            other => {
                log::debug!("meshguard: shared data not updated, will retry: {other}");
                true
            }
        }
    }

    fn after_sync(&mut self, position: usize, now: u64) {
        let seed = self.next_random();
        let config = Rc::clone(&self.config);
        let service = &mut self.services[position];
        if now.saturating_sub(service.last_touch_ms) >= TOUCH_INTERVAL_MS
            && service.last_used_ms > service.last_touch_ms
        {
            if let Err(StoreError::Reassigned) = self.store.touch(&service.name, service.slot, now)
            {
                self.services[position].plan = None;
                return;
            }
            service.last_touch_ms = now;
        }
        service.plan = plan(&service.snapshot, service.plan.take(), now, &config, seed);
    }

    /// The cache position of `cluster`, resolving its shared slot the first
    /// time this worker sees it (and evicting the least recently used
    /// service if the cache is full).
    fn local_service(&mut self, cluster: &str) -> Option<usize> {
        let now = self.clock_ms;
        if let Some(position) = self.services.iter().position(|s| s.name == cluster) {
            self.services[position].last_used_ms = now;
            return Some(position);
        }
        let slot = match self.store.resolve(cluster, now, &self.config.limits) {
            Ok(slot) => slot,
            Err(error) => {
                log::debug!("meshguard: not tracking {cluster}: {error}");
                return None;
            }
        };
        if self.services.len() >= usize::from(self.config.limits.max_services) {
            let oldest = self
                .services
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.last_used_ms)
                .map(|(position, _)| position);
            // Write its outcomes before forgetting it (flush returns false
            // when it is already gone).
            if let Some(oldest) = oldest {
                if self.flush(oldest, now) {
                    self.services.remove(oldest);
                }
            }
        }
        let snapshot = self
            .store
            .read(cluster, slot)
            .unwrap_or_else(|_| ServiceHealth::new(cluster, slot.epoch));
        self.services.push(LocalService {
            name: cluster.to_string(),
            slot,
            snapshot,
            pending: Vec::new(),
            plan: None,
            last_touch_ms: now,
            last_used_ms: now,
        });
        let position = self.services.len() - 1;
        self.after_sync(position, now);
        Some(position)
    }
}

/// Builds the steering plan for a snapshot, keeping the previous picker's
/// place in its cycle when the weights did not change.
fn plan(
    snapshot: &ServiceHealth,
    previous: Option<Plan>,
    now: u64,
    config: &Config,
    seed: u64,
) -> Option<Plan> {
    if !config.steering.enabled {
        return None;
    }
    let weights = snapshot.weights(now, config);
    if !steering::needs_steering(&weights) {
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
        .map(|h| match config.steering.encoding {
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

/// One line per grade change. Envoy already prefixes wasm logs with the
/// plugin's name, root id and VM id.
fn log_event(service: &str, event: &Event) {
    match event {
        Event::Transition {
            address,
            transition: t,
        } => match t.ejected_for_ms {
            Some(ms) => log::info!(
                "meshguard: {service} host {address}: {} -> {}: {}; ejected for {}.{:03}s (ejection #{})",
                t.from,
                t.to,
                t.reason,
                ms / 1000,
                ms % 1000,
                t.times_ejected
            ),
            None => log::info!(
                "meshguard: {service} host {address}: {} -> {}: {}",
                t.from,
                t.to,
                t.reason
            ),
        },
        Event::EjectionRefused { address, reason } => log::info!(
            "meshguard: {service} host {address}: ejection refused by maxEjectionPercent ({reason})"
        ),
        Event::HostNotTracked { address } => log::warn!(
            "meshguard: {service} host {address}: not tracked, host table full (limits.maxHostsPerService)"
        ),
    }
}
