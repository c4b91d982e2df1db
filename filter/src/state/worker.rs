//! One Envoy worker's view: the configuration in force, a cache of the
//! shared records ("units"), the outcomes not yet written, the hosts seen
//! and the steering plan per unit. The request path only reads this cache;
//! shared data is read on ticks and written when a failure (or anything
//! that could change a grade) happens, so the healthy path costs no
//! shared-data calls. A tick with nothing new reads one shared counter,
//! and an idle worker ticks ten times less often.

use std::rc::Rc;

use super::host::Host;
use super::members::Seen;
use super::plan::{Choice, Plan};
use super::report::Reporter;
use super::store::{Store, StoreError};
use super::unit::{parse_key, unit_key, Unit};
use crate::address_clusters::{AddressClusters, Lookup};
use crate::breaker::Admission;
use crate::config::{Config, Encoding, Mode};
use crate::ids::Unpredictable;
use crate::metrics as names;
use crate::model::BreakerState;
use crate::model::HostState;
use crate::service::{Event, Observation, Pending, ServiceHealth};
use crate::steering;

/// A touch of the service index at most this often keeps the slot ours.
const TOUCH_INTERVAL_MS: u64 = 60_000;
/// Routes whose VirtualService and override are remembered per worker.
const MAX_ROUTES: usize = 256;
/// Addresses whose cluster a worker remembers.
const MAX_ADDRESSES: usize = 16_384;
/// Discovery's share of steered requests: `discoveryPercent` when steering
/// starts, four times that after a request left to Envoy found a host no
/// worker knew, a 64th less after each one that found nothing new, down
/// to a tenth of `discoveryPercent`. A service that is not changing thus
/// sends almost nothing the way of an ejected host, and one that is
/// growing is learnt fast.
const DISCOVERY_BOOST_FACTOR: u16 = 4;
const DISCOVERY_FLOOR_DIVISOR: u16 = 10;
const DISCOVERY_DECAY_DIVISOR: u16 = 64;
/// Tick periods: busy, and idle (no request for `IDLE_AFTER_MS`).
pub const TICK_MS: u32 = 100;
pub const IDLE_TICK_MS: u32 = 1_000;
const IDLE_AFTER_MS: u64 = 2_000;

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

/// How a finished request was routed, as steering decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed<'a> {
    /// Not steered: nothing was steering this service.
    Envoy,
    /// Steered to the first of these hosts; the others were named for its
    /// retries, in order.
    To(&'a [Rc<str>]),
    /// Left to Envoy's load balancer by discovery.
    Discovery,
}

/// What a first attempt that Envoy retried elsewhere counts as for the
/// host it was steered to: a gateway failure (what meshguard's retry
/// policy retries: connect failures, refused streams, 503).
const RETRIED_ATTEMPT: crate::classify::Outcome = crate::classify::Outcome {
    failure: Some(crate::classify::FailureKind::Gateway(503)),
    slow: false,
};

/// Returns from ejection a worker remembers having sent a first request to.
const MAX_RETURNS_CHECKED: usize = 64;

/// A host missing from the shared member list goes back in only if this
/// worker saw it answer this recently.
const RELIST_WITHIN_MS: u64 = 5_000;

/// Discovery requests over which the share landing on unknown hosts is
/// estimated; the counts are halved past it, so the estimate follows.
const DISCOVERY_SAMPLE: u16 = 64;

/// A downstream instance sees a request's last attempt only. Of the
/// requests it does not steer (nothing is steering the service) it reads
/// `upstream.request_attempt_count`
/// on one in this many (a property read costs about 6 % of the filter's
/// work): a retried one means earlier attempts failed on hosts it cannot
/// name, so it starts steering with the retries' hosts named (see
/// `Plan::alternates`) for `ATTRIBUTE_FOR_MS`, renewed by every retried
/// request, and each retried request then says whose attempts failed.
const ATTEMPT_SAMPLE: u16 = 8;
/// While successes are sampled (nothing has been wrong on the worker for
/// `EXACT_FOR_MS`), a skipped success is asked only one time in this
/// many, and at least every `SAMPLING_ATTEMPT_EVERY_MS`: the read costs as
/// much as the address read sampling saves (about 12k Envoy instructions),
/// so at one in eight it alone would cost 1.7k per request.
const SAMPLING_ATTEMPT_SAMPLE: u16 = 64;
const SAMPLING_ATTEMPT_EVERY_MS: u64 = 1_000;
const ATTRIBUTE_FOR_MS: u64 = 30_000;
/// Hosts a steered request names: its own and two for retries (Istio's
/// default route retries twice).
const NAMED_HOSTS: usize = 3;

/// An upstream instance marks the records it feeds as fed for this long,
/// renewed once less than `ATTEMPTS_RENEW_MS` is left, so downstream
/// instances stop grading hosts themselves while it runs, and start again
/// within this time if it is removed.
const ATTEMPTS_FEED_MS: u64 = 30_000;
const ATTEMPTS_RENEW_MS: u64 = 20_000;

/// Whether an upstream instance's mark on a record, fed until `until`, is
/// due for renewal at `now`.
fn feed_renewal_due(until: u64, now: u64) -> bool {
    until < now.saturating_add(ATTEMPTS_RENEW_MS)
}

/// What steering does with one request.
#[derive(Debug, Clone, Copy)]
pub enum Steer<'a> {
    /// Send it to the first of `hosts` (the others are named for its
    /// retries): the header value, and the retry policy to ask for (maybe
    /// empty; see `Discover`).
    To {
        value: &'a [u8],
        hosts: &'a [Rc<str>],
        retry_on: &'a str,
    },
    /// Leave it to Envoy's load balancer; `retry_on` (maybe empty) is the
    /// retry policy to ask for, in case it lands on an ejected host.
    Discover { retry_on: &'a str },
}

pub struct Worker<H: Host> {
    host: H,
    config: Rc<Config>,
    /// Each override's merged configuration, by override index.
    override_configs: Vec<Rc<Config>>,
    store: Store,
    units: Vec<Unit>,
    routes: Vec<Route>,
    /// xorshift state for [`Worker::jitter_seed`].
    random: u64,
    ids: Unpredictable,
    ids_keyed: bool,
    reporter: Reporter,
    /// Time of the last tick: precise enough for bookkeeping, and saves a
    /// host call per request.
    clock_ms: u64,
    /// Upstream address to cluster, so successes need not read the cluster.
    clusters: AddressClusters,
    /// The shared change count when this worker last caught up.
    seen_changes: Option<u64>,
    /// Some unit steers or has a breaker that is not closed: only then
    /// must the request path look at the cluster at all.
    active: bool,
    last_request_ms: u64,
    idle_ticks: bool,
    /// Until when every success is attributed: a minute after the last
    /// failure or slow call this worker saw (see `sample_success`).
    exact_until_ms: u64,
    /// Plain successes met while sampling, to pick one in
    /// `successSampling`; and those left unattributed, to ask one in
    /// `SAMPLING_ATTEMPT_SAMPLE` (and when it last asked) whether retries
    /// hid failures.
    sampled: u32,
    unattributed: u16,
    attempts_asked_ms: u64,
}

/// A success left unattributed, or one to record and for how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampled {
    /// Not recorded: Envoy's balancer spreads requests evenly, and the
    /// one in `successSampling` that is recorded stands for the rest.
    Skip,
    /// Recorded as this many successes (1 outside sampling). `attempts`:
    /// the request's attempt count, when it was read to decide.
    Record { weight: u16, attempts: Option<u64> },
}

impl Sampled {
    /// Recorded as itself: outside sampling, and for anything not a plain
    /// success.
    pub const EXACT: Sampled = Sampled::Record {
        weight: 1,
        attempts: None,
    };
}

/// How long every success is attributed after a failure, a slow call, a
/// retry that hid failures, or a host this worker had not seen: the windows
/// and streaks of the hosts involved stay exact meanwhile, and a worker
/// learns a service's hosts (which steering needs) before it samples.
pub const EXACT_FOR_MS: u64 = 30_000;

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

impl<H: Host> Worker<H> {
    pub fn new(host: H, config: Rc<Config>, plugin: &str, now: u64, seed: u64) -> Self {
        let mut worker = Worker {
            host,
            config: Rc::clone(&config),
            override_configs: Vec::new(),
            store: Store::new(plugin),
            units: Vec::new(),
            routes: Vec::new(),
            random: seed | 1,
            ids: Unpredictable::from_seed(seed),
            ids_keyed: false,
            reporter: Reporter::default(),
            clock_ms: now,
            clusters: AddressClusters::new(MAX_ADDRESSES),
            seen_changes: None,
            active: false,
            last_request_ms: now,
            idle_ticks: false,
            exact_until_ms: 0,
            sampled: 0,
            unattributed: 0,
            attempts_asked_ms: 0,
        };
        worker.reconfigure(config);
        worker
    }

    #[cfg(test)]
    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn config_base(&self) -> &Config {
        &self.config
    }

    /// An upstream instance sees attempts, not requests.
    pub fn sees_attempts(&self) -> bool {
        self.config.mode == Mode::Upstream
    }

    /// A new configuration. Units whose scope it still has keep their
    /// members and pending outcomes (written first under the old settings);
    /// routes are resolved again.
    pub fn reconfigure(&mut self, config: Rc<Config>) {
        let now = self.clock_ms;
        for position in (0..self.units.len()).rev() {
            self.flush(position, now);
        }
        self.override_configs = config
            .overrides
            .iter()
            .map(|o| Rc::new(o.config.clone()))
            .collect();
        self.config = config;
        self.routes.clear();
        let mut position = 0;
        while position < self.units.len() {
            match self.config_of_scope(&self.units[position].scope.clone()) {
                Some(config) => {
                    let unit = &mut self.units[position];
                    unit.discovery_per_mille = u16::from(config.steering.discovery_percent) * 10;
                    unit.config = config;
                    self.after_sync(position, now);
                    position += 1;
                }
                None => {
                    self.units.remove(position);
                }
            }
        }
        self.units
            .truncate(usize::from(self.config.limits.max_services));
        self.update_active();
    }

    /// Bits that cannot be predicted from earlier ones (ChaCha12, see
    /// [`crate::ids`]): for request ids, which leave the process.
    pub fn random(&mut self) -> u64 {
        self.ids.next_u64()
    }

    /// Keys [`Worker::random`] with 256 bits of the host's randomness
    /// (until then it is keyed from the seed given to [`Worker::new`]).
    pub fn key_request_ids(&mut self, key: [u64; 4]) {
        self.ids = Unpredictable::from_key(key);
        self.ids_keyed = true;
    }

    pub fn request_ids_keyed(&self) -> bool {
        self.ids_keyed
    }

    /// Cheap bits for steering's jitter and pick order, which only spread
    /// load and never leave the process: predictability costs nothing.
    fn jitter_seed(&mut self) -> u64 {
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
        let virtual_service = self.host.virtual_service().unwrap_or_default();
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

    /// The configuration of a scope of state, if the configuration in force
    /// still has it.
    fn config_of_scope(&self, scope: &str) -> Option<Rc<Config>> {
        if scope.is_empty() {
            return Some(Rc::clone(&self.config));
        }
        let index = self
            .config
            .overrides
            .iter()
            .position(|o| o.has_own_state && o.scope == scope)?;
        self.override_configs.get(index).map(Rc::clone)
    }

    /// Called first on every request: whether the request path must look
    /// at the cluster (some unit steers, or has a breaker that is not
    /// closed). A worker that was idle catches up first.
    pub fn request_path_active(&mut self) -> bool {
        if self.idle_ticks {
            self.idle_ticks = false;
            self.host.set_tick_period_ms(TICK_MS);
            if let Some(now) = self.host.now_ms() {
                self.last_request_ms = now;
                self.tick(now);
            }
        }
        self.last_request_ms = self.last_request_ms.max(self.clock_ms);
        self.active
    }

    fn update_active(&mut self) {
        self.active = self
            .units
            .iter()
            .any(|u| u.plan.is_some() || u.snapshot.breaker.state() != BreakerState::Closed);
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
        let Some(now) = self.host.now_ms() else {
            return Admission::Allowed;
        };
        let breaker = &unit.snapshot.breaker;
        if breaker.effective_state(now) == BreakerState::Open {
            return Admission::Rejected {
                retry_after_ms: breaker.open_until_ms().saturating_sub(now),
            };
        }
        let config = Rc::clone(&unit.config);
        let result = self
            .store
            .update(&self.host, &unit.key, unit.slot, |record| {
                let (admission, transition) = record.breaker.admit(now, &config.circuit_breaker);
                (admission, transition.map(Event::Breaker))
            });
        match result {
            Ok(((admission, event), record)) => {
                self.units[position].snapshot = record;
                if let Some(event) = event {
                    self.announce();
                    let key = self.units[position].key.clone();
                    self.reporter.report(&self.host, &key, &event, now);
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

    /// What to do with the next request to this unit, when some of its
    /// hosts are below full weight, for a request of an idempotent method.
    #[cfg(test)]
    pub fn steer(&mut self, cluster: &str, scope: &str) -> Option<Steer<'_>> {
        self.steer_request(cluster, scope, &|| true)
    }

    /// [`steer`](Self::steer); `idempotent` tells (asked only when the
    /// request would be left to Envoy while a host is ejected) whether the
    /// request's method may be retried after any 5xx.
    pub fn steer_request(
        &mut self,
        cluster: &str,
        scope: &str,
        idempotent: &dyn Fn() -> bool,
    ) -> Option<Steer<'_>> {
        let position = self.find(cluster, scope)?;
        let Unit {
            plan,
            config,
            counts,
            unknown_percent,
            discovery_per_mille,
            discovery_paused,
            steer_value,
            alternates,
            attributing,
            ..
        } = &mut self.units[position];
        let plan = plan.as_mut()?;
        let steering = &config.steering;
        // Hosts this worker does not know get only what is left to Envoy,
        // a share of it: leave twice their share (all of it while half the
        // service is unknown) so they are learnt within a pass of Envoy's
        // balancer, at the price of that share reaching ejected hosts.
        let unknown = u16::from(*unknown_percent).saturating_mul(20).min(1000);
        let discovery = if *discovery_paused {
            0
        } else {
            *discovery_per_mille
        };
        let mut per_mille = discovery.max(unknown);
        // While a host is ejected, a request may land there anyway: left to
        // Envoy, or steered to a host that has just left (Envoy falls back
        // to its balancer). Ask Envoy to retry such a one elsewhere; steered
        // requests only while most of the service is healthy, or the
        // retries would add load to hosts that are failing too.
        let retry_on = if plan.has_ejected {
            steering.retry_on.as_str()
        } else {
            ""
        };
        let steered_retry_on = if plan.mostly_healthy { retry_on } else { "" };
        // A request left to Envoy may land on the ejected host, whose error
        // answer (a 500, a 504) `retry_on` does not retry: only idempotent
        // ones are left to Envoy then, asking to retry any 5xx
        // (`discovery_retry_on`); the others are steered, and discovery
        // waits for the next idempotent request.
        if !retry_on.is_empty() && plan.discovery_due(per_mille) && !idempotent() {
            per_mille = 0;
        }
        // While retries hide failures, name the hosts of its retries too,
        // so that a retried request says whose attempts failed (never when
        // an upstream instance sees every attempt, nor in base64: a session
        // header holds one host; see `after_sync`). Not otherwise: a named
        // host takes over from a steered host that has left, where Envoy's
        // balancer would spread those requests over new hosts too.
        let name_retries = *attributing;
        match plan.pick(per_mille)? {
            Choice::Host(target) => {
                counts.steered += 1;
                alternates.clear();
                alternates.push(Rc::clone(&target.address));
                steer_value.clear();
                steer_value.extend_from_slice(target.value());
                if name_retries {
                    let first = Rc::clone(&target.address);
                    plan.alternates(&first, NAMED_HOSTS, alternates);
                    for host in &alternates[1..] {
                        steer_value.push(b',');
                        steer_value.extend_from_slice(host.as_bytes());
                    }
                }
                Some(Steer::To {
                    value: steer_value,
                    hosts: alternates,
                    retry_on: steered_retry_on,
                })
            }
            // Idempotent (see above): an error answer of the ejected host
            // is retried too.
            Choice::Envoy if retry_on.is_empty() => Some(Steer::Discover { retry_on }),
            Choice::Envoy => Some(Steer::Discover {
                retry_on: &steering.discovery_retry_on,
            }),
        }
    }

    /// The status document: every record in shared data, not only the ones
    /// this worker has seen (up to `status::MAX_STATUS_BYTES`).
    pub fn status_json(&self, now: u64) -> String {
        let mut document = crate::status::Document::new(now);
        self.store.each(&self.host, |record| {
            let members = self
                .units
                .iter()
                .find(|u| u.key == record.service)
                .map_or(record.size(), |u| u.members.len().max(record.size()));
            document.add(&record, now, &self.config, members);
        });
        document.finish()
    }

    /// The status document's report on the answering VM (`vm`: a random
    /// id naming it, its linear memory, plugin instances, requests in
    /// flight and this instance's tables) and on the plugin's shared data
    /// (`sharedData`), as a fragment `,"vm":{..},"sharedData":{..}` for the
    /// end of the document.
    pub fn vm_report(
        &self,
        id: u32,
        memory_bytes: usize,
        instances: usize,
        in_flight: usize,
    ) -> String {
        let (keys, bytes) = self.store.footprint(&self.host);
        let hosts: usize = self.units.iter().map(|u| u.members.len()).sum();
        format!(
            ",\"vm\":{{\"id\":{id},\"memoryBytes\":{memory_bytes},\"instances\":{instances},\"inFlight\":{in_flight},\"services\":{},\"hosts\":{hosts},\"addresses\":{},\"routes\":{},\"metricNames\":{}}},\"sharedData\":{{\"keys\":{keys},\"bytes\":{bytes}}}",
            self.units.len(),
            self.clusters.count(),
            self.routes.len(),
            self.reporter.metric_names()
        )
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

    /// Whether a plain success (not a failure, not slow, not steered, not
    /// a probe) Envoy's balancer sent somewhere is recorded. Reading its
    /// host costs more than the rest of the filter's work per request, so
    /// while nothing is wrong on this worker (no unit steers or holds a
    /// breaker, no failure, slow call, hidden retry or new host for
    /// `EXACT_FOR_MS`)
    /// one in `successSampling` is recorded and counts for that many. A
    /// window then holds the same mix of outcomes in expectation; the
    /// first failure ends sampling before it is recorded, so streaks and
    /// the windows of failing hosts are exact. One skipped success in
    /// `SAMPLING_ATTEMPT_SAMPLE` (and one at least every
    /// `SAMPLING_ATTEMPT_EVERY_MS`) is still asked whether retries hid
    /// failures, as recorded ones are, and recorded when they did.
    pub fn sample_success(&mut self, config: &Config) -> Sampled {
        let every = config.detection.success_sampling.max(1);
        if every == 1 || self.active || self.clock_ms < self.exact_until_ms || self.sees_attempts()
        {
            return Sampled::EXACT;
        }
        self.sampled = self.sampled.wrapping_add(1);
        if self.sampled.is_multiple_of(u32::from(every)) {
            return Sampled::Record {
                weight: every,
                attempts: None,
            };
        }
        self.unattributed = self.unattributed.wrapping_add(1);
        let now = self.clock_ms;
        if self.unattributed.is_multiple_of(SAMPLING_ATTEMPT_SAMPLE)
            || now.saturating_sub(self.attempts_asked_ms) >= SAMPLING_ATTEMPT_EVERY_MS
        {
            self.unattributed = 0;
            self.attempts_asked_ms = now;
            if let Some(n) = self.host.attempt_count().filter(|n| *n > 1) {
                return Sampled::Record {
                    weight: 1,
                    attempts: Some(n),
                };
            }
        }
        Sampled::Skip
    }

    /// Records one finished request against its host and the breaker.
    /// `cluster` is known when the request path read it; otherwise it comes
    /// from the address cache, or from the host when the cache cannot say.
    /// `routed` says what steering decided for it.
    pub fn observe_request(
        &mut self,
        cluster: Option<&str>,
        scope: &str,
        config: &Rc<Config>,
        address: &str,
        observation: Observation,
        routed: Routed<'_>,
    ) {
        let exact = Sampled::EXACT;
        self.observe_sampled(cluster, scope, config, address, observation, routed, exact);
    }

    /// [`Worker::observe_request`] for a request [`Worker::sample_success`]
    /// chose to record (`Skip` records nothing).
    #[allow(clippy::too_many_arguments)]
    pub fn observe_sampled(
        &mut self,
        cluster: Option<&str>,
        scope: &str,
        config: &Rc<Config>,
        address: &str,
        observation: Observation,
        routed: Routed<'_>,
        sampled: Sampled,
    ) {
        let Sampled::Record { weight, attempts } = sampled else {
            return;
        };
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
                            return self.observe_at(
                                position,
                                config,
                                address,
                                observation,
                                routed,
                                (weight, attempts),
                            );
                        }
                        read = cached.to_string();
                    }
                    Lookup::Ask => {
                        let Some(cluster) = self.host.cluster_name() else {
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
        self.observe_at(
            position,
            config,
            address,
            observation,
            routed,
            (weight, attempts),
        );
    }

    /// `sampled`: how many successes this one stands for, and the
    /// request's attempt count when already read.
    fn observe_at(
        &mut self,
        position: usize,
        config: &Rc<Config>,
        address: &str,
        observation: Observation,
        routed: Routed<'_>,
        sampled: (u16, Option<u64>),
    ) {
        let (weight, attempts) = sampled;
        let now = self.clock_ms;
        if observation.outcome.failed() || observation.outcome.slow {
            self.exact_until_ms = now.saturating_add(EXACT_FOR_MS);
        }
        let limits = &config.limits;
        let upstream = self.sees_attempts();
        let unit = &mut self.units[position];
        // An upstream instance grades this service's hosts from every
        // attempt: a downstream one leaves them to it.
        let fed = !upstream && unit.snapshot.attempts_until_ms > now;
        unit.counts.requests += u64::from(weight);
        if let Some(kind) = observation.outcome.failure {
            unit.counts.failures[names::failure_index(kind)] += 1;
        }
        let success = !observation.outcome.failed();
        let capacity = usize::from(limits.max_hosts_per_service);
        let seen = unit
            .members
            .saw(address, now, capacity, if success { weight } else { 0 });
        if seen == Seen::New {
            self.exact_until_ms = now.saturating_add(EXACT_FOR_MS);
        }
        match seen {
            Seen::Full => unit.counts.not_tracked += 1,
            Seen::New if unit.members_found.len() < capacity => {
                if let Some(name) = unit.members.address(address) {
                    unit.members_found.push(name);
                }
            }
            _ => {}
        }
        if routed == Routed::Discovery {
            // Envoy's load balancer samples the hosts evenly: the share of
            // its picks that land on hosts new to us is the share of the
            // service this worker does not know yet.
            let d = &mut unit.discovery;
            d.0 += 1;
            d.1 += u16::from(seen != Seen::Known);
            if d.0 >= DISCOVERY_SAMPLE {
                *d = (d.0 / 2, d.1 / 2);
            }
            let base = u16::from(config.steering.discovery_percent) * 10;
            let rate = &mut unit.discovery_per_mille;
            *rate = if seen == Seen::Known {
                rate.saturating_sub((*rate / DISCOVERY_DECAY_DIVISOR).max(1))
                    .max(base / DISCOVERY_FLOOR_DIVISOR)
            } else {
                // A host no worker knew of (scale-up): find the others
                // that came with it sooner.
                base.saturating_mul(DISCOVERY_BOOST_FACTOR)
                    .min(u16::from(crate::config::MAX_DISCOVERY_PERCENT) * 10)
            };
        }
        // Answered elsewhere than steered: either Envoy no longer has the
        // host we chose (its override_host policy falls back), or attempts
        // failed and retries moved the request on, to the hosts named for
        // them; the last attempt is all a downstream filter sees, so those
        // failures are inferred here.
        let mut failed_attempts: Vec<Rc<str>> = Vec::new();
        let mut attribute = false;
        match routed {
            Routed::To(hosts) => {
                let steered = hosts.first().map_or("", |h| &**h);
                if !steered.is_empty() && steered != address {
                    match self.host.attempt_count() {
                        // Counted by the upstream instance already when fed.
                        Some(n) if n > 1 && fed => {}
                        Some(n) if n > 1 => {
                            // Renews naming, never starts it: a steered
                            // host that has left sends its request to
                            // Envoy's balancer, whose pick may have failed.
                            attribute = unit.attributing;
                            let failed = usize::try_from(n - 1).unwrap_or(usize::MAX);
                            for host in hosts.iter().take(failed) {
                                if **host != *address {
                                    failed_attempts.push(Rc::clone(host));
                                }
                            }
                        }
                        _ => {
                            unit.members.left(steered, now);
                            if unit.members_left.len() < capacity {
                                unit.members_left.push(Rc::from(steered));
                                unit.members_gone.push(Rc::from(steered));
                            }
                        }
                    }
                }
            }
            // Not a request left to Envoy by discovery: while a host is
            // ejected those carry meshguard's own retry policy, and one
            // retried is most likely explained by that host.
            Routed::Envoy if !fed && !upstream => {
                unit.unsampled += 1;
                let count = if attempts.is_some() {
                    attempts
                } else if unit.unsampled >= ATTEMPT_SAMPLE {
                    unit.unsampled = 0;
                    self.host.attempt_count()
                } else {
                    None
                };
                if count.is_some_and(|n| n > 1) {
                    unit.counts.unattributed_retries += 1;
                    attribute = true;
                }
            }
            _ => {}
        }
        // Retries are hiding failures: name the hosts of retries while
        // they go on (a plan over the service even if all are Healthy).
        let start_naming = attribute && !unit.attributing && config.steering.enabled;
        if attribute {
            unit.attribute_until_ms = now.saturating_add(ATTRIBUTE_FOR_MS);
        }
        if config.circuit_breaker.enabled {
            unit.breaker_pending.add_n(observation, weight);
        }
        let quiet = fed
            || unit
                .snapshot
                .host(address)
                .is_none_or(|h| h.health.is_quiet());
        if !fed {
            unit.record_outcome(address, observation, weight, config);
        }
        for host in &failed_attempts {
            unit.counts.inferred_attempts += 1;
            unit.record_outcome(host, Observation::plain(RETRIED_ATTEMPT), 1, config);
        }
        if !failed_attempts.is_empty() || attribute {
            // Retries hid failures: their hosts' windows must be exact.
            self.exact_until_ms = now.saturating_add(EXACT_FOR_MS);
        }
        // Write at once whatever could change a grade or the breaker; let a
        // quiet host's successes wait for the tick.
        let prompt = !failed_attempts.is_empty()
            || observation.outcome.failed()
            || observation.probe
            || !quiet
            || unit.snapshot.breaker.state() != BreakerState::Closed;
        if prompt {
            if let Some(now) = self.host.now_ms() {
                self.clock_ms = now;
                self.flush(position, now);
            }
        } else if start_naming {
            self.after_sync(position, now);
        }
    }

    /// Periodic work: write pending outcomes and time-driven transitions,
    /// catch up with the other workers when they announced a change,
    /// rebuild steering plans whose hosts changed.
    pub fn tick(&mut self, now: u64) {
        self.clock_ms = now;
        let changes = self.store.changes(&self.host).ok();
        // Unknown (shared data failed): assume something changed.
        let changed = changes.is_none() || changes != self.seen_changes;
        if changed {
            self.adopt_known_services(now);
        }
        let upstream = self.sees_attempts();
        let mut busy = false;
        let mut position = 0;
        while position < self.units.len() {
            let unit = &mut self.units[position];
            // Forgotten here, forgotten in the shared list: a worker that
            // still sees the host puts it back when it reads the list.
            let capacity = usize::from(unit.config.limits.max_hosts_per_service);
            let before = unit.members_left.len();
            unit.members.sweep(
                now,
                unit.config.limits.host_idle_timeout.0,
                &mut unit.members_left,
            );
            if unit.members_left.len() > capacity {
                unit.members_left.truncate(capacity.max(before));
            }
            busy |= unit.counts.requests > 0 || unit.has_pending();
            let due = unit.next_change_ms.is_some_and(|t| now >= t);
            // An upstream instance with traffic keeps its records marked
            // as fed by it.
            let renew = upstream
                && unit.counts.requests > 0
                && feed_renewal_due(unit.snapshot.attempts_until_ms, now);
            // Retries stopped: steering that only named their hosts ends.
            let naming_over = unit.attributing && now >= unit.attribute_until_ms;
            let kept = if unit.has_pending() || due || renew {
                self.flush(position, now)
            } else if changed {
                self.refresh(position, now)
            } else if naming_over {
                self.after_sync(position, now);
                true
            } else {
                if unit.members.take_changed() {
                    self.replan(position, now);
                } else {
                    update_unknown(unit);
                }
                let unit = &mut self.units[position];
                self.reporter.publish_counts(&self.host, unit, now);
                true
            };
            if kept {
                position += 1;
            }
        }
        if changes.is_some() && changed {
            self.seen_changes = changes;
        }
        self.update_active();
        self.pace(now, busy);
    }

    /// An idle worker ticks less often; its first request brings it back.
    fn pace(&mut self, now: u64, busy: bool) {
        if busy {
            self.last_request_ms = now;
        }
        let idle = now.saturating_sub(self.last_request_ms) >= IDLE_AFTER_MS;
        if idle && !self.idle_ticks && self.host.set_tick_period_ms(IDLE_TICK_MS) {
            self.idle_ticks = true;
        }
    }

    /// Tells the other workers that a record changed in a way they must
    /// see (a grade, the breaker, the watched hosts, the services).
    fn announce(&mut self) {
        match self.store.announce(&self.host) {
            // Our own change: no need to catch up with it, unless someone
            // else's came in between.
            Ok(count) if self.seen_changes == Some(count.wrapping_sub(1)) => {
                self.seen_changes = Some(count);
            }
            Ok(_) | Err(_) => {}
        }
    }

    /// Returns false when the unit was dropped from this worker's cache.
    fn flush(&mut self, position: usize, now: u64) -> bool {
        let mut random = self.jitter_seed();
        let feeds = self.sees_attempts();
        let unit = &mut self.units[position];
        let config = Rc::clone(&unit.config);
        let seen_writes = unit.snapshot.writes;
        for pending in unit.pending.values_mut() {
            pending.seen_writes = seen_writes;
        }
        // Hosts found or gone go to the shared member list first, so the
        // record's version of it never names a list not written yet.
        let mut member_list = None;
        // Hosts steering showed gone leave the record too (unless they
        // answered since), whatever their grade.
        let departed: Vec<Rc<str>> = unit
            .members_gone
            .iter()
            .filter(|a| !unit.pending.contains_key(&***a))
            .cloned()
            .collect();
        if !unit.members_found.is_empty() || !unit.members_left.is_empty() {
            let cap = usize::from(config.limits.max_hosts_per_service);
            let changes = super::store::MemberChanges {
                found: &unit.members_found,
                left: &unit.members_left,
                gone: &unit.members_gone,
            };
            match self
                .store
                .update_members(&self.host, &unit.key, unit.slot, &changes, cap)
            {
                Ok(version) => {
                    member_list = Some(version);
                    unit.members_found.clear();
                    unit.members_left.clear();
                    unit.members_gone.clear();
                }
                Err(error) => {
                    log::debug!("meshguard: member list not updated, will retry: {error}")
                }
            }
        }
        let members = unit.members.len();
        let shrank = unit.members.take_shrank();
        let (pending, breaker_pending) = (&unit.pending, &unit.breaker_pending);
        let result = self
            .store
            .update(&self.host, &unit.key, unit.slot, |record| {
                record.begin_write();
                let roster = record.roster;
                let mut events = Vec::new();
                let mut next = || {
                    random = steering::xorshift(random);
                    random
                };
                record.advance(now, &config, &mut events);
                record.forget(departed.iter().map(|a| &**a));
                record.note_members(members, shrank, now);
                let listed = member_list.is_some_and(|v| v > record.member_list);
                if let Some(version) = member_list {
                    record.member_list = record.member_list.max(version);
                }
                record.apply_breaker(breaker_pending, now, &config, &mut events);
                for (address, outcomes) in pending {
                    record.apply(address, outcomes, now, &config, &mut next, &mut events);
                }
                // Downstream instances must see at once that this one now
                // grades the hosts (and stop doing it themselves).
                let mut began_feeding = false;
                if feeds && feed_renewal_due(record.attempts_until_ms, now) {
                    began_feeding = record.attempts_until_ms <= now;
                    record.attempts_until_ms = now.saturating_add(ATTEMPTS_FEED_MS);
                }
                (events, record.roster != roster || listed || began_feeding)
            });
        match result {
            Ok(((events, roster_changed), record)) => {
                let unit = &mut self.units[position];
                unit.pending.clear();
                unit.breaker_pending = Pending::default();
                unit.snapshot = record;
                let visible = events
                    .iter()
                    .any(|e| matches!(e, Event::Transition { .. } | Event::Breaker(_)));
                if visible || roster_changed {
                    self.announce();
                }
                let key = self.units[position].key.clone();
                for event in &events {
                    self.reporter.report(&self.host, &key, event, now);
                }
                self.after_sync(position, now);
                true
            }
            Err(error) => self.on_store_error(position, error),
        }
    }

    fn refresh(&mut self, position: usize, now: u64) -> bool {
        let unit = &self.units[position];
        match self.store.read(&self.host, &unit.key, unit.slot) {
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
        self.merge_member_list(position, now);
        let unit = &mut self.units[position];
        if now.saturating_sub(unit.last_touch_ms) >= TOUCH_INTERVAL_MS
            && unit.last_used_ms > unit.last_touch_ms
        {
            if let Err(StoreError::Reassigned) =
                self.store.touch(&self.host, &unit.key, unit.slot, now)
            {
                unit.plan = None;
                return;
            }
            unit.last_touch_ms = now;
        }
        unit.next_change_ms = unit.snapshot.next_change_ms(now, &unit.config);
        // Hosts of retries are named while retries hide failures, unless
        // an upstream instance sees every attempt.
        unit.attributing = unit.attribute_until_ms > now
            && unit.config.steering.encoding == Encoding::Plain
            && unit.snapshot.attempts_until_ms <= now;
        // Watched hosts steering showed gone do not keep steering on.
        unit.steers = unit.attributing
            || unit.snapshot.hosts.iter().any(|h| {
                h.health.weight_percent(now, unit.config.grading()) < 100
                    && !unit.members.is_gone(&h.address, now)
            });
        unit.discovery_paused = unit
            .snapshot
            .hosts
            .iter()
            .any(|h| h.health.ejected_costly_to_reach(now));
        // Rebuilding a plan costs as much as the service has hosts: only
        // when a weight or the set of hosts changed.
        let mut basis = plan_basis(&unit.snapshot, now, &unit.config);
        basis.push(u8::from(unit.attributing));
        if unit.members.take_changed() || basis != unit.plan_basis {
            unit.plan_basis = basis;
            self.replan(position, now);
        } else {
            update_unknown(unit);
        }
        self.reporter
            .publish(&self.host, &mut self.units[position], now);
        // A prompt write may have opened the breaker or started steering:
        // the very next request must see it.
        self.update_active();
    }

    /// Takes on the hosts other workers have seen, when the shared list
    /// changed since this worker last read it.
    fn merge_member_list(&mut self, position: usize, now: u64) {
        let unit = &mut self.units[position];
        if unit.snapshot.member_list <= unit.member_list_seen {
            return;
        }
        let Ok(list) = self.store.members(&self.host, &unit.key, unit.slot) else {
            return;
        };
        let (version, addresses) = (list.version, &list.addresses);
        let capacity = usize::from(unit.config.limits.max_hosts_per_service);
        // Hosts another worker's steering showed gone, unless this worker
        // saw them answer since.
        let recent = now.saturating_sub(RELIST_WITHIN_MS);
        for address in &list.departed {
            if unit.members.contains(address) && !unit.members.answered_after(address, recent) {
                unit.members.left(address, now);
            }
        }
        for address in addresses {
            unit.members.learn(address, now, capacity);
        }
        // Hosts this worker itself saw answer just now that the list lacks
        // (another worker forgot them as idle): back into the list. Not a
        // host that answered a while ago: another worker may have seen it
        // leave since.
        let listed: std::collections::HashSet<&str> =
            addresses.iter().map(String::as_str).collect();
        for address in unit.members.answered_since(recent) {
            if !listed.contains(&**address) && unit.members_found.len() < capacity {
                unit.members_found.push(Rc::clone(address));
            }
        }
        unit.member_list_seen = version;
    }

    /// Builds the unit's steering plan over every host this worker knows
    /// (members, and watched hosts other workers saw), at their weights.
    fn replan(&mut self, position: usize, now: u64) {
        let seed = self.jitter_seed();
        let unit = &mut self.units[position];
        let steering = &unit.config.steering;
        if !steering.enabled || !unit.steers {
            unit.plan = None;
            update_unknown(unit);
            return;
        }
        let snapshot = &unit.snapshot;
        let config = &unit.config;
        let weight = |address: &str| {
            snapshot
                .host(address)
                .map_or(100, |h| h.health.weight_percent(now, config.grading()))
        };
        // Watched hosts only other workers have seen, unless steering
        // showed them gone.
        let others: Vec<Rc<str>> = snapshot
            .hosts
            .iter()
            .filter(|h| !unit.members.contains(&h.address))
            .filter(|h| !unit.members.is_gone(&h.address, now))
            .map(|h| Rc::from(h.address.as_str()))
            .collect();
        // Hosts just back from an ejection get this worker's next request,
        // once per return: if one has left the cluster meanwhile, that
        // request shows it at once, rather than whenever its warm-up
        // weight comes round (seconds, in a service of thousands).
        let mut first: Vec<Rc<str>> = Vec::new();
        for entry in &snapshot.hosts {
            let back = entry.health.state() == HostState::WarmingUp
                || (entry.health.state() == HostState::Unhealthy
                    && now >= entry.health.ejected_until_ms());
            let until = entry.health.ejected_until_ms();
            if back
                && !unit
                    .returns_checked
                    .iter()
                    .any(|(a, u)| **a == *entry.address && *u == until)
            {
                if let Some(address) = unit.members.address(&entry.address) {
                    if unit.returns_checked.len() >= MAX_RETURNS_CHECKED {
                        unit.returns_checked.remove(0);
                    }
                    unit.returns_checked.push((Rc::clone(&address), until));
                    first.push(address);
                }
            }
        }
        let hosts = unit
            .members
            .iter()
            .chain(others.iter())
            .map(|address| (address, weight(address)));
        let plan = Plan::build(hosts, &first, steering.encoding, seed, unit.attributing);
        if unit.plan.is_none() && plan.is_some() {
            unit.discovery_per_mille = u16::from(steering.discovery_percent) * 10;
        }
        unit.plan = plan;
        update_unknown(unit);
    }

    /// Takes on every record other workers have written, so that a worker
    /// honours an ejection or an open breaker from its very first request
    /// to a service, not only after one of its own requests completed.
    fn adopt_known_services(&mut self, now: u64) {
        let Ok(keys) = self.store.keys(&self.host) else {
            return;
        };
        for key in keys {
            if self.units.len() >= usize::from(self.config.limits.max_services) {
                return;
            }
            if self.units.iter().any(|u| u.key == key) {
                continue;
            }
            let (cluster, scope) = parse_key(&key);
            let Some(config) = self.config_of_scope(scope) else {
                continue;
            };
            let (cluster, scope) = (cluster.to_string(), scope.to_string());
            let _ = self.unit(&cluster, &scope, &config, now);
        }
    }

    /// The cache position of a unit, resolving its shared slot the first
    /// time this worker sees it (and evicting the least recently used unit
    /// if the cache is full).
    fn unit(&mut self, cluster: &str, scope: &str, config: &Rc<Config>, now: u64) -> Option<usize> {
        if let Some(position) = known_unit(&mut self.units, cluster, scope, now) {
            return Some(position);
        }
        let key = unit_key(cluster, scope);
        let slot = match self
            .store
            .resolve(&self.host, &key, now, &self.config.limits)
        {
            Ok((slot, claimed)) => {
                if claimed {
                    self.announce();
                }
                slot
            }
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
            .read(&self.host, &key, slot)
            .unwrap_or_else(|_| ServiceHealth::new(&key, slot.epoch));
        self.units.push(Unit::new(
            key,
            cluster,
            scope,
            Rc::clone(config),
            slot,
            snapshot,
            now,
        ));
        let position = self.units.len() - 1;
        self.after_sync(position, now);
        self.update_active();
        Some(position)
    }
}

/// What a plan depends on besides the members: the watched hosts and their
/// weights now.
fn plan_basis(snapshot: &ServiceHealth, now: u64, config: &Config) -> Vec<u8> {
    snapshot
        .hosts
        .iter()
        .map(|h| h.health.weight_percent(now, config.grading()))
        .chain(snapshot.roster.to_le_bytes())
        .collect()
}

/// The share of the service this worker does not know, which its plan
/// leaves to Envoy's load balancer: from the largest count of hosts any
/// worker reported, and from how often discovery finds a new host.
fn update_unknown(unit: &mut Unit) {
    let known = unit.plan.as_ref().map_or(unit.members.len(), |p| p.hosts);
    let size = unit.snapshot.size().max(known).max(1);
    let by_count = (size - known) * 100 / size;
    let (sampled, new) = unit.discovery;
    let by_sample = if sampled >= 8 {
        usize::from(new) * 100 / usize::from(sampled)
    } else {
        0
    };
    unit.unknown_percent = u8::try_from(by_count.max(by_sample)).unwrap_or(100);
}
