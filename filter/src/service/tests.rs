use super::*;
use crate::classify::FailureKind;

const FAIL: Outcome = Outcome {
    failure: Some(FailureKind::Gateway(503)),
    slow: false,
};

fn config() -> Config {
    Config::parse(
        br#"{"detection": {"windowSize": 10, "minRequests": 10},
             "circuitBreaker": {"enabled": false},
             "ejection": {"baseEjectionTime": "10s", "warmupDuration": "30s"},
             "limits": {"maxHostsPerService": 4, "hostIdleTimeout": "60s"}}"#,
    )
    .unwrap()
}

fn host(n: usize) -> String {
    format!("10.0.0.{n}:8080")
}

fn successes(count: u32) -> Pending {
    Pending {
        successes: [count, 0, 0, 0],
        ..Pending::default()
    }
}

fn failures(count: usize) -> Pending {
    Pending {
        ordered: vec![Observation::plain(FAIL); count],
        ..Pending::default()
    }
}

struct Service {
    record: ServiceHealth,
    config: Config,
    events: Vec<Event>,
    /// Every host seen, as a worker's members would be.
    members: std::collections::BTreeSet<String>,
}

impl Service {
    fn new(config: Config) -> Self {
        Service {
            record: ServiceHealth::new("outbound|80||reviews", 1),
            config,
            events: Vec::new(),
            members: Default::default(),
        }
    }

    fn apply(&mut self, address: &str, pending: Pending, now: u64) {
        self.members.insert(address.to_string());
        self.record.note_members(self.members.len(), false, now);
        // As a worker's flush does: time first, then the breaker, then the host.
        self.record.advance(now, &self.config, &mut self.events);
        self.record
            .apply_breaker(&pending, now, &self.config, &mut self.events);
        let mut random = || 0;
        self.record.apply(
            address,
            &pending,
            now,
            &self.config,
            &mut random,
            &mut self.events,
        );
    }

    /// A host without a record is Healthy.
    fn state(&self, address: &str) -> HostState {
        self.record
            .host(address)
            .map_or(HostState::Healthy, |h| h.health.state())
    }

    fn weights(&self, now: u64) -> Vec<u8> {
        self.members
            .iter()
            .map(|a| {
                self.record
                    .host(a)
                    .map_or(100, |h| h.health.weight_percent(now, self.config.grading()))
            })
            .collect()
    }

    fn refusals(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::EjectionRefused { .. }))
            .count()
    }
}

/// With `hosts` hosts all failing hard, how many end up ejected.
fn ejected_when_all_fail(hosts: usize, max_percent: u8) -> usize {
    let mut config = config();
    config.limits.max_hosts_per_service = 64;
    config.ejection.max_ejection_percent = max_percent;
    let mut service = Service::new(config);
    for n in 0..hosts {
        service.apply(&host(n), successes(1), 0);
    }
    for n in 0..hosts {
        service.apply(&host(n), failures(20), 1);
    }
    service.record.ejected()
}

#[test]
fn ejection_cap_with_1_2_3_and_10_hosts() {
    assert_eq!(ejected_when_all_fail(1, 50), 1, "one host may always go");
    assert_eq!(ejected_when_all_fail(2, 50), 1);
    assert_eq!(ejected_when_all_fail(3, 50), 1);
    assert_eq!(ejected_when_all_fail(10, 50), 5);
    assert_eq!(
        ejected_when_all_fail(3, 10),
        1,
        "small services are protected"
    );
    assert_eq!(ejected_when_all_fail(10, 100), 10);
}

#[test]
fn hosts_kept_in_by_the_cap_are_degraded_and_reported() {
    let mut service = Service::new(config());
    service.apply(&host(1), successes(1), 0);
    service.apply(&host(2), successes(1), 0);
    service.apply(&host(1), failures(10), 1);
    service.apply(&host(2), failures(10), 1);
    assert_eq!(service.state(&host(1)), HostState::Unhealthy);
    assert_eq!(service.state(&host(2)), HostState::Degraded);
    assert!(service.refusals() > 0);
}

#[test]
fn a_returning_host_frees_a_place_under_the_cap() {
    let mut service = Service::new(config());
    service.apply(&host(1), successes(1), 0);
    service.apply(&host(2), successes(1), 0);
    service.apply(&host(1), failures(10), 1);
    service.apply(&host(2), failures(10), 1);
    // host 1's ejection (10 s) ends; host 2 keeps failing and now goes.
    service.apply(&host(2), failures(1), 10_001);
    assert_eq!(service.state(&host(1)), HostState::WarmingUp);
    assert_eq!(service.state(&host(2)), HostState::Unhealthy);
}

#[test]
fn successes_written_before_failures_reset_the_streak() {
    let mut service = Service::new(config());
    let mixed = Pending {
        successes: [3, 0, 0, 0],
        ordered: vec![Observation::plain(FAIL); 4],
        ..Pending::default()
    };
    service.apply(&host(1), mixed, 0);
    assert_eq!(
        service.state(&host(1)),
        HostState::Healthy,
        "4 in a row, not 5"
    );
    let window = service
        .record
        .host(&host(1))
        .unwrap()
        .health
        .window()
        .clone();
    assert_eq!((window.len(), window.failures()), (7, 4));
}

#[test]
fn weights_reflect_grades() {
    let mut service = Service::new(config());
    for n in 1..=3 {
        service.apply(&host(n), successes(10), 0);
    }
    // A worker hands over a host's successes with its first failures.
    let mut history = failures(4);
    history.history = 6;
    service.apply(&host(2), history, 1);
    service.apply(&host(3), failures(10), 1);
    assert_eq!(service.weights(2), [100, 50, 0]);
    // host 3 returns after 10 s and ramps.
    assert_eq!(service.weights(10_001), [100, 50, 10]);
}

#[test]
fn time_driven_changes_are_due_and_applied() {
    let mut service = Service::new(config());
    service.apply(&host(1), failures(10), 0);
    assert!(!service.record.due(9_999, &service.config));
    assert!(service.record.due(10_000, &service.config));
    let mut events = Vec::new();
    assert!(service.record.advance(45_000, &service.config, &mut events));
    let states: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Transition { transition, .. } => Some(transition.to),
            _ => None,
        })
        .collect();
    assert_eq!(states, [HostState::WarmingUp, HostState::Healthy]);
}

#[test]
fn only_hosts_with_evidence_get_a_record() {
    let mut service = Service::new(config());
    for n in 0..100 {
        service.apply(&host(n), successes(50), 0);
    }
    assert!(service.record.hosts.is_empty(), "successes need no record");
    assert_eq!(
        service.record.size(),
        100,
        "but the service's size is known"
    );
    service.apply(&host(7), failures(1), 1);
    assert_eq!(service.record.hosts.len(), 1);
    assert_eq!(service.record.hosts[0].address, host(7));
}

#[test]
fn the_watched_table_is_bounded_and_newer_evidence_takes_the_place_of_older() {
    let mut config = config();
    config.limits.max_watched_hosts_per_service = 4;
    let mut service = Service::new(config);
    for n in 0..100 {
        service.apply(&host(n), failures(1), n as u64);
    }
    assert_eq!(service.record.hosts.len(), 4);
    // Healthy hosts with one failure each: the most recent are kept.
    assert!(service.record.host(&host(99)).is_some());
    assert!(service.record.host(&host(0)).is_none());
    // A host with more failures is not pushed out by one with fewer.
    service.apply(&host(98), failures(2), 200);
    service.apply(&host(97), failures(2), 200);
    service.apply(&host(96), failures(2), 200);
    service.apply(&host(99), failures(2), 200);
    service.apply(&host(50), failures(1), 300);
    assert!(service.record.host(&host(50)).is_none());
    assert!(service
        .events
        .iter()
        .any(|e| matches!(e, Event::HostNotTracked { .. })));
}

#[test]
fn graded_hosts_are_never_evicted_for_newcomers() {
    let mut config = config();
    config.limits.max_watched_hosts_per_service = 4;
    let mut service = Service::new(config);
    for n in 0..4 {
        service.apply(&host(n), failures(10), 0);
    }
    // One is ejected, the others Degraded under the cap: nothing to evict.
    service.apply(&host(50), failures(10), 1);
    assert!(service.record.host(&host(50)).is_none());
    assert!(service
        .events
        .iter()
        .any(|e| matches!(e, Event::HostNotTracked { .. })));
    assert_eq!(service.record.hosts.len(), 4);
}

#[test]
fn hosts_are_released_once_nothing_sets_them_apart() {
    let mut service = Service::new(config());
    // One failure, then a clean window: Healthy with a failure on record.
    service.apply(&host(1), failures(1), 0);
    service.apply(&host(1), successes(5), 1);
    assert!(service.record.host(&host(1)).is_some());
    // The failure rolls out of the 10-outcome window: released.
    service.apply(&host(1), successes(5), 2);
    let mut events = Vec::new();
    service.record.advance(3, &service.config, &mut events);
    assert!(service.record.host(&host(1)).is_none());
    // An ejected host stays until its backoff is earned back: ejected at
    // 10 for 10 s, warm-up 30 s, then one base ejection time (10 s).
    service.apply(&host(2), failures(10), 10);
    service.apply(&host(2), successes(10), 40_010);
    service.record.advance(40_011, &service.config, &mut events);
    assert_eq!(service.state(&host(2)), HostState::Healthy);
    assert!(
        service.record.host(&host(2)).is_some(),
        "backoff not earned back"
    );
    service.record.advance(50_010, &service.config, &mut events);
    assert!(service.record.host(&host(2)).is_none());
}

#[test]
fn idle_healthy_hosts_are_forgotten() {
    let mut service = Service::new(config());
    service.apply(&host(1), failures(1), 0);
    service.apply(&host(1), successes(5), 0);
    service.apply(&host(2), failures(10), 55_000);
    let mut events = Vec::new();
    assert!(service.record.due(60_000, &service.config));
    service.record.advance(60_000, &service.config, &mut events);
    assert!(
        service.record.host(&host(1)).is_none(),
        "scaled-down host forgotten"
    );
    assert!(service.record.host(&host(2)).is_some(), "graded host kept");
}

#[test]
fn pending_failures_are_bounded() {
    let mut pending = Pending::default();
    for _ in 0..1000 {
        pending.add(Observation::plain(FAIL));
    }
    pending.add(Observation::plain(Outcome::SUCCESS));
    assert_eq!(pending.ordered.len(), MAX_PENDING_FAILURES);
    assert_eq!(pending.successes, [1, 0, 0, 0]);
    assert!(!pending.is_empty());
}

#[test]
fn records_survive_the_shared_data_round_trip() {
    let mut service = Service::new(config());
    service.apply(&host(1), failures(1), 0);
    service.apply(&host(1), successes(5), 0);
    service.apply(&host(2), failures(10), 0);
    let bytes = encode(&service.record).unwrap();
    assert_eq!(decode(&bytes).as_ref(), Some(&service.record));
    assert!(
        bytes.len() < 200,
        "small enough to copy per read: {}",
        bytes.len()
    );
}

#[test]
fn garbage_does_not_decode() {
    assert_eq!(decode(&[0xff; 7]), None);
    assert_eq!(decode(&[]), None);
}

fn breaker_config() -> Config {
    Config::parse(
        br#"{"detection": {"windowSize": 10, "minRequests": 10},
             "circuitBreaker": {"windowSize": 10, "minRequests": 10, "openDuration": "5s",
                                "halfOpenRequests": 1, "closeAfterSuccesses": 2}}"#,
    )
    .unwrap()
}

/// One half-open probe that succeeded.
fn successful_probe() -> Pending {
    Pending {
        ordered: vec![Observation {
            outcome: Outcome::SUCCESS,
            breaker_slow: false,
            probe: true,
        }],
        ..Pending::default()
    }
}

fn breaker_events(events: &[Event]) -> Vec<crate::model::BreakerState> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Breaker(t) => Some(t.to),
            _ => None,
        })
        .collect()
}

#[test]
fn the_breaker_sees_every_host_of_the_service() {
    use crate::breaker::Admission;
    use crate::model::BreakerState;
    let mut service = Service::new(breaker_config());
    // Three hosts failing together: 12 failures spread over them.
    for n in 0..3 {
        service.apply(&host(n), failures(4), 0);
    }
    assert_eq!(service.record.breaker.state(), BreakerState::Open);
    assert_eq!(breaker_events(&service.events), [BreakerState::Open]);
    // Half-open after 5 s, through the time-driven path.
    let mut events = Vec::new();
    assert!(service.record.due(5_000, &service.config));
    service.record.advance(5_000, &service.config, &mut events);
    assert_eq!(breaker_events(&events), [BreakerState::HalfOpen]);
    // Two probes in turn close it.
    for now in [5_001, 5_002] {
        let cb = service.config.circuit_breaker.clone();
        assert_eq!(service.record.breaker.admit(now, &cb).0, Admission::Probe);
        service.apply(&host(0), successful_probe(), now);
    }
    assert_eq!(service.record.breaker.state(), BreakerState::Closed);
}

/// A whole-service outage, then the service back: the breaker opens and
/// later closes, and the hosts are not graded down for the outage's
/// failures (they were, at the first failure after the return, and a
/// refused ejection fired on them while the breaker was half-open).
#[test]
fn hosts_start_afresh_when_the_breaker_closes_after_an_outage() {
    use crate::model::BreakerState;
    let mut config = breaker_config();
    config.detection.window_size = 20;
    config.detection.min_requests = 10;
    config.detection.consecutive_5xx_errors = 0;
    config.detection.consecutive_gateway_errors = 0;
    let mut service = Service::new(config);
    for n in 0..3 {
        service.apply(&host(n), successes(10), 0);
    }
    // The outage: every host fails 40% of 20, then the breaker opens.
    for n in 0..3 {
        service.apply(&host(n), failures(8), 1);
    }
    assert_eq!(service.record.breaker.state(), BreakerState::Open);
    // Forgotten at once: an ejection the cap refused cannot fire later on
    // the outage's failures (once another host's ejection ends).
    for n in 0..3 {
        let failures = service
            .record
            .host(&host(n))
            .map(|h| h.health.window().failures());
        assert!(
            failures.is_none_or(|f| f == 0),
            "host {n}: {failures:?} outage failures kept"
        );
    }
    let graded_during = (0..3)
        .filter(|&n| service.state(&host(n)) != HostState::Healthy)
        .count();
    // Back: half-open, two probes succeed, closed.
    let mut events = Vec::new();
    service.record.advance(5_000, &service.config, &mut events);
    for now in [5_001, 5_002] {
        service.apply(&host(0), successful_probe(), now);
    }
    assert_eq!(service.record.breaker.state(), BreakerState::Closed);
    // One ordinary failure each after the return grades nobody down.
    let before = service.events.len();
    for n in 0..3 {
        service.apply(&host(n), successes(9), 5_010);
        service.apply(&host(n), failures(1), 5_011);
    }
    let downgrades: Vec<_> = service.events[before..]
        .iter()
        .filter(|e| matches!(e, Event::Transition { transition, .. } if transition.to != HostState::Healthy))
        .collect();
    assert!(
        downgrades.is_empty(),
        "graded down for the outage: {downgrades:?} ({graded_during} graded during it)"
    );
    for n in 0..3 {
        let window = service
            .record
            .host(&host(n))
            .map(|h| h.health.window().failures());
        assert!(
            window.is_none_or(|f| f <= 1),
            "host {n}: {window:?} failures on record"
        );
    }
}

#[test]
fn a_disabled_breaker_never_opens() {
    let mut service = Service::new(config());
    for n in 0..3 {
        service.apply(&host(n), failures(10), 0);
    }
    assert_eq!(
        service.record.breaker.state(),
        crate::model::BreakerState::Closed
    );
}

#[test]
fn breaker_slow_successes_are_counted_apart() {
    let mut pending = Pending::default();
    pending.add(Observation {
        outcome: Outcome {
            failure: None,
            slow: true,
        },
        breaker_slow: true,
        probe: false,
    });
    pending.add(Observation {
        outcome: Outcome::SUCCESS,
        breaker_slow: true,
        probe: false,
    });
    assert_eq!(pending.successes, [0, 0, 1, 1]);
}

#[test]
fn a_failure_run_is_counted_across_workers_despite_batched_successes() {
    // Five failures in a row, split over two workers; worker B also holds
    // successes from before the run, which it writes only with its first
    // failure. They must not break the run: the host goes at failure 5.
    let mut cfg = config();
    cfg.detection.consecutive_5xx_errors = 5;
    let mut service = Service::new(cfg);
    service.record.begin_write();
    service.apply(&host(1), successes(20), 0);
    let seen_by_b = service.record.writes;
    let one_failure = |seen: u64| Pending {
        ordered: vec![Observation::plain(FAIL)],
        seen_writes: seen,
        ..Pending::default()
    };
    // Worker A: failures 1 and 2 (it keeps its view up to date).
    for _ in 0..2 {
        service.record.begin_write();
        let seen = service.record.writes - 1;
        service.apply(&host(1), one_failure(seen), 1);
    }
    // Worker B: its old successes, then failure 3.
    service.record.begin_write();
    let b = Pending {
        successes: [7, 0, 0, 0],
        ordered: vec![Observation::plain(FAIL)],
        seen_writes: seen_by_b,
        history: 0,
    };
    service.apply(&host(1), b, 2);
    // Worker A: failures 4 and 5.
    for _ in 0..2 {
        service.record.begin_write();
        let seen = service.record.writes - 1;
        service.apply(&host(1), one_failure(seen), 3);
    }
    assert_eq!(service.state(&host(1)), HostState::Unhealthy);
}

#[test]
fn successes_seen_after_the_run_began_still_break_it() {
    let mut cfg = config();
    cfg.detection.consecutive_5xx_errors = 5;
    let mut service = Service::new(cfg);
    for _ in 0..3 {
        service.record.begin_write();
        service.apply(&host(1), failures(1), 0);
    }
    // A worker that had seen the run (its view is current) reports a success.
    service.record.begin_write();
    let current = Pending {
        successes: [1, 0, 0, 0],
        seen_writes: service.record.writes - 1,
        ..Pending::default()
    };
    service.apply(&host(1), current, 1);
    service.record.begin_write();
    service.apply(&host(1), failures(4), 2);
    assert_eq!(
        service.state(&host(1)),
        HostState::Healthy,
        "the success broke the run"
    );
}

#[test]
fn the_success_that_completes_the_window_can_eject() {
    // Nine failures (below minRequests, streaks off), then a success makes
    // the window judgeable at 90% failures: that is an ejection, not a
    // refusal by the cap.
    let mut cfg = config();
    cfg.detection.consecutive_5xx_errors = 0;
    cfg.detection.consecutive_local_origin_failures = 0;
    let mut service = Service::new(cfg);
    for n in 1..=3 {
        service.apply(&host(n), successes(10), 0);
    }
    service.apply(&host(4), failures(9), 1);
    assert_eq!(service.state(&host(4)), HostState::Healthy);
    service.apply(&host(4), successes(1), 2);
    assert_eq!(service.state(&host(4)), HostState::Unhealthy);
    assert_eq!(service.refusals(), 0);
}

/// A host ejected for its answers; then, `after_ms` later, the hosts that
/// took its traffic start failing at 40% (the overload cascade).
fn cascade(after_ms: u64) -> Service {
    let mut service = Service::new(config());
    for n in 1..=3 {
        service.apply(&host(n), successes(10), 0);
    }
    service.apply(&host(2), failures(5), 1_000);
    assert_eq!(service.state(&host(2)), HostState::Unhealthy);
    let t = 1_000 + after_ms;
    for _ in 0..4 {
        service.apply(&host(1), successes(3), t);
        service.apply(&host(1), failures(2), t);
    }
    service
}

#[test]
fn hosts_failing_after_an_ejection_bring_the_ejected_host_back() {
    let service = cascade(1_000);
    assert_eq!(service.state(&host(1)), HostState::Degraded);
    assert_eq!(
        service.state(&host(2)),
        HostState::Degraded,
        "ejecting it overloaded the others: it comes back at the Degraded weight"
    );
    assert_eq!(service.record.ejected(), 0);
    let returned = service.events.iter().any(|e| {
        matches!(e, Event::Transition { address, transition }
            if *address == host(2) && transition.reason == Reason::Overload)
    });
    assert!(returned, "{:?}", service.events);
}

#[test]
fn hosts_failing_together_do_not_bring_each_other_back() {
    let service = cascade(100);
    assert_eq!(service.state(&host(1)), HostState::Degraded);
    assert_eq!(service.state(&host(2)), HostState::Unhealthy);
}

#[test]
fn an_unrelated_healthy_service_keeps_its_ejection() {
    let mut service = Service::new(config());
    for n in 1..=3 {
        service.apply(&host(n), successes(10), 0);
    }
    service.apply(&host(2), failures(5), 1_000);
    service.apply(&host(1), successes(20), 5_000);
    service.apply(&host(3), successes(20), 5_000);
    assert_eq!(service.state(&host(2)), HostState::Unhealthy);
}

#[test]
fn history_counts_only_for_the_write_that_creates_the_record() {
    let mut service = Service::new(config());
    // Another worker created the record: 4 failures of 10.
    let mut first = failures(4);
    first.history = 6;
    service.apply(&host(1), first, 1);
    assert_eq!(service.state(&host(1)), HostState::Degraded);
    // A second worker, whose view was stale, hands over its own (older)
    // successes with its first failure: they must not dilute the window.
    let mut late = failures(1);
    late.history = 9;
    service.apply(&host(1), late, 2);
    let window = service
        .record
        .host(&host(1))
        .unwrap()
        .health
        .window()
        .clone();
    assert_eq!((window.len(), window.failures()), (10, 5));
    // ... nor break the run: that was its fifth failure in a row.
    assert_eq!(service.state(&host(1)), HostState::Unhealthy);
}
