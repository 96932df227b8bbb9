//! One decoding batch in progress, as the searches see it: feed one token per row, get every row's
//! next-token scores ([`NextTokens`]), keep some rows (beam reordering, finished sentences leaving).
//!
//! Two implementations of [`Steps`]: [`ReferenceSteps`], the model's own incremental step from candle
//! tensor ops with its KV cache ([`crate::model::Transformer::decode_step`]), on every device; and, on CPU
//! in f32, the hand-written step of [`super::fast`]. Tests compare the two.

use crate::model::decoder::DecoderCache;
use crate::model::Transformer;
use crate::ops::cpu::{exp_f32, simd, Real};
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

/// Every row's next-token logits and the log of their softmax normaliser: log P(v) = logit(v) - log Z.
/// The full log-probability table is never written out: a search reads the few entries it ranks.
pub struct NextTokens {
    /// (rows, vocab)
    logits: Vec<f32>,
    /// (rows): log Σ_v exp(logit(v))
    log_z: Vec<f32>,
    vocab: usize,
}

/// Rows per parallel task of the normaliser.
const ROWS_PER_TASK: usize = 16;

impl NextTokens {
    /// From logits (rows × vocab, row-major): computes each row's normaliser, max + log Σ exp(l - max), in
    /// parallel over rows.
    pub fn new(logits: Vec<f32>, vocab: usize) -> Self {
        assert!(vocab > 0 && logits.len().is_multiple_of(vocab), "next-token logits: not whole rows of {vocab}");
        let log_z = logits
            .par_chunks(vocab * ROWS_PER_TASK)
            .flat_map_iter(|rows| {
                let mut log_z = Vec::with_capacity(rows.len() / vocab);
                // A plain loop: an iterator's `collect` was compiled apart from the vectorised body, as
                // scalar code (17% of a beam-search profile).
                simd!(|| {
                    for row in rows.chunks(vocab) {
                        log_z.push(log_normaliser(row));
                    }
                });
                log_z
            })
            .collect();
        Self { logits, log_z, vocab }
    }

    /// From a (rows, vocab) logits tensor.
    pub fn from_tensor(logits: &Tensor) -> Result<Self> {
        let (_, vocab) = logits.dims2()?;
        Ok(Self::new(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, vocab))
    }

    /// From rows that are log-probabilities already (normaliser 0): for tests that drive a search with a
    /// table of their own.
    #[cfg(test)]
    pub fn normalized(rows: &[Vec<f32>]) -> Self {
        let vocab = rows.first().map_or(1, Vec::len);
        Self { logits: rows.concat(), log_z: vec![0.0; rows.len()], vocab }
    }

    pub fn rows(&self) -> usize {
        self.log_z.len()
    }

    /// Row `r`'s logits (unnormalised).
    pub fn logits(&self, r: usize) -> &[f32] {
        &self.logits[r * self.vocab..(r + 1) * self.vocab]
    }

    /// log P(v) in row `r`.
    pub fn log_prob(&self, r: usize, v: u32) -> f32 {
        self.logits[r * self.vocab + v as usize] - self.log_z[r]
    }

    /// Row `r`'s `n` most probable tokens with their log-probabilities, best first (the lower id first
    /// among equals). One pass over the row: a block of 64 logits none of which beats the n-th best so
    /// far is skipped on its maximum alone.
    #[inline(always)]
    pub fn best(&self, r: usize, n: usize) -> Vec<(u32, f32)> {
        const BLOCK: usize = 64;
        let row = self.logits(r);
        let n = n.min(row.len());
        if n == 0 {
            return vec![];
        }
        let mut top: Vec<(f32, u32)> = Vec::with_capacity(n + 1);
        for (b, block) in row.chunks(BLOCK).enumerate() {
            if top.len() == n && <f32 as Real>::max_of(block) <= top[n - 1].0 {
                continue;
            }
            for (j, &l) in block.iter().enumerate() {
                let enters = top.len() < n || l > top[n - 1].0;
                if !enters {
                    continue;
                }
                let at = top.partition_point(|&(x, _)| x >= l);
                top.insert(at, (l, (b * BLOCK + j) as u32));
                top.truncate(n);
            }
        }
        top.into_iter().map(|(l, v)| (v, l - self.log_z[r])).collect()
    }

    /// [`Self::best`] of every row, in parallel over rows.
    pub fn best_of_rows(&self, n: usize) -> Vec<Vec<(u32, f32)>> {
        (0..self.rows()).into_par_iter().map(|r| simd!(|| self.best(r, n))).collect()
    }

    /// Row `r`'s most probable token.
    pub fn argmax(&self, r: usize) -> u32 {
        self.best(r, 1).first().map_or(0, |&(v, _)| v)
    }
}

/// log Σ exp(l) over a row of logits, as max + log Σ exp(l - max): the sum in 16 lanes of f32 (each lane
/// adds at most vocab / 16 terms of at most 1), combined in f64.
#[inline(always)]
fn log_normaliser(row: &[f32]) -> f32 {
    const L: usize = 16;
    let max = <f32 as Real>::max_of(row);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let mut acc = [0f32; L];
    let (chunks, rest) = row.as_chunks::<L>();
    for c in chunks {
        for lane in 0..L {
            acc[lane] += exp_f32(c[lane] - max);
        }
    }
    let rest: f64 = rest.iter().map(|&l| exp_f32(l - max) as f64).sum();
    max + (acc.iter().map(|&a| a as f64).sum::<f64>() + rest).ln() as f32
}

/// A decoding batch in progress.
pub trait Steps {
    /// Feeds one token per row (the newest token of each row's output) and returns the next-token
    /// scores of every row.
    fn step(&mut self, tokens: &[u32]) -> Result<NextTokens>;

    /// Keeps rows `rows` in that order (a row may be kept twice, as beam search does).
    fn select(&mut self, rows: &[u32]) -> Result<()>;
}

/// The model's own incremental step, from tensor ops ([`crate::model::Transformer::decode_step`]).
pub struct ReferenceSteps<'a> {
    model: &'a Transformer,
    cache: DecoderCache,
    /// (rows, 1, 1, src_len)
    src_mask: Tensor,
}

impl<'a> ReferenceSteps<'a> {
    /// # Shapes
    /// - `memory`: (batch, src_len, d_model); `src_mask`: (batch, 1, 1, src_len)
    pub fn new(model: &'a Transformer, memory: &Tensor, src_mask: Tensor) -> Result<Self> {
        Ok(Self { model, cache: model.start_decoding(memory)?, src_mask })
    }
}

impl Steps for ReferenceSteps<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<NextTokens> {
        let tokens = Tensor::new(tokens, self.src_mask.device())?;
        let logits = self.model.decode_step(&tokens, &mut self.cache, &self.src_mask)?; // (rows, vocab)
        NextTokens::from_tensor(&logits)
    }

    fn select(&mut self, rows: &[u32]) -> Result<()> {
        let rows = Tensor::new(rows, self.src_mask.device())?;
        self.cache.select(&rows)?;
        self.src_mask = self.src_mask.index_select(&rows, 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_normalise_and_best_ranks_them() {
        let vocab = 700;
        let logits: Vec<f32> = (0..3 * vocab).map(|i| ((i * 37) % 101) as f32 * 0.13 - 5.0).collect();
        let next = NextTokens::new(logits.clone(), vocab);
        assert_eq!(next.rows(), 3);
        for r in 0..3 {
            let total: f64 = (0..vocab as u32).map(|v| (next.log_prob(r, v) as f64).exp()).sum();
            assert!((total - 1.0).abs() < 1e-5, "row {r}: probabilities sum to {total}");
            let mut expect: Vec<(u32, f32)> = (0..vocab as u32).map(|v| (v, next.log_prob(r, v))).collect();
            expect.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for n in [0, 1, 5, 8, vocab, vocab + 3] {
                assert_eq!(next.best(r, n), expect[..n.min(vocab)].to_vec(), "row {r}, best {n}");
                assert_eq!(next.best_of_rows(n)[r], next.best(r, n));
            }
            assert_eq!(next.argmax(r), expect[0].0);
        }
    }
}
