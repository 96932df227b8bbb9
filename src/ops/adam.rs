//! One Adam update of a parameter as a single pass over its elements, for CPU tensors in f32 or f64.
//!
//! The reference path ([`crate::train::optim::Adam`] with the switch off) is built from about ten tensor
//! ops per parameter, each a pass over the parameter that allocates its result. This pass reads θ, g, m
//! and v once and writes θ, m and v once, in parallel over chunks (each element's arithmetic is the
//! same whatever the chunking, so the result is deterministic):
//!
//! m ← β1·m + (1-β1)·g; v ← β2·v + (1-β2)·g²; θ ← θ - lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε).

use super::cpu::{contiguous_slice, simd, Real};
use candle_core::{CpuStorage, Result, Storage, Tensor, Var};
use rayon::prelude::*;

/// Elements per parallel task.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// The step's constants: learning rate, β1, β2, ε and the bias corrections 1-β1^t, 1-β2^t.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub bc1: f64,
    pub bc2: f64,
}

/// (θ', m', v') from θ, g, m, v.
fn update<T: Real>(p: &[T], g: &[T], m: &[T], v: &[T], s: AdamStep) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = |x: f64| T::from_f64(x);
    let (b1, b2, ob1, ob2) = (c(s.beta1), c(s.beta2), c(1.0 - s.beta1), c(1.0 - s.beta2));
    let (bc1, bc2, eps, lr) = (c(s.bc1), c(s.bc2), c(s.eps), c(s.lr));
    let n = p.len();
    // The outputs are written whole below: they are not zero-filled first (a third of the pass's memory
    // traffic).
    let (mut p2, mut m2, mut v2) = (Vec::<T>::with_capacity(n), Vec::<T>::with_capacity(n), Vec::<T>::with_capacity(n));
    let outs = p2.spare_capacity_mut()[..n]
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(m2.spare_capacity_mut()[..n].par_chunks_mut(ELEMENTS_PER_TASK))
        .zip(v2.spare_capacity_mut()[..n].par_chunks_mut(ELEMENTS_PER_TASK));
    outs.enumerate().for_each(|(chunk, ((po, mo), vo))| {
        let start = chunk * ELEMENTS_PER_TASK;
        let end = start + po.len();
        let (p, g, m, v) = (&p[start..end], &g[start..end], &m[start..end], &v[start..end]);
        simd!(|| {
            for i in 0..po.len() {
                let mi = m[i] * b1 + g[i] * ob1;
                let vi = v[i] * b2 + g[i] * g[i] * ob2;
                po[i].write(p[i] - (mi / bc1) / ((vi / bc2).sqrt() + eps) * lr);
                mo[i].write(mi);
                vo[i].write(vi);
            }
        })
    });
    // SAFETY: the chunks cover elements 0..n of each buffer, and the loop above wrote every one of them.
    unsafe {
        p2.set_len(n);
        m2.set_len(n);
        v2.set_len(n);
    }
    (p2, m2, v2)
}

/// Updates `param` in place and returns the new (m, v), or None when the fused pass does not apply (not
/// on CPU, not f32/f64, or the reference path asked for): the caller then takes the reference path.
pub fn step(param: &Var, grad: &Tensor, m: &Tensor, v: &Tensor, s: AdamStep) -> Result<Option<(Tensor, Tensor)>> {
    if !super::fused(param.as_tensor()) || grad.dtype() != param.dtype() {
        return Ok(None);
    }
    let n = param.elem_count();
    if grad.elem_count() != n || m.elem_count() != n || v.elem_count() != n {
        candle_core::bail!("fused adam: gradient or moments do not match a parameter of shape {:?}", param.dims());
    }
    let (p, g, m, v) = (param.as_tensor().contiguous()?, grad.contiguous()?, m.contiguous()?, v.contiguous()?);
    let (shape, dev) = (p.shape().clone(), p.device().clone());
    // The storage guards live in this block only: `param.set` below needs the parameter's storage.
    let updated = {
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (ms, ml) = m.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (Storage::Cpu(ps), Storage::Cpu(gs), Storage::Cpu(ms), Storage::Cpu(vs)) = (&*ps, &*gs, &*ms, &*vs) else {
            return Ok(None);
        };
        macro_rules! run {
            ($t:ty) => {{
                let (pv, gv) = (contiguous_slice::<$t>(ps, pl, "adam")?, contiguous_slice::<$t>(gs, gl, "adam")?);
                let (mv, vv) = (contiguous_slice::<$t>(ms, ml, "adam")?, contiguous_slice::<$t>(vs, vl, "adam")?);
                let (p2, m2, v2) = update::<$t>(pv, gv, mv, vv, s);
                (
                    Tensor::from_vec(p2, &shape, &dev)?,
                    Tensor::from_vec(m2, &shape, &dev)?,
                    Tensor::from_vec(v2, &shape, &dev)?,
                )
            }};
        }
        match ps {
            CpuStorage::F32(_) => run!(f32),
            CpuStorage::F64(_) => run!(f64),
            _ => return Ok(None),
        }
    };
    drop((p, g));
    let (p2, m2, v2) = updated;
    param.set(&p2)?;
    Ok(Some((m2, v2)))
}
