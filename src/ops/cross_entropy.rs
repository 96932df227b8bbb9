//! Label-smoothed cross-entropy fused into one op with its own backward pass, for CPU tensors in f32 or f64.
//!
//! The reference path ([`crate::loss::label_smoothed_cross_entropy_reference`]) builds the loss from
//! `log_softmax`, `gather` and `mean`. Each of those is a pass over the (tokens, vocab) logits, forward and
//! backward, and the logits are the largest tensor of a training step. This op reads each row twice in the
//! forward pass and twice in the backward pass, in parallel over rows. Tests in `src/loss.rs` check values and
//! gradients against the reference path.
//!
//! Per row with logits x (width V), lse = log Σ_v exp(x_v), reference token y and keep = [y ≠ pad]:
//!
//! ```text
//! nll    = lse - x_y
//! smooth = lse - mean_v x_v
//! loss   = keep · ((1-ε)·nll + ε·smooth)
//! ∂loss/∂x_v = keep · (softmax(x)_v - (1-ε)·[v = y] - ε/V)
//! ```
//!
//! The output is (rows, 2): the columns are `loss` and `keep · nll`. Only the first carries a gradient.

use super::cpu::{contiguous_slice, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

pub struct FusedSmoothedCrossEntropy {
    pub pad: u32,
    pub epsilon: f64,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused cross-entropy")
}

/// log Σ exp of a row, with exp in the row's own precision and the sum in f64.
fn log_sum_exp<T: Real>(row: &[T]) -> f64 {
    let max = T::max_of(row);
    let sum: f64 = row.iter().map(|&v| (v - max).exp_fast().to_f64()).sum();
    max.to_f64() + sum.ln()
}

impl FusedSmoothedCrossEntropy {
    /// (loss, keep·nll) per row.
    fn forward<T: Real>(&self, logits: &[T], target: &[u32]) -> Vec<T> {
        let vocab = logits.len() / target.len().max(1);
        let mut out = vec![T::zero(); 2 * target.len()];
        out.par_chunks_mut(2 * ROWS_PER_TASK)
            .zip(logits.par_chunks(vocab * ROWS_PER_TASK).zip(target.par_chunks(ROWS_PER_TASK)))
            .for_each(|(outs, (rows, ys))| {
                for ((o, row), &y) in outs.chunks_mut(2).zip(rows.chunks(vocab)).zip(ys) {
                    if y == self.pad {
                        continue;
                    }
                    let lse = log_sum_exp(row);
                    let nll = lse - row[y as usize].to_f64();
                    let smooth = lse - row.iter().map(|v| v.to_f64()).sum::<f64>() / vocab as f64;
                    o[0] = T::from_f64((1.0 - self.epsilon) * nll + self.epsilon * smooth);
                    o[1] = T::from_f64(nll);
                }
            });
        out
    }

    /// ∂logits from the gradient of the loss column.
    fn backward<T: Real>(&self, logits: &[T], target: &[u32], grad: &[T]) -> Vec<T> {
        let vocab = logits.len() / target.len().max(1);
        let mut dx = vec![T::zero(); logits.len()];
        let uniform = self.epsilon / vocab as f64;
        dx.par_chunks_mut(vocab * ROWS_PER_TASK)
            .zip(logits.par_chunks(vocab * ROWS_PER_TASK))
            .zip(target.par_chunks(ROWS_PER_TASK).zip(grad.par_chunks(2 * ROWS_PER_TASK)))
            .for_each(|((dxs, rows), (ys, gs))| {
                for (((dr, row), &y), g) in dxs.chunks_mut(vocab).zip(rows.chunks(vocab)).zip(ys).zip(gs.chunks(2)) {
                    if y == self.pad {
                        continue;
                    }
                    let g = g[0].to_f64();
                    let lse = log_sum_exp(row);
                    let lse = T::from_f64(lse);
                    let (g_t, shift) = (T::from_f64(g), T::from_f64(g * uniform));
                    for (d, &x) in dr.iter_mut().zip(row) {
                        *d = g_t * (x - lse).exp_fast() - shift;
                    }
                    let y = y as usize;
                    dr[y] = T::from_f64(dr[y].to_f64() - g * (1.0 - self.epsilon));
                }
            });
        dx
    }
}

impl CustomOp2 for FusedSmoothedCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-smoothed-cross-entropy"
    }

    /// `logits`: (rows, vocab) f32 or f64; `target`: (rows) u32 → (rows, 2).
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let target = slice::<u32>(s2, l2)?;
        let rows = target.len();
        if l1.dims().len() != 2 || l1.dims()[0] != rows {
            candle_core::bail!("fused cross-entropy: logits {:?} do not match {rows} targets", l1.dims());
        }
        super::cpu::check_targets("fused cross-entropy", target, self.pad, l1.dims()[1])?;
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward::<f32>(slice(s1, l1)?, target)),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward::<f64>(slice(s1, l1)?, target)),
            other => candle_core::bail!("fused cross-entropy: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((rows, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (logits, target, grad) = (logits.contiguous()?, target.contiguous()?, grad.contiguous()?);
        let (xs, xl) = logits.storage_and_layout();
        let (ts, tl) = target.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ts), Storage::Cpu(gs)) = (&*xs, &*ts, &*gs) else {
            candle_core::bail!("fused cross-entropy runs on CPU only");
        };
        let t = slice::<u32>(ts, tl)?;
        let dx = match xs {
            CpuStorage::F32(_) => Tensor::from_vec(
                self.backward::<f32>(slice(xs, xl)?, t, slice(gs, gl)?),
                logits.shape(),
                logits.device(),
            )?,
            CpuStorage::F64(_) => Tensor::from_vec(
                self.backward::<f64>(slice(xs, xl)?, t, slice(gs, gl)?),
                logits.shape(),
                logits.device(),
            )?,
            other => candle_core::bail!("fused cross-entropy: unsupported dtype {:?}", other.dtype()),
        };
        Ok((Some(dx), None))
    }
}
