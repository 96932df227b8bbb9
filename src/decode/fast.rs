//! The decoder's incremental step written by hand for CPU inference in f32: the function of
//! [`crate::model::Transformer::decode_step`] (embedding, positional encoding, the decoder stack, the
//! output projection) over plain slices, with its own caches.
//!
//! Hand-written because the tensor-op step spent more time around its arithmetic than in it. A profile of
//! beam-4 batched decoding (docs/PERFORMANCE.md, issue 15) found gemm's packing of the weights as costly
//! as the products themselves, the copies of the cache reorders and concatenations at 8%, fresh pages
//! at 8.5%, and the full log-softmax table copied out at every step. Here:
//! - every weight is transposed once, to (in, out), the layout gemm reads without packing it again at
//!   every step (1.6-1.9× faster products at these shapes, measured); self-attention's W_Q, W_K and W_V
//!   are one (d_model, 3·d_model) product, cross-attention's W_K and W_V over the memory another;
//! - the self-attention keys and values are never copied: each step appends its rows' keys and values
//!   as a new block of slots, and each row keeps the slot of its ancestor at every position so far.
//!   Reordering beams copies these indices (rows × positions) instead of the keys and values (rows ×
//!   positions × layers × 2·d_model), as a beam's cache is read through its history;
//! - cross-attention keys and values are kept once per sentence, and each row reads its sentence's,
//!   instead of a copy per row gathered again at every reorder;
//! - the next-token scores stay logits with one normaliser per row ([`NextTokens`]): no log-softmax
//!   table, and a search ranks only the few best tokens of each row.
//!
//! The reference is the model's tensor-op step ([`super::steps::ReferenceSteps`]); tests compare the two
//! step by step through beam reorders, and the searches' outputs through both.

use super::steps::{NextTokens, Steps};
use crate::config::Norm;
use crate::model::linear::Linear;
use crate::model::norm::LayerNorm;
use crate::model::Transformer;
use crate::ops::cpu::{exp_f32, simd};
use crate::ops::gemm::{matmul, threads_for, Mat};
use candle_core::{bail, DType, Result, Tensor};
use rayon::prelude::*;

/// A linear layer with its weight transposed once: y = x W + b with W (in, out).
struct Projection {
    /// (d_in, d_out)
    w: Vec<f32>,
    /// (d_out)
    b: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

impl Projection {
    /// The layers' outputs side by side, [y_1 | y_2 | …]: one product for projections of the same input.
    fn concat(layers: &[&Linear]) -> Result<Self> {
        let d_in = layers[0].weight().dim(1)?;
        let d_out = layers.iter().map(|l| l.weight().dim(0)).sum::<Result<usize>>()?;
        let mut w = vec![0f32; d_in * d_out];
        let mut b = Vec::with_capacity(d_out);
        let mut at = 0;
        for l in layers {
            let rows = l.weight().to_dtype(DType::F32)?.to_vec2::<f32>()?; // (out, in)
            for (o, row) in rows.iter().enumerate() {
                if row.len() != d_in {
                    bail!("fast decoder: projections of one input differ in input size");
                }
                for (i, &x) in row.iter().enumerate() {
                    w[i * d_out + at + o] = x;
                }
            }
            b.extend(l.bias().to_dtype(DType::F32)?.to_vec1::<f32>()?);
            at += rows.len();
        }
        Ok(Self { w, b, d_in, d_out })
    }

    /// x W + b for `rows` rows of x, then max(0, ·) with `relu`.
    ///
    /// # Shapes
    /// - `x`: (rows, d_in) → (rows, d_out)
    fn forward(&self, x: &[f32], rows: usize, relu: bool) -> Result<Vec<f32>> {
        let mut y = Vec::with_capacity(rows * self.d_out);
        for _ in 0..rows {
            y.extend_from_slice(&self.b);
        }
        let x = Mat::rows(x, rows, self.d_in, self.d_in);
        let w = Mat::rows(&self.w, self.d_in, self.d_out, self.d_out);
        matmul(&mut y, self.d_out, x, w, true, threads_for(rows, self.d_out, self.d_in))?;
        if relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok(y)
    }
}

/// A LayerNorm's gain, bias and ε, run by the fused op's forward function.
struct NormParams {
    gain: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
}

impl NormParams {
    fn new(norm: &LayerNorm) -> Result<Self> {
        let (gain, bias, eps) = norm.parts();
        Ok(Self { gain: gain.to_dtype(DType::F32)?.to_vec1()?, bias: bias.to_dtype(DType::F32)?.to_vec1()?, eps })
    }

    /// # Shapes
    /// - `x`: (rows, d_model) → (rows, d_model)
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        crate::ops::layer_norm::forward(x, &self.gain, &self.bias, self.eps)
    }
}

/// One decoder layer's weights (paper §3.1).
struct Layer {
    /// Self-attention's [W_Q | W_K | W_V].
    self_qkv: Projection,
    self_o: Projection,
    self_norm: NormParams,
    cross_q: Projection,
    /// Cross-attention's [W_K | W_V], applied to the memory once per batch.
    cross_kv: Projection,
    cross_o: Projection,
    cross_norm: NormParams,
    ffn_1: Projection,
    ffn_2: Projection,
    ffn_norm: NormParams,
}

/// The decoder's weights laid out for the hand-written step, made once per model.
pub struct FastDecoder {
    d_model: usize,
    heads: usize,
    vocab: usize,
    style: Norm,
    /// The target embedding, (vocab, d_model).
    embedding: Vec<f32>,
    /// (max_positions, d_model)
    positional: Vec<f32>,
    layers: Vec<Layer>,
    /// Only with pre-norm.
    final_norm: Option<NormParams>,
    /// The output projection transposed, (d_model, vocab).
    generator: Vec<f32>,
}

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

impl FastDecoder {
    /// Whether the hand-written step applies to `model`: weights on the CPU in f32, and the reference
    /// path not asked for ([`crate::ops::with_reference_path`]).
    pub fn applies(model: &Transformer) -> bool {
        let w = model.output_projection();
        crate::ops::fused(w) && w.dtype() == DType::F32
    }

    pub fn new(model: &Transformer) -> Result<Self> {
        let cfg = model.config();
        let one = |l: &Linear| Projection::concat(&[l]);
        let layers = model
            .decoder()
            .layers
            .iter()
            .map(|l| {
                let (s, c) = (&l.self_attn, &l.cross_attn);
                Ok(Layer {
                    self_qkv: Projection::concat(&[&s.w_q, &s.w_k, &s.w_v])?,
                    self_o: one(&s.w_o)?,
                    self_norm: NormParams::new(&l.self_attn_norm.norm)?,
                    cross_q: one(&c.w_q)?,
                    cross_kv: Projection::concat(&[&c.w_k, &c.w_v])?,
                    cross_o: one(&c.w_o)?,
                    cross_norm: NormParams::new(&l.cross_attn_norm.norm)?,
                    ffn_1: one(&l.ffn.w_1)?,
                    ffn_2: one(&l.ffn.w_2)?,
                    ffn_norm: NormParams::new(&l.ffn_norm.norm)?,
                })
            })
            .collect::<Result<_>>()?;
        let (vocab, d_model) = model.output_projection().dims2()?;
        let projection = f32s(model.output_projection())?;
        let mut generator = vec![0f32; d_model * vocab];
        for (v, row) in projection.chunks(d_model).enumerate() {
            for (i, &x) in row.iter().enumerate() {
                generator[i * vocab + v] = x;
            }
        }
        Ok(Self {
            d_model,
            heads: cfg.heads,
            vocab,
            style: cfg.norm,
            embedding: f32s(model.target_embedding())?,
            positional: f32s(model.positional_table())?,
            layers,
            final_norm: model.decoder().final_norm.as_ref().map(NormParams::new).transpose()?,
            generator,
        })
    }

    /// Starts decoding an encoded batch: each layer's cross-attention keys and values, per sentence.
    ///
    /// # Shapes
    /// - `memory`: (batch, src_len, d_model); `src_mask`: additive, (batch, 1, 1, src_len)
    pub fn start(&self, memory: &Tensor, src_mask: &Tensor) -> Result<FastSteps<'_>> {
        let (batch, src_len, d) = memory.dims3()?;
        if d != self.d_model {
            bail!("fast decoder: memory of width {d}, model of {}", self.d_model);
        }
        let memory = f32s(memory)?;
        let mask = f32s(&src_mask.broadcast_as((batch, 1, 1, src_len))?)?;
        let memory_kv =
            self.layers.iter().map(|l| l.cross_kv.forward(&memory, batch * src_len, false)).collect::<Result<_>>()?;
        Ok(FastSteps {
            w: self,
            memory_kv,
            mask,
            src_len,
            sentence: (0..batch).collect(),
            self_kv: vec![vec![]; self.layers.len()],
            starts: vec![],
            history: vec![],
            len: 0,
        })
    }
}

/// A batch being decoded by the hand-written step.
pub struct FastSteps<'a> {
    w: &'a FastDecoder,
    /// Per layer, the memory's cross-attention [keys | values], (sentences, src_len, 2·d_model).
    memory_kv: Vec<Vec<f32>>,
    /// The source mask, additive, (sentences, src_len).
    mask: Vec<f32>,
    src_len: usize,
    /// Each row's sentence.
    sentence: Vec<usize>,
    /// Per layer, the self-attention [keys | values] of every position decoded so far, one slot of
    /// 2·d_model each: position p's slots start at `starts[p]`, one per row of the batch at step p.
    self_kv: Vec<Vec<f32>>,
    starts: Vec<usize>,
    /// (rows, len): the slot of each row's ancestor at each position, relative to that position's start.
    history: Vec<u32>,
    /// Positions decoded so far.
    len: usize,
}

/// Rows per parallel task of the attention.
const ROWS_PER_TASK: usize = 8;

impl FastSteps<'_> {
    /// The step's input, x = Embedding(token)·√d_model + PE(t) (§3.4, §3.5), and position t's slots:
    /// they follow the earlier positions', row r writes slot r, and each row's history gains it.
    ///
    /// # Shapes
    /// - `tokens`: (rows) → x (rows, d_model)
    fn embed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let w = self.w;
        let (rows, d, t) = (tokens.len(), w.d_model, self.len);
        if rows != self.sentence.len() {
            bail!("decoding step: {rows} tokens for {} rows", self.sentence.len());
        }
        let max = w.positional.len() / d;
        if t + 1 > max {
            bail!("sequence of {} positions exceeds model.max_positions {max}", t + 1);
        }
        let (scale, pe) = ((d as f64).sqrt() as f32, &w.positional[t * d..(t + 1) * d]);
        let mut x = Vec::with_capacity(rows * d);
        for &token in tokens {
            let v = token as usize;
            if v >= w.vocab {
                bail!("decoding step: token {token} outside the vocabulary of {}", w.vocab);
            }
            x.extend(w.embedding[v * d..(v + 1) * d].iter().zip(pe).map(|(&e, &p)| e * scale + p));
        }
        self.starts.push(self.self_kv.first().map_or(0, |kv| kv.len() / (2 * d)));
        let mut history = Vec::with_capacity(rows * (t + 1));
        for r in 0..rows {
            history.extend_from_slice(&self.history[r * t..(r + 1) * t]);
            history.push(r as u32);
        }
        self.history = history;
        Ok(x)
    }
}

impl Steps for FastSteps<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<NextTokens> {
        let mut x = self.embed(tokens)?;
        let w = self.w;
        let (rows, d, t) = (tokens.len(), w.d_model, self.len);
        let (history, starts, positions) = (&self.history, &self.starts, t + 1);
        for (l, layer) in w.layers.iter().enumerate() {
            // Masked self-attention over the positions so far, through each row's history.
            x = residual(w.style, &layer.self_norm, x, |h| {
                let qkv = layer.self_qkv.forward(h, rows, false)?; // (rows, 3·d_model): [q | k | v]
                let cache = &mut self.self_kv[l];
                for row in qkv.chunks_exact(3 * d) {
                    cache.extend_from_slice(&row[d..]); // [k | v]
                }
                let cache = &self.self_kv[l];
                let query = |r: usize| &qkv[r * 3 * d..r * 3 * d + d];
                let kv = |r: usize, p: usize| {
                    let slot = starts[p] + history[r * positions + p] as usize;
                    &cache[slot * 2 * d..(slot + 1) * 2 * d]
                };
                let heads = attention(rows, d, w.heads, positions, query, kv, |_| None);
                layer.self_o.forward(&heads, rows, false)
            })?;
            // Encoder-decoder attention over the row's sentence.
            let (memory, mask, sentence, src_len) = (&self.memory_kv[l], &self.mask, &self.sentence, self.src_len);
            x = residual(w.style, &layer.cross_norm, x, |h| {
                let q = layer.cross_q.forward(h, rows, false)?;
                let query = |r: usize| &q[r * d..(r + 1) * d];
                let kv = |r: usize, j: usize| {
                    let slot = sentence[r] * src_len + j;
                    &memory[slot * 2 * d..(slot + 1) * 2 * d]
                };
                let mask_of = |r: usize| Some(&mask[sentence[r] * src_len..(sentence[r] + 1) * src_len]);
                let heads = attention(rows, d, w.heads, src_len, query, kv, mask_of);
                layer.cross_o.forward(&heads, rows, false)
            })?;
            x = residual(w.style, &layer.ffn_norm, x, |h| {
                layer.ffn_2.forward(&layer.ffn_1.forward(h, rows, true)?, rows, false)
            })?;
        }
        if let Some(norm) = &w.final_norm {
            x = norm.forward(&x);
        }
        // The pre-softmax projection (§3.4).
        let mut logits = vec![0f32; rows * w.vocab];
        let hidden = Mat::rows(&x, rows, d, d);
        let generator = Mat::rows(&w.generator, d, w.vocab, w.vocab);
        matmul(&mut logits, w.vocab, hidden, generator, false, threads_for(rows, w.vocab, d))?;
        self.len += 1;
        Ok(NextTokens::new(logits, w.vocab))
    }

    fn select(&mut self, rows: &[u32]) -> Result<()> {
        let (n, t) = (self.sentence.len(), self.len);
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= n) {
            bail!("decoding: row {bad} selected from {n} rows");
        }
        self.sentence = rows.iter().map(|&r| self.sentence[r as usize]).collect();
        let history = &self.history;
        self.history = rows.iter().flat_map(|&r| &history[r as usize * t..(r as usize + 1) * t]).copied().collect();
        Ok(())
    }
}

/// A residual connection around `f` with its LayerNorm: post-norm LayerNorm(x + f(x)), pre-norm
/// x + f(LayerNorm(x)) (no dropout: decoding is evaluation).
fn residual(
    style: Norm,
    norm: &NormParams,
    x: Vec<f32>,
    f: impl FnOnce(&[f32]) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    match style {
        Norm::Post => {
            let mut y = f(&x)?;
            y.iter_mut().zip(&x).for_each(|(y, &x)| *y += x);
            Ok(norm.forward(&y))
        }
        Norm::Pre => {
            let y = f(&norm.forward(&x))?;
            let mut x = x;
            x.iter_mut().zip(&y).for_each(|(x, &y)| *x += y);
            Ok(x)
        }
    }
}

/// Multi-head scaled dot-product attention of one query per row over `keys` positions (paper §3.2):
/// softmax(q_i k_iᵀ / √d_k + mask) v_i for every head i, written as Concat(head_1, …, head_h), in
/// parallel over rows.
///
/// `query(r)` is row r's query (d_model), `kv(r, p)` its key and value at position p, [k | v]
/// (2·d_model), `mask(r)` its additive mask over the positions, if any.
///
/// # Shapes
/// - returns (rows, d_model)
fn attention<'a>(
    rows: usize,
    d_model: usize,
    heads: usize,
    keys: usize,
    query: impl Fn(usize) -> &'a [f32] + Sync,
    kv: impl Fn(usize, usize) -> &'a [f32] + Sync,
    mask: impl Fn(usize) -> Option<&'a [f32]> + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * d_model];
    out.par_chunks_mut(d_model * ROWS_PER_TASK).enumerate().for_each(|(task, chunk)| {
        let mut scores = vec![0f32; heads * keys];
        simd!(|| {
            for (i, out) in chunk.chunks_mut(d_model).enumerate() {
                let r = task * ROWS_PER_TASK + i;
                attend_row(query(r), |p| kv(r, p), mask(r), heads, &mut scores, out);
            }
        })
    });
    out
}

/// One row's attention over `scores.len() / heads` positions, all heads; adds into `out` (zeros).
#[inline(always)]
fn attend_row<'a>(
    q: &[f32],
    kv: impl Fn(usize) -> &'a [f32],
    mask: Option<&[f32]>,
    heads: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (d, keys) = (q.len(), scores.len() / heads);
    let d_k = d / heads;
    let scale = (1.0 / (d_k as f64).sqrt()) as f32;
    for p in 0..keys {
        let k = &kv(p)[..d];
        let m = mask.map_or(0.0, |m| m[p]);
        for (h, (q, k)) in q.chunks_exact(d_k).zip(k.chunks_exact(d_k)).enumerate() {
            scores[h * keys + p] = dot(q, k) * scale + m;
        }
    }
    for s in scores.chunks_exact_mut(keys) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in s.iter_mut() {
            *x = exp_f32(*x - max);
            sum += *x;
        }
        s.iter_mut().for_each(|x| *x /= sum);
    }
    for p in 0..keys {
        let v = &kv(p)[d..2 * d];
        for (h, (o, v)) in out.chunks_exact_mut(d_k).zip(v.chunks_exact(d_k)).enumerate() {
            let weight = scores[h * keys + p];
            o.iter_mut().zip(v).for_each(|(o, &v)| *o += weight * v);
        }
    }
}

/// Σ a_i b_i in 16 partial sums (so that the loop vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let ((a_chunks, a_rest), (b_chunks, b_rest)) = (a.as_chunks::<L>(), b.as_chunks::<L>());
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::data::tokenizer::Specials;
    use crate::decode::steps::ReferenceSteps;
    use crate::decode::DecodeContext;
    use crate::model::build;
    use crate::rng::Rng;
    use candle_core::Device;

    /// The hand-written step equals the model's tensor-op step, step after step, through beam-like
    /// reorders (rows kept twice, rows dropped, the order changed), on the Multi30k model's shapes (d_model
    /// 256, 4 heads of 64, d_ff 1024, three decoder layers) with a vocabulary of 1,000, and sources of
    /// different lengths padded in one batch; post-norm and pre-norm.
    #[test]
    fn fast_steps_equal_the_reference_steps() {
        const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };
        for norm in [Norm::Post, Norm::Pre] {
            let cfg = ModelConfig {
                encoder_layers: 2,
                decoder_layers: 3,
                heads: 4,
                d_model: 256,
                d_ff: 1024,
                dropout: 0.0,
                vocab_size: 1000,
                max_positions: 64,
                norm,
                ..ModelConfig::default()
            };
            let model = build(&cfg, 7, &Device::Cpu).unwrap().0;
            let mut rng = Rng::seed(3);
            let srcs: Vec<Vec<u32>> =
                [17, 3, 29, 8, 12].iter().map(|&n| (0..n).map(|_| 4 + rng.below(996) as u32).collect()).collect();
            let srcs: Vec<&[u32]> = srcs.iter().map(Vec::as_slice).collect();
            let ctx = DecodeContext::new(&model, SP, 50);
            let (memory, mask) = ctx.encode_sources(&srcs).unwrap();
            let decoder = FastDecoder::new(&model).unwrap();
            let mut fast = decoder.start(&memory, &mask).unwrap();
            let mut reference = ReferenceSteps::new(&model, &memory, mask).unwrap();
            let mut rows = srcs.len();
            let mut largest = 0f32;
            for step in 0..12 {
                let tokens: Vec<u32> = (0..rows).map(|_| rng.below(1000) as u32).collect();
                let (a, b) = (fast.step(&tokens).unwrap(), reference.step(&tokens).unwrap());
                assert_eq!(a.rows(), rows);
                for r in 0..rows {
                    for v in 0..1000 {
                        let (x, y) = (a.log_prob(r, v), b.log_prob(r, v));
                        largest = largest.max(y.abs());
                        assert!((x - y).abs() < 1e-4, "{norm:?}, step {step}, row {r}, token {v}: {x} vs {y}");
                    }
                }
                let keep: Vec<u32> = match step % 3 {
                    0 => (0..rows as u32).flat_map(|r| [r, r]).take(24).collect(),
                    1 => (0..rows as u32).rev().filter(|r| r % 3 != 1).collect(),
                    _ => (0..rows.max(4)).map(|_| rng.below(rows) as u32).collect(),
                };
                fast.select(&keep).unwrap();
                reference.select(&keep).unwrap();
                rows = keep.len();
            }
            assert!(largest > 1.0, "log-probabilities too flat to compare");
            assert!(fast.select(&[rows as u32]).is_err(), "a row outside the batch must be refused");
        }
    }
}
