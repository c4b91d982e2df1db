//! Test harnesses for meshguard.
//!
//! - [`behaviour`]: what an mg-upstream server does (shared by the server and tests);
//! - [`containers`]: the end-to-end harness: Envoy and N upstreams as Docker
//!   containers (testcontainers) or local processes, stats, cleanup;
//! - [`upstream`]: start mg-upstream processes, change their behaviour, read stats;
//! - [`envoy`]: render `envoy/demo.yaml.tmpl` and run the real Envoy on it;
//! - [`harness`]: [`Harness`], the one API of the fixture and the testbed
//!   (behaviour, counters, stats, meshguard's lines read with
//!   `meshguard::events`, polling, the failure dump);
//! - [`fixture`]: three upstreams behind Envoy with meshguard, for the real-Envoy tests;
//! - [`fleet`]: a large service: one multi-host mg-upstream behind Envoy with
//!   an EDS cluster fed from a watched file, membership changed at run time;
//! - [`traffic`]: client traffic through Envoy, tallied per upstream and status;
//! - [`http`]: the one minimal HTTP/1.1 client (blocking and async; tests,
//!   bench, mg-load);
//! - [`istio`]: the manifests in `istio/` and an Istio-sidecar-shaped Envoy config built from them;
//! - [`process`]: child processes killed on drop, also when a test panics.
//! - [`waypoint`]: an Istio-ambient-waypoint-shaped Envoy config (internal
//!   listener `connect_originate`, `inbound-vip` cluster) built from the demo's.
//! - [`wasm_host`]: a proxy-wasm host on wasmtime that runs the built module
//!   natively (virtual clock, several VMs, scenario DSL, never-trap driver).

pub mod behaviour;
#[cfg(feature = "containers")]
pub mod containers;
pub mod envoy;
#[cfg(feature = "harness")]
pub mod fixture;
#[cfg(feature = "harness")]
pub mod fleet;
#[cfg(feature = "harness")]
pub mod harness;
pub mod http;
#[cfg(feature = "containers")]
pub mod istio;
pub mod process;
#[cfg(feature = "harness")]
pub mod seconds;
pub mod traffic;
pub mod upstream;
#[cfg(feature = "wasm-host")]
pub mod wasm_host;
pub mod waypoint;

use std::path::PathBuf;

/// meshguard configuration for the real-Envoy tests: small windows and short
/// times so detection, ejection and warm-up fit in seconds.
pub const TEST_PLUGIN_CONFIG: &str = r#"{"detection":{"windowSize":20,"minRequests":10},"ejection":{"baseEjectionTime":"3s","maxEjectionTime":"30s","warmupDuration":"4s"}}"#;

/// A file named by an environment variable that a harness, a test or the
/// bench cannot do without: the variable, what the file must be and how to
/// get it, which go into the error, so a missing prerequisite fails with
/// instructions instead of passing silently. [`ENVOY_BIN`] and
/// [`MESHGUARD_WASM`] are the common ones.
#[derive(Debug, Clone, Copy)]
pub struct RequiredFile {
    pub var: &'static str,
    pub what: &'static str,
    pub how: &'static str,
}

/// `MESHGUARD_ENVOY`: the Envoy binary.
pub const ENVOY_BIN: RequiredFile = RequiredFile {
    var: "MESHGUARD_ENVOY",
    what: "the Envoy 1.40 binary",
    how: "Run `make test`, or export MESHGUARD_ENVOY=$(scripts/ensure-envoy.sh).",
};

/// `MESHGUARD_WASM`: the built meshguard module.
pub const MESHGUARD_WASM: RequiredFile = RequiredFile {
    var: "MESHGUARD_WASM",
    what: "the meshguard module (meshguard.opt.wasm)",
    how: "Run `make test`, or `make build` and export \
          MESHGUARD_WASM=$PWD/target/wasm32-wasip1/release/meshguard.opt.wasm.",
};

impl RequiredFile {
    /// The path in the variable, which must name an existing file.
    pub fn path(&self) -> Result<PathBuf, String> {
        let RequiredFile { var, what, how } = self;
        let value = std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{var} is not set: it must name {what}. {how}"))?;
        let path = PathBuf::from(value);
        if !path.is_file() {
            return Err(format!(
                "{var}={} does not exist: it must name {what}. {how}",
                path.display()
            ));
        }
        Ok(path)
    }

    /// [`path`](Self::path), or a panic with its error (for tests).
    pub fn require(&self) -> PathBuf {
        self.path().unwrap_or_else(|e| panic!("{e}"))
    }
}

pub use behaviour::{Behaviour, ErrorSpreader, Stats};
#[cfg(feature = "harness")]
pub use harness::Harness;
pub use upstream::{Upstream, UpstreamAdmin};
