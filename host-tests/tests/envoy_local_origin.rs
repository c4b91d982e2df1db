//! Local-origin failures in the real Envoy: an upstream that stops listening
//! (connection refused, Envoy response flag UF) or that closes connections
//! without answering (UC/UR) never sends a 5xx of its own; Envoy answers
//! 503 for it. meshguard must classify these as local-origin failures and
//! eject the host after `consecutiveLocalOriginFailures` (default 5) of them.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Logs,
//! the access log (`envoy.stderr`, with %RESPONSE_FLAGS%) and the rendered
//! config stay in target/tmp/<test name>/ after the run. Run alone with
//! `cargo test -p host-tests --test envoy_local_origin -- --nocapture`.

use std::time::{Duration, Instant};

use host_tests::fixture::ThreeUpstreams;
use host_tests::traffic::{burst, Tally};
use host_tests::Behaviour;
use host_tests::Harness;

/// Index of u2 in the fixture.
const U2: usize = 1;
/// How the ejection line must explain itself.
const LOCAL_ORIGIN_REASON: &str = "consecutive local-origin failures";
/// Envoy flushes its log every 200 ms; a transition is written within about
/// 100 ms of the failure that caused it.
const LOG_WAIT: Duration = Duration::from_secs(2);

/// Baseline, then u2 turns to `fault`: it must be ejected for local-origin
/// failures at a small cost, after which clients see only 200s.
fn ejected_for_local_origin_failures(test_name: &str, fault: Behaviour) {
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        test_name,
        host_tests::TEST_PLUGIN_CONFIG,
    );
    let listener = s.listener();
    let u2_addr = s.upstream(U2).data;

    // a. Baseline: everything healthy.
    let base = burst(listener, 300);
    println!("a. baseline: {base}");
    s.check(base.with_status(200) == 300, || {
        format!("baseline: every request should get 200: {base}")
    });
    for u in &s.ups {
        s.check(base.share(&u.name) >= 0.20, || {
            format!(
                "baseline: {} should get a fair share (>= 20%): {base}",
                u.name
            )
        });
    }

    // b. u2 fails below HTTP. Its failures are Envoy's own 503s (no
    // x-upstream-name), and u1/u3 are healthy, so every failed request was
    // bound for u2. Keep sending until two consecutive batches have no
    // failure (or 300 requests).
    s.set_behaviour(U2, &fault);
    let mut detection = Tally::default();
    let mut clean_batches = 0;
    let mut ejected_at = None;
    while detection.total < 300 {
        let batch = burst(listener, 25);
        detection.merge(&batch);
        if batch.not_ok() == 0 {
            clean_batches += 1;
            if clean_batches == 2 {
                ejected_at = Some(Instant::now());
                break;
            }
        } else {
            clean_batches = 0;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("b. detection: {detection}");
    s.check(ejected_at.is_some(), || {
        format!(
            "u2 fails every request ({fault:?}) but clients still saw failures after {} requests: {detection}",
            detection.total
        )
    });
    s.check(detection.not_ok() < 30, || {
        format!("detection cost too many failed requests (want < 30): {detection}")
    });

    // While ejected (3 s, and this takes well under 1 s): only 200s.
    let started = Instant::now();
    let measured = burst(listener, 300);
    println!(
        "b. while ejected ({:?}, starting {:?} after ejection was seen): {measured}",
        started.elapsed(),
        started.duration_since(ejected_at.unwrap_or(started))
    );
    s.check(measured.with_status(200) == 300, || {
        format!("with u2 ejected every client request should get 200: {measured}")
    });

    // c. The log says why: the first ejection of u2, for local-origin failures.
    let unhealthy = |l: &str| l.contains("-> Unhealthy");
    let Some(line) = s.wait_for_transition(U2, LOG_WAIT, unhealthy) else {
        s.fail(&format!(
            "no meshguard line `host {u2_addr}: ... -> Unhealthy` in Envoy's log after {LOG_WAIT:?}; u2's transitions: {:#?}",
            s.transitions(U2)
        ));
    };
    println!("c. {line}");
    s.check(line.contains(LOCAL_ORIGIN_REASON), || {
        format!(
            "u2 was ejected, but not for `{LOCAL_ORIGIN_REASON}`: the filter misclassified Envoy's response flags \
             (see the access log below):\n  {line}"
        )
    });
    println!(
        "c. envoy: upstream_cx_connect_fail {}, upstream_cx_destroy_remote_with_active_rq {}, upstream_rq_503 {}",
        s.envoy_stat("cluster.demo.upstream_cx_connect_fail"),
        s.envoy_stat("cluster.demo.upstream_cx_destroy_remote_with_active_rq"),
        s.envoy_stat("cluster.demo.upstream_rq_503"),
    );
    println!(
        "c. access log, failed requests:\n{}",
        s.envoy.access_log_matching(|l| !l.contains(" 200 "), 10)
    );
}

#[test]
fn refused_connections_eject_the_host() {
    ejected_for_local_origin_failures(
        "envoy_local_origin_refused",
        Behaviour {
            refuse: true,
            ..Behaviour::default()
        },
    );
}

#[test]
fn reset_connections_eject_the_host() {
    ejected_for_local_origin_failures(
        "envoy_local_origin_reset",
        Behaviour {
            reset: true,
            ..Behaviour::default()
        },
    );
}

/// A 200 whose body the host cuts off (Envoy has sent the client the
/// headers, logs UC/UR and `upstream_reset_after_response_started`) is a
/// local-origin failure of the host, not a success.
#[test]
fn responses_cut_off_after_their_headers_eject_the_host() {
    ejected_for_local_origin_failures(
        "envoy_local_origin_cut_off",
        Behaviour {
            cut_off: true,
            ..Behaviour::default()
        },
    );
}
