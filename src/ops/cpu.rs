//! Helpers shared by the fused CPU ops (LayerNorm, softmax, the loss): the contiguous slice of a storage,
//! and arithmetic in the tensor's own precision.

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The contiguous slice of a CPU tensor's storage; `op` names the op in the error.
pub fn contiguous_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op} needs contiguous inputs"),
    }
}

/// Arithmetic in the tensor's own precision: `exp` on f32 stays in f32.
pub trait Real:
    WithDType + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self> + std::ops::MulAssign + PartialOrd
{
    fn exp(self) -> Self;

    /// The largest element of a non-empty slice.
    fn max_of(xs: &[Self]) -> Self {
        xs.iter().copied().fold(xs[0], |m, v| if v > m { v } else { m })
    }
}

impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
}
