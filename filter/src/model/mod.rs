//! The vocabulary every layer shares, with no imports from the rest of the
//! crate: a host's grade, a breaker's state, a set of HTTP statuses. The
//! settings (`config`) and the domain (`health`, `breaker`, `headers`, ...)
//! both build on these, so neither has to import the other's.

use std::fmt;

use serde::{Deserialize, Serialize};

mod status_set;

pub use status_set::{StatusSet, StatusSpec};

/// A host's grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostState {
    Healthy,
    /// Gets `degradedWeightPercent` of a healthy host's traffic.
    Degraded,
    /// Ejected: gets no traffic until its ejection time is over.
    Unhealthy,
    /// Back from ejection, on a ramp of growing weight.
    WarmingUp,
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostState::Healthy => "Healthy",
            HostState::Degraded => "Degraded",
            HostState::Unhealthy => "Unhealthy",
            HostState::WarmingUp => "WarmingUp",
        })
    }
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BreakerState {
    #[default]
    Closed,
    /// Calls are answered locally until the open period is over.
    Open,
    /// A bounded number of probe calls go through to test the service.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "Closed",
            BreakerState::Open => "Open",
            BreakerState::HalfOpen => "HalfOpen",
        })
    }
}
