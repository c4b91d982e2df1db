//! An error-rate circuit breaker for a whole upstream service (or one
//! route's share of it): closed / open / half-open, after resilience4j's
//! CircuitBreaker. Envoy's own "circuit breakers" only limit concurrency.
//! Pure: time comes in as milliseconds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::CircuitBreaker as Settings;
use crate::model::BreakerState;
use crate::model::{first_rate_reached, Rate};
use crate::window::OutcomeWindow;

/// Why the breaker changed state, with the numbers behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerReason {
    /// The failure or slow-call rate reached its threshold.
    Rate(Rate),
    OpenPeriodOver,
    ProbeFailed,
    ProbesSucceeded {
        successes: u16,
    },
}

impl fmt::Display for BreakerReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BreakerReason::Rate(rate) => rate.fmt(f),
            BreakerReason::OpenPeriodOver => f.write_str("open period over"),
            BreakerReason::ProbeFailed => f.write_str("a half-open probe failed"),
            BreakerReason::ProbesSucceeded { successes } => {
                write!(f, "{successes} half-open probes succeeded")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerTransition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: BreakerReason,
    /// Set when `to` is Open.
    pub open_for_ms: Option<u64>,
}

/// What the breaker says about a new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: the call goes through as usual.
    Allowed,
    /// Half-open: the call goes through as one of the limited probes; its
    /// outcome must be reported with `probe = true`.
    Probe,
    /// Open (or half-open with every probe slot taken): answer locally.
    Rejected { retry_after_ms: u64 },
}

/// A new breaker is closed; its window takes the configured size on the
/// first outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Breaker {
    state: BreakerState,
    window: OutcomeWindow,
    open_until_ms: u64,
    /// Trips since the breaker last closed: each one doubles the open period.
    trips: u16,
    /// Admission times of probes whose outcome is not in yet.
    probes: Vec<u64>,
    probe_successes: u16,
}

impl Breaker {
    #[cfg(test)]
    pub fn new(settings: &Settings) -> Self {
        Breaker {
            state: BreakerState::Closed,
            window: OutcomeWindow::new(settings.window_size),
            open_until_ms: 0,
            trips: 0,
            probes: Vec::new(),
            probe_successes: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn open_until_ms(&self) -> u64 {
        self.open_until_ms
    }

    /// The state a caller should act on at `now`, without changing anything:
    /// an open breaker whose period is over is as good as half-open.
    pub fn effective_state(&self, now: u64) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until_ms => BreakerState::HalfOpen,
            state => state,
        }
    }

    #[cfg(test)]
    /// Whether the request path must consult the shared record (anything
    /// but a closed breaker).
    pub fn needs_admission(&self, now: u64) -> bool {
        self.effective_state(now) != BreakerState::Closed
    }

    /// Decides on a new call. Mutates only when half-open (a probe slot is
    /// taken), so callers can answer Closed and Open from a cached copy and
    /// need a compare-and-swap only for probes.
    pub fn admit(
        &mut self,
        now: u64,
        settings: &Settings,
    ) -> (Admission, Option<BreakerTransition>) {
        let transition = self.advance(now);
        let admission = match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => Admission::Rejected {
                retry_after_ms: self.open_until_ms.saturating_sub(now),
            },
            BreakerState::HalfOpen => {
                // A probe that never reported (its stream vanished) must not
                // hold its slot forever.
                let timeout = settings.open_duration.0.max(1);
                self.probes
                    .retain(|admitted| now.saturating_sub(*admitted) < timeout);
                if self.probes.len() < usize::from(settings.half_open_requests) {
                    self.probes.push(now);
                    Admission::Probe
                } else {
                    Admission::Rejected { retry_after_ms: 0 }
                }
            }
        };
        (admission, transition)
    }

    /// Records a call's outcome. `probe` says whether `admit` let it through
    /// as a half-open probe.
    pub fn record(
        &mut self,
        failed: bool,
        slow: bool,
        probe: bool,
        now: u64,
        settings: &Settings,
    ) -> Option<BreakerTransition> {
        if self.window.capacity() != settings.window_size {
            self.window = OutcomeWindow::new(settings.window_size);
        }
        match self.state {
            BreakerState::Closed => {
                self.window.push(failed, slow);
                let reason = self.trip_reason(settings)?;
                Some(self.open(now, reason, settings))
            }
            BreakerState::HalfOpen if probe => {
                // The slot of the oldest probe is freed (outcomes of one
                // service's probes are interchangeable).
                if !self.probes.is_empty() {
                    self.probes.remove(0);
                }
                if failed || slow && settings.slow_calls_enabled() {
                    return Some(self.open(now, BreakerReason::ProbeFailed, settings));
                }
                self.probe_successes = self.probe_successes.saturating_add(1);
                if self.probe_successes < settings.close_after_successes {
                    return None;
                }
                let successes = self.probe_successes;
                self.window = OutcomeWindow::new(settings.window_size);
                self.trips = 0;
                self.probes.clear();
                Some(self.enter(
                    BreakerState::Closed,
                    BreakerReason::ProbesSucceeded { successes },
                ))
            }
            // Calls that were already in flight when the breaker opened say
            // nothing about the service as it is now.
            _ => None,
        }
    }

    /// Whether `advance` would change anything at `now`.
    /// When the open breaker turns half-open, if it is open.
    pub fn next_change_ms(&self) -> Option<u64> {
        (self.state == BreakerState::Open).then_some(self.open_until_ms)
    }

    #[cfg(test)]
    pub fn due(&self, now: u64) -> bool {
        self.state == BreakerState::Open && now >= self.open_until_ms
    }

    /// Open → half-open once the open period is over.
    pub fn advance(&mut self, now: u64) -> Option<BreakerTransition> {
        if self.state == BreakerState::Open && now >= self.open_until_ms {
            self.probes.clear();
            self.probe_successes = 0;
            return Some(self.enter(BreakerState::HalfOpen, BreakerReason::OpenPeriodOver));
        }
        None
    }

    fn trip_reason(&self, settings: &Settings) -> Option<BreakerReason> {
        let window = &self.window;
        let volume = window.len();
        if volume < settings.min_requests {
            return None;
        }
        first_rate_reached(
            window.failures(),
            window.slow(),
            volume,
            settings.failure_percent,
            settings
                .slow_calls_enabled()
                .then_some(settings.slow_call_percent),
        )
        .map(BreakerReason::Rate)
    }

    fn open(&mut self, now: u64, reason: BreakerReason, settings: &Settings) -> BreakerTransition {
        self.trips = self.trips.saturating_add(1);
        let doublings = u32::from(self.trips - 1).min(32);
        let duration = settings
            .open_duration
            .0
            .saturating_mul(1u64 << doublings)
            .min(settings.max_open_duration.0);
        self.open_until_ms = now.saturating_add(duration);
        self.probes.clear();
        self.probe_successes = 0;
        let mut transition = self.enter(BreakerState::Open, reason);
        transition.open_for_ms = Some(duration);
        transition
    }

    fn enter(&mut self, to: BreakerState, reason: BreakerReason) -> BreakerTransition {
        let from = self.state;
        self.state = to;
        BreakerTransition {
            from,
            to,
            reason,
            open_for_ms: None,
        }
    }
}

#[cfg(test)]
mod tests;
