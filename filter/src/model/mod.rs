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

impl HostState {
    /// The state its Display name names (`Healthy`, ...).
    pub fn from_name(name: &str) -> Option<HostState> {
        [
            HostState::Healthy,
            HostState::Degraded,
            HostState::Unhealthy,
            HostState::WarmingUp,
        ]
        .into_iter()
        .find(|s| s.to_string() == name)
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

impl BreakerState {
    /// The state its Display name names (`Closed`, ...).
    pub fn from_name(name: &str) -> Option<BreakerState> {
        [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ]
        .into_iter()
        .find(|s| s.to_string() == name)
    }
}

/// What a window's rate is taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    Failures,
    SlowCalls,
}

/// A window's failure (or slow-call) rate that reached its threshold: the
/// reason a host is graded down and a breaker opens, with the numbers.
///
/// One rule for both: a rate trips when `count` (at least one) is
/// `threshold` percent of `volume` or more, as Envoy's `failure_percentage_threshold` and
/// resilience4j's `failureRateThreshold` do. Its complement, below the
/// threshold, is what a host must reach to recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub of: Measured,
    pub count: u16,
    pub volume: u16,
    pub threshold: u8,
}

impl Rate {
    /// The rate when it reached `threshold`, else None. No count (or no
    /// volume) is no rate: a threshold of 0 trips on the first failure.
    pub fn reached(of: Measured, count: u16, volume: u16, threshold: u8) -> Option<Rate> {
        let reached =
            count > 0 && u32::from(count) * 100 >= u32::from(threshold) * u32::from(volume);
        reached.then_some(Rate {
            of,
            count,
            volume,
            threshold,
        })
    }
}

/// The failure rate if it reached `failure_threshold`, else the slow-call
/// rate if slow calls are judged (`slow_threshold`) and it reached that:
/// the order grades and the breaker both judge a window in.
pub fn first_rate_reached(
    failures: u16,
    slow: u16,
    volume: u16,
    failure_threshold: u8,
    slow_threshold: Option<u8>,
) -> Option<Rate> {
    Rate::reached(Measured::Failures, failures, volume, failure_threshold).or_else(|| {
        slow_threshold.and_then(|t| Rate::reached(Measured::SlowCalls, slow, volume, t))
    })
}

/// Whole percent of `count` in `volume` (0 for an empty volume), for logs.
pub fn percent(count: u16, volume: u16) -> u32 {
    u32::from(count) * 100 / u32::from(volume.max(1))
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.of {
            Measured::Failures => "failure",
            Measured::SlowCalls => "slow calls",
        };
        write!(
            f,
            "{what} {}% over {} >= {}%",
            percent(self.count, self.volume),
            self.volume,
            self.threshold
        )
    }
}
