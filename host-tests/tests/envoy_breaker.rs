//! The circuit breaker, per-VirtualService overrides and header rules in the
//! real Envoy, on the demo config's routes:
//!
//! - `/` (route `demo`), `/payments` and `/batch` (routes carrying istiod's
//!   metadata for VirtualServices `shop/payments` and `shop/batch`), all to
//!   cluster `demo` (u1, u2, u3);
//! - any request with `x-meshguard-fallback` to cluster `fallback` (fb).
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Logs, the
//! access log (`envoy.stderr`: code, flags, upstream, details, route, cluster)
//! and the rendered config stay in target/tmp/<test name>/. Run alone with
//! `cargo test -p host-tests --test envoy_breaker -- --nocapture` to see the
//! measured numbers. The tests run one at a time (they measure latency and
//! count probes against wall-clock periods).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use host_tests::fixture::{ThreeUpstreams, FALLBACK_NAME};
use host_tests::http;
use host_tests::traffic::Tally;
use host_tests::Behaviour;
use host_tests::Harness;

/// A breaker that trips after 10 calls at 50% failures and stays open 2 s,
/// then 4 s, then 8 s; two probes at a time, two successes close it.
const BREAKER_CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","warmupDuration":"2s"},"circuitBreaker":{"windowSize":20,"minRequests":10,"failurePercent":50,"openDuration":"2s","maxOpenDuration":"8s","halfOpenRequests":2,"closeAfterSuccesses":2}}"#;
/// [`BREAKER_CONFIG`] in fallback mode.
const FALLBACK_CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","warmupDuration":"2s"},"circuitBreaker":{"windowSize":20,"minRequests":10,"failurePercent":50,"openDuration":"2s","maxOpenDuration":"8s","halfOpenRequests":2,"closeAfterSuccesses":2,"mode":"fallback"}}"#;
/// From [`BREAKER_CONFIG`].
const OPEN_DURATION: Duration = Duration::from_secs(2);
const HALF_OPEN_REQUESTS: u64 = 2;
/// What every upstream does while the service is down.
const UPSTREAM_LATENCY_MS: u64 = 30;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy flushes its log every 200 ms; a line is written within about
/// 100 ms (one tick) of its event.
const LOG_WAIT: Duration = Duration::from_secs(2);
const U2: usize = 1;

/// One test at a time: several Envoys on a 2-core box would turn latency
/// and timing checks into load tests.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one client request got, and how long it took (connect to last byte).
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    took: Duration,
    error: Option<String>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The mg-upstream that answered; None for Envoy's or meshguard's own replies.
    fn upstream(&self) -> Option<&str> {
        self.header("x-upstream-name")
    }

    /// meshguard's local reply: 503 + JSON "circuit open" + retry-after,
    /// not from any upstream.
    fn is_breaker_reply(&self) -> bool {
        self.status == 503
            && self.upstream().is_none()
            && self.header("retry-after").is_some()
            && self.body.contains("circuit open")
    }

    fn outcome(&self) -> host_tests::traffic::Outcome {
        host_tests::traffic::Outcome {
            status: self.status,
            upstream: self.upstream().map(str::to_string),
            upstream_saw_steering: None,
            error: self.error.clone(),
        }
    }
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let started = Instant::now();
    let r = http::request(addr, method, path, headers, body, REQUEST_TIMEOUT);
    let took = started.elapsed();
    match r {
        Ok(r) => Reply {
            status: r.status,
            body: r.body_text(),
            headers: r.headers,
            took,
            error: None,
        },
        Err(e) => Reply {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            took,
            error: Some(e.to_string()),
        },
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], &[])
}

fn tally_of<'a>(replies: impl IntoIterator<Item = &'a Reply>) -> Tally {
    let mut t = Tally::default();
    for r in replies {
        t.add(&r.outcome());
    }
    t
}

/// `p`-th percentile (0-100) of `d`, nearest rank.
fn percentile(d: &[Duration], p: usize) -> Duration {
    let mut v = d.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) * p / 100).min(v.len() - 1)]
}

fn total_requests(s: &ThreeUpstreams) -> u64 {
    (0..3).map(|i| s.requests(i)).sum()
}

fn set_all(s: &ThreeUpstreams, b: &Behaviour) {
    for i in 0..3 {
        s.set_behaviour(i, b);
    }
}

/// Baseline: every upstream known and healthy, every request 200.
fn baseline(s: &ThreeUpstreams, path: &str, n: usize) {
    let replies: Vec<Reply> = (0..n).map(|_| get(s.listener(), path)).collect();
    let t = tally_of(&replies);
    println!("baseline {path}: {t}");
    s.check(t.with_status(200) == n as u64, || {
        format!("baseline {path}: every request should get 200: {t}")
    });
}

/// Sends `GET /` until `done` accepts a reply (at most `limit` requests);
/// returns the replies sent, the last one accepted.
fn until(
    s: &ThreeUpstreams,
    limit: usize,
    pace: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Option<Vec<Reply>> {
    let mut replies = Vec::new();
    while replies.len() < limit {
        let r = get(s.listener(), "/");
        let ok = done(&r);
        replies.push(r);
        if ok {
            return Some(replies);
        }
        std::thread::sleep(pace);
    }
    None
}

/// Sends `GET /` until `n` replies in a row satisfy `pred` (at most `limit`).
fn until_in_a_row(
    s: &ThreeUpstreams,
    n: usize,
    limit: usize,
    pred: impl Fn(&Reply) -> bool,
) -> Option<Vec<Reply>> {
    let mut replies = Vec::new();
    let mut run = 0;
    while replies.len() < limit {
        let r = get(s.listener(), "/");
        run = if pred(&r) { run + 1 } else { 0 };
        replies.push(r);
        if run == n {
            return Some(replies);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Upper bound on the probes a failing service can receive in `window`
/// while its breaker is open or half-open. Half-open periods are separated
/// by open periods of at least `openDuration`, so at most
/// `1 + window / openDuration` of them overlap the window; each lets at most
/// `halfOpenRequests` probes through, since the first failing probe opens the
/// breaker again.
fn probe_bound(window: Duration) -> u64 {
    HALF_OPEN_REQUESTS * (1 + (window.as_millis() / OPEN_DURATION.as_millis()) as u64)
}

/// Heavy on purpose: drives the whole incident. Takes about 8 s.
#[test]
fn breaker_opens_answers_fast_probes_and_closes() {
    let _serial = serial();
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_breaker_local_reply",
        BREAKER_CONFIG,
    );
    let listener = s.listener();
    baseline(&s, "/", 30);

    // a. The whole service fails, slowly. The breaker must trip after about
    // minRequests calls and answer locally.
    let down = Behaviour {
        latency_ms: UPSTREAM_LATENCY_MS,
        ..Behaviour::status(503)
    };
    set_all(&s, &down);
    let tripping = until(&s, 200, Duration::ZERO, Reply::is_breaker_reply);
    let Some(tripping) = tripping else {
        s.fail(
            "every upstream answers 503 but the breaker never answered locally within 200 requests",
        );
    };
    let opened_at = Instant::now();
    let first = tripping.last().cloned().expect("at least one reply");
    println!(
        "a. breaker reply after {} requests ({}): {} retry-after {:?} body {}",
        tripping.len(),
        tally_of(&tripping),
        first.status,
        first.header("retry-after"),
        first.body
    );
    // What clients waited for while the breaker was still closed.
    let slow: Vec<Duration> = tripping
        .iter()
        .filter(|r| r.upstream().is_some())
        .map(|r| r.took)
        .collect();
    let upstream_p50 = percentile(&slow, 50);
    println!(
        "a. failing upstream answers before the breaker opened: {} (median {upstream_p50:?})",
        slow.len()
    );
    s.check(tripping.len() <= 40, || {
        format!(
            "the breaker (windowSize 20, minRequests 10, 50%) took {} requests to open: {}",
            tripping.len(),
            tally_of(&tripping)
        )
    });
    let body: serde_json::Value = serde_json::from_str(&first.body).unwrap_or_else(|e| {
        s.fail(&format!(
            "local reply body is not JSON ({e}): {}",
            first.body
        ))
    });
    s.check(
        body["error"] == "circuit open"
            && body["service"] == "demo"
            && first.header("content-type") == Some("application/json"),
        || format!("unexpected local reply: {first:?}"),
    );
    let retry_after: u64 = first
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    s.check((1..=2).contains(&retry_after), || {
        format!("retry-after should be the open period left (1-2 s): {first:?}")
    });

    // Both Envoy workers learn the state within a tick (100 ms): wait for
    // 10 local replies in a row before measuring.
    let Some(settling) = until_in_a_row(&s, 10, 300, Reply::is_breaker_reply) else {
        s.fail("the breaker answered once but not consistently (10 in a row within 300 requests)");
    };
    println!(
        "a. settled after {} more: {}",
        settling.len(),
        tally_of(&settling)
    );

    // gRPC clients get a trailers-only UNAVAILABLE, not an HTTP 503. A
    // request landing in a half-open period would be a probe instead: the
    // open period has well over a second to go here, and a retry covers it.
    let grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let grpc = (0..3)
        .map(|_| send(listener, "POST", "/", &grpc_headers, &[0, 0, 0, 0, 0]))
        .find(|r| r.upstream().is_none())
        .unwrap_or_else(|| {
            s.fail("three gRPC requests in a row reached an upstream while the breaker was open")
        });
    println!(
        "a. gRPC while open: {} grpc-status {:?} grpc-message {:?} content-type {:?}",
        grpc.status,
        grpc.header("grpc-status"),
        grpc.header("grpc-message"),
        grpc.header("content-type")
    );
    s.check(grpc.status == 200 && grpc.header("grpc-status") == Some("14"), || {
        format!("a gRPC request should get HTTP 200 with grpc-status 14 (UNAVAILABLE) in the headers: {grpc:?}")
    });

    // b. Open: measure for 3 s. Client latency is the local reply's, and the
    // upstreams see nothing but half-open probes (the first open period ends
    // inside the window, so at least one probe shows up).
    let measure = Duration::from_secs(3);
    let before = total_requests(&s);
    let window_start = Instant::now();
    let mut open_replies = Vec::new();
    while window_start.elapsed() < measure {
        open_replies.push(get(listener, "/"));
        std::thread::sleep(Duration::from_millis(2));
    }
    let window = window_start.elapsed();
    let upstream_got = total_requests(&s) - before;
    let local: Vec<Duration> = open_replies
        .iter()
        .filter(|r| r.is_breaker_reply())
        .map(|r| r.took)
        .collect();
    let probes: Vec<&Reply> = open_replies
        .iter()
        .filter(|r| r.upstream().is_some())
        .collect();
    let others = open_replies.len() - local.len() - probes.len();
    let (p50, p90, p99) = (
        percentile(&local, 50),
        percentile(&local, 90),
        percentile(&local, 99),
    );
    let bound = probe_bound(window);
    println!(
        "b. open for {window:?} (from {:?} after opening): {} requests, {} local replies \
         (p50 {p50:?}, p90 {p90:?}, p99 {p99:?}), {} probes seen by clients, \
         upstreams received {upstream_got} (bound {bound}), {others} other",
        window_start.duration_since(opened_at),
        open_replies.len(),
        local.len(),
        probes.len()
    );
    s.check(others == 0, || {
        format!(
            "while open every request should get the local reply or be a probe: {}",
            tally_of(&open_replies)
        )
    });
    s.check(p50 < Duration::from_millis(3), || {
        format!("local replies should take about a millisecond: median {p50:?} (p90 {p90:?})")
    });
    s.check(
        p90 < Duration::from_millis(UPSTREAM_LATENCY_MS / 3) && p50 * 10 < upstream_p50,
        || {
            format!(
                "local replies should be clearly faster than the upstreams' {UPSTREAM_LATENCY_MS} ms \
                 (failing answers took a median {upstream_p50:?}): p50 {p50:?}, p90 {p90:?}"
            )
        },
    );
    s.check(upstream_got <= bound, || {
        format!(
            "upstreams received {upstream_got} requests in {window:?} of open breaker; \
             half-open probes allow at most {bound} ({HALF_OPEN_REQUESTS} per half-open period, \
             periods at least {OPEN_DURATION:?} apart)"
        )
    });
    s.check(
        upstream_got >= 1 && upstream_got == probes.len() as u64,
        || {
            format!(
            "the first open period (2 s) ends inside the {window:?} window: upstreams should get \
             probes, exactly those the clients saw answered by an upstream; they got \
             {upstream_got}, clients saw {}",
            probes.len()
        )
        },
    );
    for needle in [
        "circuit breaker: Closed -> Open",
        "circuit breaker: Open -> HalfOpen",
        "circuit breaker: HalfOpen -> Open",
    ] {
        let line = s.wait_for_log(LOG_WAIT, |l| l.contains(needle));
        s.check(line.is_some(), || {
            format!("no `{needle}` line in Envoy's log")
        });
        println!("b. {}", line.unwrap_or_default());
    }

    // c. Upstreams recover. The breaker is in its second open period (4 s);
    // when it ends, two successful probes close it.
    set_all(&s, &Behaviour::healthy());
    let healed_at = Instant::now();
    let mut recovery: Vec<Reply> = Vec::new();
    let mut first_ok = None;
    let mut closed = None;
    while closed.is_none() && healed_at.elapsed() < Duration::from_secs(12) {
        for _ in 0..10 {
            let r = get(listener, "/");
            if first_ok.is_none() && r.status == 200 && r.upstream().is_some() {
                first_ok = Some(healed_at.elapsed());
            }
            recovery.push(r);
            std::thread::sleep(Duration::from_millis(5));
        }
        closed = s
            .meshguard_lines("circuit breaker: HalfOpen -> Closed")
            .into_iter()
            .next();
    }
    let Some(closed) = closed else {
        s.fail(&format!(
            "upstreams healthy again for {:?}, but no `HalfOpen -> Closed` line (first 200 after {first_ok:?}): {}",
            healed_at.elapsed(),
            tally_of(&recovery)
        ));
    };
    println!(
        "c. healed: first 200 after {first_ok:?}, closed seen after {:?} ({})\nc. {closed}",
        healed_at.elapsed(),
        tally_of(&recovery)
    );
    // Closed: every request reaches an upstream again.
    std::thread::sleep(Duration::from_millis(200));
    let after: Vec<Reply> = (0..60).map(|_| get(listener, "/")).collect();
    let t = tally_of(&after);
    println!("c. closed: {t}");
    s.check(
        t.with_status(200) == 60 && after.iter().all(|r| r.upstream().is_some()),
        || format!("after the breaker closed every request should get 200 from an upstream: {t}"),
    );
}

/// mode "fallback": while open, requests carry x-meshguard-fallback and
/// Envoy re-routes them to the `fallback` cluster. About 3 s.
#[test]
fn fallback_mode_reroutes_while_open() {
    let _serial = serial();
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_breaker_fallback",
        FALLBACK_CONFIG,
    );
    let listener = s.listener();
    baseline(&s, "/", 30);
    s.check(
        s.fallback.admin.stats().map(|st| st.requests).ok() == Some(0),
        || "the fallback upstream got traffic while the service was healthy".to_string(),
    );

    set_all(
        &s,
        &Behaviour {
            latency_ms: UPSTREAM_LATENCY_MS,
            ..Behaviour::status(503)
        },
    );
    let from_fallback = |r: &Reply| r.status == 200 && r.upstream() == Some(FALLBACK_NAME);
    let Some(tripping) = until(&s, 200, Duration::ZERO, from_fallback) else {
        s.fail(&format!(
            "every upstream answers 503 but no request reached the fallback cluster within 200 requests \
             (is Envoy re-routing after meshguard sets x-meshguard-fallback?); access log, last 10:\n{}",
            s.envoy.access_log_matching(|_| true, 10)
        ));
    };
    println!(
        "a. first fallback answer after {} requests: {}",
        tally_of(&tripping).total,
        tally_of(&tripping)
    );
    let Some(settling) = until_in_a_row(&s, 10, 300, from_fallback) else {
        s.fail("the fallback answered once but not consistently (10 in a row within 300 requests)");
    };
    println!("a. settled after {} more", settling.len());

    // While open: clients get 200 from fb; u1-u3 get at most the probes.
    let fb_before = s.fallback.admin.stats().map(|st| st.requests).unwrap_or(0);
    let before = total_requests(&s);
    let started = Instant::now();
    let open: Vec<Reply> = (0..200).map(|_| get(listener, "/")).collect();
    let window = started.elapsed();
    let fb_got = s.fallback.admin.stats().map(|st| st.requests).unwrap_or(0) - fb_before;
    let demo_got = total_requests(&s) - before;
    let t = tally_of(&open);
    let bound = probe_bound(window);
    println!(
        "b. open ({window:?}): {t}; fb received {fb_got}, u1-u3 received {demo_got} (probe bound {bound})"
    );
    let probes = open
        .iter()
        .filter(|r| r.upstream().is_some_and(|u| u != FALLBACK_NAME))
        .count() as u64;
    s.check(
        t.served_by(FALLBACK_NAME) + probes == 200 && fb_got == t.served_by(FALLBACK_NAME),
        || format!("while open every request but the probes should be served by {FALLBACK_NAME}: {t}; fb received {fb_got}"),
    );
    s.check(t.served_by(FALLBACK_NAME) >= 190, || {
        format!("while open nearly every request should reach the fallback: {t}")
    });
    s.check(demo_got <= bound && demo_got == probes, || {
        format!(
            "u1-u3 received {demo_got} requests while open (probes seen {probes}, bound {bound})"
        )
    });
    // Envoy's access log names the route and cluster that served them.
    std::thread::sleep(Duration::from_millis(300));
    let routed = s
        .envoy
        .access_log_matching(|l| l.ends_with(" fallback fallback"), 1000);
    println!(
        "b. access log: {} requests on route `fallback` / cluster `fallback`, e.g.\n{}",
        routed.lines().count(),
        routed.lines().last().unwrap_or_default()
    );
    s.check(routed.lines().count() as u64 >= fb_got, || {
        format!(
            "the access log should show route `fallback`, cluster `fallback` for the {fb_got} fallback answers; \
             last lines:\n{}",
            s.envoy.access_log_matching(|_| true, 10)
        )
    });
    let line = s.wait_for_log(LOG_WAIT, |l| l.contains("circuit breaker: Closed -> Open"));
    s.check(line.is_some(), || {
        "no `circuit breaker: Closed -> Open` line".to_string()
    });
}

/// Two VirtualServices of one cluster with different thresholds: u2 failing
/// 40% is ejected for `shop/payments` (unhealthy above 20%) and keeps its
/// share of `shop/batch` (unhealthy above 90%). About 1 s.
#[test]
fn virtual_services_get_their_own_thresholds() {
    let _serial = serial();
    let config = r#"{
        "detection": {"windowSize": 20, "minRequests": 10},
        "ejection": {"baseEjectionTime": "10s", "maxEjectionTime": "30s"},
        "circuitBreaker": {"enabled": false},
        "steering": {"discoveryPercent": 0},
        "overrides": [
            {"virtualService": "shop/payments",
             "detection": {"degradedFailurePercent": 10, "unhealthyFailurePercent": 20, "recoveredFailurePercent": 5,
                           "consecutive5xxErrors": 0, "windowSize": 20, "minRequests": 10}},
            {"virtualService": "shop/batch",
             "detection": {"degradedFailurePercent": 60, "unhealthyFailurePercent": 90, "recoveredFailurePercent": 20,
                           "consecutive5xxErrors": 0}}
        ]
    }"#;
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_breaker_virtual_services",
        config,
    );
    let listener = s.listener();
    let u2_addr = s.upstream(U2).data.to_string();
    // Both scopes learn all three hosts.
    baseline(&s, "/payments", 30);
    baseline(&s, "/batch", 30);

    // u2 turns grey: 40% of its answers are 503. Payments traffic ejects it.
    s.set_behaviour(U2, &Behaviour::grey(503, 40));
    let payments_ejection = |l: &str| {
        l.contains("shop/payments")
            && l.contains(&format!("host {u2_addr}:"))
            && l.contains("-> Unhealthy")
    };
    let mut detection = Tally::default();
    let mut line = None;
    while detection.total < 300 && line.is_none() {
        for _ in 0..10 {
            detection.add(&get(listener, "/payments").outcome());
        }
        line = s
            .meshguard_lines("")
            .into_iter()
            .find(|l| payments_ejection(l));
    }
    let Some(line) = line.or_else(|| s.wait_for_log(LOG_WAIT, payments_ejection)) else {
        s.fail(&format!(
            "u2 fails 40% of /payments requests (threshold 20%) but was not ejected for shop/payments: {detection}"
        ));
    };
    println!("a. detection on /payments: {detection}\na. {line}");
    // The other worker picks the ejection up on its next tick (100 ms).
    std::thread::sleep(Duration::from_millis(250));

    // Measured, interleaved: /payments never reaches u2, /batch keeps
    // sending it about a third.
    let before = s.requests(U2);
    let started = Instant::now();
    let mut payments = Tally::default();
    let mut batch = Tally::default();
    for _ in 0..150 {
        payments.add(&get(listener, "/payments").outcome());
        batch.add(&get(listener, "/batch").outcome());
    }
    let u2_got = s.requests(U2) - before;
    println!(
        "b. interleaved ({:?}): /payments {payments}\nb. /batch {batch}\nb. u2 received {u2_got}",
        started.elapsed()
    );
    s.check(payments.served_by("u2") == 0 && payments.with_status(200) == 150, || {
        format!("u2 is ejected for shop/payments: /payments must not reach it and must get only 200s: {payments}")
    });
    s.check(u2_got == batch.served_by("u2"), || {
        format!("u2 received {u2_got} requests, but /batch clients saw it answer {} (/payments: {payments})", batch.served_by("u2"))
    });
    s.check(batch.share("u2") >= 0.20, || {
        format!("shop/batch tolerates 40% failures: u2 should keep about a third of /batch (>= 20%): {batch}")
    });
    std::thread::sleep(Duration::from_millis(300));
    let batch_lines: Vec<String> = s
        .transitions(U2)
        .into_iter()
        .filter(|l| l.contains("shop/batch"))
        .collect();
    println!("c. u2 transitions: {:#?}", s.transitions(U2));
    s.check(
        !batch_lines.iter().any(|l| l.contains("-> Unhealthy")),
        || format!("u2 must never be ejected in the shop/batch scope: {batch_lines:#?}"),
    );
}

/// Response header rules with placeholders, and request ids. About 1 s.
#[test]
fn header_rules_mark_responses() {
    let _serial = serial();
    // Degrades above 30% but never ejects (unhealthy above 100%).
    let config = r#"{
        "detection": {"windowSize": 20, "minRequests": 10, "unhealthyFailurePercent": 100, "consecutive5xxErrors": 0},
        "circuitBreaker": {"enabled": false},
        "headers": {
            "requestId": {"generate": true},
            "response": [
                {"op": "set", "name": "x-meshguard-host-state", "value": "{hostState}"},
                {"op": "set", "name": "x-meshguard-upstream-host", "value": "{upstreamHost}"}
            ]
        }
    }"#;
    let s = ThreeUpstreams::start(host_tests::test_paths!(), "envoy_breaker_headers", config);
    let listener = s.listener();
    let addr_of = |name: &str| {
        s.ups
            .iter()
            .find(|u| u.name == name)
            .map(|u| u.data.to_string())
    };

    // a. Healthy: every response names its host and says Healthy; every
    // request reached the upstream with a fresh request id (Envoy's own
    // generation is off in the demo config).
    let replies: Vec<Reply> = (0..60).map(|_| get(listener, "/")).collect();
    // Known filter gap: a worker that has not yet recorded an outcome for the
    // service renders {hostState} empty (Worker::host_state finds no unit), so
    // the first response on each of Envoy's 2 workers may carry "".
    let unknown = replies
        .iter()
        .filter(|r| r.header("x-meshguard-host-state") == Some(""))
        .count();
    println!("a. responses with an empty host state (first per worker): {unknown}");
    s.check(unknown <= 2, || {
        format!("{unknown} responses carried an empty x-meshguard-host-state (at most one per worker expected)")
    });
    let mut ids = std::collections::BTreeSet::new();
    for r in &replies {
        let upstream = r.upstream().unwrap_or_default();
        s.check(
            r.status == 200
                && matches!(r.header("x-meshguard-host-state"), Some("Healthy" | ""))
                && r.header("x-meshguard-upstream-host") == addr_of(upstream).as_deref(),
            || format!("healthy: want 200, x-meshguard-host-state Healthy and the answering host's address: {r:?}"),
        );
        let id = r.header("x-upstream-saw-request-id").unwrap_or_default();
        s.check(is_uuid(id), || {
            format!("the upstream should see a generated UUID-style x-request-id: {r:?}")
        });
        ids.insert(id.to_string());
    }
    println!(
        "a. healthy: {}; {} distinct request ids, e.g. {:?}; first reply headers: {:?}",
        tally_of(&replies),
        ids.len(),
        ids.iter().next(),
        replies[0].headers
    );
    s.check(ids.len() == replies.len(), || {
        format!(
            "request ids should be unique: {} for {} requests",
            ids.len(),
            replies.len()
        )
    });
    // A client's own request id is kept.
    let own = send(
        listener,
        "GET",
        "/",
        &[("x-request-id", "client-chosen-id")],
        &[],
    );
    s.check(
        own.header("x-upstream-saw-request-id") == Some("client-chosen-id"),
        || format!("a client's x-request-id must reach the upstream unchanged: {own:?}"),
    );

    // b. u2 fails 50%: Degraded (above 30%), never ejected. Its responses,
    // including its 503s, say Degraded; u1 and u3 stay Healthy.
    s.set_behaviour(U2, &Behaviour::grey(503, 50));
    let degraded = |r: &Reply| {
        r.upstream() == Some("u2") && r.header("x-meshguard-host-state") == Some("Degraded")
    };
    let Some(seen) = until(&s, 300, Duration::ZERO, degraded) else {
        s.fail("u2 fails 50% (degraded above 30%) but no response said x-meshguard-host-state: Degraded");
    };
    println!(
        "b. first Degraded mark after {} requests: {}",
        seen.len(),
        tally_of(&seen)
    );
    // Both workers know within a tick.
    std::thread::sleep(Duration::from_millis(250));
    let replies: Vec<Reply> = (0..150).map(|_| get(listener, "/")).collect();
    let t = tally_of(&replies);
    let mut states = std::collections::BTreeMap::<(String, String), u32>::new();
    for r in &replies {
        *states
            .entry((
                r.upstream().unwrap_or("(none)").to_string(),
                r.header("x-meshguard-host-state")
                    .unwrap_or("(none)")
                    .to_string(),
            ))
            .or_default() += 1;
    }
    println!("b. degraded u2: {t}; (upstream, host state) counts: {states:?}");
    for r in &replies {
        let upstream = r.upstream().unwrap_or_default();
        let want = if upstream == "u2" {
            "Degraded"
        } else {
            "Healthy"
        };
        s.check(
            r.header("x-meshguard-host-state") == Some(want)
                && r.header("x-meshguard-upstream-host") == addr_of(upstream).as_deref(),
            || format!("want x-meshguard-host-state {want} from {upstream} and its address: {r:?}\nall: {states:?}"),
        );
    }
    s.check(t.served_by("u2") > 0 && t.share("u2") < 0.30, || {
        format!("a Degraded u2 should still get traffic, but less than a third: {t}")
    });
    let line = s.wait_for_transition(U2, LOG_WAIT, |l| l.contains("-> Degraded"));
    s.check(line.is_some(), || {
        "no `-> Degraded` line for u2".to_string()
    });
    s.check(
        !s.transitions(U2).iter().any(|l| l.contains("-> Unhealthy")),
        || {
            format!(
                "u2 must not be ejected (unhealthyFailurePercent 100): {:#?}",
                s.transitions(U2)
            )
        },
    );
}

/// `8-4-4-4-12` lower-case hex.
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}
