//! The real-Envoy test fixture: three mg-upstream servers behind Envoy with
//! the meshguard module, plus what a test needs around them (behaviour
//! setters, counters, log polling) and a failure dump with everything needed
//! to debug a red run.
//!
//! ```text
//! let s = ThreeUpstreams::start(host_tests::test_paths!(), "my_test", TEST_PLUGIN_CONFIG);
//! s.set_behaviour(1, &Behaviour::status(503)); // u2
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::behaviour::{Behaviour, Stats};
use crate::envoy::{self, Envoy, TemplateVars, WasmPlugin};
use crate::upstream::Upstream;

/// Names of the three upstreams, in template order (`UPSTREAM1_PORT`..).
pub const UPSTREAM_NAMES: [&str; 3] = ["u1", "u2", "u3"];
/// Name of the `fallback` cluster's upstream (`FALLBACK_PORT`).
pub const FALLBACK_NAME: &str = "fb";

/// What only an integration test knows at compile time: the mg-upstream
/// binary Cargo built for it and Cargo's scratch directory for tests. Build
/// it with [`test_paths!`](crate::test_paths) inside the test crate.
#[derive(Debug, Clone)]
pub struct TestPaths {
    pub mg_upstream: PathBuf,
    /// `target/tmp`; each fixture works in `<tmp_dir>/<test_name>/`.
    pub tmp_dir: PathBuf,
}

/// [`TestPaths`] of the integration test this expands in
/// (`CARGO_BIN_EXE_mg-upstream`, `CARGO_TARGET_TMPDIR`).
#[macro_export]
macro_rules! test_paths {
    () => {
        $crate::fixture::TestPaths {
            mg_upstream: ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_mg-upstream")),
            tmp_dir: ::std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        }
    };
}

/// Three upstreams (u1, u2, u3: index 0, 1, 2) behind a real Envoy running
/// meshguard, plus `fb`, the one host of the `fallback` cluster (reached
/// only through the route on `x-meshguard-fallback`). Everything is stopped
/// on drop, also when a test panics.
pub struct ThreeUpstreams {
    // Field order is drop order: Envoy goes first so it never sees its
    // upstreams vanish while still running.
    pub envoy: Envoy,
    /// u1, u2, u3: the `demo` cluster.
    pub ups: Vec<Upstream>,
    /// fb: the `fallback` cluster.
    pub fallback: Upstream,
    /// Rendered config, logs: kept after the run.
    pub dir: PathBuf,
}

impl ThreeUpstreams {
    /// Starts u1..u3 and Envoy with meshguard configured by `plugin_config`.
    /// Needs MESHGUARD_ENVOY and MESHGUARD_WASM; the work directory is
    /// `<tmp_dir>/<test_name>/`. Panics on any setup failure.
    pub fn start(paths: TestPaths, test_name: &str, plugin_config: &str) -> Self {
        Self::start_edited(paths, test_name, plugin_config, Ok)
    }

    /// [`start`](Self::start) on the rendered template as `edit` changes it
    /// (a listener setting the demo does not have, say).
    pub fn start_edited(
        paths: TestPaths,
        test_name: &str,
        plugin_config: &str,
        edit: impl FnOnce(String) -> Result<String, String>,
    ) -> Self {
        let envoy_bin = crate::ENVOY_BIN.require();
        let wasm = crate::MESHGUARD_WASM.require();
        let dir = paths.tmp_dir.join(test_name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ups: Vec<Upstream> = UPSTREAM_NAMES
            .iter()
            .map(|n| {
                Upstream::start(&paths.mg_upstream, n, &dir)
                    .unwrap_or_else(|e| panic!("start mg-upstream {n}: {e}"))
            })
            .collect();
        let fallback = Upstream::start(&paths.mg_upstream, FALLBACK_NAME, &dir)
            .unwrap_or_else(|e| panic!("start mg-upstream {FALLBACK_NAME}: {e}"));
        let ports = [ups[0].data.port(), ups[1].data.port(), ups[2].data.port()];
        let plugin = WasmPlugin {
            wasm_path: wasm,
            config: plugin_config.to_string(),
        };
        let fallback_port = Some(fallback.data.port());
        let envoy = Envoy::start_with_config(&envoy_bin, &dir, |admin_port, listen_port| {
            let vars = TemplateVars {
                admin_port,
                listen_port,
                upstream_ports: ports,
                fallback_port,
                wasm: Some(plugin),
            };
            edit(envoy::render(envoy::TEMPLATE, &vars)?)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        println!(
            "envoy pid {} listener {} admin {}; upstreams {}; fallback {}={}; logs in {}",
            envoy.pid(),
            envoy.listener,
            envoy.admin,
            ups.iter()
                .map(|u| format!("{}={}", u.name, u.data))
                .collect::<Vec<_>>()
                .join(" "),
            fallback.name,
            fallback.data,
            dir.display()
        );
        Self {
            envoy,
            ups,
            fallback,
            dir,
        }
    }

    /// Envoy's listener: where client traffic goes.
    pub fn listener(&self) -> SocketAddr {
        self.envoy.listener
    }

    /// Upstream `i` (0 = u1, 1 = u2, 2 = u3).
    pub fn upstream(&self, i: usize) -> &Upstream {
        &self.ups[i]
    }

    /// Panics with `msg` and everything needed to debug it: upstream
    /// counters, Envoy's non-zero cluster stats, meshguard's log lines, the
    /// access log (response flags) and the Envoy log tail.
    pub fn fail(&self, msg: &str) -> ! {
        // Let Envoy flush the log lines of the last moments (200 ms interval).
        std::thread::sleep(Duration::from_millis(300));
        let stats: Vec<String> = self
            .ups
            .iter()
            .chain(std::iter::once(&self.fallback))
            .map(|u| match u.admin.stats() {
                Ok(s) => format!("{}: {} requests, {} errors", s.name, s.requests, s.errors),
                Err(e) => format!("{}: stats unavailable: {e}", u.name),
            })
            .collect();
        let envoy_stats = self
            .envoy
            .admin_get("/stats?filter=cluster\\.(demo|fallback)\\.(upstream_rq_|upstream_cx_connect_fail|upstream_cx_destroy|lb_)|wasm|meshguard")
            .map(|s| s.lines().filter(|l| !l.ends_with(": 0")).collect::<Vec<_>>().join("\n"))
            .unwrap_or_else(|e| format!("unavailable: {e}"));
        panic!(
            "{msg}\n\n--- upstream counters (since last reset)\n{}\n\n--- envoy stats (non-zero)\n{envoy_stats}\n\n\
             --- meshguard log lines (last 40)\n{}\n\n\
             --- access log, not-200 lines (last 20): start code flags upstream details route cluster\n{}\n\n\
             --- envoy log since startup (last 40 lines)\n{}\n\n(full log: {}; access log: {})",
            stats.join("\n"),
            self.envoy.log_matching("meshguard", 40),
            self.envoy.access_log_matching(|l| !l.contains(" 200 "), 20),
            self.envoy.log_tail(40),
            self.envoy.log_path.display(),
            self.envoy.stderr_path.display()
        );
    }

    /// [`fail`](Self::fail)s with `msg()` unless `ok`.
    pub fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    /// Sets what upstream `i` does.
    pub fn set_behaviour(&self, i: usize, b: &Behaviour) {
        let u = self.upstream(i);
        if let Err(e) = u.admin.set_behaviour(b) {
            self.fail(&format!("cannot set {}'s behaviour: {e}", u.name));
        }
    }

    /// Upstream `i`'s counters.
    pub fn stats(&self, i: usize) -> Stats {
        let u = self.upstream(i);
        match u.admin.stats() {
            Ok(s) => s,
            Err(e) => self.fail(&format!("cannot read {}'s stats: {e}", u.name)),
        }
    }

    /// Requests upstream `i` received on its data port.
    pub fn requests(&self, i: usize) -> u64 {
        self.stats(i).requests
    }

    /// Envoy's counter or gauge `name` (for example
    /// `cluster.demo.upstream_cx_connect_fail`); 0 when Envoy does not list it.
    pub fn envoy_stat(&self, name: &str) -> u64 {
        let filter = format!("/stats?filter=^{}$", name.replace('.', "\\."));
        match self.envoy.admin_get(&filter) {
            Ok(text) => text
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(": ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0),
            Err(e) => self.fail(&format!("cannot read envoy stat {name}: {e}")),
        }
    }

    /// Envoy log lines from meshguard containing `needle`, oldest first, as
    /// flushed so far.
    pub fn meshguard_lines(&self, needle: &str) -> Vec<String> {
        self.envoy
            .log()
            .lines()
            .filter(|l| l.contains("meshguard: ") && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Polls the Envoy log (flushed every 200 ms) for up to `limit` until a
    /// meshguard line satisfies `pred`; returns it.
    pub fn wait_for_log(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.meshguard_lines("").into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// meshguard's transition lines for upstream `i` (`host <addr>:`), oldest
    /// first, as flushed so far.
    pub fn transitions(&self, i: usize) -> Vec<String> {
        let needle = format!(" host {}: ", self.upstream(i).data);
        self.envoy
            .log()
            .lines()
            .filter(|l| l.contains("meshguard") && l.contains(&needle) && l.contains(" -> "))
            .map(str::to_string)
            .collect()
    }

    /// Polls the Envoy log (flushed every 200 ms) for up to `limit` until a
    /// transition line of upstream `i` satisfies `pred`; returns it.
    pub fn wait_for_transition(
        &self,
        i: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.transitions(i).into_iter().find(|l| pred(l)) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
