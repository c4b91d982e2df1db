//! The grade of one upstream host: a small state machine over its outcome
//! window and failure streaks, with hysteresis, ejection backoff and a
//! warm-up ramp. Policy only: time comes in as milliseconds, the ejection
//! guard's answer comes in as `may_eject`, and nothing here talks to Envoy.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::classify::Outcome;
use crate::config::Grading;
use crate::model::HostState;
use crate::model::{first_rate_reached, percent, Measured, Rate};
use crate::window::OutcomeWindow;

/// Which run of consecutive failures tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streak {
    Failures,
    GatewayErrors,
    LocalOriginFailures,
}

/// Why a host changed grade, with the numbers behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A failure or slow-call rate reached its threshold.
    Rate(Rate),
    Consecutive {
        streak: Streak,
        count: u16,
    },
    FailedInWarmup {
        failures: u16,
        volume: u16,
    },
    Recovered {
        failures: u16,
        slow: u16,
        volume: u16,
        threshold: u8,
    },
    EjectionOver,
    WarmupOver {
        failures: u16,
        volume: u16,
    },
    /// Another host started failing after this one was ejected: the hosts
    /// that took its traffic cannot carry it.
    Overload,
}

impl Reason {
    /// A run of local-origin failures (refused connections, resets,
    /// timeouts): the host could not be reached, as opposed to answering
    /// badly.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Reason::Consecutive {
                streak: Streak::LocalOriginFailures,
                ..
            }
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Rate(rate) => rate.fmt(f),
            Reason::Consecutive { streak, count } => {
                let what = match streak {
                    Streak::Failures => "failures",
                    Streak::GatewayErrors => "gateway errors",
                    Streak::LocalOriginFailures => "local-origin failures",
                };
                write!(f, "{count} consecutive {what}")
            }
            Reason::FailedInWarmup { failures, volume } => {
                write!(f, "failed during warm-up ({failures} of {volume})")
            }
            Reason::Recovered {
                failures,
                slow,
                volume,
                threshold,
            } => write!(
                f,
                "failure {}% and slow {}% over {volume} < {threshold}%",
                percent(failures, volume),
                percent(slow, volume)
            ),
            Reason::EjectionOver => f.write_str("ejection time over"),
            Reason::WarmupOver { failures, volume } => write!(
                f,
                "warm-up over with failure {}% over {volume}",
                percent(failures, volume)
            ),
            Reason::Overload => {
                f.write_str("back early: the hosts that took its traffic started failing")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: HostState,
    pub to: HostState,
    pub reason: Reason,
    pub at_ms: u64,
    /// Set when `to` is Unhealthy.
    pub ejected_for_ms: Option<u64>,
    /// How many times the host has been ejected, this ejection included.
    pub times_ejected: u16,
}

/// What recording one outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    pub transition: Option<Transition>,
    /// The host earned ejection but the ejection guard said no.
    pub ejection_refused: Option<Reason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Streaks {
    failures: u16,
    gateway: u16,
    local_origin: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    state: HostState,
    /// When the current state began (ejection, return, recovery...).
    state_since_ms: u64,
    ejected_until_ms: u64,
    /// The ejection backoff's multiplier: one more per ejection, one less
    /// per base ejection time back at full weight.
    backoff: u16,
    /// Ejections so far, never earned back (the status document, the logs).
    ejections: u16,
    last_seen_ms: u64,
    streaks: Streaks,
    /// The shared record's write number in which the current failure streak
    /// began (see `ServiceHealth::writes`).
    streak_started_write: u64,
    window: OutcomeWindow,
    /// Ejected for its answers (not for being unreachable), so taking it
    /// back adds capacity.
    ejected_for_answers: bool,
    /// Ejected for refusing connections, which Envoy learns at once and
    /// retries elsewhere; not for timeouts or resets, which cost a request
    /// its time or its answer.
    ejected_refusing: bool,
    /// The last failure was a refused connection.
    last_refused: bool,
    /// Taken back early because its ejection overloaded the other hosts;
    /// cleared when it is Healthy again or ejected.
    back_for_overload: bool,
}

/// Warm-up weights, in percent of a healthy host's, for each third of the
/// warm-up period; full weight after it.
const WARMUP_STEPS: [u8; 3] = [10, 30, 50];

/// Hosts that start failing within this long of an ejection are taken to
/// share its cause (several hosts failing together); later ones, to be
/// failing under the traffic the ejected host no longer takes.
pub const LOAD_SHIFT_DELAY_MS: u64 = 250;

/// Least share a Degraded host keeps, in percent of a healthy host's.
pub const MIN_DEGRADED_WEIGHT: u8 = 1;

impl HostHealth {
    pub fn new(now: u64, window_size: u16) -> Self {
        HostHealth {
            state: HostState::Healthy,
            state_since_ms: now,
            ejected_until_ms: 0,
            backoff: 0,
            ejections: 0,
            last_seen_ms: now,
            streaks: Streaks::default(),
            streak_started_write: 0,
            ejected_for_answers: false,
            ejected_refusing: false,
            last_refused: false,
            back_for_overload: false,
            window: OutcomeWindow::new(window_size),
        }
    }

    pub fn state(&self) -> HostState {
        self.state
    }

    pub fn window(&self) -> &OutcomeWindow {
        &self.window
    }

    /// How many times the host was ejected (the backoff multiplier earns
    /// itself back; this count does not).
    pub fn times_ejected(&self) -> u16 {
        self.ejections
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms
    }

    /// Healthy with no failure streak running: nothing an outcome could
    /// change soon, so it can be written lazily.
    pub fn is_quiet(&self) -> bool {
        self.state == HostState::Healthy && self.streaks == Streaks::default()
    }

    /// Last traffic or grade change, whichever is later: an ejected host
    /// sees no traffic, yet is not idle.
    pub fn last_active_ms(&self) -> u64 {
        self.last_seen_ms.max(self.state_since_ms)
    }

    pub fn record(
        &mut self,
        outcome: Outcome,
        now: u64,
        config: Grading<'_>,
        may_eject: bool,
        jitter_ms: u64,
    ) -> Recorded {
        self.record_inner(outcome, now, config, may_eject, jitter_ms, true)
    }

    /// Whether the current failure streak began in a shared-record write
    /// after `seen_write`. Successes a worker counted while it had seen the
    /// record only up to `seen_write` may then have come before the streak.
    pub fn streak_began_after(&self, seen_write: u64) -> bool {
        self.streaks.failures > 0 && self.streak_started_write > seen_write
    }

    /// Records a success known only to have happened before the current
    /// failure streak: it counts in the window but breaks no streak, so a
    /// run of failures is counted in full across workers.
    pub fn record_preceding_success(
        &mut self,
        outcome: Outcome,
        now: u64,
        config: Grading<'_>,
    ) -> Recorded {
        self.record_inner(outcome, now, config, false, 0, false)
    }

    /// Stamps a streak that the last recorded failure started.
    pub fn mark_streak_start(&mut self, write: u64) {
        if self.streaks.failures == 1 {
            self.streak_started_write = write;
        }
    }

    fn record_inner(
        &mut self,
        outcome: Outcome,
        now: u64,
        config: Grading<'_>,
        may_eject: bool,
        jitter_ms: u64,
        breaks_streaks: bool,
    ) -> Recorded {
        let detection = &config.detection;
        self.last_seen_ms = self.last_seen_ms.max(now);
        if self.window.capacity() != detection.window_size {
            // The window size changed with a new configuration.
            self.window = OutcomeWindow::new(detection.window_size);
        }
        if self.state == HostState::Unhealthy {
            // Requests already in flight when the host was ejected.
            return Recorded::default();
        }
        self.window.push(outcome.failed(), outcome.slow);
        if breaks_streaks || outcome.failed() {
            self.count_streaks(outcome);
        }

        if let Some(reason) = self.ejection_reason(outcome, config) {
            if may_eject {
                return Recorded {
                    transition: Some(self.eject(now, reason, config, jitter_ms)),
                    ejection_refused: None,
                };
            }
            let transition = match self.state {
                HostState::Healthy => Some(self.enter(HostState::Degraded, now, reason)),
                _ => None,
            };
            return Recorded {
                transition,
                ejection_refused: Some(reason),
            };
        }
        if self.window.len() < detection.min_requests {
            return Recorded::default();
        }
        let transition = match self.state {
            HostState::Healthy => self
                .degradation_reason(config)
                .map(|reason| self.enter(HostState::Degraded, now, reason)),
            HostState::Degraded => self
                .recovery_reason(config)
                .map(|reason| self.enter(HostState::Healthy, now, reason)),
            HostState::Unhealthy | HostState::WarmingUp => None,
        };
        Recorded {
            transition,
            ejection_refused: None,
        }
    }

    /// Forgets the outcomes on record (window and streaks), keeping the
    /// grade and any ejection: after a whole-service outage, which the
    /// breaker saw end, they say nothing about this host.
    pub fn forget_outcomes(&mut self) {
        self.window.clear();
        self.streaks = Streaks::default();
    }

    /// Applies what the passage of time alone changes: an ejection ending,
    /// a warm-up ending. Call repeatedly until it returns `None`.
    pub fn advance(&mut self, now: u64, config: Grading<'_>) -> Option<Transition> {
        match self.state {
            HostState::Unhealthy if now >= self.ejected_until_ms => {
                // Judge the returning host on what it does from now on.
                self.window = OutcomeWindow::new(config.detection.window_size);
                self.streaks = Streaks::default();
                let at = self.ejected_until_ms;
                let to = if config.ejection.warmup_duration.0 == 0 {
                    HostState::Healthy
                } else {
                    HostState::WarmingUp
                };
                Some(self.enter(to, at, Reason::EjectionOver))
            }
            HostState::WarmingUp => {
                let end = self
                    .state_since_ms
                    .saturating_add(config.ejection.warmup_duration.0);
                if now < end {
                    return None;
                }
                let reason = Reason::WarmupOver {
                    failures: self.window.failures(),
                    volume: self.window.len(),
                };
                let to = if self.recovery_reason(config).is_some() {
                    HostState::Healthy
                } else {
                    HostState::Degraded
                };
                Some(self.enter(to, end, reason))
            }
            _ => None,
        }
    }

    /// Ends an ejection early because the hosts that took this one's
    /// traffic started failing: ejecting it overloaded them. It comes back
    /// at the Degraded weight, judged afresh. A host ejected for being
    /// unreachable stays out (taking it back adds no capacity).
    pub fn return_for_overload(&mut self, now: u64, config: Grading<'_>) -> Option<Transition> {
        if self.state != HostState::Unhealthy
            || now >= self.ejected_until_ms
            || now < self.state_since_ms.saturating_add(LOAD_SHIFT_DELAY_MS)
            || !self.ejected_for_answers
        {
            return None;
        }
        self.window = OutcomeWindow::new(config.detection.window_size);
        self.streaks = Streaks::default();
        self.ejected_until_ms = now;
        let transition = self.enter(HostState::Degraded, now, Reason::Overload);
        self.back_for_overload = true;
        Some(transition)
    }

    /// Ejected for timeouts or resets and not back yet: a request sent
    /// there would wait out a timeout or lose its answer, where a refused
    /// connection or an error answer is retried elsewhere at once.
    pub fn ejected_costly_to_reach(&self, now: u64) -> bool {
        self.state == HostState::Unhealthy
            && !self.ejected_for_answers
            && !self.ejected_refusing
            && now < self.ejected_until_ms
    }

    /// Healthy with nothing on record that a host never watched lacks: no
    /// streak, no failure or slow call in its window, and any ejection backoff earned
    /// back (one base ejection time per ejection, at full weight).
    pub fn releasable(&self, now: u64, config: Grading<'_>) -> bool {
        if !self.is_quiet() || self.window.failures() > 0 || self.window.slow() > 0 {
            return false;
        }
        if self.backoff == 0 {
            return true;
        }
        let back_since = self
            .ejected_until_ms
            .saturating_add(config.ejection.warmup_duration.0);
        let base = config.ejection.base_ejection_time.0.max(1);
        now.saturating_sub(back_since) >= base.saturating_mul(u64::from(self.backoff))
    }

    /// The next time at which time alone changes this host's state or
    /// weight: its ejection ending, or the next warm-up step.
    pub fn next_change_ms(&self, now: u64, config: Grading<'_>) -> Option<u64> {
        let warmup = config.ejection.warmup_duration.0;
        match self.state {
            HostState::Unhealthy if now < self.ejected_until_ms => Some(self.ejected_until_ms),
            // Past its ejection, unwritten: on the ramp already (see
            // `weight_percent`), and due to be written.
            HostState::Unhealthy => Some(now),
            HostState::WarmingUp => (1..=3u64)
                .map(|k| {
                    self.state_since_ms
                        .saturating_add(warmup.saturating_mul(k) / 3)
                })
                .find(|t| *t > now)
                .or(Some(now)),
            _ => None,
        }
    }

    #[cfg(test)]
    /// Whether `advance` would change something at `now`.
    pub fn due(&self, now: u64, config: Grading<'_>) -> bool {
        match self.state {
            HostState::Unhealthy => now >= self.ejected_until_ms,
            HostState::WarmingUp => {
                now >= self
                    .state_since_ms
                    .saturating_add(config.ejection.warmup_duration.0)
            }
            _ => false,
        }
    }

    /// Share of a healthy host's traffic this host should get, in percent.
    /// Pure in `now`, so every worker computes the same ramp from the same
    /// record even before anyone has written the time-driven transition.
    pub fn weight_percent(&self, now: u64, config: Grading<'_>) -> u8 {
        let warmup = config.ejection.warmup_duration.0;
        match self.state {
            HostState::Healthy => 100,
            // A trickle at least: a host that gets no traffic can never
            // show that it has recovered.
            HostState::Degraded => config
                .ejection
                .degraded_weight_percent
                .max(MIN_DEGRADED_WEIGHT),
            HostState::Unhealthy if now < self.ejected_until_ms => 0,
            HostState::Unhealthy => ramp(now - self.ejected_until_ms, warmup),
            HostState::WarmingUp => ramp(now.saturating_sub(self.state_since_ms), warmup),
        }
    }

    fn count_streaks(&mut self, outcome: Outcome) {
        if let Some(kind) = outcome.failure {
            self.last_refused = kind
                == crate::classify::FailureKind::LocalOrigin(
                    crate::classify::LocalOrigin::ConnectFailure,
                );
        }
        let streaks = &mut self.streaks;
        match outcome.failure {
            Some(kind) => {
                streaks.failures = streaks.failures.saturating_add(1);
                streaks.gateway = if kind.is_gateway_like() {
                    streaks.gateway.saturating_add(1)
                } else {
                    0
                };
                streaks.local_origin = if kind.is_local_origin() {
                    streaks.local_origin.saturating_add(1)
                } else {
                    0
                };
            }
            None => *streaks = Streaks::default(),
        }
    }

    fn ejection_reason(&self, outcome: Outcome, config: Grading<'_>) -> Option<Reason> {
        let detection = &config.detection;
        let tripped = |count: u16, threshold: u16| threshold > 0 && count >= threshold;
        let streaks = self.streaks;
        // A host taken back because ejecting it overloaded the others is
        // judged by its failure rate: runs of error answers are expected
        // from it under load. A run of local-origin failures still ejects
        // it (the host is unreachable).
        let answers_count = !self.back_for_overload;
        let streak = if tripped(
            streaks.local_origin,
            detection.consecutive_local_origin_failures,
        ) {
            Some((Streak::LocalOriginFailures, streaks.local_origin))
        } else if answers_count && tripped(streaks.gateway, detection.consecutive_gateway_errors) {
            Some((Streak::GatewayErrors, streaks.gateway))
        } else if answers_count && tripped(streaks.failures, detection.consecutive_5xx_errors) {
            Some((Streak::Failures, streaks.failures))
        } else {
            None
        };
        if let Some((streak, count)) = streak {
            return Some(Reason::Consecutive { streak, count });
        }
        let window = &self.window;
        let (failures, volume) = (window.failures(), window.len());
        let threshold = detection.unhealthy_failure_percent;
        let rate = Rate::reached(Measured::Failures, failures, volume, threshold);
        if volume >= detection.min_requests {
            if let Some(rate) = rate {
                return Some(Reason::Rate(rate));
            }
        }
        // A returning host must prove itself: failing again at the
        // ejection rate sends it straight back, without waiting for volume.
        if self.state == HostState::WarmingUp && outcome.failed() && rate.is_some() {
            return Some(Reason::FailedInWarmup { failures, volume });
        }
        None
    }

    fn degradation_reason(&self, config: Grading<'_>) -> Option<Reason> {
        let detection = &config.detection;
        let window = &self.window;
        let volume = window.len();
        first_rate_reached(
            window.failures(),
            window.slow(),
            volume,
            detection.degraded_failure_percent,
            detection
                .slow_calls_enabled()
                .then_some(detection.slow_call_percent),
        )
        .map(Reason::Rate)
    }

    /// Healthy again only once both failures and slow calls are below
    /// `recoveredFailurePercent`: the gap to the degrade threshold is the
    /// hysteresis band that stops a host at the threshold from flapping.
    fn recovery_reason(&self, config: Grading<'_>) -> Option<Reason> {
        let threshold = config.detection.recovered_failure_percent;
        let window = &self.window;
        let slow_ok =
            !config.detection.slow_calls_enabled() || window.below(window.slow(), threshold);
        (window.below(window.failures(), threshold) && slow_ok).then_some(Reason::Recovered {
            failures: window.failures(),
            slow: window.slow(),
            volume: window.len(),
            threshold,
        })
    }

    fn eject(
        &mut self,
        now: u64,
        reason: Reason,
        config: Grading<'_>,
        jitter_ms: u64,
    ) -> Transition {
        let base = config.ejection.base_ejection_time.0.max(1);
        // Time spent back at full weight since the last ejection earns the
        // backoff back, one step per base ejection time (Envoy decrements
        // its multiplier while a host stays healthy, too).
        let back_since = self
            .ejected_until_ms
            .saturating_add(config.ejection.warmup_duration.0);
        let earned = now.saturating_sub(back_since) / base;
        let earned = u16::try_from(earned).unwrap_or(u16::MAX);
        self.backoff = self.backoff.saturating_sub(earned);
        self.backoff = self.backoff.saturating_add(1);
        self.ejections = self.ejections.saturating_add(1);
        let duration = base
            .saturating_mul(u64::from(self.backoff))
            .min(config.ejection.max_ejection_time.0)
            .saturating_add(jitter_ms);
        self.ejected_until_ms = now.saturating_add(duration);
        self.streaks = Streaks::default();
        self.ejected_for_answers = !reason.is_unreachable();
        self.ejected_refusing = reason.is_unreachable() && self.last_refused;
        let mut transition = self.enter(HostState::Unhealthy, now, reason);
        transition.ejected_for_ms = Some(duration);
        transition
    }

    fn enter(&mut self, to: HostState, at: u64, reason: Reason) -> Transition {
        let from = self.state;
        self.back_for_overload = false;
        self.state = to;
        self.state_since_ms = at;
        Transition {
            from,
            to,
            reason,
            at_ms: at,
            ejected_for_ms: None,
            times_ejected: self.ejections,
        }
    }
}

fn ramp(elapsed: u64, warmup: u64) -> u8 {
    if warmup == 0 || elapsed >= warmup {
        return 100;
    }
    let third = (elapsed.saturating_mul(3) / warmup).min(2);
    WARMUP_STEPS[third as usize]
}

#[cfg(test)]
mod tests;
