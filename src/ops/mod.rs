//! The fast path: fused CPU kernels, each with its own backward pass, one op a file. Each keeps its plain
//! tensor-op reference beside the code that calls it, and a test compares the two in value and gradient.
//!
//! - [`layer_norm`]: LayerNorm (the reference is [`crate::model::norm::LayerNorm::forward_reference`]);
//! - [`softmax`]: the attention softmax (the reference is `candle_nn::ops::softmax`);
//! - [`cross_entropy`]: label-smoothed cross-entropy (the reference is
//!   [`crate::loss::label_smoothed_cross_entropy_reference`]);
//! - [`cpu`]: helpers the kernels share.
//!
//! The fused ops run on CPU tensors in f32 or f64; any other device takes the reference path.

pub mod cpu;
pub mod cross_entropy;
pub mod layer_norm;
pub mod softmax;
