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
//! The products are written by hand, compiled for the CPU's widest vectors
//! ([`simd!`](super::cpu::simd)), all as `y += αx`: the scores (and ∂P) over the keys of a transposed
//! copy of the head's K (and V), the rest over one head's d_k contiguous elements. A general matrix
//! product (the `gemm` crate, which the first version called per (batch row, head)) packs its operands
//! and dispatches per call, which costs more than the arithmetic at these sizes (about 25 × 25 × 64 for
//! Multi30k), and left the attention at 16% of a training step for 2% of its FLOPs (docs/PERFORMANCE.md).
//! No weights are returned: callers that need them (pictures, `nmt explain`, incremental decoding) take
//! the reference path.

use super::cpu::{contiguous_slice, lane_sum2, simd, tensors3, with_float_slices, FloatSlices, Real};
use super::softmax::softmax_row;
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

/// [`head_row`], mutable.
#[inline(always)]
fn head_row_mut<T>(x: &mut [T], i: usize, h: usize, dims: Dims) -> &mut [T] {
    let start = i * dims.d_model + h * dims.d_k;
    &mut x[start..start + dims.d_k]
}

/// The key count of the transposed heads is rounded up to a multiple of this (one 512-bit register of
/// f32), so that the loops over keys have no remainder.
const KEY_BLOCK: usize = 16;

/// Partial sums the scores keep apart over the d_k terms, so that the updates of one element do not wait
/// on one another (a vector add's latency is about four of its issue slots). [`dots`] uses exactly four.
const SCORE_PARTS: usize = 4;
const _: () = assert!(SCORE_PARTS == 4, "dots combines exactly four partial sums");

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

/// out_j = a · X_j for every key j of a head transposed by [`transpose_head`] (`xt`: d_k rows of
/// `k_pad`; `out`: k_pad elements), as y += a_c · row c of `xt` over c: element-wise loops over the keys
/// that vectorise whatever the key count, with no horizontal sum per key. (A dot product per key over 16
/// partial sums, the first version, was compiled by LLVM's SLP vectoriser into eight 2-lane multiplies
/// and adds: the attention took 10% of a training step for under 2% of its FLOPs. Blocks of 16 keys kept
/// in registers were scalar once inlined into the kernel.) The terms go into [`SCORE_PARTS`] partial sums
/// (rows of `parts`, SCORE_PARTS · k_pad elements), so that consecutive updates of an element do not wait
/// on one another, combined in a fixed order: the same result on every run.
#[inline(always)]
fn dots<T: Real>(a: &[T], xt: &[T], k_pad: usize, parts: &mut [T], out: &mut [T]) {
    parts.fill(T::zero());
    let (p0, rest) = parts.split_at_mut(k_pad);
    let (p1, rest) = rest.split_at_mut(k_pad);
    let (p2, p3) = rest.split_at_mut(k_pad);
    let (quads, rest_a) = a.as_chunks::<SCORE_PARTS>();
    let mut rows = xt.chunks_exact(k_pad);
    for a_c in quads {
        for (p, &a_c) in [&mut *p0, &mut *p1, &mut *p2, &mut *p3].into_iter().zip(a_c) {
            axpy(a_c, rows.next().unwrap_or_default(), p);
        }
    }
    for &a_c in rest_a {
        axpy(a_c, rows.next().unwrap_or_default(), p0);
    }
    for (((o, &x0), &x1), (&x2, &x3)) in out.iter_mut().zip(&*p0).zip(&*p1).zip(p2.iter().zip(&*p3)) {
        *o = (x0 + x1) + (x2 + x3);
    }
}

/// y += α x.
#[inline(always)]
fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

impl FusedAttention {
    /// P = softmax(Q_h K_hᵀ / √d_k + mask) of batch row `b`, head `h`, into `p` (q_len × k_len); `q` is
    /// batch row `b`'s (q_len, d_model) block, `kt` its head `h` of K transposed ([`transpose_head`]),
    /// `scratch` (SCORE_PARTS + 1) · k_pad elements for [`dots`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn probabilities<T: Real>(
        &self,
        q: &[T],
        kt: &[T],
        b: usize,
        h: usize,
        dims: Dims,
        p: &mut [T],
        scratch: &mut [T],
    ) {
        let Dims { q_len, k_len, .. } = dims;
        let scale = T::from_f64(1.0 / (dims.d_k as f64).sqrt());
        let mask = self.mask.as_deref().map(|m| &m[b * q_len * k_len..(b + 1) * q_len * k_len]);
        let k_pad = scratch.len() / (SCORE_PARTS + 1);
        let (scores, parts) = scratch.split_at_mut(k_pad);
        for (i, row) in p.chunks_mut(k_len).enumerate() {
            dots(head_row(q, i, h, dims), kt, k_pad, parts, scores);
            match mask {
                Some(m) => {
                    for ((x, &s), &m) in row.iter_mut().zip(&*scores).zip(&m[i * k_len..(i + 1) * k_len]) {
                        *x = T::from_f64((s * scale).to_f64() + m);
                    }
                }
                None => {
                    for (x, &s) in row.iter_mut().zip(&*scores) {
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
        let (q_size, k_size, k_pad) = (q_len * d_model, k_len * d_model, k_len.next_multiple_of(KEY_BLOCK));
        let (qk, row_probs) = (q_len * k_len, self.heads * q_len * k_len);
        let mut out = vec![T::zero(); dims.batch * q_size];
        // Batch row b into out_b, with P for all its heads in p_b.
        let row = |b: usize, out_b: &mut [T], p_b: &mut [T]| {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let (mut kt, mut scratch) = (vec![T::zero(); d_k * k_pad], vec![T::zero(); (SCORE_PARTS + 1) * k_pad]);
            simd!(|| {
                for (h, p) in p_b.chunks_mut(qk).enumerate() {
                    transpose_head(kb, h, dims, &mut kt, k_pad);
                    self.probabilities(qb, &kt, b, h, dims, p, &mut scratch);
                    // head_i = P V_h, row by row: out_i = Σ_j P_ij V_j
                    for (i, p_i) in p.chunks(k_len).enumerate() {
                        let out_i = head_row_mut(out_b, i, h, dims);
                        for (j, &p_ij) in p_i.iter().enumerate() {
                            axpy(p_ij, head_row(vb, j, h, dims), out_i);
                        }
                    }
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
        let (q_size, k_size, k_pad) = (q_len * d_model, k_len * d_model, k_len.next_multiple_of(KEY_BLOCK));
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        let scale = T::from_f64(1.0 / (d_k as f64).sqrt());
        let rows = dq.par_chunks_mut(q_size).zip(dk.par_chunks_mut(k_size)).zip(dv.par_chunks_mut(k_size));
        rows.enumerate().for_each(|(b, ((dq_b, dk_b), dv_b))| {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let dob = &d_out[b * q_size..(b + 1) * q_size];
            let qk = q_len * k_len;
            let saved = probs.map(|p| &p[b * self.heads * qk..(b + 1) * self.heads * qk]);
            let (mut recomputed, mut dp) =
                (vec![T::zero(); if saved.is_some() { 0 } else { qk }], vec![T::zero(); k_pad]);
            let (mut kt, mut vt) = (vec![T::zero(); d_k * k_pad], vec![T::zero(); d_k * k_pad]);
            let mut scratch = vec![T::zero(); (SCORE_PARTS + 1) * k_pad];
            simd!(|| {
                for h in 0..self.heads {
                    let p: &[T] = match saved {
                        Some(saved) => &saved[h * qk..(h + 1) * qk],
                        None => {
                            transpose_head(kb, h, dims, &mut kt, k_pad);
                            self.probabilities(qb, &kt, b, h, dims, &mut recomputed, &mut scratch);
                            &recomputed
                        }
                    };
                    transpose_head(vb, h, dims, &mut vt, k_pad);
                    for (i, p_i) in p.chunks(k_len).enumerate() {
                        let (q_i, do_i) = (head_row(qb, i, h, dims), head_row(dob, i, h, dims));
                        // ∂P_ij = ∂O_i · V_j; ∂V_j += P_ij ∂O_i
                        dots(do_i, &vt, k_pad, &mut scratch[k_pad..], &mut dp);
                        for (j, &p_ij) in p_i.iter().enumerate() {
                            axpy(p_ij, do_i, head_row_mut(dv_b, j, h, dims));
                        }
                        // ∂S_ij = P_ij (∂P_ij - Σ_j' P_ij' ∂P_ij') / √d_k; ∂Q_i += ∂S_ij K_j; ∂K_j += ∂S_ij Q_i
                        let row_dot = T::from_f64(lane_sum2(p_i, &dp, |p, d| (p * d).to_f64()));
                        let dq_i = head_row_mut(dq_b, i, h, dims);
                        for (j, (&p_ij, &dp_ij)) in p_i.iter().zip(&dp).enumerate() {
                            let ds_ij = p_ij * (dp_ij - row_dot) * scale;
                            axpy(ds_ij, head_row(kb, j, h, dims), dq_i);
                            axpy(ds_ij, q_i, head_row_mut(dk_b, j, h, dims));
                        }
                    }
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
