//! The linear layer y = x Wᵀ + b as one op with its own backward pass, optionally followed by ReLU (the
//! first layer of the feed-forward network), for CPU tensors in f32 or f64.
//!
//! The reference path ([`crate::model::linear::Linear::forward_reference`]) builds it from a matmul, a
//! transposed weight and a bias added as an outer product, which is five autograd nodes, each with a
//! gradient buffer candle zero-fills before adding into it. This op is one node: the forward pass is one
//! product written over a destination that already holds the bias; the backward pass is two products
//! and a column sum. Tests compare it with the reference in value and gradient.
//!
//! With g = ∂y (times [y > 0] after ReLU): ∂x = g·W, ∂W = gᵀ·x, ∂b = Σ_rows g.

use super::cpu::{contiguous_slice, simd, tensors3, with_float_slices, FloatSlices};
use super::gemm::{matmul, threads_for, Mat};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Columns of ∂b per parallel task.
const COLUMNS_PER_TASK: usize = 64;

/// Elements per parallel task of the element-wise passes (ReLU and its gradient).
const ELEMENTS_PER_TASK: usize = 1 << 15;

pub struct FusedLinear {
    /// Apply max(0, ·) to the output.
    pub relu: bool,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused linear")
}

/// y = x Wᵀ + b (then ReLU); x (rows, d_in), w (d_out, d_in), b (d_out).
pub(crate) fn forward<T: WithDType + PartialOrd>(x: &[T], w: &[T], b: &[T], relu: bool) -> Result<Vec<T>> {
    let (d_out, d_in) = (b.len(), w.len() / b.len().max(1));
    let rows = x.len() / d_in.max(1);
    let mut y: Vec<T> = Vec::with_capacity(rows * d_out);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    let wt = Mat::rows(w, d_out, d_in, d_in).t();
    matmul(&mut y, d_out, Mat::rows(x, rows, d_in, d_in), wt, true, threads_for(rows, d_out, d_in))?;
    if relu {
        y.par_chunks_mut(ELEMENTS_PER_TASK).for_each(|ys| {
            simd!(|| {
                for v in ys.iter_mut() {
                    *v = if *v < T::zero() { T::zero() } else { *v };
                }
            })
        });
    }
    Ok(y)
}

/// dy ⊙ [y > 0]: the gradient through ReLU, from its output y.
fn relu_grad<T: WithDType + PartialOrd>(dy: &[T], y: &[T]) -> Vec<T> {
    let mut g = dy.to_vec();
    relu_grad_in_place(&mut g, y);
    g
}

/// g ← g ⊙ [y > 0]: the gradient through ReLU in place, from its output y (the training step's
/// feed-forward networks, whose hidden gradient is theirs to overwrite: no second (rows, d_ff) buffer).
pub(crate) fn relu_grad_in_place<T: WithDType + PartialOrd>(g: &mut [T], y: &[T]) {
    g.par_chunks_mut(ELEMENTS_PER_TASK).zip(y.par_chunks(ELEMENTS_PER_TASK)).for_each(|(gs, ys)| {
        simd!(|| {
            for (g, &v) in gs.iter_mut().zip(ys) {
                *g = if v > T::zero() { *g } else { T::zero() };
            }
        })
    });
}

/// db += Σ_rows g for a row-major (rows, db.len()) `g`: each column summed in f64 over the rows in
/// order, by one task per `COLUMNS_PER_TASK` columns (the same result on every run).
fn add_column_sums<T: WithDType>(g: &[T], db: &mut [T]) {
    let d_out = db.len();
    db.par_chunks_mut(COLUMNS_PER_TASK).enumerate().for_each(|(c, db)| {
        let (start, width) = (c * COLUMNS_PER_TASK, db.len());
        let mut acc = [0f64; COLUMNS_PER_TASK];
        let acc = &mut acc[..width];
        simd!(|| {
            for row in g.chunks_exact(d_out) {
                for (a, v) in acc.iter_mut().zip(&row[start..start + width]) {
                    *a += v.to_f64();
                }
            }
        });
        for (o, &a) in db.iter_mut().zip(acc.iter()) {
            *o = T::from_f64(o.to_f64() + a);
        }
    });
}

/// (∂x, ∂W, ∂b) from ∂y; `y` is the op's output (for the ReLU mask); w is (d_out, d_in).
fn backward<T: WithDType + PartialOrd>(
    x: &[T],
    w: &[T],
    y: &[T],
    dy: &[T],
    d_out: usize,
    relu: bool,
) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
    let (mut dx, mut dw, mut db) = (vec![T::zero(); x.len()], vec![T::zero(); w.len()], vec![T::zero(); d_out]);
    backward_into(Inputs { x, w, y, relu }, dy, Grads { dx: &mut dx, dx_accumulate: false, dw: &mut dw, db: &mut db })?;
    Ok((dx, dw, db))
}

/// What the backward pass reads: the op's input x (rows, d_in), its weight w (d_out, d_in), its output y
/// (only read with ReLU, for the mask; may be empty without) and whether ReLU was applied.
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'a, T> {
    pub x: &'a [T],
    pub w: &'a [T],
    pub y: &'a [T],
    pub relu: bool,
}

/// Where the backward pass writes: ∂x into `dx` (added to what it holds with `dx_accumulate`), ∂W and ∂b
/// added into `dw` and `db`.
pub(crate) struct Grads<'a, T> {
    pub dx: &'a mut [T],
    pub dx_accumulate: bool,
    pub dw: &'a mut [T],
    pub db: &'a mut [T],
}

/// The backward pass into caller-owned buffers (the hand-written training step of [`super::step`]
/// accumulates every weight's gradient in place): ∂x = g·W, ∂W += gᵀ·x, ∂b += Σ_rows g.
pub(crate) fn backward_into<T: WithDType + PartialOrd>(i: Inputs<T>, dy: &[T], out: Grads<T>) -> Result<()> {
    let d_out = out.db.len();
    let d_in = i.w.len() / d_out.max(1);
    let rows = dy.len() / d_out.max(1);
    let shapes_fit = i.w.len() == d_out * d_in
        && dy.len() == rows * d_out
        && (!i.relu || i.y.len() == dy.len())
        && i.x.len() == rows * d_in
        && out.dx.len() == rows * d_in
        && out.dw.len() == i.w.len();
    if !shapes_fit {
        candle_core::bail!("fused linear backward: buffers do not fit ({rows} rows, {d_in} → {d_out})");
    }
    let masked: Vec<T>;
    let g = if i.relu {
        masked = relu_grad(dy, i.y);
        &masked[..]
    } else {
        dy
    };
    let g_mat = Mat::rows(g, rows, d_out, d_out);
    let w_mat = Mat::rows(i.w, d_out, d_in, d_in);
    matmul(out.dx, d_in, g_mat, w_mat, out.dx_accumulate, threads_for(rows, d_in, d_out))?;
    matmul(out.dw, d_in, g_mat.t(), Mat::rows(i.x, rows, d_in, d_in), true, threads_for(d_out, d_in, rows))?;
    add_column_sums(g, out.db);
    Ok(())
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    /// x (..., d_in), w (d_out, d_in), b (d_out) → (..., d_out)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d_in = l1.dims().last().copied().unwrap_or(0);
        let (d_out, w_in) = l2.shape().dims2()?;
        if w_in != d_in || d_in == 0 || l3.shape().dims1()? != d_out {
            candle_core::bail!("fused linear: x {:?}, w {:?}, b {:?} do not fit", l1.dims(), l2.dims(), l3.dims());
        }
        let y = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(forward::<f32>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, self.relu)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(forward::<f64>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, self.relu)?)
            }
            other => candle_core::bail!("fused linear: unsupported dtype {:?}", other.dtype()),
        };
        let mut dims = l1.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = d_out;
        }
        Ok((y, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d_out = b.elem_count();
        let (dx, dw, db) = with_float_slices("fused linear", &[x, w, y, dy], |data| match data {
            FloatSlices::F32(s) => tensors3(backward::<f32>(s[0], s[1], s[2], s[3], d_out, self.relu)?),
            FloatSlices::F64(s) => tensors3(backward::<f64>(s[0], s[1], s[2], s[3], d_out, self.relu)?),
        })?;
        let dev = x.device();
        let (dx, dw, db) = (dx.reshape(x.shape())?, dw.reshape(w.shape())?, db.reshape(d_out)?);
        let (dx, dw, db) = (dx.to_device(dev)?, dw.to_device(dev)?, db.to_device(dev)?);
        Ok((Some(dx), Some(dw), Some(db)))
    }
}
