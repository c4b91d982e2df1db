//! A scenario DSL: a simulated service of N hosts, each with a failure
//! pattern over virtual time, a request generator spread across the VMs
//! (workers), a load balancer that honours the steering header and falls
//! back to round robin, and a recorder of per-host traffic share,
//! client-visible errors and grade transitions over time.
//!
//! It is a discrete-event simulation: request arrivals, responses and the
//! VMs' ticks are processed in virtual-time order, so requests overlap
//! (a slow host has many in flight) and an hour of traffic runs in
//! seconds.
//!
//! ```no_run
//! use std::time::Duration;
//! use host_tests::wasm_host::scenario::{Behaviour, Scenario};
//! let s = |secs| Duration::from_secs(secs);
//! let report = Scenario::new("u2 fails hard for 20s")
//!     .config(r#"{"ejection":{"baseEjectionTime":"10s"}}"#)
//!     .workers(2)
//!     .hosts(3)
//!     .behaviour(1, s(10), Behaviour::Down)
//!     .behaviour(1, s(30), Behaviour::Healthy)
//!     .rate(200.0)
//!     .duration(s(90))
//!     .run();
//! println!("{}", report.render());
//! assert!(report.share(1, s(12), s(20)) < 0.01);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::Duration;

use super::abi::{headers, MapType};
use super::module::PluginModule;
use super::props::{Answer, Metadata};
use super::proxy::{Proxy, ProxyOptions, StreamRef};
use super::rng::Rng;
use super::shared::{LogRecord, Metric};
use super::vm::{LocalReply, VmError, VmOptions};

/// Envoy's legacy response-flag bits the simulation produces.
pub mod flags {
    pub const UPSTREAM_REQUEST_TIMEOUT: i64 = 0x4;
    pub const UPSTREAM_REMOTE_RESET: i64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: i64 = 0x20;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: i64 = 0x4000;
}

/// What a host does with the requests it gets, from some moment on.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Answers 200.
    Healthy,
    /// Answers 503 to everything.
    Down,
    /// Answers this status to everything.
    Status(u16),
    /// Refuses connections: Envoy answers 503 with flag UF.
    Refusing,
    /// Resets the stream: Envoy answers 503 with flag UR.
    Resetting,
    /// Fails this fraction of requests (503), at random.
    Grey(f64),
    /// Answers 200 after this long.
    Slow(Duration),
    /// Down for `down`, then healthy for `up`, repeating (from the moment
    /// the behaviour starts).
    Flapping { down: Duration, up: Duration },
}

/// What the simulated upstream did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub flags: i64,
    pub latency: Duration,
}

/// One upstream host.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub address: String,
    /// `(from, behaviour)`, sorted by time; healthy before the first entry.
    pub timeline: Vec<(Duration, Behaviour)>,
}

impl HostSpec {
    pub fn new(address: &str) -> HostSpec {
        HostSpec {
            address: address.to_string(),
            timeline: Vec::new(),
        }
    }

    fn behaviour_at(&self, at: Duration) -> (Duration, &Behaviour) {
        self.timeline
            .iter()
            .rev()
            .find(|(from, _)| *from <= at)
            .map(|(from, b)| (*from, b))
            .unwrap_or((Duration::ZERO, &Behaviour::Healthy))
    }

    fn respond(&self, at: Duration, base: Duration, rng: &mut Rng) -> Response {
        let ok = Response {
            status: 200,
            flags: 0,
            latency: base,
        };
        let failed = Response { status: 503, ..ok };
        let (since, behaviour) = self.behaviour_at(at);
        match behaviour {
            Behaviour::Healthy => ok,
            Behaviour::Down => failed,
            Behaviour::Status(status) => Response {
                status: *status,
                ..ok
            },
            Behaviour::Refusing => Response {
                status: 503,
                flags: flags::UPSTREAM_CONNECTION_FAILURE,
                latency: Duration::from_millis(1),
            },
            Behaviour::Resetting => Response {
                status: 503,
                flags: flags::UPSTREAM_REMOTE_RESET,
                latency: base,
            },
            Behaviour::Grey(p) => {
                if rng.chance(*p) {
                    failed
                } else {
                    ok
                }
            }
            Behaviour::Slow(latency) => Response {
                latency: *latency,
                ..ok
            },
            Behaviour::Flapping { down, up } => {
                let cycle = (*down + *up).as_nanos().max(1);
                let phase = (at - since).as_nanos() % cycle;
                if phase < down.as_nanos() {
                    failed
                } else {
                    ok
                }
            }
        }
    }
}

/// The route a request takes (for per-route / per-VirtualService
/// configuration): Envoy's `xds.virtual_host_name`, `xds.route_name` and
/// `xds.route_metadata`.
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Route names are unique only within a virtual host; istiod makes one
    /// virtual host per VirtualService host.
    pub virtual_host: String,
    pub name: String,
    pub metadata: Option<Metadata>,
}

/// Something to do at a moment of the scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// Reconfigure every VM (`proxy_on_configure`).
    Configure(String),
    /// Change the route later requests take.
    Route(RouteSpec),
}

/// A scenario, built up and then [`run`](Scenario::run).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub config: String,
    pub workers: usize,
    pub hosts: Vec<HostSpec>,
    /// Requests per second, all workers together.
    pub rate: f64,
    /// Poisson arrivals (true) or evenly spaced ones.
    pub poisson: bool,
    pub duration: Duration,
    /// Width of the recorder's time buckets.
    pub bucket: Duration,
    pub seed: u64,
    pub cluster: String,
    pub route: RouteSpec,
    /// Latency of a healthy host.
    pub base_latency: Duration,
    /// Header the load balancer reads (`steering.header`).
    pub steering_header: String,
    /// Run the plugin (false: plain round robin, the "no protection" baseline).
    pub filter: bool,
    pub steps: Vec<(Duration, Step)>,
    /// Virtual time run after `duration` with no new traffic, so the VMs'
    /// ticks add the last batched counters to the metrics.
    pub settle: Duration,
}

impl Scenario {
    pub fn new(name: &str) -> Scenario {
        Scenario {
            name: name.to_string(),
            config: String::new(),
            workers: 2,
            hosts: Vec::new(),
            rate: 100.0,
            poisson: true,
            duration: Duration::from_secs(60),
            bucket: Duration::from_secs(1),
            seed: 1,
            cluster: "demo".to_string(),
            route: RouteSpec {
                virtual_host: "demo".to_string(),
                name: "default".to_string(),
                metadata: None,
            },
            base_latency: Duration::from_millis(5),
            steering_header: "x-meshguard-upstream".to_string(),
            filter: true,
            steps: Vec::new(),
            settle: Duration::ZERO,
        }
    }

    pub fn config(mut self, json: &str) -> Self {
        self.config = json.to_string();
        self
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// `count` healthy hosts, `10.0.0.1:80`, `10.0.0.2:80`...
    pub fn hosts(mut self, count: usize) -> Self {
        self.hosts = (1..=count)
            .map(|i| HostSpec::new(&format!("10.0.0.{i}:80")))
            .collect();
        self
    }

    pub fn host(mut self, spec: HostSpec) -> Self {
        self.hosts.push(spec);
        self
    }

    /// Host `index` behaves like `behaviour` from `at` on.
    pub fn behaviour(mut self, index: usize, at: Duration, behaviour: Behaviour) -> Self {
        let timeline = &mut self.hosts[index].timeline;
        timeline.push((at, behaviour));
        timeline.sort_by_key(|(from, _)| *from);
        self
    }

    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = per_second;
        self
    }

    pub fn evenly_spaced(mut self) -> Self {
        self.poisson = false;
        self
    }

    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    pub fn bucket(mut self, bucket: Duration) -> Self {
        self.bucket = bucket;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn cluster(mut self, name: &str) -> Self {
        self.cluster = name.to_string();
        self
    }

    pub fn route(mut self, route: RouteSpec) -> Self {
        self.route = route;
        self
    }

    pub fn base_latency(mut self, latency: Duration) -> Self {
        self.base_latency = latency;
        self
    }

    pub fn steering_header(mut self, name: &str) -> Self {
        self.steering_header = name.to_string();
        self
    }

    /// Runs without the plugin: Envoy's round robin alone.
    pub fn without_filter(mut self) -> Self {
        self.filter = false;
        self
    }

    /// After `duration`, let virtual time run this much longer without new
    /// requests (ticks only) before the report's metrics are read.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn at(mut self, at: Duration, step: Step) -> Self {
        self.steps.push((at, step));
        self.steps.sort_by_key(|(t, _)| *t);
        self
    }

    /// Runs the scenario with the module named by `MESHGUARD_WASM`.
    /// Panics on a trap, with the trap and the log so far.
    pub fn run(&self) -> Report {
        self.try_run(&PluginModule::from_env())
            .unwrap_or_else(|failed| {
                let (error, report) = *failed;
                panic!(
                    "scenario `{}`: the plugin failed: {error}\n{}",
                    self.name,
                    report.render()
                )
            })
    }

    /// Runs the scenario; on a VM failure returns it with the partial report.
    pub fn try_run(&self, module: &PluginModule) -> Result<Report, Box<(VmError, Report)>> {
        let mut sim = Simulation::new(self, module)?;
        match sim.run() {
            Ok(()) => Ok(sim.finish()),
            Err(error) => Err(Box::new((error, sim.finish()))),
        }
    }
}

/// Requests and failures one host got in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub requests: u64,
    pub failures: u64,
    /// Requests sent there because of the steering header.
    pub steered: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub hosts: Vec<HostCounts>,
    pub requests: u64,
    /// Responses with status >= 500 that the client saw.
    pub client_errors: u64,
    pub local_replies: u64,
}

/// A grade change, parsed from the plugin's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: Duration,
    pub vm: usize,
    pub service: String,
    pub host: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// Requests the host had answered (completed) when the line was logged.
    pub host_requests: u64,
    /// Failures among them.
    pub host_failures: u64,
    /// Failures since the host's last success.
    pub host_streak: u64,
}

/// What happened during a scenario.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub bucket: Duration,
    pub hosts: Vec<String>,
    pub buckets: Vec<Bucket>,
    pub transitions: Vec<Transition>,
    /// Every grade change of a host, from the plugin's
    /// `meshguard.host_state.service.<cluster>.host.<address>` gauge,
    /// sampled after every event: `(time, host index, state)`. Unlike the
    /// log lines (rate-limited to 6 a minute per host), nothing is missed
    /// except a state entered and left within one callback.
    pub states: Vec<(Duration, usize, String)>,
    /// `ejection refused by maxEjectionPercent` lines: `(time, host)`.
    pub refusals: Vec<(Duration, String)>,
    /// Local replies the plugin sent, with their time.
    pub local_replies: Vec<(Duration, LocalReply)>,
    /// Every log line (info and above).
    pub logs: Vec<LogRecord>,
    pub requests: u64,
    pub client_errors: u64,
    /// Host calls the VMs made during the run.
    pub host_calls: u64,
    /// What `proxy_on_configure` answered at start, per VM.
    pub configured: Vec<bool>,
    /// The plugin's metrics at the end (after `settle`).
    pub metrics: Vec<Metric>,
}

impl Report {
    /// A metric's value at the end of the run, by its full name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }
}

impl Report {
    fn bucket_range(&self, from: Duration, to: Duration) -> std::ops::Range<usize> {
        let width = self.bucket.as_nanos().max(1);
        let start = (from.as_nanos() / width) as usize;
        let end = (to.as_nanos().div_ceil(width) as usize).min(self.buckets.len());
        start.min(end)..end
    }

    /// Index of a host by address.
    pub fn host_index(&self, address: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == address)
            .unwrap_or_else(|| panic!("no host {address}"))
    }

    /// Requests between `from` and `to` (bucket-aligned).
    pub fn requests_between(&self, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.requests)
            .sum()
    }

    /// Requests host `host` got between `from` and `to`.
    pub fn host_requests(&self, host: usize, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.hosts[host].requests)
            .sum()
    }

    /// Host `host`'s share of the requests that reached a host, between
    /// `from` and `to` (bucket-aligned).
    pub fn share(&self, host: usize, from: Duration, to: Duration) -> f64 {
        let range = self.bucket_range(from, to);
        let total: u64 = self.buckets[range.clone()]
            .iter()
            .map(|b| b.hosts.iter().map(|h| h.requests).sum::<u64>())
            .sum();
        let mine: u64 = self.buckets[range]
            .iter()
            .map(|b| b.hosts[host].requests)
            .sum();
        if total == 0 {
            0.0
        } else {
            mine as f64 / total as f64
        }
    }

    /// Client-visible errors between `from` and `to`.
    pub fn client_errors_between(&self, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.client_errors)
            .sum()
    }

    /// Client-visible error rate between `from` and `to`.
    pub fn error_rate(&self, from: Duration, to: Duration) -> f64 {
        let requests = self.requests_between(from, to);
        if requests == 0 {
            0.0
        } else {
            self.client_errors_between(from, to) as f64 / requests as f64
        }
    }

    /// Transitions of one host, in order.
    pub fn transitions_of(&self, host: &str) -> Vec<&Transition> {
        self.transitions.iter().filter(|t| t.host == host).collect()
    }

    /// The first transition of `host` into `to`.
    pub fn first_transition(&self, host: &str, to: &str) -> Option<&Transition> {
        self.transitions
            .iter()
            .find(|t| t.host == host && t.to == to)
    }

    /// Each host's grade at `at` (from the state gauge).
    pub fn states_at(&self, at: Duration) -> Vec<String> {
        (0..self.hosts.len())
            .map(|host| {
                self.states
                    .iter()
                    .rfind(|(t, h, _)| *h == host && *t <= at)
                    .map_or("Healthy".to_string(), |(_, _, s)| s.clone())
            })
            .collect()
    }

    /// The most hosts in `state` at the same time over the run (from the
    /// state gauge).
    pub fn max_simultaneous(&self, state: &str) -> usize {
        let mut current: Vec<&str> = vec!["Healthy"; self.hosts.len()];
        let mut most = 0;
        // Changes seen in the same sample happened in the same callback:
        // apply them together before counting.
        for (index, (at, host, to)) in self.states.iter().enumerate() {
            current[*host] = to;
            let last_of_sample = self
                .states
                .get(index + 1)
                .is_none_or(|(next, _, _)| next != at);
            if last_of_sample {
                most = most.max(current.iter().filter(|s| **s == state).count());
            }
        }
        most
    }

    /// How many times `host` entered `state` (from the state gauge).
    pub fn entered(&self, host: usize, state: &str) -> usize {
        self.states
            .iter()
            .filter(|(_, h, s)| *h == host && s == state)
            .count()
    }

    /// A text timeline: per bucket, each host's share and failures and the
    /// client errors, with the transitions in between.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario `{}`: {} requests, {} client errors ({:.2}%), {} host calls",
            self.name,
            self.requests,
            self.client_errors,
            100.0 * self.client_errors as f64 / self.requests.max(1) as f64,
            self.host_calls
        );
        let _ = write!(out, "{:>8} ", "t");
        for host in &self.hosts {
            let _ = write!(out, "{host:>20} ");
        }
        let _ = writeln!(out, "{:>8}", "errors");
        let mut transitions = self.transitions.iter().peekable();
        for (index, bucket) in self.buckets.iter().enumerate() {
            let start = self.bucket * index as u32;
            while let Some(t) = transitions.next_if(|t| t.at < start + self.bucket) {
                let _ = writeln!(
                    out,
                    "{:>7.3}s   {} {} -> {}: {} (after {} failures, streak {})",
                    t.at.as_secs_f64(),
                    t.host,
                    t.from,
                    t.to,
                    t.reason,
                    t.host_failures,
                    t.host_streak
                );
            }
            let total: u64 = bucket.hosts.iter().map(|h| h.requests).sum();
            let _ = write!(out, "{:>7.1}s ", start.as_secs_f64());
            for host in &bucket.hosts {
                let share = 100.0 * host.requests as f64 / total.max(1) as f64;
                let _ = write!(out, "{:>10.1}% {:>4} fail ", share, host.failures);
            }
            let _ = writeln!(out, "{:>8}", bucket.client_errors);
        }
        for (at, host) in &self.refusals {
            let _ = writeln!(out, "{:>7.3}s   {host}: ejection refused", at.as_secs_f64());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Step(usize),
    Arrival,
    Complete {
        vm: usize,
        id: u32,
        host: usize,
        status: u16,
        flags: i64,
        steered: bool,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct HostTally {
    requests: u64,
    failures: u64,
    streak: u64,
}

struct Simulation<'a> {
    scenario: &'a Scenario,
    proxy: Option<Proxy>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    now: u64,
    arrivals: Rng,
    upstream: Vec<Rng>,
    /// Envoy's round robin is per worker.
    round_robin: Vec<usize>,
    route: RouteSpec,
    tallies: Vec<HostTally>,
    /// Last value of each host's state gauge, and its metric name.
    gauges: Vec<(String, Option<i64>)>,
    report: Report,
}

impl<'a> Simulation<'a> {
    fn new(scenario: &'a Scenario, module: &PluginModule) -> Result<Self, Box<(VmError, Report)>> {
        let mut rng = Rng::new(scenario.seed);
        let buckets = scenario
            .duration
            .as_nanos()
            .div_ceil(scenario.bucket.as_nanos().max(1)) as usize;
        let report = Report {
            name: scenario.name.clone(),
            bucket: scenario.bucket,
            hosts: scenario.hosts.iter().map(|h| h.address.clone()).collect(),
            buckets: vec![
                Bucket {
                    hosts: vec![HostCounts::default(); scenario.hosts.len()],
                    ..Bucket::default()
                };
                buckets.max(1)
            ],
            transitions: Vec::new(),
            states: Vec::new(),
            refusals: Vec::new(),
            local_replies: Vec::new(),
            logs: Vec::new(),
            requests: 0,
            client_errors: 0,
            host_calls: 0,
            configured: Vec::new(),
            metrics: Vec::new(),
        };
        let proxy = if scenario.filter {
            let options = ProxyOptions {
                workers: scenario.workers,
                plugin_configuration: scenario.config.as_bytes().to_vec(),
                vm: VmOptions::default(),
                seed: scenario.seed,
                ..ProxyOptions::default()
            };
            match Proxy::with_options(module, options) {
                Ok(proxy) => Some(proxy),
                Err(error) => return Err(Box::new((error, report))),
            }
        } else {
            None
        };
        let mut sim = Simulation {
            scenario,
            proxy,
            queue: BinaryHeap::new(),
            sequence: 0,
            now: 0,
            arrivals: rng.fork(),
            upstream: scenario.hosts.iter().map(|_| rng.fork()).collect(),
            round_robin: (0..scenario.workers).collect(),
            route: scenario.route.clone(),
            tallies: vec![HostTally::default(); scenario.hosts.len()],
            gauges: scenario
                .hosts
                .iter()
                .map(|h| (state_gauge(&scenario.cluster, &h.address), None))
                .collect(),
            report,
        };
        sim.report.configured = sim
            .proxy
            .as_ref()
            .map(|p| p.configured.clone())
            .unwrap_or_default();
        for (index, (at, _)) in scenario.steps.iter().enumerate() {
            sim.schedule(at.as_nanos() as u64, Event::Step(index));
        }
        sim.schedule(0, Event::Arrival);
        sim.collect_logs();
        Ok(sim)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, event)));
    }

    fn run(&mut self) -> Result<(), VmError> {
        let end = self.scenario.duration.as_nanos() as u64;
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at >= end {
                break;
            }
            self.now = at;
            if let Some(proxy) = &mut self.proxy {
                proxy.advance_to_ns(at)?;
                self.collect_logs();
            }
            match event {
                Event::Step(index) => self.step(index)?,
                Event::Arrival => {
                    self.arrive()?;
                    let gap = if self.scenario.poisson {
                        -self.arrivals.unit().max(1e-12).ln() / self.scenario.rate
                    } else {
                        1.0 / self.scenario.rate
                    };
                    self.schedule(at + (gap * 1e9) as u64, Event::Arrival);
                }
                Event::Complete {
                    vm,
                    id,
                    host,
                    status,
                    flags,
                    steered,
                } => self.complete(StreamRef { vm, id }, host, status, flags, steered)?,
            }
            self.collect_logs();
        }
        if let Some(proxy) = &mut self.proxy {
            proxy.advance_to_ns(end)?;
        }
        self.collect_logs();
        if let Some(proxy) = &mut self.proxy {
            proxy.advance_to_ns(end.saturating_add(self.scenario.settle.as_nanos() as u64))?;
        }
        self.collect_logs();
        Ok(())
    }

    fn step(&mut self, index: usize) -> Result<(), VmError> {
        match &self.scenario.steps[index].1 {
            Step::Configure(config) => {
                if let Some(proxy) = &mut self.proxy {
                    proxy.configure(config)?;
                }
            }
            Step::Route(route) => self.route = route.clone(),
        }
        Ok(())
    }

    fn bucket(&mut self) -> &mut Bucket {
        let width = self.scenario.bucket.as_nanos().max(1) as u64;
        let index = ((self.now / width) as usize).min(self.report.buckets.len() - 1);
        &mut self.report.buckets[index]
    }

    fn arrive(&mut self) -> Result<(), VmError> {
        let workers = self.scenario.workers;
        let vm = self.arrivals.below(workers as u64) as usize;
        self.report.requests += 1;
        self.bucket().requests += 1;
        let mut steering = None;
        let mut stream = None;
        if let Some(proxy) = &mut self.proxy {
            let mut http = proxy.http(vm)?;
            let id = http.id();
            http.property("xds.cluster_name", Answer::string(&self.scenario.cluster))
                .property("xds.route_name", Answer::string(&self.route.name))
                .property(
                    "xds.virtual_host_name",
                    Answer::string(&self.route.virtual_host),
                )
                .property("request.path", Answer::string("/"));
            if let Some(metadata) = &self.route.metadata {
                http.property("xds.route_metadata", Answer::metadata(metadata));
            }
            http.request_headers(
                headers(&[
                    (":method", "GET"),
                    (":path", "/"),
                    (":authority", "demo.svc"),
                    (":scheme", "http"),
                    (
                        "x-request-id",
                        format!("{:016x}", self.report.requests).as_str(),
                    ),
                ]),
                true,
            )?;
            let state = http.state();
            if let Some(reply) = state.local_reply.clone() {
                return self.local_reply(id, reply);
            }
            steering = state
                .header(MapType::RequestHeaders, &self.scenario.steering_header)
                .map(<[u8]>::to_vec);
            stream = Some(id);
        }
        // The load balancer: the steering header names a known host, or
        // the worker's round robin picks one (Envoy's override_host policy
        // with a round-robin fallback).
        let chosen = steering.as_deref().and_then(|value| {
            self.scenario
                .hosts
                .iter()
                .position(|h| h.address.as_bytes() == value)
        });
        let (host, steered) = match chosen {
            Some(host) => (host, true),
            None => {
                let next = &mut self.round_robin[vm];
                let host = *next % self.scenario.hosts.len();
                *next = next.wrapping_add(1);
                (host, false)
            }
        };
        let at = Duration::from_nanos(self.now);
        let response = self.scenario.hosts[host].respond(
            at,
            self.scenario.base_latency,
            &mut self.upstream[host],
        );
        let done_at = self.now + response.latency.as_nanos() as u64;
        let (vm, id) = stream.map_or((vm, 0), |s| (s.vm, s.id));
        self.schedule(
            done_at,
            Event::Complete {
                vm,
                id,
                host,
                status: response.status,
                flags: response.flags,
                steered,
            },
        );
        Ok(())
    }

    fn local_reply(&mut self, stream: StreamRef, reply: LocalReply) -> Result<(), VmError> {
        let at = Duration::from_nanos(self.now);
        let bucket = self.bucket();
        bucket.local_replies += 1;
        if reply.status >= 500 {
            bucket.client_errors += 1;
            self.report.client_errors += 1;
        }
        self.report.local_replies.push((at, reply.clone()));
        if let Some(proxy) = &mut self.proxy {
            let mut http = proxy.resume(stream);
            http.property("response.code", Answer::int(i64::from(reply.status)))
                .property("response.flags", Answer::int(0))
                .property("response.code_details", Answer::string(&reply.details));
            let mut map = headers(&[(":status", reply.status.to_string().as_str())]);
            map.extend(reply.headers.iter().cloned());
            http.response_headers(map, reply.body.is_empty())?;
            if !reply.body.is_empty() {
                http.response_body(&reply.body, true)?;
            }
            http.finish()?;
        }
        Ok(())
    }

    fn complete(
        &mut self,
        stream: StreamRef,
        host: usize,
        status: u16,
        flags: i64,
        steered: bool,
    ) -> Result<(), VmError> {
        let failed = status >= 500 || flags != 0;
        let tally = &mut self.tallies[host];
        tally.requests += 1;
        if failed {
            tally.failures += 1;
            tally.streak += 1;
        } else {
            tally.streak = 0;
        }
        let bucket = self.bucket();
        bucket.hosts[host].requests += 1;
        bucket.hosts[host].steered += u64::from(steered);
        if failed {
            bucket.hosts[host].failures += 1;
        }
        if status >= 500 {
            bucket.client_errors += 1;
            self.report.client_errors += 1;
        }
        let address = self.scenario.hosts[host].address.clone();
        if let Some(proxy) = &mut self.proxy {
            let port = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let mut http = proxy.resume(stream);
            http.property("upstream.address", Answer::string(&address))
                .property("upstream.port", Answer::int(port))
                .property("response.code", Answer::int(i64::from(status)))
                .property("response.flags", Answer::int(flags));
            http.response_headers(
                headers(&[
                    (":status", status.to_string().as_str()),
                    ("content-length", "0"),
                ]),
                true,
            )?;
            http.finish()?;
        }
        Ok(())
    }

    /// Moves new log lines into the report, parsing transitions, and
    /// records changes of the host-state gauges.
    fn collect_logs(&mut self) {
        let Some(proxy) = &self.proxy else { return };
        {
            let shared = proxy.lock();
            let at = Duration::from_nanos(shared.mono_ns());
            for (index, (name, last)) in self.gauges.iter_mut().enumerate() {
                let value = shared.metric(name).map(|m| m.value);
                if value.is_some() && value != *last {
                    *last = value;
                    let state = match value {
                        Some(0) => "Healthy",
                        Some(1) => "Degraded",
                        Some(2) => "Unhealthy",
                        Some(3) => "WarmingUp",
                        _ => "Unknown",
                    };
                    self.report.states.push((at, index, state.to_string()));
                }
            }
        }
        for record in proxy.take_logs() {
            if let Some(mut transition) = parse_transition(&record) {
                if let Some(index) = self.report.hosts.iter().position(|h| *h == transition.host) {
                    let tally = self.tallies[index];
                    transition.host_requests = tally.requests;
                    transition.host_failures = tally.failures;
                    transition.host_streak = tally.streak;
                }
                self.report.transitions.push(transition);
            } else if let Some(host) = parse_refusal(&record.message) {
                self.report
                    .refusals
                    .push((Duration::from_nanos(record.time_ns), host));
            }
            self.report.logs.push(record);
        }
    }

    fn finish(mut self) -> Report {
        self.collect_logs();
        if let Some(proxy) = &self.proxy {
            self.report.host_calls = proxy.host_calls();
            self.report.metrics = proxy.lock().metrics().to_vec();
        }
        self.report
    }
}

/// The name of the plugin's per-host state gauge (`meshguard_host_state`):
/// 0 Healthy, 1 Degraded, 2 Unhealthy, 3 WarmingUp.
pub fn state_gauge(cluster: &str, address: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '|' | ':' | '-' | '_' | '[' | ']' => c,
                _ => '_',
            })
            .collect()
    };
    format!(
        "meshguard.host_state.service.{}.host.{}",
        clean(cluster),
        clean(address)
    )
}

/// Parses `meshguard: <service> host <address>: <from> -> <to>: <reason>`.
pub fn parse_transition(record: &LogRecord) -> Option<Transition> {
    let rest = record.message.strip_prefix("meshguard: ")?;
    let (service, rest) = rest.split_once(" host ")?;
    let (host, rest) = rest.split_once(": ")?;
    let (from, rest) = rest.split_once(" -> ")?;
    let (to, reason) = rest.split_once(": ")?;
    if from.contains(' ') || to.contains(' ') {
        return None;
    }
    Some(Transition {
        at: Duration::from_nanos(record.time_ns),
        vm: record.vm,
        service: service.to_string(),
        host: host.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        reason: reason.to_string(),
        host_requests: 0,
        host_failures: 0,
        host_streak: 0,
    })
}

fn parse_refusal(message: &str) -> Option<String> {
    let rest = message.strip_prefix("meshguard: ")?;
    let (_, rest) = rest.split_once(" host ")?;
    let (host, rest) = rest.split_once(": ")?;
    rest.starts_with("ejection refused")
        .then(|| host.to_string())
}
