//! The state layer: what one worker keeps and shares with the others, in
//! plain Rust behind a small [`host::Host`] trait (clock, shared data with
//! compare-and-swap, a few properties, metrics), so it runs and is tested
//! natively; the shell implements the trait with proxy-wasm host calls.
//!
//! - [`store`]: service records in shared data, slots, the change counter;
//! - [`members`]: the hosts of a service one worker has seen;
//! - [`plan`]: steering across them by weight, and discovery;
//! - [`unit`]: one worker's cache of one record;
//! - [`report`]: metrics and transition logs;
//! - [`worker`]: ties them together for the request path and the tick.

pub mod host;
pub mod members;
#[cfg(not(target_arch = "wasm32"))]
pub mod memory;
mod metrics;
pub mod plan;
mod report;
pub mod store;
pub mod unit;
pub mod worker;

#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod tests;
