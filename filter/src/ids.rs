//! Random bits that must not be predictable from earlier ones: generated
//! request ids (`headers.requestId.generate`). An id goes to clients and
//! upstreams and may be trusted for correlation or as a nonce, so seeing
//! some ids must not reveal the next: the bits are ChaCha12's keystream
//! (ChaCha with 12 rounds, as the `rand` crate's `StdRng`), keyed once per
//! worker with 256 bits of the host's randomness.
//!
//! Written here rather than taken from `rand_chacha`: that crate (0.10,
//! with `rand_core` and `ppv-lite86`, no default features) added 7,365
//! bytes to the optimised module (251,670 -> 259,035 measured), which must
//! stay under 256,000 bytes; this block function is some 50 lines,
//! checked against RFC 8439's test vector, and with the keying costs
//! about 1.5 KB. A block gives four ids.
//!
//! Steering's jitter and pick order keep the cheaper [`crate::steering::xorshift`]:
//! nothing is gained by predicting them (they only spread load), and they
//! never leave the process.

/// "expand 32-byte k"
const CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
const ROUNDS: usize = 12;

fn quarter_round(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(12);
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(7);
}

/// The ChaCha block function with `rounds` rounds (RFC 8439 section 2.3,
/// which uses 20): `input` is the block's last four words (counter and
/// nonce).
#[inline(never)]
fn block(key: &[u32; 8], input: [u32; 4], rounds: usize) -> [u32; 16] {
    let mut initial = [0u32; 16];
    initial[..4].copy_from_slice(&CONSTANTS);
    initial[4..12].copy_from_slice(key);
    initial[12..].copy_from_slice(&input);
    let mut s = initial;
    for _ in 0..rounds / 2 {
        quarter_round(&mut s, 0, 4, 8, 12);
        quarter_round(&mut s, 1, 5, 9, 13);
        quarter_round(&mut s, 2, 6, 10, 14);
        quarter_round(&mut s, 3, 7, 11, 15);
        quarter_round(&mut s, 0, 5, 10, 15);
        quarter_round(&mut s, 1, 6, 11, 12);
        quarter_round(&mut s, 2, 7, 8, 13);
        quarter_round(&mut s, 3, 4, 9, 14);
    }
    for (word, start) in s.iter_mut().zip(initial) {
        *word = word.wrapping_add(start);
    }
    s
}

/// A ChaCha12 keystream as a source of `u64`s: a 64-bit block counter
/// (it never wraps in practice: 2^64 blocks) and a zero nonce.
pub struct Unpredictable {
    key: [u32; 8],
    counter: u64,
    buffer: [u32; 16],
    /// Next unused word of `buffer` (16: empty).
    next: usize,
}

impl Unpredictable {
    /// Keyed with 256 bits the host drew at random.
    pub fn from_key(words: [u64; 4]) -> Self {
        let mut key = [0u32; 8];
        for (pair, word) in key.chunks_exact_mut(2).zip(words) {
            pair[0] = word as u32;
            pair[1] = (word >> 32) as u32;
        }
        Unpredictable {
            key,
            counter: 0,
            buffer: [0; 16],
            next: 16,
        }
    }

    /// Keyed from a 64-bit seed: for tests, and until the shell keys it
    /// with the host's randomness; only as hard to guess as the seed.
    pub fn from_seed(seed: u64) -> Self {
        Unpredictable::from_key([seed, !seed, seed.rotate_left(32), 0])
    }

    pub fn next_u64(&mut self) -> u64 {
        if self.next + 2 > self.buffer.len() {
            let counter = [self.counter as u32, (self.counter >> 32) as u32];
            self.buffer = block(&self.key, [counter[0], counter[1], 0, 0], ROUNDS);
            self.counter = self.counter.wrapping_add(1);
            self.next = 0;
        }
        let low = u64::from(self.buffer[self.next]);
        let high = u64::from(self.buffer[self.next + 1]);
        self.next += 2;
        high << 32 | low
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_block_function_matches_rfc_8439() {
        // RFC 8439 section 2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, count 1.
        let mut key = [0u32; 8];
        for (i, word) in key.iter_mut().enumerate() {
            let b = (i * 4) as u32;
            *word = b | (b + 1) << 8 | (b + 2) << 16 | (b + 3) << 24;
        }
        let out = block(&key, [1, 0x0900_0000, 0x4a00_0000, 0], 20);
        assert_eq!(
            out,
            [
                0xe4e7_f110,
                0x1559_3bd1,
                0x1fdd_0f50,
                0xc471_20a3,
                0xc7f4_d1c7,
                0x0368_c033,
                0x9aaa_2204,
                0x4e6c_d4c3,
                0x4664_82d2,
                0x09aa_9f07,
                0x05d7_c214,
                0xa202_8bd9,
                0xd19c_12b5,
                0xb94e_16de,
                0xe883_d0cb,
                0x4e3c_50a2,
            ]
        );
    }

    #[test]
    fn outputs_are_distinct_and_keys_give_different_streams() {
        let mut a = Unpredictable::from_seed(1);
        let mut b = Unpredictable::from_seed(2);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(a.next_u64()));
            assert!(seen.insert(b.next_u64()));
        }
        // Bits are balanced: about half of 64 x 10,000 are ones.
        let mut c = Unpredictable::from_key([7; 4]);
        let ones: u32 = (0..10_000).map(|_| c.next_u64().count_ones()).sum();
        assert!((310_000..330_000).contains(&ones), "{ones} ones");
    }

    /// The attack from the issue: xorshift's state is its output, so one
    /// output predicts every later one. Here the next output is no
    /// function of the last that an observer could apply.
    #[test]
    fn the_next_output_is_not_a_function_of_the_last() {
        let mut generator = Unpredictable::from_seed(0x5eed);
        let outputs: Vec<u64> = (0..1000).map(|_| generator.next_u64()).collect();
        let predicted = outputs
            .windows(2)
            .filter(|w| crate::steering::xorshift(w[0]) == w[1])
            .count();
        assert_eq!(predicted, 0);
        // Nor linear over GF(2) in the simplest ways: xor and sum of
        // consecutive outputs are not constant.
        let xors: HashSet<u64> = outputs.windows(2).map(|w| w[0] ^ w[1]).collect();
        let diffs: HashSet<u64> = outputs
            .windows(2)
            .map(|w| w[1].wrapping_sub(w[0]))
            .collect();
        assert!(xors.len() > 990 && diffs.len() > 990);
    }

    fn id(generator: &mut Unpredictable) -> String {
        crate::headers::request_id(generator.next_u64(), generator.next_u64())
    }

    /// The two halves of an id, as far as it shows them (the version and
    /// variant bits are fixed): every value they could have had.
    fn halves(id: &str) -> (Vec<u64>, Vec<u64>) {
        let hex: String = id.split('-').collect();
        let high = u64::from_str_radix(&hex[..16], 16).unwrap();
        let low = u64::from_str_radix(&hex[16..], 16).unwrap();
        let highs = (0..16u64).map(|v| (high & !0xf000) | v << 12).collect();
        let lows = (0..4u64).map(|v| (low & !(0xc << 60)) | v << 62).collect();
        (highs, lows)
    }

    #[test]
    fn ids_are_distinct_well_formed_uuids() {
        let mut generator = Unpredictable::from_seed(42);
        let mut seen = HashSet::new();
        for _ in 0..5_000 {
            let id = id(&mut generator);
            let parts: Vec<&str> = id.split('-').collect();
            let lengths: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
            assert!(id
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!("89ab".contains(&parts[3][..1]), "variant: {id}");
            assert!(seen.insert(id));
        }
    }

    /// The attack: with xorshift, an id's low half was the state
    /// that gave the next id's high half. Trying every value the fixed
    /// bits hid, the next ids are never predicted.
    #[test]
    fn the_xorshift_recovery_attack_fails() {
        // It worked on the old generator.
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut old = || {
            state = crate::steering::xorshift(state);
            state
        };
        let first = crate::headers::request_id(old(), old());
        let next = crate::headers::request_id(old(), old());
        let (_, lows) = halves(&first);
        let predicted = lows.iter().any(|low| {
            let high = crate::steering::xorshift(*low);
            crate::headers::request_id(high, crate::steering::xorshift(high)) == next
        });
        assert!(predicted, "the attack as the issue ran it");
        // And fails on this one, for every id of a run.
        let mut generator = Unpredictable::from_seed(7);
        let ids: Vec<String> = (0..200).map(|_| id(&mut generator)).collect();
        for pair in ids.windows(2) {
            let (_, lows) = halves(&pair[0]);
            for low in lows {
                let high = crate::steering::xorshift(low);
                let guess = crate::headers::request_id(high, crate::steering::xorshift(high));
                assert_ne!(guess, pair[1]);
                let (next_highs, _) = halves(&pair[1]);
                assert!(!next_highs.contains(&high), "next high half predicted");
            }
        }
    }
}
