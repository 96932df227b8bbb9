//! Sampling instead of search, for back-translation (Edunov et al., 2018): at every step draw the next
//! token from softmax(logits / temperature), optionally restricted to the k most probable tokens.
//! Draws come from the run's seeded RNG, so the same seed gives the same samples.

use super::greedy::one_token_per_row;
use super::{DecodeContext, Hypothesis};
use crate::rng::Rng;
use candle_core::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// Divides the logits; below 1 sharpens the distribution, above 1 flattens it.
    pub temperature: f64,
    /// Sample among the k most probable tokens only; 0 means all.
    pub top_k: usize,
    pub seed: u64,
}

/// Draws one token index from unnormalised log-weights, keeping the `top_k` largest (0: all).
pub fn draw(logits: &[f32], temperature: f64, top_k: usize, rng: &mut Rng) -> usize {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if top_k > 0 && top_k < idx.len() {
        idx.select_nth_unstable_by(top_k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(top_k);
    }
    let max = idx.iter().map(|&i| logits[i] as f64).fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / temperature).exp()).collect();
    let mut u = rng.uniform() as f64 * weights.iter().sum::<f64>();
    for (w, &i) in weights.iter().zip(&idx) {
        if u < *w {
            return i;
        }
        u -= w;
    }
    idx[idx.len() - 1]
}

/// Samples one output per source (ids without specials), decoding with the KV cache. Finished sentences
/// leave the batch; the draws of the others come in source order, so a seed gives the same samples as
/// long as the batches are the same.
pub fn sample(ctx: &DecodeContext, srcs: &[&[u32]], s: SampleSettings, rng: &mut Rng) -> Result<Vec<Hypothesis>> {
    one_token_per_row(ctx, srcs, |next| {
        (0..next.rows()).map(|r| draw(next.logits(r), s.temperature, s.top_k, rng) as u32).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_tempered_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), f32::NEG_INFINITY, (5.0f32).ln()];
        let mut rng = Rng::seed(3);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[draw(&logits, 1.0, 0, &mut rng)] += 1;
        }
        let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / 40_000.0).collect();
        for (f, p) in freq.iter().zip([1.0 / 8.0, 2.0 / 8.0, 0.0, 5.0 / 8.0]) {
            assert!((f - p).abs() < 0.01, "{freq:?}");
        }
        // Temperature 0.5 squares the weights: 1 : 4 : 0 : 25.
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[draw(&logits, 0.5, 0, &mut rng)] += 1;
        }
        assert!((counts[3] as f64 / 40_000.0 - 25.0 / 30.0).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn top_k_keeps_only_the_k_most_probable() {
        let logits = [3.0f32, 1.0, 2.0, 0.5];
        let mut rng = Rng::seed(4);
        for _ in 0..2000 {
            assert!([0, 2].contains(&draw(&logits, 1.0, 2, &mut rng)));
            assert_eq!(draw(&logits, 1.0, 1, &mut rng), 0, "top-1 sampling is greedy");
        }
    }
}
