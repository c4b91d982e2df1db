//! meshguard: passive upstream health for Envoy, as a proxy-wasm filter.
//!
//! Everything but `shell` is a pure, deterministic core (time and randomness
//! are passed in) that is unit-tested natively; `shell` is the thin layer
//! that talks to Envoy through the proxy-wasm ABI.

// A panic traps the VM, and Envoy then fails or skips every request: the
// filter's code handles every error instead (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod address_clusters;
pub mod breaker;
pub mod cidr;
pub mod classify;
pub mod config;
pub mod events;
pub mod glob;
pub mod guard;
pub mod headers;
pub mod health;
pub mod ids;
pub mod in_flight;
pub mod metrics;
pub mod model;
pub mod route_metadata;
pub mod service;
pub mod state;
pub mod status;
pub mod steering;
pub mod template;
pub mod window;

#[cfg(target_arch = "wasm32")]
mod shell;
