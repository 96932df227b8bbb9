//! The run's random-number generator: seeded, serialisable (a checkpoint carries it), independent of the
//! device. candle 0.11 cannot seed its CPU RNG, so weight initialisation, dropout, batch order and sampling
//! all draw from this one.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The run's random-number generator: seeded, serialisable, independent of the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    pub fn seed(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Stream `stream` of the generator seeded with `seed`: ChaCha's 64-bit stream number gives
    /// independent sequences from one seed, so that work split into blocks can draw in parallel and
    /// still draw the same numbers whatever the number of threads.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Self(rng)
    }

    /// A uniform u64 (a seed for [`Self::stream`]).
    pub fn next_u64(&mut self) -> u64 {
        self.0.random()
    }

    /// A uniform u32.
    pub fn next_u32(&mut self) -> u32 {
        self.0.random()
    }

    /// Fills `out` with uniform u32s, in bulk: the numbers that as many calls of [`Self::next_u32`] give.
    pub fn fill_u32(&mut self, out: &mut [u32]) {
        self.0.fill(out)
    }

    /// A uniform float in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// A standard-normal float (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.0.random::<f64>(); // (0, 1], so ln is finite
        let u2 = self.0.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// A uniform index in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bulk filling gives the numbers of as many single draws, from a fresh stream and from one part-way
    /// through ChaCha's blocks of 64 words, across several blocks.
    #[test]
    fn fill_u32_equals_single_draws() {
        for skip in [0, 3] {
            let (mut a, mut b) = (Rng::stream(9, 4), Rng::stream(9, 4));
            for _ in 0..skip {
                assert_eq!(a.next_u32(), b.next_u32());
            }
            let mut bulk = vec![0u32; 1000];
            a.fill_u32(&mut bulk);
            let single: Vec<u32> = (0..1000).map(|_| b.next_u32()).collect();
            assert_eq!(bulk, single, "skip {skip}");
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }
}
