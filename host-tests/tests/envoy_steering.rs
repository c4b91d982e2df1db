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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host_tests::envoy::{Envoy, WasmPlugin};
use host_tests::traffic::{burst, paced_second, Tally};
use host_tests::{Behaviour, Upstream};

/// Steady rate of the recovery phase.
const RATE: u32 = 50;
/// From the plugin configuration (`host_tests::TEST_PLUGIN_CONFIG`).
const EJECTION: Duration = Duration::from_secs(3);
const WARMUP_SECS: usize = 4;

struct Setup {
    // Field order is drop order: Envoy goes first so it never sees its
    // upstreams vanish while still running.
    envoy: Envoy,
    ups: Vec<Upstream>,
}

impl Setup {
    fn start() -> Self {
        let envoy_bin = required(
            "MESHGUARD_ENVOY",
            "the Envoy 1.40 binary",
            "export MESHGUARD_ENVOY=$(scripts/ensure-envoy.sh)",
        );
        let wasm = required(
            "MESHGUARD_WASM",
            "the meshguard module (meshguard.wasm)",
            "`make build` and export MESHGUARD_WASM=$PWD/target/wasm32-wasip1/release/meshguard.wasm",
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("envoy_steering");
        std::fs::create_dir_all(&dir).expect("create target/tmp/envoy_steering");
        let bin = Path::new(env!("CARGO_BIN_EXE_mg-upstream"));
        let ups: Vec<Upstream> = ["u1", "u2", "u3"]
            .iter()
            .map(|n| Upstream::start(bin, n, &dir).expect("start mg-upstream"))
            .collect();
        let ports = [ups[0].data.port(), ups[1].data.port(), ups[2].data.port()];
        let plugin = WasmPlugin {
            wasm_path: wasm,
            config: host_tests::TEST_PLUGIN_CONFIG.to_string(),
        };
        let envoy =
            Envoy::start(&envoy_bin, &dir, ports, Some(plugin)).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "envoy pid {} listener {} admin {}; upstreams {}; logs in {}",
            envoy.pid(),
            envoy.listener,
            envoy.admin,
            ups.iter()
                .map(|u| format!("{}={}", u.name, u.data))
                .collect::<Vec<_>>()
                .join(" "),
            dir.display()
        );
        Setup { envoy, ups }
    }

    fn u2(&self) -> &Upstream {
        &self.ups[1]
    }

    /// Panics with `msg` and everything needed to debug it.
    fn fail(&self, msg: &str) -> ! {
        // Let Envoy flush the log lines of the last moments (200 ms interval).
        std::thread::sleep(Duration::from_millis(300));
        let stats: Vec<String> = self
            .ups
            .iter()
            .map(|u| match u.admin.stats() {
                Ok(s) => format!("{}: {} requests, {} errors", s.name, s.requests, s.errors),
                Err(e) => format!("{}: stats unavailable: {e}", u.name),
            })
            .collect();
        let envoy_stats = self
            .envoy
            .admin_get("/stats?filter=cluster\\.demo\\.(upstream_rq_|upstream_cx_connect_fail|lb_)|wasm|meshguard")
            .map(|s| s.lines().filter(|l| !l.ends_with(": 0")).collect::<Vec<_>>().join("\n"))
            .unwrap_or_else(|e| format!("unavailable: {e}"));
        panic!(
            "{msg}\n\n--- upstream counters (since last reset)\n{}\n\n--- envoy stats (non-zero)\n{envoy_stats}\n\n\
             --- meshguard log lines (last 40)\n{}\n\n--- envoy log since startup (last 40 lines)\n{}\n\n(full log: {})",
            stats.join("\n"),
            self.envoy.log_matching("meshguard", 40),
            self.envoy.log_tail(40),
            self.envoy.log_path.display()
        );
    }

    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    fn set_u2(&self, b: &Behaviour) {
        if let Err(e) = self.u2().admin.set_behaviour(b) {
            self.fail(&format!("cannot set u2's behaviour: {e}"));
        }
    }

    fn u2_requests(&self) -> u64 {
        match self.u2().admin.stats() {
            Ok(s) => s.requests,
            Err(e) => self.fail(&format!("cannot read u2's stats: {e}")),
        }
    }
}

fn required(var: &str, what: &str, how: &str) -> PathBuf {
    host_tests::required_file_from_env(var, what, &format!("Run `make test`, or {how}."))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn meshguard_ejects_a_failing_host_and_warms_it_up_again() {
    let s = Setup::start();
    let listener = s.envoy.listener;

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
    s.set_u2(&Behaviour::status(503));
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
    let before = s.u2_requests();
    let started = Instant::now();
    let measured = burst(listener, 300);
    let took = started.elapsed();
    let u2_got = s.u2_requests() - before;
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
    s.set_u2(&Behaviour::healthy());
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
