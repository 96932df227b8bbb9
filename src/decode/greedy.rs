//! Greedy search: at every step append the most probable next token, until `</s>` or the length limit.
//!
//! [`greedy`] decodes incrementally with the decoder's KV cache; [`greedy_uncached`] recomputes the whole
//! prefix at every step and is kept as the slow reference that tests compare against. The row bookkeeping
//! ([`one_token_per_row`]: one output per source, finished rows leave the batch) is shared with sampling,
//! which differs only in how it picks each next token.

use super::steps::NextTokens;
use super::{DecodeContext, Hypothesis};
use crate::model::init::Mode;
use candle_core::{IndexOp, Result, Tensor};

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

    /// Appends `tokens[i]` to sentence `active[i]`, given the next-token scores (one row per active
    /// sentence) it was chosen from; returns the tokens to feed next, one per row (`<pad>` for a sentence
    /// already done).
    fn push(
        &mut self,
        tokens: &[u32],
        next: &NextTokens,
        active: &[usize],
        step: usize,
        ctx: &DecodeContext,
    ) -> Vec<u32> {
        let sp = ctx.specials;
        let mut feed = Vec::with_capacity(tokens.len());
        for (i, &tok) in tokens.iter().enumerate() {
            let b = active[i];
            if self.done[b] {
                feed.push(sp.pad);
                continue;
            }
            self.log_prob[b] += next.log_prob(i, tok) as f64;
            if tok == sp.eos {
                self.done[b] = true;
            } else {
                self.out[b].push(tok);
                self.done[b] = step + 1 >= self.limits[b];
            }
            feed.push(tok);
        }
        feed
    }

    fn finish(self) -> Vec<Hypothesis> {
        self.out.into_iter().zip(self.log_prob).map(|(tokens, lp)| Hypothesis::new(tokens, lp, 0.0)).collect()
    }
}

/// The most probable token of each row.
fn argmax(next: &NextTokens) -> Vec<u32> {
    (0..next.rows()).map(|r| next.argmax(r)).collect()
}

/// Decodes one output per source with the KV cache, picking each next token with `choose` from the
/// next-token scores (one row per unfinished sentence, in source order). Finished sentences leave the
/// batch, so they stop costing work.
pub(super) fn one_token_per_row(
    ctx: &DecodeContext,
    srcs: &[&[u32]],
    mut choose: impl FnMut(&NextTokens) -> Vec<u32>,
) -> Result<Vec<Hypothesis>> {
    let mut steps = ctx.start(srcs)?;
    let mut rows = Rows::new(ctx, srcs);
    let mut active: Vec<usize> = (0..srcs.len()).collect();
    let mut feed = vec![ctx.specials.bos; srcs.len()];
    for step in 0..rows.longest() {
        let next_tokens = steps.step(&feed)?; // one row per active sentence
        let next = rows.push(&choose(&next_tokens), &next_tokens, &active, step, ctx);
        let keep: Vec<usize> = (0..active.len()).filter(|&i| !rows.done[active[i]]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            steps.select(&keep.iter().map(|&i| i as u32).collect::<Vec<_>>())?;
        }
        feed = keep.iter().map(|&i| next[i]).collect();
        active = keep.iter().map(|&i| active[i]).collect();
    }
    Ok(rows.finish())
}

/// Greedy-decodes a batch of sources (ids without specials) with the KV cache.
pub fn greedy(ctx: &DecodeContext, srcs: &[&[u32]]) -> Result<Vec<Hypothesis>> {
    one_token_per_row(ctx, srcs, argmax)
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
        let next = NextTokens::from_tensor(&logits)?;
        let feed = rows.push(&argmax(&next), &next, &all, step, ctx);
        for (p, t) in prefix.iter_mut().zip(feed) {
            p.push(t);
        }
        if rows.done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(rows.finish())
}
