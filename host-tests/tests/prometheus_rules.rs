//! The Grafana dashboard (istio/grafana/meshguard-dashboard.json) and the
//! alert rules (istio/prometheus/meshguard-alerts.yaml) evaluated by a real
//! Prometheus engine (promtool, installed by scripts/ensure-promtool.sh
//! when not on PATH) over series captured from a real Envoy running
//! meshguard during a real incident.
//!
//! 1. Envoy with meshguard before five mg-upstreams (process mode, listener
//!    served from a watched file). Every tick (0.5 s) 20 requests, then a
//!    scrape of `/stats/prometheus`. The incident: u3 answers 503 for a
//!    moment (ejected, then warming up, then healthy), u2 answers 503 for
//!    good (ejected again after each warm-up), a configuration with an
//!    unknown field is pushed (rejected), every host fails (breaker open,
//!    ejections refused by maxEjectionPercent), every host recovers
//!    (breaker half-open, then closed).
//! 2. The scrapes become promtool input series, one tick = 15 s (the
//!    scrape interval of Istio's sample Prometheus), with the labels that
//!    Prometheus' `kubernetes-pods` job of Istio's samples/addons adds
//!    (namespace, pod, service_istio_io_canonical_name, ...), for three
//!    client pods: two of workload `frontend` (the second one sees the same
//!    incident three scrapes later, as a second client of the same hosts
//!    would) and one of workload `batch` (twenty scrapes later).
//! 3. Each dashboard panel's query, with the template variables set to
//!    namespace `shop`, workload `frontend`, every pod and service, must
//!    give what the captured data says (the expected values and state names
//!    are computed here from the scrapes, decoded with the filter's own
//!    encoding); each alert must fire, and not fire, when the data says.
//! 4. The same checks with the aggregations of the dashboard before issue
//!    15 (sum over client pods, max over raw state codes, increase() of a
//!    counter born at its first event) must fail: the input can tell them
//!    apart.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Run
//! alone with `cargo test -p host-tests --test prometheus_rules -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use host_tests::containers::{Mode, Testbed, TestbedSpec};
use host_tests::traffic::burst;
use host_tests::Behaviour;
use host_tests::Harness;
use meshguard::metrics::CATALOGUE;
use serde_json::{json, Value};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const DASHBOARD: &str = include_str!("../../istio/grafana/meshguard-dashboard.json");
const ALERTS: &str = include_str!("../../istio/prometheus/meshguard-alerts.yaml");
const PROMETHEUS_RULE: &str = include_str!("../../istio/prometheus/meshguard-prometheusrule.yaml");

/// Short ejections and breaker periods so the incident fits in seconds.
/// maxEjectionPercent 25 of five hosts: one may be out, a second is
/// refused. The breaker opens only when nearly every call of its window
/// fails (so hosts reach 5 consecutive failures, and refusals, first) and
/// needs 40 successful probes to close (half-open for a few ticks).
const CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"3s","maxEjectionPercent":25},"circuitBreaker":{"windowSize":40,"minRequests":40,"failurePercent":90,"openDuration":"2s","maxOpenDuration":"10s","halfOpenRequests":1,"closeAfterSuccesses":40}}"#;
/// A field meshguard does not know: refused.
const BAD_CONFIG: &str = r#"{"detection":{"windowSze":20},"ejection":{"baseEjectionTime":"3s"}}"#;

const UPSTREAMS: usize = 5;
const TICK: Duration = Duration::from_millis(500);
const REQUESTS_PER_TICK: u64 = 20;
/// Prometheus time per tick (the sample Prometheus' scrape_interval).
const STEP_S: usize = 15;
/// Grafana's $__rate_interval for a 15 s scrape interval: 4 x 15 s.
const RATE_INTERVAL: &str = "1m";
const TICKS: usize = 60;
// The incident, by tick: u3 fails briefly (ejected, then warming up and
// healthy again), u2 fails for good (ejected over and over), a bad
// configuration, then every host fails and recovers.
const U3_FAILS: usize = 4;
const U3_RECOVERS: usize = 8;
const U2_FAILS: usize = 18;
const BAD_PUSH: usize = 24;
const ALL_FAIL: usize = 42;
const ALL_RECOVER: usize = 48;

/// How many scrapes later the second frontend pod and the batch pod see
/// what the first one saw.
const LAG_B: usize = 3;
const LAG_C: usize = 20;

const U2: usize = 1;
const U3: usize = 2;

type Labels = BTreeMap<String, String>;
type Scrape = BTreeMap<(String, Labels), f64>;

// ---------------------------------------------------------------- capture

/// `name{k="v",...} value` lines of Envoy's Prometheus output, ours only.
fn parse_scrape(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text.lines().filter(|l| l.starts_with("meshguard_")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Labels::new()),
        };
        out.insert((name.to_string(), labels), value);
    }
    out
}

fn parse_labels(set: &str) -> Labels {
    let mut labels = Labels::new();
    let mut rest = set;
    while let Some((key, tail)) = rest.split_once("=\"") {
        let end = tail.find('"').unwrap_or(tail.len());
        labels.insert(
            key.trim_start_matches(',').to_string(),
            tail[..end].to_string(),
        );
        rest = tail.get(end + 1..).unwrap_or("");
    }
    labels
}

struct Capture {
    scrapes: Vec<Scrape>,
    hosts: Vec<String>,
    dir: PathBuf,
}

/// Drives the incident through a real Envoy and scrapes it every tick.
fn capture() -> Capture {
    let mut tb = Testbed::start(
        TestbedSpec::new("prometheus_rules", Mode::Process)
            .upstreams(UPSTREAMS)
            .dynamic_listener(true)
            .plugin_config(CONFIG),
        host_tests::test_paths!(),
    );
    let hosts: Vec<String> = tb.upstreams.iter().map(|u| u.data.to_string()).collect();
    let start = Instant::now();
    let mut scrapes = Vec::new();
    for tick in 0..TICKS {
        match tick {
            U3_FAILS => tb.set_behaviour(U3, &Behaviour::status(503)),
            U3_RECOVERS => tb.set_behaviour(U3, &Behaviour::healthy()),
            U2_FAILS => tb.set_behaviour(U2, &Behaviour::status(503)),
            BAD_PUSH => tb.update_plugin_config(BAD_CONFIG),
            ALL_FAIL => (0..UPSTREAMS).for_each(|i| tb.set_behaviour(i, &Behaviour::status(503))),
            ALL_RECOVER => (0..UPSTREAMS).for_each(|i| tb.set_behaviour(i, &Behaviour::healthy())),
            _ => {}
        }
        burst(tb.listener, REQUESTS_PER_TICK);
        let text = tb
            .admin_get("/stats/prometheus")
            .unwrap_or_else(|e| tb.fail(&format!("scrape {tick}: {e}")));
        scrapes.push(parse_scrape(&text));
        let due = start + TICK * (tick as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let dump: Vec<String> = scrapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let lines: Vec<String> = s
                .iter()
                .map(|((n, l), v)| format!("{n}{l:?} {v}"))
                .collect();
            format!("--- tick {i}\n{}", lines.join("\n"))
        })
        .collect();
    let dir = tb.dir.clone();
    std::fs::write(dir.join("scrapes.txt"), dump.join("\n")).expect("write scrapes");
    Capture {
        scrapes,
        hosts,
        dir,
    }
}

// ------------------------------------------------------------ client pods

/// A client pod: the labels Prometheus' kubernetes-pods job gives its
/// sidecar's series, and how many scrapes after pod A it saw the incident.
struct Pod {
    name: &'static str,
    workload: &'static str,
    lag: usize,
    labels: Labels,
}

fn pods() -> Vec<Pod> {
    let pod = |name: &'static str, workload: &'static str, ip: &str, node: &str, lag: usize| {
        let hash = name.split('-').nth(1).unwrap_or_default();
        let labels: Labels = [
            ("job", "kubernetes-pods"),
            ("instance", &format!("{ip}:15020")),
            ("namespace", "shop"),
            ("pod", name),
            ("node", node),
            ("app", workload),
            ("version", "v1"),
            ("pod_template_hash", hash),
            ("security_istio_io_tlsMode", "istio"),
            ("service_istio_io_canonical_name", workload),
            ("service_istio_io_canonical_revision", "v1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Pod {
            name,
            workload,
            lag,
            labels,
        }
    };
    vec![
        pod(
            "frontend-6d8f9c7b5-k2x4q",
            "frontend",
            "10.244.1.17",
            "node-a",
            0,
        ),
        pod(
            "frontend-6d8f9c7b5-p7m9z",
            "frontend",
            "10.244.2.23",
            "node-b",
            LAG_B,
        ),
        pod(
            "batch-5f7c6d9b8-w3n8r",
            "batch",
            "10.244.1.31",
            "node-a",
            LAG_C,
        ),
    ]
}

impl Pod {
    /// This pod's scrape at `tick` (None before it saw anything).
    fn at<'a>(&self, c: &'a Capture, tick: usize) -> Option<&'a Scrape> {
        tick.checked_sub(self.lag).map(|t| &c.scrapes[t])
    }

    fn value(&self, c: &Capture, tick: usize, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.at(c, tick)?
            .iter()
            .find(|((n, l), _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
    }

    fn frontend(&self) -> bool {
        self.workload == "frontend"
    }
}

fn label_set(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", parts.join(","))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// promtool input series: every series of every pod, `_` where absent.
fn input_series(c: &Capture, pods: &[Pod]) -> Vec<Value> {
    let names: BTreeSet<&(String, Labels)> = c.scrapes.iter().flat_map(|s| s.keys()).collect();
    let mut out = Vec::new();
    for pod in pods {
        for key in &names {
            let values: Vec<String> = (0..TICKS)
                .map(|t| match pod.at(c, t).and_then(|s| s.get(*key)) {
                    Some(v) => format!("{v}"),
                    None => "_".to_string(),
                })
                .collect();
            if values.iter().all(|v| v == "_") {
                continue;
            }
            let mut all = key.1.clone();
            all.extend(pod.labels.clone());
            out.push(json!({
                "series": format!("{}{}", key.0, label_set(&all)),
                "values": values.join(" "),
            }));
        }
    }
    out
}

// ------------------------------------------------------- states, severity

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostState {
    Healthy,
    Degraded,
    Unhealthy,
    WarmingUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

const HOST_STATES: [HostState; 4] = [
    HostState::Healthy,
    HostState::Degraded,
    HostState::Unhealthy,
    HostState::WarmingUp,
];
const BREAKER_STATES: [BreakerState; 3] = [
    BreakerState::Closed,
    BreakerState::Open,
    BreakerState::HalfOpen,
];

/// A state gauge's codes as the filter's metric catalogue documents them
/// (`"...: 0 healthy, 1 degraded, ..."`, filter/src/metrics.rs).
fn documented_codes(metric: &str) -> Vec<(f64, String)> {
    let meaning = CATALOGUE
        .iter()
        .find(|(name, ..)| *name == metric)
        .map(|(.., meaning)| *meaning)
        .unwrap_or_else(|| panic!("{metric} is not in the catalogue"));
    let (_, list) = meaning
        .split_once(": ")
        .unwrap_or_else(|| panic!("{metric}: no codes in {meaning:?}"));
    list.split(", ")
        .map(|pair| {
            let (code, name) = pair
                .split_once(' ')
                .unwrap_or_else(|| panic!("{metric}: {pair:?} is not `<code> <name>`"));
            (code.parse().expect("a numeric code"), name.to_string())
        })
        .collect()
}

fn documented_code(metric: &str, name: &str) -> f64 {
    let codes = documented_codes(metric);
    codes
        .iter()
        .find(|(_, n)| n == name)
        .map(|(c, _)| *c)
        .unwrap_or_else(|| panic!("{metric}: no code for {name:?} in {codes:?}"))
}

fn state_value(s: HostState) -> f64 {
    documented_code("host_state", host_name(s))
}

fn breaker_value(s: BreakerState) -> f64 {
    documented_code("breaker_state", breaker_name(s))
}

/// meshguard's host state codes, decoded.
fn host_state(code: f64) -> HostState {
    HOST_STATES
        .into_iter()
        .find(|s| state_value(*s) == code)
        .unwrap_or_else(|| panic!("host_state {code} is no state"))
}

fn breaker_state(code: f64) -> BreakerState {
    BREAKER_STATES
        .into_iter()
        .find(|s| breaker_value(*s) == code)
        .unwrap_or_else(|| panic!("breaker_state {code} is no state"))
}

/// Severity: what an operator must see first when client pods disagree.
fn host_severity(s: HostState) -> u8 {
    match s {
        HostState::Healthy => 0,
        HostState::WarmingUp => 1,
        HostState::Degraded => 2,
        HostState::Unhealthy => 3,
    }
}

fn breaker_severity(s: BreakerState) -> u8 {
    match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// The name a dashboard must show for a state (matched against the
/// panel's value mappings, case-insensitively, by prefix).
fn host_name(s: HostState) -> &'static str {
    match s {
        HostState::Healthy => "healthy",
        HostState::Degraded => "degraded",
        HostState::Unhealthy => "unhealthy",
        HostState::WarmingUp => "warming up",
    }
}

fn breaker_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    }
}

// ---------------------------------------------------------- the dashboard

/// A panel's query with the template variables of the checks.
struct Query {
    expr: String,
    /// Value mappings of the field this query fills: number -> text.
    mappings: Vec<(f64, String)>,
}

fn substitute(expr: &str) -> String {
    let vars = [
        ("$__rate_interval", RATE_INTERVAL),
        ("$namespace", "shop"),
        ("$workload", "frontend"),
        ("$service", ".*"),
        ("$pod", ".*"),
    ];
    let mut out = expr.to_string();
    for (name, value) in vars {
        out = out.replace(name, value);
    }
    assert!(
        !out.contains('$'),
        "a variable the test does not set: {out}"
    );
    out
}

fn mappings_of(value: &Value) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    for m in value.as_array().into_iter().flatten() {
        if m["type"] == "value" {
            for (k, v) in m["options"].as_object().into_iter().flatten() {
                if let (Ok(n), Some(text)) = (k.parse::<f64>(), v["text"].as_str()) {
                    out.push((n, text.to_string()));
                }
            }
        }
    }
    out
}

fn query(dashboard: &Value, title: &str, ref_id: &str) -> Query {
    let panel = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["title"].as_str() == Some(title))
        .unwrap_or_else(|| panic!("no panel titled {title:?}"));
    let target = panel["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["refId"] == ref_id)
        .unwrap_or_else(|| panic!("panel {title:?} has no query {ref_id}"));
    let expr = substitute(target["expr"].as_str().expect("expr"));
    // Table panels map a field (`Value #A` renamed) through overrides.
    let mut mappings = mappings_of(&panel["fieldConfig"]["defaults"]["mappings"]);
    for o in panel["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for p in o["properties"].as_array().into_iter().flatten() {
            if p["id"] == "mappings" {
                mappings.extend(mappings_of(&p["value"]));
            }
        }
    }
    Query { expr, mappings }
}

/// The number `q` shows as state `name`.
fn code_for(q: &Query, name: &str) -> Result<f64, String> {
    q.mappings
        .iter()
        .find(|(_, text)| text.to_lowercase().starts_with(name))
        .map(|(n, _)| *n)
        .ok_or_else(|| {
            format!(
                "no value mapping shows {name:?} in `{}` (mappings {:?})",
                q.expr, q.mappings
            )
        })
}

/// One expectation: `expr` evaluated at `tick` gives exactly `samples`.
struct Check {
    what: String,
    expr: String,
    tick: usize,
    samples: Vec<(Labels, f64)>,
}

impl Check {
    fn to_promtool(&self) -> Value {
        json!({
            "expr": self.expr,
            "eval_time": format!("{}s", self.tick * STEP_S),
            "exp_samples": self.samples.iter().map(|(l, v)| json!({
                "labels": label_set(l),
                "value": v,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The ticks the checks look at, found in the captured data (Err says
/// what the incident did not give).
struct Moments {
    /// Hosts gauges equal in A and B (B lags), u2 ejected, before all fail.
    steady: usize,
    /// A host warming up in pod A while pod B still has it ejected.
    warming: (usize, String),
    /// Pod A's breaker half-open while pod B's is open.
    half_open: usize,
    /// Pod A's breaker first not closed.
    opened: usize,
    /// Pod A's first breaker trip, first refused ejection, first rejected
    /// configuration (their counters appear).
    tripped: usize,
    refused: usize,
    rejected: usize,
}

fn host_code(s: HostState) -> Option<f64> {
    Some(state_value(s))
}

fn breaker_code(s: BreakerState) -> Option<f64> {
    Some(breaker_value(s))
}

fn first_tick(pred: impl Fn(usize) -> bool) -> Option<usize> {
    (0..TICKS).find(|t| pred(*t))
}

fn moments(c: &Capture, pods: &[Pod]) -> Result<Moments, String> {
    let a = &pods[0];
    let b = &pods[1];
    let u2 = c.hosts[U2].as_str();
    let state = |p: &Pod, t: usize, h: &str| {
        p.value(
            c,
            t,
            "meshguard_host_state",
            &[("meshguard_service", "demo"), ("meshguard_host", h)],
        )
    };
    let hosts_gauges = |p: &Pod, t: usize| -> Vec<Option<f64>> {
        ["healthy", "degraded", "unhealthy", "warming_up"]
            .iter()
            .map(|s| {
                p.value(
                    c,
                    t,
                    "meshguard_hosts",
                    &[("meshguard_service", "demo"), ("meshguard_state", s)],
                )
            })
            .collect()
    };
    let steady = (BAD_PUSH..ALL_FAIL)
        .rev()
        .find(|t| {
            hosts_gauges(a, *t) == hosts_gauges(b, *t)
                && state(a, *t, u2) == host_code(HostState::Unhealthy)
                && state(b, *t, u2) == host_code(HostState::Unhealthy)
        })
        .ok_or("no tick before every host failed where both frontend pods had u2 ejected and the same host counts")?;
    let warming = (0..TICKS)
        .flat_map(|t| c.hosts.iter().map(move |h| (t, h.clone())))
        .find(|(t, h)| {
            state(a, *t, h) == host_code(HostState::WarmingUp)
                && state(b, *t, h) == host_code(HostState::Unhealthy)
        })
        .ok_or("no host was seen warming up by one frontend pod while the other had it ejected")?;
    let breaker = |p: &Pod, t: usize| {
        p.value(
            c,
            t,
            "meshguard_breaker_state",
            &[("meshguard_service", "demo")],
        )
    };
    let half_open = first_tick(|t| {
        breaker(a, t) == breaker_code(BreakerState::HalfOpen)
            && breaker(b, t) == breaker_code(BreakerState::Open)
    })
    .ok_or("pod A's breaker was never half-open while pod B's was open")?;
    let opened = first_tick(|t| {
        breaker(a, t).is_some_and(|v| Some(v) != breaker_code(BreakerState::Closed))
    })
    .ok_or("the breaker never opened")?;
    let appeared = |name: &str| {
        first_tick(|t| a.value(c, t, name, &[]).is_some()).ok_or(format!("{name} never appeared"))
    };
    Ok(Moments {
        steady,
        warming,
        half_open,
        opened,
        tripped: appeared("meshguard_breaker_trips")?,
        refused: appeared("meshguard_ejections_refused")?,
        rejected: appeared("meshguard_config_rejected")?,
    })
}

/// Host-state rows of the table's query A at `tick`: the worst state over
/// the frontend pods, as the number the panel maps to its name.
fn host_rows(
    c: &Capture,
    pods: &[Pod],
    tick: usize,
    code: impl Fn(HostState) -> Result<f64, String>,
) -> Result<Vec<(Labels, f64)>, String> {
    let mut worst: BTreeMap<String, HostState> = BTreeMap::new();
    for p in pods.iter().filter(|p| p.frontend()) {
        for ((n, l), v) in p.at(c, tick).into_iter().flatten() {
            if n == "meshguard_host_state" {
                let s = host_state(*v);
                let e = worst.entry(l["meshguard_host"].clone()).or_insert(s);
                if host_severity(s) > host_severity(*e) {
                    *e = s;
                }
            }
        }
    }
    worst
        .into_iter()
        .map(|(h, s)| {
            Ok((
                labels(&[("meshguard_host", &h), ("meshguard_service", "demo")]),
                code(s)?,
            ))
        })
        .collect()
}

/// Per (service, host) over the frontend pods: `f` of their values.
fn per_host(
    c: &Capture,
    pods: &[Pod],
    tick: usize,
    name: &str,
    f: impl Fn(&[f64]) -> f64,
) -> Vec<(Labels, f64)> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in pods.iter().filter(|p| p.frontend()) {
        for ((n, l), v) in p.at(c, tick).into_iter().flatten() {
            if n == name {
                by.entry(l["meshguard_host"].clone()).or_default().push(*v);
            }
        }
    }
    by.into_iter()
        .map(|(h, vs)| {
            (
                labels(&[("meshguard_host", &h), ("meshguard_service", "demo")]),
                f(&vs),
            )
        })
        .collect()
}

/// The dashboard checks. `q(title, refId)` gives a panel's query (the
/// shipped dashboard's, or an old aggregation in its place).
fn dashboard_checks(
    c: &Capture,
    pods: &[Pod],
    m: &Moments,
    q: &dyn Fn(&str, &str) -> Query,
) -> Result<Vec<Check>, String> {
    let (a, b) = (&pods[0], &pods[1]);
    let demo = ("meshguard_service", "demo");
    let mut checks = Vec::new();

    // Hosts by state: the most any frontend pod sees, never their sum.
    let p = q("Hosts by state (most any one client pod sees)", "A");
    let samples = ["healthy", "degraded", "unhealthy", "warming_up"]
        .iter()
        .filter_map(|s| {
            let v = [a, b]
                .iter()
                .filter_map(|p| {
                    p.value(
                        c,
                        m.steady,
                        "meshguard_hosts",
                        &[demo, ("meshguard_state", s)],
                    )
                })
                .fold(None, |acc: Option<f64>, v| {
                    Some(acc.map_or(v, |x| x.max(v)))
                })?;
            Some((labels(&[demo, ("meshguard_state", s)]), v))
        })
        .collect();
    checks.push(Check {
        what: "hosts by state while u2 is ejected: one ejected host, as each frontend pod sees it"
            .into(),
        expr: p.expr,
        tick: m.steady,
        samples,
    });

    // Host table, worst state: where one pod has a host warming up and the
    // other still has it ejected, the row says Unhealthy.
    let p = q("Host states (one row per service and host)", "A");
    for (what, tick) in [
        ("host states while u2 is ejected", m.steady),
        (
            "host states while one frontend pod has a host warming up and the other has it ejected",
            m.warming.0,
        ),
    ] {
        checks.push(Check {
            what: format!("{what} (host {})", m.warming.1),
            expr: p.expr.clone(),
            tick,
            samples: host_rows(c, pods, tick, |s| code_for(&p, host_name(s)))?,
        });
    }
    let p = q("Host states (one row per service and host)", "B");
    checks.push(Check {
        what: "client pods ejecting each host (the frontend pods only)".into(),
        expr: p.expr,
        tick: m.steady,
        samples: per_host(c, pods, m.steady, "meshguard_host_state", |vs| {
            vs.iter()
                .filter(|v| host_state(**v) == HostState::Unhealthy)
                .count() as f64
        }),
    });
    let p = q("Host states (one row per service and host)", "C");
    checks.push(Check {
        what: "client pods reporting each host".into(),
        expr: p.expr,
        tick: m.steady,
        samples: per_host(c, pods, m.steady, "meshguard_host_state", |vs| {
            vs.len() as f64
        }),
    });
    let p = q("Host states (one row per service and host)", "D");
    checks.push(Check {
        what: "most ejections of each host by one client pod".into(),
        expr: p.expr,
        tick: m.steady,
        samples: per_host(c, pods, m.steady, "meshguard_host_ejections", |vs| {
            vs.iter().cloned().fold(0.0, f64::max)
        }),
    });

    // Breaker: Open wins over Half-open.
    let p = q("Circuit breaker (worst client pod's view)", "A");
    for (what, tick) in [
        ("breaker before the outage", m.steady),
        (
            "breaker while one frontend pod probes (half-open) and the other is open",
            m.half_open,
        ),
    ] {
        let worst = [a, b]
            .iter()
            .filter_map(|p| p.value(c, tick, "meshguard_breaker_state", &[demo]))
            .map(breaker_state)
            .max_by_key(|s| breaker_severity(*s))
            .ok_or("no breaker state")?;
        checks.push(Check {
            what: what.into(),
            expr: p.expr.clone(),
            tick,
            samples: vec![(labels(&[demo]), code_for(&p, breaker_name(worst))?)],
        });
    }
    let p = q("Client pods with the breaker open", "A");
    let tick = m.opened + LAG_B + 1;
    let open = [a, b]
        .iter()
        .filter(|p| {
            p.value(c, tick, "meshguard_breaker_state", &[demo]) == breaker_code(BreakerState::Open)
        })
        .count();
    checks.push(Check {
        what: "frontend pods with the breaker open".into(),
        expr: p.expr,
        tick,
        samples: vec![(labels(&[demo]), open as f64)],
    });

    // Counters born at their first event: the first trip, refusal and
    // rejection count (pod B's come LAG_B scrapes later).
    for (title, name, tick, what, by) in [
        (
            "Breaker trips (all client pods)",
            "meshguard_breaker_trips",
            m.tripped + 1,
            "breaker trips just after pod A's first",
            vec![demo],
        ),
        (
            "Ejections refused by maxEjectionPercent (all client pods)",
            "meshguard_ejections_refused",
            m.refused + 1,
            "ejections refused just after pod A's first",
            vec![demo],
        ),
    ] {
        let p = q(title, "A");
        checks.push(Check {
            what: what.into(),
            expr: p.expr,
            tick,
            samples: vec![(
                labels(&by),
                a.value(c, tick, name, &[demo]).ok_or("no value")?,
            )],
        });
    }
    let p = q("Configurations rejected (per interval, by client pod)", "A");
    let tick = m.rejected + 1;
    checks.push(Check {
        what: "configurations rejected just after pod A's".into(),
        expr: p.expr,
        tick,
        samples: vec![(
            labels(&[("namespace", "shop"), ("pod", a.name)]),
            a.value(c, tick, "meshguard_config_rejected", &[])
                .ok_or("no value")?,
        )],
    });
    let p = q(
        "Rejected configurations and limits reached, by client pod",
        "A",
    );
    let tick = m.rejected + LAG_B + 1;
    checks.push(Check {
        what: "configurations rejected, by frontend pod".into(),
        expr: p.expr,
        tick,
        samples: [a, b]
            .iter()
            .map(|p| {
                (
                    labels(&[
                        ("namespace", "shop"),
                        ("pod", p.name),
                        ("service_istio_io_canonical_name", p.workload),
                    ]),
                    p.value(c, tick, "meshguard_config_rejected", &[])
                        .unwrap_or(0.0),
                )
            })
            .collect(),
    });
    Ok(checks)
}

/// Template variables' label_values(selector, label) as `count by`.
fn variable_checks(dashboard: &Value, c: &Capture, pods: &[Pod]) -> Vec<Check> {
    let tick = TICKS - 1;
    let mut checks = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let Some(def) = v["definition"].as_str() else {
            continue;
        };
        let inner = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {def} is not label_values(...)"));
        let (selector, label) = inner
            .rsplit_once(", ")
            .expect("label_values(selector, label)");
        // Which pods the selector keeps: every one unless it names a workload.
        let keep = |p: &Pod| !selector.contains("$workload") || p.frontend();
        let mut by: BTreeMap<String, f64> = BTreeMap::new();
        for p in pods.iter().filter(|p| keep(p)) {
            let Some(s) = p.at(c, tick) else { continue };
            for (_, l) in s.keys().filter(|(n, _)| n == "meshguard_requests") {
                let mut all = l.clone();
                all.extend(p.labels.clone());
                *by.entry(all[label].clone()).or_default() += 1.0;
            }
        }
        checks.push(Check {
            what: format!("variable {}", v["name"]),
            expr: substitute(&format!("count by ({label}) ({selector})")),
            tick,
            samples: by
                .into_iter()
                .map(|(value, n)| (labels(&[(label, &value)]), n))
                .collect(),
        });
    }
    checks
}

// ------------------------------------------------------------- the alerts

fn rules() -> serde_norway::Value {
    serde_norway::from_str(ALERTS).expect("alert rules are YAML")
}

/// An alert as promtool must report it: labels, and the annotations
/// with `{{ $labels.x }}` filled in.
fn alert(name: &str, alert_labels: &[(&str, &str)]) -> Value {
    let rules = rules();
    let rule = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .find(|r| r["alert"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no alert {name}"));
    let mut l = labels(alert_labels);
    for (k, v) in rule["labels"].as_mapping().into_iter().flatten() {
        l.insert(
            k.as_str().expect("key").into(),
            v.as_str().expect("value").into(),
        );
    }
    let mut annotations = serde_json::Map::new();
    for (k, v) in rule["annotations"].as_mapping().into_iter().flatten() {
        let mut text = v.as_str().expect("annotation").to_string();
        for (lk, lv) in &l {
            text = text.replace(&format!("{{{{ $labels.{lk} }}}}"), lv);
        }
        assert!(
            !text.contains("{{"),
            "{name}: a template the test cannot fill: {text}"
        );
        annotations.insert(k.as_str().expect("key").into(), json!(text));
    }
    json!({"exp_labels": l, "exp_annotations": annotations})
}

fn alert_test(name: &str, tick: usize, firing: Vec<Value>) -> Value {
    json!({"eval_time": format!("{}s", tick * STEP_S), "alertname": name, "exp_alerts": firing})
}

/// What an alert with `for: for_ticks` over `max by (namespace, workload,
/// <group>) (<metric> <op> ...)` reports at `tick`: the groups whose
/// condition held in some pod of the workload at every tick of a run
/// that began at least `for_ticks` ago (Prometheus drops a pending or
/// firing alert at the first evaluation where it does not hold).
fn for_alert(
    c: &Capture,
    pods: &[Pod],
    tick: usize,
    metric: &str,
    group: &[&str],
    holds: impl Fn(f64) -> bool,
    for_ticks: usize,
) -> BTreeSet<Labels> {
    let at = |t: usize| -> BTreeSet<Labels> {
        let mut out = BTreeSet::new();
        for p in pods {
            for ((n, l), v) in p.at(c, t).into_iter().flatten() {
                if n == metric && holds(*v) {
                    let mut key = labels(&[
                        ("namespace", "shop"),
                        ("service_istio_io_canonical_name", p.workload),
                    ]);
                    for g in group {
                        key.insert(g.to_string(), l[*g].clone());
                    }
                    out.insert(key);
                }
            }
        }
        out
    };
    let now = at(tick);
    now.into_iter()
        .filter(|key| {
            let mut start = tick;
            while start > 0 && at(start - 1).contains(key) {
                start -= 1;
            }
            tick - start >= for_ticks
        })
        .collect()
}

fn alert_tests(c: &Capture, pods: &[Pod], m: &Moments) -> Result<Vec<Value>, String> {
    let (a, b) = (&pods[0], &pods[1]);
    let u2 = c.hosts[U2].as_str();
    let named = |name: &str, l: &Labels| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        alert(name, &l)
    };
    let frontend = |extra: &[(&str, &str)]| {
        let mut l = labels(&[
            ("namespace", "shop"),
            ("service_istio_io_canonical_name", "frontend"),
        ]);
        l.extend(labels(extra));
        l
    };
    let mut tests = Vec::new();
    // Alerts with `for:`: at the first tick the frontend's should fire
    // (found in the data, as the data says), and three ticks before.
    for (name, metric, group, holds, for_ticks, want, before) in [
        (
            "MeshguardHostEjectedLong",
            "meshguard_host_state",
            vec!["meshguard_service", "meshguard_host"],
            (|v: f64| matches!(host_state(v), HostState::Unhealthy | HostState::WarmingUp))
                as fn(f64) -> bool,
            20,
            frontend(&[("meshguard_service", "demo"), ("meshguard_host", u2)]),
            ALL_FAIL,
        ),
        (
            "MeshguardBreakerOpen",
            "meshguard_breaker_state",
            vec!["meshguard_service"],
            (|v: f64| breaker_state(v) != BreakerState::Closed) as fn(f64) -> bool,
            4,
            frontend(&[("meshguard_service", "demo")]),
            TICKS,
        ),
    ] {
        let expected = |t: usize| for_alert(c, pods, t, metric, &group, holds, for_ticks);
        let fire = (0..before)
            .find(|t| expected(*t).contains(&want))
            .ok_or(format!(
                "{name} should have fired for {want:?} before tick {before}"
            ))?;
        for t in [fire - 3, fire, fire + 1] {
            let firing: Vec<Value> = expected(t).iter().map(|l| named(name, l)).collect();
            println!("{name} at tick {t}: {} alerts", firing.len());
            tests.push(alert_test(name, t, firing));
        }
    }
    let demo = ("meshguard_service", "demo");
    let pod = |p: &Pod| frontend(&[("pod", p.name)]);
    tests.extend([
        alert_test("MeshguardEjectionsRefused", m.refused - 1, vec![]),
        alert_test(
            "MeshguardEjectionsRefused",
            m.refused + 1,
            vec![named("MeshguardEjectionsRefused", &frontend(&[demo]))],
        ),
        alert_test("MeshguardConfigRejected", m.rejected - 1, vec![]),
        alert_test(
            "MeshguardConfigRejected",
            m.rejected + 1,
            vec![named("MeshguardConfigRejected", &pod(a))],
        ),
        alert_test(
            "MeshguardConfigRejected",
            m.rejected + LAG_B + 1,
            vec![
                named("MeshguardConfigRejected", &pod(a)),
                named("MeshguardConfigRejected", &pod(b)),
            ],
        ),
        // Nothing of the kind happened in the real run.
        alert_test("MeshguardPluginInstancesDropped", TICKS - 1, vec![]),
        alert_test("MeshguardHostMetricsDropped", TICKS - 1, vec![]),
    ]);
    Ok(tests)
}

/// The two limit counters cannot be reached in a short real run (64 live
/// plugin instances, 2,048 per-host names): synthetic series of the same
/// shapes as the real counters. Pod X's counter appears at 1 (tick 50);
/// pod Y's has been 3 for over ten minutes and steps to 4 (tick 70).
fn synthetic_limit_test() -> Value {
    let mut series = Vec::new();
    let mut tests = Vec::new();
    for (metric, alert_name) in [
        (
            "meshguard_plugin_instances_dropped",
            "MeshguardPluginInstancesDropped",
        ),
        (
            "meshguard_host_metrics_dropped",
            "MeshguardHostMetricsDropped",
        ),
    ] {
        for (pod, values) in [("x-1", "_x49 1x80"), ("y-1", "3x69 4x60")] {
            series.push(json!({
                "series": format!("{metric}{{namespace=\"shop\",pod=\"{pod}\",service_istio_io_canonical_name=\"{}\"}}", &pod[..1]),
                "values": values,
            }));
        }
        let fired = |pods: &[&str]| -> Vec<Value> {
            pods.iter()
                .map(|p| {
                    alert(
                        alert_name,
                        &[
                            ("namespace", "shop"),
                            ("pod", p),
                            ("service_istio_io_canonical_name", &p[..1]),
                        ],
                    )
                })
                .collect()
        };
        tests.push(alert_test(alert_name, 45, fired(&[])));
        tests.push(alert_test(alert_name, 51, fired(&["x-1"])));
        tests.push(alert_test(alert_name, 71, fired(&["x-1", "y-1"])));
        // X appeared over 10 minutes (40 ticks) ago and has not moved since.
        tests.push(alert_test(alert_name, 95, fired(&["y-1"])));
        tests.push(alert_test(alert_name, 115, fired(&[])));
    }
    json!({"interval": format!("{STEP_S}s"), "input_series": series, "alert_rule_test": tests})
}

// ---------------------------------------------------------------- promtool

fn promtool() -> PathBuf {
    let script = Path::new(ROOT).join("scripts/ensure-promtool.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `promtool test rules` on `tests`; Ok(output) when every test passes.
fn run_promtool(
    promtool: &Path,
    dir: &Path,
    file: &str,
    tests: Vec<Value>,
) -> Result<String, String> {
    let rule_file = Path::new(ROOT).join("istio/prometheus/meshguard-alerts.yaml");
    let doc = json!({
        "rule_files": [rule_file.canonicalize().expect("rule file")],
        "evaluation_interval": format!("{STEP_S}s"),
        "tests": tests,
    });
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json")).expect("write test");
    let out = Command::new(promtool)
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("promtool test rules {}:\n{text}", path.display()))
    }
}

fn expr_test(c: &Capture, pods: &[Pod], checks: &[Check]) -> Value {
    json!({
        "interval": format!("{STEP_S}s"),
        "input_series": input_series(c, pods),
        "promql_expr_test": checks.iter().map(Check::to_promtool).collect::<Vec<_>>(),
    })
}

// ------------------------------------------------------------------- test

/// A wrong aggregation in place of a panel's query: title, refId, the
/// query, the state codes it is read with, and what is wrong with it.
struct Wrong {
    title: &'static str,
    ref_id: &'static str,
    expr: String,
    mappings: &'static [(f64, &'static str)],
    flaw: &'static str,
}

/// meshguard's own codes, as the dashboard before issue 15 named them in
/// its titles.
const RAW_HOST_CODES: &[(f64, &str)] = &[
    (0.0, "healthy"),
    (1.0, "degraded"),
    (2.0, "unhealthy"),
    (3.0, "warming up"),
];
const RAW_BREAKER_CODES: &[(f64, &str)] = &[(0.0, "closed"), (1.0, "open"), (2.0, "half-open")];
const HOSTS: &str = "Hosts by state (most any one client pod sees)";
const TABLE: &str = "Host states (one row per service and host)";
const BREAKER: &str = "Circuit breaker (worst client pod's view)";
const TRIPS: &str = "Breaker trips (all client pods)";
const REFUSED: &str = "Ejections refused by maxEjectionPercent (all client pods)";
const SEL: &str = r#"namespace=~"$namespace",service_istio_io_canonical_name=~"$workload",pod=~"$pod",meshguard_service=~"$service""#;

/// The aggregations of the dashboard before issue 15, and each of its
/// flaws alone (with the workload filter it lacked).
fn wrong_aggregations() -> Vec<Wrong> {
    vec![
        Wrong {
            title: HOSTS,
            ref_id: "A",
            expr: r#"sum by (meshguard_service, meshguard_state) (meshguard_hosts{meshguard_service=~"$service"})"#.to_string(),
            mappings: &[],
            flaw: "before issue 15: sums the client pods' views, no workload filter",
        },
        Wrong {
            title: HOSTS,
            ref_id: "A",
            expr: format!(
                "sum by (meshguard_service, meshguard_state) (meshguard_hosts{{{SEL}}})"
            ),
            mappings: &[],
            flaw: "sums the two frontend pods' views of the same hosts",
        },
        Wrong {
            title: TABLE,
            ref_id: "A",
            expr: r#"max by (meshguard_service, meshguard_host) (meshguard_host_state{meshguard_service=~"$service"})"#.to_string(),
            mappings: RAW_HOST_CODES,
            flaw: "before issue 15: max of raw codes (warming up 3 over unhealthy 2), no workload filter",
        },
        Wrong {
            title: TABLE,
            ref_id: "A",
            expr: format!(
                "max by (meshguard_service, meshguard_host) (meshguard_host_state{{{SEL}}})"
            ),
            mappings: RAW_HOST_CODES,
            flaw: "max of raw codes ranks warming up (3) over unhealthy (2)",
        },
        Wrong {
            title: BREAKER,
            ref_id: "A",
            expr: r#"max by (meshguard_service) (meshguard_breaker_state{meshguard_service=~"$service"})"#.to_string(),
            mappings: RAW_BREAKER_CODES,
            flaw: "before issue 15: max of raw codes ranks half-open (2) over open (1)",
        },
        Wrong {
            title: TRIPS,
            ref_id: "A",
            expr: r#"sum by (meshguard_service) (rate(meshguard_breaker_trips{meshguard_service=~"$service"}[5m])) * 60"#.to_string(),
            mappings: &[],
            flaw: "before issue 15: rate() of a counter born at its first trip",
        },
        Wrong {
            title: TRIPS,
            ref_id: "A",
            expr: format!(
                "sum by (meshguard_service) (increase(meshguard_breaker_trips{{{SEL}}}[$__rate_interval]))"
            ),
            mappings: &[],
            flaw: "increase() alone misses the first trip",
        },
        Wrong {
            title: REFUSED,
            ref_id: "A",
            expr: r#"sum by (meshguard_service) (rate(meshguard_ejections_refused{meshguard_service=~"$service"}[5m])) * 60"#.to_string(),
            mappings: &[],
            flaw: "before issue 15: rate() of a counter born at its first refusal",
        },
    ]
}

#[test]
fn dashboard_and_alerts_tell_a_real_incident_right() {
    // A state the test does not rank would make it check the wrong thing.
    assert_eq!(
        documented_codes("host_state").len(),
        HOST_STATES.len(),
        "host states changed: rank the new one here and in the dashboard"
    );
    assert_eq!(
        documented_codes("breaker_state").len(),
        BREAKER_STATES.len(),
        "breaker states changed: rank the new one here and in the dashboard"
    );
    let promtool = promtool();
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(Path::new(ROOT).join("istio/prometheus/meshguard-alerts.yaml"))
        .output()
        .expect("promtool check rules");
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The Operator resource carries the same groups.
    let crd: serde_norway::Value =
        serde_norway::from_str(PROMETHEUS_RULE).expect("PrometheusRule is YAML");
    assert_eq!(crd["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        crd["spec"]["groups"],
        rules()["groups"],
        "meshguard-prometheusrule.yaml and meshguard-alerts.yaml differ"
    );

    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let c = capture();
    let pods = pods();
    let m = moments(&c, &pods).unwrap_or_else(|e| {
        panic!(
            "the incident did not go as planned: {e}; scrapes in {}",
            c.dir.join("scrapes.txt").display()
        )
    });
    println!(
        "steady {}, warming {:?}, breaker opened {} (half-open vs open {}), first trip {}, refusal {}, rejection {}",
        m.steady, m.warming, m.opened, m.half_open, m.tripped, m.refused, m.rejected
    );

    let shipped = |title: &str, r: &str| query(&dashboard, title, r);
    let mut checks = dashboard_checks(&c, &pods, &m, &shipped).unwrap_or_else(|e| panic!("{e}"));
    checks.extend(variable_checks(&dashboard, &c, &pods));
    // The pitfall the counter panels and alerts avoid: increase() alone
    // never sees the first rejection.
    checks.push(Check {
        what: "increase() alone misses a counter's first event".into(),
        expr: "increase(meshguard_config_rejected[10m]) > 0".into(),
        tick: m.rejected + 1,
        samples: vec![],
    });
    for ch in &checks {
        println!(
            "check at tick {}: {}: {} -> {:?}",
            ch.tick, ch.what, ch.expr, ch.samples
        );
    }
    let mut tests = vec![expr_test(&c, &pods, &checks)];
    let alerts = alert_tests(&c, &pods, &m)
        .unwrap_or_else(|e| panic!("the incident did not go as planned: {e}"));
    tests.push(json!({
        "interval": format!("{STEP_S}s"),
        "input_series": input_series(&c, &pods),
        "alert_rule_test": alerts,
    }));
    tests.push(synthetic_limit_test());
    match run_promtool(&promtool, &c.dir, "promtool-tests.yaml", tests) {
        Ok(out) => println!("{out}"),
        Err(e) => panic!("{e}"),
    }

    // Each wrong aggregation in place of the panel's query fails the checks.
    for wrong in wrong_aggregations() {
        let expr = substitute(&wrong.expr);
        let old = |t: &str, r: &str| {
            if t == wrong.title && r == wrong.ref_id {
                Query {
                    expr: expr.clone(),
                    mappings: wrong
                        .mappings
                        .iter()
                        .map(|(n, t)| (*n, t.to_string()))
                        .collect(),
                }
            } else {
                shipped(t, r)
            }
        };
        let checks = dashboard_checks(&c, &pods, &m, &old).unwrap_or_else(|e| panic!("{e}"));
        let checks: Vec<Check> = checks.into_iter().filter(|ch| ch.expr == expr).collect();
        assert!(!checks.is_empty(), "no check uses `{expr}`");
        let result = run_promtool(
            &promtool,
            &c.dir,
            "promtool-wrong.yaml",
            vec![expr_test(&c, &pods, &checks)],
        );
        match result {
            Ok(out) => panic!(
                "`{expr}` ({}) passes the checks, so they cannot tell it from the right one:\n{out}",
                wrong.flaw
            ),
            Err(e) => println!(
                "wrong `{expr}` ({}) fails, as it should:\n{}\n",
                wrong.flaw,
                e.lines().filter(|l| l.contains("exp:") || l.contains("got:")).collect::<Vec<_>>().join("\n")
            ),
        }
    }
}
