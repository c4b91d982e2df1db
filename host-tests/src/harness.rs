//! One API for the real-Envoy harnesses with a few mg-upstream servers
//! behind Envoy and meshguard: [`Harness`], implemented by
//! [`ThreeUpstreams`](crate::fixture::ThreeUpstreams) (the `envoy_*`
//! tests) and [`Testbed`](crate::containers::Testbed) (containers or
//! processes). A harness says where Envoy and its upstreams are; the trait
//! provides, once, what the tests do with them: change an upstream's
//! behaviour, read its counters and Envoy's stats, read meshguard's log
//! lines (its transition lines with the filter's own types,
//! `meshguard::events`), poll for one, and fail with everything needed to
//! debug the run.
//!
//! ```text
//! use host_tests::Harness;
//! s.set_behaviour(1, &Behaviour::status(503));                  // u2
//! let line = s.wait_for_transition(1, LOG_WAIT, |l| l.contains("-> Unhealthy"));
//! s.check(line.is_some(), || "u2 never ejected".into());
//! ```
//!
//! [`EdsFleet`](crate::fleet::EdsFleet) (one process serving many hosts)
//! reads its lines with the same functions, [`host_transitions`] and
//! [`poll`].

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use meshguard::events::{BreakerChange, HostTransition};

use crate::behaviour::{Behaviour, Stats};
use crate::envoy::{self, last_lines, log_tail, ADMIN_TIMEOUT};
use crate::upstream::{Upstream, UpstreamAdmin};

/// One upstream as a test sees it.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamRef<'a> {
    /// `u1`, `u2`...: what it answers in `x-upstream-name`.
    pub name: &'a str,
    /// Its data address as Envoy (and meshguard's log lines) know it.
    pub data: SocketAddr,
    pub admin: UpstreamAdmin,
}

impl<'a> From<&'a Upstream> for UpstreamRef<'a> {
    fn from(u: &'a Upstream) -> Self {
        UpstreamRef {
            name: &u.name,
            data: u.data,
            admin: u.admin,
        }
    }
}

/// Envoy stats a failure shows when they are not zero.
const DUMP_STATS: &str = "/stats?filter=cluster\\.(demo|fallback)\\.(upstream_rq_|upstream_cx_connect_fail|upstream_cx_destroy|lb_)|listener_manager\\.lds|wasm|meshguard";

/// A running Envoy with meshguard in front of upstreams u1, u2...; see the
/// module docs. The required methods say where things are; the provided
/// ones are the tests' API.
pub trait Harness: Sized {
    /// Upstream `i` (0 = u1).
    fn upstream(&self, i: usize) -> UpstreamRef<'_>;
    /// Every upstream whose counters [`fail`](Self::fail) shows.
    fn all_upstreams(&self) -> Vec<UpstreamRef<'_>>;
    /// Envoy's listener: where client traffic goes.
    fn listener(&self) -> SocketAddr;
    /// Envoy's admin endpoint.
    fn envoy_admin(&self) -> SocketAddr;
    /// Envoy's log (`--log-path`, flushed every 200 ms).
    fn log_path(&self) -> &Path;
    /// Envoy's stderr: the access log, one line per request.
    fn stderr_path(&self) -> &Path;
    /// The work directory: rendered config, logs.
    fn dir(&self) -> &Path;
    /// What else a failure shows (the containers, say).
    fn dump_extra(&self) -> String {
        String::new()
    }

    /// Panics with `msg` and everything needed to debug it: upstream
    /// counters, Envoy's non-zero cluster stats, meshguard's log lines, the
    /// access log (response flags) and the Envoy log tail.
    fn fail(&self, msg: &str) -> ! {
        // Let Envoy flush the log lines of the last moments (200 ms interval).
        std::thread::sleep(Duration::from_millis(300));
        let ups: Vec<String> = self
            .all_upstreams()
            .iter()
            .map(|u| match u.admin.stats() {
                Ok(s) => format!(
                    "{} ({}): {} requests, {} errors",
                    s.name, u.data, s.requests, s.errors
                ),
                Err(e) => format!("{} ({}): stats unavailable: {e}", u.name, u.data),
            })
            .collect();
        let stats = self
            .admin_get(DUMP_STATS)
            .map(|s| {
                s.lines()
                    .filter(|l| !l.ends_with(": 0"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|e| format!("unavailable: {e}"));
        let log = self.log();
        panic!(
            "{msg}\n\n--- upstream counters (since last reset)\n{}\n\n--- envoy stats (non-zero)\n{stats}\n\n\
             --- meshguard log lines (last 40)\n{}\n\n\
             --- access log, not-200 lines (last 20): start code flags upstream details route cluster\n{}\n\n\
             --- envoy log since startup (last 40 lines)\n{}{}\n\n(files in {}: log {}, access log {})",
            ups.join("\n"),
            last_lines(&log, 40, |l| l.contains("meshguard")),
            self.access_log_matching(|l| !l.contains(" 200 "), 20),
            log_tail(&log, 40),
            self.dump_extra(),
            self.dir().display(),
            self.log_path().display(),
            self.stderr_path().display()
        );
    }

    /// [`fail`](Self::fail)s with `msg()` unless `ok`.
    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    /// Sets what upstream `i` does.
    fn set_behaviour(&self, i: usize, b: &Behaviour) {
        let u = self.upstream(i);
        if let Err(e) = u.admin.set_behaviour(b) {
            self.fail(&format!("cannot set {}'s behaviour: {e}", u.name));
        }
    }

    /// Upstream `i`'s counters.
    fn stats(&self, i: usize) -> Stats {
        let u = self.upstream(i);
        u.admin
            .stats()
            .unwrap_or_else(|e| self.fail(&format!("cannot read {}'s stats: {e}", u.name)))
    }

    /// Requests upstream `i` received on its data port.
    fn requests(&self, i: usize) -> u64 {
        self.stats(i).requests
    }

    /// `GET` on Envoy's admin; Err unless 200.
    fn admin_get(&self, path: &str) -> io::Result<String> {
        envoy::admin_get(self.envoy_admin(), path, ADMIN_TIMEOUT)
    }

    /// Envoy's counter or gauge `name` (for example
    /// `cluster.demo.upstream_cx_connect_fail`); 0 when Envoy does not list it.
    fn envoy_stat(&self, name: &str) -> u64 {
        envoy::stat(self.envoy_admin(), name)
            .unwrap_or_else(|e| self.fail(&format!("cannot read envoy stat {name}: {e}")))
    }

    /// Envoy's counters and gauges (`/stats?format=json`), by name.
    fn envoy_stats(&self) -> BTreeMap<String, u64> {
        let text = self
            .admin_get("/stats?format=json")
            .unwrap_or_else(|e| self.fail(&format!("cannot read envoy stats: {e}")));
        parse_stats_json(&text).unwrap_or_else(|e| self.fail(&format!("envoy stats: {e}")))
    }

    /// The whole Envoy log so far.
    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `n` access-log lines (Envoy's stderr, flushed every 200 ms)
    /// that `keep` accepts. Format: `start code flags upstream details route cluster`.
    fn access_log_matching(&self, keep: impl Fn(&str) -> bool, n: usize) -> String {
        let text = fs::read_to_string(self.stderr_path()).unwrap_or_default();
        last_lines(&text, n, |l| l.starts_with("access ") && keep(l))
    }

    /// Envoy log lines from meshguard containing `needle`, oldest first, as
    /// flushed so far.
    fn meshguard_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("meshguard: ") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// meshguard's grade-change lines for upstream `i` (every unit: the
    /// service and its overrides), oldest first, as flushed so far.
    fn transitions(&self, i: usize) -> Vec<String> {
        host_transitions(&self.log(), &self.upstream(i).data.to_string())
    }

    /// Upstream `i`'s grade according to meshguard's last transition line
    /// (`Healthy` before any).
    fn host_state(&self, i: usize) -> String {
        self.transitions(i)
            .last()
            .and_then(|l| HostTransition::parse(l))
            .map_or_else(|| "Healthy".to_string(), |t| t.to.to_string())
    }

    /// meshguard's circuit breaker lines, oldest first.
    fn breaker_transitions(&self) -> Vec<String> {
        breaker_changes(&self.log())
    }

    /// Polls (for up to `limit`; the log is flushed every 200 ms) until
    /// some line of `lines()` satisfies `pred`; returns it.
    fn wait_for_line(
        &self,
        limit: Duration,
        lines: impl Fn(&Self) -> Vec<String>,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        poll(limit, || lines(self).into_iter().find(|l| pred(l)))
    }

    /// Polls for a meshguard line that satisfies `pred`.
    fn wait_for_log(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_for_line(limit, |h| h.meshguard_lines(""), pred)
    }

    /// Polls for a transition line of upstream `i` that satisfies `pred`.
    fn wait_for_transition(
        &self,
        i: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.wait_for_line(limit, |h| h.transitions(i), pred)
    }
}

/// The lines of `log` that are meshguard's grade changes of the host at
/// `address` ([`HostTransition`]), in any unit, oldest first.
pub fn host_transitions(log: &str, address: &str) -> Vec<String> {
    log.lines()
        .filter(|l| HostTransition::parse(l).is_some_and(|t| t.address == address))
        .map(str::to_string)
        .collect()
}

/// The lines of `log` that are meshguard's breaker state changes
/// ([`BreakerChange`]), oldest first.
pub fn breaker_changes(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| BreakerChange::parse(l).is_some())
        .map(str::to_string)
        .collect()
}

/// Calls `f` every 50 ms until it returns Some or `limit` has passed
/// (at least once).
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counters and gauges of Envoy's `/stats?format=json`
/// (`{"stats":[{"name":..,"value":..},..,{"histograms":..}]}`).
pub fn parse_stats_json(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    let list = v
        .get("stats")
        .and_then(|s| s.as_array())
        .ok_or("no `stats` array")?;
    Ok(list
        .iter()
        .filter_map(|s| {
            Some((
                s.get("name")?.as_str()?.to_string(),
                s.get("value")?.as_u64()?,
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stats_and_transition_lines() {
        let m = parse_stats_json(
            r#"{"stats":[{"name":"a.b","value":3},{"name":"t","value":"text"},{"histograms":{}}]}"#,
        )
        .expect("parse");
        assert_eq!(m.get("a.b"), Some(&3));
        assert_eq!(m.len(), 1);
        let envoy = "[2026-12-01 19:42:09.175][26268][info][wasm] wasm log meshguard meshguard: ";
        let log = [
            "meshguard: demo host 1.2.3.4:8080: Healthy -> Unhealthy: 5 consecutive failures; ejected for 3.000s (ejection #1)",
            "meshguard: demo host 1.2.3.40:8080: Healthy -> Degraded: failure 50% over 20 >= 50%",
            "meshguard: demo [vs=ns/web route=r] host 1.2.3.4:8080: Unhealthy -> WarmingUp: ejection over",
            "meshguard: demo host 1.2.3.4:8080: ejection refused by maxEjectionPercent (5 consecutive failures)",
            "meshguard: demo circuit breaker: Closed -> Open: failure 50% over 20 >= 50%; open for 2.000s",
            "other -> line host 1.2.3.4:8080: ",
        ]
        .map(|l| format!("{envoy}{l}"))
        .join("\n");
        let mine = host_transitions(&log, "1.2.3.4:8080");
        assert_eq!(mine.len(), 2, "{mine:?}");
        assert!(mine[0].ends_with("(ejection #1)") && mine[1].ends_with("ejection over"));
        let breaker = breaker_changes(&log);
        assert_eq!(breaker.len(), 1);
        assert!(breaker[0].contains("Closed -> Open"));
        assert_eq!(poll(Duration::ZERO, || Some(1)), Some(1));
        assert_eq!(poll(Duration::ZERO, || None::<u8>), None);
    }
}
