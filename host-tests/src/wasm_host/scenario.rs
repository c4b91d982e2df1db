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
//! Membership changes like an EDS update: hosts join, leave or are
//! replaced at given moments ([`Scenario::add_hosts`],
//! [`Scenario::remove_host`], [`Scenario::members`],
//! [`Scenario::replace_host`]). The load balancer round-robins (per
//! worker) over the current members only (hosts that join later take a
//! random place in its list), and honours the steering header
//! only when it names a current member, as Envoy's override_host policy
//! does; otherwise it falls back to round robin. Requests carrying
//! `x-envoy-retry-on` / `x-envoy-max-retries` are retried as Envoy's
//! router does: a failed attempt that matches the policy is retried after
//! a 0-25 ms backoff on a host the round robin picks (another one than the
//! failed attempt's); the plugin sees only the final attempt at log time.
//! The simulator does no per-request work proportional to the number of
//! hosts, so services of 10,000 hosts run at full speed.
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
//!
//! ```no_run
//! use std::time::Duration;
//! use host_tests::wasm_host::scenario::{Behaviour, Scenario};
//! let s = |secs| Duration::from_secs(secs);
//! // 1,000 hosts, host 0 down from 5 s, 100 more hosts at 20 s, host 0
//! // removed at 30 s.
//! let report = Scenario::new("scale-up mid-incident")
//!     .hosts(1000)
//!     .behaviour(0, s(5), Behaviour::Down)
//!     .add_hosts(s(20), 100)
//!     .remove_host(s(30), 0)
//!     .rate(5000.0)
//!     .duration(s(40))
//!     .run();
//! let spread = report.spread(s(25), s(30), &[0]);
//! assert!(spread.min > 0.5, "{spread}");
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use super::abi::{headers, MapType, MetricType};
use super::module::PluginModule;
use super::props::{Answer, Metadata};
use super::proxy::{Proxy, ProxyOptions, StreamRef};
use super::rng::Rng;
use super::shared::{LogRecord, Metric};
use super::vm::{LocalReply, VmError, VmOptions};

/// Envoy's legacy response-flag bits the simulation produces.
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: i64 = 0x2;
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
    /// A member of the cluster from the start (false: only once a
    /// [`Membership`] change adds it).
    pub member_at_start: bool,
}

impl HostSpec {
    pub fn new(address: &str) -> HostSpec {
        HostSpec {
            address: address.to_string(),
            timeline: Vec::new(),
            member_at_start: true,
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

/// A change of the cluster's members (an EDS update), by host index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// These hosts join (members already are left alone).
    Add(Vec<usize>),
    /// These hosts leave; requests in flight to them still complete.
    Remove(Vec<usize>),
    /// The members become exactly these hosts.
    Set(Vec<usize>),
}

/// The address of the `n`-th generated host (1-based): `10.0.0.1:80` to
/// `10.0.0.255:80`, then `10.0.1.0:80`..., distinct for 16 million hosts.
pub fn host_address(n: usize) -> String {
    format!("10.{}.{}.{}:80", (n >> 16) & 255, (n >> 8) & 255, n & 255)
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
    /// Membership changes, applied in time order (ties: in the order given).
    pub membership: Vec<(Duration, Membership)>,
    /// Virtual time run after `duration` with no new traffic, so the VMs'
    /// ticks add the last batched counters to the metrics.
    pub settle: Duration,
    /// Sample the VMs' memory and the shared data this often.
    pub memory_every: Option<Duration>,
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
            membership: Vec::new(),
            settle: Duration::ZERO,
            memory_every: None,
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

    /// `count` healthy hosts, members from the start, `10.0.0.1:80`,
    /// `10.0.0.2:80`... (see [`host_address`]). Replaces any hosts given
    /// before: call it first.
    pub fn hosts(mut self, count: usize) -> Self {
        self.hosts = (1..=count)
            .map(|i| HostSpec::new(&host_address(i)))
            .collect();
        self
    }

    /// `count` new healthy hosts that join at `at` (indices
    /// `hosts.len()..hosts.len() + count`, addresses continuing
    /// [`host_address`]'s sequence).
    pub fn add_hosts(mut self, at: Duration, count: usize) -> Self {
        let first = self.hosts.len();
        for index in first..first + count {
            let mut spec = HostSpec::new(&host_address(index + 1));
            spec.member_at_start = false;
            self.hosts.push(spec);
        }
        self.membership
            .push((at, Membership::Add((first..first + count).collect())));
        self
    }

    /// Host `index` leaves the cluster at `at`.
    pub fn remove_host(self, at: Duration, index: usize) -> Self {
        self.remove_hosts(at, [index])
    }

    /// These hosts leave the cluster at `at`.
    pub fn remove_hosts(mut self, at: Duration, hosts: impl IntoIterator<Item = usize>) -> Self {
        self.membership
            .push((at, Membership::Remove(hosts.into_iter().collect())));
        self
    }

    /// From `at` on the members are exactly `hosts` (indices into
    /// [`hosts`](Scenario::hosts); add hosts that are not yet there with
    /// [`host`](Scenario::host) and `member_at_start: false`, or
    /// [`add_hosts`](Scenario::add_hosts)).
    pub fn members(mut self, at: Duration, hosts: impl IntoIterator<Item = usize>) -> Self {
        self.membership
            .push((at, Membership::Set(hosts.into_iter().collect())));
        self
    }

    /// At `at`, host `index` leaves and a new healthy host (index
    /// `hosts.len()`, a new address) takes its place, as when a pod is
    /// replaced.
    pub fn replace_host(self, at: Duration, index: usize) -> Self {
        self.remove_host(at, index).add_hosts(at, 1)
    }

    /// Replaces `hosts` one by one, the first at `from`, then one every
    /// `every`: a rolling update. The replacements get indices
    /// `hosts.len()...` in the same order.
    pub fn rolling_replacement(
        mut self,
        from: Duration,
        every: Duration,
        hosts: impl IntoIterator<Item = usize>,
    ) -> Self {
        for (k, index) in hosts.into_iter().enumerate() {
            self = self.replace_host(from + every * k as u32, index);
        }
        self
    }

    /// Records the VMs' linear memory size and the shared data's size
    /// every `every` (and at the end) in [`Report::memory`].
    pub fn sample_memory(mut self, every: Duration) -> Self {
        self.memory_every = Some(every);
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
    /// Failed attempts there that Envoy retried on another host.
    pub retried: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub hosts: Vec<HostCounts>,
    pub requests: u64,
    /// Attempts that reached a host (the sum of `hosts[..].requests`).
    pub attempts: u64,
    /// Responses with status >= 500 that the client saw.
    pub client_errors: u64,
    pub local_replies: u64,
    /// Attempts Envoy retried (`x-envoy-retry-on`).
    pub retries: u64,
    /// Requests whose steering header named no current member, so the
    /// load balancer chose.
    pub fallbacks: u64,
}

/// The module's memory and the host-side shared state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySample {
    pub at: Duration,
    /// Distinct hosts that had received a request by then.
    pub hosts_seen: usize,
    /// Each VM's linear memory, in bytes.
    pub linear: Vec<usize>,
    /// Keys and values in shared data, in bytes.
    pub shared_data_bytes: usize,
    /// Metrics defined (Envoy keeps every one).
    pub metrics: usize,
}

/// How hosts' traffic compares with a fair share over a stretch of time:
/// each host's requests divided by (all requests / members), so 1.0 is
/// exactly fair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Hosts compared: members throughout the stretch, minus the excluded.
    pub hosts: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// Hosts with the lowest and highest ratio.
    pub min_host: usize,
    pub max_host: usize,
    /// Requests per host in a fair share.
    pub fair_requests: f64,
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} hosts, {:.1} requests each if fair: min {:.2} (host {}), median {:.2}, max {:.2} (host {})",
            self.hosts,
            self.fair_requests,
            self.min,
            self.min_host,
            self.median,
            self.max,
            self.max_host
        )
    }
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
    /// Per host, when it was a member: `[(joined, left)]`, `None` while
    /// still a member at the end.
    pub presence: Vec<Vec<(Duration, Option<Duration>)>>,
    /// Number of members after each membership change: `(time, members)`.
    pub member_counts: Vec<(Duration, usize)>,
    /// Hosts given a behaviour (the interesting ones, shown by `render`).
    pub marked: Vec<usize>,
    /// Attempts Envoy retried.
    pub retries: u64,
    /// Requests whose steering header named no current member.
    pub fallbacks: u64,
    /// [`Scenario::sample_memory`]'s samples.
    pub memory: Vec<MemorySample>,
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
        let total: u64 = self.buckets[range.clone()].iter().map(|b| b.attempts).sum();
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

    /// Requests each host got between `from` and `to`, by host index.
    pub fn requests_by_host(&self, from: Duration, to: Duration) -> Vec<u64> {
        let mut counts = vec![0; self.hosts.len()];
        for bucket in &self.buckets[self.bucket_range(from, to)] {
            for (count, host) in counts.iter_mut().zip(&bucket.hosts) {
                *count += host.requests;
            }
        }
        counts
    }

    /// Attempts that reached any host between `from` and `to`.
    pub fn attempts_between(&self, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.attempts)
            .sum()
    }

    /// Retried attempts between `from` and `to`.
    pub fn retries_between(&self, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.retries)
            .sum()
    }

    /// Requests sent to host `host` because of the steering header.
    pub fn steered_to(&self, host: usize, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.hosts[host].steered)
            .sum()
    }

    /// Requests that reached a host because of the steering header, all
    /// hosts together.
    pub fn steered_between(&self, from: Duration, to: Duration) -> u64 {
        self.buckets[self.bucket_range(from, to)]
            .iter()
            .map(|b| b.hosts.iter().map(|h| h.steered).sum::<u64>())
            .sum()
    }

    /// Whether host `host` was a member at `at`.
    pub fn member_at(&self, host: usize, at: Duration) -> bool {
        self.presence[host]
            .iter()
            .any(|(joined, left)| *joined <= at && left.is_none_or(|l| at < l))
    }

    /// Hosts that were members for the whole of `from..to`.
    pub fn members_throughout(&self, from: Duration, to: Duration) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|host| {
                self.presence[*host]
                    .iter()
                    .any(|(joined, left)| *joined <= from && left.is_none_or(|l| to <= l))
            })
            .collect()
    }

    /// Number of members at `at`.
    pub fn members_at(&self, at: Duration) -> usize {
        self.member_counts
            .iter()
            .rfind(|(t, _)| *t <= at)
            .map_or(0, |(_, n)| *n)
    }

    /// Host `host`'s requests between `from` and `to` relative to a fair
    /// share among the members of that stretch (1.0: exactly fair). Use a
    /// stretch without membership changes.
    pub fn fair_ratio(&self, host: usize, from: Duration, to: Duration) -> f64 {
        let members = self.members_throughout(from, to).len().max(1);
        let fair = self.attempts_between(from, to) as f64 / members as f64;
        if fair == 0.0 {
            0.0
        } else {
            self.host_requests(host, from, to) as f64 / fair
        }
    }

    /// Requests per host against a fair share, over the hosts that were
    /// members throughout `from..to`, leaving out `exclude` (the fair share
    /// counts every member, excluded ones too). Bucket-aligned; use a
    /// stretch without membership changes.
    pub fn spread(&self, from: Duration, to: Duration, exclude: &[usize]) -> Spread {
        let members = self.members_throughout(from, to);
        let counts = self.requests_by_host(from, to);
        let fair = self.attempts_between(from, to) as f64 / members.len().max(1) as f64;
        let mut ratios: Vec<(f64, usize)> = members
            .iter()
            .filter(|h| !exclude.contains(h))
            .map(|h| (counts[*h] as f64 / fair.max(f64::MIN_POSITIVE), *h))
            .collect();
        ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |i: usize| ratios.get(i).copied().unwrap_or((0.0, usize::MAX));
        Spread {
            hosts: ratios.len(),
            min: at(0).0,
            median: at(ratios.len() / 2).0,
            max: at(ratios.len().saturating_sub(1)).0,
            min_host: at(0).1,
            max_host: at(ratios.len().saturating_sub(1)).1,
            fair_requests: fair,
        }
    }

    /// The first time host `host` entered `state`, from the state gauge.
    pub fn first_state(&self, host: usize, state: &str) -> Option<Duration> {
        self.states
            .iter()
            .find(|(_, h, s)| *h == host && s == state)
            .map(|(at, _, _)| *at)
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
    /// client errors, with the transitions in between. Services of more
    /// than 16 hosts get [`render_summary`](Report::render_summary).
    pub fn render(&self) -> String {
        if self.hosts.len() > 16 {
            return self.render_summary();
        }
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
        if self.retries + self.fallbacks > 0 {
            let _ = writeln!(
                out,
                "{} retried attempts, {} steering fallbacks",
                self.retries, self.fallbacks
            );
        }
        self.render_memory(&mut out);
        out
    }

    /// A timeline for large services: per bucket, the members, requests,
    /// steered share, retries, steering fallbacks, client errors, how the
    /// members' traffic compares with a fair share (min / median / max of
    /// requests over a fair share, marked hosts left out) and each marked
    /// host's ratio; the first transitions in between.
    pub fn render_summary(&self) -> String {
        const MAX_TRANSITIONS: usize = 40;
        const MAX_MARKED: usize = 4;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario `{}`: {} hosts over the run, {} requests, {} client errors ({:.3}%), \
             {} retried attempts, {} steering fallbacks, {} host calls, {} transitions",
            self.name,
            self.hosts.len(),
            self.requests,
            self.client_errors,
            100.0 * self.client_errors as f64 / self.requests.max(1) as f64,
            self.retries,
            self.fallbacks,
            self.host_calls,
            self.transitions.len()
        );
        let marked: Vec<usize> = self.marked.iter().copied().take(MAX_MARKED).collect();
        for host in &marked {
            let _ = writeln!(
                out,
                "marked host {host}: {} {:?}",
                self.hosts[*host],
                self.marked_timeline(*host)
            );
        }
        let _ = write!(
            out,
            "{:>8} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7}  {:>22}",
            "t",
            "members",
            "requests",
            "steered",
            "retries",
            "fallbk",
            "errors",
            "fair ratio min/med/max"
        );
        for host in &marked {
            let _ = write!(out, " {:>9}", format!("host {host}"));
        }
        let _ = writeln!(out);
        let mut transitions = self.transitions.iter().peekable();
        let mut shown = 0;
        for index in 0..self.buckets.len() {
            let start = self.bucket * index as u32;
            let end = start + self.bucket;
            while let Some(t) = transitions.next_if(|t| t.at < end) {
                shown += 1;
                if shown <= MAX_TRANSITIONS {
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
                } else if shown == MAX_TRANSITIONS + 1 {
                    let _ = writeln!(out, "          (later transitions not shown)");
                }
            }
            let bucket = &self.buckets[index];
            let steered: u64 = bucket.hosts.iter().map(|h| h.steered).sum();
            let spread = self.spread(start, end, &self.marked);
            let _ = write!(
                out,
                "{:>7.1}s {:>7} {:>8} {:>7.1}% {:>7} {:>7} {:>7}  {:>6.2} {:>6.2} {:>6.2}  ",
                start.as_secs_f64(),
                self.members_at(start),
                bucket.requests,
                100.0 * steered as f64 / bucket.attempts.max(1) as f64,
                bucket.retries,
                bucket.fallbacks,
                bucket.client_errors,
                spread.min,
                spread.median,
                spread.max
            );
            for host in &marked {
                if self.member_at(*host, start) {
                    let _ = write!(out, " {:>9.2}", self.fair_ratio(*host, start, end));
                } else {
                    let _ = write!(out, " {:>9}", "gone");
                }
            }
            let _ = writeln!(out);
        }
        for (at, host) in self.refusals.iter().take(MAX_TRANSITIONS) {
            let _ = writeln!(out, "{:>7.3}s   {host}: ejection refused", at.as_secs_f64());
        }
        self.render_memory(&mut out);
        out
    }

    fn marked_timeline(&self, host: usize) -> Vec<(f64, String)> {
        let mut timeline: Vec<(f64, String)> = self.presence[host]
            .iter()
            .flat_map(|(joined, left)| {
                let mut v = vec![(joined.as_secs_f64(), "joins".to_string())];
                if let Some(left) = left {
                    v.push((left.as_secs_f64(), "leaves".to_string()));
                }
                v
            })
            .collect();
        for (at, _, state) in self.states.iter().filter(|(_, h, _)| *h == host) {
            timeline.push((at.as_secs_f64(), state.clone()));
        }
        timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
        timeline
    }

    fn render_memory(&self, out: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "{:>8} {:>10} {:>24} {:>12} {:>8}",
            "t", "hosts seen", "linear memory per VM", "shared data", "metrics"
        );
        for sample in &self.memory {
            let linear: Vec<String> = sample
                .linear
                .iter()
                .map(|b| format!("{:.1}MiB", *b as f64 / 1048576.0))
                .collect();
            let _ = writeln!(
                out,
                "{:>7.1}s {:>10} {:>24} {:>11.1}K {:>8}",
                sample.at.as_secs_f64(),
                sample.hosts_seen,
                linear.join(" "),
                sample.shared_data_bytes as f64 / 1024.0,
                sample.metrics
            );
        }
    }
}

/// One attempt of a request at one host (several when Envoy retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Attempt {
    vm: usize,
    id: u32,
    /// [`NO_HOST`]: no member to send it to (Envoy answers 503, UH).
    host: usize,
    status: u16,
    flags: i64,
    steered: bool,
    /// 0 for the first attempt.
    attempt: u8,
    retries_left: u8,
    /// `retry_on::*` bits from `x-envoy-retry-on`.
    retry_on: u8,
    /// `x-envoy-retriable-status-codes` (with `retriable-status-codes`):
    /// bit `code - 400` of `[400-499, 500-599]`.
    retriable_codes: [u128; 2],
}

const NO_HOST: usize = usize::MAX;

/// What `x-envoy-retry-on` asks for, as bits.
mod retry_on {
    /// `5xx`: any 5xx, a reset or a connect failure.
    pub const FIVE_XX: u8 = 1;
    /// `gateway-error`: 502, 503, 504, a reset or a connect failure.
    pub const GATEWAY_ERROR: u8 = 2;
    /// `reset`: no response (reset, disconnect).
    pub const RESET: u8 = 4;
    /// `connect-failure`.
    pub const CONNECT_FAILURE: u8 = 8;
    /// `retriable-status-codes`: the codes of `x-envoy-retriable-status-codes`.
    pub const STATUS_CODES: u8 = 16;

    pub fn parse(value: &[u8]) -> u8 {
        String::from_utf8_lossy(value)
            .split(',')
            .map(|policy| match policy.trim() {
                "5xx" => FIVE_XX,
                "gateway-error" => GATEWAY_ERROR,
                "reset" => RESET,
                "connect-failure" => CONNECT_FAILURE,
                "retriable-status-codes" => STATUS_CODES,
                // refused-stream, reset-before-request...: nothing the
                // simulated hosts produce, or not simulated.
                _ => 0,
            })
            .fold(0, |bits, bit| bits | bit)
    }

    /// `x-envoy-retriable-status-codes: 503,504`, codes 400-599.
    pub fn codes(value: &[u8]) -> [u128; 2] {
        let mut codes = [0u128; 2];
        for code in String::from_utf8_lossy(value).split(',') {
            if let Ok(code @ 400..=599) = code.trim().parse::<u16>() {
                let bit = usize::from(code - 400);
                codes[bit / 100] |= 1 << (bit % 100);
            }
        }
        codes
    }
}

impl Attempt {
    /// Whether Envoy's router would retry this attempt's outcome.
    fn retriable(&self) -> bool {
        use self::flags::{UPSTREAM_CONNECTION_FAILURE, UPSTREAM_REMOTE_RESET};
        if self.retries_left == 0 || self.host == NO_HOST {
            return false;
        }
        let reset = self.flags & UPSTREAM_REMOTE_RESET != 0;
        let refused = self.flags & UPSTREAM_CONNECTION_FAILURE != 0;
        (self.retry_on & retry_on::FIVE_XX != 0 && (self.status >= 500 || reset || refused))
            || (self.retry_on & retry_on::GATEWAY_ERROR != 0
                && (matches!(self.status, 502..=504) || reset || refused))
            || (self.retry_on & retry_on::RESET != 0 && reset)
            || (self.retry_on & retry_on::CONNECT_FAILURE != 0 && refused)
            || (self.retry_on & retry_on::STATUS_CODES != 0
                && (400..600).contains(&self.status)
                && {
                    let bit = usize::from(self.status - 400);
                    self.retriable_codes[bit / 100] & (1 << (bit % 100)) != 0
                })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Step(usize),
    Membership(usize),
    Sample,
    Arrival,
    /// A retry of the attempt (its host is the one that failed) is sent.
    Retry(Attempt),
    Complete(Attempt),
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
    retry_backoff: Rng,
    /// Where joining hosts go in the round robin's list.
    placement: Rng,
    /// Envoy's round robin is per worker: the next position in `members`.
    round_robin: Vec<usize>,
    /// Current members, in the order the round robin visits them.
    members: Vec<usize>,
    /// Each host's position in `members` (`NO_HOST`: not a member).
    slot: Vec<usize>,
    by_address: HashMap<Vec<u8>, usize>,
    route: RouteSpec,
    tallies: Vec<HostTally>,
    /// Hosts that have had a request.
    seen: usize,
    /// Host of each state gauge (by metric index) the plugin defined.
    gauge_host: HashMap<usize, Option<usize>>,
    gauge_names: HashMap<String, usize>,
    /// Last value of each host's state gauge.
    gauge_last: Vec<Option<i64>>,
    report: Report,
}

impl<'a> Simulation<'a> {
    fn new(scenario: &'a Scenario, module: &PluginModule) -> Result<Self, Box<(VmError, Report)>> {
        let mut rng = Rng::new(scenario.seed);
        let hosts = scenario.hosts.len();
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
                    hosts: vec![HostCounts::default(); hosts],
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
            presence: vec![Vec::new(); hosts],
            member_counts: Vec::new(),
            marked: (0..hosts)
                .filter(|h| !scenario.hosts[*h].timeline.is_empty())
                .collect(),
            retries: 0,
            fallbacks: 0,
            memory: Vec::new(),
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
                Ok(proxy) => {
                    proxy.lock().watch_gauges(true);
                    Some(proxy)
                }
                Err(error) => return Err(Box::new((error, report))),
            }
        } else {
            None
        };
        let arrivals = rng.fork();
        let upstream = scenario.hosts.iter().map(|_| rng.fork()).collect();
        let retry_backoff = rng.fork();
        let placement = rng.fork();
        let mut by_address = HashMap::with_capacity(hosts);
        for (index, host) in scenario.hosts.iter().enumerate() {
            let previous = by_address.insert(host.address.as_bytes().to_vec(), index);
            assert!(
                previous.is_none(),
                "scenario `{}`: two hosts have address {}",
                scenario.name,
                host.address
            );
        }
        let mut sim = Simulation {
            scenario,
            proxy,
            queue: BinaryHeap::new(),
            sequence: 0,
            now: 0,
            arrivals,
            upstream,
            retry_backoff,
            placement,
            round_robin: (0..scenario.workers).collect(),
            members: Vec::new(),
            slot: vec![NO_HOST; hosts],
            by_address,
            route: scenario.route.clone(),
            tallies: vec![HostTally::default(); hosts],
            seen: 0,
            gauge_host: HashMap::new(),
            gauge_names: scenario
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (state_gauge(&scenario.cluster, &h.address), i))
                .collect(),
            gauge_last: vec![None; hosts],
            report,
        };
        for host in 0..hosts {
            if scenario.hosts[host].member_at_start {
                sim.join(host);
            }
        }
        sim.report
            .member_counts
            .push((Duration::ZERO, sim.members.len()));
        sim.report.configured = sim
            .proxy
            .as_ref()
            .map(|p| p.configured.clone())
            .unwrap_or_default();
        for (index, (at, _)) in scenario.steps.iter().enumerate() {
            sim.schedule(at.as_nanos() as u64, Event::Step(index));
        }
        for (index, (at, _)) in scenario.membership.iter().enumerate() {
            sim.schedule(at.as_nanos() as u64, Event::Membership(index));
        }
        if scenario.memory_every.is_some() {
            sim.schedule(0, Event::Sample);
        }
        sim.schedule(0, Event::Arrival);
        sim.scan_gauges();
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
                Event::Membership(index) => self.membership(index),
                Event::Sample => {
                    self.sample_memory();
                    let every = self.scenario.memory_every.unwrap_or_default();
                    self.schedule(at + every.as_nanos().max(1) as u64, Event::Sample);
                }
                Event::Arrival => {
                    self.arrive()?;
                    let gap = if self.scenario.poisson {
                        -self.arrivals.unit().max(1e-12).ln() / self.scenario.rate
                    } else {
                        1.0 / self.scenario.rate
                    };
                    self.schedule(at + (gap * 1e9) as u64, Event::Arrival);
                }
                Event::Retry(failed) => self.retry(failed),
                Event::Complete(attempt) => self.complete(attempt)?,
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
        if self.scenario.memory_every.is_some() {
            self.sample_memory();
        }
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

    /// Host `host` joins. Hosts there from the start are in index order;
    /// later ones go to a random place in the round robin's list (EDS
    /// order is the control plane's: a new pod's address sorts anywhere),
    /// the host they displace moving to the end.
    fn join(&mut self, host: usize) {
        if self.slot[host] == NO_HOST {
            let len = self.members.len();
            let place = if self.now == 0 && self.scenario.hosts[host].member_at_start {
                len
            } else {
                self.placement.below(len as u64 + 1) as usize
            };
            if place < len {
                let displaced = self.members[place];
                self.slot[displaced] = len;
                self.members.push(displaced);
                self.members[place] = host;
            } else {
                self.members.push(host);
            }
            self.slot[host] = place;
            let at = Duration::from_nanos(self.now);
            self.report.presence[host].push((at, None));
        }
    }

    fn leave(&mut self, host: usize) {
        let slot = self.slot[host];
        if slot != NO_HOST {
            self.members.swap_remove(slot);
            if let Some(moved) = self.members.get(slot) {
                self.slot[*moved] = slot;
            }
            self.slot[host] = NO_HOST;
            let at = Duration::from_nanos(self.now);
            if let Some(last) = self.report.presence[host].last_mut() {
                last.1 = Some(at);
            }
        }
    }

    fn membership(&mut self, index: usize) {
        match &self.scenario.membership[index].1 {
            Membership::Add(hosts) => hosts.iter().for_each(|h| self.join(*h)),
            Membership::Remove(hosts) => hosts.iter().for_each(|h| self.leave(*h)),
            Membership::Set(hosts) => {
                let mut keep = vec![false; self.slot.len()];
                for host in hosts {
                    keep[*host] = true;
                }
                let gone: Vec<usize> = self.members.iter().copied().filter(|h| !keep[*h]).collect();
                gone.into_iter().for_each(|h| self.leave(h));
                hosts.iter().for_each(|h| self.join(*h));
            }
        }
        let at = Duration::from_nanos(self.now);
        let count = self.members.len();
        match self.report.member_counts.last_mut() {
            Some(last) if last.0 == at => last.1 = count,
            _ => self.report.member_counts.push((at, count)),
        }
    }

    fn sample_memory(&mut self) {
        let Some(proxy) = &self.proxy else { return };
        let (shared_data_bytes, metrics) = {
            let shared = proxy.lock();
            (shared.data_bytes(), shared.metrics().len())
        };
        self.report.memory.push(MemorySample {
            at: Duration::from_nanos(self.now),
            hosts_seen: self.seen,
            linear: (0..proxy.workers())
                .map(|vm| proxy.vm(vm).memory_size())
                .collect(),
            shared_data_bytes,
            metrics,
        });
    }

    fn bucket(&mut self) -> &mut Bucket {
        let width = self.scenario.bucket.as_nanos().max(1) as u64;
        let index = ((self.now / width) as usize).min(self.report.buckets.len() - 1);
        &mut self.report.buckets[index]
    }

    /// The load balancer: the steering header names a current member
    /// (override_host), or the worker's round robin over the members picks
    /// one, avoiding `avoid` when there is another member.
    fn pick(&mut self, vm: usize, steering: Option<&[u8]>, avoid: usize) -> (usize, bool) {
        if let Some(value) = steering {
            // override_host takes `ip:port` or a list; the first entry is
            // for the first attempt.
            let first = value.split(|b| *b == b',').next().unwrap_or(value);
            let first = first.trim_ascii();
            match self.by_address.get(first) {
                Some(host) if self.slot[*host] != NO_HOST => return (*host, true),
                _ => {
                    self.report.fallbacks += 1;
                    self.bucket().fallbacks += 1;
                }
            }
        }
        if self.members.is_empty() {
            return (NO_HOST, false);
        }
        let next = &mut self.round_robin[vm];
        let mut host = self.members[*next % self.members.len()];
        *next = next.wrapping_add(1);
        if host == avoid && self.members.len() > 1 {
            host = self.members[*next % self.members.len()];
            *next = next.wrapping_add(1);
        }
        (host, false)
    }

    /// Sends an attempt to its host and schedules its completion.
    fn send(&mut self, mut attempt: Attempt) {
        let latency = if attempt.host == NO_HOST {
            attempt.status = 503;
            attempt.flags = flags::NO_HEALTHY_UPSTREAM;
            Duration::ZERO
        } else {
            let response = self.scenario.hosts[attempt.host].respond(
                Duration::from_nanos(self.now),
                self.scenario.base_latency,
                &mut self.upstream[attempt.host],
            );
            attempt.status = response.status;
            attempt.flags = response.flags;
            response.latency
        };
        let done_at = self.now + latency.as_nanos() as u64;
        self.schedule(done_at, Event::Complete(attempt));
    }

    fn arrive(&mut self) -> Result<(), VmError> {
        let workers = self.scenario.workers;
        let vm = self.arrivals.below(workers as u64) as usize;
        self.report.requests += 1;
        self.bucket().requests += 1;
        let mut steering = None;
        let mut stream = None;
        let mut retry = (0, 0, [0u128; 2]);
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
            if let Some(policy) = state.header(MapType::RequestHeaders, "x-envoy-retry-on") {
                let bits = retry_on::parse(policy);
                // Envoy's default num_retries is 1.
                let retries = state
                    .header(MapType::RequestHeaders, "x-envoy-max-retries")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.trim().parse::<u8>().ok())
                    .unwrap_or(1);
                let codes = state
                    .header(MapType::RequestHeaders, "x-envoy-retriable-status-codes")
                    .map(retry_on::codes)
                    .unwrap_or_default();
                if bits != 0 {
                    retry = (bits, retries, codes);
                }
            }
            stream = Some(id);
        }
        let (host, steered) = self.pick(vm, steering.as_deref(), NO_HOST);
        let (vm, id) = stream.map_or((vm, 0), |s| (s.vm, s.id));
        self.send(Attempt {
            vm,
            id,
            host,
            status: 0,
            flags: 0,
            steered,
            attempt: 0,
            retries_left: retry.1,
            retry_on: retry.0,
            retriable_codes: retry.2,
        });
        Ok(())
    }

    /// A retry of `failed`: the round robin picks another host.
    fn retry(&mut self, failed: Attempt) {
        let (host, steered) = self.pick(failed.vm, None, failed.host);
        self.send(Attempt {
            host,
            steered,
            attempt: failed.attempt + 1,
            retries_left: failed.retries_left - 1,
            ..failed
        });
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

    fn complete(&mut self, attempt: Attempt) -> Result<(), VmError> {
        let Attempt {
            host,
            status,
            flags,
            steered,
            ..
        } = attempt;
        let failed = status >= 500 || flags != 0;
        let retried = attempt.retriable();
        if host != NO_HOST {
            let tally = &mut self.tallies[host];
            if tally.requests == 0 {
                self.seen += 1;
            }
            tally.requests += 1;
            if failed {
                tally.failures += 1;
                tally.streak += 1;
            } else {
                tally.streak = 0;
            }
            let bucket = self.bucket();
            bucket.attempts += 1;
            bucket.hosts[host].requests += 1;
            bucket.hosts[host].steered += u64::from(steered);
            if failed {
                bucket.hosts[host].failures += 1;
            }
            if retried {
                bucket.hosts[host].retried += 1;
            }
        }
        if retried {
            self.bucket().retries += 1;
            self.report.retries += 1;
            // Envoy's first back-off: random up to the 25 ms base interval.
            let backoff = self.retry_backoff.below(25_000_001);
            self.schedule(self.now + backoff, Event::Retry(attempt));
            return Ok(());
        }
        if status >= 500 {
            self.bucket().client_errors += 1;
            self.report.client_errors += 1;
        }
        if let Some(proxy) = &mut self.proxy {
            let mut http = proxy.resume(StreamRef {
                vm: attempt.vm,
                id: attempt.id,
            });
            if host != NO_HOST {
                let address = &self.scenario.hosts[host].address;
                let port = address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                http.property("upstream.address", Answer::string(address))
                    .property("upstream.port", Answer::int(port));
            }
            http.property("response.code", Answer::int(i64::from(status)))
                .property("response.flags", Answer::int(flags))
                .property(
                    "upstream.request_attempt_count",
                    Answer::int(i64::from(attempt.attempt) + 1),
                );
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

    /// Reads every host's state gauge once (at the start).
    fn scan_gauges(&mut self) {
        let Some(proxy) = &self.proxy else { return };
        let changed: Vec<usize> = {
            let mut shared = proxy.lock();
            shared.take_changed_gauges();
            (0..shared.metrics().len()).collect()
        };
        self.record_gauges(changed);
    }

    /// Records changes of the host-state gauges among `changed` (metric
    /// indices), in host order, as one sample.
    fn record_gauges(&mut self, changed: Vec<usize>) {
        let Some(proxy) = &self.proxy else { return };
        let shared = proxy.lock();
        let at = Duration::from_nanos(shared.mono_ns());
        let metrics = shared.metrics();
        let mut hosts: Vec<(usize, usize)> = changed
            .into_iter()
            .filter_map(|index| {
                let host = *self.gauge_host.entry(index).or_insert_with(|| {
                    let metric = &metrics[index];
                    if metric.kind == MetricType::Gauge {
                        self.gauge_names.get(&metric.name).copied()
                    } else {
                        None
                    }
                });
                host.map(|h| (h, index))
            })
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        for (host, index) in hosts {
            let value = Some(metrics[index].value);
            let last = &mut self.gauge_last[host];
            if value != *last {
                *last = value;
                let state = match value {
                    Some(0) => "Healthy",
                    Some(1) => "Degraded",
                    Some(2) => "Unhealthy",
                    Some(3) => "WarmingUp",
                    _ => "Unknown",
                };
                self.report.states.push((at, host, state.to_string()));
            }
        }
    }

    /// Moves new log lines into the report, parsing transitions, and
    /// records changes of the host-state gauges.
    fn collect_logs(&mut self) {
        let Some(proxy) = &self.proxy else { return };
        let changed = proxy.lock().take_changed_gauges();
        if !changed.is_empty() {
            self.record_gauges(changed);
        }
        let Some(proxy) = &self.proxy else { return };
        for record in proxy.take_logs() {
            if let Some(mut transition) = parse_transition(&record) {
                if let Some(index) = self.by_address.get(transition.host.as_bytes()) {
                    let tally = self.tallies[*index];
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

/// A grade change line (`meshguard::events`), with the time and VM it came
/// from.
pub fn parse_transition(record: &LogRecord) -> Option<Transition> {
    let line = meshguard::events::HostTransition::parse(&record.message)?;
    let reason = match line.ejected_for_ms.zip(line.ejection) {
        Some((ms, n)) => format!(
            "{}; ejected for {}.{:03}s (ejection #{n})",
            line.reason,
            ms / 1000,
            ms % 1000
        ),
        None => line.reason,
    };
    Some(Transition {
        at: Duration::from_nanos(record.time_ns),
        vm: record.vm,
        service: line.unit,
        host: line.address,
        from: line.from.to_string(),
        to: line.to.to_string(),
        reason,
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
