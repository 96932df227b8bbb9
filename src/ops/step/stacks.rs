//! One batch through the whole model and back (paper Figure 1): embeddings and positional encoding, the
//! encoder stack, the decoder stack, the pre-softmax projection with the label-smoothed loss, then the
//! same in reverse, every gradient added into the step's buffers.

use super::index::ModelIndex;
use super::sublayer::{add_into, through_mask, AttentionOp, AttentionSaved, Ctx, Grads, Rows, Sublayer};
use crate::model::mask::MASKED;
use crate::ops::attention::{Dims, FusedAttention};
use crate::ops::cpu::Real;
use crate::ops::projected_loss::FusedProjectedCrossEntropy;
use crate::rng::Rng;
use candle_core::Result;
use rayon::prelude::*;

/// One batch's token ids, row-major.
pub(super) struct BatchIds {
    pub batch: usize,
    pub src_len: usize,
    pub tgt_len: usize,
    /// (batch, src_len), eos then padding.
    pub src: Vec<u32>,
    /// (batch, tgt_len): bos + target, padded.
    pub tgt_in: Vec<u32>,
    /// (batch, tgt_len): target + eos, padded.
    pub tgt_out: Vec<u32>,
    /// (batch, src_len): the batch's additive key-padding mask (`Batch::src_mask`), 0 or `MASKED`.
    pub src_mask: Vec<f64>,
}

impl BatchIds {
    /// Sentences `rows` of the batch, padded to the batch's lengths.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        let (s, t) = (self.src_len, self.tgt_len);
        Self {
            batch: rows.len(),
            src_len: s,
            tgt_len: t,
            src: self.src[rows.start * s..rows.end * s].to_vec(),
            tgt_in: self.tgt_in[rows.start * t..rows.end * t].to_vec(),
            tgt_out: self.tgt_out[rows.start * t..rows.end * t].to_vec(),
            src_mask: self.src_mask[rows.start * s..rows.end * s].to_vec(),
        }
    }
}

/// The loss statistics of one batch.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sums {
    pub loss_sum: f64,
    pub nll_sum: f64,
    pub tokens: usize,
}

impl std::ops::AddAssign for Sums {
    fn add_assign(&mut self, other: Self) {
        self.loss_sum += other.loss_sum;
        self.nll_sum += other.nll_sum;
        self.tokens += other.tokens;
    }
}

/// The three attentions' operators of one batch: their masks are built once and shared by the layers.
struct Attentions {
    encoder: AttentionOp,
    decoder: AttentionOp,
    cross: AttentionOp,
}

impl Attentions {
    fn new(b: &BatchIds, heads: usize, d_model: usize) -> Self {
        let (s, t) = (b.src_len, b.tgt_len);
        let dims = |q_len, k_len| Dims { batch: b.batch, q_len, k_len, d_model, d_k: d_model / heads };
        // (batch, q_len, src_len): every query row sees its sentence's key-padding mask.
        let padding = |q_len: usize| -> Vec<f64> {
            let mut m = Vec::with_capacity(b.batch * q_len * s);
            for row in b.src_mask.chunks(s) {
                for _ in 0..q_len {
                    m.extend_from_slice(row);
                }
            }
            m
        };
        // The decoder's self-attention sees the causal mask only, as in `Decoder::forward`.
        let causal: Vec<f64> =
            (0..b.batch * t * t).map(|x| if x % t > (x / t) % t { MASKED as f64 } else { 0.0 }).collect();
        let op = |mask| FusedAttention { heads, mask: Some(mask) };
        Self {
            encoder: AttentionOp { op: op(padding(s)), dims: dims(s, s) },
            decoder: AttentionOp { op: op(causal), dims: dims(t, t) },
            cross: AttentionOp { op: op(padding(t)), dims: dims(t, s) },
        }
    }
}

type EncoderLayerSaved<T> = (Sublayer<T, AttentionSaved<T>>, Sublayer<T, Vec<T>>);
type DecoderLayerSaved<T> = (Sublayer<T, AttentionSaved<T>>, Sublayer<T, AttentionSaved<T>>, Sublayer<T, Vec<T>>);

/// A stack's output and what its backward pass needs.
type Encoded<T> = (Vec<T>, StackSaved<T, EncoderLayerSaved<T>>);
type Decoded<T> = (Vec<T>, StackSaved<T, DecoderLayerSaved<T>>);

/// What a stack's backward pass needs.
struct StackSaved<T, L> {
    /// The embedding dropout mask.
    mask: Option<Vec<f32>>,
    layers: Vec<L>,
    /// Pre-norm: the input of the stack's final LayerNorm.
    final_input: Option<Vec<T>>,
}

impl<T: Real> Ctx<'_, T> {
    /// Dropout(E[id]·√d_model + PE(position)) for every token of `ids` (rows of `len`).
    fn embed(&self, table: &[T], ids: &[u32], len: usize, pe: &[T], rng: &mut Rng) -> (Vec<T>, Option<Vec<f32>>) {
        let d = self.d_model;
        let scale = T::from_f64((d as f64).sqrt());
        let mut x = vec![T::zero(); ids.len() * d];
        x.par_chunks_mut(d).zip(ids.par_iter()).enumerate().for_each(|(r, (row, &id))| {
            let (e, p) = (&table[id as usize * d..(id as usize + 1) * d], &pe[(r % len) * d..(r % len + 1) * d]);
            for ((o, &e), &p) in row.iter_mut().zip(e).zip(p) {
                *o = e * scale + p;
            }
        });
        let mask = self.dropout_mask(rng, x.len());
        if let Some(m) = &mask {
            crate::ops::dropout::mul_masked_in_place(&mut x, m);
        }
        (x, mask)
    }

    /// Adds ∂E[id] += √d_model · Dropout'(∂x) for every token, row after row (a fixed order).
    fn embed_backward(&self, grad: &mut [T], ids: &[u32], mask: Option<&[f32]>, dx: &[T]) {
        let d = self.d_model;
        let scale = T::from_f64((d as f64).sqrt());
        let dx = through_mask(dx, mask);
        for (&id, row) in ids.iter().zip(dx.chunks(d)) {
            for (g, &v) in grad[id as usize * d..(id as usize + 1) * d].iter_mut().zip(row) {
                *g += v * scale;
            }
        }
    }

    /// The encoder stack: memory (batch·src_len, d_model).
    fn encode(&self, ix: &ModelIndex, ops: &Attentions, b: &BatchIds, pe: &[T], rng: &mut Rng) -> Result<Encoded<T>> {
        let (mut x, mask) = self.embed(self.params[ix.src_embedding], &b.src, b.src_len, pe, rng);
        let mut layers = Vec::with_capacity(ix.encoder.len());
        let all = Rows::All;
        for l in &ix.encoder {
            let (y, a) = self.sublayer(l.self_attn_norm, &all, rng, x, |x| {
                self.attention(l.self_attn, &ops.encoder, &all, x, None)
            })?;
            let (y, f) = self.sublayer(l.ffn_norm, &all, rng, y, |x| self.ffn(l.ffn, x))?;
            layers.push((a, f));
            x = y;
        }
        Ok(match ix.encoder_final {
            Some(n) => (self.layer_norm(n, &x), StackSaved { mask, layers, final_input: Some(x) }),
            None => (x, StackSaved { mask, layers, final_input: None }),
        })
    }

    /// The decoder stack over `memory`: hidden states (rows, d_model) of the target positions `rows`.
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &self,
        ix: &ModelIndex,
        ops: &Attentions,
        b: &BatchIds,
        rows: &Rows,
        pe: &[T],
        memory: &[T],
        rng: &mut Rng,
    ) -> Result<Decoded<T>> {
        let (x, mask) = self.embed(self.params[ix.tgt_embedding], &b.tgt_in, b.tgt_len, pe, rng);
        let mut x = rows.gather(x, self.d_model);
        let mut layers = Vec::with_capacity(ix.decoder.len());
        for l in &ix.decoder {
            let (y, s) = self.sublayer(l.self_attn_norm, rows, rng, x, |x| {
                self.attention(l.self_attn, &ops.decoder, rows, x, None)
            })?;
            let (y, c) = self.sublayer(l.cross_attn_norm, rows, rng, y, |x| {
                self.attention(l.cross_attn, &ops.cross, rows, x, Some(memory))
            })?;
            let (y, f) = self.sublayer(l.ffn_norm, rows, rng, y, |x| self.ffn(l.ffn, x))?;
            layers.push((s, c, f));
            x = y;
        }
        Ok(match ix.decoder_final {
            Some(n) => (self.layer_norm(n, &x), StackSaved { mask, layers, final_input: Some(x) }),
            None => (x, StackSaved { mask, layers, final_input: None }),
        })
    }

    /// The decoder's backward pass from ∂hidden (of `rows`); ∂memory is added into `d_memory`.
    #[allow(clippy::too_many_arguments)]
    fn decode_backward(
        &self,
        grads: &mut Grads<T>,
        ix: &ModelIndex,
        ops: &Attentions,
        b: &BatchIds,
        rows: &Rows,
        saved: StackSaved<T, DecoderLayerSaved<T>>,
        memory: &[T],
        d_memory: &mut [T],
        d_hidden: Vec<T>,
    ) -> Result<()> {
        let mut d = match (ix.decoder_final, &saved.final_input) {
            (Some(n), Some(x)) => self.layer_norm_backward(grads, n, x, &d_hidden),
            _ => d_hidden,
        };
        for (l, (s, c, f)) in ix.decoder.iter().zip(&saved.layers).rev() {
            d = self.sublayer_backward(grads, l.ffn_norm, f, d, |g, h, x, df, dx| {
                self.ffn_backward(g, l.ffn, x, h, df, dx)
            })?;
            d = self.sublayer_backward(grads, l.cross_attn_norm, c, d, |g, a, x, df, dx| {
                let memory = Some((memory, &mut *d_memory));
                self.attention_backward(g, l.cross_attn, &ops.cross, rows, x, memory, a, df, dx)
            })?;
            d = self.sublayer_backward(grads, l.self_attn_norm, s, d, |g, a, x, df, dx| {
                self.attention_backward(g, l.self_attn, &ops.decoder, rows, x, None, a, df, dx)
            })?;
        }
        let d = rows.scatter(d, self.d_model);
        self.embed_backward(&mut grads[ix.tgt_embedding], &b.tgt_in, saved.mask.as_deref(), &d);
        Ok(())
    }

    /// The encoder's backward pass from ∂memory.
    fn encode_backward(
        &self,
        grads: &mut Grads<T>,
        ix: &ModelIndex,
        ops: &Attentions,
        b: &BatchIds,
        saved: StackSaved<T, EncoderLayerSaved<T>>,
        d_memory: Vec<T>,
    ) -> Result<()> {
        let mut d = match (ix.encoder_final, &saved.final_input) {
            (Some(n), Some(x)) => self.layer_norm_backward(grads, n, x, &d_memory),
            _ => d_memory,
        };
        for (l, (a, f)) in ix.encoder.iter().zip(&saved.layers).rev() {
            d = self.sublayer_backward(grads, l.ffn_norm, f, d, |g, h, x, df, dx| {
                self.ffn_backward(g, l.ffn, x, h, df, dx)
            })?;
            d = self.sublayer_backward(grads, l.self_attn_norm, a, d, |g, s, x, df, dx| {
                self.attention_backward(g, l.self_attn, &ops.encoder, &Rows::All, x, None, s, df, dx)
            })?;
        }
        self.embed_backward(&mut grads[ix.src_embedding], &b.src, saved.mask.as_deref(), &d);
        Ok(())
    }

    /// Forward and backward over one batch: every gradient of the batch's summed token loss is added into
    /// `grads`. `pe` is the positional-encoding table's first rows, enough for both sides.
    #[allow(clippy::too_many_arguments)]
    pub fn batch(
        &self,
        grads: &mut Grads<T>,
        ix: &ModelIndex,
        b: &BatchIds,
        pe: &[T],
        heads: usize,
        (pad, label_smoothing): (u32, f64),
        rng: &mut Rng,
    ) -> Result<Sums> {
        let ops = Attentions::new(b, heads, self.d_model);
        let (memory, encoder) = self.encode(ix, &ops, b, pe, rng)?;
        // The decoder and the loss run on the target positions that are not padding ([`Rows`]), which
        // come first in each sentence (`Batch::new` pads at the end).
        let padding_last = |row: &[u32]| row.iter().skip_while(|&&y| y != pad).all(|&y| y == pad);
        debug_assert!(b.tgt_out.chunks(b.tgt_len.max(1)).all(padding_last), "target padding must come last");
        let kept: Vec<usize> = (0..b.tgt_out.len()).filter(|&r| b.tgt_out[r] != pad).collect();
        let targets: Vec<u32> = kept.iter().map(|&r| b.tgt_out[r]).collect();
        let rows =
            if kept.len() == b.tgt_out.len() { Rows::All } else { Rows::Kept { kept: &kept, padded: b.tgt_out.len() } };
        let (hidden, decoder) = self.decode(ix, &ops, b, &rows, pe, &memory, rng)?;
        let (losses, d_hidden, d_generator) = self.loss(ix, &hidden, &targets, pad, label_smoothing)?;
        drop(hidden);
        add_into(&mut grads[ix.generator], &d_generator);
        let mut d_memory = vec![T::zero(); memory.len()];
        self.decode_backward(grads, ix, &ops, b, &rows, decoder, &memory, &mut d_memory, d_hidden)?;
        drop(memory);
        self.encode_backward(grads, ix, &ops, b, encoder, d_memory)?;
        let sum = |k: usize| losses.iter().skip(k).step_by(2).map(|v| v.to_f64()).sum::<f64>();
        Ok(Sums { loss_sum: sum(0), nll_sum: sum(1), tokens: targets.len() })
    }

    /// The projected loss of the decoder's `hidden` states against `targets` (no padding among them):
    /// each row's (loss, nll), ∂hidden and ∂W.
    #[allow(clippy::type_complexity)]
    fn loss(
        &self,
        ix: &ModelIndex,
        hidden: &[T],
        targets: &[u32],
        pad: u32,
        label_smoothing: f64,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let loss = FusedProjectedCrossEntropy::new(pad, label_smoothing, true);
        let ones = vec![T::one(); targets.len()];
        let (rows, unit_grads) = loss.run(hidden, self.params[ix.generator], targets, self.d_model, Some(&ones[..]))?;
        let (d_hidden, d_generator) =
            unit_grads.ok_or_else(|| candle_core::Error::Msg("training step: the loss returned no gradient".into()))?;
        Ok((rows, d_hidden, d_generator))
    }
}
