//! Multi-head scaled dot-product attention as one op with its own backward pass (paper §3.2.1-3.2.2):
//! for every (batch row, head) the scores Q_h K_hᵀ/√d_k, the additive mask, the softmax and the weighted
//! values P V_h, written straight into the concatenated (batch, q_len, d_model) output, for CPU tensors
//! in f32 or f64.
//!
//! The reference path ([`crate::model::attention::MultiHeadAttention::forward_reference`]) splits and
//! merges heads with copies, runs one small product per (batch, head) after another, and adds a dozen
//! autograd nodes per attention, each with its zero-filled gradient buffer. This op reads each head's
//! columns in place (the products take strides), works on the batch rows in parallel, and is one node.
//! The backward pass recomputes P (it is small: q_len × k_len per head) instead of keeping it:
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - rowsum(dP ⊙ P)), dQ = dS K / √d_k, dK = dSᵀ Q / √d_k.
//! No weights are returned: callers that need them (pictures, `nmt explain`, incremental decoding) take
//! the reference path.

use super::cpu::{contiguous_slice, tensors3, with_float_slices, FloatSlices, Real};
use super::gemm::{matmul, Mat};
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

/// Head `h`'s (rows, d_k) block of a (rows, d_model) row-major matrix.
fn head<T>(x: &[T], h: usize, rows: usize, dims: Dims) -> Mat<'_, T> {
    Mat::rows(&x[h * dims.d_k..], rows, dims.d_k, dims.d_model)
}

impl FusedAttention {
    /// P = softmax(Q_h K_hᵀ / √d_k + mask) of batch row `b`, head `h`, into `p` (q_len × k_len).
    fn probabilities<T: Real>(&self, q: &[T], k: &[T], b: usize, h: usize, dims: Dims, p: &mut [T]) -> Result<()> {
        let Dims { q_len, k_len, .. } = dims;
        matmul(p, k_len, head(q, h, q_len, dims), head(k, h, k_len, dims).t(), false, 1)?;
        let scale = T::from_f64(1.0 / (dims.d_k as f64).sqrt());
        let mask = self.mask.as_deref().map(|m| &m[b * q_len * k_len..(b + 1) * q_len * k_len]);
        for (i, row) in p.chunks_mut(k_len).enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x *= scale;
                if let Some(m) = mask {
                    *x = T::from_f64(x.to_f64() + m[i * k_len + j]);
                }
            }
            let max = T::max_of(row);
            let mut sum = 0f64;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += x.to_f64();
            }
            let inv = T::from_f64(1.0 / sum);
            row.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(())
    }

    /// Concat(head_1, …, head_h), (batch, q_len, d_model), from Q (batch, q_len, d_model) and K, V
    /// (batch, k_len, d_model).
    pub(crate) fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T], dims: Dims) -> Result<Vec<T>> {
        let Dims { q_len, k_len, d_model, .. } = dims;
        let mut out = vec![T::zero(); dims.batch * q_len * d_model];
        out.par_chunks_mut(q_len * d_model).enumerate().try_for_each(|(b, out_b)| -> Result<()> {
            let (qb, kb, vb) = (&q[b * q_len * d_model..], &k[b * k_len * d_model..], &v[b * k_len * d_model..]);
            let mut p = vec![T::zero(); q_len * k_len];
            for h in 0..self.heads {
                self.probabilities(qb, kb, b, h, dims, &mut p)?;
                let p_mat = Mat::rows(&p[..], q_len, k_len, k_len);
                matmul(&mut out_b[h * dims.d_k..], d_model, p_mat, head(vb, h, k_len, dims), false, 1)?;
            }
            Ok(())
        })?;
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
        rows.enumerate().try_for_each(|(b, ((dq_b, dk_b), dv_b))| -> Result<()> {
            let (qb, kb, vb) =
                (&q[b * q_size..(b + 1) * q_size], &k[b * k_size..(b + 1) * k_size], &v[b * k_size..(b + 1) * k_size]);
            let dob = &d_out[b * q_size..(b + 1) * q_size];
            let (mut p, mut dp) = (vec![T::zero(); q_len * k_len], vec![T::zero(); q_len * k_len]);
            for h in 0..self.heads {
                self.probabilities(qb, kb, b, h, dims, &mut p)?;
                let p_mat = Mat::rows(&p[..], q_len, k_len, k_len);
                let do_h = head(dob, h, q_len, dims);
                matmul(&mut dv_b[h * d_k..], d_model, p_mat.t(), do_h, false, 1)?;
                matmul(&mut dp, k_len, do_h, head(vb, h, k_len, dims).t(), false, 1)?;
                for (dp_row, p_row) in dp.chunks_mut(k_len).zip(p.chunks(k_len)) {
                    let dot: f64 = dp_row.iter().zip(p_row).map(|(&a, &b)| (a * b).to_f64()).sum();
                    let dot = T::from_f64(dot);
                    for (d, &pv) in dp_row.iter_mut().zip(p_row) {
                        *d = pv * (*d - dot) * scale;
                    }
                }
                let ds = Mat::rows(&dp[..], q_len, k_len, k_len);
                matmul(&mut dq_b[h * d_k..], d_model, ds, head(kb, h, k_len, dims), false, 1)?;
                matmul(&mut dk_b[h * d_k..], d_model, ds.t(), head(qb, h, q_len, dims), false, 1)?;
            }
            Ok(())
        })?;
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
