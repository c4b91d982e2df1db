use super::*;
use crate::classify::{FailureKind, LocalOrigin};
use crate::config::Config;

const OK: Outcome = Outcome::SUCCESS;
const E500: Outcome = Outcome {
    failure: Some(FailureKind::ServerError(500)),
    slow: false,
};
const E503: Outcome = Outcome {
    failure: Some(FailureKind::Gateway(503)),
    slow: false,
};
const REFUSED: Outcome = Outcome {
    failure: Some(FailureKind::LocalOrigin(LocalOrigin::ConnectFailure)),
    slow: false,
};
const SLOW: Outcome = Outcome {
    failure: None,
    slow: true,
};

/// Window of 10 judged from 10 outcomes, so every outcome is 10 points;
/// streaks off unless a test turns them on.
fn config(extra: &str) -> Config {
    let json = format!(
        r#"{{"detection": {{"windowSize": 10, "minRequests": 10, "consecutive5xxErrors": 0,
            "consecutiveLocalOriginFailures": 0 {extra}}},
           "ejection": {{"baseEjectionTime": "10s", "maxEjectionTime": "35s", "warmupDuration": "30s"}}}}"#
    );
    Config::parse(json.as_bytes()).unwrap()
}

struct Host {
    health: HostHealth,
    config: Config,
    now: u64,
    transitions: Vec<Transition>,
    refusals: usize,
}

impl Host {
    fn new(config: Config) -> Self {
        Host {
            health: HostHealth::new(0, config.detection.window_size),
            config,
            now: 0,
            transitions: Vec::new(),
            refusals: 0,
        }
    }

    fn feed(&mut self, outcome: Outcome, count: usize) -> &mut Self {
        self.feed_guarded(outcome, count, true)
    }

    fn feed_guarded(&mut self, outcome: Outcome, count: usize, may_eject: bool) -> &mut Self {
        for _ in 0..count {
            self.now += 10;
            self.tick();
            let recorded =
                self.health
                    .record(outcome, self.now, self.config.grading(), may_eject, 0);
            self.transitions.extend(recorded.transition);
            self.refusals += usize::from(recorded.ejection_refused.is_some());
        }
        self
    }

    fn at(&mut self, now: u64) -> &mut Self {
        self.now = now;
        self.tick();
        self
    }

    fn tick(&mut self) {
        while let Some(t) = self.health.advance(self.now, self.config.grading()) {
            self.transitions.push(t);
        }
    }

    fn state(&self) -> HostState {
        self.health.state()
    }

    fn weight(&self) -> u8 {
        self.health.weight_percent(self.now, self.config.grading())
    }

    fn last(&self) -> Transition {
        *self.transitions.last().expect("a transition")
    }
}

#[test]
fn nothing_is_judged_before_the_minimum_volume() {
    let mut host = Host::new(config(""));
    host.feed(E500, 9);
    assert_eq!(host.state(), HostState::Healthy);
    assert!(host.transitions.is_empty());
}

#[test]
fn healthy_to_degraded_at_the_degraded_threshold() {
    let mut host = Host::new(config(""));
    host.feed(OK, 8).feed(E500, 2);
    assert_eq!(host.state(), HostState::Healthy, "20% has not reached 30%");
    host.feed(E500, 1);
    assert_eq!(host.state(), HostState::Degraded);
    let t = host.last();
    assert_eq!((t.from, t.to), (HostState::Healthy, HostState::Degraded));
    assert_eq!(t.reason.to_string(), "failure 30% over 10 >= 30%");
    assert_eq!(host.weight(), 50);
}

#[test]
fn hysteresis_a_host_at_20_percent_stays_degraded() {
    let mut host = Host::new(config(""));
    host.feed(OK, 7).feed(E500, 3);
    assert_eq!(host.state(), HostState::Degraded);
    // Now steady at 20%: below the degrade threshold, above the recovery one.
    for _ in 0..20 {
        host.feed(OK, 4).feed(E500, 1);
        assert_eq!(host.state(), HostState::Degraded);
    }
    assert_eq!(
        host.transitions.len(),
        1,
        "no flapping: {:?}",
        host.transitions
    );
}

#[test]
fn degraded_back_to_healthy_only_below_the_recovered_threshold() {
    let mut host = Host::new(config(""));
    host.feed(OK, 6).feed(E500, 4).feed(OK, 9);
    assert_eq!(host.state(), HostState::Degraded, "10% is not below 10%");
    host.feed(OK, 1);
    assert_eq!(host.state(), HostState::Healthy);
    assert!(matches!(host.last().reason, Reason::Recovered { .. }));
    assert_eq!(host.weight(), 100);
}

#[test]
fn ejected_at_the_unhealthy_threshold() {
    let mut host = Host::new(config(""));
    host.feed(OK, 6).feed(E503, 4);
    assert_eq!(host.state(), HostState::Degraded, "40% has not reached 50%");
    host.feed(E503, 1);
    assert_eq!(host.state(), HostState::Unhealthy);
    let t = host.last();
    assert_eq!(t.to, HostState::Unhealthy);
    assert_eq!(t.ejected_for_ms, Some(10_000));
    assert_eq!(t.reason.to_string(), "failure 50% over 10 >= 50%");
    assert_eq!(host.weight(), 0);
}

#[test]
fn consecutive_failures_eject_before_the_window_is_judged() {
    let mut cfg = config("");
    cfg.detection.consecutive_5xx_errors = 5;
    let mut host = Host::new(cfg);
    host.feed(E500, 4).feed(OK, 1).feed(E500, 4);
    assert_eq!(
        host.state(),
        HostState::Healthy,
        "a success resets the streak"
    );
    host.feed(E500, 1);
    assert_eq!(host.state(), HostState::Unhealthy);
    assert_eq!(
        host.last().reason,
        Reason::Consecutive {
            streak: Streak::Failures,
            count: 5
        }
    );
}

#[test]
fn consecutive_gateway_errors_reset_on_other_server_errors() {
    let mut host = Host::new(config(r#", "consecutiveGatewayErrors": 3"#));
    host.feed(E503, 2).feed(E500, 1).feed(E503, 2);
    assert_eq!(host.state(), HostState::Healthy);
    host.feed(E503, 1);
    assert_eq!(host.state(), HostState::Unhealthy);
    assert_eq!(
        host.last().reason.to_string(),
        "3 consecutive gateway errors"
    );
}

#[test]
fn consecutive_local_origin_failures() {
    let mut cfg = config("");
    cfg.detection.consecutive_local_origin_failures = 3;
    let mut host = Host::new(cfg);
    host.feed(REFUSED, 2).feed(E503, 1).feed(REFUSED, 2);
    assert_eq!(
        host.state(),
        HostState::Healthy,
        "an answer from the host resets it"
    );
    host.feed(REFUSED, 1);
    assert_eq!(
        host.last().reason.to_string(),
        "3 consecutive local-origin failures"
    );
}

#[test]
fn outcomes_of_an_ejected_host_are_ignored() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    assert_eq!(host.state(), HostState::Unhealthy);
    let before = host.health.clone();
    host.feed(OK, 5);
    assert_eq!(host.state(), HostState::Unhealthy);
    assert_eq!(host.health.window(), before.window());
}

#[test]
fn returns_through_the_warmup_ramp() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    let ejected_at = host.now;
    host.at(ejected_at + 9_999);
    assert_eq!((host.state(), host.weight()), (HostState::Unhealthy, 0));
    host.at(ejected_at + 10_000);
    assert_eq!(host.state(), HostState::WarmingUp);
    assert_eq!(host.last().reason, Reason::EjectionOver);
    assert!(
        host.health.window().is_empty(),
        "judged afresh after return"
    );
    let start = ejected_at + 10_000;
    let mut weights = Vec::new();
    for offset in [0, 9_999, 10_000, 19_999, 20_000, 29_999] {
        host.at(start + offset);
        weights.push(host.weight());
    }
    assert_eq!(weights, [10, 10, 30, 30, 50, 50]);
    host.at(start + 30_000);
    assert_eq!((host.state(), host.weight()), (HostState::Healthy, 100));
    assert!(matches!(host.last().reason, Reason::WarmupOver { .. }));
}

#[test]
fn the_ramp_is_known_before_anyone_writes_the_return() {
    // Another worker reads the record after the ejection ended but before
    // any worker applied the time-driven transition.
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    let until = host.health.ejected_until_ms();
    assert_eq!(
        host.health
            .weight_percent(until + 15_000, host.config.grading()),
        30
    );
    assert!(host.health.due(until, host.config.grading()));
    assert!(!host.health.due(until - 1, host.config.grading()));
}

#[test]
fn failing_during_warmup_ejects_again_at_once_for_longer() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    let first = host.last();
    host.at(host.now + 10_000);
    assert_eq!(host.state(), HostState::WarmingUp);
    host.feed(E503, 1);
    assert_eq!(host.state(), HostState::Unhealthy);
    let second = host.last();
    assert!(matches!(
        second.reason,
        Reason::FailedInWarmup {
            failures: 1,
            volume: 1
        }
    ));
    assert_eq!(first.ejected_for_ms, Some(10_000));
    assert_eq!(second.ejected_for_ms, Some(20_000), "base x times ejected");
}

#[test]
fn an_isolated_failure_in_warmup_is_tolerated() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    host.at(host.now + 10_000);
    host.feed(OK, 3).feed(E500, 1);
    assert_eq!(
        host.state(),
        HostState::WarmingUp,
        "1 of 4 is below the ejection rate"
    );
}

#[test]
fn warmup_ending_with_failures_lands_in_degraded() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    host.at(host.now + 10_000);
    host.feed(OK, 4).feed(E500, 1);
    host.at(host.now + 30_000);
    assert_eq!(host.state(), HostState::Degraded, "20% is not recovered");
}

#[test]
fn ejection_time_backs_off_and_is_capped() {
    let mut host = Host::new(config(""));
    let mut durations = Vec::new();
    for _ in 0..5 {
        host.feed(E503, 10);
        durations.push(host.last().ejected_for_ms);
        let until = host.health.ejected_until_ms();
        host.at(until);
    }
    let expected = [10_000, 20_000, 30_000, 35_000, 35_000].map(Some);
    assert_eq!(durations, expected);
}

#[test]
fn staying_healthy_earns_the_backoff_back() {
    let mut host = Host::new(config(""));
    for _ in 0..3 {
        host.feed(E503, 10);
        host.at(host.health.ejected_until_ms());
    }
    assert_eq!(host.health.times_ejected(), 3);
    host.feed(OK, 10);
    host.at(host.now + 30_000);
    assert_eq!(host.state(), HostState::Healthy);
    // Two base ejection times of health earn two steps back.
    host.at(host.now + 20_000);
    host.feed(E503, 10);
    assert_eq!(host.last().ejected_for_ms, Some(20_000));
    // The count of ejections (status document, log line) is not earned
    // back: this was the fourth.
    assert_eq!(host.health.times_ejected(), 4);
    assert_eq!(host.last().times_ejected, 4);
}

/// A host ejected, back long enough to earn its whole backoff, then
/// ejected again: its second ejection is the second, though its ejection
/// time starts over at the base.
#[test]
fn a_second_ejection_after_the_backoff_was_earned_back_counts_two() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    host.at(host.health.ejected_until_ms());
    host.feed(OK, 10);
    host.at(host.now + 120_000);
    assert_eq!(host.state(), HostState::Healthy);
    host.feed(E503, 10);
    assert_eq!(
        host.last().ejected_for_ms,
        Some(10_000),
        "backoff earned back"
    );
    assert_eq!(host.health.times_ejected(), 2);
    assert_eq!(host.last().times_ejected, 2);
}

#[test]
fn a_refused_ejection_degrades_instead() {
    let mut host = Host::new(config(""));
    host.feed_guarded(E503, 10, false);
    assert_eq!(host.state(), HostState::Degraded);
    assert!(host.refusals >= 1);
    assert_eq!(host.transitions.len(), 1);
    assert_eq!(host.weight(), 50);
}

#[test]
fn slow_calls_degrade_but_never_eject() {
    let mut host = Host::new(config(
        r#", "slowCallThreshold": "100ms", "slowCallPercent": 50"#,
    ));
    host.feed(OK, 6).feed(SLOW, 4);
    assert_eq!(host.state(), HostState::Healthy, "40% has not reached 50%");
    host.feed(SLOW, 1);
    assert_eq!(host.state(), HostState::Degraded);
    assert_eq!(
        host.last().reason.to_string(),
        "slow calls 50% over 10 >= 50%"
    );
    host.feed(SLOW, 50);
    assert_eq!(host.state(), HostState::Degraded);
    host.feed(OK, 9);
    assert_eq!(
        host.state(),
        HostState::Degraded,
        "10% slow is not recovered"
    );
    host.feed(OK, 1);
    assert_eq!(host.state(), HostState::Healthy);
}

#[test]
fn no_warmup_means_straight_back_to_healthy() {
    let mut cfg = config("");
    cfg.ejection.warmup_duration = crate::config::Millis(0);
    let mut host = Host::new(cfg);
    host.feed(E503, 10);
    host.at(host.health.ejected_until_ms());
    assert_eq!((host.state(), host.weight()), (HostState::Healthy, 100));
}

#[test]
fn a_new_window_size_takes_effect_on_the_next_outcome() {
    let mut host = Host::new(config(""));
    host.feed(E500, 5);
    host.config = Config::parse(br#"{"detection": {"windowSize": 50}}"#).unwrap();
    host.feed(OK, 1);
    assert_eq!(host.health.window().capacity(), 50);
    assert_eq!(host.health.window().len(), 1);
}

#[test]
fn a_degraded_host_keeps_a_trickle_so_it_can_recover() {
    let mut cfg = config("");
    cfg.ejection.degraded_weight_percent = 0;
    let mut host = Host::new(cfg);
    host.feed(OK, 6).feed(E500, 4);
    assert_eq!(host.state(), HostState::Degraded);
    assert_eq!(host.weight(), MIN_DEGRADED_WEIGHT);
    host.feed(OK, 10);
    assert_eq!(host.state(), HostState::Healthy);
}

#[test]
fn a_host_back_for_overload_is_judged_by_its_rate_not_by_runs_of_errors() {
    let mut cfg = config("");
    cfg.detection.window_size = 20;
    cfg.detection.min_requests = 20;
    cfg.detection.consecutive_5xx_errors = 4;
    let mut host = Host::new(cfg);
    host.feed(E503, 4);
    assert_eq!(host.state(), HostState::Unhealthy);
    let now = host.now + 1_000;
    host.health
        .return_for_overload(now, host.config.grading())
        .expect("returned");
    host.now = now;
    // Four 503s in a row eject a Healthy host; this one stays Degraded.
    host.feed(OK, 2).feed(E503, 4).feed(OK, 1).feed(E503, 4);
    assert_eq!(host.state(), HostState::Degraded, "{:?}", host.last());
    // Once judged (20 outcomes), a rate over the unhealthy threshold
    // ejects it.
    host.feed(E503, 9);
    assert_eq!(host.state(), HostState::Unhealthy);
    assert!(matches!(
        host.last().reason,
        Reason::Rate(Rate {
            of: Measured::Failures,
            ..
        })
    ));
}

#[test]
fn a_degraded_host_that_fails_hard_is_still_ejected_by_a_run_of_errors() {
    let mut cfg = config("");
    cfg.detection.consecutive_5xx_errors = 5;
    let mut host = Host::new(cfg);
    host.feed(OK, 6).feed(E503, 4);
    assert_eq!(host.state(), HostState::Degraded);
    host.feed(E503, 1);
    assert_eq!(host.state(), HostState::Unhealthy);
    assert!(matches!(host.last().reason, Reason::Consecutive { .. }));
}

#[test]
fn a_host_back_for_overload_that_becomes_unreachable_is_ejected_at_once() {
    let mut cfg = config("");
    cfg.detection.consecutive_local_origin_failures = 3;
    let mut host = Host::new(cfg);
    host.feed(E503, 10);
    let now = host.now + 1_000;
    host.health
        .return_for_overload(now, host.config.grading())
        .expect("returned");
    host.now = now;
    host.feed(OK, 2).feed(REFUSED, 3);
    assert_eq!(host.state(), HostState::Unhealthy);
    assert_eq!(
        host.last().reason.to_string(),
        "3 consecutive local-origin failures"
    );
}

#[test]
fn an_overload_return_brings_the_host_back_degraded_and_judged_afresh() {
    let mut host = Host::new(config(""));
    host.feed(E503, 10);
    assert_eq!(host.state(), HostState::Unhealthy);
    let ejected_at = host.now;
    // Too soon after the ejection: the other host failed with it.
    assert!(host
        .health
        .return_for_overload(ejected_at + LOAD_SHIFT_DELAY_MS - 1, host.config.grading())
        .is_none());
    let back = host
        .health
        .return_for_overload(ejected_at + 1_000, host.config.grading())
        .expect("returned");
    assert_eq!(
        (back.from, back.to),
        (HostState::Unhealthy, HostState::Degraded)
    );
    assert_eq!(back.reason, Reason::Overload);
    assert_eq!(host.health.window().len(), 0, "judged afresh");
    host.now = ejected_at + 1_000;
    assert_eq!(host.weight(), 50);
}

#[test]
fn an_unreachable_host_is_not_taken_back_for_overload() {
    let mut cfg = config("");
    cfg.detection.consecutive_local_origin_failures = 3;
    let mut host = Host::new(cfg);
    host.feed(REFUSED, 3);
    assert_eq!(host.state(), HostState::Unhealthy);
    let later = host.now + 1_000;
    assert!(host
        .health
        .return_for_overload(later, host.config.grading())
        .is_none());
}
