//! The soak (`make soak`, and a short run in `make test`): a real Envoy
//! (`--concurrency 2`) with meshguard in front of several services of
//! hosts whose membership changes every second through EDS from watched
//! files, a new plugin configuration pushed by LDS every minute (some of
//! them invalid, some rollbacks to an earlier one), random incidents
//! (hard, grey, slow, reset, refused, a whole service) on random hosts, and
//! a steady request rate, for as long as asked. Every minute it records
//! and prints what a platform team would watch: client errors no incident
//! explains, requests that still reached ejected hosts, meshguard's memory
//! per VM and its tables, its shared data, Envoy's RSS, configurations
//! accepted and rejected, and traps. [`Report::verdict`] applies the pass
//! criteria; docs/soak.md has the figures of a full run.
//!
//! Reused: [`Fleet`] (one mg-upstream process serving every host, each on
//! its own loopback address), [`EnvoyProcess`] (the one Envoy launcher),
//! [`Behaviour`] (the faults), [`host_tests::http`] (the client),
//! [`meshguard::events`] (transition lines), [`eds_document_for`]'s shape
//! from `host_tests::fleet`, and the status endpoint's `vm` and `sharedData`
//! reports.
//!
//! What an incident explains (the only client errors allowed):
//! - a failed request whose last attempt went to a host under a host
//!   incident, between the incident's start and [`HOST_GRACE`] after its
//!   end (before or after meshguard detected it: both are counted, apart);
//! - during a whole-service incident on service S, a failed request to S
//!   between its start and [`HOST_GRACE`] after its end, and S's breaker's
//!   local replies from its start until S's breaker is closed again in
//!   every scope (at most [`SERVICE_RECOVERY`] after the end).
//!
//! Anything else that is not a 200 is unexplained, and fails the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshguard::events::{BreakerChange, HostTransition};

use host_tests::behaviour::Behaviour;
use host_tests::envoy::{free_ports, EnvoyProcess};
use host_tests::fixture::TestPaths;
use host_tests::fleet::eds_document_for;
use host_tests::http;
use host_tests::process::ChildGuard;
use host_tests::upstream::Fleet;

/// After a host incident ends, errors of requests that were in flight to
/// it still count as explained for this long.
pub const HOST_GRACE: Duration = Duration::from_secs(3);
/// The longest a breaker may stay open after its service recovered
/// (`maxOpenDuration` of the soak's configurations is 20 s, plus probes).
pub const SERVICE_RECOVERY: Duration = Duration::from_secs(90);

/// Response header carrying the generation of the configuration in force
/// (a response header rule of every configuration pushed).
const CONFIG_HEADER: &str = "x-soak-config";
/// How the client marks its requests, so the access log names them.
const ID_HEADER: &str = "x-request-id";

/// What to run. [`SoakOptions::from_env`] reads the environment.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    /// Services (clusters), each with its own EDS file.
    pub services: usize,
    /// Members per service: it starts at `start`, random walk in `min..=max`.
    pub members_min: usize,
    pub members_start: usize,
    pub members_max: usize,
    /// Client requests per second, all services together.
    pub rate: u32,
    /// Client threads the rate is spread over.
    pub clients: usize,
    /// Hosts replaced per second (removed, and a never used address added),
    /// besides the adds and removals of the random walk.
    pub replaced_per_second: usize,
    /// A new plugin configuration this often (LDS).
    pub config_every: Duration,
    /// A new incident every so often (random, around this).
    pub incident_every: Duration,
    /// Samples before this are left out of the growth trends.
    pub warmup: Duration,
    /// Distinct addresses the run must go through (0: just report).
    pub min_distinct_addresses: usize,
    pub seed: u64,
    /// Envoy's `--drain-time-s` (Istio's sidecars run with 45).
    pub drain_time_s: u32,
}

impl SoakOptions {
    /// `default_minutes` unless `MESHGUARD_SOAK_SECONDS` or
    /// `MESHGUARD_SOAK_MINUTES` say otherwise; `MESHGUARD_SOAK_RATE`,
    /// `MESHGUARD_SOAK_SEED`. A run of 30 minutes or more must go through
    /// 10,000 distinct addresses.
    pub fn from_env(default_minutes: f64) -> Self {
        let number = |name: &str| -> Option<f64> {
            let text = std::env::var(name).ok()?;
            match text.trim().parse::<f64>() {
                Ok(v) if v > 0.0 => Some(v),
                _ => panic!("{name}={text} is not a positive number"),
            }
        };
        let seconds = number("MESHGUARD_SOAK_SECONDS")
            .or_else(|| number("MESHGUARD_SOAK_MINUTES").map(|m| m * 60.0))
            .unwrap_or(default_minutes * 60.0);
        let duration = Duration::from_secs_f64(seconds.max(60.0));
        let warmup = Duration::from_secs_f64((seconds / 6.0).clamp(60.0, 300.0));
        SoakOptions {
            duration,
            services: 4,
            members_min: 50,
            members_start: 60,
            members_max: 75,
            rate: number("MESHGUARD_SOAK_RATE").map_or(240, |r| r as u32),
            clients: 8,
            replaced_per_second: 4,
            config_every: Duration::from_secs(60),
            incident_every: Duration::from_secs(20),
            warmup,
            min_distinct_addresses: if seconds >= 1800.0 { 10_000 } else { 0 },
            seed: number("MESHGUARD_SOAK_SEED").map_or(0x50a4, |s| s as u64),
            drain_time_s: 45,
        }
    }

    /// Hosts the mg-upstream process must serve: the first members, and
    /// every address the churn adds, with room to spare.
    pub fn pool(&self) -> usize {
        let seconds = self.duration.as_secs() as usize + 30;
        let added = seconds * (self.replaced_per_second + 4);
        self.services * self.members_max + added
    }
}

/// The service's cluster name, shaped like istiod's.
pub fn cluster_name(service: usize) -> String {
    format!("outbound|8080||svc{service}.shop.svc.cluster.local")
}

/// A small seeded PRNG (splitmix64) for everything the soak decides.
#[derive(Debug, Clone)]
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Least-squares line through `points` (x, y): (slope, mean of y). None
/// with fewer than three points or no spread in x.
pub fn trend(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some((sxy / sxx, my))
}

/// How much growth a series may show after the warm-up: the fitted line's
/// rise over the measured span must stay within `relative` of the series'
/// mean or `absolute`, whichever is larger.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub relative: f64,
    pub absolute: f64,
}

/// The series the flatness criterion applies to, with their tolerances.
pub const FLAT_SERIES: &[(&str, Tolerance)] = &[
    (
        "wasm memory (bytes, per VM)",
        Tolerance {
            relative: 0.05,
            absolute: 256.0 * 1024.0,
        },
    ),
    (
        "Envoy RSS (bytes)",
        Tolerance {
            relative: 0.10,
            absolute: 8.0 * 1024.0 * 1024.0,
        },
    ),
    (
        "shared-data keys",
        Tolerance {
            relative: 0.0,
            absolute: 2.0,
        },
    ),
    (
        "shared-data bytes",
        Tolerance {
            relative: 0.20,
            absolute: 8192.0,
        },
    ),
    (
        "services table (per VM)",
        Tolerance {
            relative: 0.25,
            absolute: 4.0,
        },
    ),
    (
        "hosts table (per VM)",
        Tolerance {
            relative: 0.25,
            absolute: 64.0,
        },
    ),
    (
        "address cache (per VM)",
        Tolerance {
            relative: 0.25,
            absolute: 64.0,
        },
    ),
    (
        "metric names (per VM)",
        Tolerance {
            relative: 0.25,
            absolute: 32.0,
        },
    ),
    (
        "plugin instances (per VM)",
        Tolerance {
            relative: 0.0,
            absolute: 2.0,
        },
    ),
];

/// The shared member lists remember the latest 256 hosts steering showed
/// gone, per service: at this churn (about 6 departures a second over four
/// services) they fill in about three minutes, and only then is the
/// shared data at its steady size. Its trend is judged after this, or
/// after the run's warm-up if later (so not at all in a 3-minute run).
pub const SHARED_DATA_WARMUP_S: f64 = 240.0;

fn warmup_of(series: &str, warmup_s: f64) -> f64 {
    if series == "shared-data bytes" {
        warmup_s.max(SHARED_DATA_WARMUP_S)
    } else {
        warmup_s
    }
}

fn tolerance(series: &str) -> Tolerance {
    FLAT_SERIES
        .iter()
        .find(|(name, _)| *name == series)
        .map(|(_, t)| *t)
        .unwrap_or(Tolerance {
            relative: 0.25,
            absolute: 0.0,
        })
}

/// The kinds of incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Every request answered 503 or 500.
    Hard,
    /// 40% of the requests answered 503, drawn at random.
    Grey,
    /// Every answer 400 ms late.
    Slow,
    /// Connections closed without an answer.
    Reset,
    /// Connections refused (the host's listener closed).
    Refused,
    /// Every member of one service answers 503.
    Service,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Hard,
        Kind::Grey,
        Kind::Slow,
        Kind::Reset,
        Kind::Refused,
        Kind::Service,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Grey => "grey",
            Kind::Slow => "slow",
            Kind::Reset => "reset",
            Kind::Refused => "refused",
            Kind::Service => "service",
        }
    }

    fn behaviour(self, dice: &mut Dice) -> Behaviour {
        match self {
            Kind::Hard => Behaviour::status(*dice.pick(&[503, 500])),
            Kind::Grey => Behaviour {
                random_errors: true,
                ..Behaviour::grey(503, 40)
            },
            Kind::Slow => Behaviour::slow(400),
            Kind::Reset => Behaviour {
                reset: true,
                ..Behaviour::default()
            },
            Kind::Refused => Behaviour {
                refuse: true,
                ..Behaviour::default()
            },
            Kind::Service => Behaviour::status(503),
        }
    }

    /// Whether meshguard must eject the host (not only degrade it).
    fn ejects(self) -> bool {
        matches!(self, Kind::Hard | Kind::Reset | Kind::Refused)
    }
}

/// One incident of the run.
#[derive(Debug, Clone)]
pub struct Incident {
    pub kind: Kind,
    pub service: usize,
    /// Pool indices of the hosts it affects.
    pub hosts: Vec<usize>,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    /// First grade change away from Healthy (any scope), Envoy's log time.
    pub detected_ms: Option<u64>,
    /// First ejection in the service's own scope.
    pub ejected_ms: Option<u64>,
    /// Envoy's per-host requests and connect failures when the ejection
    /// was seen, and how many came after it (until the end).
    pub counter_at_ejection: Option<u64>,
    pub after_ejection: u64,
    pub errors_before: u64,
    pub errors_after: u64,
    /// For a whole-service incident: when its breakers were all closed
    /// again (or the recovery limit passed).
    pub recovered_ms: Option<u64>,
}

impl Incident {
    /// Whether a request sent at `sent` and answered at `done` overlaps
    /// the incident: answered after it began, sent before
    /// [`HOST_GRACE`] after its end.
    fn in_window(&self, sent: u64, done: u64) -> bool {
        let end = self
            .end_ms
            .map_or(u64::MAX, |e| e + HOST_GRACE.as_millis() as u64);
        done >= self.start_ms && sent <= end
    }
}

/// A failed client request, waiting for its access-log line.
#[derive(Debug, Clone)]
struct Failure {
    id: String,
    /// When it was sent, and when its answer (or error) came.
    at_ms: u64,
    done_ms: u64,
    service: usize,
    path: String,
    status: u16,
    error: Option<String>,
}

/// What the access log says about a failed request.
#[derive(Debug, Clone)]
struct Access {
    upstream: String,
    flags: String,
    details: String,
    cluster: String,
}

/// One VM's report, from the status endpoint's `vm`.
#[derive(Debug, Clone, Default)]
pub struct VmSample {
    pub id: u64,
    pub memory_bytes: u64,
    pub instances: u64,
    pub services: u64,
    pub hosts: u64,
    pub addresses: u64,
    pub metric_names: u64,
}

/// One minute of the run.
#[derive(Debug, Clone, Default)]
pub struct Minute {
    pub index: usize,
    pub requests: u64,
    pub failed: u64,
    pub explained_before: u64,
    pub explained_after: u64,
    pub explained_service: u64,
    pub unexplained: u64,
    /// Requests (and connect attempts) ejected hosts received after their
    /// ejection was seen.
    pub to_ejected: u64,
    pub incidents: BTreeMap<&'static str, u64>,
    pub eds_updates: u64,
    pub distinct_addresses: usize,
    pub members: usize,
    pub configs_valid: u64,
    pub configs_invalid: u64,
    pub lds_accepted: u64,
    pub lds_rejected: u64,
    pub meshguard_rejected: u64,
    pub vms: BTreeMap<u64, VmSample>,
    pub shared_keys: u64,
    pub shared_bytes: u64,
    pub watched_hosts: u64,
    pub rss_bytes: u64,
    pub traps: u64,
}

/// The run's result.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub options_line: String,
    pub minutes: Vec<Minute>,
    pub incidents: Vec<Incident>,
    /// (seconds since start, series, VM id or 0, value).
    pub samples: Vec<(f64, String, u64, f64)>,
    pub unexplained: Vec<String>,
    pub config_problems: Vec<String>,
    pub traps: Vec<String>,
    pub problems: Vec<String>,
    pub distinct_addresses: usize,
    pub warmup_s: f64,
    pub min_distinct_addresses: usize,
    pub wasm_stats: BTreeMap<String, u64>,
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The per-minute table (markdown).
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| min | requests | not 200 | explained before / after detection / service | unexplained | to ejected hosts | incidents | EDS updates | addresses so far | members | configs valid / invalid | LDS accepted / rejected | wasm memory MiB per VM | instances | shared keys / bytes | services / hosts / addresses / metric names (max per VM) | watched hosts | Envoy RSS MiB | traps |\n");
        out.push_str(
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for m in &self.minutes {
            let incidents = if m.incidents.is_empty() {
                "-".to_string()
            } else {
                m.incidents
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let vm_mem = m
                .vms
                .values()
                .map(|v| mib(v.memory_bytes))
                .collect::<Vec<_>>()
                .join(" / ");
            let max = |f: fn(&VmSample) -> u64| m.vms.values().map(f).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} / {} | {} / {} / {} / {} | {} | {} | {} |",
                m.index + 1,
                m.requests,
                m.failed,
                m.explained_before,
                m.explained_after,
                m.explained_service,
                m.unexplained,
                m.to_ejected,
                incidents,
                m.eds_updates,
                m.distinct_addresses,
                m.members,
                m.configs_valid,
                m.configs_invalid,
                m.lds_accepted,
                m.lds_rejected,
                if vm_mem.is_empty() { "-".to_string() } else { vm_mem },
                max(|v| v.instances),
                m.shared_keys,
                m.shared_bytes,
                max(|v| v.services),
                max(|v| v.hosts),
                max(|v| v.addresses),
                max(|v| v.metric_names),
                m.watched_hosts,
                mib(m.rss_bytes),
                m.traps
            );
        }
        out
    }

    /// Per incident kind: how many, median time to detection, errors
    /// before and after detection, requests to the host after ejection.
    pub fn incident_table(&self) -> String {
        let mut out = String::from(
            "| incident | count | detected | ejected (of those that must be) | median s to detection | errors before detection | errors after | requests to the host after ejection |\n|---|---|---|---|---|---|---|---|\n",
        );
        for kind in Kind::ALL {
            let list: Vec<&Incident> = self.incidents.iter().filter(|i| i.kind == kind).collect();
            if list.is_empty() {
                continue;
            }
            let mut delays: Vec<f64> = list
                .iter()
                .filter_map(|i| {
                    i.detected_ms
                        .map(|d| d.saturating_sub(i.start_ms) as f64 / 1000.0)
                })
                .collect();
            delays.sort_by(|a, b| a.total_cmp(b));
            let median = delays
                .get(delays.len() / 2)
                .map_or("-".to_string(), |d| format!("{d:.1}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                list.len(),
                delays.len(),
                if kind.ejects() {
                    list.iter()
                        .filter(|i| i.ejected_ms.is_some())
                        .count()
                        .to_string()
                } else {
                    "-".to_string()
                },
                median,
                list.iter().map(|i| i.errors_before).sum::<u64>(),
                list.iter().map(|i| i.errors_after).sum::<u64>(),
                list.iter().map(|i| i.after_ejection).sum::<u64>()
            );
        }
        out
    }

    /// Each flat series' fitted growth after the warm-up against its
    /// tolerance: (series, VM, growth, allowed, mean, samples).
    pub fn trends(&self) -> Vec<(String, u64, f64, f64, f64, usize)> {
        let mut by: BTreeMap<(String, u64), Vec<(f64, f64)>> = BTreeMap::new();
        for (t, series, vm, v) in &self.samples {
            if *t >= warmup_of(series, self.warmup_s) {
                by.entry((series.clone(), *vm)).or_default().push((*t, *v));
            }
        }
        by.into_iter()
            .filter_map(|((series, vm), points)| {
                let (slope, mean) = trend(&points)?;
                let span = points.last()?.0 - points.first()?.0;
                let tol = tolerance(&series);
                let allowed = (tol.relative * mean.abs()).max(tol.absolute);
                Some((series, vm, slope * span, allowed, mean, points.len()))
            })
            .collect()
    }

    pub fn trend_table(&self) -> String {
        let mut out = String::from(
            "| series | VM | samples after warm-up | mean | fitted growth over the span | allowed |\n|---|---|---|---|---|---|\n",
        );
        for (series, vm, growth, allowed, mean, n) in self.trends() {
            let _ = writeln!(
                out,
                "| {series} | {} | {n} | {mean:.0} | {growth:+.0} | {allowed:.0} |",
                if vm == 0 {
                    "-".to_string()
                } else {
                    format!("{vm:08x}")
                }
            );
        }
        out
    }

    /// Everything, for the log and docs/soak.md.
    pub fn render(&self) -> String {
        format!(
            "{}\n\nPer minute:\n\n{}\nIncidents:\n\n{}\nGrowth after the {:.0} s warm-up (least squares over the 10 s samples):\n\n{}\n{} distinct upstream addresses; Envoy's wasm stats at the end: {}\n",
            self.options_line,
            self.table(),
            self.incident_table(),
            self.warmup_s,
            self.trend_table(),
            self.distinct_addresses,
            self.wasm_stats
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// The pass criteria: zero traps, zero unexplained errors, flat memory
    /// and tables, every configuration handled as it should be, the run's
    /// churn reached, and nothing else wrong. Err lists every failure.
    pub fn verdict(&self) -> Result<(), String> {
        let mut failures = Vec::new();
        if !self.traps.is_empty() {
            failures.push(format!(
                "{} traps (must be 0):\n  {}",
                self.traps.len(),
                self.traps.join("\n  ")
            ));
        }
        if !self.unexplained.is_empty() {
            failures.push(format!(
                "{} client errors no incident explains (must be 0):\n  {}",
                self.unexplained.len(),
                self.unexplained
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
        for (series, vm, growth, allowed, mean, n) in self.trends() {
            if growth > allowed {
                failures.push(format!(
                    "{series}{}: grows {growth:+.0} over the {n} samples after warm-up (mean {mean:.0}, allowed {allowed:.0})",
                    if vm == 0 { String::new() } else { format!(" (VM {vm:08x})") }
                ));
            }
        }
        if !self.config_problems.is_empty() {
            failures.push(format!(
                "configuration pushes not handled as they should be:\n  {}",
                self.config_problems.join("\n  ")
            ));
        }
        if self.distinct_addresses < self.min_distinct_addresses {
            failures.push(format!(
                "only {} distinct addresses over the run (must be at least {})",
                self.distinct_addresses, self.min_distinct_addresses
            ));
        }
        failures.extend(self.problems.iter().cloned());
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "soak failed:\n- {}\n\n{}",
                failures.join("\n- "),
                self.render()
            ))
        }
    }
}

/// A plugin configuration of the run.
#[derive(Debug, Clone)]
pub struct PushedConfig {
    /// The generation its response header rule names.
    pub generation: u32,
    pub text: String,
    pub valid: bool,
}

/// A valid configuration: thresholds drawn at random, the strict override
/// for every `*-critical` VirtualService, the status endpoint on, and the
/// header rule naming `generation`.
pub fn valid_config(generation: u32, dice: &mut Dice) -> String {
    let window = *dice.pick(&[20, 30, 50]);
    let min = *dice.pick(&[5, 10]);
    let consecutive = *dice.pick(&[3, 5]);
    let base = *dice.pick(&["5s", "10s", "20s"]);
    let discovery = *dice.pick(&[2, 5, 10]);
    let degraded_weight = *dice.pick(&[25, 50]);
    format!(
        r#"{{"detection":{{"windowSize":{window},"minRequests":{min},"consecutive5xxErrors":{consecutive},"consecutiveLocalOriginFailures":{consecutive},"slowCallThreshold":"200ms","slowCallPercent":50}},"ejection":{{"baseEjectionTime":"{base}","maxEjectionTime":"60s","warmupDuration":"10s","degradedWeightPercent":{degraded_weight}}},"steering":{{"discoveryPercent":{discovery}}},"limits":{{"hostIdleTimeout":"60s"}},"circuitBreaker":{{"windowSize":50,"minRequests":20,"failurePercent":50,"openDuration":"5s","maxOpenDuration":"20s"}},"headers":{{"response":[{{"op":"set","name":"{CONFIG_HEADER}","value":"g{generation}"}}]}},"overrides":[{{"virtualService":"shop/*-critical","detection":{{"degradedFailurePercent":10,"unhealthyFailurePercent":20,"recoveredFailurePercent":2,"consecutive5xxErrors":2}},"circuitBreaker":{{"failurePercent":40}}}}],"status":{{"enabled":true,"useRemoteAddress":true}}}}"#
    )
}

/// Invalid configurations, each refused for one reason (with the header
/// rule of its generation where it parses that far, so an accepted one
/// would show in responses).
pub fn invalid_config(generation: u32, dice: &mut Dice) -> String {
    let rule = format!(
        r#""headers":{{"response":[{{"op":"set","name":"{CONFIG_HEADER}","value":"g{generation}"}}]}}"#
    );
    let choices = [
        format!(r#"{{"detection":{{"windowSze":20}},{rule}}}"#),
        format!(r#"{{"detection":{{"windowSize":0}},{rule}}}"#),
        format!(r#"{{"ejection":{{"baseEjectionTime":"30s","maxEjectionTime":"10s"}},{rule}}}"#),
        format!(r#"{{"steering":{{"header":"authorization"}},{rule}}}"#),
        format!(r#"{{"detection":{{"windowSize":0}},"detection":{{}},{rule}}}"#),
        format!(r#"{{"detection":{{"consecutive5xxErrors":1e-400}},{rule}}}"#),
        format!(r#"{{"mode":"sideways",{rule}}}"#),
        format!(
            r#"{{"detection":{{"degradedFailurePercent":30,"recoveredFailurePercent":40}},{rule}}}"#
        ),
        format!(
            r#"{{"overrides":[{{"virtualService":"shop/*-critical","detection":{{"minRequests":500,"windowSize":20}}}}],{rule}}}"#
        ),
        format!(
            r#"{{"headers":{{"response":[{{"op":"set","name":"{CONFIG_HEADER}","value":"{{nope}}"}}]}}}}"#
        ),
        r#"{"detection":{"windowSize":20}"#.to_string(),
    ];
    dice.pick(&choices).clone()
}

/// The bootstrap: admin, node, the listener from `<dir>/lds/listener.yaml`
/// and one EDS cluster per service from `<dir>/eds/svc<i>.json`.
pub fn bootstrap(dir: &Path, admin_port: u16, services: usize) -> String {
    let mut clusters = String::new();
    for s in 0..services {
        let name = cluster_name(s);
        let _ = write!(
            clusters,
            r#"  - name: "{name}"
    type: EDS
    connect_timeout: 1s
    eds_cluster_config:
      eds_config:
        resource_api_version: V3
        path_config_source:
          path: {eds}/svc{s}.json
          watched_directory: {{ path: {eds} }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config:
          http_protocol_options: {{}}
          http2_protocol_options: {{}}
        http_filters:
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - remove: x-meshguard-upstream
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.override_host
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
            override_host_sources:
            - header: x-meshguard-upstream
            fallback_policy:
              policies:
              - typed_extension_config:
                  name: envoy.load_balancing_policies.least_request
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest
"#,
            eds = dir.join("eds").display()
        );
    }
    format!(
        r#"# The soak's bootstrap (host-tests/src/soak.rs): the clusters of
# envoy/demo.yaml.tmpl's shape, one per service, fed by EDS from watched
# files; the listener (and with it meshguard's configuration) from a
# watched LDS file.
node: {{ id: meshguard-soak, cluster: meshguard-soak }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source:
      path: {lds}/listener.yaml
      watched_directory: {{ path: {lds} }}
static_resources:
  clusters:
{clusters}"#,
        lds = dir.join("lds").display()
    )
}

/// The listener file: routes `/svc<i>/critical` (VirtualService
/// `shop/svc<i>-critical`, which the configurations' strict override
/// selects) and `/svc<i>/` (`shop/svc<i>`) per service, a catch-all, and
/// meshguard (FAIL_CLOSED: a trap would fail every later request, which
/// the run would see) with `config`.
pub fn listener(
    listen_port: u16,
    access_log: &Path,
    wasm: &Path,
    services: usize,
    config: &str,
) -> String {
    let mut routes = String::new();
    for s in 0..services {
        let cluster = cluster_name(s);
        for (name, prefix, vs) in [
            (
                format!("svc{s}-critical"),
                format!("/svc{s}/critical"),
                format!("svc{s}-critical"),
            ),
            (format!("svc{s}"), format!("/svc{s}/"), format!("svc{s}")),
        ] {
            let _ = write!(
                routes,
                r#"            - name: {name}
              match: {{ prefix: "{prefix}" }}
              route: {{ cluster: "{cluster}" }}
              metadata:
                filter_metadata:
                  istio: {{ config: "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/{vs}" }}
"#
            );
        }
    }
    format!(
        r#"resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: ingress
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress
        use_remote_address: true
        generate_request_id: false
        access_log:
        - name: envoy.access_loggers.file
          filter:
            or_filter:
              filters:
              - status_code_filter: {{ comparison: {{ op: GE, value: {{ default_value: 201, runtime_key: soak.log_from }} }} }}
              - status_code_filter: {{ comparison: {{ op: LE, value: {{ default_value: 199, runtime_key: soak.log_below }} }} }}
              - response_flag_filter: {{}}
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
            path: {log}
            log_format:
              text_format_source:
                inline_string: "%REQ(x-request-id)% %START_TIME(%s.%3f)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS%\n"
        route_config:
          name: soak_routes
          virtual_hosts:
          - name: soak
            domains: ["*"]
            retry_policy:
              num_retries: 1
              retry_host_predicate:
              - name: envoy.retry_host_predicates.previous_hosts
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
              host_selection_retry_max_attempts: 5
            routes:
{routes}            - name: default
              match: {{ prefix: "/" }}
              route: {{ cluster: "{first}" }}
        http_filters:
        - name: envoy.filters.http.header_mutation
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
            mutations:
              request_mutations:
              - remove: x-meshguard-upstream
              response_mutations:
              - remove: x-meshguard-upstream
        - name: envoy.filters.http.wasm
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            config:
              name: meshguard
              root_id: meshguard
              failure_policy: FAIL_CLOSED
              configuration:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{config}'
              vm_config:
                vm_id: meshguard
                runtime: envoy.wasm.runtime.v8
                code:
                  local: {{ filename: "{wasm}" }}
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        log = access_log.display(),
        first = cluster_name(0),
        config = config.replace('\'', "''"),
        wasm = wasm.display()
    )
}

fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Envoy's log time (`[2026-12-01 22:40:08.203]`, UTC here) in epoch ms.
pub fn envoy_log_time(line: &str) -> Option<u64> {
    let stamp = line.strip_prefix('[')?.get(..23)?;
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + h) * 60 + mi) * 60 + s) * 1000 + ms)
}

/// Reads what was appended to a file since the last call (whole lines).
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Tail {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    fn lines(&mut self) -> Vec<String> {
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}

/// What the client threads share with the controller.
#[derive(Default)]
struct ClientLog {
    /// Per minute: requests, failed.
    counts: Vec<(u64, u64)>,
    failures: Vec<Failure>,
    /// Per minute: responses by the configuration generation they carried.
    generations: Vec<BTreeMap<u32, u64>>,
}

fn minute_slot<T: Default>(v: &mut Vec<T>, m: usize) -> &mut T {
    if v.len() <= m {
        v.resize_with(m + 1, T::default);
    }
    &mut v[m]
}

fn generation_of(r: &http::Response) -> Option<u32> {
    r.header(CONFIG_HEADER)?.strip_prefix('g')?.parse().ok()
}

/// One client thread: `rate` requests a second, evenly spaced, each to a
/// random service and route, until `stop`.
#[allow(clippy::too_many_arguments)]
fn client(
    listener: SocketAddr,
    rate: f64,
    services: usize,
    thread: usize,
    started: Instant,
    seed: u64,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ClientLog>>,
) {
    let mut dice = Dice::new(seed);
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.1));
    // Each thread starts at its own phase so the threads interleave.
    let mut due = Instant::now() + gap.mul_f64(thread as f64 / 8.0);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        due += gap;
        // A thread that fell behind (a slow host) catches up, but never
        // bursts more than a second's worth.
        let now = Instant::now();
        if now > due + Duration::from_secs(1) {
            due = now;
        }
        n += 1;
        let service = dice.below(services);
        let path = if dice.chance(0.3) {
            format!("/svc{service}/critical/{n}")
        } else {
            format!("/svc{service}/api/{n}")
        };
        let id = format!("soak-{thread}-{n}");
        let at_ms = epoch_ms();
        let minute = (started.elapsed().as_secs() / 60) as usize;
        let result = http::request(
            listener,
            "GET",
            &path,
            &[(ID_HEADER, id.as_str())],
            &[],
            Duration::from_secs(10),
        );
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let (status, error, generation) = match &result {
            Ok(r) => (r.status, None, generation_of(r)),
            Err(e) => (0, Some(e.to_string()), None),
        };
        let counts = minute_slot(&mut log.counts, minute);
        counts.0 += 1;
        if status != 200 {
            counts.1 += 1;
            log.failures.push(Failure {
                id,
                at_ms,
                done_ms: epoch_ms(),
                service,
                path,
                status,
                error,
            });
        }
        if let Some(g) = generation {
            *minute_slot(&mut log.generations, minute)
                .entry(g)
                .or_default() += 1;
        }
    }
}

/// The rig and the run's state.
struct Soak {
    opts: SoakOptions,
    dir: PathBuf,
    fleet: Fleet,
    envoy: ChildGuard,
    admin: SocketAddr,
    listen: SocketAddr,
    wasm: PathBuf,
    access_log: PathBuf,
    dice: Dice,
    /// Per service: current members (pool indices), EDS version.
    members: Vec<Vec<usize>>,
    versions: Vec<u64>,
    next_fresh: usize,
    /// Pool index by address, for the access log and transition lines.
    by_address: HashMap<String, usize>,
    /// Pool index -> service, for hosts ever used.
    service_of: HashMap<usize, usize>,
    /// Hosts no churn may touch (under incident, or just after), until.
    frozen: HashMap<usize, u64>,
    /// Services under a whole-service incident.
    service_frozen: BTreeSet<usize>,
    incidents: Vec<Incident>,
    configs: Vec<PushedConfig>,
    /// Generation of the valid configuration in force.
    in_force: u32,
    started: Instant,
    report: Report,
    pending_failures: Vec<Failure>,
    access: HashMap<String, Access>,
    envoy_log: Tail,
    access_tail: Tail,
    breaker_open: HashMap<String, bool>,
    lds_seen: (u64, u64),
    /// (end time, incident index) of the incidents running.
    planned_ends: Vec<(u64, usize)>,
    /// The latest sample of each VM, and of the shared data.
    last_status: Option<serde_json::Value>,
}

impl Soak {
    fn start(paths: &TestPaths, opts: SoakOptions, wasm: PathBuf, envoy_bin: PathBuf) -> Soak {
        let dir = paths.tmp_dir.join("envoy_soak");
        let _ = fs::remove_dir_all(&dir);
        for sub in ["eds", "lds"] {
            fs::create_dir_all(dir.join(sub))
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.join(sub).display()));
        }
        let pool = opts.pool();
        let t = Instant::now();
        let fleet = Fleet::start(&paths.mg_upstream, "h", pool, &dir)
            .unwrap_or_else(|e| panic!("start mg-upstream --hosts {pool}: {e}"));
        println!(
            "soak: {pool} hosts served by one mg-upstream in {:?}",
            t.elapsed()
        );
        let mut dice = Dice::new(opts.seed);
        let mut members = Vec::new();
        let mut next_fresh = 0;
        let mut service_of = HashMap::new();
        for s in 0..opts.services {
            let list: Vec<usize> = (next_fresh..next_fresh + opts.members_start).collect();
            for &h in &list {
                service_of.insert(h, s);
            }
            next_fresh += opts.members_start;
            members.push(list);
        }
        let by_address = fleet
            .hosts
            .iter()
            .map(|h| (h.address.to_string(), h.index))
            .collect();
        let [admin_port, listen_port] =
            free_ports::<2>().unwrap_or_else(|e| panic!("free ports: {e}"));
        let access_log = dir.join("access.log");
        let first = valid_config(1, &mut dice);
        for (s, list) in members.iter().enumerate() {
            let addrs: Vec<SocketAddr> = list.iter().map(|&h| fleet.addr(h)).collect();
            write_atomically(
                &dir.join(format!("eds/svc{s}.json")),
                &eds_document_for(&cluster_name(s), 1, &addrs),
            )
            .unwrap_or_else(|e| panic!("write EDS: {e}"));
        }
        write_atomically(
            &dir.join("lds/listener.yaml"),
            &listener(listen_port, &access_log, &wasm, opts.services, &first),
        )
        .unwrap_or_else(|e| panic!("write LDS: {e}"));
        let mut process = EnvoyProcess::in_dir(&envoy_bin, &dir);
        process.concurrency = 2;
        process.extra_args = vec!["--drain-time-s".into(), opts.drain_time_s.to_string()];
        fs::write(&process.config, bootstrap(&dir, admin_port, opts.services))
            .unwrap_or_else(|e| panic!("write bootstrap: {e}"));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let listen = SocketAddr::from(([127, 0, 0, 1], listen_port));
        let envoy = process
            .start(admin)
            .unwrap_or_else(|e| panic!("start envoy: {e}"));
        let versions = vec![1; opts.services];
        let options_line = format!(
            "soak: {:.0} min, {} services of {}..{} hosts (start {}), {} replaced per second and a random walk of 4 added or removed, {} req/s over {} client threads, a configuration every {} s, an incident about every {} s, seed {:#x}; Envoy 1.40 --concurrency 2 --drain-time-s {}, pid {}, dir {}",
            opts.duration.as_secs_f64() / 60.0,
            opts.services,
            opts.members_min,
            opts.members_max,
            opts.members_start,
            opts.replaced_per_second,
            opts.rate,
            opts.clients,
            opts.config_every.as_secs(),
            opts.incident_every.as_secs(),
            opts.seed,
            opts.drain_time_s,
            envoy.id(),
            dir.display()
        );
        println!("{options_line}");
        let report = Report {
            options_line,
            warmup_s: opts.warmup.as_secs_f64(),
            min_distinct_addresses: opts.min_distinct_addresses,
            ..Report::default()
        };
        let mut soak = Soak {
            envoy_log: Tail::new(dir.join("envoy.log")),
            access_tail: Tail::new(access_log.clone()),
            opts,
            dir,
            fleet,
            envoy,
            admin,
            listen,
            wasm,
            access_log,
            dice,
            members,
            versions,
            next_fresh,
            by_address,
            service_of,
            frozen: HashMap::new(),
            service_frozen: BTreeSet::new(),
            incidents: Vec::new(),
            configs: vec![PushedConfig {
                generation: 1,
                text: first,
                valid: true,
            }],
            in_force: 1,
            started: Instant::now(),
            report,
            pending_failures: Vec::new(),
            access: HashMap::new(),
            breaker_open: HashMap::new(),
            lds_seen: (0, 0),
            planned_ends: Vec::new(),
            last_status: None,
        };
        soak.wait_for_members();
        soak.wait_for_listener();
        soak.lds_seen = (
            soak.stat("listener_manager.lds.update_success"),
            soak.stat("listener_manager.lds.update_rejected"),
        );
        soak
    }

    fn admin_get(&self, path: &str) -> Result<String, String> {
        match http::get(self.admin, path, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => Ok(r.body_text()),
            Ok(r) => Err(format!("envoy admin {path}: {}", r.status)),
            Err(e) => Err(format!("envoy admin {path}: {e}")),
        }
    }

    /// Envoy's stats whose names contain `needle` (text format).
    fn stats_matching(&self, filter: &str) -> BTreeMap<String, u64> {
        self.admin_get(&format!("/stats?filter={filter}"))
            .map(|text| {
                text.lines()
                    .filter_map(|l| {
                        let (k, v) = l.rsplit_once(": ")?;
                        Some((k.to_string(), v.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stat(&self, name: &str) -> u64 {
        let filter = format!("^{}$", name.replace('.', "\\.").replace('|', "\\|"));
        self.stats_matching(&filter).get(name).copied().unwrap_or(0)
    }

    fn wait_for_members(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = (0..self.opts.services).all(|s| {
                self.stat(&format!("cluster.{}.membership_total", cluster_name(s)))
                    == self.members[s].len() as u64
            });
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Envoy did not take the first EDS members within 20 s; see {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first listener serves, with configuration g1.
    fn wait_for_listener(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.probe(1) == [Some(1)] {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "the soak's listener did not serve configuration g1 within 20 s; Envoy log (newest first):\n{}",
            tail.join("\n")
        );
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn write_eds(&mut self, s: usize) {
        self.versions[s] += 1;
        let addrs: Vec<SocketAddr> = self.members[s]
            .iter()
            .map(|&h| self.fleet.addr(h))
            .collect();
        let doc = eds_document_for(&cluster_name(s), self.versions[s], &addrs);
        if let Err(e) = write_atomically(&self.dir.join(format!("eds/svc{s}.json")), &doc) {
            self.report.problems.push(format!("cannot write EDS: {e}"));
        }
        self.cur().eds_updates += 1;
    }

    fn fresh_host(&mut self, s: usize) -> Option<usize> {
        if self.next_fresh >= self.fleet.hosts.len() {
            return None;
        }
        let h = self.next_fresh;
        self.next_fresh += 1;
        self.service_of.insert(h, s);
        Some(h)
    }

    /// One second's churn on one service: `replaced_per_second` hosts
    /// replaced by never used ones, and 4 added or removed (random walk
    /// within the bounds). Hosts under incident are left alone.
    fn churn(&mut self, second: u64) {
        let s = (second as usize) % self.opts.services;
        if self.service_frozen.contains(&s) {
            return;
        }
        let now = epoch_ms();
        self.frozen.retain(|_, until| *until > now);
        let movable = |list: &[usize], frozen: &HashMap<usize, u64>| -> Vec<usize> {
            (0..list.len())
                .filter(|&i| !frozen.contains_key(&list[i]))
                .collect()
        };
        for _ in 0..self.opts.replaced_per_second {
            let candidates = movable(&self.members[s], &self.frozen);
            if candidates.is_empty() {
                break;
            }
            let at = *self.dice.pick(&candidates);
            if let Some(h) = self.fresh_host(s) {
                self.members[s][at] = h;
            }
        }
        let len = self.members[s].len();
        let grow = if len + 4 > self.opts.members_max {
            false
        } else if len < self.opts.members_min + 4 {
            true
        } else {
            self.dice.chance(0.5)
        };
        for _ in 0..4 {
            if grow {
                if let Some(h) = self.fresh_host(s) {
                    self.members[s].push(h);
                }
            } else {
                let candidates = movable(&self.members[s], &self.frozen);
                if candidates.is_empty() {
                    break;
                }
                let at = *self.dice.pick(&candidates);
                self.members[s].swap_remove(at);
            }
        }
        self.write_eds(s);
    }

    fn host_counter(&self, clusters: &str, h: usize) -> u64 {
        let prefix = format!("::{}::", self.fleet.addr(h));
        clusters
            .lines()
            .filter(|l| l.contains(&prefix))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once("::")?;
                (k.ends_with("::rq_total") || k.ends_with("::cx_connect_fail"))
                    .then(|| v.trim().parse::<u64>().ok())
                    .flatten()
            })
            .sum()
    }

    /// Starts an incident when fewer than three run, about every
    /// `incident_every`.
    fn maybe_start_incident(&mut self) {
        let active = self.incidents.iter().filter(|i| i.end_ms.is_none()).count();
        let every = self.opts.incident_every.as_secs().max(1) as f64;
        if active >= 3 || !self.dice.chance(1.0 / every) {
            return;
        }
        let mut kind = *self.dice.pick(&Kind::ALL);
        let s = self.dice.below(self.opts.services);
        let busy_service = self
            .incidents
            .iter()
            .any(|i| i.end_ms.is_none() && i.service == s);
        let service_running = self
            .incidents
            .iter()
            .any(|i| i.end_ms.is_none() && i.kind == Kind::Service);
        if kind == Kind::Service && (busy_service || service_running || self.dice.chance(0.5)) {
            kind = Kind::Hard;
        }
        if self.service_frozen.contains(&s) {
            return;
        }
        let hosts: Vec<usize> = if kind == Kind::Service {
            self.members[s].clone()
        } else {
            let candidates: Vec<usize> = self.members[s]
                .iter()
                .copied()
                .filter(|h| !self.frozen.contains_key(h))
                .collect();
            if candidates.is_empty() {
                return;
            }
            vec![*self.dice.pick(&candidates)]
        };
        let behaviour = kind.behaviour(&mut self.dice);
        // Before the first host changes: a request sent meanwhile may meet the fault.
        let start_ms = epoch_ms();
        for &h in &hosts {
            if let Err(e) = self.fleet.admin.set_behaviour(h, &behaviour) {
                self.report
                    .problems
                    .push(format!("cannot set a behaviour on host {h}: {e}"));
            }
            self.frozen.insert(h, u64::MAX);
        }
        if kind == Kind::Service {
            self.service_frozen.insert(s);
        }
        let length = if kind == Kind::Service {
            20_000
        } else {
            20_000 + self.dice.below(40_001) as u64
        };
        *self.cur().incidents.entry(kind.name()).or_default() += 1;
        println!(
            "soak {:>5.0}s: incident {} on {} ({} for {} s)",
            self.started.elapsed().as_secs_f64(),
            kind.name(),
            if kind == Kind::Service {
                cluster_name(s)
            } else {
                self.fleet.addr(hosts[0]).to_string()
            },
            cluster_name(s),
            length / 1000
        );
        self.incidents.push(Incident {
            kind,
            service: s,
            hosts,
            start_ms,
            end_ms: None,
            detected_ms: None,
            ejected_ms: None,
            counter_at_ejection: None,
            after_ejection: 0,
            errors_before: 0,
            errors_after: 0,
            recovered_ms: None,
        });
        let index = self.incidents.len() - 1;
        self.planned_ends.push((start_ms + length, index));
    }
}

/// Log lines that mean the VM trapped or the filter failed. (A refused
/// configuration makes Envoy log `Wasm VM failed Failed to configure base
/// Wasm plugin` and `Plugin ... failed to load`: not a trap, see
/// [`is_trap`].)
const TRAP_PATTERNS: &[&str] = &[
    "Uncaught",
    "panicked",
    "meshguard: panic",
    "RuntimeError",
    "wasm_fail",
    "VM failed",
];

/// Whether an Envoy log line tells of a trap (or a VM that failed at run
/// time), rather than of a configuration meshguard refused.
pub fn is_trap(line: &str) -> bool {
    TRAP_PATTERNS.iter().any(|p| line.contains(p))
        && !line.contains("Failed to configure base Wasm plugin")
}

/// A configuration push waiting to be seen applied or rejected.
#[derive(Debug, Clone)]
struct PendingPush {
    generation: u32,
    valid: bool,
    rollback: bool,
    /// The generation responses must carry once it is handled.
    expect: u32,
    before: (u64, u64),
    deadline: Instant,
    lds_done: bool,
}

/// How a failed request is accounted for.
enum Explanation {
    Before,
    After,
    Service,
    Unexplained(String),
}

impl Soak {
    fn minute_now(&self) -> usize {
        (self.started.elapsed().as_secs() / 60) as usize
    }

    fn cur(&mut self) -> &mut Minute {
        let m = self.minute_now();
        let row = minute_slot(&mut self.report.minutes, m);
        row.index = m;
        row
    }

    fn at_minute(&mut self, at_ms: u64) -> &mut Minute {
        let start = epoch_ms().saturating_sub(self.elapsed_ms());
        let m = (at_ms.saturating_sub(start) / 60_000) as usize;
        let row = minute_slot(&mut self.report.minutes, m);
        row.index = m;
        row
    }

    fn clusters_text(&self) -> String {
        self.admin_get("/clusters").unwrap_or_default()
    }

    /// Requests ejected incident hosts received since the last look.
    fn update_ejected_counters(&mut self, clusters: &str) {
        let mut added = 0;
        for i in 0..self.incidents.len() {
            let inc = &self.incidents[i];
            if inc.ejected_ms.is_none() || inc.end_ms.is_some() && inc.counter_at_ejection.is_none()
            {
                continue;
            }
            if inc.end_ms.is_some() {
                continue;
            }
            let h = inc.hosts[0];
            let now = self.host_counter(clusters, h);
            let inc = &mut self.incidents[i];
            match inc.counter_at_ejection {
                None => inc.counter_at_ejection = Some(now),
                Some(last) => {
                    let delta = now.saturating_sub(last);
                    inc.after_ejection += delta;
                    inc.counter_at_ejection = Some(now);
                    added += delta;
                }
            }
        }
        self.cur().to_ejected += added;
    }

    fn end_incidents(&mut self) {
        let now = epoch_ms();
        let due: Vec<usize> = self
            .planned_ends
            .iter()
            .filter(|(end, _)| *end <= now)
            .map(|(_, i)| *i)
            .collect();
        if due.is_empty() {
            return;
        }
        self.planned_ends.retain(|(end, _)| *end > now);
        let clusters = self.clusters_text();
        self.update_ejected_counters(&clusters);
        for i in due {
            let hosts = self.incidents[i].hosts.clone();
            for &h in &hosts {
                if let Err(e) = self.fleet.admin.set_behaviour(h, &Behaviour::healthy()) {
                    self.report
                        .problems
                        .push(format!("cannot heal host {h}: {e}"));
                }
                self.frozen.insert(h, now + 5_000);
            }
            let inc = &mut self.incidents[i];
            inc.end_ms = Some(now);
            if inc.kind == Kind::Service {
                self.service_frozen.remove(&inc.service);
            }
            println!(
                "soak {:>5.0}s: incident {} on {} over; detected after {}, ejected after {}",
                self.started.elapsed().as_secs_f64(),
                inc.kind.name(),
                cluster_name(inc.service),
                inc.detected_ms.map_or("-".to_string(), |d| format!(
                    "{:.1}s",
                    d.saturating_sub(inc.start_ms) as f64 / 1000.0
                )),
                inc.ejected_ms.map_or("-".to_string(), |d| format!(
                    "{:.1}s",
                    d.saturating_sub(inc.start_ms) as f64 / 1000.0
                )),
            );
        }
    }

    /// Whole-service incidents over whose breakers are all closed again.
    fn check_recoveries(&mut self) {
        let now = epoch_ms();
        for i in 0..self.incidents.len() {
            let inc = &self.incidents[i];
            if inc.kind != Kind::Service || inc.recovered_ms.is_some() {
                continue;
            }
            let Some(end) = inc.end_ms else { continue };
            let prefix = cluster_name(inc.service);
            let open = self
                .breaker_open
                .iter()
                .any(|(unit, open)| *open && unit.starts_with(&prefix));
            let limit = end + SERVICE_RECOVERY.as_millis() as u64;
            if (!open && now >= end + HOST_GRACE.as_millis() as u64) || now >= limit {
                self.incidents[i].recovered_ms = Some(now.min(limit));
            }
        }
    }

    fn read_envoy_log(&mut self) {
        let lines = self.envoy_log.lines();
        let mut ejected_now = false;
        for line in lines {
            if is_trap(&line) {
                let mut text = line.clone();
                text.truncate(400);
                self.report.traps.push(text);
                self.cur().traps += 1;
            }
            if line.contains("invalid plugin configuration") {
                self.cur().meshguard_rejected += 1;
            }
            let at = envoy_log_time(&line).unwrap_or_else(epoch_ms);
            if let Some(t) = HostTransition::parse(&line) {
                let Some(&h) = self.by_address.get(&t.address) else {
                    continue;
                };
                let to = t.to.to_string();
                for inc in self.incidents.iter_mut() {
                    if !inc.hosts.contains(&h)
                        || at < inc.start_ms
                        || inc.end_ms.is_some_and(|e| at > e)
                    {
                        continue;
                    }
                    if to != "Healthy" && inc.detected_ms.is_none() {
                        inc.detected_ms = Some(at);
                    }
                    if to == "Unhealthy"
                        && t.unit == cluster_name(inc.service)
                        && inc.ejected_ms.is_none()
                        && inc.kind != Kind::Service
                    {
                        inc.ejected_ms = Some(at);
                        ejected_now = true;
                    }
                }
            } else if let Some(b) = BreakerChange::parse(&line) {
                self.breaker_open
                    .insert(b.unit.clone(), b.to.to_string() != "Closed");
            }
        }
        if ejected_now {
            let clusters = self.clusters_text();
            self.update_ejected_counters(&clusters);
        }
    }

    fn read_access_log(&mut self) {
        for line in self.access_tail.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 {
                continue;
            }
            self.access.insert(
                fields[0].to_string(),
                Access {
                    upstream: fields[4].to_string(),
                    flags: fields[3].to_string(),
                    cluster: fields[5].to_string(),
                    details: fields[8..].join(" "),
                },
            );
        }
        if self.access.len() > 200_000 {
            self.access.clear();
        }
    }

    fn explain(&mut self, f: &Failure, access: Option<&Access>) -> Explanation {
        let host = access.and_then(|a| self.by_address.get(&a.upstream).copied());
        let at = f.at_ms;
        if let Some(h) = host {
            for inc in self.incidents.iter_mut() {
                if inc.kind == Kind::Service
                    || !inc.hosts.contains(&h)
                    || !inc.in_window(at, f.done_ms)
                {
                    continue;
                }
                return if inc.detected_ms.is_none_or(|d| at < d) {
                    inc.errors_before += 1;
                    Explanation::Before
                } else {
                    inc.errors_after += 1;
                    Explanation::After
                };
            }
        }
        let local_reply = access.is_some_and(|a| a.details.contains("meshguard_circuit_open"));
        for inc in self.incidents.iter_mut() {
            if inc.kind != Kind::Service || inc.service != f.service || f.done_ms < inc.start_ms {
                continue;
            }
            let hosts_until = inc
                .end_ms
                .map_or(u64::MAX, |e| e + HOST_GRACE.as_millis() as u64);
            let replies_until = match (inc.end_ms, inc.recovered_ms) {
                (None, _) | (Some(_), None) => u64::MAX,
                (Some(_), Some(r)) => r,
            };
            if at <= hosts_until || (local_reply && at <= replies_until) {
                if inc.detected_ms.is_none_or(|d| at < d) {
                    inc.errors_before += 1;
                } else {
                    inc.errors_after += 1;
                }
                return Explanation::Service;
            }
        }
        let offset = at.saturating_sub(epoch_ms().saturating_sub(self.elapsed_ms()));
        Explanation::Unexplained(format!(
            "{:.1}s {} {} -> {}{}",
            offset as f64 / 1000.0,
            f.path,
            f.id,
            f.status,
            match (access, &f.error) {
                (Some(a), _) => format!(
                    " (upstream {} flags {} cluster {} details {})",
                    a.upstream, a.flags, a.cluster, a.details
                ),
                (None, Some(e)) => format!(" ({e})"),
                (None, None) => " (no access-log line)".to_string(),
            }
        ))
    }

    /// Accounts for the failures whose access-log line arrived (or that
    /// waited 5 s for it; all of them when `force`).
    fn classify(&mut self, force: bool) {
        let now = epoch_ms();
        let pending = std::mem::take(&mut self.pending_failures);
        for f in pending {
            let access = self.access.remove(&f.id);
            if access.is_none() && !force && now < f.at_ms + 5_000 {
                self.pending_failures.push(f);
                continue;
            }
            let explanation = self.explain(&f, access.as_ref());
            let row = self.at_minute(f.at_ms);
            match explanation {
                Explanation::Before => row.explained_before += 1,
                Explanation::After => row.explained_after += 1,
                Explanation::Service => row.explained_service += 1,
                Explanation::Unexplained(text) => {
                    row.unexplained += 1;
                    println!("soak: unexplained error: {text}");
                    self.report.unexplained.push(text);
                }
            }
        }
    }

    /// Requests `n` probes and returns the generations they carried.
    /// Probes go to services without a whole-service incident; only
    /// answers with status 200 count (an incident host's or a breaker's
    /// answer need not carry the header), so the list may be shorter.
    fn probe(&self, n: usize) -> Vec<Option<u32>> {
        let services: Vec<usize> = (0..self.opts.services)
            .filter(|s| !self.service_frozen.contains(s))
            .collect();
        (0..n)
            .filter_map(|i| {
                let s = services
                    .get(i % services.len().max(1))
                    .copied()
                    .unwrap_or(0);
                let r = http::request(
                    self.listen,
                    "GET",
                    &format!("/svc{s}/api/probe"),
                    &[(ID_HEADER, "soak-probe")],
                    &[],
                    Duration::from_secs(5),
                )
                .ok()?;
                (r.status == 200).then(|| generation_of(&r))
            })
            .collect()
    }

    /// Pushes the next configuration: every third invalid, every fifth a
    /// rollback to an earlier valid one, the others new.
    fn push_config(&mut self) -> PendingPush {
        let generation = self.configs.len() as u32 + 1;
        let invalid = generation.is_multiple_of(3);
        let older: Vec<PushedConfig> = self
            .configs
            .iter()
            .filter(|c| c.valid && c.generation != self.in_force)
            .cloned()
            .collect();
        let rollback = !invalid && generation.is_multiple_of(5) && !older.is_empty();
        let (text, expect) = if invalid {
            (invalid_config(generation, &mut self.dice), self.in_force)
        } else if rollback {
            let old = self.dice.pick(&older).clone();
            (old.text, old.generation)
        } else {
            (valid_config(generation, &mut self.dice), generation)
        };
        let before = (
            self.stat("listener_manager.lds.update_success"),
            self.stat("listener_manager.lds.update_rejected"),
        );
        let file = listener(
            self.listen.port(),
            &self.access_log,
            &self.wasm,
            self.opts.services,
            &text,
        );
        if let Err(e) = write_atomically(&self.dir.join("lds/listener.yaml"), &file) {
            self.report.problems.push(format!("cannot write LDS: {e}"));
        }
        println!(
            "soak {:>5.0}s: configuration g{generation} pushed ({}){}",
            self.started.elapsed().as_secs_f64(),
            if invalid {
                "invalid"
            } else if rollback {
                "rollback"
            } else {
                "valid"
            },
            if rollback {
                format!(", the text of g{expect}")
            } else {
                String::new()
            }
        );
        self.configs.push(PushedConfig {
            generation,
            text,
            valid: !invalid && !rollback,
        });
        if invalid {
            self.cur().configs_invalid += 1;
        } else {
            self.cur().configs_valid += 1;
        }
        PendingPush {
            generation,
            valid: !invalid,
            rollback,
            expect,
            before,
            deadline: Instant::now() + Duration::from_secs(20),
            lds_done: false,
        }
    }

    /// Whether the push was handled: Envoy accepted (or rejected) it and
    /// responses carry the generation that must be in force. None while
    /// waiting.
    fn check_push(&mut self, p: &mut PendingPush) -> Option<()> {
        if !p.lds_done {
            let success = self.stat("listener_manager.lds.update_success");
            let rejected = self.stat("listener_manager.lds.update_rejected");
            let (accepted, refused) = (success > p.before.0, rejected > p.before.1);
            if accepted || refused {
                p.lds_done = true;
                if accepted != p.valid {
                    self.config_problem(format!(
                        "g{}: {} configuration {} by Envoy (update_success {} -> {success}, update_rejected {} -> {rejected})",
                        p.generation,
                        if p.valid { "a valid" } else { "an invalid" },
                        if accepted { "accepted" } else { "rejected" },
                        p.before.0,
                        p.before.1
                    ));
                    return Some(());
                }
            }
        }
        if p.lds_done {
            let seen = self.probe(12);
            let good = seen.iter().filter(|g| **g == Some(p.expect)).count();
            if good == seen.len() && good >= 8 {
                self.in_force = p.expect;
                let (success, rejected) = (
                    self.stat("listener_manager.lds.update_success"),
                    self.stat("listener_manager.lds.update_rejected"),
                );
                let row = self.cur();
                row.lds_accepted += success.saturating_sub(p.before.0);
                row.lds_rejected += rejected.saturating_sub(p.before.1);
                return Some(());
            }
            if !p.valid && good < seen.len() {
                self.config_problem(format!(
                    "g{} (invalid) was rejected, but responses carried {:?} instead of the old g{}",
                    p.generation, seen, p.expect
                ));
                return Some(());
            }
        }
        if Instant::now() > p.deadline {
            let seen = self.probe(12);
            self.config_problem(format!(
                "g{}{}: not handled within 20 s (Envoy {}; responses carry {:?}, want g{})",
                p.generation,
                if p.rollback { " (rollback)" } else { "" },
                if p.lds_done {
                    "took the update"
                } else {
                    "counted no update"
                },
                seen,
                p.expect
            ));
            return Some(());
        }
        None
    }

    fn config_problem(&mut self, text: String) {
        println!("soak: {text}");
        self.report.config_problems.push(text);
    }

    fn rss_bytes(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.envoy.id()))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .unwrap_or(0)
    }

    /// Polls the status endpoint until both workers' VMs answered (or 12
    /// tries), and records every VM's report, the shared data and Envoy's RSS.
    fn sample_status(&mut self) {
        let t = self.started.elapsed().as_secs_f64();
        let mut vms: BTreeMap<u64, VmSample> = BTreeMap::new();
        let mut shared = None;
        let mut watched = 0;
        for _ in 0..12 {
            let Ok(r) = http::get(self.listen, "/meshguard/status", Duration::from_secs(5)) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
                continue;
            };
            let vm = &doc["vm"];
            let n = |k: &str| vm[k].as_u64().unwrap_or(0);
            let sample = VmSample {
                id: n("id"),
                memory_bytes: n("memoryBytes"),
                instances: n("instances"),
                services: n("services"),
                hosts: n("hosts"),
                addresses: n("addresses"),
                metric_names: n("metricNames"),
            };
            shared = Some((
                doc["sharedData"]["keys"].as_u64().unwrap_or(0),
                doc["sharedData"]["bytes"].as_u64().unwrap_or(0),
            ));
            watched = doc["services"].as_array().map_or(0, |s| {
                s.iter().filter_map(|x| x["watchedHosts"].as_u64()).sum()
            });
            vms.insert(sample.id, sample);
            self.last_status = Some(doc);
            if vms.len() >= 2 {
                break;
            }
        }
        let rss = self.rss_bytes();
        let samples = &mut self.report.samples;
        for v in vms.values() {
            for (series, value) in [
                ("wasm memory (bytes, per VM)", v.memory_bytes),
                ("services table (per VM)", v.services),
                ("hosts table (per VM)", v.hosts),
                ("address cache (per VM)", v.addresses),
                ("metric names (per VM)", v.metric_names),
                ("plugin instances (per VM)", v.instances),
            ] {
                samples.push((t, series.to_string(), v.id, value as f64));
            }
        }
        if let Some((keys, bytes)) = shared {
            samples.push((t, "shared-data keys".to_string(), 0, keys as f64));
            samples.push((t, "shared-data bytes".to_string(), 0, bytes as f64));
        }
        samples.push((t, "Envoy RSS (bytes)".to_string(), 0, rss as f64));
        let members = self.members.iter().map(Vec::len).sum();
        let distinct = self.next_fresh;
        let row = self.cur();
        for (id, v) in vms {
            row.vms.insert(id, v);
        }
        if let Some((keys, bytes)) = shared {
            row.shared_keys = keys;
            row.shared_bytes = bytes;
        }
        row.watched_hosts = watched;
        row.rss_bytes = rss;
        row.members = members;
        row.distinct_addresses = distinct;
    }

    /// Envoy must have applied every service's latest EDS membership.
    fn check_membership(&mut self) {
        for s in 0..self.opts.services {
            let name = format!("cluster.{}.membership_total", cluster_name(s));
            // The churn waits meanwhile: Envoy gets 5 s for the last file.
            let want = self.members[s].len() as u64;
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut have = self.stat(&name);
            while have != want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(250));
                have = self.stat(&name);
            }
            if have != want {
                self.report.problems.push(format!(
                    "{}: Envoy lists {have} members 5 s after the last EDS file, which has {want}",
                    cluster_name(s)
                ));
            }
        }
        let rejected: u64 = (0..self.opts.services)
            .map(|s| self.stat(&format!("cluster.{}.update_rejected", cluster_name(s))))
            .sum();
        if rejected > 0 {
            self.report
                .problems
                .push(format!("Envoy rejected {rejected} EDS updates"));
        }
    }

    fn print_minute(&self, m: usize, log: &ClientLog) {
        let Some(row) = self.report.minutes.get(m) else {
            return;
        };
        let (requests, failed) = log.counts.get(m).copied().unwrap_or_default();
        let mem: Vec<String> = row.vms.values().map(|v| mib(v.memory_bytes)).collect();
        println!(
            "soak minute {:>2}: {requests} requests, {failed} not 200 (explained {}/{}/{}, unexplained {}), {} to ejected hosts, {} EDS updates, {} addresses so far, {} members, configs {}+{}, wasm MiB {:?}, shared {} keys {} B, RSS {} MiB, traps {}",
            m + 1,
            row.explained_before,
            row.explained_after,
            row.explained_service,
            row.unexplained,
            row.to_ejected,
            row.eds_updates,
            row.distinct_addresses,
            row.members,
            row.configs_valid,
            row.configs_invalid,
            mem,
            row.shared_keys,
            row.shared_bytes,
            mib(row.rss_bytes),
            row.traps
        );
    }
}

/// The existing file environment variable `var` names; panics with what
/// to do otherwise (a missing prerequisite fails, it never skips).
fn env_file(var: &str, what: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_default();
    if !path.is_file() {
        panic!(
            "{var}={} must name {what}: `make build`, then export MESHGUARD_WASM=$PWD/target/wasm32-wasip1/release/meshguard.opt.wasm MESHGUARD_ENVOY=$(scripts/ensure-envoy.sh)",
            path.display()
        );
    }
    path
}

/// Runs the soak and returns its report (which [`Report::verdict`]
/// judges). Needs MESHGUARD_WASM and MESHGUARD_ENVOY.
pub fn run(paths: &TestPaths, opts: SoakOptions) -> Report {
    let wasm = env_file("MESHGUARD_WASM", "the meshguard module");
    let envoy = env_file("MESHGUARD_ENVOY", "the Envoy 1.40 binary");
    let mut soak = Soak::start(paths, opts.clone(), wasm, envoy);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(ClientLog::default()));
    soak.started = Instant::now();
    let clients: Vec<_> = (0..opts.clients)
        .map(|i| {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            let (listener, started) = (soak.listen, soak.started);
            let rate = f64::from(opts.rate) / opts.clients as f64;
            let (services, seed) = (opts.services, opts.seed ^ ((i as u64 + 1) * 0x1234_5678));
            std::thread::spawn(move || {
                client(listener, rate, services, i, started, seed, stop, log)
            })
        })
        .collect();
    let config_every = opts.config_every.as_secs().max(1);
    let total = opts.duration.as_secs();
    let mut push: Option<PendingPush> = None;
    let mut printed = 0;
    for second in 0..total {
        let due = soak.started + Duration::from_secs(second);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if let Some(status) = soak.envoy.exited() {
            soak.report
                .problems
                .push(format!("Envoy exited during the run ({status})"));
            break;
        }
        soak.churn(second);
        soak.end_incidents();
        soak.maybe_start_incident();
        soak.read_envoy_log();
        soak.read_access_log();
        {
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            let failures = std::mem::take(&mut l.failures);
            soak.pending_failures.extend(failures);
        }
        soak.classify(false);
        soak.check_recoveries();
        if second % 10 == 5 {
            soak.sample_status();
            let clusters = soak.clusters_text();
            soak.update_ejected_counters(&clusters);
        }
        if second % config_every == config_every / 2 && push.is_none() {
            push = Some(soak.push_config());
        }
        if let Some(mut p) = push.take() {
            if soak.check_push(&mut p).is_none() {
                push = Some(p);
            }
        }
        if second % 60 == 50 {
            soak.check_membership();
        }
        // A minute's row, once its failures had time to be classified.
        if second >= (printed as u64 + 1) * 60 + 8 {
            let l = log.lock().unwrap_or_else(|e| e.into_inner());
            soak.print_minute(printed, &l);
            printed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    // The last incidents end; their lines and the last failures are read.
    for (end, _) in soak.planned_ends.iter_mut() {
        *end = 0;
    }
    soak.end_incidents();
    if let Some(mut p) = push.take() {
        while soak.check_push(&mut p).is_none() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    soak.read_envoy_log();
    soak.read_access_log();
    {
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        let failures = std::mem::take(&mut l.failures);
        soak.pending_failures.extend(failures);
    }
    soak.classify(true);
    soak.check_membership();
    // Envoy's own wasm stats (not meshguard's `wasmcustom.` metrics).
    let wasm_stats: BTreeMap<String, u64> = soak
        .stats_matching("wasm")
        .into_iter()
        .filter(|(name, _)| !name.starts_with("wasmcustom."))
        .collect();
    for (name, value) in &wasm_stats {
        let lower = name.to_ascii_lowercase();
        if *value > 0 && (lower.contains("fail") || lower.contains("crash")) {
            soak.report
                .traps
                .push(format!("Envoy stat {name} = {value}"));
        }
    }
    let l = log.lock().unwrap_or_else(|e| e.into_inner());
    // Responses must only ever carry the generation of a valid configuration.
    let valid: BTreeSet<u32> = soak
        .configs
        .iter()
        .filter(|c| c.valid)
        .map(|c| c.generation)
        .collect();
    for (m, gens) in l.generations.iter().enumerate() {
        for (g, n) in gens {
            if !valid.contains(g) {
                soak.config_problem(format!(
                    "minute {}: {n} responses carried g{g}, which is not a valid configuration",
                    m + 1
                ));
            }
        }
    }
    while printed < soak.report.minutes.len() {
        soak.print_minute(printed, &l);
        printed += 1;
    }
    for (m, (requests, failed)) in l.counts.iter().enumerate() {
        let row = minute_slot(&mut soak.report.minutes, m);
        row.index = m;
        row.requests = *requests;
        row.failed = *failed;
    }
    drop(l);
    // The samples of each minute carry on into minutes without any.
    let mut last = Minute::default();
    for row in soak.report.minutes.iter_mut() {
        if row.vms.is_empty() {
            row.vms = last.vms.clone();
            row.shared_keys = last.shared_keys;
            row.shared_bytes = last.shared_bytes;
            row.rss_bytes = last.rss_bytes;
        }
        last = row.clone();
    }
    soak.report.incidents = soak.incidents.clone();
    soak.report.distinct_addresses = soak.next_fresh;
    soak.report.wasm_stats = wasm_stats;
    let report = soak.report.clone();
    let _ = fs::write(soak.dir.join("report.md"), report.render());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_fits_a_line() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0)).collect();
        assert_eq!(trend(&flat), Some((0.0, 5.0)));
        let rising: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 10.0, 2.0 * i as f64)).collect();
        let (slope, mean) = trend(&rising).expect("fit");
        assert!((slope - 0.2).abs() < 1e-9 && (mean - 9.0).abs() < 1e-9);
        assert_eq!(trend(&flat[..2]), None);
    }

    #[test]
    fn refused_configurations_are_not_traps() {
        assert!(!is_trap("[2026-12-01 23:01:06.816][744][error][wasm] [source/extensions/common/wasm/wasm.cc:104] Wasm VM failed Failed to configure base Wasm plugin"));
        assert!(is_trap("[..][833][critical][wasm] [source/extensions/common/wasm/context.cc:1250] Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"));
        assert!(is_trap(
            "wasm log meshguard: meshguard: panic: index out of bounds"
        ));
    }

    #[test]
    fn envoy_log_times_are_epoch_milliseconds() {
        assert_eq!(
            envoy_log_time("[2026-12-01 19:56:08.203][16657][error][wasm] x"),
            Some(1_796_154_968_203)
        );
        assert_eq!(envoy_log_time("no stamp"), None);
    }

    #[test]
    fn configurations_parse_as_meant() {
        let mut dice = Dice::new(1);
        for g in 0..50 {
            let text = valid_config(g, &mut dice);
            meshguard::config::Config::parse(text.as_bytes())
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            let text = invalid_config(g, &mut dice);
            assert!(
                meshguard::config::Config::parse(text.as_bytes()).is_err(),
                "{text} must be refused"
            );
        }
    }

    #[test]
    fn the_listener_and_bootstrap_name_every_service() {
        let dir = Path::new("/w");
        let l = listener(
            10000,
            &dir.join("a.log"),
            &dir.join("m.wasm"),
            3,
            r#"{"a":'b'}"#,
        );
        assert!(l.contains(r#"value: '{"a":''b''}'"#), "{l}");
        assert_eq!(l.matches("virtual-service/svc").count(), 6, "{l}");
        let b = bootstrap(dir, 9901, 3);
        assert_eq!(b.matches("type: EDS").count(), 3, "{b}");
        assert!(b.contains("path: /w/eds/svc2.json"), "{b}");
    }
}
