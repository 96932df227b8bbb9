//! Matrix products on slices through the `gemm` crate (the kernels candle's CPU matmul calls), for the
//! fused ops: any strides, accumulation into the destination, and a choice of threads, so that an op can
//! run one product across both cores or many small ones side by side.
//!
//! Hand-written because candle's matmul always allocates and zero-fills a fresh destination and runs
//! batched products one after the other; gemm's own API is raw pointers, which this wraps with checks.

use candle_core::{bail, Result};
use gemm::Parallelism;

/// A matrix view over a slice: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major (rows, cols) matrix whose rows are `rs` elements apart.
    pub fn rows(data: &'a [T], rows: usize, cols: usize, rs: usize) -> Self {
        Self { data, rows, cols, rs, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

thread_local! {
    static ONE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every product [`threads_for`] sizes on one thread (on this thread): for work that already
/// runs side by side with other work, such as a shard of the training step.
pub fn with_one_thread_products<R>(f: impl FnOnce() -> R) -> R {
    super::with_flag(&ONE_THREAD, f)
}

/// Threads for one product: both cores for a large one, one for a small one (where spreading the work
/// costs more than it saves) or when the caller already runs products in parallel
/// ([`with_one_thread_products`]).
pub fn threads_for(m: usize, n: usize, k: usize) -> usize {
    if m * n * k < 48 * 48 * 48 || ONE_THREAD.with(|c| c.get()) {
        1
    } else {
        candle_core::utils::get_num_threads()
    }
}

/// `dst = a · b`, or `dst += a · b` with `accumulate`; `dst` is row-major (a.rows, b.cols) with rows
/// `dst_rs` elements apart.
pub fn matmul<T: candle_core::WithDType>(
    dst: &mut [T],
    dst_rs: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    threads: usize,
) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len();
    if b.rows != k || !a.fits() || !b.fits() || !dst_fits || (m > 1 && dst_rs < n) {
        bail!("gemm: shapes ({m}, {k}) · ({}, {n}) do not fit their buffers", b.rows);
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(T::zero());
            }
        }
        return Ok(());
    }
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: every index the product touches was checked to lie inside its slice above, `dst` is
    // borrowed mutably and the inputs immutably, so nothing aliases.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_transposes_and_accumulation_equal_loops() {
        let (m, k, n) = (37, 53, 29);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 3) % 13) as f64 - 6.0).collect();
        let expect = |i: usize, j: usize| (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum::<f64>();
        for threads in [1, 2] {
            let mut c = vec![1.0; m * n];
            matmul(&mut c, n, Mat::rows(&a, m, k, k), Mat::rows(&b, k, n, n), false, threads).unwrap();
            assert!((0..m * n).all(|x| c[x] == expect(x / n, x % n)));
            matmul(&mut c, n, Mat::rows(&a, m, k, k), Mat::rows(&b, k, n, n), true, threads).unwrap();
            assert!((0..m * n).all(|x| c[x] == 2.0 * expect(x / n, x % n)));
            // (bᵀ · aᵀ) = (a · b)ᵀ through transposed views
            let mut ct = vec![0.0; n * m];
            matmul(&mut ct, m, Mat::rows(&b, k, n, n).t(), Mat::rows(&a, m, k, k).t(), false, threads).unwrap();
            assert!((0..m * n).all(|x| ct[(x % n) * m + x / n] == expect(x / n, x % n)));
        }
        let mut small = vec![0.0; 4];
        assert!(matmul(&mut small, n, Mat::rows(&a, m, k, k), Mat::rows(&b, k, n, n), false, 1).is_err());
    }
}
