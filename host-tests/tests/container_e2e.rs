//! meshguard end to end in the real Envoy, in Docker: three mg-upstream
//! containers and an Envoy container on a network of their own (see
//! `host_tests::containers`). Each test checks what a user would check:
//! who gets traffic, what clients see, what meshguard logged, Envoy's stats.
//!
//! Needs Docker, MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both;
//! the images are built on first use and reused while their inputs do not
//! change). Without Docker these tests fail and say so; they never skip.
//! The last test runs the dynamic-listener scenario again in process mode
//! (no Docker), the harness's other mode.
//!
//! The scenarios run one at a time (a 2-core machine, timing-sensitive
//! checks). Work files stay in target/tmp/<test>/; on failure the message
//! carries upstream counters, Envoy's stats, meshguard's log lines and the
//! failed requests from the access log. Run one alone with
//! `cargo test -p host-tests --test container_e2e -- --nocapture <name>`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use host_tests::containers::{Mode, Testbed, TestbedSpec};
use host_tests::http;
use host_tests::traffic::{burst, paced_second, Tally};
use host_tests::Behaviour;
use host_tests::Harness;

const U2: usize = 1;
const U3: usize = 2;
const LOG_WAIT: Duration = Duration::from_secs(3);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(spec: TestbedSpec) -> Testbed {
    Testbed::start(spec, host_tests::test_paths!())
}

/// Everything healthy: every request 200 and each upstream a fair share.
fn baseline(tb: &Testbed) {
    let t = burst(tb.listener, 150);
    println!("baseline: {t}");
    tb.check(t.with_status(200) == 150, || {
        format!("baseline: every request should get 200: {t}")
    });
    for u in &tb.upstreams {
        tb.check(t.share(&u.name) >= 0.20, || {
            format!("baseline: {} should get a fair share: {t}", u.name)
        });
    }
}

/// Sends batches of 25 until `done` holds for two batches in a row (or `max`
/// requests went out); returns everything sent and whether it held.
fn until_two_batches(tb: &Testbed, max: u64, done: impl Fn(&Tally) -> bool) -> (Tally, bool) {
    let mut all = Tally::default();
    let mut streak = 0;
    while all.total < max {
        let b = burst(tb.listener, 25);
        all.merge(&b);
        streak = if done(&b) { streak + 1 } else { 0 };
        if streak == 2 {
            return (all, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (all, false)
}

fn upstream_counts(tb: &Testbed) -> Vec<u64> {
    (0..tb.upstreams.len()).map(|i| tb.requests(i)).collect()
}

// ------------------------------------------------------------------ hosts

#[test]
fn hard_failure_is_ejected_starved_and_returns_after_recovery() {
    let _s = serial();
    let tb = start(TestbedSpec::new("container_hard_failure", Mode::Docker));
    baseline(&tb);

    tb.set_behaviour(U2, &Behaviour::status(503));
    let (detection, ejected) = until_two_batches(&tb, 300, |b| b.served_by("u2") == 0);
    println!("detection: {detection}");
    tb.check(ejected, || {
        format!("u2 fails every request but still gets traffic: {detection}")
    });
    tb.check(detection.with_status(503) < 30, || {
        format!("detection cost too many 503s (want < 30): {detection}")
    });
    let line = tb.wait_for_transition(U2, LOG_WAIT, |l| l.contains("-> Unhealthy"));
    tb.check(line.is_some(), || {
        "no `-> Unhealthy` line for u2 in Envoy's log".into()
    });
    println!("{}", line.unwrap_or_default());

    // Starved: while ejected (3 s) clients get only 200s and u2 only
    // discovery's few requests left to Envoy (about 1 in 60), each retried
    // on another host.
    let before = tb.requests(U2);
    let t = burst(tb.listener, 150);
    let got = tb.requests(U2) - before;
    println!("while ejected: {t}; u2 received {got}");
    tb.check(got <= 8 && t.with_status(200) == 150, || {
        format!("ejected u2 received {got} requests: {t}")
    });

    // Recovery: back through the warm-up to a fair share, without errors.
    tb.set_behaviour(U2, &Behaviour::healthy());
    let mut all = Tally::default();
    let mut fair = 0;
    let mut seconds = Vec::new();
    for s in 0..20 {
        let b = paced_second(tb.listener, 50);
        println!(
            "recovery second {s:2}: u2 {:3.0}% | {b}",
            b.share("u2") * 100.0
        );
        seconds.push(format!("{:.0}%", b.share("u2") * 100.0));
        all.merge(&b);
        fair = if b.share("u2") >= 0.20 { fair + 1 } else { 0 };
        if fair == 2 {
            break;
        }
    }
    tb.check(fair == 2, || {
        format!("u2 recovered but did not get back to a fair share; u2 per second: {seconds:?}")
    });
    tb.check(all.not_ok() == 0, || {
        format!("all upstreams healthy, yet clients saw failures: {all}")
    });
    let warm = tb.wait_for_transition(U2, LOG_WAIT, |l| l.contains("-> WarmingUp"));
    tb.check(warm.is_some(), || {
        "u2 came back without a `-> WarmingUp` line".into()
    });
    println!(
        "u2 per second after recovery: {seconds:?}; state now {}",
        tb.host_state(U2)
    );
}

#[test]
fn grey_failure_is_degraded_and_gets_about_half_the_traffic() {
    let _s = serial();
    // A 40-call window: 35% failures stay between 30% (Degraded) and 50%
    // (ejection) however the window slides. Random 35% failures hold a run
    // of 5 now and then (one run here ejected u2 that way before it was
    // ever Degraded), so the consecutive rule is off: this test is about
    // the rate.
    let config = r#"{"detection":{"windowSize":40,"minRequests":20,"consecutive5xxErrors":0},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"}}"#;
    let tb = start(TestbedSpec::new("container_grey_failure", Mode::Docker).plugin_config(config));
    baseline(&tb);

    tb.set_behaviour(U2, &Behaviour::grey(503, 35));
    let mut sent = Tally::default();
    let mut line = None;
    while sent.total < 600 && line.is_none() {
        sent.merge(&burst(tb.listener, 25));
        line = tb.wait_for_transition(U2, Duration::ZERO, |l| l.contains("-> Degraded"));
    }
    let line = line.or_else(|| tb.wait_for_transition(U2, LOG_WAIT, |l| l.contains("-> Degraded")));
    tb.check(line.is_some(), || {
        format!("u2 fails 35% of requests but was not graded Degraded: {sent}")
    });
    println!(
        "after {} requests: {}",
        sent.total,
        line.unwrap_or_default()
    );

    std::thread::sleep(Duration::from_millis(300));
    let t = burst(tb.listener, 300);
    let state = tb.host_state(U2);
    println!("while Degraded: {t}; u2 is {state}");
    tb.check(state == "Degraded", || {
        format!("u2 should stay Degraded (35% is under the 50% ejection threshold), is {state}")
    });
    // Half of a healthy host's weight: 0.5 / 2.5 = 20% instead of 33%.
    let share = t.share("u2");
    tb.check((0.12..=0.27).contains(&share), || {
        format!(
            "a Degraded u2 should get about 20% (half of a third), got {:.0}%: {t}",
            share * 100.0
        )
    });
    // Its failures are now 35% of a fifth of the traffic.
    tb.check(t.not_ok() * 100 <= t.total * 12, || {
        format!("clients saw too many failures: {t}")
    });
}

#[test]
fn slow_upstream_is_degraded_by_latency() {
    let _s = serial();
    let config = r#"{"detection":{"windowSize":20,"minRequests":10,"slowCallThreshold":"100ms"},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"}}"#;
    let tb = start(TestbedSpec::new("container_slow_upstream", Mode::Docker).plugin_config(config));
    baseline(&tb);

    tb.set_behaviour(U3, &Behaviour::slow(200));
    let mut sent = Tally::default();
    let mut line = None;
    while sent.total < 150 && line.is_none() {
        sent.merge(&burst(tb.listener, 15));
        line = tb.wait_for_transition(U3, Duration::ZERO, |l| l.contains("-> Degraded"));
    }
    let line = line.or_else(|| tb.wait_for_transition(U3, LOG_WAIT, |l| l.contains("-> Degraded")));
    tb.check(line.as_deref().is_some_and(|l| l.contains("slow calls")), || {
        format!("u3 answers after 200 ms (threshold 100 ms) but was not Degraded for slow calls: {line:?}; {sent}")
    });
    println!("{}", line.unwrap_or_default());
    tb.check(sent.not_ok() == 0, || {
        format!("slow is not failed: every request should get 200: {sent}")
    });

    let started = Instant::now();
    let t = burst(tb.listener, 120);
    println!(
        "while Degraded ({:?}): {t}; u3 is {}",
        started.elapsed(),
        tb.host_state(U3)
    );
    let share = t.share("u3");
    tb.check((0.08..=0.27).contains(&share), || {
        format!(
            "a slow (Degraded) u3 should get about 20%, got {:.0}%: {t}",
            share * 100.0
        )
    });
    tb.check(tb.host_state(U3) == "Degraded", || {
        format!(
            "slow u3 must be Degraded, never ejected; is {}",
            tb.host_state(U3)
        )
    });
}

// ------------------------------------------------------------ local origin

/// u2 fails below HTTP (`fault` is applied by `break_u2`): it must be ejected
/// for consecutive local-origin failures, cheaply, after which clients see only 200s.
fn local_origin(name: &str, break_u2: impl FnOnce(&mut Testbed)) {
    let mut tb = start(TestbedSpec::new(name, Mode::Docker));
    baseline(&tb);
    let before = tb.envoy_stats();

    break_u2(&mut tb);
    let started = Instant::now();
    let (detection, clean) = until_two_batches(&tb, 300, |b| b.not_ok() == 0);
    println!("detection ({:?}): {detection}", started.elapsed());
    tb.check(clean, || {
        format!("u2 fails every request but clients still see failures: {detection}")
    });
    tb.check(detection.not_ok() < 30, || {
        format!("detection cost too many failed requests (want < 30): {detection}")
    });
    let line = tb.wait_for_transition(U2, LOG_WAIT, |l| l.contains("-> Unhealthy"));
    tb.check(
        line.as_deref()
            .is_some_and(|l| l.contains("consecutive local-origin failures")),
        || format!("u2 should be ejected for `consecutive local-origin failures`: {line:?}"),
    );
    println!("{}", line.unwrap_or_default());

    let t = burst(tb.listener, 150);
    tb.check(t.with_status(200) == 150, || {
        format!("with u2 ejected every request should get 200: {t}")
    });
    let after = tb.envoy_stats();
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    println!(
        "envoy: upstream_cx_connect_fail +{}, upstream_cx_connect_timeout +{}, upstream_rq_503 +{}, cx_destroy_remote_with_active_rq +{}",
        delta("cluster.demo.upstream_cx_connect_fail"),
        delta("cluster.demo.upstream_cx_connect_timeout"),
        delta("cluster.demo.upstream_rq_503"),
        delta("cluster.demo.upstream_cx_destroy_remote_with_active_rq"),
    );
    println!(
        "failed requests:\n{}",
        tb.access_log_matching(|l| !l.contains(" 200 "), 8)
    );
}

#[test]
fn stopped_upstream_container_counts_as_local_origin_failures() {
    let _s = serial();
    local_origin("container_stopped_upstream", |tb| tb.stop_upstream(U2));
}

#[test]
fn reset_connections_count_as_local_origin_failures() {
    let _s = serial();
    local_origin("container_reset_upstream", |tb| {
        tb.set_behaviour(
            U2,
            &Behaviour {
                reset: true,
                ..Behaviour::default()
            },
        )
    });
}

// ---------------------------------------------------------------- breaker

#[test]
fn whole_service_failing_opens_the_breaker_then_half_open_then_closed() {
    let _s = serial();
    let config = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"},"circuitBreaker":{"windowSize":20,"minRequests":10,"failurePercent":50,"openDuration":"2s","maxOpenDuration":"10s","halfOpenRequests":1,"closeAfterSuccesses":3}}"#;
    let tb = start(TestbedSpec::new("container_breaker", Mode::Docker).plugin_config(config));
    baseline(&tb);

    for i in 0..3 {
        tb.set_behaviour(i, &Behaviour::status(503));
    }
    // Until the first local reply: no upstream name, body "circuit open".
    let get = || http::get(tb.listener, "/", Duration::from_secs(5));
    let mut sent = 0;
    let mut opened = None;
    while sent < 100 && opened.is_none() {
        sent += 1;
        match get() {
            Ok(r)
                if r.header("x-upstream-name").is_none()
                    && r.body_text().contains("circuit open") =>
            {
                opened = Some(r)
            }
            Ok(_) => {}
            Err(e) => tb.fail(&format!("request failed below HTTP: {e}")),
        }
    }
    let Some(reply) = opened else {
        tb.fail(&format!(
            "every upstream answers 503, but no local reply after {sent} requests"
        ));
    };
    println!(
        "breaker opened after {sent} requests: {} retry-after {:?} {}",
        reply.status,
        reply.header("retry-after"),
        reply.body_text()
    );
    tb.check(
        reply.status == 503 && reply.header("retry-after").is_some(),
        || {
            format!(
                "local reply should be 503 with retry-after: {} {:?}",
                reply.status, reply.headers
            )
        },
    );
    let open_line = tb.wait_for_line(LOG_WAIT, Testbed::breaker_transitions, |l| {
        l.contains("Closed -> Open")
    });
    tb.check(open_line.is_some(), || {
        "no `circuit breaker: Closed -> Open` line".into()
    });
    println!("{}", open_line.unwrap_or_default());

    // Open: local replies at once; only half-open probes (at most one at a
    // time, when an open period ends) reach an upstream, and fail again.
    let before: u64 = upstream_counts(&tb).iter().sum();
    let mut took = Vec::new();
    let mut probes = 0u64;
    for _ in 0..30 {
        let t0 = Instant::now();
        let r = get().unwrap_or_else(|e| tb.fail(&format!("request failed: {e}")));
        if r.header("x-upstream-name").is_some() {
            probes += 1;
        } else if r.status == 503 && r.body_text().contains("circuit open") {
            took.push(t0.elapsed());
        } else {
            tb.fail(&format!(
                "while open: neither a local reply nor a probe: {} {:?}",
                r.status, r.headers
            ));
        }
    }
    let reached = upstream_counts(&tb).iter().sum::<u64>() - before;
    took.sort();
    let median = took.get(took.len() / 2).copied().unwrap_or_default();
    println!(
        "while open: {} local replies (median {median:?}, max {:?}), {probes} probes; upstreams received {reached}",
        took.len(),
        took.last()
    );
    tb.check(took.len() >= 25 && reached == probes && probes <= 3, || {
        format!(
            "while open only probes may reach an upstream: {} local replies, {probes} probes, upstreams received {reached}",
            took.len()
        )
    });
    // Median, not max: Envoy may hold a connection it answered early for up
    // to its delayed_close_timeout (1 s) before closing it, and this client
    // reads to EOF.
    tb.check(median < Duration::from_millis(20), || {
        format!("local replies should be fast: median {median:?}")
    });

    // The service recovers: after openDuration (2 s) probes go through
    // (half-open), and 3 successes close the breaker.
    for i in 0..3 {
        tb.set_behaviour(i, &Behaviour::healthy());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = None;
    while Instant::now() < deadline && closed.is_none() {
        let _ = get();
        closed = tb.wait_for_line(Duration::ZERO, Testbed::breaker_transitions, |l| {
            l.contains("HalfOpen -> Closed")
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = tb.breaker_transitions();
    println!("breaker transitions:\n{}", lines.join("\n"));
    tb.check(lines.iter().any(|l| l.contains("Open -> HalfOpen")), || {
        "no `Open -> HalfOpen` line".into()
    });
    tb.check(closed.is_some(), || {
        "the service recovered but the breaker did not close within 15 s".into()
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = burst(tb.listener, 60);
    tb.check(t.with_status(200) == 60, || {
        format!("breaker closed and hosts healthy: every request should get 200: {t}")
    });
}

// ---------------------------------------------------------------- workers

#[test]
fn two_workers_see_the_same_host_states() {
    let _s = serial();
    let tb = start(TestbedSpec::new("container_two_workers", Mode::Docker).concurrency(2));
    baseline(&tb);
    let worker = |w: u32| format!("listener.0.0.0.0_10000.worker_{w}.downstream_cx_total");

    tb.set_behaviour(U2, &Behaviour::status(503));
    let (detection, ejected) = until_two_batches(&tb, 300, |b| b.served_by("u2") == 0);
    tb.check(ejected, || format!("u2 was not ejected: {detection}"));

    // Every request is a new connection, spread by the kernel over both
    // workers: both must keep u2 out.
    let stats0 = tb.envoy_stats();
    let u2_before = tb.requests(U2);
    let t = burst(tb.listener, 200);
    let stats1 = tb.envoy_stats();
    let u2_got = tb.requests(U2) - u2_before;
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            stats1.get(&worker(w)).copied().unwrap_or(0)
                - stats0.get(&worker(w)).copied().unwrap_or(0)
        })
        .collect();
    println!("while ejected: {t}; connections per worker {per_worker:?}; u2 received {u2_got}");
    tb.check(per_worker.iter().all(|n| *n >= 30), || {
        format!("both workers should have served connections (>= 30 of 200 each): {per_worker:?}")
    });
    // Neither worker steers to u2; only discovery's few requests left to
    // Envoy reach it (about 1 in 60), each retried on another host.
    tb.check(u2_got <= 10 && t.with_status(200) == 200, || {
        format!("with u2 ejected, neither worker may steer traffic to it: u2 received {u2_got}; {t}; per worker {per_worker:?}")
    });
}

// ---------------------------------------------------- configuration updates

/// Client traffic in a background thread: every answer's status and the
/// `x-meshguard-config` header meshguard adds (the config generation).
struct Background {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u16, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(tb: &Testbed) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = tb.listener;
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let entry = match http::get(addr, "/", Duration::from_secs(5)) {
                    Ok(r) => (
                        r.status,
                        r.header("x-meshguard-config").unwrap_or("-").to_string(),
                    ),
                    Err(e) => (0, e.to_string()),
                };
                v.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(u16, String)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn last_generation(&self) -> Option<String> {
        self.seen().last().map(|(_, g)| g.clone())
    }

    fn finish(mut self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn generation_config(generation: &str, extra: &str) -> String {
    format!(
        r#"{{"detection":{{"windowSize":20,"minRequests":10{extra}}},"ejection":{{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"}},"headers":{{"response":[{{"op":"set","name":"x-meshguard-config","value":"{generation}"}}]}}}}"#
    )
}

fn dynamic_listener_update(name: &str, mode: Mode) {
    let mut tb = start(
        TestbedSpec::new(name, mode)
            .dynamic_listener(true)
            .plugin_config(&generation_config("v1", "")),
    );
    baseline(&tb);
    let traffic = Background::start(&tb);
    std::thread::sleep(Duration::from_millis(500));
    tb.check(traffic.last_generation().as_deref() == Some("v1"), || {
        format!("config v1 not in effect: {:?}", traffic.last_generation())
    });

    // A valid new configuration takes effect.
    let ok0 = tb.envoy_stat("listener_manager.lds.update_success");
    tb.update_plugin_config(&generation_config("v2", ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while traffic.last_generation().as_deref() != Some("v2") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok1 = tb.envoy_stat("listener_manager.lds.update_success");
    println!(
        "valid update: lds.update_success {ok0} -> {ok1}; now serving {:?}",
        traffic.last_generation()
    );
    tb.check(traffic.last_generation().as_deref() == Some("v2"), || {
        format!("the valid config v2 did not take effect within 10 s (lds.update_success {ok0} -> {ok1})")
    });

    // An invalid one (unknown field) is refused by meshguard's on_configure,
    // so Envoy rejects the listener update and keeps serving v2.
    let rej0 = tb.envoy_stat("listener_manager.lds.update_rejected");
    tb.update_plugin_config(&generation_config("v3", r#","windowSze":5"#));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rej1 = rej0;
    while rej1 == rej0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        rej1 = tb.envoy_stat("listener_manager.lds.update_rejected");
    }
    std::thread::sleep(Duration::from_secs(1));
    let seen = traffic.finish();
    let log = tb.log();
    let reason = log
        .lines()
        .find(|l| l.contains("invalid plugin configuration"))
        .unwrap_or("(none)")
        .to_string();
    println!("invalid update: lds.update_rejected {rej0} -> {rej1}; meshguard: {reason}");
    tb.check(rej1 > rej0, || format!("Envoy did not reject the listener with the invalid config (lds.update_rejected {rej0} -> {rej1})"));
    tb.check(reason.contains("windowSze"), || {
        format!("meshguard should name the bad field: {reason}")
    });

    let count = |g: &str| seen.iter().filter(|(_, x)| x == g).count();
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).take(5).collect();
    println!(
        "background traffic: {} requests, v1 {}, v2 {}, v3 {}, failed {}",
        seen.len(),
        count("v1"),
        count("v2"),
        count("v3"),
        failed.len()
    );
    tb.check(failed.is_empty(), || {
        format!("requests failed during the updates: {failed:?}")
    });
    tb.check(count("v3") == 0, || {
        "the rejected config v3 served requests".into()
    });
    tb.check(seen.last().is_some_and(|(_, g)| g == "v2"), || {
        format!(
            "after the rejection traffic should keep v2: {:?}",
            seen.last()
        )
    });
}

#[test]
fn listener_update_applies_a_valid_config_and_rejects_an_invalid_one() {
    let _s = serial();
    dynamic_listener_update("container_listener_update", Mode::Docker);
}

#[test]
fn listener_update_in_process_mode() {
    let _s = serial();
    dynamic_listener_update("process_listener_update", Mode::Process);
}

/// Waits up to 10 s until the background traffic is served by `generation`.
fn until_generation(traffic: &Background, generation: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while traffic.last_generation().as_deref() != Some(generation) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Configuration pushed as operators do, within one listener drain time
/// (Envoy's default 600 s, so every old listener still drains): a rollback
/// (v1, v2, then v1 again, which Envoy serves with v1's live plugin
/// instance, no callback) takes effect, and 70 updates in a row (more than
/// the 64 instances a VM runs) never switch meshguard off: each one is in
/// force in turn. Then v1 once more: its instance was set aside at the
/// limit, and its first request brings it back, so v1 is in force again.
#[test]
fn listener_updates_roll_back_and_never_switch_the_filter_off() {
    let _s = serial();
    let mut tb = start(
        TestbedSpec::new("process_listener_rollback", Mode::Process)
            .dynamic_listener(true)
            .plugin_config(&generation_config("v1", "")),
    );
    let traffic = Background::start(&tb);
    tb.check(until_generation(&traffic, "v1"), || {
        format!("v1 not in effect: {:?}", traffic.last_generation())
    });
    for generation in ["v2", "v1"] {
        tb.update_plugin_config(&generation_config(generation, ""));
        tb.check(until_generation(&traffic, generation), || {
            format!(
                "{generation} not in force 10 s after its update (a rollback must apply): serving {:?}",
                traffic.last_generation()
            )
        });
    }
    let updates = 70;
    for n in 0..updates {
        let generation = format!("u{n}");
        tb.update_plugin_config(&generation_config(&generation, ""));
        tb.check(until_generation(&traffic, &generation), || {
            format!(
                "update {n} of {updates} not in force after 10 s: serving {:?}",
                traffic.last_generation()
            )
        });
    }
    // A rollback past the limit: Envoy serves v1's draining root context
    // again, which each VM set aside long ago.
    tb.update_plugin_config(&generation_config("v1", ""));
    tb.check(until_generation(&traffic, "v1"), || {
        format!(
            "v1 again after {updates} updates not in force after 10 s (its instance was set aside at the limit): serving {:?}",
            traffic.last_generation()
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    let seen = traffic.finish();
    let last = "v1";
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).take(5).collect();
    let log = tb.log();
    let not_started = log.lines().filter(|l| l.contains("not started")).count();
    let dropped = log
        .lines()
        .filter(|l| l.contains("least recently used"))
        .count();
    let back = log.lines().filter(|l| l.contains("brings it back")).count();
    println!(
        "{} requests, {} failed; instances set aside at the limit: {dropped} log lines, brought back: {back}; meshguard_plugin_instances_dropped {}",
        seen.len(),
        failed.len(),
        tb.envoy_stat("wasmcustom.meshguard.plugin_instances_dropped")
    );
    tb.check(failed.is_empty(), || {
        format!("requests failed during the updates: {failed:?}")
    });
    tb.check(not_started == 0, || {
        format!("{not_started} log lines say a configuration was not started")
    });
    tb.check(seen.last().is_some_and(|(_, g)| *g == last), || {
        format!(
            "the last update {last} should stay in force: {:?}",
            seen.last()
        )
    });
    tb.check(dropped > 0, || {
        "72 live configurations in one VM: the least recently used should have been set aside, and said so".into()
    });
    tb.check(back > 0, || {
        "v1 again: its instance set aside at the limit should have come back, and said so".into()
    });
    // Every request carried some configuration's header: none passed
    // through unobserved.
    let unobserved = seen.iter().filter(|(_, g)| *g == "-").count();
    tb.check(unobserved == 0, || {
        format!("{unobserved} requests passed through unobserved")
    });
}
