//! `nmt explain`: one sentence through the model, in the paper's order, with the model's own numbers.
//!
//! [`explain`] computes an [`Explanation`], a plain struct that the text printer ([`text`]) and `--json`
//! (serde) both render, so the two always agree. Every number comes from one traced pass on the reference
//! (unfused) path ([`crate::model::trace`]), which tests check against the fast path:
//!
//! 1. the BPE pieces and ids; token embedding × √d_model plus the positional encoding (§3.4, §3.5)
//!    — this file;
//! 2. scaled dot-product attention (§3.2.1) for one source token in one encoder layer and head, as the
//!    six steps of "The Illustrated Transformer", 3. every head of that layer, the concatenation and W_O
//!    (§3.2.2), and 4. the residual connections, LayerNorm and the feed-forward network (§3.1, §3.3) —
//!    [`encoder`];
//! 5. greedy decoding step by step: the final linear and softmax's 5 most probable tokens, and the source
//!    piece the encoder-decoder attention weighs most — [`decoder`].

pub mod decoder;
pub mod encoder;
pub mod text;

use crate::config::{ModelConfig, Norm};
use crate::data::batch::{source_rows, source_tensor};
use crate::data::tokenizer::Tokenizer;
use crate::model::Transformer;
use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};
use serde::Serialize;

/// What to look at: `--token`, `--layer`, `--head` (None: the defaults).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A 0-based piece index or a piece's text (with or without its leading `▁`).
    pub token: Option<String>,
    pub layer: Option<usize>,
    pub head: Option<usize>,
}

/// Everything `nmt explain` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub sentence: String,
    pub model: ModelShape,
    /// Section 1: the pieces the encoder reads (the sentence's, then `</s>`).
    pub pieces: Vec<Piece>,
    pub embedding: Embedding,
    /// Section 2.
    pub attention: encoder::SelfAttention,
    /// Section 3.
    pub heads: encoder::MultiHead,
    /// Section 4.
    pub sublayers: encoder::Sublayers,
    /// Section 5.
    pub decoding: decoder::Decoding,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelShape {
    pub d_model: usize,
    pub heads: usize,
    pub d_k: usize,
    pub d_ff: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub vocab_size: usize,
    pub norm: Norm,
}

/// One source piece and the norms of its vectors as it enters the encoder.
#[derive(Debug, Clone, Serialize)]
pub struct Piece {
    pub index: usize,
    pub piece: String,
    pub id: u32,
    /// ‖embedding × √d_model‖
    pub embedding_norm: f32,
    /// ‖PE(index)‖
    pub positional_norm: f32,
    /// ‖embedding × √d_model + PE(index)‖, the encoder's input row.
    pub input_norm: f32,
}

/// The shapes of section 1.
#[derive(Debug, Clone, Serialize)]
pub struct Embedding {
    /// The embedding matrix, (vocab, d_model).
    pub table_shape: [usize; 2],
    /// √d_model, the factor of §3.4.
    pub scale: f64,
    /// The encoder's input X, (src_len, d_model).
    pub input_shape: [usize; 2],
}

/// The Euclidean norm.
pub(crate) fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Row `index` of a (1, len, width) tensor.
pub(crate) fn row(t: &Tensor, index: usize) -> Result<Vec<f32>> {
    Ok(t.i((0, index))?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

/// Explains `sentence` (see the module doc). `max_len_extra` is the run's `decode.max_len_extra`, so the
/// greedy translation stops where `nmt translate --beam 1` does.
pub fn explain(
    model: &Transformer,
    cfg: &ModelConfig,
    tokenizer: &Tokenizer,
    max_len_extra: usize,
    sentence: &str,
    request: &Request,
) -> Result<Explanation> {
    let mut ids = tokenizer.encode(sentence)?;
    if ids.is_empty() {
        bail!("the sentence has no pieces to explain (it is empty)");
    }
    ids.truncate(model.max_positions() - 1); // as the translator does: room for </s>
    let sp = tokenizer.specials;
    let (src, src_mask) = source_tensor(&source_rows([ids.as_slice()].into_iter(), sp), sp, model.device())?;
    let pieces_text = tokenizer.pieces(&src.i(0)?.to_vec1::<u32>()?);
    let layer = choose("--layer", request.layer, cfg.encoder_layers, "the encoder has", "layers")?;
    let head = choose("--head", request.head.or(Some(0)), cfg.heads, "each layer has", "heads")?;
    let token = choose_token(request.token.as_deref(), &pieces_text)?;
    let decoding = decoder::decode(model, tokenizer, max_len_extra, &ids, &src, &src_mask)?;
    let trace = model.trace(&src, &src_mask, &Tensor::new(&[[sp.bos]], model.device())?)?;
    let mut pieces = vec![];
    for (index, piece) in pieces_text.iter().enumerate() {
        let (e, x) = (row(&trace.src_embedding, index)?, row(&trace.src_input, index)?);
        let pe = trace.src_positional.i(index)?.to_vec1::<f32>()?;
        let id = ids.get(index).copied().unwrap_or(sp.eos);
        let (embedding_norm, positional_norm, input_norm) = (norm(&e), norm(&pe), norm(&x));
        pieces.push(Piece { index, piece: piece.clone(), id, embedding_norm, positional_norm, input_norm });
    }
    let selected = encoder::Selected { layer, head, token, pieces: &pieces_text };
    Ok(Explanation {
        sentence: sentence.to_string(),
        model: ModelShape {
            d_model: cfg.d_model,
            heads: cfg.heads,
            d_k: cfg.d_k(),
            d_ff: cfg.d_ff,
            encoder_layers: cfg.encoder_layers,
            decoder_layers: cfg.decoder_layers,
            vocab_size: cfg.vocab_size,
            norm: cfg.norm,
        },
        embedding: Embedding {
            table_shape: [cfg.vocab_size, cfg.d_model],
            scale: (cfg.d_model as f64).sqrt(),
            input_shape: [pieces.len(), cfg.d_model],
        },
        pieces,
        attention: encoder::self_attention(&trace, &selected)?,
        heads: encoder::multi_head(&trace, &selected, cfg)?,
        sublayers: encoder::sublayers(&trace, &selected, cfg)?,
        decoding,
    })
}

/// `value` (or the last of `count` when None), checked against `count`; the error names the flag.
fn choose(flag: &str, value: Option<usize>, count: usize, has: &str, things: &str) -> Result<usize> {
    let v = value.unwrap_or(count.saturating_sub(1));
    let things = if count == 1 { things.trim_end_matches('s') } else { things };
    if v >= count {
        bail!("{flag} {v}: {has} {count} {things}, counted from 0 (0 to {})", count - 1);
    }
    Ok(v)
}

/// The piece `token` names (an index, or a piece's text with or without `▁`), else the last piece of the
/// sentence with a letter or digit in it.
pub fn choose_token(token: Option<&str>, pieces: &[String]) -> Result<usize> {
    let words = || pieces.join(" ");
    let Some(t) = token else {
        let sentence = &pieces[..pieces.len().saturating_sub(1)]; // without </s>
        let wordy = sentence.iter().rposition(|p| p.chars().any(char::is_alphanumeric));
        return Ok(wordy.unwrap_or(sentence.len().saturating_sub(1)));
    };
    if let Ok(i) = t.parse::<usize>() {
        if i >= pieces.len() {
            bail!("--token {i}: the sentence has {} pieces, counted from 0: {}", pieces.len(), words());
        }
        return Ok(i);
    }
    match pieces.iter().position(|p| p == t || p.trim_start_matches('▁') == t) {
        Some(i) => Ok(i),
        None => bail!("--token {t:?}: no piece of the sentence is {t:?}; its pieces are: {}", words()),
    }
}

#[cfg(test)]
mod tests;
