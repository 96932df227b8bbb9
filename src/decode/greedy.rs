//! Greedy search: at every step append the most probable next token, until `</s>` or the length limit.
//!
//! This path recomputes the decoder over the whole prefix at each step (no KV cache yet), which is
//! simple and exactly matches the teacher-forced model.

use crate::data::batch::{source_rows, source_tensor};
use crate::data::tokenizer::Specials;
use crate::model::init::Mode;
use crate::model::Transformer;
use candle_core::{Device, IndexOp, Result, Tensor, D};

/// Output length limit for a source of `src_len` tokens: src_len + 50, within the position table.
pub fn max_output_len(src_len: usize, max_positions: usize) -> usize {
    (src_len + 50).min(max_positions - 1)
}

/// Greedy-decodes a batch of sources (ids without specials); returns ids without specials.
pub fn greedy(
    model: &Transformer,
    srcs: &[&[u32]],
    sp: Specials,
    max_positions: usize,
    device: &Device,
) -> Result<Vec<Vec<u32>>> {
    let rows = source_rows(srcs.iter().copied(), sp);
    let (src, src_mask) = source_tensor(&rows, sp, device)?;
    let memory = model.encode(&src, &src_mask, &mut Mode::Eval)?; // (batch, src_len, d_model)
    let batch = srcs.len();
    // Each row has its own limit, so that a sentence decodes the same alone or in any batch.
    let limits: Vec<usize> = srcs.iter().map(|s| max_output_len(s.len(), max_positions)).collect();
    let mut prefix: Vec<Vec<u32>> = vec![vec![sp.bos]; batch];
    let mut done = vec![false; batch];
    for step in 0..limits.iter().copied().max().unwrap_or(0) {
        let flat: Vec<u32> = prefix.iter().flatten().copied().collect();
        let len = prefix[0].len();
        let tgt_in = Tensor::from_vec(flat, (batch, len), device)?;
        let hidden = model.decode(&tgt_in, &memory, &src_mask, &mut Mode::Eval)?;
        let last = hidden.i((.., len - 1..len, ..))?; // (batch, 1, d_model)
        let next = model.logits(&last)?.squeeze(1)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (b, &tok) in next.iter().enumerate() {
            // Finished rows keep receiving pad so that the batch stays rectangular.
            let tok = if done[b] { sp.pad } else { tok };
            done[b] |= tok == sp.eos || step + 1 >= limits[b];
            prefix[b].push(tok);
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(prefix
        .into_iter()
        .map(|p| p.into_iter().skip(1).take_while(|&t| t != sp.eos && t != sp.pad).collect())
        .collect())
}
