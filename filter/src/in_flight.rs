//! Per-request state between Envoy's callbacks, keyed by context id.
//!
//! A request's state is created at `proxy_on_context_create` (or its first
//! callback, should a host not call that) and dropped at `proxy_on_done`,
//! which Envoy delivers for every finished stream; meshguard exports
//! neither `proxy_on_log` nor `proxy_on_delete` (each exported callback is
//! one more VM entry per request). The table is bounded all the same: a
//! stream whose done never came must not grow memory.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// In-flight requests one worker tracks; past this, stale entries are
/// dropped, and if none are stale a new request goes untracked (it passes
/// through, unobserved).
pub const MAX_STREAMS: usize = 16_384;
/// An entry this old is taken for a stream whose log never came.
const STALE_MS: u64 = 3_600_000;

/// Context ids are small sequential integers handed out by the host, so a
/// multiplicative hash spreads them well and needs no random seed.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub struct InFlight<T> {
    map: HashMap<u32, (u64, T), BuildHasherDefault<IdHasher>>,
}

impl<T: Default> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            map: HashMap::default(),
        }
    }
}

impl<T: Default> InFlight<T> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The state of stream `id`, created (at time `now()`, asked only
    /// then) if this is its first callback; `None` only when the table is
    /// full. One hash lookup unless the table is full.
    pub fn get_or_create(&mut self, id: u32, now: impl Fn() -> u64) -> Option<&mut T> {
        if self.map.len() >= MAX_STREAMS && !self.map.contains_key(&id) {
            let now = now();
            self.map
                .retain(|_, (created, _)| now.saturating_sub(*created) < STALE_MS);
            if self.map.len() >= MAX_STREAMS {
                return None;
            }
        }
        Some(
            &mut self
                .map
                .entry(id)
                .or_insert_with(|| (now(), T::default()))
                .1,
        )
    }

    /// The state of stream `id`, if it has any (never creates it).
    #[cfg(test)]
    pub fn get(&self, id: u32) -> Option<&T> {
        self.map.get(&id).map(|(_, state)| state)
    }

    /// The state of stream `id` to change, if it has any (never creates it).
    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.map.get_mut(&id).map(|(_, state)| state)
    }

    /// Ends stream `id`, returning its state if it had any.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        self.map.remove(&id).map(|(_, state)| state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lives_from_the_first_callback_to_the_log() {
        let mut streams: InFlight<u32> = InFlight::default();
        *streams.get_or_create(7, || 0).unwrap() = 42;
        assert_eq!(*streams.get_or_create(7, || 5).unwrap(), 42);
        assert_eq!(streams.remove(7), Some(42));
        assert_eq!(streams.remove(7), None);
        assert!(streams.is_empty());
    }

    #[test]
    fn a_full_table_drops_stale_streams_then_refuses() {
        let mut streams: InFlight<u8> = InFlight::default();
        for id in 0..MAX_STREAMS as u32 {
            assert!(streams.get_or_create(id, || 0).is_some());
        }
        // Full of fresh streams: a new one goes untracked, old ones stay.
        assert!(streams.get_or_create(u32::MAX, || 1).is_none());
        assert!(streams.get_or_create(3, || 1).is_some());
        assert_eq!(streams.len(), MAX_STREAMS);
        // An hour on, the ones whose log never came make room.
        assert!(streams.get_or_create(u32::MAX, || STALE_MS).is_some());
        assert_eq!(streams.len(), 1);
    }
}
