//! A traced forward pass: every intermediate value of every layer, for the attention pictures
//! (`nmt translate --attention`) and the walk-through of `nmt explain`.
//!
//! [`Transformer::trace`] runs the encoder and the decoder once, teacher-forced and in evaluation mode
//! (no dropout), on the reference path ([`crate::ops::with_reference_path`]): the fused ops never
//! materialise the attention weights. It keeps, per layer, the queries, keys and values split into heads,
//! the raw scores q·k, the softmax weights (paper §3.2.1), each head's output, their concatenation and its
//! product with W_O (§3.2.2), and around every sub-layer the residual sum and the LayerNorm's output
//! (§3.1). Training never calls this: it keeps the layers' own `forward` on the fused path. Tests check
//! that the traced output equals the fast path's.

use super::attention::{scaled_dot_product_attention, MultiHeadAttention};
use super::embedding::embed;
use super::feed_forward::FeedForward;
use super::init::Mode;
use super::norm::SublayerConnection;
use super::Transformer;
use candle_core::{IndexOp, Result, Tensor};

/// One multi-head attention's intermediate values.
#[derive(Debug, Clone)]
pub struct AttentionTrace {
    /// Q = query W_Q, split into heads: (batch, heads, q_len, d_k)
    pub q: Tensor,
    /// K = memory W_K: (batch, heads, k_len, d_k)
    pub k: Tensor,
    /// V = memory W_V: (batch, heads, k_len, d_k)
    pub v: Tensor,
    /// The raw scores QKᵀ, before the scaling by 1/√d_k and the mask: (batch, heads, q_len, k_len)
    pub scores: Tensor,
    /// softmax(QKᵀ/√d_k + mask): (batch, heads, q_len, k_len)
    pub weights: Tensor,
    /// head_i = softmax(·) V: (batch, heads, q_len, d_k)
    pub heads: Tensor,
    /// Concat(head_1, …, head_h): (batch, q_len, d_model)
    pub concat: Tensor,
    /// Concat(…) W_O, the sub-layer's output: (batch, q_len, d_model)
    pub output: Tensor,
}

/// The residual connection and LayerNorm around one sub-layer, all (batch, len, d_model).
#[derive(Debug, Clone)]
pub struct SublayerTrace {
    /// The residual stream entering the sub-layer.
    pub input: Tensor,
    /// What the sub-layer saw: `input` with post-norm, LayerNorm(`input`) with pre-norm.
    pub sublayer_input: Tensor,
    /// Sublayer(`sublayer_input`).
    pub sublayer_output: Tensor,
    /// `input` + Sublayer(…), the residual sum.
    pub residual: Tensor,
    /// The output: LayerNorm(`residual`) with post-norm, `residual` with pre-norm.
    pub output: Tensor,
}

/// The feed-forward network's intermediate values.
#[derive(Debug, Clone)]
pub struct FeedForwardTrace {
    /// max(0, x W₁ + b₁): (batch, len, d_ff)
    pub hidden: Tensor,
    /// hidden W₂ + b₂: (batch, len, d_model)
    pub output: Tensor,
}

#[derive(Debug, Clone)]
pub struct EncoderLayerTrace {
    pub self_attn: AttentionTrace,
    pub self_attn_norm: SublayerTrace,
    pub ffn: FeedForwardTrace,
    pub ffn_norm: SublayerTrace,
}

#[derive(Debug, Clone)]
pub struct DecoderLayerTrace {
    pub self_attn: AttentionTrace,
    pub self_attn_norm: SublayerTrace,
    pub cross_attn: AttentionTrace,
    pub cross_attn_norm: SublayerTrace,
    pub ffn: FeedForwardTrace,
    pub ffn_norm: SublayerTrace,
}

/// Every intermediate value of one teacher-forced pass.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Source token embeddings × √d_model: (batch, src_len, d_model)
    pub src_embedding: Tensor,
    /// The positional encoding PE(0..src_len) that was added: (src_len, d_model)
    pub src_positional: Tensor,
    /// The same plus the positional encoding, the encoder's input: (batch, src_len, d_model)
    pub src_input: Tensor,
    pub encoder: Vec<EncoderLayerTrace>,
    /// The encoder's output: (batch, src_len, d_model)
    pub memory: Tensor,
    /// The decoder's input, target embeddings × √d_model plus PE: (batch, tgt_len, d_model)
    pub tgt_input: Tensor,
    pub decoder: Vec<DecoderLayerTrace>,
    /// The decoder's output: (batch, tgt_len, d_model)
    pub hidden: Tensor,
    /// The pre-softmax logits: (batch, tgt_len, vocab)
    pub logits: Tensor,
}

/// The attention weights of one sentence, per layer, each (heads, q_len, k_len).
#[derive(Debug, Clone)]
pub struct AttentionMaps {
    /// Encoder self-attention: (heads, src_len, src_len) per layer.
    pub encoder: Vec<Tensor>,
    /// Masked decoder self-attention: (heads, tgt_len, tgt_len) per layer; zero above the diagonal.
    pub decoder_self: Vec<Tensor>,
    /// Encoder-decoder attention: (heads, tgt_len, src_len) per layer.
    pub cross: Vec<Tensor>,
}

fn trace_attention(mha: &MultiHeadAttention, query: &Tensor, memory: &Tensor, mask: &Tensor) -> Result<AttentionTrace> {
    let (batch, q_len, d_model) = query.dims3()?;
    let q = mha.split_heads(&mha.w_q.forward(query)?)?; // (batch, heads, q_len, d_k)
    let kv = mha.project_kv(memory)?; // (batch, heads, k_len, d_k)
    let scores = q.matmul(&kv.k.t()?)?; // (batch, heads, q_len, k_len)
    let (heads, weights) = scaled_dot_product_attention(&q, &kv.k, &kv.v, Some(mask))?;
    let concat = heads
        .transpose(1, 2)? // (batch, q_len, heads, d_k)
        .reshape((batch, q_len, d_model))?;
    let output = mha.w_o.forward(&concat)?;
    Ok(AttentionTrace { q, k: kv.k, v: kv.v, scores, weights, heads, concat, output })
}

/// Runs `f` inside the sub-layer connection's own `forward`, keeping what it saw and returned.
fn trace_sublayer<T>(
    conn: &SublayerConnection,
    x: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<(Tensor, T)>,
) -> Result<(SublayerTrace, T)> {
    let mut seen = None;
    let output = conn.forward(x, &mut Mode::Eval, |input, _| {
        let (y, inner) = f(input)?;
        seen = Some((input.clone(), y.clone(), inner));
        Ok(y)
    })?;
    let Some((sublayer_input, sublayer_output, inner)) = seen else {
        candle_core::bail!("the sub-layer connection did not call its sub-layer");
    };
    let residual = (x + &sublayer_output)?;
    Ok((SublayerTrace { input: x.clone(), sublayer_input, sublayer_output, residual, output }, inner))
}

fn trace_ffn(ffn: &FeedForward, x: &Tensor) -> Result<(Tensor, FeedForwardTrace)> {
    let hidden = ffn.w_1.forward_relu(x)?; // (batch, len, d_ff)
    let output = ffn.w_2.forward(&hidden)?;
    Ok((output.clone(), FeedForwardTrace { hidden, output }))
}

fn attention_sublayer(
    conn: &SublayerConnection,
    mha: &MultiHeadAttention,
    x: &Tensor,
    memory: Option<&Tensor>,
    mask: &Tensor,
) -> Result<(SublayerTrace, AttentionTrace)> {
    trace_sublayer(conn, x, |input| {
        let t = trace_attention(mha, input, memory.unwrap_or(input), mask)?;
        Ok((t.output.clone(), t))
    })
}

impl Transformer {
    /// Runs the encoder and decoder once on the reference path and keeps every intermediate value.
    ///
    /// # Shapes
    /// - `src`: (batch, src_len) u32; `src_mask`: (batch, 1, 1, src_len); `tgt_in`: (batch, tgt_len) u32
    pub fn trace(&self, src: &Tensor, src_mask: &Tensor, tgt_in: &Tensor) -> Result<Trace> {
        crate::ops::with_reference_path(|| self.trace_here(src, src_mask, tgt_in))
    }

    fn trace_here(&self, src: &Tensor, src_mask: &Tensor, tgt_in: &Tensor) -> Result<Trace> {
        let src_embedding = embed(&self.embeddings.src, src)?;
        let src_input = self.positional.forward(&src_embedding, 0)?;
        let src_positional = self.positional.table().narrow(0, 0, src.dim(1)?)?;
        let (mut x, mut encoder) = (src_input.clone(), vec![]);
        for layer in &self.encoder.layers {
            let (self_attn_norm, self_attn) =
                attention_sublayer(&layer.self_attn_norm, &layer.self_attn, &x, None, src_mask)?;
            let (ffn_norm, ffn) =
                trace_sublayer(&layer.ffn_norm, &self_attn_norm.output, |h| trace_ffn(&layer.ffn, h))?;
            x = ffn_norm.output.clone();
            encoder.push(EncoderLayerTrace { self_attn, self_attn_norm, ffn, ffn_norm });
        }
        let memory = match &self.encoder.final_norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        let tgt_input = self.positional.forward(&embed(&self.embeddings.tgt, tgt_in)?, 0)?;
        let causal = super::mask::causal_mask(tgt_in.dim(1)?, tgt_in.device())?;
        let (mut y, mut decoder) = (tgt_input.clone(), vec![]);
        for layer in &self.decoder.layers {
            let (self_attn_norm, self_attn) =
                attention_sublayer(&layer.self_attn_norm, &layer.self_attn, &y, None, &causal)?;
            let (cross_attn_norm, cross_attn) = attention_sublayer(
                &layer.cross_attn_norm,
                &layer.cross_attn,
                &self_attn_norm.output,
                Some(&memory),
                src_mask,
            )?;
            let (ffn_norm, ffn) =
                trace_sublayer(&layer.ffn_norm, &cross_attn_norm.output, |h| trace_ffn(&layer.ffn, h))?;
            y = ffn_norm.output.clone();
            decoder.push(DecoderLayerTrace { self_attn, self_attn_norm, cross_attn, cross_attn_norm, ffn, ffn_norm });
        }
        let hidden = match &self.decoder.final_norm {
            Some(norm) => norm.forward(&y)?,
            None => y,
        };
        let logits = self.logits(&hidden)?;
        Ok(Trace { src_embedding, src_positional, src_input, encoder, memory, tgt_input, decoder, hidden, logits })
    }

    /// The attention weights of every layer for one unpadded sentence and its (shifted) translation: one
    /// teacher-forced pass on the reference path.
    ///
    /// # Shapes
    /// - `src`: (src_len) u32, the source with its `</s>`; `tgt_in`: (tgt_len) u32, starting with `<s>`
    pub fn attention_maps(&self, src: &Tensor, tgt_in: &Tensor) -> Result<AttentionMaps> {
        let src = src.unsqueeze(0)?; // (1, src_len)
        let no_padding = Tensor::zeros((1, 1, 1, src.dim(1)?), candle_core::DType::F32, src.device())?;
        self.trace(&src, &no_padding, &tgt_in.unsqueeze(0)?)?.attention_maps()
    }
}

impl Trace {
    /// The weights of batch row 0, each (heads, q_len, k_len).
    pub fn attention_maps(&self) -> Result<AttentionMaps> {
        let row0 = |t: &AttentionTrace| t.weights.i(0);
        Ok(AttentionMaps {
            encoder: self.encoder.iter().map(|l| row0(&l.self_attn)).collect::<Result<_>>()?,
            decoder_self: self.decoder.iter().map(|l| row0(&l.self_attn)).collect::<Result<_>>()?,
            cross: self.decoder.iter().map(|l| row0(&l.cross_attn)).collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, Norm};
    use crate::model::{build, mask::padding_mask};
    use candle_core::{Device, D};

    fn tiny(norm: Norm) -> ModelConfig {
        let (heads, d_model, d_ff, vocab_size) = (2, 8, 16, 12);
        ModelConfig {
            encoder_layers: 2,
            decoder_layers: 2,
            heads,
            d_model,
            d_ff,
            vocab_size,
            norm,
            ..Default::default()
        }
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f32>().unwrap()
    }

    /// The traced (reference-path) encoder output and logits equal the fast path's, with padding.
    #[test]
    fn the_trace_equals_the_fast_path() {
        for norm in [Norm::Post, Norm::Pre] {
            let (model, _) = build(&tiny(norm), 5, &Device::Cpu).unwrap();
            let src = Tensor::new(&[[4u32, 5, 6, 2], [7, 8, 2, 0]], &Device::Cpu).unwrap();
            let tgt_in = Tensor::new(&[[1u32, 9, 10], [1, 11, 0]], &Device::Cpu).unwrap();
            let mask = padding_mask(&src, 0).unwrap();
            let trace = model.trace(&src, &mask, &tgt_in).unwrap();
            let memory = model.encode(&src, &mask, &mut Mode::Eval).unwrap();
            let logits = model.forward(&src, &mask, &tgt_in, &mut Mode::Eval).unwrap();
            assert!(max_abs_diff(&trace.memory, &memory) < 1e-5, "{norm:?}: memory differs");
            assert!(max_abs_diff(&trace.logits, &logits) < 1e-5, "{norm:?}: logits differ");
        }
    }

    /// Rows sum to 1, the decoder's self-attention is zero above the diagonal, and each head's output is
    /// Σ softmax · V.
    #[test]
    fn attention_maps_are_distributions_and_causal() {
        let (model, _) = build(&tiny(Norm::Post), 6, &Device::Cpu).unwrap();
        let src = Tensor::new(&[4u32, 5, 6, 7, 2], &Device::Cpu).unwrap();
        let tgt_in = Tensor::new(&[1u32, 9, 10, 11], &Device::Cpu).unwrap();
        let maps = model.attention_maps(&src, &tgt_in).unwrap();
        assert_eq!(maps.encoder[1].dims(), &[2, 5, 5]);
        assert_eq!(maps.decoder_self[0].dims(), &[2, 4, 4]);
        assert_eq!(maps.cross[1].dims(), &[2, 4, 5]);
        for w in maps.encoder.iter().chain(&maps.decoder_self).chain(&maps.cross) {
            let sums = w.sum(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
        }
        for w in &maps.decoder_self {
            for head in w.to_vec3::<f32>().unwrap() {
                for (i, row) in head.iter().enumerate() {
                    assert!(row[i + 1..].iter().all(|&v| v == 0.0), "row {i} attends to the future: {row:?}");
                    assert!(row[..=i].iter().all(|&v| v > 0.0));
                }
            }
        }
        let trace = model
            .trace(
                &src.unsqueeze(0).unwrap(),
                &padding_mask(&src.unsqueeze(0).unwrap(), 0).unwrap(),
                &tgt_in.unsqueeze(0).unwrap(),
            )
            .unwrap();
        let a = &trace.encoder[0].self_attn;
        let expect = a.weights.matmul(&a.v).unwrap(); // (1, heads, src_len, d_k)
        assert!(max_abs_diff(&a.heads, &expect) < 1e-6);
    }
}
