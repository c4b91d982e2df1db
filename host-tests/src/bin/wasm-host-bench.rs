//! The filter's cost per request inside the wasmtime host: host calls per
//! request and wall time per request, for the healthy path, the incident
//! path (a host ejected, requests steered) and the breaker-open path
//! (local replies). Run with `make bench-host` (release build).
//!
//! Wall time includes the host's own work (header maps, property lookups)
//! and the ticks that fall due, so it is an upper bound of the filter's
//! cost, comparable between versions of the module on the same machine.

use std::time::{Duration, Instant};

use host_tests::wasm_host::{Exchange, PluginModule, Proxy};

const HOSTS: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
const WORKERS: usize = 2;

struct Path {
    name: &'static str,
    config: &'static str,
    /// Brings the proxy into the state to measure.
    prepare: fn(&mut Proxy),
    /// The request `n` of the measured loop.
    request: fn(u64) -> Exchange,
    /// What every measured request must show (checked once).
    check: fn(&Proxy, &host_tests::wasm_host::StreamState) -> Result<(), String>,
}

fn healthy(n: u64) -> Exchange {
    Exchange::new("demo", HOSTS[(n % 3) as usize], 200)
}

fn prepare_nothing(_: &mut Proxy) {}

fn prepare_incident(proxy: &mut Proxy) {
    for n in 0..30 {
        proxy.exchange((n % 2) as usize, &healthy(n)).unwrap();
    }
    // Five consecutive failures eject host 2.
    for _ in 0..5 {
        proxy
            .exchange(0, &Exchange::new("demo", HOSTS[1], 503))
            .unwrap();
    }
    proxy.advance(Duration::from_millis(200)).unwrap();
}

fn prepare_breaker(proxy: &mut Proxy) {
    for n in 0..40 {
        let host = HOSTS[(n % 3) as usize];
        proxy
            .exchange((n % 2) as usize, &Exchange::new("demo", host, 503))
            .unwrap();
    }
    proxy.advance(Duration::from_millis(200)).unwrap();
}

fn incident(n: u64) -> Exchange {
    // The load balancer honours the steering header: never host 2.
    Exchange::new("demo", [HOSTS[0], HOSTS[2]][(n % 2) as usize], 200)
}

fn steering_header(stream: &host_tests::wasm_host::StreamState) -> Option<String> {
    stream
        .header(
            host_tests::wasm_host::abi::MapType::RequestHeaders,
            "x-meshguard-upstream",
        )
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn main() {
    let module = PluginModule::from_env();
    let requests: u64 = std::env::var("MESHGUARD_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let paths = [
        Path {
            name: "healthy",
            config: "{}",
            prepare: prepare_nothing,
            request: healthy,
            check: |_, stream| match steering_header(stream) {
                None => Ok(()),
                Some(v) => Err(format!("steered to {v} with every host healthy")),
            },
        },
        Path {
            name: "incident (1 of 3 ejected, steering)",
            // Ejected for the whole run (200 s of virtual time).
            config: r#"{"ejection":{"baseEjectionTime":"300s"},"circuitBreaker":{"enabled":false}}"#,
            prepare: prepare_incident,
            request: incident,
            check: |proxy, stream| match steering_header(stream) {
                Some(v) if v != HOSTS[1] && !proxy.log_lines("Healthy -> Unhealthy").is_empty() => {
                    Ok(())
                }
                other => Err(format!(
                    "expected steering away from the ejected host, got {other:?}"
                )),
            },
        },
        Path {
            name: "breaker open (local reply)",
            config: r#"{"circuitBreaker":{"minRequests":20,"failurePercent":50,"openDuration":"3600s","maxOpenDuration":"3600s"}}"#,
            prepare: prepare_breaker,
            request: |n| Exchange::new("demo", HOSTS[(n % 3) as usize], 503),
            check: |_, stream| match &stream.local_reply {
                Some(reply) if reply.status == 503 => Ok(()),
                other => Err(format!("expected the breaker's local reply, got {other:?}")),
            },
        },
    ];
    println!(
        "meshguard per-request cost in the wasmtime host ({}, {WORKERS} workers, {requests} requests per path, 1 ms apart)",
        module.path().display()
    );
    println!(
        "{:<40} {:>14} {:>12}  breakdown (calls per request)",
        "path", "host calls/req", "ns/req"
    );
    for path in &paths {
        let mut proxy = Proxy::new(&module, WORKERS, path.config).expect("the plugin starts");
        assert!(
            proxy.configured.iter().all(|c| *c),
            "{}: configuration refused",
            path.name
        );
        (path.prepare)(&mut proxy);
        // Warm up (and check the path is the one we mean to measure).
        for n in 0..1_000 {
            let stream = proxy
                .exchange((n % WORKERS as u64) as usize, &(path.request)(n))
                .unwrap();
            proxy.advance(Duration::from_millis(1)).unwrap();
            if let Err(why) = (path.check)(&proxy, &stream) {
                panic!("{}: {why}", path.name);
            }
        }
        let before_calls = proxy.host_calls();
        let before: Vec<Vec<(&str, u64)>> = (0..WORKERS)
            .map(|vm| proxy.vm(vm).state().calls.by_name())
            .collect();
        let exchanges: Vec<Exchange> = (0..requests).map(path.request).collect();
        let started = Instant::now();
        for (n, exchange) in exchanges.iter().enumerate() {
            proxy.exchange(n % WORKERS, exchange).unwrap();
            proxy.advance(Duration::from_millis(1)).unwrap();
        }
        let elapsed = started.elapsed();
        let calls = proxy.host_calls() - before_calls;
        let mut breakdown: Vec<(&str, f64)> = Vec::new();
        for (vm, earlier) in before.iter().enumerate() {
            for (name, count) in proxy.vm(vm).state().calls.by_name() {
                let was = earlier
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(0, |(_, c)| *c);
                let per = (count - was) as f64 / requests as f64;
                match breakdown.iter_mut().find(|(n, _)| *n == name) {
                    Some(entry) => entry.1 += per,
                    None => breakdown.push((name, per)),
                }
            }
        }
        breakdown.retain(|(_, per)| *per >= 0.005);
        breakdown.sort_by(|a, b| b.1.total_cmp(&a.1));
        let detail: Vec<String> = breakdown
            .iter()
            .map(|(name, per)| format!("{}={per:.2}", name.trim_start_matches("proxy_")))
            .collect();
        println!(
            "{:<40} {:>14.2} {:>12.0}  {}",
            path.name,
            calls as f64 / requests as f64,
            elapsed.as_nanos() as f64 / requests as f64,
            detail.join(" ")
        );
    }
}
