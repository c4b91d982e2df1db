//! Incidents over wall time at a fixed request rate: every variant of a
//! scenario runs at the same time, each with its own Envoy and three
//! mg-upstreams, driven by an open-loop client (requests go out on schedule
//! whatever the earlier ones are doing; latency counts from the schedule).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use host_tests::http;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::envoy::{Envoy, Filter, Spec};
use crate::stats::{quantiles, Table};
use crate::upstreams::Upstream;

pub const HOSTS: [&str; 3] = ["u1", "u2", "u3"];
const BREAKER: u8 = 3;
const OTHER_LOCAL: u8 = 4;
const TRANSPORT: u8 = 5;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// A behaviour change at a time (seconds after the start): (host, JSON).
#[derive(Debug, Clone)]
pub struct Step {
    pub at_s: f64,
    pub set: Vec<(usize, String)>,
}

#[derive(Debug, Clone)]
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
}

/// The native failure-percentage threshold of the "tuned" variant, and the
/// ejection threshold of "meshguard, equal thresholds": meshguard's default
/// degradedFailurePercent, the rate at which meshguard first acts.
pub const TUNED_THRESHOLD: u32 = 30;

pub fn variants(sc: &Scenario) -> Vec<VariantDef> {
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
        },
        VariantDef {
            id: "istio10",
            label: format!("Envoy native, Istio DR (5xx×5, 10s, {b}s, max 10%)"),
            meshguard: None,
            outlier: Some(istio(10)),
        },
        VariantDef {
            id: "istio50",
            label: "Envoy native, Istio DR, max 50%".to_string(),
            meshguard: None,
            outlier: Some(istio(50)),
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
        },
        VariantDef {
            id: "mg",
            label: "meshguard, defaults".into(),
            meshguard: Some(format!("{{{}}}", ejection.trim_start_matches(','))),
            outlier: None,
        },
        VariantDef {
            id: "mg-eq",
            label: format!("meshguard, thresholds = tuned native (eject at {TUNED_THRESHOLD}%)"),
            meshguard: Some(format!(
                r#"{{"detection":{{"degradedFailurePercent":{TUNED_THRESHOLD},"unhealthyFailurePercent":{TUNED_THRESHOLD},"recoveredFailurePercent":10}}{ejection}}}"#
            )),
            outlier: None,
        },
    ];
    for (id, label, config) in &sc.extra {
        v.push(VariantDef {
            id,
            label: label.to_string(),
            meshguard: Some(config.to_string()),
            outlier: None,
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
        });
        v.push(VariantDef {
            id: "mg-slow0",
            label: "meshguard, slowCallThreshold 100ms, degradedWeightPercent 0".into(),
            meshguard: Some(format!(
                r#"{{"detection":{{"slowCallThreshold":"100ms"}},"ejection":{{"degradedWeightPercent":0{}}}}}"#,
                if b == 30 { String::new() } else { format!(r#","baseEjectionTime":"{b}s""#) }
            )),
            outlier: None,
        });
    }
    v
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
pub fn meshguard_states(log: &str, ports: [u16; 3], t0_epoch_ms: i64) -> Vec<StateChange> {
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
                host: h,
                state: line.to.to_string(),
            });
        }
    }
    out
}

/// Envoy's outlier event log (JSON lines): EJECT / UNEJECT per host.
pub fn native_states(log: &str, ports: [u16; 3], t0_epoch_ms: i64) -> Vec<StateChange> {
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
            host: h,
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
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub envoy: PathBuf,
    pub meshguard: PathBuf,
    pub mg_upstream: PathBuf,
    pub rate: u32,
    pub work: PathBuf,
}

fn start_variant(s: &Settings, sc: &Scenario, def: &VariantDef) -> Result<Live, String> {
    let dir = s.work.join(format!("incident-{}-{}", sc.key, def.id));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let ups: Vec<Upstream> = HOSTS
        .iter()
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
        upstream_instance: None,
    };
    let envoy = Envoy::start(&s.envoy, &dir, &spec, None)
        .map_err(|e| format!("{} ({}): {e}", def.id, dir.display()))?;
    Ok(Live {
        def: def.clone(),
        envoy,
        ups,
        event_log,
    })
}

async fn load(
    addr: std::net::SocketAddr,
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
            let r = tokio::time::timeout(REQUEST_TIMEOUT, http::get_async(addr, "/")).await;
            let lat_us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            let (status, host) = match r {
                Ok(Ok(reply)) => {
                    let host = match reply.header("x-upstream-name") {
                        Some(n) => HOSTS
                            .iter()
                            .position(|h| *h == n)
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

/// Runs one scenario, all variants at once.
pub fn run_scenario(s: &Settings, sc: &Scenario) -> Result<Vec<Outcome>, String> {
    let defs = variants(sc);
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
    let admins: Vec<Vec<Arc<Upstream>>> = Vec::new();
    let _ = admins;
    let listeners: Vec<_> = live.iter().map(|l| l.envoy.listener).collect();
    let ups_admin: Vec<Vec<std::net::SocketAddr>> = live
        .iter()
        .map(|l| l.ups.iter().filter_map(|u| u.admin).collect())
        .collect();
    let steps = sc.steps.clone();
    let rate = s.rate;
    let results: Vec<Vec<Sample>> = rt.block_on(async move {
        let t0 = tokio::time::Instant::now() + lead;
        // Behaviour changes, applied to every variant's upstreams at once.
        let stepper = tokio::spawn(async move {
            for st in steps {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(st.at_s)).await;
                let mut hs = Vec::new();
                for admins in &ups_admin {
                    for (h, json) in &st.set {
                        let a = admins[*h];
                        let json = json.clone();
                        hs.push(tokio::task::spawn_blocking(move || {
                            http::request(
                                a,
                                "PUT",
                                "/behaviour",
                                &[("content-type", "application/json")],
                                json.as_bytes(),
                                Duration::from_secs(5),
                            )
                        }));
                    }
                }
                for h in hs {
                    match h.await {
                        Ok(Ok(r)) if r.status == 200 => {}
                        other => eprintln!("  WARNING: behaviour change failed: {other:?}"),
                    }
                }
            }
        });
        let gens: Vec<_> = listeners
            .iter()
            .map(|a| tokio::spawn(load(*a, rate, duration, t0)))
            .collect();
        let mut out = Vec::new();
        for g in gens {
            out.push(g.await.unwrap_or_default());
        }
        let _ = stepper.await;
        out
    });
    std::thread::sleep(Duration::from_millis(400)); // Envoy log flush
    let mut outcomes = Vec::new();
    for (l, samples) in live.iter_mut().zip(results) {
        let ports = [
            l.ups[0].data.port(),
            l.ups[1].data.port(),
            l.ups[2].data.port(),
        ];
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
        outcomes.push(evaluate(sc, &l.def, &samples, states));
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

pub fn evaluate(
    sc: &Scenario,
    def: &VariantDef,
    samples: &[Sample],
    states: Vec<StateChange>,
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
        let st = meshguard_states(log, [11, 12, 13], 1_000_000);
        assert_eq!(st.len(), 1);
        assert_eq!(
            (st[0].t_ms, st[0].host, st[0].state.as_str()),
            (250, 1, "Degraded")
        );
        let ev = r#"{"type":"CONSECUTIVE_5XX","cluster_name":"demo","upstream_url":"127.0.0.1:13","action":"EJECT","num_ejections":1,"enforced":true,"timestamp":"1970-01-01T00:00:02Z"}"#;
        let st = native_states(ev, [11, 12, 13], 1000);
        assert_eq!(
            (st[0].t_ms, st[0].host, st[0].state.as_str()),
            (1000, 2, "Ejected")
        );
    }
}
