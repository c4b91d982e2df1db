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
// Natively the proxy-wasm shell is not built, so much of the core has no
// caller but the tests; the wasm32 build (lint: clippy for wasm32) is where
// dead code is judged.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub(crate) mod address_clusters;
pub(crate) mod breaker;
pub mod calendar;
pub(crate) mod cidr;
pub(crate) mod classify;
pub mod config;
pub mod events;
pub(crate) mod glob;
pub(crate) mod guard;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod ids;
pub(crate) mod in_flight;
pub mod metrics;
pub mod model;
pub(crate) mod roots;
pub(crate) mod route_metadata;
pub(crate) mod service;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod steering;
pub(crate) mod template;
pub(crate) mod window;

#[cfg(target_arch = "wasm32")]
mod shell;
