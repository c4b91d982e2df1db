//! The soak in a real Envoy (`host-tests/tests/soak/mod.rs`, docs/soak.md):
//! four services of 50-75 hosts whose membership changes every second
//! through EDS, a plugin configuration pushed by LDS every minute (every
//! third invalid, some rollbacks), random incidents on random hosts, 240
//! requests a second. `make test` runs it for 3 minutes; `make soak` for
//! 30 (`MESHGUARD_SOAK_MINUTES`, `MESHGUARD_SOAK_SECONDS`,
//! `MESHGUARD_SOAK_RATE`, `MESHGUARD_SOAK_SEED`). It fails on any trap,
//! any client error no incident explains, memory or tables growing after
//! the warm-up, or a configuration push not handled as it should be, and
//! prints the per-minute table either way.

mod soak;

use soak::SoakOptions;

#[test]
fn soak_churn_reconfiguration_and_faults() {
    let opts = SoakOptions::from_env(3.0);
    let report = soak::run(&host_tests::test_paths!(), opts);
    let verdict = report.verdict();
    println!("{}", report.render());
    if let Err(failure) = verdict {
        panic!("{failure}");
    }
}
