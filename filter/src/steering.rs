//! Choosing which host a request is steered to.
//!
//! Smooth weighted round robin (the nginx algorithm): exact shares over any
//! stretch of requests and no long runs on one host, which a weighted random
//! pick cannot promise. A seeded random start spreads the sequence so that
//! Envoy workers do not all pick the same host at the same moment. The
//! picker runs over groups of hosts of equal weight (see `state::plan`), so
//! its cost is the number of distinct weights, not of hosts.

#[cfg(test)]
/// Whether weights (percent of a healthy host's traffic, one per host) call
/// for steering: not when every host is at full weight (leave Envoy's load
/// balancer alone, so new hosts are still discovered), nor when none has
/// any weight (nothing better to offer than Envoy's own choice).
pub fn needs_steering(weights: &[u8]) -> bool {
    weights.iter().any(|w| *w < 100) && weights.iter().any(|w| *w > 0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmoothPicker {
    current: Vec<i64>,
}

impl SmoothPicker {
    /// A picker for these weights, started at a random point of its cycle.
    pub fn new(weights: &[u32], seed: u64) -> Self {
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        let mut current = vec![0i64; weights.len()];
        let active = weights.iter().filter(|w| **w > 0).count() as i64;
        if total > 0 {
            // Random offsets for the hosts in play, summing to zero so the
            // algorithm's invariant (and its exact shares) hold.
            let mut state = seed | 1;
            for (slot, weight) in current.iter_mut().zip(weights) {
                if *weight > 0 {
                    state = xorshift(state);
                    *slot = (state % total as u64) as i64;
                }
            }
            let mean = current.iter().sum::<i64>() / active;
            for (slot, weight) in current.iter_mut().zip(weights) {
                if *weight > 0 {
                    *slot -= mean;
                }
            }
            let rest: i64 = current.iter().sum();
            if let Some(first) = weights.iter().position(|w| *w > 0) {
                current[first] -= rest;
            }
        }
        SmoothPicker { current }
    }

    /// The next host, by index into `weights`; `None` when no host has
    /// weight (or the weights do not match this picker).
    pub fn pick(&mut self, weights: &[u32]) -> Option<usize> {
        if weights.len() != self.current.len() {
            return None;
        }
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        for (slot, weight) in self.current.iter_mut().zip(weights) {
            *slot += i64::from(*weight);
        }
        // Hosts without weight are never candidates, whatever their counter.
        let mut best: Option<usize> = None;
        for (index, weight) in weights.iter().enumerate() {
            if *weight > 0 && best.is_none_or(|b| self.current[index] > self.current[b]) {
                best = Some(index);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

/// A small, fast generator for seeding; quality is not critical here.
pub fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(weights: &[u32], seed: u64, picks: usize) -> Vec<usize> {
        let mut picker = SmoothPicker::new(weights, seed);
        (0..picks).map(|_| picker.pick(weights).unwrap()).collect()
    }

    fn longest_run(sequence: &[usize], host: usize) -> usize {
        let mut longest = 0;
        let mut current = 0;
        for pick in sequence {
            current = if *pick == host { current + 1 } else { 0 };
            longest = longest.max(current);
        }
        longest
    }

    #[test]
    fn steering_only_when_some_host_is_below_full_weight() {
        assert!(!needs_steering(&[100, 100, 100]));
        assert!(needs_steering(&[100, 50, 100]));
        assert!(needs_steering(&[100, 0, 100]));
        assert!(!needs_steering(&[0, 0]), "all ejected: let Envoy decide");
        assert!(!needs_steering(&[]));
    }

    #[test]
    fn shares_follow_the_weights_exactly() {
        let weights = [100, 50, 10, 0];
        for seed in [1, 7, 12345, u64::MAX] {
            let picks = run(&weights, seed, 16_000);
            let count = |host| picks.iter().filter(|p| **p == host).count();
            // 160 weight units: every 160 picks give 100/50/10/0 exactly.
            assert!((count(0) as i64 - 10_000).abs() <= 2, "{}", count(0));
            assert!((count(1) as i64 - 5_000).abs() <= 2, "{}", count(1));
            assert!((count(2) as i64 - 1_000).abs() <= 2, "{}", count(2));
            assert_eq!(count(3), 0, "an ejected host is never picked");
        }
    }

    #[test]
    fn no_long_runs_on_one_host() {
        let picks = run(&[100, 100, 50], 42, 10_000);
        for host in 0..3 {
            assert!(longest_run(&picks, host) <= 2, "host {host}");
        }
        let picks = run(&[100, 10], 42, 10_000);
        assert!(longest_run(&picks, 1) <= 1);
        assert!(longest_run(&picks, 0) <= 11);
    }

    #[test]
    fn deterministic_for_a_seed_and_spread_across_seeds() {
        let weights = [100, 100, 100];
        assert_eq!(run(&weights, 9, 50), run(&weights, 9, 50));
        let firsts: std::collections::HashSet<usize> = (1..40u64)
            .map(|seed| run(&weights, seed * 7919, 1)[0])
            .collect();
        assert!(firsts.len() > 1, "workers should not all start on one host");
    }

    #[test]
    fn mismatched_or_empty_weights_pick_nothing() {
        let mut picker = SmoothPicker::new(&[100, 50], 1);
        assert_eq!(picker.pick(&[100, 50, 10]), None);
        assert_eq!(picker.pick(&[0, 0]), None);
        assert_eq!(SmoothPicker::new(&[], 1).pick(&[]), None);
    }
}
