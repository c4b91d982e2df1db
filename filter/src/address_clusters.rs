//! Which cluster an upstream address belongs to, learnt from traffic, so
//! the healthy path need not ask Envoy for the cluster on every request
//! (each property read costs about as much as the rest of the filter).
//!
//! An address can belong to several clusters: Istio's DestinationRule
//! subsets (`outbound|80|v1|reviews` and `outbound|80||reviews`) list the
//! same pods, and a recycled pod IP can join another service. So a cached
//! answer is only used for successes, after the first few requests to the
//! address confirmed it, and is re-checked on a sample of later ones. A
//! failure always asks: failures move grades, a misfiled success only
//! dilutes the window of the same pod under a sibling cluster. Once two
//! clusters were seen for an address, it is asked about on every request.

use std::collections::HashMap;

/// Requests to a new address that always ask, before the cache is trusted.
const CONFIRMATIONS: u32 = 8;
/// After that, one success in this many still asks.
const RECHECK_EVERY: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The address's only known cluster.
    Cached(&'a str),
    /// Read the cluster from the host, then [`AddressClusters::learn`] it.
    Ask,
}

#[derive(Debug)]
struct Entry {
    /// `None` once the address was seen under two clusters.
    cluster: Option<String>,
    uses: u32,
}

#[derive(Debug)]
pub struct AddressClusters {
    entries: HashMap<String, Entry>,
    capacity: usize,
}

impl AddressClusters {
    /// At most `capacity` addresses are remembered; past that the cache
    /// starts over (it only saves reads, it holds nothing that matters).
    pub fn new(capacity: usize) -> Self {
        AddressClusters {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Addresses remembered.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Where to get the cluster of a request that went to `address`;
    /// `matters` is true for outcomes that can change a grade or the
    /// breaker (failures, slow calls, probes), which always ask.
    pub fn lookup(&mut self, address: &str, matters: bool) -> Lookup<'_> {
        if matters {
            return Lookup::Ask;
        }
        let Some(entry) = self.entries.get_mut(address) else {
            return Lookup::Ask;
        };
        entry.uses = entry.uses.wrapping_add(1);
        match &entry.cluster {
            Some(cluster) if entry.uses > CONFIRMATIONS && entry.uses % RECHECK_EVERY != 0 => {
                Lookup::Cached(cluster)
            }
            _ => Lookup::Ask,
        }
    }

    /// Records the cluster the host reported for a request to `address`.
    pub fn learn(&mut self, address: &str, cluster: &str) {
        if let Some(entry) = self.entries.get_mut(address) {
            if entry.cluster.as_deref().is_some_and(|c| c != cluster) {
                entry.cluster = None;
            }
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.clear();
        }
        self.entries.insert(
            address.to_string(),
            Entry {
                cluster: Some(cluster.to_string()),
                uses: 0,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached_after_confirmation(cache: &mut AddressClusters, address: &str) -> Option<String> {
        for _ in 0..CONFIRMATIONS {
            match cache.lookup(address, false) {
                Lookup::Ask => {}
                Lookup::Cached(c) => panic!("trusted {c} before confirming it"),
            }
        }
        match cache.lookup(address, false) {
            Lookup::Cached(c) => Some(c.to_string()),
            Lookup::Ask => None,
        }
    }

    #[test]
    fn an_unknown_address_asks() {
        let mut cache = AddressClusters::new(16);
        assert_eq!(cache.lookup("10.0.0.1:80", false), Lookup::Ask);
    }

    #[test]
    fn a_confirmed_address_answers_from_the_cache_for_successes_only() {
        let mut cache = AddressClusters::new(16);
        cache.learn("10.0.0.1:80", "reviews");
        assert_eq!(
            cached_after_confirmation(&mut cache, "10.0.0.1:80").as_deref(),
            Some("reviews")
        );
        assert_eq!(cache.lookup("10.0.0.1:80", true), Lookup::Ask);
    }

    #[test]
    fn cached_answers_are_rechecked_on_a_sample() {
        let mut cache = AddressClusters::new(16);
        cache.learn("a", "c");
        let asks = (0..RECHECK_EVERY * 10)
            .filter(|_| cache.lookup("a", false) == Lookup::Ask)
            .count();
        // The confirmations, then one in RECHECK_EVERY.
        let expected = CONFIRMATIONS as usize + 10;
        assert!(
            (expected - 1..=expected + 1).contains(&asks),
            "{asks} asks, expected about {expected}"
        );
    }

    #[test]
    fn an_address_in_two_clusters_always_asks() {
        let mut cache = AddressClusters::new(16);
        cache.learn("10.0.0.1:80", "outbound|80|v1|reviews");
        cache.learn("10.0.0.1:80", "outbound|80||reviews");
        for _ in 0..1000 {
            assert_eq!(cache.lookup("10.0.0.1:80", false), Lookup::Ask);
        }
        // Seeing the first cluster again does not make it unique again.
        cache.learn("10.0.0.1:80", "outbound|80|v1|reviews");
        assert_eq!(cache.lookup("10.0.0.1:80", false), Lookup::Ask);
    }

    #[test]
    fn the_same_cluster_again_keeps_the_answer() {
        let mut cache = AddressClusters::new(16);
        cache.learn("a", "c");
        cache.learn("a", "c");
        assert_eq!(
            cached_after_confirmation(&mut cache, "a").as_deref(),
            Some("c")
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = AddressClusters::new(4);
        for i in 0..100 {
            cache.learn(&format!("10.0.0.{i}:80"), "c");
            assert!(cache.entries.len() <= 4);
        }
        // The newest address is still known.
        assert!(cached_after_confirmation(&mut cache, "10.0.0.99:80").is_some());
    }
}
