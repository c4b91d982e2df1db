//! A count-based sliding window: the last N outcomes of one host, as two bit
//! rings (failed, slow) with running totals so judging is O(1).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutcomeWindow {
    capacity: u16,
    len: u16,
    next: u16,
    failures: u16,
    slow: u16,
    failed_bits: Vec<u64>,
    slow_bits: Vec<u64>,
}

impl OutcomeWindow {
    pub fn new(capacity: u16) -> Self {
        let capacity = capacity.max(1);
        let words = usize::from(capacity).div_ceil(64);
        OutcomeWindow {
            capacity,
            len: 0,
            next: 0,
            failures: 0,
            slow: 0,
            failed_bits: vec![0; words],
            slow_bits: vec![0; words],
        }
    }

    pub fn capacity(&self) -> u16 {
        self.capacity
    }

    /// Outcomes currently remembered.
    pub fn len(&self) -> u16 {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn failures(&self) -> u16 {
        self.failures
    }

    pub fn slow(&self) -> u16 {
        self.slow
    }

    pub fn push(&mut self, failed: bool, slow: bool) {
        // A record decoded from shared data written by another build could
        // be inconsistent; start over rather than index out of bounds.
        if !self.is_consistent() {
            *self = OutcomeWindow::new(self.capacity);
        }
        let index = usize::from(self.next);
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if self.len == self.capacity {
            self.failures -= u16::from(self.failed_bits[word] & bit != 0);
            self.slow -= u16::from(self.slow_bits[word] & bit != 0);
        } else {
            self.len += 1;
        }
        set_bit(&mut self.failed_bits[word], bit, failed);
        set_bit(&mut self.slow_bits[word], bit, slow);
        self.failures += u16::from(failed);
        self.slow += u16::from(slow);
        self.next = (self.next + 1) % self.capacity;
    }

    fn is_consistent(&self) -> bool {
        let words = usize::from(self.capacity).div_ceil(64);
        self.capacity > 0
            && self.failed_bits.len() == words
            && self.slow_bits.len() == words
            && self.next < self.capacity
            && self.len <= self.capacity
            && self.failures <= self.len
            && self.slow <= self.len
    }

    #[cfg(test)]
    /// Adds `count` identical outcomes (a batch of successes); only the last
    /// `capacity` of them can matter.
    pub fn push_many(&mut self, count: u32, failed: bool, slow: bool) {
        let count = count.min(u32::from(self.capacity));
        for _ in 0..count {
            self.push(failed, slow);
        }
    }

    pub fn clear(&mut self) {
        *self = OutcomeWindow::new(self.capacity);
    }

    /// `count` is less than `percent`% of the window (an empty window is).
    pub fn below(&self, count: u16, percent: u8) -> bool {
        self.len == 0 || u32::from(count) * 100 < u32::from(percent) * u32::from(self.len)
    }

    /// Whole percent, for logs.
    pub fn percent(&self, count: u16) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::from(count) * 100 / u32::from(self.len)
        }
    }
}

fn set_bit(word: &mut u64, bit: u64, on: bool) {
    if on {
        *word |= bit;
    } else {
        *word &= !bit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_full_then_slides() {
        let mut window = OutcomeWindow::new(4);
        window.push(true, false);
        window.push(false, true);
        assert_eq!((window.len(), window.failures(), window.slow()), (2, 1, 1));
        window.push(false, false);
        window.push(false, false);
        assert_eq!(window.len(), 4);
        // The fifth outcome pushes out the first (the failure).
        window.push(false, false);
        assert_eq!((window.len(), window.failures(), window.slow()), (4, 0, 1));
        window.push(true, false);
        assert_eq!((window.failures(), window.slow()), (1, 0));
    }

    #[test]
    fn slides_across_word_boundaries() {
        let mut window = OutcomeWindow::new(100);
        for i in 0..1000u32 {
            window.push(i % 4 == 0, i % 10 == 0);
        }
        assert_eq!(window.len(), 100);
        assert_eq!(window.failures(), 25);
        assert_eq!(window.slow(), 10);
    }

    #[test]
    fn batches_only_keep_what_fits() {
        let mut window = OutcomeWindow::new(10);
        window.push_many(5, true, false);
        window.push_many(1_000_000, false, false);
        assert_eq!((window.len(), window.failures()), (10, 0));
    }

    #[test]
    fn below_is_strict() {
        let mut window = OutcomeWindow::new(10);
        window.push_many(3, true, false);
        window.push_many(7, false, false);
        assert!(!window.below(window.failures(), 30));
        assert!(window.below(window.failures(), 31));
        assert_eq!(window.percent(window.failures()), 30);
        assert!(
            OutcomeWindow::new(10).below(0, 10),
            "an empty window has no failures"
        );
    }

    #[test]
    fn recovers_from_an_inconsistent_decoded_record() {
        let mut window = OutcomeWindow::new(100);
        window.failed_bits.clear();
        window.push(true, false);
        assert_eq!((window.len(), window.failures()), (1, 1));
        let mut zero = OutcomeWindow::default();
        zero.push(true, false);
        assert_eq!((zero.capacity(), zero.len()), (1, 1));
        let mut lying = OutcomeWindow::new(10);
        lying.failures = 9;
        lying.push(false, false);
        assert_eq!((lying.len(), lying.failures()), (1, 0));
    }
}
