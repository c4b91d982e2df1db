//! The health record of one upstream service (an Envoy cluster): the hosts
//! under watch, with the ejection guard applied across the service, and the
//! breaker. This is the unit that workers share through Envoy's shared data.
//!
//! Only hosts with failures on record are watched (window, streaks, grade):
//! a host that has not failed is Healthy without any state, so the record,
//! and what every failure rewrites, grows with the hosts that fail, not
//! with the service. A watched host that is Healthy again with a clean
//! window (and its ejection backoff earned back) is released.

use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, BreakerTransition};
use crate::classify::Outcome;
use crate::config::Config;
use crate::guard;
use crate::health::{HostHealth, Reason, Transition};
use crate::model::{BreakerState, HostState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub address: String,
    pub health: HostHealth,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// The cluster this record belongs to and the slot generation it was
    /// written under, so a record left in a reused shared-data slot is
    /// recognised as stale.
    pub service: String,
    pub epoch: u32,
    pub hosts: Vec<HostEntry>,
    /// Count of read-modify-writes, so a worker can tell whether something
    /// happened in the record after it last saw it.
    pub writes: u64,
    /// The breaker for all of this record's traffic (the service's, or one
    /// override's share of it).
    pub breaker: Breaker,
    /// Hosts in the service as the workers see it (the largest count one
    /// reported lately), for the ejection guard: watched hosts are only
    /// the ones that failed.
    pub members: u32,
    pub members_at_ms: u64,
    /// Count of changes to the set of watched hosts.
    pub roster: u64,
    /// Version of the service's shared member list (see `state::store`):
    /// a worker that has read an older one reads it again.
    pub member_list: u64,
    /// Until then an upstream instance (`mode: upstream`) records every
    /// attempt to this service's hosts, retried ones included: downstream
    /// instances then leave the hosts' grading to it (they see only each
    /// request's last attempt) and keep the breaker and steering.
    pub attempts_until_ms: u64,
}

/// How long a reported member count stands before a smaller one replaces it.
const MEMBERS_STAND_MS: u64 = 30_000;

/// A Degraded or warming-up host no outcome was recorded for this long
/// (though it gets traffic) most likely left the cluster: when the table
/// of watched hosts is full, it makes room for a host with new failures.
const STALE_GRADED_MS: u64 = 30_000;

/// One request's outcome, as the host's grade and the breaker see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub outcome: Outcome,
    /// Slower than the breaker's own `slowCallThreshold`.
    pub breaker_slow: bool,
    /// Admitted by a half-open breaker as a probe.
    pub probe: bool,
}

impl Observation {
    pub fn plain(outcome: Outcome) -> Self {
        Observation {
            outcome,
            breaker_slow: false,
            probe: false,
        }
    }
}

/// Outcomes one worker has seen for one host and not yet written.
/// Successes are only counted (their order does not matter); failures and
/// probes keep their order, up to a bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pending {
    /// Successes by kind: index bit 0 = slow, bit 1 = slow for the breaker.
    pub successes: [u32; 4],
    pub ordered: Vec<Observation>,
    /// The record's `writes` when the worker last saw it: the successes
    /// happened after that, in an order unknown against later writes.
    pub seen_writes: u64,
    /// Plain successes from before the host's first evidence, which the
    /// worker counted without a record: they start the host's window when
    /// this write creates its record, and are dropped when another worker
    /// created it first (they are older than what its window holds).
    pub history: u32,
}

/// Failures a worker holds for one host before dropping the oldest: they
/// are normally written at once, this only bounds memory if writes fail.
pub const MAX_PENDING_FAILURES: usize = 64;

impl Pending {
    #[cfg(test)]
    pub fn add(&mut self, observation: Observation) {
        self.add_n(observation, 1);
    }

    /// Adds an observation; a success counts `n` times (a sampled one
    /// standing for the others), a failure or probe once.
    pub fn add_n(&mut self, observation: Observation, n: u16) {
        if observation.outcome.failed() || observation.probe {
            if self.ordered.len() == MAX_PENDING_FAILURES {
                self.ordered.remove(0);
            }
            self.ordered.push(observation);
        } else {
            let index =
                usize::from(observation.outcome.slow) | usize::from(observation.breaker_slow) << 1;
            self.successes[index] = self.successes[index].saturating_add(u32::from(n.max(1)));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.successes.iter().all(|n| *n == 0) && self.ordered.is_empty() && self.history == 0
    }

    /// Anything that can move a grade: a failure or a slow call.
    pub fn has_evidence(&self) -> bool {
        self.ordered
            .iter()
            .any(|o| o.outcome.failed() || o.outcome.slow)
            || self.successes[1] > 0
            || self.successes[3] > 0
    }

    pub fn failures(&self) -> usize {
        self.ordered.iter().filter(|o| o.outcome.failed()).count()
    }

    /// Every observation, successes first (capped at what a window can hold).
    fn replay(&self, cap: u32) -> impl Iterator<Item = Observation> + '_ {
        self.successes
            .iter()
            .enumerate()
            .flat_map(move |(index, count)| {
                let observation = Observation {
                    outcome: Outcome {
                        failure: None,
                        slow: index & 1 != 0,
                    },
                    breaker_slow: index & 2 != 0,
                    probe: false,
                };
                (0..(*count).min(cap)).map(move |_| observation)
            })
            .chain(self.ordered.iter().copied())
    }
}

/// Something worth telling the operator about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transition {
        address: String,
        transition: Transition,
    },
    /// A host earned ejection but the guard kept it in (max ejection percent).
    EjectionRefused {
        address: String,
        reason: Reason,
    },
    /// A limit kept a host out (`limit` names the setting).
    HostNotTracked {
        address: String,
        limit: &'static str,
    },
    Breaker(BreakerTransition),
}

impl ServiceHealth {
    /// Marks the start of one read-modify-write of the shared record.
    pub fn begin_write(&mut self) {
        self.writes = self.writes.wrapping_add(1);
    }

    pub fn new(service: &str, epoch: u32) -> Self {
        ServiceHealth {
            service: service.to_string(),
            epoch,
            hosts: Vec::new(),
            writes: 0,
            breaker: Breaker::default(),
            members: 0,
            members_at_ms: 0,
            roster: 0,
            member_list: 0,
            attempts_until_ms: 0,
        }
    }

    /// Hosts are kept in address order, so a lookup is a binary search.
    fn position(&self, address: &str) -> Result<usize, usize> {
        self.hosts
            .binary_search_by(|h| h.address.as_str().cmp(address))
    }

    pub fn host(&self, address: &str) -> Option<&HostEntry> {
        self.position(address).ok().map(|i| &self.hosts[i])
    }

    /// Records one worker's count of the service's hosts; `shrank` when it
    /// just saw hosts leave (then a smaller count stands at once).
    pub fn note_members(&mut self, count: usize, shrank: bool, now: u64) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count >= self.members
            || shrank
            || now.saturating_sub(self.members_at_ms) >= MEMBERS_STAND_MS
        {
            self.members = count;
            self.members_at_ms = now;
        }
    }

    /// Hosts in the service, for the ejection guard.
    pub fn size(&self) -> usize {
        (self.members as usize).max(self.hosts.len())
    }

    /// Releases watched hosts that are indistinguishable from hosts never
    /// watched, and returns how many.
    fn release(&mut self, now: u64, config: &Config) -> usize {
        let before = self.hosts.len();
        let idle = config.limits.host_idle_timeout.0;
        self.hosts
            .retain(|h| !h.health.releasable(now, config.grading()) && !forgettable(h, now, idle));
        let released = before - self.hosts.len();
        if released > 0 {
            self.roster = self.roster.wrapping_add(1);
        }
        released
    }

    /// Forgets hosts that left the cluster (steering showed them gone),
    /// whatever their grade: a host that is no longer there must not keep
    /// a grade that steers traffic or holds a place in the table. Returns
    /// whether any was watched.
    pub fn forget<'a>(&mut self, departed: impl IntoIterator<Item = &'a str>) -> bool {
        let mut forgotten = false;
        for address in departed {
            if let Ok(index) = self.position(address) {
                self.hosts.remove(index);
                forgotten = true;
            }
        }
        if forgotten {
            self.roster = self.roster.wrapping_add(1);
        }
        forgotten
    }

    /// The earliest time at which time alone changes this record or its
    /// weights (an ejection ending, a warm-up step, an idle host forgotten,
    /// the breaker's open time ending).
    pub fn next_change_ms(&self, now: u64, config: &Config) -> Option<u64> {
        let idle = config.limits.host_idle_timeout.0;
        let hosts = self.hosts.iter().filter_map(|h| {
            let change = h.health.next_change_ms(now, config.grading());
            let forget = (idle > 0).then(|| idle_since_ms(h).saturating_add(idle));
            change.into_iter().chain(forget).min()
        });
        hosts.chain(self.breaker.next_change_ms()).min()
    }

    #[cfg(test)]
    /// No host is held below full weight by a grade, a streak or a ramp:
    /// successes can then wait for the periodic flush.
    pub fn is_quiet(&self, address: &str) -> bool {
        self.host(address).is_none_or(|h| h.health.is_quiet())
    }

    pub fn ejected(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.health.state() == HostState::Unhealthy)
            .count()
    }

    /// Writes one worker's pending outcomes for `address` into the record.
    /// `random` supplies ejection jitter.
    pub fn apply(
        &mut self,
        address: &str,
        pending: &Pending,
        now: u64,
        config: &Config,
        random: &mut dyn FnMut() -> u64,
        events: &mut Vec<Event>,
    ) {
        // While the breaker is open the service fails as a whole: its hosts'
        // outcomes were forgotten when it opened (`forget_outage`), and what
        // still arrives is calls in flight then, no evidence against a host.
        if self.breaker.state() == BreakerState::Open {
            return;
        }
        let created = self.host(address).is_none();
        let Some(index) = self.slot_for(address, pending, now, config) else {
            if pending.has_evidence() {
                events.push(Event::HostNotTracked {
                    address: address.to_string(),
                    limit: "limits.maxWatchedHostsPerService",
                });
            }
            return;
        };
        let cap = u32::from(config.detection.window_size);
        let max_percent = config.ejection.max_ejection_percent;
        let jitter = config.ejection.ejection_jitter.0;
        let size = self.size();
        // Counted once, then kept current: recounting per outcome would
        // cost hosts x outcomes on a large batch.
        let mut ejected = self.ejected();
        let history = if created { pending.history.min(cap) } else { 0 };
        let earlier = (0..history).map(|_| Observation::plain(Outcome::SUCCESS));
        for observation in earlier.chain(pending.replay(cap)) {
            let outcome = observation.outcome;
            // A success can earn ejection too: the one that brings a
            // failing window up to minRequests.
            let may_eject = guard::may_eject(ejected, size, max_percent);
            let jitter_ms = if jitter > 0 {
                random() % (jitter + 1)
            } else {
                0
            };
            let write = self.writes;
            let entry = &mut self.hosts[index];
            // Batched successes and another worker's failure run: the
            // successes may have come first; let them not hide the run.
            let recorded =
                if !outcome.failed() && entry.health.streak_began_after(pending.seen_writes) {
                    entry
                        .health
                        .record_preceding_success(outcome, now, config.grading())
                } else {
                    entry
                        .health
                        .record(outcome, now, config.grading(), may_eject, jitter_ms)
                };
            if outcome.failed() {
                entry.health.mark_streak_start(write);
            }
            if let Some(transition) = recorded.transition {
                if transition.to == HostState::Unhealthy {
                    ejected += 1;
                }
                events.push(Event::Transition {
                    address: entry.address.clone(),
                    transition,
                });
            }
            if let Some(reason) = recorded.ejection_refused {
                events.push(Event::EjectionRefused {
                    address: entry.address.clone(),
                    reason,
                });
            }
            if recorded.transition.is_some_and(|t| signals_overload(&t)) {
                ejected -= self.return_overloaded(index, now, config, events);
            }
        }
    }

    /// Writes one worker's pending outcomes of the whole record's traffic
    /// into the breaker.
    pub fn apply_breaker(
        &mut self,
        pending: &Pending,
        now: u64,
        config: &Config,
        events: &mut Vec<Event>,
    ) {
        let breaker = &config.circuit_breaker;
        if !breaker.enabled {
            return;
        }
        for observation in pending.replay(u32::from(breaker.window_size)) {
            if let Some(t) = self.breaker.record(
                observation.outcome.failed(),
                observation.breaker_slow,
                observation.probe,
                now,
                breaker,
            ) {
                let reopened_or_closed = t.to == BreakerState::Open
                    || (t.from == BreakerState::HalfOpen && t.to == BreakerState::Closed);
                if reopened_or_closed {
                    self.forget_outage();
                }
                events.push(Event::Breaker(t));
            }
        }
    }

    /// The breaker opened (the service fails as a whole) or closed after
    /// its probes succeeded (it is back). The hosts' windows are full of
    /// that outage (every host failed), and judged on them a host would be
    /// graded down or ejected for failures that were not its own: at the
    /// first outcome after the return, or as soon as the ejection cap
    /// allows an ejection it had refused. They start afresh when the
    /// breaker opens (no traffic reaches them while it is open but its
    /// probes) and again when it closes; grades and ejections stand.
    fn forget_outage(&mut self) {
        for entry in &mut self.hosts {
            entry.health.forget_outcomes();
        }
    }

    /// Takes back the hosts ejected for their answers, other than `except`,
    /// at the Degraded weight; returns how many came back.
    fn return_overloaded(
        &mut self,
        except: usize,
        now: u64,
        config: &Config,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut returned = 0;
        for (index, entry) in self.hosts.iter_mut().enumerate() {
            if index == except {
                continue;
            }
            if let Some(transition) = entry.health.return_for_overload(now, config.grading()) {
                returned += 1;
                events.push(Event::Transition {
                    address: entry.address.clone(),
                    transition,
                });
            }
        }
        returned
    }

    /// Applies time-driven changes (ejections ending, warm-ups ending) and
    /// releases hosts that need watching no more (Healthy with a clean
    /// window, or idle past `hostIdleTimeout`). Returns whether the record
    /// changed.
    pub fn advance(&mut self, now: u64, config: &Config, events: &mut Vec<Event>) -> bool {
        let mut changed = false;
        if let Some(t) = self.breaker.advance(now) {
            changed = true;
            events.push(Event::Breaker(t));
        }
        for entry in &mut self.hosts {
            // At most: ejection over, then warm-up over.
            for _ in 0..2 {
                let Some(transition) = entry.health.advance(now, config.grading()) else {
                    break;
                };
                changed = true;
                events.push(Event::Transition {
                    address: entry.address.clone(),
                    transition,
                });
            }
        }
        self.release(now, config) > 0 || changed
    }

    #[cfg(test)]
    /// Whether `advance` would change anything at `now`.
    pub fn due(&self, now: u64, config: &Config) -> bool {
        let idle = config.limits.host_idle_timeout.0;
        self.breaker.due(now)
            || self
                .hosts
                .iter()
                .any(|h| h.health.due(now, config.grading()) || forgettable(h, now, idle))
    }

    #[cfg(test)]
    /// Whether any watched host is below full weight at `now`.
    pub fn steers(&self, now: u64, config: &Config) -> bool {
        self.hosts
            .iter()
            .any(|h| h.health.weight_percent(now, config.grading()) < 100)
    }

    /// The host's place in the record; a host not watched yet gets one only
    /// for evidence (plain successes of an unwatched host change nothing).
    fn slot_for(
        &mut self,
        address: &str,
        pending: &Pending,
        now: u64,
        config: &Config,
    ) -> Option<usize> {
        if let Ok(index) = self.position(address) {
            return Some(index);
        }
        if !pending.has_evidence() {
            return None;
        }
        let entry = HostEntry {
            address: address.to_string(),
            health: HostHealth::new(now, config.detection.window_size),
        };
        if self.hosts.len() >= usize::from(config.limits.max_watched_hosts_per_service) {
            // Full: a Healthy host with the least evidence (fewest failures
            // in its window, then least recently active) makes room, if it
            // has no more than this one is about to record. Hosts in any
            // other state carry a grade or an ejection that must not be lost.
            // Failing that, a Degraded or warming-up host nothing was heard
            // from lately (it gets traffic, so it has most likely left):
            // a table full of those must not keep out a host failing now.
            let failures = u16::try_from(pending.failures()).unwrap_or(u16::MAX);
            let healthy = self
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.health.state() == HostState::Healthy)
                .filter(|(_, h)| h.health.window().failures() <= failures)
                .min_by_key(|(_, h)| (h.health.window().failures(), h.health.last_active_ms()))
                .map(|(index, _)| index);
            let stale = || {
                self.hosts
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| {
                        matches!(h.health.state(), HostState::Degraded | HostState::WarmingUp)
                    })
                    .filter(|(_, h)| {
                        failures > 0
                            && now.saturating_sub(h.health.last_active_ms()) >= STALE_GRADED_MS
                    })
                    .min_by_key(|(_, h)| h.health.last_active_ms())
                    .map(|(index, _)| index)
            };
            let victim = healthy.or_else(stale)?;
            self.hosts.remove(victim);
        }
        self.roster = self.roster.wrapping_add(1);
        let insert_at = self.position(address).err()?;
        self.hosts.insert(insert_at, entry);
        Some(insert_at)
    }
}

/// A host that was fine starting to fail for its answers (not for being
/// unreachable) while another is ejected: the ejected host's traffic went
/// to it, so ejecting shifted load onto hosts that cannot carry it (the
/// overload cascade). Envoy's detector keeps ejecting here.
fn signals_overload(transition: &Transition) -> bool {
    let was_fine = matches!(transition.from, HostState::Healthy | HostState::WarmingUp);
    let now_bad = matches!(transition.to, HostState::Degraded | HostState::Unhealthy);
    was_fine && now_bad && !transition.reason.is_unreachable()
}

/// Since when a host has been idle: its last traffic or grade change, or,
/// while ejected, the end of its ejection (it gets no traffic until then).
fn idle_since_ms(entry: &HostEntry) -> u64 {
    let health = &entry.health;
    match health.state() {
        HostState::Unhealthy => health.last_active_ms().max(health.ejected_until_ms()),
        _ => health.last_active_ms(),
    }
}

/// Idle past `hostIdleTimeout`, whatever its grade: a host that left the
/// cluster while Degraded (or ejected) is forgotten too, or it would hold
/// its place in the table, and keep steering on, for good.
fn forgettable(entry: &HostEntry, now: u64, idle_ms: u64) -> bool {
    idle_ms > 0 && now.saturating_sub(idle_since_ms(entry)) >= idle_ms
}

/// Shared-data encoding of a service record. A record that does not decode
/// (another version's layout, corruption) is treated as empty: losing some
/// history is better than trapping.
pub fn encode(record: &ServiceHealth) -> Option<Vec<u8>> {
    postcard::to_allocvec(record).ok()
}

pub fn decode(bytes: &[u8]) -> Option<ServiceHealth> {
    postcard::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests;
