//! Label-smoothed cross-entropy that ignores padding (paper §5.4).
//!
//! With smoothing ε and vocabulary V, the target distribution puts 1-ε on the reference token and spreads
//! ε uniformly over all V tokens (fairseq's and the Annotated Transformer's convention):
//! loss = (1-ε)·(-log p(y)) + ε·mean_v(-log p(v)), averaged over non-padding target tokens.
//! On CPU a fused op computes it ([`crate::ops::cross_entropy`]); the reference path is built from `log_softmax` and
//! `gather`, both differentiable in candle.

use crate::ops::cross_entropy::FusedSmoothedCrossEntropy;
use candle_core::{DType, Result, Tensor, D};

/// Loss of one batch: the smoothed training loss (a scalar tensor to backpropagate) and the plain
/// negative log-likelihood sum, for perplexity.
pub struct Loss {
    /// Mean label-smoothed loss per non-padding token, scalar.
    pub loss: Tensor,
    /// Sum of -log p(reference token) over non-padding tokens.
    pub nll_sum: f64,
    /// Number of non-padding target tokens.
    pub tokens: usize,
}

/// The loss of a batch: the fused op ([`crate::ops::cross_entropy`]) for CPU tensors in f32 or f64, the reference
/// path otherwise (CUDA).
///
/// # Shapes
/// - `logits`: (batch, tgt_len, vocab); `target`: (batch, tgt_len) u32
pub fn label_smoothed_cross_entropy(logits: &Tensor, target: &Tensor, pad: u32, epsilon: f64) -> Result<Loss> {
    if !(logits.device().is_cpu() && matches!(logits.dtype(), DType::F32 | DType::F64)) {
        return label_smoothed_cross_entropy_reference(logits, target, pad, epsilon);
    }
    let (batch, len, vocab) = logits.dims3()?;
    let target = target.reshape(batch * len)?.contiguous()?;
    let tokens = target.ne(pad)?.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()? as usize;
    let op = FusedSmoothedCrossEntropy { pad, epsilon };
    let out = logits.reshape((batch * len, vocab))?.contiguous()?.apply_op2(&target, op)?; // (batch·len, 2)
    let loss = (out.narrow(1, 0, 1)?.sum_all()? / tokens.max(1) as f64)?;
    let nll_sum = out.narrow(1, 1, 1)?.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()?;
    Ok(Loss { loss, nll_sum, tokens })
}

/// The loss built from differentiable tensor ops: the reference for the fused op, and the path off CPU.
///
/// # Shapes
/// - `logits`: (batch, tgt_len, vocab); `target`: (batch, tgt_len) u32
pub fn label_smoothed_cross_entropy_reference(
    logits: &Tensor,
    target: &Tensor,
    pad: u32,
    epsilon: f64,
) -> Result<Loss> {
    let (batch, len, vocab) = logits.dims3()?;
    let log_probs = candle_nn::ops::log_softmax(&logits.reshape((batch * len, vocab))?, D::Minus1)?;
    let target = target.reshape((batch * len, 1))?;
    let nll = log_probs.gather(&target, 1)?.neg()?.squeeze(1)?; // (batch·len)
    let smooth = log_probs.mean(D::Minus1)?.neg()?; // (batch·len)
    let keep = target.squeeze(1)?.ne(pad)?.to_dtype(logits.dtype())?;
    let tokens = keep.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()? as usize;
    let nll_masked = (nll * &keep)?;
    let per_token = ((&nll_masked * (1.0 - epsilon))? + ((smooth * &keep)? * epsilon)?)?;
    let loss = (per_token.sum_all()? / tokens.max(1) as f64)?;
    let nll_sum = nll_masked.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()?;
    Ok(Loss { loss, nll_sum, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_a_hand_computed_value_and_ignores_padding() {
        // One real token (target 1) and one pad (target 0) over a vocabulary of 3.
        let logits = Tensor::new(&[[[1.0f32, 2.0, 0.5], [9.0, -3.0, 4.0]]], &Device::Cpu).unwrap();
        let target = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
        let z = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
        let logp = [1.0 - z, 2.0 - z, 0.5 - z];
        let expect = 0.9 * -logp[1] + 0.1 * -(logp.iter().sum::<f64>() / 3.0);
        for f in [label_smoothed_cross_entropy, label_smoothed_cross_entropy_reference] {
            let l = f(&logits, &target, 0, 0.1).unwrap();
            let got = l.loss.to_vec0::<f32>().unwrap() as f64;
            assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
            assert_eq!(l.tokens, 1);
            assert!((l.nll_sum - -logp[1]).abs() < 1e-5);
        }
    }

    /// Values and gradients of the fused op equal the reference path's, with padding and without smoothing:
    /// to rounding in f64, and to f32 precision in f32 (the dtype training uses).
    #[test]
    fn fused_equals_reference_in_value_and_gradient() {
        let mut rng = crate::rng::Rng::seed(11);
        let (batch, len, vocab) = (3, 5, 37);
        let data: Vec<f64> = (0..batch * len * vocab).map(|_| 3.0 * rng.normal() as f64).collect();
        let ids: Vec<u32> = (0..batch * len).map(|i| if i % 4 == 3 { 0 } else { (i * 7 % vocab) as u32 }).collect();
        let target = Tensor::from_vec(ids, (batch, len), &Device::Cpu).unwrap();
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let x = Tensor::from_vec(data.clone(), (batch, len, vocab), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let logits = candle_core::Var::from_tensor(&x).unwrap();
            let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            for epsilon in [0.0, 0.1] {
                let fused = label_smoothed_cross_entropy(&logits, &target, 0, epsilon).unwrap();
                let reference = label_smoothed_cross_entropy_reference(&logits, &target, 0, epsilon).unwrap();
                assert_eq!(fused.tokens, reference.tokens);
                let a = f64_of(&fused.loss).to_vec0::<f64>().unwrap();
                let b = f64_of(&reference.loss).to_vec0::<f64>().unwrap();
                assert!((a - b).abs() < tolerance * b.abs(), "{dtype:?}: loss {a} vs {b}");
                assert!((fused.nll_sum - reference.nll_sum).abs() < tolerance * 100.0 * reference.nll_sum.abs());
                let ga = f64_of(fused.loss.backward().unwrap().get(&logits).unwrap());
                let gb = f64_of(reference.loss.backward().unwrap().get(&logits).unwrap());
                let diff = (ga - &gb).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f64>().unwrap();
                let scale = gb.abs().unwrap().max_all().unwrap().to_vec0::<f64>().unwrap();
                assert!(
                    scale > 1e-3 && diff < tolerance * scale,
                    "{dtype:?}: gradient differs by {diff} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn without_smoothing_it_is_cross_entropy() {
        let logits = Tensor::new(&[[[0.0f32, 0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let target = Tensor::new(&[[3u32]], &Device::Cpu).unwrap();
        for f in [label_smoothed_cross_entropy, label_smoothed_cross_entropy_reference] {
            let l = f(&logits, &target, 0, 0.0).unwrap();
            assert!((l.loss.to_vec0::<f32>().unwrap() - 4f32.ln()).abs() < 1e-6);
        }
    }
}
