//! The hosts of one service as one worker knows them: Envoy's membership,
//! learnt from where its requests went, so that steering can pick among
//! every host, not only those with a record. Bounded; a host that stops
//! appearing is forgotten, one that steering shows gone leaves at once.
//!
//! Upstream addresses come from Envoy's cluster, not from clients, so a
//! fixed-key hash is enough (and needs no entropy from the host).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

pub type FixedState = BuildHasherDefault<DefaultHasher>;

/// Members checked for idleness per sweep: the sweep's cost per tick does
/// not grow with the service.
const SWEEP_BUDGET: usize = 64;
/// Hosts steering showed gone that are remembered, so another worker's
/// record does not bring them back into the plan.
const MAX_GONE: usize = 64;
/// How long a host steering showed gone is kept out of the plan unless it
/// is seen again.
pub const GONE_FOR_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Known,
    /// Not known before; now a member.
    New,
    /// Not known, and the table is full (`limits.maxHostsPerService`).
    Full,
}

#[derive(Debug)]
struct Member {
    address: Rc<str>,
    /// Last answer seen, or when the shared list taught it.
    last_seen_ms: u64,
    /// Last answer this worker itself saw (0: none yet).
    answered_ms: u64,
    /// Successes since they were last taken (at the host's latest
    /// evidence): the history a host brings when a failure gets it a record.
    successes: u16,
}

#[derive(Debug, Default)]
pub struct Members {
    slots: Vec<Member>,
    index: HashMap<Rc<str>, usize, FixedState>,
    sweep_at: usize,
    /// Set when a member came or went; cleared by [`Members::take_changed`].
    changed: bool,
    /// Set when steering showed a member gone: the service shrank, which
    /// other workers must not undo with their older, larger count.
    shrank: bool,
    gone: Vec<(Rc<str>, u64)>,
}

impl Members {
    /// `address` answered a request at `now`, successfully or not.
    /// A host answered (`successes`: how many plain successes this stands
    /// for, 0 for anything else).
    pub fn saw(&mut self, address: &str, now: u64, capacity: usize, successes: u16) -> Seen {
        if let Some(&slot) = self.index.get(address) {
            let member = &mut self.slots[slot];
            if member.last_seen_ms < now {
                member.last_seen_ms = now;
            }
            member.answered_ms = member.answered_ms.max(now);
            member.successes = member.successes.saturating_add(successes);
            return Seen::Known;
        }
        if self.slots.len() >= capacity {
            return Seen::Full;
        }
        let address: Rc<str> = Rc::from(address);
        self.gone.retain(|(a, _)| *a != address);
        self.index.insert(Rc::clone(&address), self.slots.len());
        self.slots.push(Member {
            address,
            last_seen_ms: now,
            answered_ms: now,
            successes,
        });
        self.changed = true;
        Seen::New
    }

    /// Takes on a host another worker has seen (from the shared list):
    /// a member from now on, as if seen at `now`. Returns whether it is new.
    pub fn learn(&mut self, address: &str, now: u64, capacity: usize) -> bool {
        if self.index.contains_key(address) || self.slots.len() >= capacity {
            return false;
        }
        if self.is_gone(address, now) {
            return false;
        }
        let address: Rc<str> = Rc::from(address);
        self.index.insert(Rc::clone(&address), self.slots.len());
        self.slots.push(Member {
            address,
            last_seen_ms: now,
            answered_ms: 0,
            successes: 0,
        });
        self.changed = true;
        true
    }

    /// The successes `address` had since they were last taken (counted as
    /// they came, handed over once).
    pub fn take_successes(&mut self, address: &str) -> u16 {
        let Some(&slot) = self.index.get(address) else {
            return 0;
        };
        std::mem::take(&mut self.slots[slot].successes)
    }

    /// The shared name of a member's address (no allocation).
    pub fn address(&self, address: &str) -> Option<Rc<str>> {
        let slot = *self.index.get(address)?;
        Some(Rc::clone(&self.slots[slot].address))
    }

    pub fn contains(&self, address: &str) -> bool {
        self.index.contains_key(address)
    }

    /// `address` is no longer in the cluster (a request steered to it went
    /// elsewhere).
    pub fn left(&mut self, address: &str, now: u64) {
        if let Some(slot) = self.index.remove(address) {
            self.remove_slot(slot);
        }
        if !self.gone.iter().any(|(a, _)| &**a == address) {
            if self.gone.len() >= MAX_GONE {
                self.gone.remove(0);
            }
            self.gone.push((Rc::from(address), now));
        }
        self.changed = true;
        self.shrank = true;
    }

    /// Whether steering showed `address` gone lately (and it was not seen since).
    pub fn is_gone(&self, address: &str, now: u64) -> bool {
        self.gone
            .iter()
            .any(|(a, at)| &**a == address && now.saturating_sub(*at) < GONE_FOR_MS)
    }

    fn remove_slot(&mut self, slot: usize) {
        self.slots.swap_remove(slot);
        if let Some(moved) = self.slots.get(slot) {
            if let Some(position) = self.index.get_mut(&moved.address) {
                *position = slot;
            }
        }
    }

    /// Forgets members not seen for `idle_ms`, looking at a bounded number
    /// of them per call (a full pass takes members / budget calls); the
    /// forgotten go into `forgotten`.
    pub fn sweep(&mut self, now: u64, idle_ms: u64, forgotten: &mut Vec<Rc<str>>) {
        if idle_ms == 0 || self.slots.is_empty() {
            return;
        }
        for _ in 0..SWEEP_BUDGET.min(self.slots.len()) {
            if self.slots.is_empty() {
                break;
            }
            if self.sweep_at >= self.slots.len() {
                self.sweep_at = 0;
            }
            let member = &self.slots[self.sweep_at];
            if now.saturating_sub(member.last_seen_ms) >= idle_ms {
                let address = Rc::clone(&member.address);
                self.index.remove(&address);
                self.remove_slot(self.sweep_at);
                self.changed = true;
                forgotten.push(address);
            } else {
                self.sweep_at += 1;
            }
        }
        self.gone
            .retain(|(_, at)| now.saturating_sub(*at) < GONE_FOR_MS);
    }

    /// Whether this worker saw `address` answer at `since` or later.
    pub fn answered_after(&self, address: &str, since: u64) -> bool {
        self.index.get(address).is_some_and(|&slot| {
            self.slots[slot].answered_ms >= since && self.slots[slot].answered_ms > 0
        })
    }

    /// Members whose answer this worker saw at `since` or later (not
    /// those only the shared list taught it).
    pub fn answered_since(&self, since: u64) -> impl Iterator<Item = &Rc<str>> {
        self.slots
            .iter()
            .filter(move |m| m.answered_ms >= since && m.answered_ms > 0)
            .map(|m| &m.address)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rc<str>> {
        self.slots.iter().map(|m| &m.address)
    }

    pub fn take_shrank(&mut self) -> bool {
        std::mem::take(&mut self.shrank)
    }

    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_bounded_and_forgets() {
        let mut m = Members::default();
        assert_eq!(m.saw("a:1", 0, 2, 1), Seen::New);
        assert_eq!(m.saw("a:1", 5, 2, 1), Seen::Known);
        assert_eq!(m.saw("b:1", 5, 2, 1), Seen::New);
        assert_eq!(m.saw("c:1", 5, 2, 1), Seen::Full, "bounded");
        assert!(m.take_changed());
        assert!(!m.take_changed());
        assert_eq!(m.take_successes("a:1"), 2, "two successes so far");
        assert_eq!(m.take_successes("a:1"), 0, "handed over once");
        m.saw("b:1", 6, 2, 0);
        assert_eq!(m.take_successes("b:1"), 1, "the success before the failure");
        m.left("a:1", 10);
        assert!(!m.contains("a:1"));
        assert!(m.is_gone("a:1", 11));
        assert!(m.contains("b:1"), "the moved slot is still indexed");
        assert_eq!(m.saw("a:1", 12, 2, 1), Seen::New, "seen again: back");
        assert!(!m.is_gone("a:1", 12));
        // b last seen at 5, a at 12: an idle sweep at 1000+5 forgets b only.
        let mut forgotten = Vec::new();
        m.sweep(1006, 1000, &mut forgotten);
        assert_eq!(forgotten.len(), 1);
        assert!(!m.contains("b:1"));
        assert!(m.contains("a:1"));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_sweep_that_forgets_everyone_stops() {
        let mut m = Members::default();
        for i in 0..5 {
            m.saw(&format!("10.0.0.{i}:80"), 0, 16, 1);
        }
        let mut forgotten = Vec::new();
        m.sweep(10_000, 1000, &mut forgotten);
        assert!(m.is_empty());
        assert_eq!(forgotten.len(), 5);
        m.sweep(20_000, 1000, &mut forgotten);
    }

    #[test]
    fn a_sweep_costs_a_bounded_number_of_steps() {
        let mut m = Members::default();
        for i in 0..1000 {
            m.saw(&format!("10.0.{}.{}:80", i / 250, i % 250), 0, 4096, 1);
        }
        let mut forgotten = Vec::new();
        m.sweep(10_000, 1000, &mut forgotten);
        assert_eq!(m.len(), 1000 - SWEEP_BUDGET);
        for _ in 0..20 {
            m.sweep(10_000, 1000, &mut forgotten);
        }
        assert_eq!(forgotten.len(), 1000);
        assert!(m.is_empty());
    }
}
