use super::*;
use crate::config::Config;
use crate::model::Measured;

fn settings(extra: &str) -> Settings {
    let json = format!(
        r#"{{"circuitBreaker": {{"windowSize": 10, "minRequests": 10, "failurePercent": 50,
            "openDuration": "30s", "maxOpenDuration": "100s", "halfOpenRequests": 2,
            "closeAfterSuccesses": 3 {extra}}}}}"#
    );
    Config::parse(json.as_bytes()).unwrap().circuit_breaker
}

fn feed(
    b: &mut Breaker,
    s: &Settings,
    failed: bool,
    count: usize,
    now: u64,
) -> Vec<BreakerTransition> {
    (0..count)
        .filter_map(|_| b.record(failed, false, false, now, s))
        .collect()
}

/// Trips a fresh breaker at `now`.
fn tripped(s: &Settings, now: u64) -> Breaker {
    let mut b = Breaker::new(s);
    feed(&mut b, s, true, 10, now);
    assert_eq!(b.state(), BreakerState::Open);
    b
}

#[test]
fn stays_closed_below_the_minimum_volume_and_the_threshold() {
    let s = settings("");
    let mut b = Breaker::new(&s);
    assert!(
        feed(&mut b, &s, true, 9, 0).is_empty(),
        "9 calls are below minRequests"
    );
    let mut b = Breaker::new(&s);
    feed(&mut b, &s, false, 6, 0);
    feed(&mut b, &s, true, 4, 0);
    assert_eq!(b.state(), BreakerState::Closed, "40% is below 50%");
    assert_eq!(b.admit(0, &s).0, Admission::Allowed);
}

#[test]
fn opens_when_the_failure_rate_reaches_the_threshold() {
    let s = settings("");
    let mut b = Breaker::new(&s);
    feed(&mut b, &s, false, 5, 0);
    let t = feed(&mut b, &s, true, 5, 1_000);
    assert_eq!(t.len(), 1, "50% reaches 50%");
    assert_eq!(
        (t[0].from, t[0].to),
        (BreakerState::Closed, BreakerState::Open)
    );
    assert_eq!(t[0].open_for_ms, Some(30_000));
    assert_eq!(t[0].reason.to_string(), "failure 50% over 10 >= 50%");
}

#[test]
fn opens_on_slow_calls_when_configured() {
    let s = settings(r#", "slowCallThreshold": "1s", "slowCallPercent": 80"#);
    let mut b = Breaker::new(&s);
    for _ in 0..8 {
        b.record(false, true, false, 0, &s);
    }
    b.record(false, false, false, 0, &s);
    assert_eq!(b.state(), BreakerState::Closed);
    let t = b.record(false, true, false, 0, &s).expect("opens");
    assert!(matches!(
        t.reason,
        BreakerReason::Rate(Rate {
            of: Measured::SlowCalls,
            count: 9,
            volume: 10,
            threshold: 80
        })
    ));
}

#[test]
fn open_rejects_locally_with_the_time_left() {
    let s = settings("");
    let mut b = tripped(&s, 1_000);
    assert_eq!(
        b.admit(11_000, &s).0,
        Admission::Rejected {
            retry_after_ms: 20_000
        }
    );
    assert!(b.needs_admission(11_000));
    assert_eq!(b.effective_state(30_999), BreakerState::Open);
    assert_eq!(b.effective_state(31_000), BreakerState::HalfOpen);
}

#[test]
fn half_open_admits_a_bounded_number_of_probes() {
    let s = settings("");
    let mut b = tripped(&s, 0);
    let (first, transition) = b.admit(30_000, &s);
    assert_eq!(first, Admission::Probe);
    assert_eq!(transition.map(|t| t.to), Some(BreakerState::HalfOpen));
    assert_eq!(b.admit(30_001, &s).0, Admission::Probe);
    // Both slots taken (as by two workers sharing the record).
    assert!(matches!(b.admit(30_002, &s).0, Admission::Rejected { .. }));
    // One probe answers: its slot is free again.
    b.record(false, false, true, 30_010, &s);
    assert_eq!(b.admit(30_011, &s).0, Admission::Probe);
}

#[test]
fn enough_probe_successes_close_it() {
    let s = settings("");
    let mut b = tripped(&s, 0);
    let mut transitions = Vec::new();
    for i in 0..3 {
        assert_eq!(b.admit(30_000 + i, &s).0, Admission::Probe);
        transitions.extend(b.record(false, false, true, 30_000 + i, &s));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    let t = transitions.last().unwrap();
    assert_eq!(t.reason.to_string(), "3 half-open probes succeeded");
    // A fresh window: nine new failures do not reopen it.
    feed(&mut b, &s, true, 9, 31_000);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn any_probe_failure_reopens_for_twice_as_long() {
    let s = settings("");
    let mut b = tripped(&s, 0);
    b.admit(30_000, &s);
    let t = b.record(true, false, true, 30_000, &s).expect("reopens");
    assert_eq!(t.reason, BreakerReason::ProbeFailed);
    assert_eq!(t.open_for_ms, Some(60_000));
    assert_eq!(b.open_until_ms(), 90_000);
}

#[test]
fn open_duration_doubles_per_consecutive_trip_up_to_the_cap() {
    let s = settings("");
    let mut b = tripped(&s, 0);
    let mut durations = vec![30_000];
    for _ in 0..4 {
        let now = b.open_until_ms();
        b.admit(now, &s);
        durations.push(
            b.record(true, false, true, now, &s)
                .unwrap()
                .open_for_ms
                .unwrap(),
        );
    }
    assert_eq!(durations, [30_000, 60_000, 100_000, 100_000, 100_000]);
    // Closing resets the backoff.
    let now = b.open_until_ms();
    for i in 0..3 {
        b.admit(now + i, &s);
        b.record(false, false, true, now + i, &s);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    let again = feed(&mut b, &s, true, 10, now + 10);
    assert_eq!(again[0].open_for_ms, Some(30_000));
}

#[test]
fn outcomes_of_calls_admitted_before_opening_are_ignored() {
    let s = settings("");
    let mut b = tripped(&s, 0);
    assert_eq!(b.record(false, false, false, 100, &s), None);
    b.admit(30_000, &s);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // A late non-probe outcome neither closes nor reopens it.
    assert_eq!(b.record(true, false, false, 30_001, &s), None);
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[test]
fn a_probe_that_never_reports_frees_its_slot_eventually() {
    let s = settings("");
    let mut b = tripped(&s, 0);
    b.admit(30_000, &s);
    b.admit(30_000, &s);
    assert!(matches!(b.admit(30_001, &s).0, Admission::Rejected { .. }));
    assert_eq!(
        b.admit(60_000, &s).0,
        Admission::Probe,
        "after openDuration the slots expire"
    );
}
