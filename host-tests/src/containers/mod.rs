//! The end-to-end harness: a real Envoy with meshguard in front of N
//! mg-upstream servers, run either as Docker containers on a network of
//! their own ([`Mode::Docker`], through `testcontainers`) or as local
//! processes on loopback ([`Mode::Process`]: no Docker needed, also what
//! benchmarks want).
//!
//! - [`docker`]: is Docker usable, the images (built by
//!   `scripts/build-images.sh` when missing or stale), per-run names and
//!   labels, removal of what an killed earlier run left behind;
//! - [`layout`]: the Envoy configuration, rendered from the shared
//!   `envoy/demo.yaml.tmpl` and adapted to the mode (addresses, N endpoints,
//!   a listener served from a watched file for dynamic updates);
//! - [`testbed`]: [`Testbed`], which starts everything, changes upstream
//!   behaviour, stops upstreams, reads Envoy's stats and meshguard's log
//!   lines, and removes every container and network on drop, also when the
//!   test panics.

pub mod docker;
pub mod layout;
pub mod testbed;

pub use testbed::{Mode, Testbed, TestbedSpec};
