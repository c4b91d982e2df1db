//! meshguard in the real Envoy on large services whose membership changes
//! through EDS (issue 12): one multi-host mg-upstream (up to 200 hosts on
//! 127.0.1.x / 127.0.2.x) behind Envoy, cluster `demo` fed from a watched
//! EDS file ([`host_tests::fleet`]). Each test asserts what a user sees:
//! client errors, and which hosts get the traffic.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Logs,
//! the access log, the rendered config and the EDS file stay in
//! target/tmp/<test name>/. The tests run one at a time at a fixed
//! [`RATE`] and print a line per second of traffic; run alone with
//! `cargo test -p host-tests --test envoy_large_service -- --nocapture`.
//!
//! MESHGUARD_EXTRA_CONFIG (a JSON object, optional) is merged into the plugin
//! configuration of every meshguard test, for example
//! `{"limits":{"maxHostsPerService":512}}` to try a filter that needs it.

use std::sync::{Mutex, MutexGuard};

use host_tests::fleet::{EdsFleet, FleetOptions};
use host_tests::seconds::{total, Second, Seconds};
use host_tests::traffic::Tally;
use host_tests::Behaviour;

/// Client requests per second (sequential, one connection each).
const RATE: u32 = 300;

/// Default configuration with short detection windows (as in
/// `host_tests::TEST_PLUGIN_CONFIG`) and the status endpoint. Ejections last
/// 30 s (the default): the bad host stays bad in these tests, and a 3 s
/// ejection would bring it back into warm-up every few seconds, each return
/// costing a request or two by design, which is not what they measure.
const CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"30s","maxEjectionTime":"60s","warmupDuration":"4s"},"status":{"enabled":true,"useRemoteAddress":true}}"#;
/// The upstream instance's configuration for [`CONFIG`]'s downstream one:
/// the same detection and ejection (an upstream instance takes nothing else).
const UPSTREAM_CONFIG: &str = r#"{"mode":"upstream","detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"30s","maxEjectionTime":"60s","warmupDuration":"4s"}}"#;
/// `host_tests::TEST_PLUGIN_CONFIG` (3 s ejections) and the status endpoint:
/// for the scale-down test, where the ejection should end while the test
/// watches steering settle.
const SHORT_EJECTION_CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"},"status":{"enabled":true,"useRemoteAddress":true}}"#;

/// Share of all requests the ejected host may still receive after detection
/// (attempts, retried ones included): a quarter of a fair share at 100
/// hosts, five times the discovery trickle (`discoveryPercent` 5 / 100 hosts
/// = 0.05 %).
const EJECTED_MAX_SHARE: f64 = 0.0025;
/// Detection may cost at most this many client errors.
const DETECTION_MAX_ERRORS: u64 = 30;

/// One test at a time: several Envoys at once on a 2-core box would turn
/// shares and timings into a load test.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `base` with MESHGUARD_EXTRA_CONFIG merged in.
fn plugin_config(base: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).expect("test config is JSON");
    if let Ok(extra) = std::env::var("MESHGUARD_EXTRA_CONFIG") {
        if !extra.trim().is_empty() {
            let extra: serde_json::Value = serde_json::from_str(&extra)
                .unwrap_or_else(|e| panic!("MESHGUARD_EXTRA_CONFIG is not JSON: {e}"));
            merge(&mut v, extra);
        }
    }
    let s = v.to_string();
    println!("meshguard config: {s}");
    s
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// Sends [`RATE`] req/s one second at a time and measures each second.
struct Driver<'a> {
    s: &'a EdsFleet,
    seconds: Seconds<'a>,
}

impl<'a> Driver<'a> {
    fn new(s: &'a EdsFleet) -> Self {
        Self {
            s,
            seconds: Seconds::new(s, RATE),
        }
    }

    /// Runs seconds until `done(seconds so far)` or `max` seconds, printing
    /// each with `label`; `bad` is the host to show.
    fn run_until(
        &mut self,
        label: &str,
        max: usize,
        bad: Option<usize>,
        mut done: impl FnMut(&[Second]) -> bool,
    ) -> Vec<Second> {
        let mut out = Vec::new();
        while out.len() < max {
            let sec = self.seconds.next_second();
            println!("{label} {:2}: {}", out.len(), self.line(&sec, bad));
            out.push(sec);
            if done(&out) {
                break;
            }
        }
        out
    }

    fn run(&mut self, label: &str, secs: usize, bad: Option<usize>) -> Vec<Second> {
        self.run_until(label, secs, bad, |_| false)
    }

    /// One line: totals, the bad host, the least and most served member.
    fn line(&self, sec: &Second, bad: Option<usize>) -> String {
        let t = &sec.tally;
        let mut out = format!("{} req, {} not 200", t.total, t.not_ok());
        if let Some(b) = bad {
            out += &format!(
                "; bad {} served {} received {}",
                self.s.name(b),
                t.served_by(self.s.name(b)),
                sec.got(b)
            );
        }
        let members: Vec<usize> = self
            .s
            .members()
            .into_iter()
            .filter(|m| Some(*m) != bad)
            .collect();
        if let Some((lo, lo_i, hi, hi_i)) = spread(self.s, t, &members) {
            out += &format!(
                "; members served min {lo} ({}) max {hi} ({})",
                self.s.name(lo_i),
                self.s.name(hi_i)
            );
        }
        let gone: u64 = (0..sec.got.len())
            .filter(|i| !self.s.members().contains(i))
            .map(|i| sec.got(i))
            .sum();
        if gone > 0 {
            out += &format!("; non-members received {gone}");
        }
        out + &format!("; steered {:.0}%", sec.steered_share() * 100.0)
    }
}

/// (min, its host, max, its host) of the answers `hosts` served in `t`.
fn spread(s: &EdsFleet, t: &Tally, hosts: &[usize]) -> Option<(u64, usize, u64, usize)> {
    let lo = hosts.iter().min_by_key(|&&i| t.served_by(s.name(i)))?;
    let hi = hosts.iter().max_by_key(|&&i| t.served_by(s.name(i)))?;
    Some((t.served_by(s.name(*lo)), *lo, t.served_by(s.name(*hi)), *hi))
}

/// Every host of `hosts` served between `lo` and `hi` times their fair share
/// (the answers they served together, divided evenly).
/// Envoy's fallback balancer (least request, as in Istio) picks at random,
/// so a host's count of requests it chose varies by about its square root:
/// the band is never narrower than 4.5 of those (a false alarm in about one
/// run in a thousand over a hundred hosts).
fn check_fair(s: &EdsFleet, what: &str, t: &Tally, hosts: &[usize], lo: f64, hi: f64) {
    let sum: u64 = hosts.iter().map(|&i| t.served_by(s.name(i))).sum();
    let fair = sum as f64 / hosts.len() as f64;
    let noise = 4.5 * fair.sqrt();
    let (lo, hi) = (lo.min(1.0 - noise / fair), hi.max(1.0 + noise / fair));
    let outside: Vec<String> = hosts
        .iter()
        .filter(|&&i| {
            let n = t.served_by(s.name(i)) as f64;
            n < lo * fair || n > hi * fair
        })
        .map(|&i| format!("{}={}", s.name(i), t.served_by(s.name(i))))
        .collect();
    s.check(outside.is_empty(), || {
        format!(
            "{what}: every one of these {} hosts should get {lo}-{hi}x its fair share of {fair:.1} answers; outside: {}\n(all: {t})",
            hosts.len(),
            outside.join(" ")
        )
    });
}

/// Sends traffic until no client got an answer from the bad host for 2 s
/// in a row (it may still receive discovery requests, which are retried
/// elsewhere), for up to `max` s; fails if that never happens or if
/// detection cost too many client errors.
fn detect(d: &mut Driver, label: &str, bad: usize, max: usize) -> Vec<Second> {
    let s = d.s;
    let quiet = |v: &[Second]| {
        v.len() >= 2
            && v[v.len() - 2..]
                .iter()
                .all(|x| x.tally.served_by(s.name(bad)) == 0)
    };
    let secs = d.run_until(label, max, Some(bad), quiet);
    let all = total(&secs);
    let out = quiet(&secs);
    s.check(out, || {
        format!(
            "{label}: {} fails every request but still answered clients after {} s (state {}): {}",
            s.name(bad),
            secs.len(),
            s.host_state(bad),
            all.tally
        )
    });
    s.check(all.tally.not_ok() < DETECTION_MAX_ERRORS, || {
        format!(
            "{label}: detection cost {} client errors (want < {DETECTION_MAX_ERRORS}): {}",
            all.tally.not_ok(),
            all.tally
        )
    });
    println!(
        "{label}: out after {} s, {} client errors; state {}",
        secs.len(),
        all.tally.not_ok(),
        s.host_state(bad)
    );
    secs
}

/// The harness itself, without meshguard: traffic spreads evenly over 100
/// EDS members, a 503 host gets its 1/N, and EDS changes reach Envoy.
#[test]
fn harness_without_meshguard_spreads_evenly_and_follows_eds() {
    let _g = serial();
    const BAD: usize = 37;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        "large_harness",
        FleetOptions::new(150).members(0..100),
    );
    let mut d = Driver::new(&s);
    s.set_behaviour(BAD, &Behaviour::status(503));
    let all = total(&d.run("harness 100 members", 5, Some(BAD)));
    let members: Vec<usize> = (0..100).filter(|&i| i != BAD).collect();
    check_fair(&s, "no meshguard", &all.tally, &members, 0.7, 1.3);
    let share = all.got(BAD) as f64 / all.tally.total as f64;
    // Least request (Envoy's fallback here, as in Istio) picks the less
    // loaded of two random hosts, so the share is only about 1/100.
    s.check((0.001..0.03).contains(&share), || {
        format!(
            "without meshguard the 503 host should get about 1/100 of the requests, got {:.2}%: {}",
            share * 100.0,
            all.tally
        )
    });
    s.check(all.tally.with_status(503) == all.got(BAD), || {
        format!(
            "every request to the 503 host should reach the client as a 503: {} received, {}",
            all.got(BAD),
            all.tally
        )
    });
    // Replace half the members: the removed ones get nothing, the new ones
    // their share at once.
    let next: Vec<usize> = (50..150).collect();
    s.set_members(&next);
    let after = total(&d.run("harness after EDS", 3, Some(BAD)));
    let removed: u64 = (0..50).map(|i| after.got(i)).sum();
    s.check(removed == 0, || {
        format!("hosts removed from EDS still received {removed} requests")
    });
    let healthy: Vec<usize> = next.iter().copied().filter(|&i| i != BAD).collect();
    check_fair(&s, "after EDS change", &after.tally, &healthy, 0.6, 1.4);
}

/// a. 100 hosts, one answers 503 to everything.
#[test]
fn a_hard_failing_host_among_100_is_ejected() {
    let _g = serial();
    const BAD: usize = 37;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        "large_a_hard_failure",
        FleetOptions::new(100).plugin(&plugin_config(CONFIG)),
    );
    let mut d = Driver::new(&s);
    let base = total(&d.run("a. baseline", 2, None));
    s.check(base.tally.not_ok() == 0, || {
        format!("baseline: every request should get 200: {}", base.tally)
    });

    s.set_behaviour(BAD, &Behaviour::status(503));
    detect(&mut d, "a. detection", BAD, 15);

    let m = total(&d.run("a. measured", 15, Some(BAD)));
    println!("a. measured: {}", m.tally);
    s.check(m.tally.not_ok() == 0, || {
        format!("after detection no client should see an error: {}", m.tally)
    });
    let share = m.got(BAD) as f64 / m.tally.total as f64;
    s.check(share < EJECTED_MAX_SHARE, || {
        format!(
            "the ejected host received {} of {} requests ({:.2}%); at most the discovery trickle (< {:.2}%) is expected",
            m.got(BAD),
            m.tally.total,
            share * 100.0,
            EJECTED_MAX_SHARE * 100.0
        )
    });
    let healthy: Vec<usize> = (0..100).filter(|&i| i != BAD).collect();
    check_fair(&s, "a. healthy hosts", &m.tally, &healthy, 0.5, 1.6);
}

/// b. 100 hosts, one fails 40 % of its requests (random).
#[test]
fn b_grey_host_among_100_gets_less_traffic() {
    let _g = serial();
    const BAD: usize = 63;
    const N: f64 = 100.0;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        "large_b_grey_failure",
        FleetOptions::new(100).plugin(&plugin_config(CONFIG)),
    );
    let mut d = Driver::new(&s);
    s.set_behaviour(
        BAD,
        &Behaviour {
            random_errors: true,
            ..Behaviour::grey(503, 40)
        },
    );
    // Detection: until the status endpoint grades it (Degraded or worse).
    let det = d.run_until("b. detection", 20, Some(BAD), |_| {
        s.host_state(BAD) != "Healthy"
    });
    let state = s.host_state(BAD);
    s.check(state != "Healthy", || {
        format!(
            "a host failing 40% was not graded within {} s: {}",
            det.len(),
            total(&det).tally
        )
    });
    println!("b. graded {state} after {} s", det.len());

    let m = total(&d.run("b. measured", 30, Some(BAD)));
    let fair = m.tally.total as f64 / N;
    let got = m.got(BAD) as f64;
    // Without meshguard it would answer 1/N of the requests and fail 40 % of them.
    let unprotected_errors = 0.4 * fair;
    println!(
        "b. measured: {}; grey host received {got} (fair {fair:.0}); client errors {} (unprotected ~{unprotected_errors:.0}); state now {}",
        m.tally,
        m.tally.not_ok(),
        s.host_state(BAD)
    );
    s.check(got <= 0.7 * fair, || {
        format!(
            "the grey host should get well below its fair share (Degraded: about half): received {got}, fair {fair:.0} (want <= 70%)"
        )
    });
    s.check((m.tally.not_ok() as f64) <= 0.8 * unprotected_errors, || {
        format!(
            "client errors should drop below what the grey host causes unprotected (~{unprotected_errors:.0}): {}",
            m.tally
        )
    });
    let healthy: Vec<usize> = (0..100).filter(|&i| i != BAD).collect();
    check_fair(&s, "b. healthy hosts", &m.tally, &healthy, 0.5, 1.6);
}

/// c. 3 hosts, one hard down and ejected; 3 new hosts join via EDS
/// mid-incident and must get their share within seconds.
#[test]
fn c_hosts_joining_during_an_incident_get_their_share() {
    scale_up_during_incident(
        "large_c_scale_up",
        "c.",
        &Behaviour {
            refuse: true,
            ..Behaviour::healthy()
        },
    );
}

/// c2. The same with a host that answers 503 to everything instead of
/// refusing connections.
#[test]
fn c2_hosts_joining_while_one_answers_503_get_their_share() {
    scale_up_during_incident("large_c2_scale_up_503", "c2.", &Behaviour::status(503));
}

/// 3 hosts, host 1 does `bad` until it is ejected; then hosts 3, 4, 5 join.
fn scale_up_during_incident(test_name: &str, label: &str, bad: &Behaviour) {
    let _g = serial();
    const BAD: usize = 1;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        test_name,
        FleetOptions::new(6)
            .members(0..3)
            .plugin(&plugin_config(CONFIG)),
    );
    let mut d = Driver::new(&s);
    d.run(&format!("{label} baseline"), 1, None);
    s.set_behaviour(BAD, bad);
    // Detection ends when the status endpoint says it is ejected and a
    // second passes without client errors.
    let det = d.run_until(&format!("{label} detection"), 10, Some(BAD), |v| {
        v.last().is_some_and(|x| x.tally.not_ok() == 0) && s.host_state(BAD) == "Unhealthy"
    });
    let all = total(&det);
    s.check(s.host_state(BAD) == "Unhealthy", || {
        format!(
            "a host doing {bad:?} was not ejected within {} s: {}",
            det.len(),
            all.tally
        )
    });
    s.check(all.tally.not_ok() < DETECTION_MAX_ERRORS, || {
        format!("detection cost too many client errors: {}", all.tally)
    });

    let fails_before = s.envoy_stat("cluster.demo.upstream_cx_connect_fail");
    s.set_members(&[0, 1, 2, 3, 4, 5]);
    let new = [3usize, 4, 5];
    let healthy = [0usize, 2, 3, 4, 5];
    let secs = d.run(&format!("{label} after 3 joined"), 8, Some(BAD));
    // Attempts on the bad host: refused connections, or requests it answered.
    let fails = s.envoy_stat("cluster.demo.upstream_cx_connect_fail") - fails_before
        + total(&secs).got(BAD);
    let table = || {
        secs.iter()
            .enumerate()
            .map(|(i, x)| {
                format!(
                    "  second {i}: {}",
                    new.iter()
                        .map(|&h| format!("{} {:.0}%", s.name(h), x.tally.share(s.name(h)) * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ) + &format!(" | {}", x.tally)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Within 5 s every new host gets at least 12 % (fair: 20 %), and keeps
    // within 12-30 % from then on.
    let fair_from = secs
        .iter()
        .position(|x| new.iter().all(|&h| x.tally.share(s.name(h)) >= 0.12));
    let Some(from) = fair_from.filter(|&f| f < 5) else {
        s.fail(&format!(
            "new hosts did not reach >= 12% each (fair 20%) within 5 s of joining:\n{}",
            table()
        ));
    };
    let settled = total(&secs[from..]);
    check_fair(
        &s,
        &format!("{label} after the new hosts are found"),
        &settled.tally,
        &healthy,
        0.6,
        1.5,
    );
    let all = total(&secs);
    s.check(all.tally.not_ok() == 0, || {
        format!("no client errors expected after detection:\n{}", table())
    });
    // It may get its round-robin share (1/6) of the requests meshguard
    // leaves to Envoy (discovery), which are retried elsewhere; nothing more.
    let unsteered = all.seen.saturating_sub(all.steered);
    let bound = 1.5 * unsteered as f64 / 6.0 + 5.0;
    s.check((fails as f64) <= bound, || {
        format!(
            "the ejected host still got {fails} attempts in {} requests, {unsteered} of them left to Envoy (want <= {bound:.0}: 1.5 x its 1/6 of those, + 5):\n{}",
            all.tally.total,
            table()
        )
    });
    println!(
        "{label} new hosts at their share from second {from}; {fails} attempts on the ejected host; {unsteered} of {} requests left to Envoy",
        all.seen
    );
}

/// d. The bad host is removed from EDS while ejected: no errors, the others
/// share the traffic, steering and the status endpoint settle.
#[test]
fn d_removing_the_ejected_host_settles() {
    let _g = serial();
    const BAD: usize = 2;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        "large_d_scale_down",
        FleetOptions::new(3).plugin(&plugin_config(SHORT_EJECTION_CONFIG)),
    );
    let mut d = Driver::new(&s);
    d.run("d. baseline", 1, None);
    s.set_behaviour(BAD, &Behaviour::status(503));
    detect(&mut d, "d. detection", BAD, 10);
    s.set_members(&[0, 1]);
    let bad_addr = s.addr(BAD).to_string();
    // Settled: two seconds in a row with (almost) nothing steered, and the
    // removed host not graded in the status endpoint any more.
    let settled = |x: &Second| {
        let listed = s
            .host_status(BAD)
            .and_then(|h| h["state"].as_str().map(str::to_string));
        x.steered_share() <= 0.05 && listed.is_none_or(|st| st == "Healthy")
    };
    let secs = d.run_until("d. after removal", 15, Some(BAD), |v| {
        v.len() >= 2 && v[v.len() - 2..].iter().all(settled)
    });
    let all = total(&secs);
    s.check(all.tally.not_ok() == 0, || {
        format!(
            "removing the ejected host must cost no client errors: {}",
            all.tally
        )
    });
    s.check(all.got(BAD) == 0, || {
        format!("the removed host still received {} requests", all.got(BAD))
    });
    check_fair(&s, "d. remaining hosts", &all.tally, &[0, 1], 0.8, 1.2);
    let status = s.status().unwrap_or_default();
    let demo = status["services"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["service"] == "demo").cloned())
        .unwrap_or_default();
    println!(
        "d. status of demo: members {} hosts {}",
        demo["members"], demo["hosts"]
    );
    s.check(
        secs.len() >= 2 && secs[secs.len() - 2..].iter().all(settled),
        || {
            format!(
                "15 s after {bad_addr} left the cluster, steering and status have not settled (want <= 5% steered and the host no longer graded); status: {demo}"
            )
        },
    );
    // Not asserted: a departed host that is never steered to again (steering
    // stopped) is not seen leaving, so the count may stay at 3 for a while.
    println!(
        "d. status members of demo: {} (Envoy has 2)",
        demo["members"]
    );
}

/// e. Every one of 100 hosts is replaced by a new address, 20 at a time,
/// while one of them answers 503 to everything until its turn comes.
#[test]
#[ignore = "flaky: 2 of the last 4 full make test runs failed it (batch 0: new hosts under 10 % of the traffic, or 6 client 503s from the ejected host), with the modules before and after the idempotent-discovery change alike; run it with -- --ignored until batch 0 is understood"]
fn e_rolling_replacement_of_100_hosts_with_one_bad() {
    let _g = serial();
    const BAD: usize = 90;
    const BATCH: usize = 20;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        "large_e_rolling",
        FleetOptions::new(200)
            .members(0..100)
            .plugin(&plugin_config(CONFIG)),
    );
    let mut d = Driver::new(&s);
    d.run("e. baseline", 1, None);
    s.set_behaviour(BAD, &Behaviour::status(503));
    detect(&mut d, "e. detection", BAD, 15);

    // Every check of the replacement is collected and reported together, so
    // one failure shows the whole run.
    let mut problems: Vec<String> = Vec::new();
    let mut during = Second::default();
    let mut bad_while_member = 0;
    let mut requests_while_member = 0;
    let mut unsteered_while_member = 0;
    for k in 0..5 {
        let members: Vec<usize> = (BATCH * (k + 1)..100)
            .chain(100..100 + BATCH * (k + 1))
            .collect();
        let bad_member = members.contains(&BAD);
        s.set_members(&members);
        // The first batch comes after 15 s of steering over a membership
        // that did not change, so discovery's share has decayed to its
        // floor (a tenth of discoveryPercent) and the first new host is
        // met about 3 s in, at random (then the share is boosted and the
        // others follow); later batches find discovery still boosted.
        // The first batch is watched 2 s longer for that.
        let seconds = if k == 0 { 6 } else { 4 };
        let secs = d.run(&format!("e. batch {k}"), seconds, Some(BAD));
        let batch = total(&secs);
        let last2 = total(&secs[seconds - 2..]);
        let fresh: Vec<usize> = (100 + BATCH * k..100 + BATCH * (k + 1)).collect();
        let fresh_share: f64 = fresh.iter().map(|&i| last2.tally.share(s.name(i))).sum();
        let window = format!("seconds {}-{}", seconds - 2, seconds - 1);
        println!(
            "e. batch {k}: the {BATCH} new hosts got {:.0}% in {window} (fair ~20%)",
            fresh_share * 100.0
        );
        if fresh_share < 0.10 {
            problems.push(format!(
                "batch {k}: the {BATCH} new hosts together got {:.0}% of the traffic in {window} after joining (want >= 10%, fair ~20%)",
                fresh_share * 100.0
            ));
        }
        if bad_member {
            bad_while_member += batch.got(BAD);
            requests_while_member += batch.tally.total;
            unsteered_while_member += batch.seen.saturating_sub(batch.steered);
        }
        if batch.tally.not_ok() > 0 {
            problems.push(format!(
                "batch {k}: {} client errors after detection: {}",
                batch.tally.not_ok(),
                batch
                    .tally
                    .by_status
                    .iter()
                    .map(|(c, n)| format!("{c}x{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        during.merge(&batch);
    }
    // Discovery is busy during a rolling replacement (its share rises while
    // it finds new hosts), so the ejected host may get its 1/100 of the
    // requests left to Envoy, retried elsewhere; nothing more.
    let bound = 1.5 * unsteered_while_member as f64 / 100.0 + 5.0;
    println!(
        "e. while a member the ejected host received {bad_while_member} of {requests_while_member} requests; {unsteered_while_member} were left to Envoy (bound {bound:.0})"
    );
    if bad_while_member as f64 > bound {
        problems.push(format!(
            "the ejected host received {bad_while_member} of {requests_while_member} requests while still a member, {unsteered_while_member} of them left to Envoy (want <= {bound:.0}: 1.5 x its 1/100 of those, + 5)"
        ));
    }
    let end = total(&d.run("e. all replaced", 8, None));
    if end.tally.not_ok() > 0 {
        problems.push(format!(
            "after the replacement every request should get 200: {} did not",
            end.tally.not_ok()
        ));
    }
    let old: u64 = (0..100).map(|i| end.got(i)).sum();
    if old > 0 {
        problems.push(format!("replaced hosts still received {old} requests"));
    }
    s.check(problems.is_empty(), || {
        format!(
            "rolling replacement:\n  {}\n(whole replacement: {})",
            problems.join("\n  "),
            during.tally
        )
    });
    let fresh: Vec<usize> = (100..200).collect();
    check_fair(&s, "e. the new hosts", &end.tally, &fresh, 0.5, 1.6);
}

/// f. Istio's default retry policy on the route (503 retried on another
/// host): clients never see the bad host's 503s, and meshguard must still
/// find it and keep it out. Here meshguard runs downstream only and infers
/// the failed attempts (`upstream.request_attempt_count` and the hosts its
/// steering list named for the retries). About one run in five misses its
/// budget here (it depends on which retried request the sampling catches and
/// which hosts each worker has seen answer): run it with `-- --ignored`;
/// envoy_retries asserts downstream only at 20 hosts, f2 the upstream
/// instance at 100.
#[test]
#[ignore = "downstream-only detection of a 1 % host behind retries is probabilistic: about 1 run in 5 misses the budget"]
fn f_hard_failing_host_among_100_behind_istio_retries() {
    behind_istio_retries("large_f_istio_retries", "f.", None);
}

/// f2. The same with a second meshguard instance in the cluster's upstream
/// filter chain, which sees every attempt.
#[test]
fn f2_hard_failing_host_among_100_behind_istio_retries_per_attempt() {
    behind_istio_retries(
        "large_f2_istio_retries_per_attempt",
        "f2.",
        Some(UPSTREAM_CONFIG),
    );
}

/// Host 37 of 100 answers 503 to everything behind Istio's retries; with an
/// upstream instance configured by `upstream` when Some.
fn behind_istio_retries(test_name: &str, label: &str, upstream: Option<&str>) {
    let _g = serial();
    const BAD: usize = 37;
    let s = EdsFleet::start(
        host_tests::test_paths!(),
        test_name,
        FleetOptions::new(100)
            .istio_retries(true)
            .plugin(&plugin_config(CONFIG))
            .upstream_instance(upstream),
    );
    let mut d = Driver::new(&s);
    // 3 s, so that every one of the 100 hosts has answered before steering
    // starts (about 9 requests each; after 1 s, one host in 20 had none). A
    // host no worker has seen gets only discovery's share while nearly
    // everything is steered (docs/steering.md, Discovery): its fair share is
    // what this test measures, so it must be known first.
    d.run(&format!("{label} baseline"), 3, None);
    s.set_behaviour(BAD, &Behaviour::status(503));
    // Clients see nothing either way: detection is done when the bad host
    // is graded Unhealthy and received at most one attempt over 2 s (a 1 %
    // host gets that few by chance now and then).
    let quiet = |v: &[Second]| {
        v.len() >= 2 && v[v.len() - 2..].iter().map(|x| x.got(BAD)).sum::<u64>() <= 1
    };
    // Downstream only, the first retried request is found by sampling the
    // attempt count (one in 8 unsteered requests): a 1 % host takes up to
    // half a minute; an upstream instance sees every attempt at once.
    let budget = if upstream.is_some() { 15 } else { 30 };
    // Downstream only, a worker that never saw the host answer never names
    // it either (it is not among the hosts it knows), so it may stay
    // ungraded while getting only discovery's share: there detection means
    // nearly every request steered and the host quiet.
    let detected = |v: &[Second]| {
        quiet(v)
            && match upstream {
                Some(_) => s.host_state(BAD) == "Unhealthy",
                None => {
                    s.host_state(BAD) == "Unhealthy"
                        || v.last().is_some_and(|x| x.steered_share() >= 0.9)
                }
            }
    };
    let det = d.run_until(&format!("{label} detection"), budget, Some(BAD), detected);
    let det_all = total(&det);
    let out = detected(&det);
    s.check(out, || {
        format!(
            "behind Istio's retries, {} (503 to everything) still got {} attempts in the last 2 s after {} s (state {}); clients: {}",
            s.name(BAD),
            det[det.len().saturating_sub(2)..].iter().map(|x| x.got(BAD)).sum::<u64>(),
            det.len(),
            s.host_state(BAD),
            det_all.tally
        )
    });
    println!(
        "{label} out after {} s; state {}",
        det.len(),
        s.host_state(BAD)
    );
    let m = total(&d.run(&format!("{label} measured"), 10, Some(BAD)));
    let all_not_ok = det_all.tally.not_ok() + m.tally.not_ok();
    s.check(all_not_ok == 0, || {
        format!(
            "with Istio's retries no client should see an error: detection {}, after {}",
            det_all.tally, m.tally
        )
    });
    let share = m.got(BAD) as f64 / m.tally.total as f64;
    s.check(share < EJECTED_MAX_SHARE, || {
        format!(
            "the ejected host received {} attempts for {} requests ({:.2}%, want < {:.2}%)",
            m.got(BAD),
            m.tally.total,
            share * 100.0,
            EJECTED_MAX_SHARE * 100.0
        )
    });
    let healthy: Vec<usize> = (0..100).filter(|&i| i != BAD).collect();
    check_fair(
        &s,
        &format!("{label} healthy hosts"),
        &m.tally,
        &healthy,
        0.5,
        1.6,
    );
}
