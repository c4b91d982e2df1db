//! What an upstream or a client sends that meshguard must not take at face
//! value, in the real Envoy on `envoy/demo.yaml.tmpl`:
//! - a status outside HTTP's 100-599 (Envoy passes 600-999 on) is a failure
//!   of the host that sent it;
//! - a steering header in an upstream's response (plain encoding) never
//!   reaches the client;
//! - a client-sent `x-meshguard-fallback` never reaches the fallback
//!   cluster: only meshguard's breaker sends requests there.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Logs
//! stay in target/tmp/<test name>/. Run alone with
//! `cargo test -p host-tests --test envoy_untrusted_answers -- --nocapture`.

use std::collections::BTreeMap;
use std::time::Duration;

use host_tests::fixture::{ThreeUpstreams, FALLBACK_NAME};
use host_tests::traffic::{burst, send_one, Tally};
use host_tests::Behaviour;
use host_tests::Harness;

const U2: usize = 1;
const STEERING_HEADER: &str = "x-meshguard-upstream";

#[test]
fn statuses_outside_http_eject_the_host() {
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_untrusted_statuses",
        host_tests::TEST_PLUGIN_CONFIG,
    );
    let listener = s.listener();
    s.set_behaviour(U2, &Behaviour::status(700));
    let detection = burst(listener, 60);
    println!("a. u2 answers 700: {detection}");
    s.check(detection.with_status(700) > 0, || {
        format!("Envoy should pass u2's 700 on to the client: {detection}")
    });
    let line = s.wait_for_transition(U2, Duration::from_secs(2), |l| l.contains("-> Unhealthy"));
    let Some(line) = line else {
        s.fail(&format!(
            "u2 answers 700 to everything but was never ejected: {detection}; transitions {:#?}",
            s.transitions(U2)
        ));
    };
    println!("b. {line}");
    // Ejected, u2 gets only the few requests meshguard leaves to Envoy's
    // load balancer (700 is not retried), not its third.
    let after = burst(listener, 300);
    println!("c. with u2 ejected: {after}");
    s.check(after.with_status(700) <= 30, || {
        format!("with u2 ejected at most 10% should still reach it: {after}")
    });
}

#[test]
fn an_upstreams_steering_header_never_reaches_the_client() {
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_untrusted_response_steering",
        host_tests::TEST_PLUGIN_CONFIG,
    );
    let mut headers = BTreeMap::new();
    headers.insert(STEERING_HEADER.to_string(), "10.1.2.3:80".to_string());
    for i in 0..3 {
        s.set_behaviour(
            i,
            &Behaviour {
                headers: headers.clone(),
                ..Behaviour::default()
            },
        );
    }
    for _ in 0..20 {
        match host_tests::http::get(s.listener(), "/", Duration::from_secs(5)) {
            Ok(r) => {
                s.check(r.status == 200, || format!("want 200, got {}", r.status));
                s.check(r.header(STEERING_HEADER).is_none(), || {
                    format!(
                        "the client got the upstream's {STEERING_HEADER}: {:?}",
                        r.header(STEERING_HEADER)
                    )
                });
            }
            Err(e) => s.fail(&format!("request failed: {e}")),
        }
    }
}

#[test]
fn a_client_cannot_reach_the_fallback_cluster_through_its_header() {
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_untrusted_fallback_header",
        host_tests::TEST_PLUGIN_CONFIG,
    );
    let mut seen = Tally::default();
    for _ in 0..30 {
        seen.add(&send_one(
            s.listener(),
            &[("x-meshguard-fallback", "outbound|80||demo")],
        ));
    }
    println!("client-sent x-meshguard-fallback: {seen}");
    s.check(seen.with_status(200) == 30, || {
        format!("every request should get 200: {seen}")
    });
    s.check(seen.served_by(FALLBACK_NAME) == 0, || {
        format!("a client-sent x-meshguard-fallback reached the fallback cluster: {seen}")
    });
}
