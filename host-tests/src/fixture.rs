//! The real-Envoy test fixture: three mg-upstream servers behind Envoy with
//! the meshguard module. What a test does with them (behaviour setters,
//! counters, log polling, a failure dump with everything needed to debug a
//! red run) is the [`Harness`] API it shares with the container testbed.
//!
//! ```text
//! use host_tests::Harness;
//! let s = ThreeUpstreams::start(host_tests::test_paths!(), "my_test", TEST_PLUGIN_CONFIG);
//! s.set_behaviour(1, &Behaviour::status(503)); // u2
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::envoy::{self, Envoy, TemplateVars, WasmPlugin};
use crate::harness::{Harness, UpstreamRef};
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
}

impl Harness for ThreeUpstreams {
    fn upstream(&self, i: usize) -> UpstreamRef<'_> {
        UpstreamRef::from(&self.ups[i])
    }

    /// u1..u3 and the fallback host.
    fn all_upstreams(&self) -> Vec<UpstreamRef<'_>> {
        self.ups
            .iter()
            .chain(std::iter::once(&self.fallback))
            .map(UpstreamRef::from)
            .collect()
    }

    fn listener(&self) -> SocketAddr {
        self.envoy.listener
    }

    fn envoy_admin(&self) -> SocketAddr {
        self.envoy.admin
    }

    fn log_path(&self) -> &Path {
        &self.envoy.log_path
    }

    fn stderr_path(&self) -> &Path {
        &self.envoy.stderr_path
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}
