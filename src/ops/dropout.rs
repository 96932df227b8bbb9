//! A residual connection around dropout, x + Dropout(y), as one op with its own backward pass, for CPU
//! tensors in f32 or f64 (paper §5.4: dropout on every sub-layer output before it is added to the
//! sub-layer input).
//!
//! The reference path ([`crate::model::init::Mode::residual_dropout`] with the switch off) multiplies by
//! a mask tensor and adds, two autograd nodes with their zero-filled gradient buffers and a mask tensor
//! converted to the input's dtype. This op takes the same mask, drawn from the run's RNG in the same
//! order, so both paths give the same numbers: out = x + y·mask; ∂x = ∂out, ∂y = ∂out·mask. (The
//! hand-written training step, which splits batches into shards with RNGs of their own, draws the same
//! masks as the model's forward pass only over whole batches: [`crate::ops::with_whole_batches`].)

use super::cpu::{contiguous_slice, new_vec_written, simd};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 15;

pub struct FusedResidualDropout {
    /// 0 for a dropped element, 1/(1-p) for a kept one; one per element of y.
    pub mask: Vec<f32>,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused residual dropout")
}

/// a + b·mask, element by element.
pub(crate) fn add_masked<T: WithDType>(a: &[T], b: &[T], mask: &[f32]) -> Vec<T> {
    // SAFETY: each task writes every element of its part `o`: a, b and the mask are sliced to o's length.
    let (out, _) = unsafe {
        new_vec_written(a.len(), ELEMENTS_PER_TASK, |start, o| {
            let end = start + o.len();
            let (a, b, m) = (&a[start..end], &b[start..end], &mask[start..end]);
            simd!(|| {
                for (((o, &a), &b), &m) in o.iter_mut().zip(a).zip(b).zip(m) {
                    o.write(a + b * T::from_f64(m as f64));
                }
            })
        })
    };
    out
}

/// x·mask, element by element: the gradient through dropout.
pub(crate) fn mul_masked<T: WithDType>(x: &[T], mask: &[f32]) -> Vec<T> {
    // SAFETY: each task writes every element of its part `o`: x and the mask are sliced to o's length.
    let (out, _) = unsafe {
        new_vec_written(x.len(), ELEMENTS_PER_TASK, |start, o| {
            let end = start + o.len();
            let (x, m) = (&x[start..end], &mask[start..end]);
            simd!(|| {
                for ((o, &x), &m) in o.iter_mut().zip(x).zip(m) {
                    o.write(x * T::from_f64(m as f64));
                }
            })
        })
    };
    out
}

/// x ← x·mask, element by element.
pub(crate) fn mul_masked_in_place<T: WithDType>(x: &mut [T], mask: &[f32]) {
    x.par_chunks_mut(ELEMENTS_PER_TASK).zip(mask.par_chunks(ELEMENTS_PER_TASK)).for_each(|(xs, m)| {
        simd!(|| {
            for (x, &m) in xs.iter_mut().zip(m) {
                *x *= T::from_f64(m as f64);
            }
        })
    });
}

impl CustomOp2 for FusedResidualDropout {
    fn name(&self) -> &'static str {
        "fused-residual-dropout"
    }

    /// x, y: the same shape → x + y·mask.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() || self.mask.len() != l1.shape().elem_count() {
            candle_core::bail!(
                "fused residual dropout: x {:?}, y {:?}, {} mask values",
                l1.dims(),
                l2.dims(),
                self.mask.len()
            );
        }
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(add_masked::<f32>(slice(s1, l1)?, slice(s2, l2)?, &self.mask)),
            CpuStorage::F64(_) => CpuStorage::F64(add_masked::<f64>(slice(s1, l1)?, slice(s2, l2)?, &self.mask)),
            other => candle_core::bail!("fused residual dropout: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        let Storage::Cpu(gs) = &*gs else {
            candle_core::bail!("fused residual dropout runs on CPU only");
        };
        let dy = match gs {
            CpuStorage::F32(_) => {
                let d = slice::<f32>(gs, gl)?;
                Tensor::from_vec(add_masked::<f32>(&vec![0.0; d.len()], d, &self.mask), g.shape(), g.device())?
            }
            CpuStorage::F64(_) => {
                let d = slice::<f64>(gs, gl)?;
                Tensor::from_vec(add_masked::<f64>(&vec![0.0; d.len()], d, &self.mask), g.shape(), g.device())?
            }
            other => candle_core::bail!("fused residual dropout: unsupported dtype {:?}", other.dtype()),
        };
        Ok((Some(g.clone()), Some(dy)))
    }
}
