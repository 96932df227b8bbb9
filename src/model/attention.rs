//! Scaled dot-product attention and multi-head attention (paper §3.2.1, §3.2.2).
//!
//! Attention(Q, K, V) = softmax(QKᵀ / √d_k) V, and
//! MultiHead(Q, K, V) = Concat(head_1, …, head_h) W_O with head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i).
//! The h projections of each kind are stored as one (d_model, d_model) matrix whose rows i·d_k..(i+1)·d_k
//! belong to head i. Softmax is our fused op with a backward pass on CPU ([`crate::ops::softmax`]), and
//! candle's differentiable `ops::softmax` elsewhere (not candle's `softmax_last_dim`, which has no backward
//! pass in candle 0.11).

use super::init::xavier_uniform;
use super::linear::{linear, Linear};
use crate::config::ModelConfig;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// softmax(QKᵀ/√d_k + mask) V.
///
/// # Shapes
/// - `q`: (batch, heads, q_len, d_k); `k`, `v`: (batch, heads, k_len, d_k)
/// - `mask`: additive, broadcastable to (batch, heads, q_len, k_len)
/// - returns (output (batch, heads, q_len, d_k), weights (batch, heads, q_len, k_len))
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let d_k = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (d_k as f64).sqrt())?; // (batch, heads, q_len, k_len)
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    let weights = match scores.dtype() {
        // Mixed precision: the softmax in f32, its weights back in the activations' dtype.
        DType::BF16 | DType::F16 => crate::ops::softmax::softmax(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?,
        _ => crate::ops::softmax::softmax(&scores)?,
    };
    Ok((weights.matmul(v)?, weights))
}

/// Multi-head attention with projections `w_q`, `w_k`, `w_v` and `w_o` (each with a bias).
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    pub(crate) w_q: Linear,
    pub(crate) w_k: Linear,
    pub(crate) w_v: Linear,
    pub(crate) w_o: Linear,
    pub(crate) heads: usize,
    pub(crate) d_k: usize,
}

/// Keys and values already projected and split into heads, kept between decoding steps: the growing
/// self-attention cache of the decoder, or the encoder memory's cross-attention keys and values (computed
/// once per sentence).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// (batch, heads, len, d_k)
    pub k: Tensor,
    /// (batch, heads, len, d_k)
    pub v: Tensor,
}

impl KvCache {
    /// Keeps batch rows `rows` in that order (beam reordering, dropping finished sentences).
    ///
    /// # Shapes
    /// - `rows`: (new_batch) u32
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self { k: self.k.index_select(rows, 0)?, v: self.v.index_select(rows, 0)? })
    }
}

/// The attention output and the weights that produced it (kept for pictures and tests).
pub struct AttentionOutput {
    /// (batch, q_len, d_model)
    pub output: Tensor,
    /// (batch, heads, q_len, k_len); None from the fused op, which never materialises them.
    pub weights: Option<Tensor>,
}

impl MultiHeadAttention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let proj = |name: &str| linear(d, d, xavier_uniform(d, d), vb.pp(name));
        Ok(Self {
            w_q: proj("w_q")?,
            w_k: proj("w_k")?,
            w_v: proj("w_v")?,
            w_o: proj("w_o")?,
            heads: cfg.heads,
            d_k: cfg.d_k(),
        })
    }

    /// (batch, len, d_model) → (batch, heads, len, d_k)
    pub(super) fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, len, _) = x.dims3()?;
        x.reshape((batch, len, self.heads, self.d_k))? // (batch, len, heads, d_k)
            .transpose(1, 2)? // (batch, heads, len, d_k)
            .contiguous()
    }

    /// Attends from `query` to `memory` (the same tensor for self-attention).
    ///
    /// # Shapes
    /// - `query`: (batch, q_len, d_model); `memory`: (batch, k_len, d_model)
    /// - `mask`: additive, broadcastable to (batch, heads, q_len, k_len)
    ///
    /// On CPU this runs the fused op of [`crate::ops::attention`] (no weights returned); elsewhere, and
    /// as the reference, [`Self::forward_reference`].
    pub fn forward(&self, query: &Tensor, memory: &Tensor, mask: Option<&Tensor>) -> Result<AttentionOutput> {
        if !crate::ops::fused(query) {
            return self.forward_reference(query, memory, mask);
        }
        let (batch, q_len, _) = query.dims3()?;
        let k_len = memory.dim(1)?;
        let mask = match mask.map(|m| m.broadcast_as((batch, 1, q_len, k_len))).transpose() {
            Ok(m) => m.map(|m| m.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()).transpose()?,
            Err(_) => return self.forward_reference(query, memory, mask), // a mask that differs per head
        };
        let op = crate::ops::attention::FusedAttention { heads: self.heads, mask };
        let (q, k, v) = (self.w_q.forward(query)?, self.w_k.forward(memory)?, self.w_v.forward(memory)?);
        let concat = q.apply_op3(&k, &v, op)?; // Concat(head_1, …, head_h), (batch, q_len, d_model)
        Ok(AttentionOutput { output: self.w_o.forward(&concat)?, weights: None })
    }

    /// The reference path from tensor ops: heads split, [`scaled_dot_product_attention`], heads merged.
    /// It also returns the attention weights.
    ///
    /// # Shapes
    /// - `query`: (batch, q_len, d_model); `memory`: (batch, k_len, d_model)
    pub fn forward_reference(&self, query: &Tensor, memory: &Tensor, mask: Option<&Tensor>) -> Result<AttentionOutput> {
        self.attend(query, &self.project_kv(memory)?, mask)
    }

    /// Projects `memory` to keys and values: W_K and W_V, split into heads.
    ///
    /// # Shapes
    /// - `memory`: (batch, k_len, d_model) → k, v: (batch, heads, k_len, d_k)
    pub fn project_kv(&self, memory: &Tensor) -> Result<KvCache> {
        Ok(KvCache {
            k: self.split_heads(&self.w_k.forward(memory)?)?,
            v: self.split_heads(&self.w_v.forward(memory)?)?,
        })
    }

    /// Incremental self-attention for one new position: appends its keys and values to `cache` (creating
    /// it on the first step), then attends from it to every position so far. No mask is needed: the
    /// cache holds only past and present positions.
    ///
    /// # Shapes
    /// - `x`: (batch, 1, d_model) → output (batch, 1, d_model)
    pub fn forward_incremental(&self, x: &Tensor, cache: &mut Option<KvCache>) -> Result<AttentionOutput> {
        let new = self.project_kv(x)?;
        let kv = match cache.take() {
            None => new,
            Some(old) => KvCache { k: Tensor::cat(&[&old.k, &new.k], 2)?, v: Tensor::cat(&[&old.v, &new.v], 2)? },
        };
        let out = self.attend(x, &kv, None)?;
        *cache = Some(kv);
        Ok(out)
    }

    /// Attends from `query` to already projected keys and values.
    ///
    /// # Shapes
    /// - `query`: (batch, q_len, d_model); `kv`: (batch, heads, k_len, d_k)
    pub fn attend(&self, query: &Tensor, kv: &KvCache, mask: Option<&Tensor>) -> Result<AttentionOutput> {
        let (batch, q_len, d_model) = query.dims3()?;
        let q = self.split_heads(&self.w_q.forward(query)?)?;
        let (heads_out, weights) = scaled_dot_product_attention(&q, &kv.k, &kv.v, mask)?;
        let concat = heads_out
            .transpose(1, 2)? // (batch, q_len, heads, d_k)
            .reshape((batch, q_len, d_model))?; // Concat(head_1, …, head_h)
        Ok(AttentionOutput { output: self.w_o.forward(&concat)?, weights: Some(weights) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::ParamStore;
    use crate::rng::Rng;
    use candle_core::{Device, IndexOp};

    fn random(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn sdpa_equals_a_naive_loop_reference() {
        let mut rng = Rng::seed(11);
        let (b, h, tq, tk, dk) = (2, 3, 4, 5, 8);
        let q = random(&mut rng, &[b, h, tq, dk]);
        let k = random(&mut rng, &[b, h, tk, dk]);
        let v = random(&mut rng, &[b, h, tk, dk]);
        let (out, w) = scaled_dot_product_attention(&q, &k, &v, None).unwrap();
        for bi in 0..b {
            for hi in 0..h {
                let qm = q.i((bi, hi)).unwrap().to_vec2::<f32>().unwrap();
                let km = k.i((bi, hi)).unwrap().to_vec2::<f32>().unwrap();
                let vm = v.i((bi, hi)).unwrap().to_vec2::<f32>().unwrap();
                let om = out.i((bi, hi)).unwrap().to_vec2::<f32>().unwrap();
                let wm = w.i((bi, hi)).unwrap().to_vec2::<f32>().unwrap();
                for i in 0..tq {
                    let logits: Vec<f32> = (0..tk)
                        .map(|j| (0..dk).map(|c| qm[i][c] * km[j][c]).sum::<f32>() / (dk as f32).sqrt())
                        .collect();
                    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
                    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                    let z: f32 = exps.iter().sum();
                    for j in 0..tk {
                        assert!((wm[i][j] - exps[j] / z).abs() < 1e-5);
                    }
                    for c in 0..dk {
                        let expect: f32 = (0..tk).map(|j| exps[j] / z * vm[j][c]).sum();
                        assert!((om[i][c] - expect).abs() < 1e-5, "{} vs {expect}", om[i][c]);
                    }
                }
            }
        }
    }

    #[test]
    fn multi_head_equals_concatenated_single_heads_projected_by_w_o() {
        let cfg = ModelConfig { d_model: 8, heads: 2, ..ModelConfig::default() };
        let store = ParamStore::new(5, &Device::Cpu);
        let vb = store.var_builder();
        let mha = MultiHeadAttention::new(&cfg, vb.pp("attn")).unwrap();
        let mut rng = Rng::seed(2);
        let x = random(&mut rng, &[1, 3, 8]);
        let m = random(&mut rng, &[1, 4, 8]);
        let got = mha.forward(&x, &m, None).unwrap().output;
        // Reference: each head with its own slice of W_Q, W_K, W_V, then concat and W_O.
        let t = store.tensors();
        let lin = |name: &str, input: &Tensor, rows: std::ops::Range<usize>| {
            let w = t[&format!("attn.{name}.weight")].narrow(0, rows.start, rows.len()).unwrap();
            let b = t[&format!("attn.{name}.bias")].narrow(0, rows.start, rows.len()).unwrap();
            input.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap()
        };
        let mut heads = vec![];
        for i in 0..2 {
            let r = i * 4..(i + 1) * 4;
            let q = lin("w_q", &x, r.clone()).unsqueeze(1).unwrap();
            let k = lin("w_k", &m, r.clone()).unsqueeze(1).unwrap();
            let v = lin("w_v", &m, r).unsqueeze(1).unwrap();
            heads.push(scaled_dot_product_attention(&q, &k, &v, None).unwrap().0.squeeze(1).unwrap());
        }
        let concat = Tensor::cat(&heads, 2).unwrap();
        let expect = lin("w_o", &concat, 0..8);
        let diff = (got - expect).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f32>().unwrap();
        assert!(diff < 1e-5, "max diff {diff}");
    }

    #[test]
    fn masked_keys_get_zero_weight() {
        let mut rng = Rng::seed(4);
        let q = random(&mut rng, &[1, 1, 2, 4]);
        let k = random(&mut rng, &[1, 1, 3, 4]);
        let mask = Tensor::new(&[0.0f32, 0.0, crate::model::mask::MASKED], &Device::Cpu).unwrap();
        let (_, w) = scaled_dot_product_attention(&q, &k, &k, Some(&mask)).unwrap();
        let w = w.i((0, 0)).unwrap().to_vec2::<f32>().unwrap();
        assert!(w.iter().all(|row| row[2] == 0.0 && (row[0] + row[1] - 1.0).abs() < 1e-6));
    }

    /// The fused softmax equals candle's `ops::softmax` in value and gradient, with masked entries: to
    /// rounding in f64, and to f32 precision in f32 (the dtype training uses).
    #[test]
    fn fused_softmax_equals_the_reference_in_value_and_gradient() {
        let mut rng = Rng::seed(8);
        // 16,800 scores: rows of 70 over several parallel tasks of 4,096 elements.
        let shape = (2, 3, 40, 70);
        let n = 2 * 3 * 40 * 70;
        let data: Vec<f64> = (0..n).map(|i| if i % 9 == 4 { -1e9 } else { 4.0 * rng.normal() as f64 }).collect();
        let probe: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        for (dtype, tolerance) in [(candle_core::DType::F64, 1e-14), (candle_core::DType::F32, 1e-6)] {
            let as_dtype = |v: &[f64]| Tensor::from_slice(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let x = candle_core::Var::from_tensor(&as_dtype(&data)).unwrap();
            let fused = crate::ops::softmax::softmax(&x).unwrap();
            let reference = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
            let max_diff = |a: &Tensor, b: &Tensor| {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                d.to_dtype(candle_core::DType::F64).unwrap().to_vec0::<f64>().unwrap()
            };
            assert!(max_diff(&fused, &reference) < tolerance, "{dtype:?}");
            // A loss that weights every output differently, so that the gradient is not trivially zero.
            let probe = as_dtype(&probe);
            let ga = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
            let gb = (reference * &probe).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
            let zero = gb.zeros_like().unwrap();
            let scale = max_diff(&gb, &zero);
            assert!(scale > 1e-2 && max_diff(&ga, &gb) < tolerance * scale, "{dtype:?}: gradient differs");
        }
    }

    /// The fused multi-head attention equals the reference path in value and in the gradients of its
    /// inputs and of all four projections, to rounding in f64 and to f32 precision in f32 (where its
    /// products use fused multiply-adds and its softmax `exp_f32`): self-attention with a padding mask,
    /// causal self-attention and cross-attention to a longer memory, on batches large enough to spread
    /// over several threads, with every block shape of [`crate::ops::tile`]: d_k 20 (a 16-column block
    /// and 4 left over), 21 (none full) and 64 (two 32-column blocks); 14 keys (one 16-key block), 30 (a
    /// 32-key block) and 37 (32 + 16, partly padding); query counts that leave 1, 2 or 3 rows after the
    /// 4-row blocks. The fused gradients repeat bit for bit.
    #[test]
    fn fused_attention_equals_the_reference_in_value_and_gradient() {
        use crate::model::mask::{causal_mask, padding_mask};
        use candle_core::{DType, Var};
        let shapes = [(80, 13, 9, 14), (84, 3, 23, 37), (256, 2, 26, 30)]; // (d_model, batch, q_len, k_len), 4 heads
        let cases = [(DType::F64, 1e-10), (DType::F32, 1e-4)];
        for ((d_model, batch, q_len, k_len), (dtype, tolerance)) in
            shapes.into_iter().flat_map(|s| cases.map(|c| (s, c)))
        {
            let cfg = ModelConfig { d_model, heads: 4, ..ModelConfig::default() };
            let store = ParamStore::with_dtype(6, dtype, &Device::Cpu);
            let mha = MultiHeadAttention::new(&cfg, store.var_builder().pp("attn")).unwrap();
            let mut rng = Rng::seed(7);
            let mut var =
                |shape: &[usize]| Var::from_tensor(&random(&mut rng, shape).to_dtype(dtype).unwrap()).unwrap();
            let x = var(&[batch, q_len, d_model]);
            let memory = var(&[batch, k_len, d_model]);
            let ids: Vec<u32> =
                (0..batch * k_len).map(|i| if i % k_len >= k_len - (i / k_len) % 4 { 0 } else { 5 }).collect();
            let pad = padding_mask(&Tensor::from_vec(ids, (batch, k_len), &Device::Cpu).unwrap(), 0).unwrap();
            let x_ids: Vec<u32> =
                (0..batch * q_len).map(|i| if i % q_len >= q_len - (i / q_len) % 3 { 0 } else { 5 }).collect();
            let x_pad = padding_mask(&Tensor::from_vec(x_ids, (batch, q_len), &Device::Cpu).unwrap(), 0).unwrap();
            let causal = causal_mask(q_len, &Device::Cpu).unwrap();
            let probe = random(&mut rng, &[batch, q_len, d_model]).to_dtype(dtype).unwrap();
            let vars = store.vars();
            for (name, memory, mask) in [
                ("self, padding", x.as_tensor(), &x_pad),
                ("self, causal", x.as_tensor(), &causal),
                ("cross", memory.as_tensor(), &pad),
            ] {
                let run = || {
                    let out = mha.forward(x.as_tensor(), memory, Some(mask)).unwrap().output;
                    let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut all = vec![out, grads.get(&x).unwrap().clone()];
                    if !std::ptr::eq(memory, x.as_tensor()) {
                        all.push(grads.get(memory).unwrap().clone());
                    }
                    all.extend(vars.iter().map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone()));
                    all
                };
                let (fused, reference) = (run(), crate::ops::with_reference_path(run));
                for (i, (a, b)) in fused.iter().zip(&reference).enumerate() {
                    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
                    let diff = diff.to_vec0::<f64>().unwrap();
                    assert!(diff < tolerance, "{dtype:?}, {name}: tensor {i} differs by {diff}");
                }
                let again = run();
                for (a, b) in fused.iter().zip(&again) {
                    let f64s =
                        |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                    assert_eq!(f64s(a), f64s(b), "{dtype:?}, {name}: not deterministic");
                }
            }
        }
    }
}
