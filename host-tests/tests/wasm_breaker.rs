//! The circuit breaker of the shipped module in the wasmtime host: four
//! VMs sharing data like Envoy workers, virtual time, every stream driven
//! by hand so the probe limit can be checked across VMs.
//! `cargo test --test wasm_breaker -- --nocapture` prints the breaker's log.

mod common;

use std::time::Duration;

use common::{labelled, service_metric, Service, Started};
use host_tests::wasm_host::LocalReply;

const WORKERS: usize = 4;

/// Host grading off (no window is ever judged, no consecutive detector),
/// so the breaker alone decides what reaches the hosts.
const CONFIG: &str = r#"{
    "detection": {"windowSize": 1000, "minRequests": 1000, "consecutive5xxErrors": 0,
                  "consecutiveLocalOriginFailures": 0},
    "circuitBreaker": {"windowSize": 20, "minRequests": 10, "failurePercent": 50,
                       "openDuration": "2s", "maxOpenDuration": "60s",
                       "halfOpenRequests": 2, "closeAfterSuccesses": 3}
}"#;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// The default local reply: 503, `retry-after`, JSON naming the service.
/// Returns its retry-after seconds.
fn assert_circuit_open(reply: &LocalReply, service: &str) -> u64 {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.grpc_status, -1, "not a gRPC reply: {reply:?}");
    assert_eq!(reply.details, b"meshguard_circuit_open");
    assert_eq!(header(reply, "content-type"), Some("application/json"));
    let retry_after: u64 = header(reply, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("retry-after: {reply:?}"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "body is JSON ({e}): {:?}",
            String::from_utf8_lossy(&reply.body)
        )
    });
    assert_eq!(body["error"], "circuit open", "{body}");
    assert_eq!(body["service"], service, "{body}");
    assert_eq!(body["retryAfterSeconds"], retry_after, "{body}");
    retry_after
}

fn breaker_lines(svc: &Service) -> Vec<String> {
    svc.log_lines("circuit breaker:")
}

/// The whole story in one run: trip, open, half-open with the probe limit
/// across VMs, a failed probe (open again, twice as long), recovery.
#[test]
fn breaker_trips_holds_probes_across_vms_reopens_longer_and_closes() {
    let mut svc = Service::new(CONFIG, WORKERS, 3);
    let requests = service_metric("requests", "demo");
    let gateway = labelled("failures", "demo", "kind", "gateway");
    let local = service_metric("local_replies", "demo");
    let state = service_metric("breaker_state", "demo");
    let trips = service_metric("breaker_trips", "demo");

    // ---- 1. Every host answers 503. Requests on all four VMs in turn: the
    // 10th failure (minRequests) opens the breaker, 100% >= 50%.
    let mut sent = 0;
    while breaker_lines(&svc).is_empty() {
        assert!(sent < 50, "breaker never opened: {}", svc.dump());
        let started = svc.request(sent % WORKERS, None, |_| 503);
        assert!(started.local().is_none(), "local reply before the trip");
        sent += 1;
    }
    assert_eq!(sent, 10, "opened after {sent} failures");
    let opened = breaker_lines(&svc);
    assert_eq!(
        opened,
        ["meshguard: demo circuit breaker: Closed -> Open: failure 100% over 10 >= 50%; open for 2.000s"],
    );
    let tripped_at = svc.elapsed();

    // The other VMs learn it on their next tick (at most 100 ms).
    svc.advance(ms(100));
    let reached_before = svc.reached.clone();

    // ---- 2. Open: every request, on every VM, is answered by the filter.
    let mut retry_afters = Vec::new();
    for i in 0..36 {
        match svc.start(i % WORKERS, None, &[]) {
            Started::Local(reply) => retry_afters.push(assert_circuit_open(&reply, "demo")),
            Started::Upstream { .. } => panic!("request {i} reached a host while open"),
        }
        svc.advance(ms(50));
    }
    // 0.1 s to 1.9 s into a 2 s open period: 2, then 1 (rounded up, at least 1).
    assert_eq!(retry_afters.first(), Some(&2));
    assert_eq!(retry_afters.last(), Some(&1));
    assert!(
        retry_afters.windows(2).all(|w| w[0] >= w[1]),
        "{retry_afters:?}"
    );
    // A gRPC client gets UNAVAILABLE (14) as its status.
    let grpc = svc.start(2, None, &[("content-type", "application/grpc+proto")]);
    let grpc = grpc.local().expect("gRPC request answered locally").clone();
    assert_eq!(grpc.grpc_status, 14, "{grpc:?}");
    assert_eq!(grpc.details, b"meshguard_circuit_open");
    assert!(header(&grpc, "retry-after").is_some(), "{grpc:?}");
    assert_eq!(
        svc.reached, reached_before,
        "no request reached a host while open"
    );

    // Local replies are not requests and not failures: the metrics (added
    // on each VM's 100 ms tick) count 10 upstream failures and 37 local
    // replies. (Now exactly at the end of the open period.)
    svc.advance(ms(100));
    assert_eq!(
        (svc.must(&requests), svc.must(&gateway), svc.must(&local)),
        (10, 10, 37),
        "{}",
        svc.dump()
    );
    // The ticks at the end of the open period (2 s after the trip, all VMs
    // tick on the 100 ms grid) already moved the shared record to
    // half-open: gauge 2 (0 closed, 1 open, 2 half-open).
    assert_eq!((svc.must(&state), svc.must(&trips)), (2, 1));

    // ---- 3. The open period ends: half-open. Six streams started on the
    // four VMs without completing: exactly halfOpenRequests (2) get through.
    let now = svc.elapsed();
    svc.advance(tripped_at + ms(2000) - now);
    let mut probes = Vec::new();
    let mut refused = 0;
    for vm in [0, 1, 2, 3, 0, 1] {
        match svc.start(vm, None, &[]) {
            Started::Upstream { stream, host, .. } => probes.push((stream, host)),
            Started::Local(reply) => {
                assert_eq!(assert_circuit_open(&reply, "demo"), 1);
                refused += 1;
            }
        }
    }
    assert_eq!((probes.len(), refused), (2, 4), "probes across VMs");
    assert_ne!(probes[0].0.vm, probes[1].0.vm, "probes from two VMs");
    assert_eq!(
        svc.log_lines("Open -> HalfOpen").len(),
        1,
        "{:?}",
        breaker_lines(&svc)
    );

    // ---- 4. A probe fails: open again, for twice as long (4 s).
    let (first, host) = probes[0];
    svc.complete(first, host, 503);
    let reopened = svc.log_lines("HalfOpen -> Open");
    assert_eq!(
        reopened,
        ["meshguard: demo circuit breaker: HalfOpen -> Open: a half-open probe failed; open for 4.000s"]
    );
    let reopened_at = svc.elapsed();
    // The other probe's answer arrives while open: it changes nothing.
    let (second, host) = probes[1];
    svc.complete(second, host, 503);
    assert_eq!(breaker_lines(&svc).len(), 3, "{:?}", breaker_lines(&svc));
    let reply = svc.start(3, None, &[]);
    assert_eq!(assert_circuit_open(reply.local().expect("open"), "demo"), 4);
    // Still open 3.9 s later, on every VM.
    svc.advance(ms(3900));
    for vm in 0..WORKERS {
        let reply = svc.start(vm, None, &[]);
        assert_eq!(
            assert_circuit_open(reply.local().expect("still open"), "demo"),
            1
        );
    }

    // ---- 5. The hosts have recovered. Half-open again after 4 s; probes
    // succeed, and after closeAfterSuccesses (3) the breaker closes.
    let now = svc.elapsed();
    svc.advance(reopened_at + ms(4000) - now);
    let a = svc.start(1, None, &[]).upstream().expect("probe 1");
    let b = svc.start(2, None, &[]).upstream().expect("probe 2");
    let c = svc.start(3, None, &[]);
    assert_eq!(
        assert_circuit_open(c.local().expect("slots taken"), "demo"),
        1
    );
    svc.complete(a.0, a.1, 200);
    svc.complete(b.0, b.1, 200);
    assert!(
        svc.log_lines("-> Closed").is_empty(),
        "closed after 2 successes"
    );
    let c = svc
        .start(0, None, &[])
        .upstream()
        .expect("probe 3: a slot is free");
    svc.complete(c.0, c.1, 200);
    assert_eq!(
        svc.log_lines("-> Closed"),
        ["meshguard: demo circuit breaker: HalfOpen -> Closed: 3 half-open probes succeeded"]
    );

    // Traffic flows again, on every VM, at once (the other VMs' half-open
    // view makes them ask shared data, which says Closed).
    let reached = svc.reached.iter().sum::<u64>();
    for i in 0..40 {
        let started = svc.request(i % WORKERS, None, |_| 200);
        assert!(
            started.local().is_none(),
            "request {i} refused after closing"
        );
    }
    assert_eq!(svc.reached.iter().sum::<u64>(), reached + 40);
    // Round robin over all three hosts.
    svc.advance(ms(200));
    let transitions = breaker_lines(&svc);
    println!("{}", transitions.join("\n"));
    println!("{}", svc.dump());

    // Metrics: 10 + 2 failed probes + 3 good probes + 40 upstream requests;
    // 12 failures; every local reply counted; two trips; closed.
    assert_eq!(
        (
            svc.must(&requests),
            svc.must(&gateway),
            svc.must(&local),
            svc.must(&trips),
            svc.must(&state),
        ),
        (55, 12, svc.local_replies.len() as i64, 2, 0),
        "{}",
        svc.dump()
    );
    assert_eq!(svc.local_replies.len(), 37 + 4 + 1 + 4 + 1);
    assert_eq!(
        transitions
            .iter()
            .map(|l| l.split(": ").nth(2).unwrap_or(""))
            .collect::<Vec<_>>(),
        [
            "Closed -> Open",
            "Open -> HalfOpen",
            "HalfOpen -> Open",
            "Open -> HalfOpen",
            "HalfOpen -> Closed"
        ]
    );
}

/// A probe whose stream never reports back (Envoy dropped it) frees its
/// slot after openDuration, so the breaker cannot stay half-open forever.
#[test]
fn a_lost_probe_frees_its_slot_after_the_open_duration() {
    let mut svc = Service::new(CONFIG, 2, 3);
    for i in 0..10 {
        svc.request(i % 2, None, |_| 503);
    }
    svc.advance(ms(2100));
    let lost: Vec<_> = (0..2)
        .map(|vm| svc.start(vm, None, &[]).upstream().expect("probe"))
        .collect();
    assert_eq!(lost.len(), 2);
    // Slots taken; 1.9 s later still taken.
    svc.advance(ms(1900));
    assert!(svc.start(0, None, &[]).local().is_some());
    // After openDuration (2 s) the lost probes' slots are free again.
    svc.advance(ms(200));
    let probe = svc.start(1, None, &[]).upstream().expect("slot freed");
    svc.complete(probe.0, probe.1, 200);
    assert!(svc.log_lines("-> Closed").is_empty());
}

/// Every worker must honour the shared state, including one that has not
/// served the service yet (a new worker, or one whose connections never
/// went there): its requests must not reach a host while the breaker is
/// open, nor an ejected host.
///
/// Every worker takes on the records others wrote on its next tick, so
/// here VM 1's first request, 0.6 s into a 2 s open period, gets the
/// local reply.
#[test]
fn a_worker_that_never_saw_the_service_honours_its_state() {
    let mut svc = Service::new(CONFIG, 2, 3);
    for _ in 0..10 {
        svc.request(0, None, |_| 503);
    }
    assert_eq!(svc.log_lines("Closed -> Open").len(), 1);
    svc.advance(ms(600));
    let started = svc.start(1, None, &[]);
    assert!(
        started.local().is_some(),
        "VM 1's first request reached a host while the breaker was open: {started:?}"
    );
}
