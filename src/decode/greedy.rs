//! Greedy search: at every step append the most probable next token, until `</s>` or the length limit.
//!
//! [`greedy`] decodes incrementally with the decoder's KV cache; [`greedy_uncached`] recomputes the whole
//! prefix at every step and is kept as the slow reference that tests compare against. The row bookkeeping
//! ([`one_token_per_row`]: one output per source, finished rows leave the batch) is shared with sampling,
//! which differs only in how it picks each next token.

use super::{DecodeContext, Hypothesis};
use crate::model::init::Mode;
use candle_core::{DType, IndexOp, Result, Tensor, D};

/// Tracks each sentence's output, log-probability, whether it has finished, and its length limit.
struct Rows {
    out: Vec<Vec<u32>>,
    log_prob: Vec<f64>,
    done: Vec<bool>,
    limits: Vec<usize>,
}

impl Rows {
    fn new(ctx: &DecodeContext, srcs: &[&[u32]]) -> Self {
        let n = srcs.len();
        // Each row has its own limit, so that a sentence decodes the same alone or in any batch.
        let limits = srcs.iter().map(|s| ctx.max_output_len(s.len())).collect();
        Self { out: vec![vec![]; n], log_prob: vec![0.0; n], done: vec![false; n], limits }
    }

    fn longest(&self) -> usize {
        self.limits.iter().copied().max().unwrap_or(0)
    }

    /// Appends `tokens[i]` to sentence `active[i]`, given the log-probabilities (rows, vocab) it was
    /// chosen from; returns the tokens to feed next, one per row (`<pad>` for a sentence already done).
    fn push(
        &mut self,
        tokens: &[u32],
        log_probs: &Tensor,
        active: &[usize],
        step: usize,
        ctx: &DecodeContext,
    ) -> Result<Vec<u32>> {
        let sp = ctx.specials;
        let lp = log_probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut feed = Vec::with_capacity(tokens.len());
        for (i, &tok) in tokens.iter().enumerate() {
            let b = active[i];
            if self.done[b] {
                feed.push(sp.pad);
                continue;
            }
            self.log_prob[b] += lp[i][tok as usize] as f64;
            if tok == sp.eos {
                self.done[b] = true;
            } else {
                self.out[b].push(tok);
                self.done[b] = step + 1 >= self.limits[b];
            }
            feed.push(tok);
        }
        Ok(feed)
    }

    fn finish(self) -> Vec<Hypothesis> {
        self.out.into_iter().zip(self.log_prob).map(|(tokens, lp)| Hypothesis::new(tokens, lp, 0.0)).collect()
    }
}

/// The most probable token of each row.
///
/// # Shapes
/// - `log_probs`: (rows, vocab) → rows
fn argmax(log_probs: &Tensor) -> Result<Vec<u32>> {
    log_probs.argmax(D::Minus1)?.to_vec1::<u32>()
}

/// Decodes one output per source with the KV cache, picking each next token with `choose(logits,
/// log_probs)` (both (rows, vocab), one row per unfinished sentence, in source order). Finished sentences
/// leave the batch, so they stop costing work.
pub(super) fn one_token_per_row(
    ctx: &DecodeContext,
    srcs: &[&[u32]],
    mut choose: impl FnMut(&Tensor, &Tensor) -> Result<Vec<u32>>,
) -> Result<Vec<Hypothesis>> {
    let (memory, mut src_mask) = ctx.encode_sources(srcs)?;
    let mut cache = ctx.model.start_decoding(&memory)?;
    let mut rows = Rows::new(ctx, srcs);
    let mut active: Vec<usize> = (0..srcs.len()).collect();
    let mut feed = vec![ctx.specials.bos; srcs.len()];
    for step in 0..rows.longest() {
        let tokens = Tensor::new(feed.as_slice(), &ctx.device)?;
        let logits = ctx.model.decode_step(&tokens, &mut cache, &src_mask)?; // (active, vocab)
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let chosen = choose(&logits, &log_probs)?;
        let next = rows.push(&chosen, &log_probs, &active, step, ctx)?;
        let keep: Vec<usize> = (0..active.len()).filter(|&i| !rows.done[active[i]]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            let idx = Tensor::new(keep.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(), &ctx.device)?;
            cache.select(&idx)?;
            src_mask = src_mask.index_select(&idx, 0)?;
        }
        feed = keep.iter().map(|&i| next[i]).collect();
        active = keep.iter().map(|&i| active[i]).collect();
    }
    Ok(rows.finish())
}

/// Greedy-decodes a batch of sources (ids without specials) with the KV cache.
pub fn greedy(ctx: &DecodeContext, srcs: &[&[u32]]) -> Result<Vec<Hypothesis>> {
    one_token_per_row(ctx, srcs, |_, log_probs| argmax(log_probs))
}

/// The reference path: greedy decoding that re-runs the decoder over the whole prefix at every step.
pub fn greedy_uncached(ctx: &DecodeContext, srcs: &[&[u32]]) -> Result<Vec<Hypothesis>> {
    let (memory, src_mask) = ctx.encode_sources(srcs)?;
    let mut rows = Rows::new(ctx, srcs);
    let all: Vec<usize> = (0..srcs.len()).collect();
    let mut prefix: Vec<Vec<u32>> = vec![vec![ctx.specials.bos]; srcs.len()];
    for step in 0..rows.longest() {
        let len = step + 1;
        let flat: Vec<u32> = prefix.iter().flatten().copied().collect();
        let tgt_in = Tensor::from_vec(flat, (srcs.len(), len), &ctx.device)?;
        let hidden = ctx.model.decode(&tgt_in, &memory, &src_mask, &mut Mode::Eval)?;
        let logits = ctx.model.logits(&hidden.i((.., len - 1..len, ..))?)?.squeeze(1)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let feed = rows.push(&argmax(&log_probs)?, &log_probs, &all, step, ctx)?;
        for (p, t) in prefix.iter_mut().zip(feed) {
            p.push(t);
        }
        if rows.done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(rows.finish())
}
