//! A softmax over the last dimension with its own backward pass, for CPU tensors in f32 or f64.
//!
//! candle 0.11's `softmax_last_dim` has no backward, and `ops::softmax` (the reference path, used off
//! CPU) is built from five tensor ops (max, subtract, exp, sum, divide) whose backward passes add as many
//! again, each a sweep over the (batch, heads, q_len, k_len) attention scores. This op does the forward
//! pass in one sweep over each row and the backward pass in one more, in parallel over rows. Tests in
//! `attention.rs` check it against the reference path.
//!
//! y = exp(x - max x) / Σ exp(x - max x);  ∂x = y · (∂y - Σ ∂y·y)

use super::cpu::{contiguous_slice, lane_sum, simd, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// Elements per parallel task (whole rows).
const ELEMENTS_PER_TASK: usize = 4096;

pub struct FusedSoftmax;

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused softmax")
}

fn rows_per_task(width: usize) -> usize {
    (ELEMENTS_PER_TASK / width.max(1)).max(1) * width.max(1)
}

/// softmax of one row in place: exp(x - max) (a loop that vectorises), then one scale by 1/Σ, the sum
/// in f64 over lanes in a fixed order. The attention kernel calls it for each row of scores.
#[inline(always)]
pub(crate) fn softmax_row<T: Real>(row: &mut [T]) {
    let max = T::max_of(row);
    for x in row.iter_mut() {
        *x = (*x - max).exp_fast();
    }
    let inv = T::from_f64(1.0 / lane_sum(row, |x| x.to_f64()));
    row.iter_mut().for_each(|x| *x *= inv);
}

fn forward<T: Real>(x: &[T], width: usize) -> Vec<T> {
    let mut y = x.to_vec();
    let chunk = rows_per_task(width);
    y.par_chunks_mut(chunk).for_each(|ys| simd!(|| ys.chunks_mut(width).for_each(softmax_row)));
    y
}

fn backward<T: Real>(y: &[T], dy: &[T], width: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    let chunk = rows_per_task(width);
    dx.par_chunks_mut(chunk).zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk))).for_each(|(dxs, (ys, dys))| {
        for ((dxr, yr), dyr) in dxs.chunks_mut(width).zip(ys.chunks(width)).zip(dys.chunks(width)) {
            let dot = T::from_f64(yr.iter().zip(dyr).map(|(y, d)| y.to_f64() * d.to_f64()).sum::<f64>());
            for ((dx, &y), &d) in dxr.iter_mut().zip(yr).zip(dyr) {
                *dx = y * (d - dot);
            }
        }
    });
    dx
}

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = l.dims().last().copied().unwrap_or(1);
        if l.shape().elem_count() == 0 {
            candle_core::bail!("fused softmax: empty input {:?}", l.dims());
        }
        let y = match s {
            CpuStorage::F32(_) => CpuStorage::F32(forward::<f32>(slice(s, l)?, width)),
            CpuStorage::F64(_) => CpuStorage::F64(forward::<f64>(slice(s, l)?, width)),
            other => candle_core::bail!("fused softmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (y, dy) = (y.contiguous()?, dy.contiguous()?);
        let width = y.dims().last().copied().unwrap_or(1);
        let (ys, yl) = y.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let (Storage::Cpu(ys), Storage::Cpu(ds)) = (&*ys, &*ds) else {
            candle_core::bail!("fused softmax runs on CPU only");
        };
        let dx = match ys {
            CpuStorage::F32(_) => {
                Tensor::from_vec(backward::<f32>(slice(ys, yl)?, slice(ds, dl)?, width), y.shape(), y.device())?
            }
            CpuStorage::F64(_) => {
                Tensor::from_vec(backward::<f64>(slice(ys, yl)?, slice(ds, dl)?, width), y.shape(), y.device())?
            }
            other => candle_core::bail!("fused softmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok(Some(dx))
    }
}

/// Softmax over the last dimension: the fused op for CPU tensors in f32 or f64, candle's differentiable
/// `ops::softmax` otherwise.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if super::fused(x) {
        x.contiguous()?.apply_op1(FusedSoftmax)
    } else {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    }
}
