//! Section 5 of `nmt explain`: greedy decoding step by step (paper §3.1, §3.4). At each step the decoder
//! reads `<s>` and the tokens chosen so far (masked self-attention, then encoder-decoder attention over the
//! encoder's output), the final linear layer and softmax give a distribution over the vocabulary, and the
//! most probable token is appended, until `</s>` or the length limit of `nmt translate`.
//!
//! Each step re-runs the traced reference pass over the whole prefix (no KV cache), so the numbers are the
//! reference path's; a test checks the output equals `nmt translate --beam 1`'s.

use super::encoder::argmax;
use crate::data::tokenizer::Tokenizer;
use crate::decode::DecodeContext;
use crate::model::Transformer;
use anyhow::{Context, Result};
use candle_core::{IndexOp, Tensor, D};
use serde::Serialize;

/// How many of the most probable next tokens each step lists.
pub const TOP_CANDIDATES: usize = 5;

/// The greedy translation and its steps.
#[derive(Debug, Clone, Serialize)]
pub struct Decoding {
    pub steps: Vec<Step>,
    /// The output ids (without `<s>` and `</s>`) and their text.
    pub tokens: Vec<u32>,
    pub translation: String,
}

/// One decoding step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Counted from 0; the step predicts output position `step`.
    pub step: usize,
    /// The piece the decoder read last (`<s>` at step 0).
    pub input: String,
    /// The most probable next tokens, most probable first; the first is the one chosen.
    pub candidates: Vec<Candidate>,
    /// The source piece that the last decoder layer's encoder-decoder attention, averaged over its
    /// heads, weighs most at this step.
    pub source: Attended,
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub id: u32,
    pub piece: String,
    pub probability: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attended {
    pub layer: usize,
    pub index: usize,
    pub piece: String,
    pub weight: f32,
}

/// Greedy-decodes one source.
///
/// # Shapes
/// - `ids`: the source without specials; `src`: (1, src_len) with its `</s>`; `src_mask`: (1, 1, 1, src_len)
pub fn decode(
    model: &Transformer,
    tokenizer: &Tokenizer,
    max_len_extra: usize,
    ids: &[u32],
    src: &Tensor,
    src_mask: &Tensor,
) -> Result<Decoding> {
    let sp = tokenizer.specials;
    let limit = DecodeContext::new(model, sp, max_len_extra).max_output_len(ids.len());
    let src_pieces = tokenizer.pieces(&src.i(0)?.to_vec1::<u32>()?);
    let (mut prefix, mut steps) = (vec![sp.bos], vec![]);
    for step in 0..limit {
        let last = prefix.len() - 1;
        let trace = model.trace(src, src_mask, &Tensor::new(prefix.as_slice(), model.device())?.unsqueeze(0)?)?;
        let logits = trace.logits.i((0, last))?; // (vocab)
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let top: Vec<u32> = order.iter().take(TOP_CANDIDATES).map(|&i| i as u32).collect();
        let candidates = tokenizer
            .pieces(&top)
            .into_iter()
            .zip(&top)
            .map(|(piece, &id)| Candidate { id, piece, probability: probs[id as usize] })
            .collect();
        let cross = &trace.decoder.last().context("the decoder has no layers")?.cross_attn;
        let alignment = cross.weights.i((0, .., last))?.mean(0)?.to_vec1::<f32>()?; // (src_len)
        let (index, weight) = argmax(&alignment);
        let layer = trace.decoder.len() - 1;
        let source = Attended { layer, index, piece: src_pieces[index].clone(), weight };
        let input = tokenizer.pieces(&prefix[last..]).remove(0);
        steps.push(Step { step, input, candidates, source });
        if top[0] == sp.eos {
            break;
        }
        prefix.push(top[0]);
    }
    let tokens = prefix[1..].to_vec();
    Ok(Decoding { translation: tokenizer.decode(&tokens)?, tokens, steps })
}
