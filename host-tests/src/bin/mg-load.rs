//! mg-load: the demo's client traffic (`make run`), open loop, one summary
//! line per target per second on stdout.
//!
//! ```text
//! mg-load --rate 50 [--status URL] [--parent-pid PID] mg=http://127.0.0.1:10000/ alone=http://127.0.0.1:10001/
//! ```
//! Every target gets `--rate` requests per second on schedule, whatever the
//! earlier ones are doing (a slow host does not slow the clients down, as in
//! real traffic), each on a new connection (`connection: close`) so they
//! spread over Envoy's workers like independent clients. Every second:
//!
//! ```text
//! tick 7 mg done=50 ok=48 fail=2 local=0 p50=1.2 p99=3.9 mean=1.4 up=u1:17,u2:16,u3:17
//! tick 7 alone done=50 ...
//! status 7 127.0.0.1:18082=Unhealthy/0 breaker=Closed
//! end 7
//! ```
//! `done`: requests that completed (answer or error) in that second; `ok`:
//! status 200; `fail`: anything else, transport errors and timeouts (5 s)
//! included; `local`: answers no upstream sent (no `x-upstream-name`:
//! Envoy's or meshguard's own replies); `p50`, `p99`, `mean`: latency in ms
//! from connect to the end of the answer; `up`: answers per upstream
//! (whatever their status). `status` (with `--status`): meshguard's status
//! endpoint, hosts of service `demo` with failures on record as
//! `address=State/weightPercent` (hosts it does not list are Healthy at
//! 100%) and its breaker state; `status 7 ?` when it did not answer.
//! The process exits when its stdout is closed, on SIGTERM/SIGINT, or when
//! `--parent-pid` exits.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_tests::http::{self, Response};
use tokio::time::{interval_at, timeout, MissedTickBehavior};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

struct Target {
    name: String,
    addr: SocketAddr,
    path: String,
}

struct Args {
    rate: u32,
    status: Option<(SocketAddr, String)>,
    parent_pid: Option<u32>,
    targets: Vec<Target>,
}

/// `http://HOST:PORT/PATH` with a numeric IPv4/IPv6 host: the demo's only.
fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse()
        .map_err(|e| format!("{url}: host must be IP:PORT ({e})"))?;
    Ok((addr, path.to_string()))
}

fn parse_args() -> Result<Args, String> {
    let mut rate = 50;
    let mut status = None;
    let mut parent_pid = None;
    let mut targets = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rate" => {
                let v = value()?;
                rate = v.parse().map_err(|e| format!("--rate {v}: {e}"))?;
                if !(1..=10_000).contains(&rate) {
                    return Err(format!("--rate {rate}: must be 1-10000"));
                }
            }
            "--status" => status = Some(parse_url(&value()?)?),
            "--parent-pid" => {
                let v = value()?;
                parent_pid = Some(v.parse().map_err(|e| format!("--parent-pid {v}: {e}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            t => {
                let (name, url) = t
                    .split_once('=')
                    .ok_or_else(|| format!("{t}: targets are NAME=URL"))?;
                let (addr, path) = parse_url(url)?;
                targets.push(Target {
                    name: name.to_string(),
                    addr,
                    path,
                });
            }
        }
    }
    if targets.is_empty() {
        return Err("no target".to_string());
    }
    Ok(Args {
        rate,
        status,
        parent_pid,
        targets,
    })
}

/// One completed request.
struct Outcome {
    status: u16,
    upstream: Option<String>,
    latency: Duration,
}

/// Outcomes of the current second, per target.
type Buckets = Arc<Mutex<Vec<Vec<Outcome>>>>;

async fn one_request(addr: SocketAddr, path: String) -> Outcome {
    let start = Instant::now();
    // Read to the end of the body by its length, not to the close: after a
    // local reply Envoy waits up to its delayed_close_timeout (1 s) for the
    // client to close first, which would count as a second of latency.
    let (status, upstream) = match timeout(REQUEST_TIMEOUT, http::get_async(addr, &path)).await {
        Ok(Ok(r)) => (r.status, r.header("x-upstream-name").map(str::to_string)),
        // Connection refused or reset, timeout: status 0, a failure.
        Ok(Err(_)) | Err(_) => (0, None),
    };
    Outcome {
        status,
        upstream,
        latency: start.elapsed(),
    }
}

/// Sends `rate` requests per second to target `i` for ever.
async fn drive(i: usize, addr: SocketAddr, path: String, rate: u32, buckets: Buckets) {
    let period = Duration::from_secs(1) / rate;
    let mut ticks = interval_at(tokio::time::Instant::now(), period);
    // Open loop: a late tick is sent at once, the schedule is kept.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        ticks.tick().await;
        let buckets = buckets.clone();
        let path = path.clone();
        tokio::spawn(async move {
            let o = one_request(addr, path).await;
            let mut b = buckets.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(v) = b.get_mut(i) {
                v.push(o);
            }
        });
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(tick: u64, name: &str, outcomes: &[Outcome]) -> String {
    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    let local = outcomes.iter().filter(|o| o.upstream.is_none()).count();
    let mut lat: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    lat.sort();
    let q = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            let k = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            ms(lat[k])
        }
    };
    let mean = if lat.is_empty() {
        0.0
    } else {
        ms(lat.iter().sum::<Duration>()) / lat.len() as f64
    };
    let mut ups: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        if let Some(u) = &o.upstream {
            *ups.entry(u.as_str()).or_default() += 1;
        }
    }
    let ups: Vec<String> = ups.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!(
        "tick {tick} {name} done={} ok={ok} fail={} local={local} p50={:.1} p99={:.1} mean={:.1} up={}",
        outcomes.len(),
        outcomes.len() - ok,
        q(0.50),
        q(0.99),
        mean,
        if ups.is_empty() {
            "-".to_string()
        } else {
            ups.join(",")
        }
    )
}

/// meshguard's status document as one line: see the module docs.
fn status_line(tick: u64, answer: Option<Response>) -> String {
    let doc = answer
        .filter(|a| a.status == 200)
        .and_then(|a| serde_json::from_slice::<serde_json::Value>(&a.body).ok());
    let Some(doc) = doc else {
        return format!("status {tick} ?");
    };
    let mut line = format!("status {tick}");
    let services = doc["services"].as_array().cloned().unwrap_or_default();
    // The demo's cluster; the breaker's fallback cluster may be listed too.
    if let Some(svc) = services.iter().find(|s| s["service"] == "demo") {
        for h in svc["hosts"].as_array().cloned().unwrap_or_default() {
            line.push_str(&format!(
                " {}={}/{}",
                h["address"].as_str().unwrap_or("?"),
                h["state"].as_str().unwrap_or("?"),
                h["weightPercent"].as_u64().unwrap_or(0)
            ));
        }
        if let Some(b) = svc["breaker"]["state"].as_str() {
            line.push_str(&format!(" breaker={b}"));
        }
    }
    line
}

async fn run(args: Args) -> ExitCode {
    let buckets: Buckets = Arc::new(Mutex::new(
        args.targets.iter().map(|_| Vec::new()).collect(),
    ));
    for (i, t) in args.targets.iter().enumerate() {
        tokio::spawn(drive(i, t.addr, t.path.clone(), args.rate, buckets.clone()));
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mg-load: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = tokio::time::Instant::now();
    let mut seconds = interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    seconds.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = seconds.tick() => {}
            _ = term.recv() => return ExitCode::SUCCESS,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
        tick += 1;
        let done: Vec<Vec<Outcome>> = {
            let mut b = buckets.lock().unwrap_or_else(|e| e.into_inner());
            b.iter_mut().map(std::mem::take).collect()
        };
        let mut out = String::new();
        for (t, outcomes) in args.targets.iter().zip(&done) {
            out.push_str(&summary(tick, &t.name, outcomes));
            out.push('\n');
        }
        if let Some((addr, path)) = &args.status {
            let answer = match timeout(STATUS_TIMEOUT, http::get_async(*addr, path)).await {
                Ok(Ok(a)) => Some(a),
                Ok(Err(e)) => {
                    eprintln!("mg-load: status {addr}{path}: {e}");
                    None
                }
                Err(_) => {
                    eprintln!("mg-load: status {addr}{path}: no answer within {STATUS_TIMEOUT:?}");
                    None
                }
            };
            out.push_str(&status_line(tick, answer));
            out.push('\n');
        }
        out.push_str(&format!("end {tick}\n"));
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (the demo script is gone) ends the run: Rust
        // ignores SIGPIPE, so the write fails instead of killing us.
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("mg-load: {e}");
            }
            eprintln!(
                "usage: mg-load [--rate N] [--status URL] [--parent-pid PID] NAME=http://IP:PORT/PATH..."
            );
            return ExitCode::from(2);
        }
    };
    if let Some(parent) = args.parent_pid {
        if let Err(e) = host_tests::process::die_with_parent(parent, libc::SIGTERM) {
            eprintln!("mg-load: --parent-pid: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Two threads: the requests and the once-a-second report never wait
    // on each other for long.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mg-load: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_summaries() {
        let o = |status, up: Option<&str>, ms| Outcome {
            status,
            upstream: up.map(str::to_string),
            latency: Duration::from_millis(ms),
        };
        let line = summary(
            3,
            "mg",
            &[o(200, Some("u1"), 1), o(503, Some("u2"), 3), o(0, None, 5)],
        );
        assert_eq!(
            line,
            "tick 3 mg done=3 ok=1 fail=2 local=1 p50=3.0 p99=5.0 mean=3.0 up=u1:1,u2:1"
        );
        assert_eq!(
            summary(1, "x", &[]),
            "tick 1 x done=0 ok=0 fail=0 local=0 p50=0.0 p99=0.0 mean=0.0 up=-"
        );
        assert_eq!(
            parse_url("http://127.0.0.1:10000/meshguard/status").expect("url"),
            (
                "127.0.0.1:10000".parse().expect("addr"),
                "/meshguard/status".to_string()
            )
        );
    }

    #[test]
    fn status_document_as_a_line() {
        let body = br#"{"services":[{"service":"demo","breaker":{"state":"Open"},"hosts":[{"address":"127.0.0.1:18082","state":"Unhealthy","weightPercent":0}]}]}"#;
        let a = Response {
            status: 200,
            headers: Vec::new(),
            body: body.to_vec(),
        };
        assert_eq!(
            status_line(4, Some(a)),
            "status 4 127.0.0.1:18082=Unhealthy/0 breaker=Open"
        );
        assert_eq!(status_line(5, None), "status 5 ?");
    }
}
