//! Multi-head scaled dot-product attention as one op with its own backward pass (paper §3.2.1-3.2.2):
//! for every (batch row, head) the scores Q_h K_hᵀ/√d_k, the additive mask, the softmax and the weighted
//! values P V_h, written straight into the concatenated (batch, q_len, d_model) output, for CPU tensors
//! in f32 or f64.
//!
//! The reference path ([`crate::model::attention::MultiHeadAttention::forward_reference`]) splits and
//! merges heads with copies, runs one small product per (batch, head) after another, and adds a dozen
//! autograd nodes per attention, each with its zero-filled gradient buffer. This op reads each head's
//! columns in place, works on the batch rows in parallel, and is one node.
//! The backward pass reads P from the forward pass when the caller kept it (the training step does; it
//! is small: q_len × k_len per head), or computes it again:
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(dP ⊙ P)) / √d_k, dQ = dS K, dK = dSᵀ Q.
//!
//! The products run per (batch row, head) through [`super::tile`]'s register-blocked kernel: the scores
//! and ∂P against a transposed copy of the head's K or V, the rest on the heads' columns in place. A
//! general matrix product (the `gemm` crate, which the first version called per (batch row, head)) packs
//! its operands and dispatches per call, which costs more than the arithmetic at these sizes (about
//! 25 × 25 × 64 for Multi30k), and left the attention at 16% of a training step for 2% of its FLOPs;
//! the second version's `y += αx` per (query, key) pair was still 12.5% (docs/PERFORMANCE.md).
//! No weights are returned: callers that need them (pictures, `nmt explain`, incremental decoding) take
//! the reference path.

use super::cpu::{contiguous_slice, lane_sum2, simd, tensors3, with_float_slices, FloatSlices, Real};
use super::softmax::softmax_row;
use super::tile::{product_add, Sizes, Strided};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

pub struct FusedAttention {
    pub heads: usize,
    /// The additive mask, (batch, q_len, k_len) row-major, shared by the heads; None for no mask.
    pub mask: Option<Vec<f64>>,
}

/// The sizes of one call: batch rows, query and key lengths, d_model, d_k.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub d_model: usize,
    pub d_k: usize,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused attention")
}

/// Row `i` of head `h` in a (rows, d_model) row-major block: its d_k elements.
#[inline(always)]
fn head_row<T>(x: &[T], i: usize, h: usize, dims: Dims) -> &[T] {
    let start = i * dims.d_model + h * dims.d_k;
    &x[start..start + dims.d_k]
}

/// The key count of the transposed heads and the score rows is rounded up to a multiple of this (one
/// 512-bit register of f32), so that the products over keys have no leftover columns.
const KEY_BLOCK: usize = 16;

/// The (k_len, d_k) columns of head `h` in a (k_len, d_model) row-major block, transposed into `out`: d_k
/// rows of `k_pad` elements. Columns k_len.. are not written (the caller keeps them at zero).
#[inline(always)]
fn transpose_head<T: Copy>(x: &[T], h: usize, dims: Dims, out: &mut [T], k_pad: usize) {
    for j in 0..dims.k_len {
        for (c, &v) in head_row(x, j, h, dims).iter().enumerate() {
            out[c * k_pad + j] = v;
        }
    }
}

/// Head `h` of a (rows, d_model) row-major block as a product operand (rows × d_k, rows d_model apart).
#[inline(always)]
fn head<T>(x: &[T], h: usize, dims: Dims) -> &[T] {
    &x[h * dims.d_k..]
}

/// [`head`], mutable, as a product's destination.
#[inline(always)]
fn head_mut<T>(x: &mut [T], h: usize, dims: Dims) -> &mut [T] {
    &mut x[h * dims.d_k..]
}

/// Scratch space of one batch row, reused over its heads.
struct Scratch<T> {
    /// k_pad: the key count rounded up to [`KEY_BLOCK`].
    k_pad: usize,
    /// A head of K or V transposed: d_k rows of k_pad (columns k_len.. stay zero).
    transposed: Vec<T>,
    /// Q_h K_hᵀ (or ∂O_h V_hᵀ): q_len rows of k_pad.
    scores: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(dims: Dims) -> Self {
        let k_pad = dims.k_len.next_multiple_of(KEY_BLOCK);
        Scratch { k_pad, transposed: vec![T::zero(); dims.d_k * k_pad], scores: vec![T::zero(); dims.q_len * k_pad] }
    }

    /// `scores` = X_h Y_hᵀ for head `h` of X (q_len, d_model) and Y (k_len, d_model).
    #[inline(always)]
    fn head_products(&mut self, x: &[T], y: &[T], h: usize, dims: Dims) {
        transpose_head(y, h, dims, &mut self.transposed, self.k_pad);
        self.scores.fill(T::zero());
        let sizes = Sizes { rows: dims.q_len, inner: dims.d_k, cols: self.k_pad };
        let x = Strided::rows(head(x, h, dims), dims.d_model);
        product_add(x, &self.transposed, self.k_pad, &mut self.scores, self.k_pad, sizes);
    }
}

impl FusedAttention {
    /// P = softmax(Q_h K_hᵀ / √d_k + mask) of batch row `b`, head `h`, into `p` (q_len × k_len); `q` and `k`
    /// are batch row `b`'s (q_len, d_model) and (k_len, d_model) blocks.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn probabilities<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        b: usize,
        h: usize,
        dims: Dims,
        p: &mut [T],
        s: &mut Scratch<T>,
    ) {
        let Dims { q_len, k_len, .. } = dims;
        let scale = T::from_f64(1.0 / (dims.d_k as f64).sqrt());
        let mask = self.mask.as_deref().map(|m| &m[b * q_len * k_len..(b + 1) * q_len * k_len]);
        s.head_products(q, k, h, dims);
        for (i, (row, scores)) in p.chunks_mut(k_len).zip(s.scores.chunks(s.k_pad)).enumerate() {
            match mask {
                Some(m) => {
                    for ((x, &s), &m) in row.iter_mut().zip(scores).zip(&m[i * k_len..(i + 1) * k_len]) {
                        *x = T::from_f64((s * scale).to_f64() + m);
                    }
                }
                None => {
                    for (x, &s) in row.iter_mut().zip(scores) {
                        *x = s * scale;
                    }
                }
            }
            softmax_row(row);
        }
    }

    /// Concat(head_1, …, head_h), (batch, q_len, d_model), from Q (batch, q_len, d_model) and K, V
    /// (batch, k_len, d_model).
    pub(crate) fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T], dims: Dims) -> Result<Vec<T>> {
        self.forward_into(q, k, v, dims, None)
    }

    /// [`Self::forward`] and every (batch row, head)'s P, (batch, heads, q_len, k_len), which
    /// [`Self::backward`] then reads instead of computing it again (the training step keeps it: it is
    /// small, and recomputing it was a third of the backward pass).
    pub(crate) fn forward_keeping_probs<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        dims: Dims,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let mut probs = vec![T::zero(); dims.batch * self.heads * dims.q_len * dims.k_len];
        let out = self.forward_into(q, k, v, dims, Some(&mut probs))?;
        Ok((out, probs))
    }

    /// [`Self::forward`], writing P into `probs` when given.
    fn forward_into<T: Real>(&self, q: &[T], k: &[T], v: &[T], dims: Dims, probs: Option<&mut [T]>) -> Result<Vec<T>> {
        let Dims { q_len, k_len, d_model, d_k, .. } = dims;
        let (q_size, k_size) = (q_len * d_model, k_len * d_model);
        let (qk, row_probs) = (q_len * k_len, self.heads * q_len * k_len);
        let mut out = vec![T::zero(); dims.batch * q_size];
        // Batch row b into out_b, with P for all its heads in p_b.
        let row = |b: usize, out_b: &mut [T], p_b: &mut [T]| {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let mut s = Scratch::new(dims);
            simd!(|| {
                for (h, p) in p_b.chunks_mut(qk).enumerate() {
                    self.probabilities(qb, kb, b, h, dims, p, &mut s);
                    // head_h = P V_h
                    let sizes = Sizes { rows: q_len, inner: k_len, cols: d_k };
                    let (p, v_h) = (Strided::rows(&*p, k_len), head(vb, h, dims));
                    product_add(p, v_h, d_model, head_mut(out_b, h, dims), d_model, sizes);
                }
            })
        };
        match probs {
            Some(probs) => out
                .par_chunks_mut(q_size)
                .zip(probs.par_chunks_mut(row_probs))
                .enumerate()
                .for_each(|(b, (out_b, p_b))| row(b, out_b, p_b)),
            None => out
                .par_chunks_mut(q_size)
                .enumerate()
                .for_each(|(b, out_b)| row(b, out_b, &mut vec![T::zero(); row_probs])),
        }
        Ok(out)
    }

    /// (∂Q, ∂K, ∂V) from the gradient of the concatenated output; P is read from `probs` when given
    /// ([`Self::forward_keeping_probs`]), computed again otherwise.
    #[allow(clippy::type_complexity)]
    pub(crate) fn backward<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        d_out: &[T],
        dims: Dims,
        probs: Option<&[T]>,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims { q_len, k_len, d_model, d_k, .. } = dims;
        let (q_size, k_size, qk) = (q_len * d_model, k_len * d_model, q_len * k_len);
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        let scale = T::from_f64(1.0 / (d_k as f64).sqrt());
        let rows = dq.par_chunks_mut(q_size).zip(dk.par_chunks_mut(k_size)).zip(dv.par_chunks_mut(k_size));
        rows.enumerate().for_each(|(b, ((dq_b, dk_b), dv_b))| {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let dob = &d_out[b * q_size..(b + 1) * q_size];
            let saved = probs.map(|p| &p[b * self.heads * qk..(b + 1) * self.heads * qk]);
            let mut recomputed = vec![T::zero(); if saved.is_some() { 0 } else { qk }];
            let mut ds = vec![T::zero(); qk];
            let mut s = Scratch::new(dims);
            simd!(|| {
                for h in 0..self.heads {
                    let p: &[T] = match saved {
                        Some(saved) => &saved[h * qk..(h + 1) * qk],
                        None => {
                            self.probabilities(qb, kb, b, h, dims, &mut recomputed, &mut s);
                            &recomputed
                        }
                    };
                    // ∂P = ∂O_h V_hᵀ; ∂S_ij = P_ij (∂P_ij - Σ_j' P_ij' ∂P_ij') / √d_k
                    s.head_products(dob, vb, h, dims);
                    for ((ds_i, p_i), dp_i) in ds.chunks_mut(k_len).zip(p.chunks(k_len)).zip(s.scores.chunks(s.k_pad)) {
                        let row_dot = T::from_f64(lane_sum2(p_i, dp_i, |p, d| (p * d).to_f64()));
                        for ((ds_ij, &p_ij), &dp_ij) in ds_i.iter_mut().zip(p_i).zip(dp_i) {
                            *ds_ij = p_ij * (dp_ij - row_dot) * scale;
                        }
                    }
                    // ∂V_h += Pᵀ ∂O_h; ∂Q_h += ∂S K_h; ∂K_h += ∂Sᵀ Q_h
                    let by_key = Sizes { rows: k_len, inner: q_len, cols: d_k };
                    let by_query = Sizes { rows: q_len, inner: k_len, cols: d_k };
                    let (do_h, k_h, q_h) = (head(dob, h, dims), head(kb, h, dims), head(qb, h, dims));
                    let (p_t, ds_rows, ds_t) = (
                        Strided::transposed(p, k_len),
                        Strided::rows(&ds[..], k_len),
                        Strided::transposed(&ds[..], k_len),
                    );
                    product_add(p_t, do_h, d_model, head_mut(dv_b, h, dims), d_model, by_key);
                    product_add(ds_rows, k_h, d_model, head_mut(dq_b, h, dims), d_model, by_query);
                    product_add(ds_t, q_h, d_model, head_mut(dk_b, h, dims), d_model, by_key);
                }
            })
        });
        Ok((dq, dk, dv))
    }

    fn dims(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
        let (batch, q_len, d_model) = q.shape().dims3()?;
        let (kb, k_len, kd) = k.shape().dims3()?;
        let ok = self.heads > 0
            && d_model % self.heads == 0
            && kb == batch
            && kd == d_model
            && v.dims() == k.dims()
            && q_len > 0
            && k_len > 0
            && d_model > 0;
        let mask_ok = self.mask.as_ref().is_none_or(|m| m.len() == batch * q_len * k_len);
        if !ok || !mask_ok {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} do not fit {} heads",
                q.dims(),
                k.dims(),
                v.dims(),
                self.heads
            );
        }
        Ok(Dims { batch, q_len, k_len, d_model, d_k: d_model / self.heads })
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    /// q: (batch, q_len, d_model); k, v: (batch, k_len, d_model) → (batch, q_len, d_model).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(l1, l2, l3)?;
        let out = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.forward::<f32>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, dims)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.forward::<f64>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, dims)?)
            }
            other => candle_core::bail!("fused attention: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(q.layout(), k.layout(), v.layout())?;
        let (dq, dk, dv) = with_float_slices("fused attention", &[q, k, v, d_out], |data| match data {
            FloatSlices::F32(s) => tensors3(self.backward::<f32>(s[0], s[1], s[2], s[3], dims, None)?),
            FloatSlices::F64(s) => tensors3(self.backward::<f64>(s[0], s[1], s[2], s[3], dims, None)?),
        })?;
        let (dq, dk, dv) = (dq.reshape(q.shape())?, dk.reshape(k.shape())?, dv.reshape(v.shape())?);
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
