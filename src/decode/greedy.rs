//! Greedy search: at every step append the most probable next token, until `</s>` or the length limit.
//!
//! [`greedy`] decodes incrementally with the decoder's KV cache; [`greedy_uncached`] recomputes the whole
//! prefix at every step and is kept as the slow reference that tests compare against.

use super::Hypothesis;
use crate::data::batch::{source_rows, source_tensor};
use crate::data::tokenizer::Specials;
use crate::model::init::Mode;
use crate::model::Transformer;
use candle_core::{DType, Device, IndexOp, Result, Tensor, D};

/// Output length limit for a source of `src_len` tokens: src_len + 50, within the position table.
pub fn max_output_len(src_len: usize, max_positions: usize) -> usize {
    (src_len + 50).min(max_positions - 1)
}

/// Tracks which rows have finished; a finished row keeps receiving `<pad>` so the batch stays rectangular.
struct Rows {
    out: Vec<Vec<u32>>,
    log_prob: Vec<f64>,
    done: Vec<bool>,
    limits: Vec<usize>,
}

impl Rows {
    fn new(srcs: &[&[u32]], max_positions: usize) -> Self {
        let n = srcs.len();
        // Each row has its own limit, so that a sentence decodes the same alone or in any batch.
        let limits = srcs.iter().map(|s| max_output_len(s.len(), max_positions)).collect();
        Self { out: vec![vec![]; n], log_prob: vec![0.0; n], done: vec![false; n], limits }
    }

    fn longest(&self) -> usize {
        self.limits.iter().copied().max().unwrap_or(0)
    }

    /// Takes the argmax of each row's log-probabilities (rows, vocab), row i belonging to sentence
    /// `active[i]`; returns the tokens to feed next, one per row.
    fn push(&mut self, log_probs: &Tensor, active: &[usize], step: usize, sp: Specials) -> Result<Vec<u32>> {
        let best = log_probs.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let lp = log_probs.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut feed = Vec::with_capacity(best.len());
        for (i, &tok) in best.iter().enumerate() {
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

/// Encodes a batch of sources (ids without specials): (memory, src_mask).
pub(crate) fn encode_sources(
    model: &Transformer,
    srcs: &[&[u32]],
    sp: Specials,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (src, src_mask) = source_tensor(&source_rows(srcs.iter().copied(), sp), sp, device)?;
    let memory = model.encode(&src, &src_mask, &mut Mode::Eval)?; // (batch, src_len, d_model)
    Ok((memory, src_mask))
}

/// Greedy-decodes a batch of sources (ids without specials) with the KV cache. Finished sentences leave
/// the batch, so they stop costing work.
pub fn greedy(
    model: &Transformer,
    srcs: &[&[u32]],
    sp: Specials,
    max_positions: usize,
    device: &Device,
) -> Result<Vec<Hypothesis>> {
    let (memory, mut src_mask) = encode_sources(model, srcs, sp, device)?;
    let mut cache = model.start_decoding(&memory)?;
    let mut rows = Rows::new(srcs, max_positions);
    let mut active: Vec<usize> = (0..srcs.len()).collect();
    let mut feed = vec![sp.bos; srcs.len()];
    for step in 0..rows.longest() {
        let tokens = Tensor::new(feed.as_slice(), device)?;
        let logits = model.decode_step(&tokens, &mut cache, &src_mask)?; // (active, vocab)
        let next = rows.push(&candle_nn::ops::log_softmax(&logits, D::Minus1)?, &active, step, sp)?;
        let keep: Vec<usize> = (0..active.len()).filter(|&i| !rows.done[active[i]]).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            let idx = Tensor::new(keep.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(), device)?;
            cache.select(&idx)?;
            src_mask = src_mask.index_select(&idx, 0)?;
        }
        feed = keep.iter().map(|&i| next[i]).collect();
        active = keep.iter().map(|&i| active[i]).collect();
    }
    Ok(rows.finish())
}

/// The reference path: greedy decoding that re-runs the decoder over the whole prefix at every step.
pub fn greedy_uncached(
    model: &Transformer,
    srcs: &[&[u32]],
    sp: Specials,
    max_positions: usize,
    device: &Device,
) -> Result<Vec<Hypothesis>> {
    let (memory, src_mask) = encode_sources(model, srcs, sp, device)?;
    let mut rows = Rows::new(srcs, max_positions);
    let all: Vec<usize> = (0..srcs.len()).collect();
    let mut prefix: Vec<Vec<u32>> = vec![vec![sp.bos]; srcs.len()];
    for step in 0..rows.longest() {
        let len = step + 1;
        let flat: Vec<u32> = prefix.iter().flatten().copied().collect();
        let tgt_in = Tensor::from_vec(flat, (srcs.len(), len), device)?;
        let hidden = model.decode(&tgt_in, &memory, &src_mask, &mut Mode::Eval)?;
        let logits = model.logits(&hidden.i((.., len - 1..len, ..))?)?.squeeze(1)?;
        let feed = rows.push(&candle_nn::ops::log_softmax(&logits, D::Minus1)?, &all, step, sp)?;
        for (p, t) in prefix.iter_mut().zip(feed) {
            p.push(t);
        }
        if rows.done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(rows.finish())
}
