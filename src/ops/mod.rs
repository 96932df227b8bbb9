//! The fast path: fused CPU kernels, each with its own backward pass, one op a file. Each keeps its plain
//! tensor-op reference beside the code that calls it, and a test compares the two in value and gradient.
//!
//! - [`linear`]: x Wᵀ + b, optionally with ReLU (the reference is
//!   [`crate::model::linear::Linear::forward_reference`]);
//! - [`layer_norm`]: LayerNorm (the reference is [`crate::model::norm::LayerNorm::forward_reference`]);
//! - [`softmax`]: the attention softmax (the reference is `candle_nn::ops::softmax`);
//! - [`cross_entropy`]: label-smoothed cross-entropy (the reference is
//!   [`crate::loss::label_smoothed_cross_entropy_reference`]);
//! - [`step`]: the whole training step, forward and backward, written by hand over these kernels (the
//!   reference is the model's forward pass with candle's autograd, [`crate::train::gradients::accumulate`]);
//! - [`gemm`], [`tile`] and [`cpu`]: helpers the kernels share.
//!
//! [`fused`] is the one switch: the fused ops run on CPU tensors in f32 or f64 unless the reference path
//! is asked for ([`with_reference_path`], per thread, so that tests and benchmarks can run both paths in
//! one process); any other device takes the reference path until it has kernels of its own.

pub mod adam;
pub mod attention;
pub mod cpu;
pub mod cross_entropy;
pub mod dropout;
pub mod gemm;
pub mod layer_norm;
pub mod linear;
pub mod projected_loss;
pub mod softmax;
pub mod step;
pub mod tile;

use candle_core::{DType, Tensor};
use std::cell::Cell;

thread_local! {
    static REFERENCE: Cell<bool> = const { Cell::new(false) };
    static AUTOGRAD_STEP: Cell<bool> = const { Cell::new(false) };
    static WHOLE_BATCHES: Cell<bool> = const { Cell::new(false) };
}

/// Whether the fused op should handle `x`: a CPU tensor in f32 or f64, and the reference path not asked
/// for on this thread.
pub fn fused(x: &Tensor) -> bool {
    !REFERENCE.with(Cell::get) && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether a training step may take the hand-written forward and backward pass of [`step`] for a model
/// whose parameters are like `x`: the fused ops apply, and the autograd path was not asked for.
pub fn hand_written_step(x: &Tensor) -> bool {
    fused(x) && !AUTOGRAD_STEP.with(Cell::get)
}

/// Runs `f` with every op on its reference path (on this thread), then restores the previous choice,
/// also when `f` panics.
pub fn with_reference_path<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&REFERENCE, f)
}

/// Runs `f` with training steps through the model's forward pass and candle's autograd (the fused ops
/// still on) instead of [`step`], on this thread, then restores the previous choice.
pub fn with_autograd_step<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&AUTOGRAD_STEP, f)
}

/// Runs `f` with the hand-written step taking each batch whole instead of in shards ([`step`]), on this
/// thread, then restores the previous choice: the tests that compare the step with autograd need it,
/// because shards draw their own dropout masks.
pub fn with_whole_batches<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&WHOLE_BATCHES, f)
}

/// Whether the hand-written step may split batches into shards (see [`with_whole_batches`]).
pub fn sharded_step() -> bool {
    !WHOLE_BATCHES.with(Cell::get)
}

/// Runs `f` with the thread-local `flag` set, then restores its previous value, also when `f` panics.
pub(crate) fn with_flag<R>(flag: &'static std::thread::LocalKey<Cell<bool>>, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|r| r.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|r| r.replace(true)));
    f()
}
