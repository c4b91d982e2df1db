//! Incidents over wall time at a fixed request rate: every variant of a
//! scenario runs at the same time, each with its own Envoy and three
//! mg-upstreams, driven by an open-loop client (requests go out on schedule
//! whatever the earlier ones are doing; latency counts from the schedule).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use host_tests::envoy::stat_in;
use host_tests::http;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::blackhole::Blackhole;
use crate::envoy::{render, Envoy, Filter, Launch, Spec};
use crate::stats::{quantiles, Table};
use crate::upstreams::Upstream;

pub const HOSTS: [&str; 3] = ["u1", "u2", "u3"];
/// The replacements of a rolling deployment with new addresses
/// ([`Scenario::replace`]): upstreams 3..6, counted in the slot of the host
/// they replace (v1 as u1, ...).
pub const NEW_HOSTS: [&str; 3] = ["v1", "v2", "v3"];
const BREAKER: u8 = 3;
const OTHER_LOCAL: u8 = 4;
const TRANSPORT: u8 = 5;
/// The client's timeout unless a scenario sets its own.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A step's behaviour that blackholes the host instead of setting one: its
/// mg-upstream stops listening (`refuse`) and the bench takes the port with
/// a full accept queue ([`Blackhole`]), so connects time out.
pub const BLACKHOLE: &str = "blackhole";

/// One request as the client saw it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Scheduled send time, ms after the run's start.
    pub t_ms: u32,
    /// From sending (connect) to the complete response.
    pub lat_us: u32,
    /// 0 for a transport error.
    pub status: u16,
    /// 0..2 = u1..u3; 3 = meshguard breaker reply; 4 = other Envoy local
    /// reply; 5 = transport error.
    pub host: u8,
}

#[derive(Debug, Clone)]
pub struct VariantDef {
    pub id: &'static str,
    pub label: String,
    /// meshguard's plugin configuration; None = no meshguard filter.
    pub meshguard: Option<String>,
    /// `outlier_detection` of the demo cluster (YAML flow mapping).
    pub outlier: Option<String>,
    /// Istio's default route retry policy and cluster circuit breakers.
    pub retries: bool,
    /// meshguard's upstream instance on the router (`"mode":"upstream"`).
    pub upstream_instance: Option<String>,
}

/// A behaviour change at a time (seconds after the start): (host, JSON).
#[derive(Debug, Clone)]
pub struct Step {
    pub at_s: f64,
    pub set: Vec<(usize, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub key: &'static str,
    pub title: &'static str,
    pub what: String,
    pub duration_s: f64,
    pub incident_s: f64,
    /// When the bad host(s) are healthy again, if they are.
    pub heal_s: Option<f64>,
    /// The host the incident hits (None: all of them).
    pub bad: Option<usize>,
    pub initial: [String; 3],
    pub steps: Vec<Step>,
    /// Ejection base time for every variant (Envoy and meshguard).
    pub base_ejection_s: u32,
    /// Adds meshguard variants with slow-call detection.
    pub slow_variant: bool,
    /// Extra meshguard variants: (id, label, plugin configuration).
    pub extra: Vec<(&'static str, &'static str, &'static str)>,
    /// Istio-shaped: the variants of [`retry_variants`] (Istio's default
    /// retries and circuit breakers in every one).
    pub retries: bool,
    /// The demo cluster's connect timeout in seconds (0: the template's 1 s).
    pub connect_timeout_s: u32,
    /// The client's timeout in seconds (0: [`REQUEST_TIMEOUT`]).
    pub client_timeout_s: u64,
    /// A rolling deployment with new addresses: cluster `demo` is an EDS
    /// cluster fed from a watched file, three more upstreams (indices 3..6,
    /// [`NEW_HOSTS`]) start with the others, and [`Scenario::eds`] changes
    /// the membership; steps address hosts 0..6.
    pub replace: bool,
    /// EDS membership changes (seconds after the start, upstream indices),
    /// with [`Scenario::replace`].
    pub eds: Vec<(f64, Vec<usize>)>,
}

/// The native failure-percentage threshold of the "tuned" variant, and the
/// ejection threshold of "meshguard, equal thresholds": meshguard's default
/// degradedFailurePercent, the rate at which meshguard first acts.
pub const TUNED_THRESHOLD: u32 = 30;

/// "meshguard tuned": one configuration for every incident (never one per
/// incident), what docs/performance.md recommends against each loss:
/// eject at the degrade threshold (grey failure), slow-call detection at
/// 100 ms and Degraded hosts starved to a trickle (slow host). With the
/// upstream instance; the `ejection` object is completed per scenario.
pub const TUNED_DETECTION: &str = r#""detection":{"degradedFailurePercent":30,"unhealthyFailurePercent":30,"slowCallThreshold":"100ms"}"#;
pub const TUNED_EJECTION: &str = r#""degradedWeightPercent":0"#;

/// The Istio-shaped variants: every one has Istio's default route retry
/// policy and cluster circuit breakers ([`host_tests::fleet::ISTIO_RETRY_POLICY`],
/// [`host_tests::fleet::ISTIO_CIRCUIT_BREAKERS`]); then what a user can add:
/// a DestinationRule's outlier detection (Istio's defaults, and
/// maxEjectionPercent 50), meshguard at defaults (the WasmPlugin alone),
/// meshguard with its upstream instance on the router
/// (`istio/envoyfilter-upstream.yaml`, docs/istio-retries.md), which sees
/// every attempt, at defaults, and meshguard tuned: the upstream instance
/// with [`TUNED_DETECTION`] and [`TUNED_EJECTION`], the same in every
/// incident.
pub fn retry_variants(sc: &Scenario) -> Vec<VariantDef> {
    let mut v = retry_variants_with(sc, &[]);
    v.retain(|v| !v.id.contains("-d0"));
    v
}

/// [`retry_variants`] and, when named in `only`, the variants that run only
/// when asked for: `retries-mg-d0`, `retries-mgup-d0` and
/// `retries-mgtuned-d0`, the same with `"steering":{"discoveryPercent":0}`
/// (nothing left to Envoy's balancer while steering).
fn retry_variants_with(sc: &Scenario, only: &[String]) -> Vec<VariantDef> {
    let b = sc.base_ejection_s;
    let od = |pct: u32| {
        format!(
            "{{ consecutive_5xx: 5, enforcing_consecutive_5xx: 100, enforcing_consecutive_gateway_failure: 0, \
             enforcing_success_rate: 0, interval: 10s, base_ejection_time: {b}s, max_ejection_percent: {pct} }}"
        )
    };
    let ejection = if b == 30 {
        String::new()
    } else {
        format!(r#""ejection":{{"baseEjectionTime":"{b}s"}}"#)
    };
    let join = |parts: &[&str]| {
        let v: Vec<&str> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
        format!("{{{}}}", v.join(","))
    };
    let tuned_ejection = if b == 30 {
        format!(r#""ejection":{{{TUNED_EJECTION}}}"#)
    } else {
        format!(r#""ejection":{{{TUNED_EJECTION},"baseEjectionTime":"{b}s"}}"#)
    };
    let v =
        |id, label: String, meshguard: Option<String>, outlier, up: Option<String>| VariantDef {
            id,
            label,
            meshguard,
            outlier,
            retries: true,
            upstream_instance: up,
        };
    const UP: &str = r#""mode":"upstream""#;
    const D0: &str = r#""steering":{"discoveryPercent":0}"#;
    let mut all = vec![
        v("retries", "Istio retries alone".into(), None, None, None),
        v(
            "retries-dr10",
            format!("+ Istio DR outlier detection (5xx×5, 10s, {b}s, max 10%)"),
            None,
            Some(od(10)),
            None,
        ),
        v(
            "retries-dr50",
            "+ Istio DR, max 50%".into(),
            None,
            Some(od(50)),
            None,
        ),
        v(
            "retries-mg",
            "+ meshguard defaults".into(),
            Some(join(&[&ejection])),
            None,
            None,
        ),
        v(
            "retries-mgup",
            "+ meshguard defaults, upstream instance (mode: upstream)".into(),
            Some(join(&[&ejection])),
            None,
            Some(join(&[UP, &ejection])),
        ),
        v(
            "retries-mgtuned",
            format!("+ meshguard tuned: upstream instance, {TUNED_DETECTION}, {tuned_ejection}"),
            Some(join(&[TUNED_DETECTION, &tuned_ejection])),
            None,
            Some(join(&[UP, TUNED_DETECTION, &tuned_ejection])),
        ),
    ];
    let asked = |id: &str| only.iter().any(|o| o == id);
    if asked("retries-mg-d0") {
        all.push(v(
            "retries-mg-d0",
            "+ meshguard defaults, discoveryPercent 0".into(),
            Some(join(&[&ejection, D0])),
            None,
            None,
        ));
    }
    if asked("retries-mgup-d0") {
        all.push(v(
            "retries-mgup-d0",
            "+ meshguard upstream instance, discoveryPercent 0".into(),
            Some(join(&[&ejection, D0])),
            None,
            Some(join(&[UP, &ejection])),
        ));
    }
    if asked("retries-mgtuned-d0") {
        all.push(v(
            "retries-mgtuned-d0",
            "+ meshguard tuned, discoveryPercent 0".into(),
            Some(join(&[TUNED_DETECTION, &tuned_ejection, D0])),
            None,
            Some(join(&[UP, TUNED_DETECTION, &tuned_ejection])),
        ));
    }
    all
}

/// The variants of `sc` whose ids are in `only` (all when empty).
pub fn selected_variants(sc: &Scenario, only: &[String]) -> Vec<VariantDef> {
    let all = if sc.retries {
        retry_variants_with(sc, only)
    } else {
        variants(sc)
    };
    all.into_iter()
        .filter(|v| only.is_empty() || only.iter().any(|o| o == v.id))
        .collect()
}

pub fn variants(sc: &Scenario) -> Vec<VariantDef> {
    if sc.retries {
        return retry_variants(sc);
    }
    let b = sc.base_ejection_s;
    let istio = |pct: u32| {
        format!(
            "{{ consecutive_5xx: 5, enforcing_consecutive_5xx: 100, enforcing_consecutive_gateway_failure: 0, \
             enforcing_success_rate: 0, interval: 10s, base_ejection_time: {b}s, max_ejection_percent: {pct} }}"
        )
    };
    let ejection = if b == 30 {
        String::new()
    } else {
        format!(r#","ejection":{{"baseEjectionTime":"{b}s"}}"#)
    };
    let mut v = vec![
        VariantDef {
            id: "none",
            label: "no outlier protection".into(),
            meshguard: None,
            outlier: None,
            retries: false,
            upstream_instance: None,
        },
        VariantDef {
            id: "istio10",
            label: format!("Envoy native, Istio DR (5xx×5, 10s, {b}s, max 10%)"),
            meshguard: None,
            outlier: Some(istio(10)),
            retries: false,
            upstream_instance: None,
        },
        VariantDef {
            id: "istio50",
            label: "Envoy native, Istio DR, max 50%".to_string(),
            meshguard: None,
            outlier: Some(istio(50)),
            retries: false,
            upstream_instance: None,
        },
        VariantDef {
            id: "tuned",
            label: format!("Envoy native tuned (fail% {TUNED_THRESHOLD}, 1s, eject one)"),
            meshguard: None,
            outlier: Some(format!(
                "{{ consecutive_5xx: 5, enforcing_consecutive_5xx: 100, enforcing_consecutive_gateway_failure: 0, \
                 enforcing_success_rate: 0, interval: 1s, base_ejection_time: {b}s, max_ejection_percent: 50, \
                 failure_percentage_threshold: {TUNED_THRESHOLD}, enforcing_failure_percentage: 100, \
                 failure_percentage_minimum_hosts: 1, failure_percentage_request_volume: 20, \
                 always_eject_one_host: true }}"
            )),
            retries: false,
            upstream_instance: None,
        },
        VariantDef {
            id: "mg",
            label: "meshguard, defaults".into(),
            meshguard: Some(format!("{{{}}}", ejection.trim_start_matches(','))),
            outlier: None,
            retries: false,
            upstream_instance: None,
        },
        VariantDef {
            id: "mg-eq",
            label: format!("meshguard, thresholds = tuned native (eject at {TUNED_THRESHOLD}%)"),
            meshguard: Some(format!(
                r#"{{"detection":{{"degradedFailurePercent":{TUNED_THRESHOLD},"unhealthyFailurePercent":{TUNED_THRESHOLD},"recoveredFailurePercent":10}}{ejection}}}"#
            )),
            outlier: None,
            retries: false,
            upstream_instance: None,
        },
    ];
    for (id, label, config) in &sc.extra {
        v.push(VariantDef {
            id,
            label: label.to_string(),
            meshguard: Some(config.to_string()),
            outlier: None,
            retries: false,
            upstream_instance: None,
        });
    }
    if sc.slow_variant {
        v.push(VariantDef {
            id: "mg-slow",
            label: "meshguard, slowCallThreshold 100ms".into(),
            meshguard: Some(format!(
                r#"{{"detection":{{"slowCallThreshold":"100ms"}}{ejection}}}"#
            )),
            outlier: None,
            retries: false,
            upstream_instance: None,
        });
        v.push(VariantDef {
            id: "mg-slow0",
            label: "meshguard, slowCallThreshold 100ms, degradedWeightPercent 0".into(),
            meshguard: Some(format!(
                r#"{{"detection":{{"slowCallThreshold":"100ms"}},"ejection":{{"degradedWeightPercent":0{}}}}}"#,
                if b == 30 { String::new() } else { format!(r#","baseEjectionTime":"{b}s""#) }
            )),
            outlier: None,
            retries: false,
            upstream_instance: None,
        });
    }
    v
}

/// Incidents on top of Istio's default retries (keys `r*`): every one runs
/// [`retry_variants`]. `bad` is u2 unless the incident hits every host.
pub fn retry_scenarios(scale: f64) -> Vec<Scenario> {
    let s = |x: f64| x * scale;
    let healthy = || "{}".to_string();
    let all_healthy = || [healthy(), healthy(), healthy()];
    let cap =
        |c: u32| format!(r#"{{"capacityRps":{c},"overloadErrorPercent":40,"randomErrors":true}}"#);
    let on_u2 = |key, title, what: String, json: &str, heal: Option<f64>, end: f64| Scenario {
        key,
        title,
        what,
        duration_s: s(end),
        incident_s: s(5.0),
        heal_s: heal.map(s),
        bad: Some(1),
        initial: all_healthy(),
        steps: std::iter::once(Step {
            at_s: s(5.0),
            set: vec![(1, json.to_string())],
        })
        .chain(heal.map(|h| Step {
            at_s: s(h),
            set: vec![(1, healthy())],
        }))
        .collect(),
        base_ejection_s: 30,
        retries: true,
        ..Scenario::default()
    };
    let blackhole = |key, title, ct: u32| {
        Scenario {
        connect_timeout_s: ct,
        client_timeout_s: u64::from(3 * ct + 5),
        ..on_u2(
            key,
            title,
            format!(
                "u2 blackholed from {}s to the end (connects time out: a full accept queue); demo's connect timeout {ct} s; client timeout {} s",
                s(5.0),
                3 * ct + 5
            ),
            BLACKHOLE,
            None,
            45.0,
        )
    }
    };
    vec![
        on_u2("ra", "503 hard (retried)", format!("u2 answers 503 to every request from {}s to {}s", s(5.0), s(25.0)), r#"{"status":503}"#, Some(25.0), 40.0),
        on_u2("rb", "500 hard (not retried)", format!("u2 answers 500 to every request from {}s to {}s", s(5.0), s(25.0)), r#"{"status":500}"#, Some(25.0), 40.0),
        on_u2("rc", "grey 503 (40%)", format!("u2 answers 503 to 40% of requests (at random) from {}s to {}s", s(5.0), s(35.0)), r#"{"status":503,"errorPercent":40,"randomErrors":true}"#, Some(35.0), 45.0),
        on_u2("rd", "grey 500 (40%)", format!("u2 answers 500 to 40% of requests (at random) from {}s to {}s", s(5.0), s(35.0)), r#"{"status":500,"errorPercent":40,"randomErrors":true}"#, Some(35.0), 45.0),
        on_u2("rg", "504 hard (not retried)", format!("u2 answers 504 to every request from {}s to {}s", s(5.0), s(25.0)), r#"{"status":504}"#, Some(25.0), 40.0),
        blackhole("rh", "blackholed host, Istio's 10 s connect timeout", 10),
        blackhole("ri", "blackholed host, 1 s connect timeout", 1),
        on_u2("rj", "slow host", format!("u2 answers 200 ms late from {}s to {}s", s(5.0), s(35.0)), r#"{"latencyMs":200}"#, Some(35.0), 45.0),
        Scenario {
            base_ejection_s: 5,
            ..on_u2(
                "rk",
                "host that stays bad (500)",
                format!("u2 answers 500 to every request from {}s to the end; every variant's base ejection time is 5 s", s(5.0)),
                r#"{"status":500}"#,
                None,
                60.0,
            )
        },
        Scenario {
            initial: [cap(85), cap(85), cap(85)],
            ..on_u2(
                "rl",
                "overload",
                format!(
                    "each host fails 40% of requests (503, at random) while it receives more than its capacity per second; \
                     capacities 85/85/85 req/s (fair share 67), u2's drops to 55 from {}s; retried 503s add load",
                    s(5.0)
                ),
                &cap(55),
                None,
                40.0,
            )
        },
        Scenario {
            key: "rm",
            title: "rolling restart in place",
            what: format!(
                "u1, u2, u3 restart in turn, each refusing connections for {} s, from {}s to {}s (same addresses: a pod restarted in place)",
                s(5.0),
                s(5.0),
                s(20.0)
            ),
            duration_s: s(35.0),
            incident_s: s(5.0),
            heal_s: Some(s(20.0)),
            bad: None,
            initial: all_healthy(),
            steps: (0..4)
                .map(|i| Step {
                    at_s: s(5.0 + 5.0 * i as f64),
                    set: (0..3)
                        .filter(|h| *h + 1 == i || *h == i)
                        .map(|h| (h, if h == i { r#"{"refuse":true}"#.into() } else { healthy() }))
                        .collect(),
                })
                .collect(),
            base_ejection_s: 30,
            retries: true,
            ..Scenario::default()
        },
        Scenario {
            key: "ro",
            title: "rolling deployment, new addresses",
            what: format!(
                "u1, u2, u3 replaced in turn by v1, v2, v3 at new addresses through EDS (a watched file), one every {} s \
                 from {}s: the new host joins, 1 s later the old one stops (refuses connections, pooled ones \
                 closed: no preStop drain), 1 s after that EDS removes it (the control plane's delay); heal at {}s",
                s(5.0),
                s(5.0),
                s(20.0)
            ),
            duration_s: s(35.0),
            incident_s: s(5.0),
            heal_s: Some(s(20.0)),
            bad: None,
            initial: all_healthy(),
            steps: (0..3)
                .map(|i| Step {
                    at_s: s(6.0 + 5.0 * i as f64),
                    set: vec![(i, r#"{"refuse":true}"#.into())],
                })
                .collect(),
            replace: true,
            eds: (0..3)
                .flat_map(|i| {
                    let at = 5.0 + 5.0 * i as f64;
                    // Before: v1..v(i) and u(i+1)..u3; the new one joins,
                    // then the old one leaves.
                    let before: Vec<usize> = (0..3).map(|h| if h < i { h + 3 } else { h }).collect();
                    let mut joined = before.clone();
                    joined.push(i + 3);
                    let left: Vec<usize> = joined.iter().copied().filter(|&h| h != i).collect();
                    [(s(at), joined), (s(at + 2.0), left)]
                })
                .collect(),
            base_ejection_s: 30,
            retries: true,
            ..Scenario::default()
        },
        Scenario {
            key: "rn",
            title: "whole service failing",
            what: format!("u1-u3 answer 503 after 100 ms to every request from {}s to {}s, then are healthy", s(5.0), s(20.0)),
            duration_s: s(40.0),
            incident_s: s(5.0),
            heal_s: Some(s(20.0)),
            bad: None,
            initial: all_healthy(),
            steps: vec![
                Step { at_s: s(5.0), set: (0..3).map(|i| (i, r#"{"status":503,"latencyMs":100}"#.to_string())).collect() },
                Step { at_s: s(20.0), set: (0..3).map(|i| (i, healthy())).collect() },
            ],
            base_ejection_s: 30,
            retries: true,
            ..Scenario::default()
        },
    ]
}

pub fn scenarios(scale: f64) -> Vec<Scenario> {
    let s = |x: f64| x * scale;
    let healthy = || "{}".to_string();
    let all_healthy = || [healthy(), healthy(), healthy()];
    let cap =
        |c: u32| format!(r#"{{"capacityRps":{c},"overloadErrorPercent":40,"randomErrors":true}}"#);
    vec![
        Scenario {
            key: "a",
            title: "hard failure, then recovery",
            what: format!("u2 answers 503 to every request from {}s to {}s, then is healthy", s(5.0), s(15.0)),
            duration_s: s(100.0),
            incident_s: s(5.0),
            heal_s: Some(s(15.0)),
            bad: Some(1),
            initial: all_healthy(),
            steps: vec![
                Step { at_s: s(5.0), set: vec![(1, r#"{"status":503}"#.into())] },
                Step { at_s: s(15.0), set: vec![(1, healthy())] },
            ],
            base_ejection_s: 30,
            slow_variant: false,
            extra: vec![],
            ..Scenario::default()
        },
        Scenario {
            key: "b",
            title: "grey failure",
            what: format!("u2 fails 38% of requests (independently at random) from {}s to {}s", s(5.0), s(45.0)),
            duration_s: s(60.0),
            incident_s: s(5.0),
            heal_s: Some(s(45.0)),
            bad: Some(1),
            initial: all_healthy(),
            steps: vec![
                Step { at_s: s(5.0), set: vec![(1, r#"{"status":503,"errorPercent":38,"randomErrors":true}"#.into())] },
                Step { at_s: s(45.0), set: vec![(1, healthy())] },
            ],
            base_ejection_s: 30,
            slow_variant: false,
            extra: vec![],
            ..Scenario::default()
        },
        Scenario {
            key: "c",
            title: "slow host",
            what: format!("u2 answers 200 ms late from {}s to {}s", s(5.0), s(35.0)),
            duration_s: s(50.0),
            incident_s: s(5.0),
            heal_s: Some(s(35.0)),
            bad: Some(1),
            initial: all_healthy(),
            steps: vec![
                Step { at_s: s(5.0), set: vec![(1, r#"{"latencyMs":200}"#.into())] },
                Step { at_s: s(35.0), set: vec![(1, healthy())] },
            ],
            base_ejection_s: 30,
            slow_variant: true,
            extra: vec![],
            ..Scenario::default()
        },
        Scenario {
            key: "d",
            title: "host that stays bad",
            what: format!(
                "u2 answers 503 to every request from {}s to the end; every variant's base ejection time is 5 s so several eject/return cycles fit",
                s(5.0)
            ),
            duration_s: s(80.0),
            incident_s: s(5.0),
            heal_s: None,
            bad: Some(1),
            initial: all_healthy(),
            steps: vec![Step { at_s: s(5.0), set: vec![(1, r#"{"status":503}"#.into())] }],
            base_ejection_s: 5,
            slow_variant: false,
            extra: vec![],
            ..Scenario::default()
        },
        Scenario {
            key: "e",
            title: "overload cascade",
            what: format!(
                "each host fails 40% of requests (at random) while it receives more than its capacity per second; \
                 capacities 85/85/85 req/s (fair share 67), u2's drops to 55 from {}s",
                s(5.0)
            ),
            duration_s: s(50.0),
            incident_s: s(5.0),
            heal_s: None,
            bad: Some(1),
            initial: [cap(85), cap(85), cap(85)],
            steps: vec![Step { at_s: s(5.0), set: vec![(1, cap(55))] }],
            base_ejection_s: 30,
            slow_variant: false,
            extra: vec![(
                "mg-graded",
                "meshguard, consecutive5xxErrors 0 (grading by failure rate only)",
                r#"{"detection":{"consecutive5xxErrors":0}}"#,
            )],
            ..Scenario::default()
        },
        Scenario {
            key: "f",
            title: "all hosts failing (breaker)",
            what: format!("u1-u3 answer 503 after 100 ms to every request from {}s to {}s, then are healthy", s(5.0), s(20.0)),
            duration_s: s(60.0),
            incident_s: s(5.0),
            heal_s: Some(s(20.0)),
            bad: None,
            initial: all_healthy(),
            steps: vec![
                Step { at_s: s(5.0), set: (0..3).map(|i| (i, r#"{"status":503,"latencyMs":100}"#.to_string())).collect() },
                Step { at_s: s(20.0), set: (0..3).map(|i| (i, healthy())).collect() },
            ],
            base_ejection_s: 30,
            slow_variant: false,
            extra: vec![],
            ..Scenario::default()
        },
    ]
}

/// A state change of a host over time (ms after the start).
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub t_ms: i64,
    pub host: usize,
    pub state: String,
}

/// Per-second counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub total: u32,
    /// Answers by u1, u2, u3.
    pub by_host: [u32; 3],
    pub failed: u32,
    pub breaker: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub variant: &'static str,
    pub label: String,
    pub requests: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Requests slower than 100 ms.
    pub slow: usize,
    pub detect_s: Option<f64>,
    pub recover_s: Option<f64>,
    pub breaker_replies: usize,
    pub breaker_p50_ms: Option<f64>,
    pub breaker_p99_ms: Option<f64>,
    pub seconds: Vec<Second>,
    pub states: Vec<StateChange>,
    pub max_ms: f64,
    /// Client requests sent during the incident (from its start to the heal
    /// or the end of the run), and how many of them failed.
    pub incident_requests: usize,
    pub incident_failed: usize,
    /// What Envoy and the upstreams counted during the incident.
    pub during: Option<Counts>,
    /// Upstream attempts per client request during the incident: client
    /// requests that reached the router (all but meshguard's breaker
    /// replies) plus Envoy's `upstream_rq_retry`, over client requests.
    pub attempts_per_request: Option<f64>,
    /// Attempts on the bad host during the incident: requests its
    /// mg-upstream received plus Envoy's failed connects to it.
    pub bad_attempts: Option<u64>,
}

/// Counters of one variant at one moment, or their change over a stretch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Envoy's `cluster.demo.upstream_rq_retry`, `..._retry_success`,
    /// `..._retry_overflow`, `..._rq_total`, `..._cx_connect_fail`.
    pub retry: u64,
    pub retry_success: u64,
    pub retry_overflow: u64,
    pub rq_total: u64,
    pub connect_fail: u64,
    /// Requests each mg-upstream received (its `/stats`).
    pub host_requests: [u64; 3],
    /// Envoy's failed connects per host (`/clusters` `cx_connect_fail`).
    pub host_connect_fail: [u64; 3],
}

impl Counts {
    pub fn since(&self, before: &Counts) -> Counts {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let d3 = |a: [u64; 3], b: [u64; 3]| [d(a[0], b[0]), d(a[1], b[1]), d(a[2], b[2])];
        Counts {
            retry: d(self.retry, before.retry),
            retry_success: d(self.retry_success, before.retry_success),
            retry_overflow: d(self.retry_overflow, before.retry_overflow),
            rq_total: d(self.rq_total, before.rq_total),
            connect_fail: d(self.connect_fail, before.connect_fail),
            host_requests: d3(self.host_requests, before.host_requests),
            host_connect_fail: d3(self.host_connect_fail, before.host_connect_fail),
        }
    }

    /// Attempts on host `h`: requests it received plus failed connects.
    pub fn host_attempts(&self, h: usize) -> u64 {
        self.host_requests[h] + self.host_connect_fail[h]
    }

    /// From Envoy's `/stats` text, its `/clusters` text and the upstreams'
    /// request counts. `ports` are the upstreams' data ports; upstream `j`
    /// counts in slot `j % 3` (a replacement in the slot of the host it
    /// replaced). Envoy's `/clusters` lists only current members, so the
    /// per-host connect failures of a host EDS removed are gone from it.
    pub fn parse(stats: &str, clusters: &str, ports: &[u16], host_requests: [u64; 3]) -> Self {
        let c = |name: &str| stat_in(stats, &format!("cluster.demo.{name}"));
        let mut host_connect_fail = [0; 3];
        for (i, p) in ports.iter().enumerate() {
            host_connect_fail[i % 3] += host_counter(clusters, "demo", *p, "cx_connect_fail");
        }
        Counts {
            retry: c("upstream_rq_retry"),
            retry_success: c("upstream_rq_retry_success"),
            retry_overflow: c("upstream_rq_retry_overflow"),
            rq_total: c("upstream_rq_total"),
            connect_fail: c("upstream_cx_connect_fail"),
            host_requests,
            host_connect_fail,
        }
    }
}

/// Host counter `name` of `cluster`'s host on port `port` in Envoy's
/// `/clusters` text (`demo::127.0.0.1:PORT::cx_connect_fail::3`); 0 when absent.
pub fn host_counter(clusters: &str, cluster: &str, port: u16, name: &str) -> u64 {
    let suffix = format!(":{port}::{name}::");
    clusters
        .lines()
        .filter_map(|l| l.strip_prefix(cluster)?.strip_prefix("::"))
        .find_map(|l| {
            let at = l.find(&suffix)?;
            l[at + suffix.len()..].trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Reads one variant's counters (blocking).
fn read_counts(
    envoy_admin: std::net::SocketAddr,
    ups_admin: &[std::net::SocketAddr],
    ports: &[u16],
) -> Counts {
    let t = Duration::from_secs(3);
    let stats =
        host_tests::envoy::admin_get(envoy_admin, "/stats?filter=^cluster\\.demo\\.upstream_", t)
            .unwrap_or_default();
    let clusters = host_tests::envoy::admin_get(envoy_admin, "/clusters", t).unwrap_or_default();
    let mut host_requests = [0; 3];
    for (i, a) in ups_admin.iter().enumerate() {
        host_requests[i % 3] += host_tests::upstream::UpstreamAdmin::new(*a)
            .stats()
            .map_or(0, |s| s.requests);
    }
    Counts::parse(&stats, &clusters, ports, host_requests)
}

fn now_epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2024-05-06T07:08:09.123Z` (or with more fraction digits) to epoch ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) * 1000) + (sec * 1000.0).round() as i64)
}

/// meshguard transition lines `[epoch.ms] ... host 127.0.0.1:PORT: A -> B: ...`.
/// Upstream `j` of `ports` is host slot `j % 3`.
pub fn meshguard_states(log: &str, ports: &[u16], t0_epoch_ms: i64) -> Vec<StateChange> {
    let mut out = Vec::new();
    for l in log.lines() {
        let Some(rest) = l.strip_prefix('[') else {
            continue;
        };
        let Some((ts, msg)) = rest.split_once(']') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let Some(line) = meshguard::events::HostTransition::parse(msg) else {
            continue;
        };
        let port = line
            .address
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse::<u16>().ok());
        if let Some(h) = ports.iter().position(|p| Some(*p) == port) {
            out.push(StateChange {
                t_ms: (ts * 1000.0).round() as i64 - t0_epoch_ms,
                host: h % 3,
                state: line.to.to_string(),
            });
        }
    }
    out
}

/// Envoy's outlier event log (JSON lines): EJECT / UNEJECT per host.
/// Upstream `j` of `ports` is host slot `j % 3`.
pub fn native_states(log: &str, ports: &[u16], t0_epoch_ms: i64) -> Vec<StateChange> {
    let mut out = Vec::new();
    for l in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let url = v["upstream_url"].as_str().unwrap_or("");
        let Some(h) = ports.iter().position(|p| url.ends_with(&format!(":{p}"))) else {
            continue;
        };
        let Some(t) = v["timestamp"].as_str().and_then(parse_rfc3339_ms) else {
            continue;
        };
        let state = match v["action"].as_str() {
            Some("EJECT") if v["enforced"].as_bool() != Some(false) => "Ejected",
            Some("UNEJECT") => "Healthy",
            _ => continue,
        };
        out.push(StateChange {
            t_ms: t - t0_epoch_ms,
            host: h % 3,
            state: state.into(),
        });
    }
    out
}

struct Live {
    def: VariantDef,
    envoy: Envoy,
    ups: Vec<Upstream>,
    event_log: PathBuf,
    /// Cluster `demo`'s EDS file ([`Scenario::replace`]).
    eds_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub envoy: PathBuf,
    pub meshguard: PathBuf,
    pub mg_upstream: PathBuf,
    pub rate: u32,
    pub work: PathBuf,
    /// BENCH_VARIANTS: the variant ids to run (empty: all).
    pub variants: Vec<String>,
}

/// The bench's rendered configuration with, when `retries`, Istio's default
/// retry policy on the demo routes and its circuit breakers on the demo
/// cluster; `connect_timeout_s` (0: unchanged) replaces the demo cluster's
/// connect timeout.
pub fn istio_shaped(yaml: &str, retries: bool, connect_timeout_s: u32) -> Result<String, String> {
    const CLUSTER: &str = "  - name: demo\n    type: STATIC\n    connect_timeout: 1s\n";
    if yaml.matches(CLUSTER).count() != 1 {
        return Err("template changed: want one demo cluster header".into());
    }
    let ct = if connect_timeout_s == 0 {
        1
    } else {
        connect_timeout_s
    };
    let mut head = format!("  - name: demo\n    type: STATIC\n    connect_timeout: {ct}s\n");
    let mut out = yaml.to_string();
    if retries {
        out = host_tests::fleet::with_istio_retries(&out)?;
        head.push_str(&format!(
            "    circuit_breakers: {}\n",
            host_tests::fleet::ISTIO_CIRCUIT_BREAKERS
        ));
    }
    Ok(out.replace(CLUSTER, &head))
}

fn start_variant(s: &Settings, sc: &Scenario, def: &VariantDef) -> Result<Live, String> {
    let dir = s.work.join(format!("incident-{}-{}", sc.key, def.id));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let names = HOSTS.iter().chain(NEW_HOSTS.iter().filter(|_| sc.replace));
    let ups: Vec<Upstream> = names
        .map(|n| Upstream::mg_upstream(&s.mg_upstream, n, &dir))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", def.id))?;
    for (u, b) in ups.iter().zip(&sc.initial) {
        u.set_behaviour(b).map_err(|e| e.to_string())?;
    }
    let event_log = dir.join("outlier-events.log");
    let _ = std::fs::remove_file(&event_log);
    let spec = Spec {
        filter: match &def.meshguard {
            Some(c) => Filter::Wasm {
                path: s.meshguard.clone(),
                config: c.clone(),
            },
            None => Filter::None,
        },
        outlier_detection: def.outlier.clone(),
        event_log: def.outlier.is_some().then(|| event_log.clone()),
        access_log: false,
        concurrency: 2,
        upstream_ports: [ups[0].data.port(), ups[1].data.port(), ups[2].data.port()],
        upstream_instance: def.upstream_instance.clone(),
    };
    let (retries, ct) = (def.retries, sc.connect_timeout_s);
    // A rolling deployment's cluster is fed by EDS from a watched file,
    // listing the first three upstreams to begin with.
    let eds_file = sc.replace.then(|| dir.join("eds").join("demo.json"));
    if let Some(f) = &eds_file {
        let eds_dir = dir.join("eds");
        std::fs::create_dir_all(&eds_dir).map_err(|e| e.to_string())?;
        let first: Vec<std::net::SocketAddr> = ups.iter().take(3).map(|u| u.data).collect();
        host_tests::fleet::write_atomically(f, &host_tests::fleet::eds_document(1, &first))
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let envoy = Envoy::launch(
        &s.envoy,
        &dir,
        spec.concurrency,
        |admin, listen| {
            let y = istio_shaped(&render(&spec, admin, listen)?, retries, ct)?;
            match &eds_file {
                Some(f) => host_tests::fleet::with_eds_cluster(&y, f, &dir.join("eds")),
                None => Ok(y),
            }
        },
        &Launch::native(None),
    )
    .map_err(|e| format!("{} ({}): {e}", def.id, dir.display()))?;
    if sc.replace {
        wait_for_members(&envoy, &ups[..3]).map_err(|e| format!("{}: {e}", def.id))?;
    }
    Ok(Live {
        def: def.clone(),
        envoy,
        ups,
        event_log,
        eds_file,
    })
}

/// Waits (up to 10 s) until Envoy lists exactly `members` in cluster `demo`.
fn wait_for_members(envoy: &Envoy, members: &[Upstream]) -> Result<(), String> {
    let want: std::collections::BTreeSet<std::net::SocketAddr> =
        members.iter().map(|u| u.data).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let have: std::collections::BTreeSet<std::net::SocketAddr> = envoy
            .admin_get("/clusters", Duration::from_secs(2))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("demo::")?.split("::").next()?.parse().ok())
            .collect();
        if have == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("Envoy lists {have:?} for demo, want {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

async fn load(
    addr: std::net::SocketAddr,
    timeout: Duration,
    rate: u32,
    duration: Duration,
    t0: tokio::time::Instant,
) -> Vec<Sample> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gap_ns = 1_000_000_000u64 / u64::from(rate.max(1));
    let n = duration.as_nanos() as u64 / gap_ns;
    for i in 0..n {
        let due = t0 + Duration::from_nanos(i * gap_ns);
        tokio::time::sleep_until(due).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            // Latency counts from the moment the request really leaves (the
            // client's own timer lag is not the proxy's); the schedule never
            // waits for earlier requests, so slow answers cannot hide.
            let sent = tokio::time::Instant::now();
            let r = tokio::time::timeout(timeout, http::get_async(addr, "/")).await;
            let lat_us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            let (status, host) = match r {
                Ok(Ok(reply)) => {
                    let host = match reply.header("x-upstream-name") {
                        Some(n) => HOSTS
                            .iter()
                            .position(|h| *h == n)
                            .or_else(|| NEW_HOSTS.iter().position(|h| *h == n))
                            .map_or(OTHER_LOCAL, |i| i as u8),
                        None if reply.header("retry-after").is_some() => BREAKER,
                        None => OTHER_LOCAL,
                    };
                    (reply.status, host)
                }
                _ => (0, TRANSPORT),
            };
            let _ = tx.send(Sample {
                t_ms: (i * gap_ns / 1_000_000) as u32,
                lat_us,
                status,
                host,
            });
        });
    }
    drop(tx);
    let mut v = Vec::with_capacity(n as usize);
    while let Some(s) = rx.recv().await {
        v.push(s);
    }
    v.sort_by_key(|s| s.t_ms);
    v
}

/// What the stepper does at one moment.
enum Action {
    /// Counters of every variant (the incident's start or end).
    Count,
    Step(Vec<(usize, String)>),
    /// Cluster `demo`'s EDS members become these upstreams (indices).
    Members(Vec<usize>),
}

/// `PUT /behaviour` on an mg-upstream admin (async, through a blocking task).
async fn put_behaviour(a: std::net::SocketAddr, json: String) -> Result<(), String> {
    let r = tokio::task::spawn_blocking(move || {
        http::request(
            a,
            "PUT",
            "/behaviour",
            &[("content-type", "application/json")],
            json.as_bytes(),
            Duration::from_secs(5),
        )
    })
    .await;
    match r {
        Ok(Ok(r)) if r.status == 200 => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Blackholes `data`: its mg-upstream stops listening, then the port is
/// taken with a full accept queue (a few tries while the server lets go).
async fn blackhole(
    admin: std::net::SocketAddr,
    data: std::net::SocketAddr,
) -> Result<Blackhole, String> {
    put_behaviour(admin, r#"{"refuse":true}"#.into()).await?;
    let mut last = String::new();
    for _ in 0..40 {
        match tokio::task::spawn_blocking(move || Blackhole::bind(data)).await {
            Ok(Ok(b)) => return Ok(b),
            Ok(Err(e)) => last = e.to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("blackhole {data}: {last}"))
}

/// Runs one scenario, all variants at once (those in `s.variants`, or all).
pub fn run_scenario(s: &Settings, sc: &Scenario) -> Result<Vec<Outcome>, String> {
    let defs = selected_variants(sc, &s.variants);
    let mut live = Vec::new();
    for d in &defs {
        live.push(start_variant(s, sc, d)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let duration = Duration::from_secs_f64(sc.duration_s);
    let lead = Duration::from_millis(300);
    let t0_epoch_ms = now_epoch_ms() + lead.as_millis() as i64;
    let listeners: Vec<_> = live.iter().map(|l| l.envoy.listener).collect();
    let envoy_admins: Vec<_> = live.iter().map(|l| l.envoy.admin).collect();
    let ups_admin: Vec<Vec<std::net::SocketAddr>> = live
        .iter()
        .map(|l| l.ups.iter().filter_map(|u| u.admin).collect())
        .collect();
    let ups_data: Vec<Vec<std::net::SocketAddr>> = live
        .iter()
        .map(|l| l.ups.iter().map(|u| u.data).collect())
        .collect();
    let ports: Vec<Vec<u16>> = ups_data
        .iter()
        .map(|d| d.iter().map(|a| a.port()).collect())
        .collect();
    let eds_files: Vec<Option<PathBuf>> = live.iter().map(|l| l.eds_file.clone()).collect();
    // The timeline: the incident's start and end counted (before the steps
    // at those moments), the steps applied.
    let window_end = sc.heal_s.unwrap_or(sc.duration_s).min(sc.duration_s);
    let mut timeline: Vec<(f64, Action)> = vec![(sc.incident_s, Action::Count)];
    if window_end < sc.duration_s {
        timeline.push((window_end, Action::Count));
    }
    for st in &sc.steps {
        timeline.push((st.at_s, Action::Step(st.set.clone())));
    }
    for (at, members) in &sc.eds {
        timeline.push((*at, Action::Members(members.clone())));
    }
    // Stable: a count before a step at the same moment.
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rate = s.rate;
    let timeout = match sc.client_timeout_s {
        0 => REQUEST_TIMEOUT,
        t => Duration::from_secs(t),
    };
    let counts_of = {
        let (envoy_admins, ups_admin, ports) =
            (envoy_admins.clone(), ups_admin.clone(), ports.clone());
        move || -> Vec<Counts> {
            (0..envoy_admins.len())
                .map(|i| read_counts(envoy_admins[i], &ups_admin[i], &ports[i]))
                .collect()
        }
    };
    let counts_at_end = counts_of.clone();
    let (results, mut counted, holes): (Vec<Vec<Sample>>, Vec<Vec<Counts>>, Vec<Blackhole>) = rt
        .block_on(async move {
            let t0 = tokio::time::Instant::now() + lead;
            // Behaviour changes, applied to every variant's upstreams at once.
            let stepper = tokio::spawn(async move {
                let mut counted = Vec::new();
                let mut holes = Vec::new();
                let mut version = 1;
                for (at, action) in timeline {
                    tokio::time::sleep_until(t0 + Duration::from_secs_f64(at)).await;
                    match action {
                        Action::Members(members) => {
                            version += 1;
                            for (file, data) in eds_files.iter().zip(&ups_data) {
                                let Some(file) = file else { continue };
                                let addrs: Vec<std::net::SocketAddr> = members
                                    .iter()
                                    .filter_map(|&h| data.get(h).copied())
                                    .collect();
                                let doc = host_tests::fleet::eds_document(version, &addrs);
                                if let Err(e) = host_tests::fleet::write_atomically(file, &doc) {
                                    eprintln!("  WARNING: EDS update {}: {e}", file.display());
                                }
                            }
                        }
                        Action::Count => {
                            let c = counts_of.clone();
                            counted.push(tokio::task::spawn_blocking(c).await.unwrap_or_default());
                        }
                        Action::Step(set) => {
                            let mut hs = Vec::new();
                            for (admins, data) in ups_admin.iter().zip(&ups_data) {
                                for (h, json) in &set {
                                    let (a, d, json) = (admins[*h], data[*h], json.clone());
                                    hs.push(tokio::spawn(async move {
                                        if json == BLACKHOLE {
                                            blackhole(a, d).await.map(Some)
                                        } else {
                                            put_behaviour(a, json).await.map(|()| None)
                                        }
                                    }));
                                }
                            }
                            for h in hs {
                                match h.await {
                                    Ok(Ok(Some(b))) => holes.push(b),
                                    Ok(Ok(None)) => {}
                                    other => {
                                        eprintln!("  WARNING: behaviour change failed: {other:?}")
                                    }
                                }
                            }
                        }
                    }
                }
                (counted, holes)
            });
            let gens: Vec<_> = listeners
                .iter()
                .map(|a| tokio::spawn(load(*a, timeout, rate, duration, t0)))
                .collect();
            let mut out = Vec::new();
            for g in gens {
                out.push(g.await.unwrap_or_default());
            }
            let (counted, holes) = stepper.await.unwrap_or_default();
            (out, counted, holes)
        });
    if window_end >= sc.duration_s {
        counted.push(counts_at_end());
    }
    drop(holes);
    std::thread::sleep(Duration::from_millis(400)); // Envoy log flush
    let mut outcomes = Vec::new();
    for (i, (l, samples)) in live.iter_mut().zip(results).enumerate() {
        let ports = &ports[i];
        let states = if l.def.meshguard.is_some() {
            meshguard_states(&l.envoy.log(), ports, t0_epoch_ms)
        } else {
            native_states(
                &std::fs::read_to_string(&l.event_log).unwrap_or_default(),
                ports,
                t0_epoch_ms,
            )
        };
        l.envoy.stop();
        let during = match (counted.first(), counted.get(1)) {
            (Some(a), Some(b)) => b.get(i).zip(a.get(i)).map(|(b, a)| b.since(a)),
            _ => None,
        };
        outcomes.push(evaluate(sc, &l.def, &samples, states, during));
    }
    drop(live);
    Ok(outcomes)
}

fn bucketed(samples: &[Sample], width_ms: u32, n: usize) -> Vec<Second> {
    let mut v = vec![Second::default(); n];
    for s in samples {
        let i = (s.t_ms / width_ms) as usize;
        if let Some(b) = v.get_mut(i) {
            b.total += 1;
            if (s.host as usize) < 3 {
                b.by_host[s.host as usize] += 1;
            }
            if s.status != 200 {
                b.failed += 1;
            }
            if s.host == BREAKER {
                b.breaker += 1;
            }
        }
    }
    v
}

/// One variant's outcome from its samples, its hosts' state changes and
/// the counters of the incident (`during`).
pub fn evaluate(
    sc: &Scenario,
    def: &VariantDef,
    samples: &[Sample],
    states: Vec<StateChange>,
    during: Option<Counts>,
) -> Outcome {
    let lat: Vec<f64> = samples
        .iter()
        .map(|s| f64::from(s.lat_us) / 1000.0)
        .collect();
    let q = quantiles(&lat, &[0.5, 0.9, 0.99]);
    let breaker: Vec<f64> = samples
        .iter()
        .filter(|s| s.host == BREAKER)
        .map(|s| f64::from(s.lat_us) / 1000.0)
        .collect();
    let bq = quantiles(&breaker, &[0.5, 0.99]);
    let n_sec = sc.duration_s.ceil() as usize;
    let seconds = bucketed(samples, 1000, n_sec);
    let incident_ms = (sc.incident_s * 1000.0) as u32;
    let window_end_ms = (sc.heal_s.unwrap_or(sc.duration_s).min(sc.duration_s) * 1000.0) as u32;
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_ms >= incident_ms && s.t_ms < window_end_ms)
        .collect();
    let detect_s = match sc.bad {
        // Two 250 ms buckets in a row where the bad host gets under 3/4 of
        // its fair share (a Degraded host at half weight gets 2/5 of fair... 3/5).
        Some(h) => {
            let q4 = bucketed(samples, 250, n_sec * 4);
            let first = (incident_ms / 250) as usize;
            let low = |b: &Second| {
                b.total >= 10 && f64::from(b.by_host[h]) < 0.75 * f64::from(b.total) / 3.0
            };
            (first..q4.len().saturating_sub(1))
                .find(|&i| low(&q4[i]) && low(&q4[i + 1]))
                .map(|i| (i as f64 * 0.25 + 0.25) - sc.incident_s)
        }
        None => samples
            .iter()
            .find(|s| s.t_ms >= incident_ms && s.host == BREAKER)
            .map(|s| f64::from(s.t_ms) / 1000.0 - sc.incident_s),
    };
    let recover_s = sc.heal_s.and_then(|heal| {
        let from = heal.floor() as usize;
        let ok = |b: &Second| match sc.bad {
            Some(h) => b.total > 0 && f64::from(b.by_host[h]) >= 0.9 * f64::from(b.total) / 3.0,
            None => b.total > 0 && f64::from(b.failed) <= 0.01 * f64::from(b.total),
        };
        let last = seconds.len().checked_sub(1)?;
        if !ok(&seconds[last]) {
            return None;
        }
        let mut i = last;
        while i > from && ok(&seconds[i - 1]) {
            i -= 1;
        }
        Some(i as f64 - heal)
    });
    Outcome {
        scenario: sc.key,
        variant: def.id,
        label: def.label.clone(),
        requests: samples.len(),
        failed: samples.iter().filter(|s| s.status != 200).count(),
        p50_ms: q[0].unwrap_or(f64::NAN),
        p90_ms: q[1].unwrap_or(f64::NAN),
        p99_ms: q[2].unwrap_or(f64::NAN),
        slow: samples.iter().filter(|s| s.lat_us > 100_000).count(),
        detect_s,
        recover_s,
        breaker_replies: breaker.len(),
        breaker_p50_ms: bq[0],
        breaker_p99_ms: bq[1],
        seconds,
        states,
        max_ms: lat.iter().copied().fold(0.0, f64::max),
        incident_requests: window.len(),
        incident_failed: window.iter().filter(|s| s.status != 200).count(),
        during,
        attempts_per_request: during.and_then(|c| {
            let routed = window.iter().filter(|s| s.host != BREAKER).count() as u64;
            (!window.is_empty()).then(|| (routed + c.retry) as f64 / window.len() as f64)
        }),
        bad_attempts: during.zip(sc.bad).map(|(c, h)| c.host_attempts(h)),
    }
}

pub fn table(sc: &Scenario, outs: &[Outcome]) -> Table {
    let mut header = vec!["variant", "failed", "p50 ms", "p99 ms", "detect s"];
    let heal_col = if sc.bad.is_some() {
        "u2 full share back s (after heal)"
    } else {
        "success ≥99% again s (after heal)"
    };
    if sc.heal_s.is_some() {
        header.push(heal_col);
    }
    if sc.slow_variant {
        header.extend(["p90 ms", "requests >100 ms"]);
    }
    if sc.bad.is_none() {
        header.extend(["breaker replies", "breaker reply p50/p99 ms"]);
    }
    let mut t = Table::new(&header);
    let after = sc.heal_s.map(|h| sc.duration_s - h).unwrap_or(0.0);
    for o in outs {
        let mut row = vec![
            o.label.clone(),
            format!("{} / {}", o.failed, o.requests),
            format!("{:.2}", o.p50_ms),
            format!("{:.1}", o.p99_ms),
            o.detect_s.map_or("never".into(), |d| format!("{d:.2}")),
        ];
        if sc.heal_s.is_some() {
            row.push(
                o.recover_s
                    .map_or(format!("> {after:.0}"), |r| format!("{r:.0}")),
            );
        }
        if sc.slow_variant {
            row.push(format!("{:.1}", o.p90_ms));
            row.push(o.slow.to_string());
        }
        if sc.bad.is_none() {
            row.push(o.breaker_replies.to_string());
            row.push(match (o.breaker_p50_ms, o.breaker_p99_ms) {
                (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
                _ => "-".into(),
            });
        }
        t.row(row);
    }
    t
}

/// The table of an Istio-shaped scenario: client errors and latency, and
/// what the incident cost upstream (attempts per request, retries, attempts
/// on the bad host).
pub fn retry_table(sc: &Scenario, outs: &[Outcome]) -> Table {
    let bad = if sc.bad.is_some() {
        "u2 attempts (incident)"
    } else {
        "attempts (incident)"
    };
    let mut t = Table::new(&[
        "variant",
        "failed",
        "failed in incident",
        "p50 ms",
        "p99 ms",
        "max ms",
        "requests > 100 ms",
        "attempts per request (incident)",
        "retries (incident)",
        bad,
        "detect s",
    ]);
    for o in outs {
        let c = o.during.unwrap_or_default();
        t.row(vec![
            o.label.clone(),
            format!("{} / {}", o.failed, o.requests),
            format!("{} / {}", o.incident_failed, o.incident_requests),
            format!("{:.2}", o.p50_ms),
            format!("{:.1}", o.p99_ms),
            format!("{:.0}", o.max_ms),
            o.slow.to_string(),
            o.attempts_per_request
                .map_or("-".into(), |a| format!("{a:.3}")),
            c.retry.to_string(),
            match o.bad_attempts {
                Some(n) => n.to_string(),
                // Envoy's cluster-wide connect failures: per-host ones vanish
                // with a host that EDS removed.
                None => (c.host_requests.iter().sum::<u64>() + c.connect_fail).to_string(),
            },
            o.detect_s.map_or("never".into(), |d| format!("{d:.2}")),
        ]);
    }
    t
}

/// The sub-heading and text above the Istio-shaped incidents (`retries`)
/// or the ones without retries.
pub fn group_intro(retries: bool) -> String {
    if retries {
        format!(
            "### On Istio's default retries\n\nEvery variant has Istio's default route retry policy (`retry_on: \
             connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`, `retriable_status_codes: [503]`, \
             `num_retries: 2`, `previous_hosts`, `host_selection_retry_max_attempts: 5`) and Istio's default circuit \
             breakers (every threshold 4294967295). `failed in incident`, `attempts per request`, `retries` and the bad \
             host's attempts count from the incident's start to its heal (or the run's end). Attempts per request = (client \
             requests that reached the router + Envoy's `upstream_rq_retry`) / client requests; the bad host's attempts = \
             requests its mg-upstream received + Envoy's failed connects to it (`/clusters` `cx_connect_fail`). \
             Latency is wall clock on a shared 2-core machine (±17 % between runs); counts are exact. Target: at most \
             {MAX_AMPLIFICATION} attempts per request during an incident.\n"
        )
    } else {
        "### Without retries\n\nThe variants without any retry policy on the route (Envoy's default), as before.\n".into()
    }
}

/// The variants an Istio user reaches without meshguard, and meshguard's.
pub const ISTIO_REACHABLE: [&str; 3] = ["retries", "retries-dr10", "retries-dr50"];
pub const MESHGUARD_ON_RETRIES: [&str; 3] = ["retries-mg", "retries-mgup", "retries-mgtuned"];
/// Most upstream attempts per client request meshguard may cause during an
/// incident (issue 13).
pub const MAX_AMPLIFICATION: f64 = 1.05;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The targets of the Istio-shaped scenarios, one line each: met or missed.
pub fn retry_targets(outs: &[Outcome]) -> Vec<String> {
    let find = |sc: &str, v: &str| outs.iter().find(|o| o.scenario == sc && o.variant == v);
    let mut keys: Vec<&str> = Vec::new();
    for o in outs.iter().filter(|o| o.variant.starts_with("retries")) {
        if !keys.contains(&o.scenario) {
            keys.push(o.scenario);
        }
    }
    let mut t = Vec::new();
    // Fewer failed requests than every Istio-reachable variant, where
    // retries do not help: 500/504 and blackholes.
    for sc in keys
        .iter()
        .copied()
        .filter(|k| ["rb", "rd", "rg", "rh", "ri", "rk"].contains(k))
    {
        let reach: Vec<(&str, usize)> = ISTIO_REACHABLE
            .iter()
            .filter_map(|v| find(sc, v).map(|o| (*v, o.failed)))
            .collect();
        let Some(best) = reach.iter().map(|r| r.1).min() else {
            continue;
        };
        for v in MESHGUARD_ON_RETRIES {
            let Some(m) = find(sc, v) else { continue };
            let shown: Vec<String> = reach.iter().map(|(v, n)| format!("{v} {n}")).collect();
            t.push(format!(
                "({sc}) {v} fails fewer requests than every Istio-reachable variant: {} vs {}: {}",
                m.failed,
                shown.join(", "),
                if best == 0 && m.failed == 0 {
                    "n/a (no variant fails one)"
                } else {
                    verdict(m.failed < best)
                }
            ));
        }
    }
    // p99 at least 10x lower on a slow or blackholed host.
    for sc in keys
        .iter()
        .copied()
        .filter(|k| ["rh", "ri", "rj"].contains(k))
    {
        let Some(best) = ISTIO_REACHABLE
            .iter()
            .filter_map(|v| find(sc, v).map(|o| o.p99_ms))
            .min_by(|a, b| a.total_cmp(b))
        else {
            continue;
        };
        for v in MESHGUARD_ON_RETRIES {
            let Some(m) = find(sc, v) else { continue };
            t.push(format!(
                "({sc}) {v} p99 at least 10x lower than the best Istio-reachable variant: {:.1} vs {best:.1} ms: {}",
                m.p99_ms,
                verdict(m.p99_ms * 10.0 <= best)
            ));
        }
    }
    for sc in keys.iter().copied() {
        let base = find(sc, "retries");
        for v in MESHGUARD_ON_RETRIES {
            let Some(m) = find(sc, v) else { continue };
            if let Some(a) = m.attempts_per_request {
                t.push(format!(
                    "({sc}) {v} attempts per client request during the incident ≤ {MAX_AMPLIFICATION}: {a:.3}{}: {}",
                    base.and_then(|b| b.attempts_per_request)
                        .map_or(String::new(), |b| format!(" (retries alone {b:.3})")),
                    verdict(a <= MAX_AMPLIFICATION)
                ));
            }
            if let Some(b) = base {
                let worse_attempts = matches!(
                    (m.attempts_per_request, b.attempts_per_request),
                    (Some(x), Some(y)) if x > y + 0.005
                );
                t.push(format!(
                    "({sc}) {v} no worse than retries alone: failed {} vs {}, attempts per request {} vs {}: {}",
                    m.failed,
                    b.failed,
                    m.attempts_per_request.map_or("-".into(), |a| format!("{a:.3}")),
                    b.attempts_per_request.map_or("-".into(), |a| format!("{a:.3}")),
                    verdict(m.failed <= b.failed && !worse_attempts)
                ));
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps_and_transitions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2024-03-01T00:00:00Z"),
            Some(1_709_251_200_000)
        );
        let log = "[1000.250] [wasm log meshguard] meshguard: demo host 127.0.0.1:12: Healthy -> Degraded: failure 34% over 100 >= 30%\n\
                   [1001.000] other line\n";
        let st = meshguard_states(log, &[11, 12, 13], 1_000_000);
        assert_eq!(st.len(), 1);
        assert_eq!(
            (st[0].t_ms, st[0].host, st[0].state.as_str()),
            (250, 1, "Degraded")
        );
        let ev = r#"{"type":"CONSECUTIVE_5XX","cluster_name":"demo","upstream_url":"127.0.0.1:13","action":"EJECT","num_ejections":1,"enforced":true,"timestamp":"1970-01-01T00:00:02Z"}"#;
        let st = native_states(ev, &[11, 12, 13], 1000);
        assert_eq!(
            (st[0].t_ms, st[0].host, st[0].state.as_str()),
            (1000, 2, "Ejected")
        );
    }

    fn outcome(
        sc: &'static str,
        v: &'static str,
        failed: usize,
        p99: f64,
        att: Option<f64>,
    ) -> Outcome {
        Outcome {
            scenario: sc,
            variant: v,
            label: v.into(),
            requests: 100,
            failed,
            p50_ms: 1.0,
            p90_ms: 1.0,
            p99_ms: p99,
            slow: 0,
            detect_s: None,
            recover_s: None,
            breaker_replies: 0,
            breaker_p50_ms: None,
            breaker_p99_ms: None,
            seconds: vec![],
            states: vec![],
            max_ms: p99,
            incident_requests: 50,
            incident_failed: failed,
            during: None,
            attempts_per_request: att,
            bad_attempts: None,
        }
    }

    #[test]
    fn parses_envoy_counters_and_counts_the_incident() {
        let stats = "cluster.demo.upstream_rq_retry: 12\ncluster.demo.upstream_rq_retry_success: 10\n\
                     cluster.demo.upstream_rq_total: 300\ncluster.demo.upstream_cx_connect_fail: 4\n";
        assert_eq!(stat_in(stats, "cluster.demo.upstream_rq_retry"), 12);
        assert_eq!(stat_in(stats, "cluster.demo.upstream_rq_retry_overflow"), 0);
        let clusters = "demo::outlier::success_rate_average::-1\n\
                        demo::127.0.0.1:11::cx_connect_fail::0\ndemo::127.0.0.1:12::cx_connect_fail::7\n\
                        demo::127.0.0.1:12::rq_total::90\nfallback::127.0.0.1:12::cx_connect_fail::99\n";
        assert_eq!(host_counter(clusters, "demo", 12, "cx_connect_fail"), 7);
        assert_eq!(host_counter(clusters, "demo", 13, "cx_connect_fail"), 0);
        let before = Counts::parse(stats, clusters, &[11, 12, 13], [5, 6, 7]);
        assert_eq!(
            (
                before.retry,
                before.retry_success,
                before.rq_total,
                before.connect_fail
            ),
            (12, 10, 300, 4)
        );
        assert_eq!(before.host_connect_fail, [0, 7, 0]);
        let after = Counts {
            retry: 20,
            host_requests: [15, 6, 27],
            host_connect_fail: [0, 9, 0],
            ..before
        };
        let d = after.since(&before);
        assert_eq!(
            (d.retry, d.rq_total, d.host_requests, d.host_connect_fail),
            (8, 0, [10, 0, 20], [0, 2, 0])
        );
        assert_eq!(d.host_attempts(1), 2);
        // A restarted counter never goes negative.
        assert_eq!(before.since(&after).retry, 0);
    }

    #[test]
    fn attempts_per_request_over_the_incident_window() {
        let sc = &retry_scenarios(1.0)[0];
        assert_eq!((sc.key, sc.incident_s, sc.heal_s), ("ra", 5.0, Some(25.0)));
        let def = &retry_variants(sc)[0];
        // 10 requests before, 20 in the incident (2 breaker replies), 10 after.
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample {
                t_ms: i * 1000,
                lat_us: 1000,
                status: if (5..7).contains(&i) { 503 } else { 200 },
                host: if (5..7).contains(&i) { BREAKER } else { 0 },
            })
            .collect();
        let during = Counts {
            retry: 9,
            host_requests: [0, 4, 0],
            host_connect_fail: [0, 1, 0],
            ..Counts::default()
        };
        let o = evaluate(sc, def, &samples, vec![], Some(during));
        assert_eq!(
            (o.incident_requests, o.incident_failed, o.failed),
            (20, 2, 2)
        );
        assert_eq!(o.attempts_per_request, Some((18.0 + 9.0) / 20.0));
        assert_eq!(o.bad_attempts, Some(5));
        assert_eq!(o.max_ms, 1.0);
        assert!(retry_table(sc, &[o]).markdown().contains("| 1.350 "));
    }

    #[test]
    fn istio_shaped_variants_and_config() {
        let y = "      - name: demo\n        route: { cluster: demo }\n  - name: demo\n    type: STATIC\n    connect_timeout: 1s\n    lb: x\n";
        let out = istio_shaped(y, true, 10).expect("shaped");
        assert!(
            out.contains("retriable_status_codes: [503], num_retries: 2"),
            "{out}"
        );
        assert!(out.contains("connect_timeout: 10s\n    circuit_breakers: { thresholds: [{ max_connections: 4294967295"));
        assert_eq!(istio_shaped(y, false, 0).expect("plain"), y);
        assert!(istio_shaped("nothing", true, 1).is_err());
        let all = retry_scenarios(1.0);
        let mut tuned_configs = std::collections::BTreeSet::new();
        for sc in &all {
            let v = retry_variants(sc);
            assert!(v.iter().all(|v| v.retries), "{}", sc.key);
            let ids: Vec<&str> = v.iter().map(|v| v.id).collect();
            assert_eq!(
                ids,
                [
                    "retries",
                    "retries-dr10",
                    "retries-dr50",
                    "retries-mg",
                    "retries-mgup",
                    "retries-mgtuned"
                ],
                "{}",
                sc.key
            );
            for id in ["retries-mgup", "retries-mgtuned"] {
                let m = v.iter().find(|v| v.id == id).expect(id);
                let up = m.upstream_instance.as_deref().expect("upstream instance");
                assert!(up.starts_with(r#"{"mode":"upstream""#), "{up}");
                for c in [up, m.meshguard.as_deref().expect("downstream")] {
                    let j: serde_json::Value = serde_json::from_str(c).expect(c);
                    // Only the sections an upstream instance takes.
                    assert!(!c.contains("steering") || !c.contains("upstream"), "{c}");
                    if id == "retries-mgtuned" {
                        assert_eq!(j["detection"]["unhealthyFailurePercent"], 30, "{c}");
                        assert_eq!(j["detection"]["slowCallThreshold"], "100ms", "{c}");
                        assert_eq!(j["ejection"]["degradedWeightPercent"], 0, "{c}");
                    } else {
                        assert!(j.get("detection").is_none(), "{c}");
                    }
                }
            }
            // One tuned configuration for every incident: only the base
            // ejection time, which every variant of a scenario shares, varies.
            let t = v.iter().find(|v| v.id == "retries-mgtuned").expect("tuned");
            tuned_configs.insert(
                t.upstream_instance
                    .clone()
                    .unwrap_or_default()
                    .replace(r#","baseEjectionTime":"5s""#, ""),
            );
        }
        assert_eq!(tuned_configs.len(), 1, "{tuned_configs:?}");
        // Variants that run only when named.
        let rb = &all[1];
        assert!(!retry_variants(rb).iter().any(|v| v.id.ends_with("-d0")));
        let d0 = selected_variants(rb, &["retries-mg-d0".into(), "retries-mgup-d0".into()]);
        assert_eq!(d0.len(), 2);
        assert!(d0.iter().all(|v| v
            .meshguard
            .as_deref()
            .is_some_and(|c| c.contains(r#""steering":{"discoveryPercent":0}"#))));
        assert!(d0[1]
            .upstream_instance
            .as_deref()
            .is_some_and(|c| !c.contains("steering")));
        let rk = all.iter().find(|s| s.key == "rk").expect("rk");
        assert!(
            retry_variants(rk)[3].meshguard.as_deref()
                == Some(r#"{"ejection":{"baseEjectionTime":"5s"}}"#)
        );
        let rm = all.iter().find(|s| s.key == "rm").expect("rm");
        let sets: Vec<Vec<usize>> = rm
            .steps
            .iter()
            .map(|s| s.set.iter().map(|x| x.0).collect())
            .collect();
        assert_eq!(sets, vec![vec![0], vec![0, 1], vec![1, 2], vec![2]]);
        // The rolling deployment with new addresses: each new host joins
        // before its old one stops, which EDS removes a second later.
        let ro = all.iter().find(|s| s.key == "ro").expect("ro");
        assert!(ro.replace && ro.bad.is_none());
        let eds: Vec<(f64, Vec<usize>)> = ro.eds.clone();
        assert_eq!(
            eds,
            vec![
                (5.0, vec![0, 1, 2, 3]),
                (7.0, vec![1, 2, 3]),
                (10.0, vec![3, 1, 2, 4]),
                (
                    12.0,
                    vec![3, 1, 2, 4].into_iter().filter(|&h| h != 1).collect()
                ),
                (15.0, vec![3, 4, 2, 5]),
                (17.0, vec![3, 4, 5]),
            ]
        );
        let stops: Vec<(f64, usize)> = ro.steps.iter().map(|s| (s.at_s, s.set[0].0)).collect();
        assert_eq!(stops, vec![(6.0, 0), (11.0, 1), (16.0, 2)]);
        assert!(ro.heal_s.is_some_and(|h| h > 17.0));
        let only = selected_variants(rk, &["retries".into(), "retries-mg".into()]);
        assert_eq!(only.len(), 2);
        // The old scenarios keep their variants.
        assert!(variants(&scenarios(1.0)[0]).iter().all(|v| !v.retries));
    }

    #[test]
    fn retry_targets_say_met_and_missed() {
        let outs = vec![
            outcome("rb", "retries", 300, 5.0, Some(1.0)),
            outcome("rb", "retries-dr10", 300, 5.0, Some(1.0)),
            outcome("rb", "retries-dr50", 5, 5.0, Some(1.0)),
            outcome("rb", "retries-mg", 3, 5.0, Some(1.0)),
            outcome("rb", "retries-mgup", 8, 5.0, Some(1.2)),
            outcome("rb", "retries-mgtuned", 2, 5.0, Some(1.004)),
            outcome("rj", "retries", 0, 200.0, Some(1.0)),
            outcome("rj", "retries-mgup", 0, 150.0, Some(1.0)),
            outcome("rj", "retries-mgtuned", 0, 15.0, Some(1.0)),
        ];
        let t = retry_targets(&outs);
        let line = |p: &str| {
            t.iter()
                .find(|l| l.starts_with(p))
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            line("(rb) retries-mg fails fewer").ends_with(": met"),
            "{t:?}"
        );
        assert!(line("(rb) retries-mgup fails fewer").ends_with("**missed**"));
        assert!(line("(rb) retries-mgup attempts").ends_with("**missed**"));
        assert!(line("(rb) retries-mgup no worse").ends_with("**missed**"));
        assert!(line("(rb) retries-mgtuned fails fewer").ends_with(": met"));
        assert!(line("(rb) retries-mgtuned attempts").ends_with(": met"));
        assert!(line("(rb) retries-mgtuned no worse").ends_with(": met"));
        assert!(line("(rj) retries-mgtuned p99").ends_with(": met"), "{t:?}");
        assert!(line("(rj) retries-mgup p99").ends_with("**missed**"));
        assert!(!t.iter().any(|l| l.starts_with("(rj) retries-mg ")));
    }
}
