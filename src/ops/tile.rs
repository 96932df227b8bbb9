//! C += A B for the attention's small per-head products (about 25 × 64 × 25 for Multi30k), with a block
//! of C kept in registers.
//!
//! Written by hand because the `gemm` crate (which [`super::gemm`] calls for the large products) packs
//! both operands and dispatches per call, which costs more than the arithmetic at these sizes; and
//! because the loops this replaced, one `y += αx` over a head's d_k elements per (query, key) pair, load
//! and store their destination for every multiply-add: the attention took 12.5% of a training step for
//! under 2% of its FLOPs (docs/PERFORMANCE.md).
//!
//! The kernel holds [`ROWS`] rows × [`WIDE`] columns of C in accumulators (8 vector registers for f32
//! with AVX-512) and, for each term p of the inner dimension, loads row p of B once and multiplies it
//! by each row's A element broadcast: a fused multiply-add per register and two loads per eight of them,
//! so the loop runs at the multiply-add ports' rate. A is read in place through its strides (the
//! attention reads P and ∂S transposed); a first version copied each block of A in order first, and
//! that copy cost a third of the arithmetic.
//! Rows and columns past the last full block take narrower blocks; columns past the last multiple of
//! [`NARROW`] (a d_k that is not a multiple of 16) take a plain loop. Each element of C is one
//! accumulation in a fixed order: the same result on every run and at every vector width.

use super::cpu::Real;

/// Rows of C per register block.
const ROWS: usize = 4;
/// Columns of C per register block (two 512-bit registers of f32), then [`NARROW`] for what is left.
const WIDE: usize = 32;
const NARROW: usize = 16;

/// An operand read through strides: element (r, c) at `data[r · row + c · col]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, T> {
    pub data: &'a [T],
    pub row: usize,
    pub col: usize,
}

impl<'a, T> Strided<'a, T> {
    /// A row-major block whose rows start `stride` elements apart.
    pub fn rows(data: &'a [T], stride: usize) -> Self {
        Strided { data, row: stride, col: 1 }
    }

    /// The transpose of a row-major block whose rows start `stride` elements apart.
    pub fn transposed(data: &'a [T], stride: usize) -> Self {
        Strided { data, row: 1, col: stride }
    }
}

/// The sizes of one product: C is (rows × cols), A (rows × inner), B (inner × cols).
#[derive(Clone, Copy)]
pub(crate) struct Sizes {
    pub rows: usize,
    pub inner: usize,
    pub cols: usize,
}

/// C += A B, where B and C are row-major with rows `ldb` and `ldc` elements apart (`b` and `c` start at
/// element (0, 0)).
///
/// On x86-64 the kernel is compiled as a function of its own for AVX-512 and for AVX2 with FMA, chosen at
/// run time: inlined into the attention's larger loops, LLVM left its register blocks scalar (the
/// attention got slower than the loops it replaced), while in a function of its own the blocks are
/// vector registers and the multiply-adds single instructions.
pub(crate) fn product_add<T: Real>(a: Strided<T>, b: &[T], ldb: usize, c: &mut [T], ldc: usize, sizes: Sizes) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for (checked just above).
            return unsafe { product_add_avx512(a, b, ldb, c, ldc, sizes) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { product_add_avx2(a, b, ldb, c, ldc, sizes) };
        }
    }
    product_add_blocks(a, b, ldb, c, ldc, sizes)
}

/// [`product_add_blocks`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn product_add_avx512<T: Real>(a: Strided<T>, b: &[T], ldb: usize, c: &mut [T], ldc: usize, sizes: Sizes) {
    product_add_blocks(a, b, ldb, c, ldc, sizes)
}

/// [`product_add_blocks`] compiled for AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn product_add_avx2<T: Real>(a: Strided<T>, b: &[T], ldb: usize, c: &mut [T], ldc: usize, sizes: Sizes) {
    product_add_blocks(a, b, ldb, c, ldc, sizes)
}

/// [`product_add`] for any CPU: C in blocks of up to [`ROWS`] rows.
#[inline(always)]
fn product_add_blocks<T: Real>(a: Strided<T>, b: &[T], ldb: usize, c: &mut [T], ldc: usize, sizes: Sizes) {
    let mut r0 = 0;
    while r0 < sizes.rows {
        let block = match sizes.rows - r0 {
            1 => 1,
            2 | 3 => 2,
            _ => ROWS,
        };
        let c = &mut c[r0 * ldc..];
        match block {
            1 => row_block::<T, 1>(a, r0, b, ldb, c, ldc, sizes),
            2 => row_block::<T, 2>(a, r0, b, ldb, c, ldc, sizes),
            _ => row_block::<T, ROWS>(a, r0, b, ldb, c, ldc, sizes),
        }
        r0 += block;
    }
}

/// Rows r0..r0 + R of C.
#[inline(always)]
fn row_block<T: Real, const R: usize>(
    a: Strided<T>,
    r0: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    sizes: Sizes,
) {
    let Sizes { inner, cols, .. } = sizes;
    let mut col = 0;
    while col + WIDE <= cols {
        register_block::<T, R, WIDE>(a, r0, inner, &b[col..], ldb, &mut c[col..], ldc);
        col += WIDE;
    }
    if col + NARROW <= cols {
        register_block::<T, R, NARROW>(a, r0, inner, &b[col..], ldb, &mut c[col..], ldc);
        col += NARROW;
    }
    if col < cols {
        for p in 0..inner {
            let b_p = &b[p * ldb + col..p * ldb + cols];
            for r in 0..R {
                let x = a.data[(r0 + r) * a.row + p * a.col];
                for (y, &b) in c[r * ldc + col..r * ldc + cols].iter_mut().zip(b_p) {
                    *y = x.mul_add(b, *y);
                }
            }
        }
    }
}

/// C[0..R, 0..W] += A[r0..r0 + R, ..] B with the R × W block of C in registers: for each term p, row p
/// of B loaded once and each row's A element broadcast against it.
#[inline(always)]
fn register_block<T: Real, const R: usize, const W: usize>(
    a: Strided<T>,
    r0: usize,
    inner: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
) {
    let mut acc = [[T::zero(); W]; R];
    for (p, b_p) in b.chunks(ldb).take(inner).enumerate() {
        let b_p: &[T; W] = b_p[..W].try_into().expect("a full block of B's row");
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a.data[(r0 + r) * a.row + p * a.col];
            for (s, &b) in acc.iter_mut().zip(b_p) {
                *s = x.mul_add(b, *s);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (y, &s) in c[r * ldc..r * ldc + W].iter_mut().zip(acc) {
            *y += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C += A B by the definition, in f64.
    fn reference(a: Strided<f64>, b: &[f64], ldb: usize, c: &mut [f64], ldc: usize, s: Sizes) {
        for r in 0..s.rows {
            for j in 0..s.cols {
                let dot: f64 = (0..s.inner).map(|p| a.data[r * a.row + p * a.col] * b[p * ldb + j]).sum();
                c[r * ldc + j] += dot;
            }
        }
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::rng::Rng::seed(seed);
        (0..n).map(|_| f64::from(rng.uniform()) * 2.0 - 1.0).collect()
    }

    /// Every block shape (4, 2 and 1 rows; 32, 16 and leftover columns), strided and transposed A, B and C
    /// inside wider rows, and C added to rather than overwritten.
    #[test]
    fn product_add_equals_the_definition() {
        for &(rows, inner, cols) in &[(1, 1, 1), (3, 5, 16), (7, 21, 21), (25, 64, 48), (37, 23, 64), (6, 9, 90)] {
            let s = Sizes { rows, inner, cols };
            let (ldb, ldc) = (cols + 5, cols + 3);
            let b = values(inner * ldb, 2);
            let c0 = values(rows * ldc, 3);
            for transposed in [false, true] {
                let a = values((rows + 1) * (inner + 2) + 1, 1);
                let a =
                    if transposed { Strided::transposed(&a[1..], rows + 1) } else { Strided::rows(&a[1..], inner + 2) };
                let (mut got, mut want) = (c0.clone(), c0.clone());
                product_add(a, &b, ldb, &mut got, ldc, s);
                reference(a, &b, ldb, &mut want, ldc, s);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-12,
                        "{rows}×{inner}×{cols} transposed {transposed}: element {i} {g} vs {w}"
                    );
                }
            }
        }
    }
}
