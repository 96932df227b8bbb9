//! A fused LayerNorm with its own backward pass, for CPU tensors in f32 or f64.
//!
//! candle 0.11's `ops::layer_norm` has no backward, and LayerNorm written with tensor ops (the reference
//! path in [`crate::model::norm`]) is correct but slow to differentiate: the gradients of the gain and bias are
//! sums over all leading dimensions, which candle's CPU backend does one element at a time. This op
//! computes the forward pass in one sweep over each row and the whole backward pass (∂x, ∂γ, ∂β) in one
//! more, in parallel over rows. Tests in `norm.rs` check it against the reference path.
//!
//! With x̂ = (x - μ)/σ and σ = sqrt(var + ε) (biased variance) per row of width n:
//! y = γ·x̂ + β;  ∂β = Σ_rows ∂y;  ∂γ = Σ_rows ∂y·x̂;  ∂x = (g - mean(g) - x̂·mean(g·x̂)) / σ with g = γ·∂y.

use super::cpu::{
    contiguous_slice, lane_sum, lane_sum2, new_vec_written, simd, tensors3, with_float_slices, FloatSlices,
};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

pub struct FusedLayerNorm {
    pub eps: f64,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(s, l, "fused layer norm")
}

/// Mean and 1/σ of one row.
#[inline(always)]
fn row_stats<T: WithDType>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = lane_sum(row, |x| x.to_f64()) / n;
    let var = lane_sum(row, |x| (x.to_f64() - mean).powi(2)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// y = γ·x̂ + β for every row of `x` (rows of width `w.len()`).
pub(crate) fn forward<T: WithDType>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    assert_eq!(b.len(), n, "layer norm: gain and bias differ in length");
    // SAFETY: each task writes every element of its rows `ys`: x is sliced to their length, cut into the
    // same rows, and γ and β are as wide as a row.
    let (y, _) = unsafe {
        new_vec_written(x.len(), n * ROWS_PER_TASK, |start, ys| {
            let xs = &x[start..start + ys.len()];
            simd!(|| {
                for (yr, xr) in ys.chunks_mut(n).zip(xs.chunks(n)) {
                    let (mean, inv_std) = row_stats(xr, eps);
                    for (((y, &x), &w), &b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        y.write(T::from_f64((x.to_f64() - mean) * inv_std * w.to_f64() + b.to_f64()));
                    }
                }
            })
        })
    };
    y
}

/// Returns (∂x, ∂γ, ∂β).
pub(crate) fn backward<T: WithDType>(x: &[T], w: &[T], dy: &[T], eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let n = w.len();
    assert_eq!(dy.len(), x.len(), "layer norm backward: ∂y and x differ in length");
    // SAFETY: each task writes every element of its rows `dxs`: x and ∂y are sliced to their length and
    // cut into the same rows; the row buffers below are n wide, as wide as a row.
    let (dx, partial_sums) = unsafe {
        new_vec_written(x.len(), n * ROWS_PER_TASK, |start, dxs| {
            let (xs, dys) = (&x[start..start + dxs.len()], &dy[start..start + dxs.len()]);
            simd!(|| {
                let (mut dw, mut db) = (vec![0f64; n], vec![0f64; n]);
                // Per row: x̂ and g = γ·∂y.
                let (mut xhat, mut g) = (vec![0f64; n], vec![0f64; n]);
                for ((dxr, xr), dyr) in dxs.chunks_mut(n).zip(xs.chunks(n)).zip(dys.chunks(n)) {
                    let (mean, inv_std) = row_stats(xr, eps);
                    let row = xhat.iter_mut().zip(g.iter_mut()).zip(xr).zip(dyr).zip(w);
                    for ((((xh, g), &x), &d), &w) in row {
                        *xh = (x.to_f64() - mean) * inv_std;
                        *g = d.to_f64() * w.to_f64();
                    }
                    for (((dw, db), &d), &xh) in dw.iter_mut().zip(db.iter_mut()).zip(dyr).zip(&xhat) {
                        *dw += d.to_f64() * xh;
                        *db += d.to_f64();
                    }
                    let g_mean = lane_sum(&g, |g| g) / n as f64;
                    let gx_mean = lane_sum2(&g, &xhat, |g, xh| g * xh) / n as f64;
                    for ((dx, &g), &xh) in dxr.iter_mut().zip(&g).zip(&xhat) {
                        dx.write(T::from_f64((g - g_mean - xh * gx_mean) * inv_std));
                    }
                }
                (dw, db)
            })
        })
    };
    // The per-task sums are added in task order, not in rayon's work-stealing order, so that ∂γ and ∂β
    // are the same on every run (exact resume depends on it).
    let (dw, db) = partial_sums.into_iter().fold((vec![0f64; n], vec![0f64; n]), |(mut a, mut b), (c, d)| {
        a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
        b.iter_mut().zip(d).for_each(|(b, d)| *b += d);
        (a, b)
    });
    (dx, dw.into_iter().map(T::from_f64).collect(), db.into_iter().map(T::from_f64).collect())
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        let n = l1.dims().last().copied().unwrap_or(0);
        if n == 0 || l2.shape().elem_count() != n || l3.shape().elem_count() != n {
            candle_core::bail!(
                "fused layer norm: x {:?}, gain {:?}, bias {:?} do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let y = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(forward::<f32>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, self.eps))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(forward::<f64>(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, self.eps))
            }
            other => candle_core::bail!("fused layer norm: unsupported dtype {:?}", other.dtype()),
        };
        Ok((y, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = with_float_slices("fused layer norm", &[x, w, dy], |data| match data {
            FloatSlices::F32(s) => tensors3(backward::<f32>(s[0], s[1], s[2], self.eps)),
            FloatSlices::F64(s) => tensors3(backward::<f64>(s[0], s[1], s[2], self.eps)),
        })?;
        let dev = x.device();
        let (dx, dw, db) = (dx.reshape(x.shape())?.to_device(dev)?, dw.to_device(dev)?, db.to_device(dev)?);
        Ok((Some(dx), Some(dw), Some(db)))
    }
}
