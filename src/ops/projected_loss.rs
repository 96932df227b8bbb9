//! The pre-softmax projection and the label-smoothed cross-entropy fused into one op (paper §3.4, §5.4),
//! chunked over rows so that neither the (tokens, vocab) logits nor their gradient ever exist whole, for
//! CPU tensors in f32 or f64.
//!
//! The logits are the largest tensors of a training step (4096 tokens × 8000 words is 131 MB in f32),
//! and the unfused path writes them, their softmax and their gradient several times over, plus the
//! gradient buffers candle zero-fills. This op computes, per chunk of rows, the logits h·Wᵀ (one
//! product), each row's loss, and — when a gradient will be needed — the logits' gradient in place,
//! turned at once into ∂h = ∂logits·W and added into ∂W += ∂logitsᵀ·h. Those gradients are computed for
//! an upstream gradient of 1 on every row and scaled in the backward pass (the training loss is a sum of
//! rows, so every row's upstream gradient is the same); any other upstream gradient is handled by
//! computing them again with it. Chunks run one after another with threaded products, so the result is
//! the same on every run.
//!
//! The reference is the product followed by [`crate::loss::label_smoothed_cross_entropy_reference`];
//! `src/loss.rs` tests compare value and gradients.
//!
//! Per row, with logits x = W h, lse = log Σ exp x, reference y and ε spread over V words:
//! loss = (1-ε)(lse - x_y) + ε(lse - mean x);  ∂x_v = softmax(x)_v - (1-ε)[v = y] - ε/V.
//! The output is (rows, 2): `loss` and `nll = lse - x_y`, both 0 on padding rows; only `loss` has a
//! gradient.

use super::cpu::{contiguous_slice, lane_sum, simd, Real};
use super::gemm::{matmul, threads_for, Mat};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::Mutex;

/// Rows of logits computed at once (256 × 8000 f32 is 8 MB).
const ROWS_PER_CHUNK: usize = 256;

pub struct FusedProjectedCrossEntropy {
    pub pad: u32,
    pub epsilon: f64,
    /// Compute the gradients in the forward pass (training).
    pub with_grad: bool,
    /// (∂h, ∂W) for an upstream gradient of 1 on every row, from the forward pass.
    unit_grads: Mutex<Option<(Tensor, Tensor)>>,
}

impl FusedProjectedCrossEntropy {
    pub fn new(pad: u32, epsilon: f64, with_grad: bool) -> Self {
        Self { pad, epsilon, with_grad, unit_grads: Mutex::new(None) }
    }

    /// One row's (loss, nll) from its logits; with `g`, the upstream gradient of its loss, the row is
    /// replaced by the logits' gradient (all zeros for a padding row).
    #[inline(always)]
    fn row<T: Real>(&self, row: &mut [T], y: u32, g: Option<f64>) -> (T, T) {
        if y == self.pad {
            row.fill(T::zero());
            return (T::zero(), T::zero());
        }
        let (eps, vocab) = (self.epsilon, row.len() as f64);
        let max = T::max_of(row);
        let mean = lane_sum(row, |x| x.to_f64()) / vocab;
        let x_y = row[y as usize].to_f64();
        // exp(x - max) is kept in the row: the gradient needs it again.
        for x in row.iter_mut() {
            *x = (*x - max).exp_fast();
        }
        let sum = lane_sum(row, |x| x.to_f64());
        let lse = max.to_f64() + sum.ln();
        let nll = lse - x_y;
        if let Some(g) = g {
            let (scale, shift) = (T::from_f64(g / sum), T::from_f64(g * eps / vocab));
            for x in row.iter_mut() {
                *x = *x * scale - shift;
            }
            row[y as usize] = T::from_f64(row[y as usize].to_f64() - g * (1.0 - eps));
        }
        (T::from_f64((1.0 - eps) * nll + eps * (lse - mean)), T::from_f64(nll))
    }

    /// The (rows, 2) output and, with `row_grad` (the upstream gradient of each row's loss), (∂h, ∂W).
    #[allow(clippy::type_complexity)]
    pub(crate) fn run<T: Real>(
        &self,
        h: &[T],
        w: &[T],
        target: &[u32],
        d: usize,
        row_grad: Option<&[T]>,
    ) -> Result<(Vec<T>, Option<(Vec<T>, Vec<T>)>)> {
        let rows = target.len();
        let vocab = w.len() / d.max(1);
        let mut out = vec![T::zero(); 2 * rows];
        let mut grads = row_grad.map(|_| (vec![T::zero(); rows * d], vec![T::zero(); vocab * d]));
        let mut logits = vec![T::zero(); ROWS_PER_CHUNK.min(rows) * vocab];
        let wt = Mat::rows(w, vocab, d, d).t();
        for start in (0..rows).step_by(ROWS_PER_CHUNK) {
            let n = ROWS_PER_CHUNK.min(rows - start);
            let (hc, lg) = (Mat::rows(&h[start * d..(start + n) * d], n, d, d), &mut logits[..n * vocab]);
            matmul(lg, vocab, hc, wt, false, threads_for(n, vocab, d))?;
            let ys = &target[start..start + n];
            let outs = &mut out[2 * start..2 * (start + n)];
            lg.par_chunks_mut(vocab).zip(outs.par_chunks_mut(2)).zip(ys.par_iter()).enumerate().for_each(
                |(i, ((row, o), &y))| {
                    let g = row_grad.map(|g| g[start + i].to_f64());
                    (o[0], o[1]) = simd!(|| self.row(row, y, g));
                },
            );
            if let Some((dh, dw)) = grads.as_mut() {
                let dl = Mat::rows(&*lg, n, vocab, vocab);
                matmul(
                    &mut dh[start * d..(start + n) * d],
                    d,
                    dl,
                    Mat::rows(w, vocab, d, d),
                    false,
                    threads_for(n, d, vocab),
                )?;
                matmul(dw, d, dl.t(), hc, true, threads_for(vocab, d, n))?;
            }
        }
        Ok((out, grads))
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused projected cross-entropy")
}

impl CustomOp3 for FusedProjectedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-projected-cross-entropy"
    }

    /// `h`: (rows, d_model); `w`: (vocab, d_model); `target`: (rows) u32 → (rows, 2).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, d) = l1.shape().dims2()?;
        let (vocab, w_d) = l2.shape().dims2()?;
        let target = slice::<u32>(s3, l3)?;
        if w_d != d || target.len() != rows {
            candle_core::bail!(
                "fused projected cross-entropy: h {:?}, W {:?}, target {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        super::cpu::check_targets("fused projected cross-entropy", target, self.pad, vocab)?;
        let dev = candle_core::Device::Cpu;
        macro_rules! run {
            ($t:ty, $variant:ident) => {{
                let ones = vec![<$t>::from_f64(1.0); if self.with_grad { rows } else { 0 }];
                let (out, grads) =
                    self.run::<$t>(slice(s1, l1)?, slice(s2, l2)?, target, d, self.with_grad.then_some(&ones[..]))?;
                if let Some((dh, dw)) = grads {
                    let tensors = (Tensor::from_vec(dh, (rows, d), &dev)?, Tensor::from_vec(dw, (vocab, d), &dev)?);
                    *self.unit_grads.lock().unwrap_or_else(|e| e.into_inner()) = Some(tensors);
                }
                CpuStorage::$variant(out)
            }};
        }
        let out = match s1 {
            CpuStorage::F32(_) => run!(f32, F32),
            CpuStorage::F64(_) => run!(f64, F64),
            other => candle_core::bail!("fused projected cross-entropy: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((rows, 2))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?; // (rows): upstream gradient of each loss
        let g64 = g.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let stash = self.unit_grads.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some((dh, dw)), Some(&g0)) = (stash, g64.first()) {
            if g64.iter().all(|&x| x == g0) {
                let dh = if g0 == 1.0 { dh } else { (dh * g0)? };
                let dw = if g0 == 1.0 { dw } else { (dw * g0)? };
                return Ok((Some(dh.to_device(h.device())?), Some(dw.to_device(w.device())?), None));
            }
        }
        // A gradient that differs between rows: compute the gradients again with it.
        let (h, w, target) = (h.contiguous()?, w.contiguous()?, target.contiguous()?);
        let (hs, hl) = h.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (ts, tl) = target.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (Storage::Cpu(hs), Storage::Cpu(ws), Storage::Cpu(ts), Storage::Cpu(gs)) = (&*hs, &*ws, &*ts, &*gs) else {
            candle_core::bail!("fused projected cross-entropy runs on CPU only");
        };
        let t = slice::<u32>(ts, tl)?;
        macro_rules! run {
            ($t:ty) => {{
                let (_, grads) = self.run::<$t>(slice(hs, hl)?, slice(ws, wl)?, t, h.dim(1)?, Some(slice(gs, gl)?))?;
                let (dh, dw) = grads.ok_or_else(|| candle_core::Error::Msg("no gradients computed".into()))?;
                (Tensor::from_vec(dh, h.shape(), h.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
            }};
        }
        let (dh, dw) = match hs {
            CpuStorage::F32(_) => run!(f32),
            CpuStorage::F64(_) => run!(f64),
            other => candle_core::bail!("fused projected cross-entropy: unsupported dtype {:?}", other.dtype()),
        };
        Ok((Some(dh), Some(dw), None))
    }
}
