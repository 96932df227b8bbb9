//! Multi-head scaled dot-product attention as one op with its own backward pass (paper §3.2.1-3.2.2):
//! for every (batch row, head) the scores Q_h K_hᵀ/√d_k, the additive mask, the softmax and the weighted
//! values P V_h, written straight into the concatenated (batch, q_len, d_model) output, for CPU tensors
//! in f32 or f64.
//!
//! The reference path ([`crate::model::attention::MultiHeadAttention::forward_reference`]) splits and
//! merges heads with copies, runs one small product per (batch, head) after another, and adds a dozen
//! autograd nodes per attention, each with its zero-filled gradient buffer. This op reads each head's
//! columns in place, works on the batch rows in parallel, and is one node.
//! The backward pass recomputes P (it is small: q_len × k_len per head) instead of keeping it:
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(dP ⊙ P)) / √d_k, dQ = dS K, dK = dSᵀ Q.
//!
//! The products are written by hand, as dot products and `y += αx` over one head's d_k contiguous
//! elements, compiled for the CPU's widest vectors ([`simd!`](super::cpu::simd)): a general matrix product (the `gemm`
//! crate, which the first version called per (batch row, head)) packs its operands and dispatches per
//! call, which costs more than the arithmetic at these sizes (about 25 × 25 × 64 for Multi30k), and
//! left the attention at 16% of a training step for 2% of its FLOPs (docs/PERFORMANCE.md).
//! No weights are returned: callers that need them (pictures, `nmt explain`, incremental decoding) take
//! the reference path.

use super::cpu::{contiguous_slice, simd, tensors3, with_float_slices, FloatSlices, Real};
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

/// Partial sums of a dot product: one 512-bit register of f32, so that the products vectorise.
const DOT_LANES: usize = 16;

/// a · b, over `DOT_LANES` partial sums combined in a fixed order (the same result on every run).
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); DOT_LANES];
    let (whole_a, whole_b) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let mut sum = T::zero();
    for (&x, &y) in whole_a.remainder().iter().zip(whole_b.remainder()) {
        sum += x * y;
    }
    for (x, y) in whole_a.zip(whole_b) {
        for lane in 0..DOT_LANES {
            acc[lane] += x[lane] * y[lane];
        }
    }
    let mut width = DOT_LANES;
    while width > 1 {
        width /= 2;
        for lane in 0..width {
            let upper = acc[lane + width];
            acc[lane] += upper;
        }
    }
    acc[0] + sum
}

/// y += α x.
#[inline(always)]
fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

impl FusedAttention {
    /// P = softmax(Q_h K_hᵀ / √d_k + mask) of batch row `b`, head `h`, into `p` (q_len × k_len); `q` and
    /// `k` are batch row `b`'s (q_len, d_model) and (k_len, d_model) blocks.
    #[inline(always)]
    fn probabilities<T: Real>(&self, q: &[T], k: &[T], b: usize, h: usize, dims: Dims, p: &mut [T]) {
        let Dims { q_len, k_len, .. } = dims;
        let scale = T::from_f64(1.0 / (dims.d_k as f64).sqrt());
        let mask = self.mask.as_deref().map(|m| &m[b * q_len * k_len..(b + 1) * q_len * k_len]);
        for (i, row) in p.chunks_mut(k_len).enumerate() {
            let q_i = head_row(q, i, h, dims);
            for (j, x) in row.iter_mut().enumerate() {
                *x = dot(q_i, head_row(k, j, h, dims)) * scale;
            }
            if let Some(m) = mask {
                for (x, &m) in row.iter_mut().zip(&m[i * k_len..(i + 1) * k_len]) {
                    *x = T::from_f64(x.to_f64() + m);
                }
            }
            let max = T::max_of(row);
            let mut sum = 0f64;
            for x in row.iter_mut() {
                *x = (*x - max).exp_fast();
                sum += x.to_f64();
            }
            let inv = T::from_f64(1.0 / sum);
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }

    /// Concat(head_1, …, head_h), (batch, q_len, d_model), from Q (batch, q_len, d_model) and K, V
    /// (batch, k_len, d_model).
    pub(crate) fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T], dims: Dims) -> Result<Vec<T>> {
        let Dims { q_len, k_len, d_model, .. } = dims;
        let (q_size, k_size) = (q_len * d_model, k_len * d_model);
        let mut out = vec![T::zero(); dims.batch * q_size];
        out.par_chunks_mut(q_size).enumerate().for_each(|(b, out_b)| {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let mut p = vec![T::zero(); q_len * k_len];
            simd!(|| {
                for h in 0..self.heads {
                    self.probabilities(qb, kb, b, h, dims, &mut p);
                    // head_i = P V_h, row by row: out_i = Σ_j P_ij V_j
                    for (i, p_i) in p.chunks(k_len).enumerate() {
                        let out_i = head_row_mut(out_b, i, h, dims);
                        for (j, &p_ij) in p_i.iter().enumerate() {
                            axpy(p_ij, head_row(vb, j, h, dims), out_i);
                        }
                    }
                }
            })
        });
        Ok(out)
    }

    /// (∂Q, ∂K, ∂V) from the gradient of the concatenated output.
    #[allow(clippy::type_complexity)]
    pub(crate) fn backward<T: Real>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        d_out: &[T],
        dims: Dims,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims { q_len, k_len, d_model, d_k, .. } = dims;
        let (q_size, k_size) = (q_len * d_model, k_len * d_model);
        let mut dq = vec![T::zero(); q.len()];
        let mut dk = vec![T::zero(); k.len()];
        let mut dv = vec![T::zero(); v.len()];
        let scale = T::from_f64(1.0 / (d_k as f64).sqrt());
        let rows = dq.par_chunks_mut(q_size).zip(dk.par_chunks_mut(k_size)).zip(dv.par_chunks_mut(k_size));
        rows.enumerate().for_each(|(b, ((dq_b, dk_b), dv_b))| {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let dob = &d_out[b * q_size..(b + 1) * q_size];
            let (mut p, mut dp) = (vec![T::zero(); q_len * k_len], vec![T::zero(); k_len]);
            simd!(|| {
                for h in 0..self.heads {
                    self.probabilities(qb, kb, b, h, dims, &mut p);
                    for (i, p_i) in p.chunks(k_len).enumerate() {
                        let (q_i, do_i) = (head_row(qb, i, h, dims), head_row(dob, i, h, dims));
                        // ∂V_j += P_ij ∂O_i and ∂P_ij = ∂O_i · V_j
                        let mut row_dot = 0f64;
                        for (j, (&p_ij, dp_ij)) in p_i.iter().zip(dp.iter_mut()).enumerate() {
                            axpy(p_ij, do_i, head_row_mut(dv_b, j, h, dims));
                            *dp_ij = dot(do_i, head_row(vb, j, h, dims));
                            row_dot += (p_ij * *dp_ij).to_f64();
                        }
                        // ∂S_ij = P_ij (∂P_ij - Σ_j' P_ij' ∂P_ij') / √d_k; ∂Q_i += ∂S_ij K_j; ∂K_j += ∂S_ij Q_i
                        let row_dot = T::from_f64(row_dot);
                        let dq_i = head_row_mut(dq_b, i, h, dims);
                        for (j, (&p_ij, &dp_ij)) in p_i.iter().zip(dp.iter()).enumerate() {
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
            FloatSlices::F32(s) => tensors3(self.backward::<f32>(s[0], s[1], s[2], s[3], dims)?),
            FloatSlices::F64(s) => tensors3(self.backward::<f64>(s[0], s[1], s[2], s[3], dims)?),
        })?;
        let (dq, dk, dv) = (dq.reshape(q.shape())?, dk.reshape(k.shape())?, dv.reshape(v.shape())?);
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
