//! Native tests of what the state layer learns under Envoy's retries
//! (Istio's default route policy: two retries on 503 and connect failures,
//! `previous_hosts`): inferred from the last attempt by a downstream
//! instance alone, and seen attempt by attempt by an upstream instance.

use std::collections::HashMap;
use std::rc::Rc;

use super::memory::{MemoryHost, SharedData};
use super::worker::{Routed, Steer, Worker};
use crate::classify::{FailureKind, Outcome};
use crate::config::Config;
use crate::model::HostState;
use crate::service::Observation;

const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const HOSTS: usize = 3;
/// Istio's default: the first attempt and two retries.
const ATTEMPTS: usize = 3;

fn config(json: &str) -> Rc<Config> {
    Rc::new(Config::parse(json.as_bytes()).expect("valid configuration"))
}

fn address(i: usize) -> String {
    format!("10.1.0.{i}:9080")
}

fn worker(shared: &Rc<SharedData>, config: Rc<Config>, seed: u64) -> Worker<MemoryHost> {
    let host = MemoryHost::new(Rc::clone(shared));
    host.cluster.replace(Some(CLUSTER.to_string()));
    Worker::new(host, config, "meshguard", 0, seed)
}

fn observation(failed: bool) -> Observation {
    Observation::plain(if failed {
        Outcome {
            failure: Some(FailureKind::Gateway(503)),
            slow: false,
        }
    } else {
        Outcome::SUCCESS
    })
}

fn state(worker: &Worker<MemoryHost>, host: &str) -> HostState {
    worker.host_state(CLUSTER, "", host)
}

/// Envoy's router and load balancer, simplified: attempt k goes to the
/// k-th host the steering header names, else to a random host not tried
/// yet (previous_hosts); a 503 is retried up to twice.
struct Router {
    random: u64,
    /// Attempts per host, and client-visible errors.
    attempts: HashMap<String, usize>,
    errors: usize,
}

impl Router {
    fn new() -> Self {
        Router {
            random: 0x2545_f491_4f6c_dd1d,
            attempts: HashMap::new(),
            errors: 0,
        }
    }

    fn pick(&mut self, tried: &[String]) -> String {
        loop {
            self.random = crate::steering::xorshift(self.random);
            let host = address((self.random % HOSTS as u64) as usize);
            if !tried.contains(&host) {
                return host;
            }
        }
    }

    /// One client request through `down` (and `up`, the upstream
    /// instance, when given); `fails` says whether an attempt at a host fails.
    fn request(
        &mut self,
        down: &mut Worker<MemoryHost>,
        mut up: Option<&mut Worker<MemoryHost>>,
        fails: &mut dyn FnMut(&str) -> bool,
    ) {
        let config = down.config_for(None).0;
        let named: Vec<Rc<str>> = match down
            .request_path_active()
            .then(|| down.steer(CLUSTER, ""))
            .flatten()
        {
            Some(Steer::To { hosts, value, .. }) => {
                let text = std::str::from_utf8(value).unwrap();
                let listed: Vec<&str> = text.split(',').collect();
                let hosts_text: Vec<&str> = hosts.iter().map(|h| &**h).collect();
                assert_eq!(listed, hosts_text, "the header names the hosts in order");
                hosts.to_vec()
            }
            _ => Vec::new(),
        };
        let mut tried: Vec<String> = Vec::new();
        let mut failed = false;
        for attempt in 0..ATTEMPTS {
            let host = match named.get(attempt) {
                Some(h) => h.to_string(),
                None => self.pick(&tried),
            };
            failed = fails(&host);
            *self.attempts.entry(host.clone()).or_insert(0) += 1;
            if let Some(up) = up.as_deref_mut() {
                let up_config = up.config_for(None).0;
                up.observe_request(
                    None,
                    "",
                    &up_config,
                    &host,
                    observation(failed),
                    Routed::Envoy,
                );
            }
            tried.push(host);
            if !failed {
                break;
            }
        }
        self.errors += usize::from(failed);
        let last = tried.last().cloned().unwrap_or_default();
        down.host().attempts.set(Some(tried.len() as u64));
        let routed = if named.is_empty() {
            Routed::Envoy
        } else {
            Routed::To(&named)
        };
        down.observe_request(None, "", &config, &last, observation(failed), routed);
    }
}

/// `seconds` of traffic at 100 requests a second with a tick every 100 ms.
fn run(
    router: &mut Router,
    down: &mut Worker<MemoryHost>,
    mut up: Option<&mut Worker<MemoryHost>>,
    from_ms: u64,
    seconds: u64,
    fails: &mut dyn FnMut(&str) -> bool,
) -> u64 {
    let mut now = from_ms;
    for _ in 0..seconds * 10 {
        now += 100;
        for w in [Some(&mut *down), up.as_deref_mut()].into_iter().flatten() {
            w.host().now.set(now);
            w.tick(now);
        }
        for _ in 0..10 {
            router.request(down, up.as_deref_mut(), fails);
        }
    }
    now
}

/// Host 2 fails 40 % of its attempts (a fixed pattern, 2 in 5).
fn grey() -> impl FnMut(&str) -> bool {
    let mut n = 0usize;
    move |host: &str| {
        if host != address(2) {
            return false;
        }
        n += 1;
        n % 5 < 2
    }
}

#[test]
fn retries_hide_a_grey_host_from_the_last_attempt_until_its_retries_are_named() {
    let shared = Rc::new(SharedData::default());
    let mut down = worker(&shared, config(r#"{"steering":{"discoveryPercent":0}}"#), 1);
    let mut router = Router::new();
    let mut fails = grey();
    let now = run(&mut router, &mut down, None, 1_000, 20, &mut fails);
    assert_eq!(
        router.errors, 0,
        "Istio's retries hide every failure from clients"
    );
    assert_eq!(
        state(&down, &address(2)),
        HostState::Degraded,
        "retried attempts were attributed to the grey host"
    );
    // Degraded: about half a healthy host's share of the attempts.
    router.attempts.clear();
    run(&mut router, &mut down, None, now, 20, &mut fails);
    let total: usize = router.attempts.values().sum();
    let share = router.attempts[&address(2)] as f64 / total as f64;
    assert!(
        share < 0.26,
        "grey host's share of attempts {share:.3} (fair 0.333, Degraded 0.2)"
    );
    assert_eq!(router.errors, 0);
}

#[test]
fn without_retries_named_a_grey_host_stays_hidden() {
    // The same traffic, base64 steering (one host per header): nothing
    // can name the retries' hosts, so the retried failures go unattributed.
    let shared = Rc::new(SharedData::default());
    let mut down = worker(&shared, config(r#"{"steering":{"encoding":"base64"}}"#), 1);
    let mut router = Router::new();
    let mut fails = grey();
    run(&mut router, &mut down, None, 1_000, 20, &mut fails);
    assert_eq!(state(&down, &address(2)), HostState::Healthy);
}

#[test]
fn an_upstream_instance_grades_every_attempt_and_the_downstream_one_steers() {
    let shared = Rc::new(SharedData::default());
    let mut down = worker(&shared, config(r#"{"steering":{"discoveryPercent":0}}"#), 1);
    let mut up = worker(&shared, config(r#"{"mode":"upstream"}"#), 2);
    let mut router = Router::new();
    let mut fails = grey();
    let now = run(&mut router, &mut down, Some(&mut up), 1_000, 10, &mut fails);
    assert_eq!(state(&down, &address(2)), HostState::Degraded);
    assert_eq!(state(&up, &address(2)), HostState::Degraded);
    router.attempts.clear();
    let now = run(&mut router, &mut down, Some(&mut up), now, 20, &mut fails);
    let total: usize = router.attempts.values().sum();
    let share = router.attempts[&address(2)] as f64 / total as f64;
    assert!(share < 0.26, "grey host's share of attempts {share:.3}");
    assert_eq!(router.errors, 0);

    // The downstream instance no longer grades hosts itself: failures only
    // it saw (the upstream instance saw these attempts succeed) change
    // nothing, so nothing is counted twice.
    let config = down.config_for(None).0;
    for _ in 0..50 {
        down.host().attempts.set(Some(1));
        down.observe_request(
            None,
            "",
            &config,
            &address(0),
            observation(true),
            Routed::Envoy,
        );
    }
    assert_eq!(state(&down, &address(0)), HostState::Healthy);

    // The upstream instance is removed: within its lease the downstream
    // one grades hosts again.
    let mut quiet = |_: &str| false;
    let now = run(&mut router, &mut down, None, now, 35, &mut quiet);
    down.host().now.set(now);
    for _ in 0..50 {
        down.observe_request(
            None,
            "",
            &config,
            &address(0),
            observation(true),
            Routed::Envoy,
        );
    }
    assert_ne!(state(&down, &address(0)), HostState::Healthy);
}

#[test]
fn naming_retries_ends_when_retries_stop() {
    let shared = Rc::new(SharedData::default());
    let mut down = worker(&shared, config(r#"{"steering":{"discoveryPercent":0}}"#), 1);
    let mut router = Router::new();
    // One burst of failures on host 1, then none.
    let mut left = 40usize;
    let mut burst = |host: &str| {
        if host == address(1) && left > 0 {
            left -= 1;
            return true;
        }
        false
    };
    let now = run(&mut router, &mut down, None, 1_000, 5, &mut burst);
    assert!(down.request_path_active(), "naming the retries' hosts");
    let mut quiet = |_: &str| false;
    let now = run(&mut router, &mut down, None, now, 40, &mut quiet);
    down.host().now.set(now);
    down.tick(now);
    assert!(
        down.steer(CLUSTER, "").is_none(),
        "30 s without retries: Envoy's balancer again"
    );
    assert_eq!(state(&down, &address(1)), HostState::Healthy);
}
