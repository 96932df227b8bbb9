//! Helpers shared by the fused CPU ops: the contiguous slice of a storage, arithmetic in the tensor's own
//! precision, reductions in a fixed order, the run-time choice of vector instructions ([`simd!`]) that
//! the attention, LayerNorm, loss, dropout and Adam kernels run under, and a vectorisable f32 exp
//! ([`exp_f32`]).

use candle_core::{CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The contiguous slice of a CPU tensor's storage; `op` names the op in the error.
pub fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op} needs contiguous inputs"),
    }
}

/// Arithmetic in the tensor's own precision: `exp` on f32 stays in f32.
pub trait Real:
    WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::MulAssign
    + std::ops::AddAssign
    + PartialOrd
{
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    /// self · a + b, rounded once (one instruction where the CPU has fused multiply-add, as in every
    /// [`simd!`] body on x86-64 with AVX2 or AVX-512).
    fn mul_add(self, a: Self, b: Self) -> Self;

    /// e^x for the softmaxes (arguments ≤ 0 there), written so that a loop of it vectorises: for f32,
    /// [`exp_f32`]; for f64, the C library's `exp` (the f64 tests compare with the reference at 1e-10).
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }

    /// The largest element of a non-empty slice (in `LANES` running maxima, so that the comparisons do
    /// not wait on one another; the maximum does not depend on the order).
    #[inline(always)]
    fn max_of(xs: &[Self]) -> Self {
        let mut m = [xs[0]; LANES];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in m.iter_mut().zip(c) {
                if v > *m {
                    *m = v;
                }
            }
        }
        let rest = chunks.remainder().iter().copied();
        m.iter().copied().chain(rest).fold(m[0], |a, v| if v > a { v } else { a })
    }
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, or AVX2 with FMA), chosen
/// at run time, so that one binary runs on any x86-64 and uses what it finds; the plain build targets
/// the x86-64 baseline (SSE2). Whatever `f` inlines is vectorised for that level: mark its helpers
/// `#[inline(always)]`. Rust never fuses a multiply and an add by itself, so results do not depend on the
/// level.
///
/// `f` itself must be inlined into the dispatching function too: call this through [`simd!`], which
/// marks the closure `#[inline(always)]`. A closure left to the compiler's choice was compiled on its
/// own, for the baseline, and the attention kernels ran on 128-bit SSE.
#[inline(always)]
pub fn run_vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `simd!(|| body)`: runs the closure through [`run_vectorized`], inlined.
macro_rules! simd {
    (|| $body:expr $(,)?) => {
        $crate::ops::cpu::run_vectorized(
            #[inline(always)]
            || $body,
        )
    };
}
pub(crate) use simd;

/// Partial sums a reduction keeps apart.
const LANES: usize = 8;

/// Σ f(x) over the elements of `xs`, in f64, over `LANES` partial sums combined in a fixed order: a row
/// sum that adds into one accumulator waits a full add latency per element, this one pipelines and
/// vectorises, and gives the same result on every run. (It takes slices, not indices: with an index
/// closure, the bounds checks kept the loop scalar.)
#[inline(always)]
pub fn lane_sum<A: Copy>(xs: &[A], f: impl Fn(A) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let (chunks, rest) = xs.as_chunks::<LANES>();
    for c in chunks {
        for lane in 0..LANES {
            acc[lane] += f(c[lane]);
        }
    }
    for (acc, &x) in acc.iter_mut().zip(rest) {
        *acc += f(x);
    }
    combine_lanes(acc)
}

/// [`lane_sum`] of f(a_i, b_i) over the common length of two slices.
#[inline(always)]
pub fn lane_sum2<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f64) -> f64 {
    let n = a.len().min(b.len());
    let mut acc = [0f64; LANES];
    let ((a_chunks, a_rest), (b_chunks, b_rest)) = (a[..n].as_chunks::<LANES>(), b[..n].as_chunks::<LANES>());
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += f(x[lane], y[lane]);
        }
    }
    for ((acc, &x), &y) in acc.iter_mut().zip(a_rest).zip(b_rest) {
        *acc += f(x, y);
    }
    combine_lanes(acc)
}

/// The lanes' total, lane 0 first. `black_box` keeps the partial sums in memory for this one sum: without
/// it, LLVM's SLP vectoriser shaped the whole loop after this horizontal sum and left it scalar.
#[inline(always)]
fn combine_lanes(mut acc: [f64; LANES]) -> f64 {
    std::hint::black_box(&mut acc);
    acc.iter().sum()
}

/// A new vector of `n` elements written by `write(start, out)` in parallel tasks, with what each task
/// returns, in task order: `out` is elements start..start + out.len() of the vector (`per_task` of them,
/// fewer in the last task), not yet initialised. The vector is never zero-filled: a zero fill before a
/// pass that overwrites every element costs a pass over the memory (memset was 3.8% of a training
/// step's profile, docs/PERFORMANCE.md).
///
/// # Safety
/// `write` must initialise every element of `out`.
pub unsafe fn new_vec_written<T: Send, R: Send>(
    n: usize,
    per_task: usize,
    write: impl Fn(usize, &mut [MaybeUninit<T>]) -> R + Sync,
) -> (Vec<T>, Vec<R>) {
    let per_task = per_task.max(1);
    let mut v = Vec::with_capacity(n);
    let results = v.spare_capacity_mut()[..n]
        .par_chunks_mut(per_task)
        .enumerate()
        .map(|(i, out)| write(i * per_task, out))
        .collect();
    // SAFETY: the tasks cover elements 0..n, and the caller's `write` initialised every one of them.
    unsafe { v.set_len(n) };
    (v, results)
}

impl Real for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        f32::exp(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
}

/// e^x in f32 with only multiplies, adds and integer bit operations, so that a loop of it vectorises
/// (the C library's `expf` is a scalar call: 4% of a training step, for the softmaxes of the loss and
/// the attention). Range reduction x = n ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in two parts, so that n ln 2
/// is exact), Cephes' degree-6 polynomial for e^r, and 2^n from the exponent bits; within 1 ulp of
/// the exact value (tested). No fused multiply-add, so the result is the same at every vector width.
/// Below `LO` = -87.3365 (where e^x is under f32's smallest normal number) the result is 0; above 88.3,
/// +∞ (e^x is finite up to 88.72: the softmaxes pass x ≤ 0); NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.3;
    const LN2_HI: f32 = 0.693_359_4; // 355/512: n · LN2_HI is exact for |n| < 2^15
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer, kept in the low bits
    let xc = x.clamp(LO, HI);
    let shifted = xc * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let two_n = f32::from_bits(((n_bits + 127) << 23) as u32);
    let y = e_r * two_n;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// Keeps freed memory in the process for reuse instead of returning it to the system.
///
/// A training step allocates and frees the same large buffers (activations, gradients, the logits) at
/// every update. glibc's malloc serves blocks above its mmap threshold (at most 32 MiB) with fresh
/// mappings and trims the heap top, so each update page-faulted its memory in again: a fifth of a
/// profile of the Multi30k config was the kernel zeroing pages. With mmap off and trimming only when 2 GiB
/// lie free at the heap top, freed blocks are reused; a step got about 8% faster (docs/PERFORMANCE.md). Does nothing
/// outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        // One arena: the training step allocates on a pool thread, and a second arena would keep a second
        // copy of the step's freed buffers (peak RSS 1.3 GB instead of 0.68 GB on the Multi30k config).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Σ x² over a CPU tensor in f32 or f64, in f64, in parallel over chunks whose partial sums are added in
/// chunk order (the same result on every run); NaN or infinite when an element is.
pub fn sum_of_squares(t: &candle_core::Tensor) -> Result<f64> {
    const CHUNK: usize = 1 << 15;
    fn sum<T: WithDType>(xs: &[T]) -> f64 {
        use rayon::prelude::*;
        let parts: Vec<f64> = xs.par_chunks(CHUNK).map(|c| simd!(|| lane_sum(c, |x| x.to_f64().powi(2)))).collect();
        parts.iter().sum()
    }
    with_float_slices("sum of squares", &[t], |data| match data {
        FloatSlices::F32(s) => Ok(sum(s[0])),
        FloatSlices::F64(s) => Ok(sum(s[0])),
    })
}

/// The data of CPU tensors of one float dtype, borrowed for the length of a call.
pub enum FloatSlices<'a> {
    F32(Vec<&'a [f32]>),
    F64(Vec<&'a [f64]>),
}

/// Runs `f` on the contiguous data of `tensors` (made contiguous first), which must all be CPU tensors
/// in f32, or all in f64: the common start of the fused ops' backward passes. `op` names the op in errors.
pub fn with_float_slices<R>(
    op: &str,
    tensors: &[&candle_core::Tensor],
    f: impl FnOnce(FloatSlices) -> Result<R>,
) -> Result<R> {
    use candle_core::{CpuStorage, Storage};
    let tensors = tensors.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let (mut f32s, mut f64s) = (vec![], vec![]);
    for (storage, layout) in &guards {
        match &**storage {
            Storage::Cpu(s @ CpuStorage::F32(_)) => f32s.push(contiguous_slice::<f32>(s, layout, op)?),
            Storage::Cpu(s @ CpuStorage::F64(_)) => f64s.push(contiguous_slice::<f64>(s, layout, op)?),
            _ => candle_core::bail!("{op} runs on CPU tensors in f32 or f64 only"),
        }
    }
    match (f32s.len(), f64s.len()) {
        (_, 0) => f(FloatSlices::F32(f32s)),
        (0, _) => f(FloatSlices::F64(f64s)),
        _ => candle_core::bail!("{op}: inputs mix f32 and f64"),
    }
}

/// Three gradients as flat CPU tensors (the caller reshapes them).
#[allow(clippy::type_complexity)]
pub fn tensors3<T: WithDType>(
    (a, b, c): (Vec<T>, Vec<T>, Vec<T>),
) -> Result<(candle_core::Tensor, candle_core::Tensor, candle_core::Tensor)> {
    let flat = |v: Vec<T>| {
        let n = v.len();
        candle_core::Tensor::from_vec(v, n, &candle_core::Device::Cpu)
    };
    Ok((flat(a)?, flat(b)?, flat(c)?))
}

/// Sets the number of worker threads of everything that computes: rayon's global pool (the fused ops,
/// gemm's threaded products) and candle's element-wise pool, which both read `RAYON_NUM_THREADS` when
/// they start. 0 keeps the default, one per core. Call it before any parallel work has run.
pub fn set_threads(n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    // Nothing else runs yet: this is the first thing `nmt train` does after reading its config.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("train.threads {n}: cannot start the thread pool: {e}"))
}

/// Fails when a target id other than `pad` lies outside a vocabulary of `vocab` words (it would index
/// past a row of logits).
pub fn check_targets(op: &str, target: &[u32], pad: u32, vocab: usize) -> Result<()> {
    match target.iter().find(|&&y| y != pad && y as usize >= vocab) {
        Some(bad) => candle_core::bail!("{op}: target {bad} outside the vocabulary of {vocab}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorisable f32 exp stays within 1 ulp of the exact value (e^x in f64) at 175,601 points
    /// spread over its whole range, is exact at 0, and handles the ends, infinities and NaN.
    #[test]
    fn exp_f32_is_within_one_ulp_of_exp() {
        let mut worst = 0f64;
        for i in 0..=175_600 {
            let x = -87.3 + i as f32 * 1e-3;
            let exact = (x as f64).exp();
            let e = exact as f32;
            let ulp = (f32::from_bits(e.to_bits() + 1) - e) as f64;
            worst = worst.max((exp_f32(x) as f64 - exact).abs() / ulp);
        }
        assert!(worst <= 1.0, "{worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-87.336) > 0.0 && exp_f32(88.3).is_finite());
        assert_eq!((exp_f32(-100.0), exp_f32(f32::NEG_INFINITY)), (0.0, 0.0));
        assert_eq!((exp_f32(89.0), exp_f32(f32::INFINITY)), (f32::INFINITY, f32::INFINITY));
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
