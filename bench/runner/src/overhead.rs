//! Overhead: wrk through Envoy (1 worker, fixed connections, small
//! responses) for plain Envoy, a do-nothing wasm filter, meshguard healthy,
//! and meshguard steering around a Degraded host; rounds interleaved.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::envoy::{Envoy, Filter, Spec};
use crate::stats::{Spread, Table};
use crate::upstreams::Upstream;

#[derive(Debug, Clone)]
pub struct Settings {
    pub envoy: PathBuf,
    pub meshguard: PathBuf,
    pub noop: PathBuf,
    pub rounds: usize,
    pub seconds: u32,
    pub connections: u32,
    /// CPU for Envoy and CPU(s) for wrk and the upstreams (taskset lists),
    /// or None to let the scheduler place everything.
    pub pin: Option<(String, String)>,
    pub work: PathBuf,
}

/// meshguard with one host pinned Degraded: u2's first 3 answers are 503
/// (3 of its first 20 outcomes: 15% > 10%), and with a recovery threshold of
/// 0% it never returns to Healthy, so every request is steered (weights
/// 100/50/100) while every answer is a 200.
pub const PINNED_DEGRADED_CONFIG: &str =
    r#"{"detection":{"degradedFailurePercent":10,"recoveredFailurePercent":0}}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Variant {
    Plain,
    Noop,
    HostCalls,
    Meshguard,
    Steering,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Plain,
        Variant::Noop,
        Variant::HostCalls,
        Variant::Meshguard,
        Variant::Steering,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Variant::Plain => "plain Envoy",
            Variant::Noop => "do-nothing Rust wasm filter",
            Variant::HostCalls => {
                "do-nothing filter + meshguard's 2 healthy-path host calls (diagnostic)"
            }
            Variant::Meshguard => "meshguard, defaults, all hosts healthy",
            Variant::Steering => "meshguard, steering active (one host Degraded)",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub variant: Variant,
    pub round: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    /// Envoy's CPU time per request, in microseconds (all its threads,
    /// over the measured run).
    pub cpu_us_per_request: f64,
    /// For `Steering`: whether meshguard logged the Degraded transition.
    pub degraded_seen: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub variant: Variant,
    pub label: &'static str,
    pub rps: Spread,
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub rps_ratio: f64,
    pub p99_added_ms: f64,
    pub cpu_us: Spread,
    /// Requests per Envoy CPU-second, relative to plain Envoy.
    pub cpu_ratio: f64,
}

/// The number of requests wrk completed (`85000 requests in 5.00s, ...`).
pub fn parse_wrk_requests(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
}

/// Parses wrk's `--latency` output: (req/s, p50 ms, p99 ms, non-2xx).
pub fn parse_wrk(out: &str) -> Option<(f64, f64, f64, u64)> {
    let dur = |s: &str| -> Option<f64> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
        let v: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => v / 1000.0,
            "ms" => v,
            "s" => v * 1000.0,
            "m" => v * 60_000.0,
            _ => return None,
        })
    };
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut non2xx = 0;
    for l in out.lines() {
        let t = l.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = dur(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = dur(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = v.trim().parse().unwrap_or(0);
        }
    }
    Some((rps?, p50?, p99?, non2xx))
}

fn wrk(target: &str, seconds: u32, conns: u32, cpus: Option<&str>) -> Result<String, String> {
    let mut cmd = match cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", c, "wrk"]);
            t
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .arg(target)
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_one(s: &Settings, v: Variant, round: usize) -> Result<Run, String> {
    let (envoy_cpu, load_cpus) = match &s.pin {
        Some((e, l)) => (Some(e.as_str()), Some(l.as_str())),
        None => (None, None),
    };
    let ups: Vec<Upstream> = ["u1", "u2", "u3"]
        .iter()
        .map(|n| {
            let fail_first = if v == Variant::Steering && *n == "u2" {
                3
            } else {
                0
            };
            Upstream::static_server(n, fail_first, load_cpus)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let filter = match v {
        Variant::Plain => Filter::None,
        Variant::Noop => Filter::Wasm {
            path: s.noop.clone(),
            config: "{}".into(),
        },
        Variant::HostCalls => Filter::Wasm {
            path: s.noop.clone(),
            config: std::env::var("BENCH_DIAGNOSTIC").unwrap_or_else(|_| "host-calls".into()),
        },
        Variant::Meshguard => Filter::Wasm {
            path: s.meshguard.clone(),
            config: "{}".into(),
        },
        Variant::Steering => Filter::Wasm {
            path: s.meshguard.clone(),
            config: PINNED_DEGRADED_CONFIG.into(),
        },
    };
    let spec = Spec {
        filter,
        outlier_detection: None,
        event_log: None,
        access_log: false,
        concurrency: 1,
        upstream_ports: [ups[0].data.port(), ups[1].data.port(), ups[2].data.port()],
        upstream_instance: None,
    };
    let dir = s.work.join(format!("overhead-{v:?}-{round}"));
    let mut envoy = Envoy::start(&s.envoy, &dir, &spec, envoy_cpu).map_err(|e| e.to_string())?;
    let target = format!("http://{}/", envoy.listener);
    // Warm-up: connections, V8 tiering, and (Steering) the Degraded grade.
    wrk(&target, 2, s.connections, load_cpus)?;
    let cpu_before = envoy.cpu_time().map_err(|e| e.to_string())?;
    let out = wrk(&target, s.seconds, s.connections, load_cpus)?;
    let cpu = envoy.cpu_time().map_err(|e| e.to_string())? - cpu_before;
    std::thread::sleep(Duration::from_millis(250)); // log flush
    let degraded_seen = (v == Variant::Steering).then(|| {
        let port = ups[1].data.port();
        envoy.log().lines().any(|l| {
            meshguard::events::HostTransition::parse(l).is_some_and(|t| {
                t.address.ends_with(&format!(":{port}"))
                    && t.from == meshguard::model::HostState::Healthy
                    && t.to == meshguard::model::HostState::Degraded
            })
        })
    });
    envoy.stop();
    let (rps, p50_ms, p99_ms, non_2xx) =
        parse_wrk(&out).ok_or_else(|| format!("cannot parse wrk output:\n{out}"))?;
    let requests = parse_wrk_requests(&out).unwrap_or(0).max(1);
    let cpu_us_per_request = cpu.as_secs_f64() * 1e6 / requests as f64;
    Ok(Run {
        variant: v,
        round,
        rps,
        p50_ms,
        p99_ms,
        non_2xx,
        cpu_us_per_request,
        degraded_seen,
    })
}

/// All rounds, interleaved (A B C D, A B C D, ...).
pub fn run(s: &Settings) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    // BENCH_VARIANTS=Plain,Noop,...: a subset, for quick comparisons.
    let chosen = std::env::var("BENCH_VARIANTS").unwrap_or_default();
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| chosen.is_empty() || chosen.split(',').any(|c| c == format!("{v:?}")))
        .collect();
    for round in 0..s.rounds {
        for &v in &variants {
            let r = run_one(s, v, round)?;
            eprintln!(
                "  overhead round {}/{} {:<10} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  Envoy CPU {:.1} µs/req{}",
                round + 1,
                s.rounds,
                format!("{v:?}"),
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us_per_request,
                match r.degraded_seen {
                    Some(false) => "  (WARNING: no Degraded transition logged)",
                    _ => "",
                }
            );
            runs.push(r);
        }
    }
    Ok(runs)
}

pub fn summarize(runs: &[Run], variants: &[Variant]) -> Vec<Summary> {
    let of = |v: Variant, f: fn(&Run) -> f64| {
        let vals: Vec<f64> = runs.iter().filter(|r| r.variant == v).map(f).collect();
        Spread::of(&vals).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    };
    let plain_rps = of(Variant::Plain, |r| r.rps).median;
    let plain_p99 = of(Variant::Plain, |r| r.p99_ms).median;
    let plain_cpu = of(Variant::Plain, |r| r.cpu_us_per_request).median;
    variants
        .iter()
        .map(|&v| {
            let rps = of(v, |r| r.rps);
            let p99 = of(v, |r| r.p99_ms);
            let cpu = of(v, |r| r.cpu_us_per_request);
            Summary {
                variant: v,
                label: v.label(),
                rps,
                p50_ms: of(v, |r| r.p50_ms),
                p99_ms: p99,
                rps_ratio: rps.median / plain_rps,
                p99_added_ms: p99.median - plain_p99,
                cpu_ratio: plain_cpu / cpu.median,
                cpu_us: cpu,
            }
        })
        .collect()
}

pub fn table(sum: &[Summary], rounds: usize) -> Table {
    let mut t = Table::new(&[
        "variant",
        "req/s (median)",
        "spread (min-max)",
        "±",
        "ratio to plain",
        "p50 ms",
        "p99 ms",
        "p99 added ms",
        "Envoy CPU µs/req",
        "req per CPU-s, ratio to plain",
    ]);
    for s in sum {
        t.row(vec![
            s.label.to_string(),
            format!("{:.0}", s.rps.median),
            format!("{:.0}-{:.0}", s.rps.min, s.rps.max),
            format!("{:.1}%", s.rps.half_range_percent()),
            format!("{:.3}", s.rps_ratio),
            format!("{:.3}", s.p50_ms.median),
            format!("{:.3}", s.p99_ms.median),
            format!("{:+.3}", s.p99_added_ms),
            format!(
                "{:.1} ({:.1}-{:.1})",
                s.cpu_us.median, s.cpu_us.min, s.cpu_us.max
            ),
            format!("{:.3}", s.cpu_ratio),
        ]);
    }
    let _ = rounds;
    t
}

/// Where the overhead work files go.
pub fn work_dir(base: &Path) -> PathBuf {
    base.join("overhead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.01ms\n     90%    1.50ms\n     99%    2.10ms\n  85000 requests in 5.00s, 12.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  17000.12\nTransfer/sec:      2.40MB\n";
        let (rps, p50, p99, n) = parse_wrk(out).expect("parse");
        assert_eq!((rps, n), (17000.12, 3));
        assert!((p50 - 0.812).abs() < 1e-9 && (p99 - 2.1).abs() < 1e-9);
        assert_eq!(parse_wrk_requests(out), Some(85000));
    }
}
