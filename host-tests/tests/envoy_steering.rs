//! meshguard in the real Envoy, checked the way a user would: three
//! upstreams behind Envoy, one of them starts failing, clients must stop
//! seeing the failures; when it recovers it must come back gradually.
//!
//! Needs MESHGUARD_WASM (the built module) and MESHGUARD_ENVOY (Envoy 1.40);
//! `make test` builds and installs both and sets them. Logs and the rendered
//! config stay in target/tmp/envoy_steering/ after the run.
//!
//! On failure the message carries the upstream counters, Envoy's cluster
//! stats, meshguard's log lines and the Envoy log tail. Run alone with
//! `cargo test -p host-tests --test envoy_steering -- --nocapture` to watch
//! the phases as they happen.

use std::time::{Duration, Instant};

use host_tests::fixture::ThreeUpstreams;
use host_tests::traffic::{burst, paced_second, Tally};
use host_tests::Behaviour;
use host_tests::Harness;

/// Steady rate of the recovery phase.
const RATE: u32 = 50;
/// From the plugin configuration (`host_tests::TEST_PLUGIN_CONFIG`).
const EJECTION: Duration = Duration::from_secs(3);
const WARMUP_SECS: usize = 4;
/// Index of u2 in the fixture.
const U2: usize = 1;

/// `host_tests::TEST_PLUGIN_CONFIG` with discovery off: this test times
/// u2's return from the first request it gets, so the few requests
/// discovery leaves to Envoy (tested in envoy_large_service) must not
/// reach it while it is ejected.
const CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"},"steering":{"discoveryPercent":0}}"#;

#[test]
fn meshguard_ejects_a_failing_host_and_warms_it_up_again() {
    let s = ThreeUpstreams::start(host_tests::test_paths!(), "envoy_steering", CONFIG);
    let listener = s.listener();

    // a. Baseline: everything healthy, meshguard must not get in the way.
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

    // b. u2 fails every request. Detection: keep sending until u2 has been
    // out of two consecutive batches (or 300 requests); its 503s are the
    // price of detection and must stay small.
    s.set_behaviour(U2, &Behaviour::status(503));
    let mut detection = Tally::default();
    let mut clean_batches = 0;
    let mut ejected_at = None;
    while detection.total < 300 {
        let batch = burst(listener, 25);
        detection.merge(&batch);
        if batch.served_by("u2") == 0 {
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
            "u2 answers 503 to everything but still got traffic after {} requests: {detection}",
            detection.total
        )
    });
    s.check(detection.with_status(503) < 30, || {
        format!("detection cost too many failed requests (want < 30 503s): {detection}")
    });

    // Measured phase: u2 must get nothing and clients must see only 200s.
    let before = s.requests(U2);
    let started = Instant::now();
    let measured = burst(listener, 300);
    let took = started.elapsed();
    let u2_got = s.requests(U2) - before;
    println!("b. while ejected ({took:?}): {measured}; u2 received {u2_got}");
    let note = || {
        format!(
            "(the measured phase took {took:?} and ended {:?} after ejection was seen; the ejection lasts {EJECTION:?})",
            ejected_at.map(|t| t.elapsed()).unwrap_or_default()
        )
    };
    s.check(u2_got == 0, || {
        format!(
            "ejected u2 still received {u2_got} requests: {measured} {}",
            note()
        )
    });
    s.check(measured.with_status(200) == 300, || {
        format!(
            "with u2 ejected every client request should get 200: {measured} {}",
            note()
        )
    });

    // c. u2 recovers. Send a steady RATE req/s in one-second buckets: it
    // should stay out until the ejection ends, then come back through the
    // warm-up with a small share rising to a fair third.
    s.set_behaviour(U2, &Behaviour::healthy());
    let mut buckets: Vec<Tally> = Vec::new();
    let mut returned: Option<usize> = None;
    // Bounded: ejection (at most 3 s left) + warm-up + margin + 2 buckets, and slack.
    while buckets.len() < 16 {
        let b = paced_second(listener, RATE);
        println!(
            "c. second {:2}: u2 share {:3.0}% | {b}",
            buckets.len(),
            b.share("u2") * 100.0
        );
        if returned.is_none() && b.served_by("u2") > 0 {
            returned = Some(buckets.len());
        }
        buckets.push(b);
        if returned.is_some_and(|r| buckets.len() >= r + WARMUP_SECS + 1 + 2) {
            break;
        }
    }
    let all = buckets.iter().fold(Tally::default(), |mut acc, b| {
        acc.merge(b);
        acc
    });
    let table = || {
        buckets
            .iter()
            .enumerate()
            .map(|(i, b)| format!("  second {i:2}: u2 {:3.0}%  ({b})", b.share("u2") * 100.0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    s.check(all.not_ok() == 0, || {
        format!(
            "all upstreams are healthy, every request should get 200:\n{}",
            table()
        )
    });
    let Some(r) = returned else {
        s.fail(&format!(
            "u2 recovered but never got traffic again within {} s:\n{}",
            buckets.len(),
            table()
        ));
    };
    s.check(buckets.len() >= r + WARMUP_SECS + 3, || {
        format!(
            "u2 came back too late (second {r}) to observe the end of its warm-up:\n{}",
            table()
        )
    });

    // Early warm-up: its first two seconds back, clearly under a fair third.
    let mut early = buckets[r].clone();
    early.merge(&buckets[r + 1]);
    s.check(early.share("u2") < 0.20, || {
        format!(
            "in its first 2 s back u2 got {:.0}% of traffic; a warming-up host should get clearly less than 33%:\n{}",
            early.share("u2") * 100.0,
            table()
        )
    });
    // It does ramp: traffic in at least two of the warm-up seconds.
    let warm_seconds = buckets[r..r + WARMUP_SECS]
        .iter()
        .filter(|b| b.served_by("u2") > 0)
        .count();
    s.check(warm_seconds >= 2, || {
        format!(
            "u2 got traffic in only {warm_seconds} of its {WARMUP_SECS} warm-up seconds:\n{}",
            table()
        )
    });
    // After warm-up plus a 1 s margin: back to a fair share.
    for (i, b) in buckets.iter().enumerate().skip(r + WARMUP_SECS + 1) {
        s.check(b.share("u2") >= 0.20, || {
            format!(
                "second {i}: after its warm-up u2 should be back to ~1/3 (>= 20%):\n{}",
                table()
            )
        });
    }
    println!(
        "c. u2 came back in second {r}; early share {:.0}%",
        early.share("u2") * 100.0
    );
}
