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
    if !crate::ops::fused(logits) {
        return label_smoothed_cross_entropy_reference(logits, target, pad, epsilon);
    }
    let (batch, len, vocab) = logits.dims3()?;
    let target = target.reshape(batch * len)?.contiguous()?;
    let op = FusedSmoothedCrossEntropy { pad, epsilon };
    let rows = logits.reshape((batch * len, vocab))?.contiguous()?.apply_op2(&target, op)?;
    from_rows(&rows, &target, pad)
}

/// The batch's [`Loss`] from a fused op's (rows, 2) output of (loss, nll) per target position.
fn from_rows(rows: &Tensor, target: &Tensor, pad: u32) -> Result<Loss> {
    let tokens = target.ne(pad)?.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()? as usize;
    let loss = (rows.narrow(1, 0, 1)?.sum_all()? / tokens.max(1) as f64)?;
    let nll_sum = rows.narrow(1, 1, 1)?.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()?;
    Ok(Loss { loss, nll_sum, tokens })
}

/// The loss of a batch from the decoder's output and the pre-softmax projection (the tied embedding
/// matrix, §3.4): the logits `hidden · projectionᵀ` and their loss. On CPU one fused op computes both
/// ([`crate::ops::projected_loss`]) without ever holding all logits; otherwise, and as the reference,
/// the logits are computed and passed to [`label_smoothed_cross_entropy`].
///
/// # Shapes
/// - `hidden`: (batch, tgt_len, d_model); `projection`: (vocab, d_model); `target`: (batch, tgt_len) u32
pub fn projected_label_smoothed_cross_entropy(
    hidden: &Tensor,
    projection: &Tensor,
    target: &Tensor,
    pad: u32,
    epsilon: f64,
) -> Result<Loss> {
    let (batch, len, d_model) = hidden.dims3()?;
    let hidden = hidden.reshape((batch * len, d_model))?;
    if !crate::ops::fused(&hidden) {
        // With mixed precision the product runs in the activations' dtype and the loss in the weights'.
        let logits = hidden.matmul(&projection.to_dtype(hidden.dtype())?.t()?)?;
        let logits = logits.to_dtype(projection.dtype())?.reshape((batch, len, projection.dim(0)?))?;
        return label_smoothed_cross_entropy(&logits, target, pad, epsilon);
    }
    let target = target.reshape(batch * len)?.contiguous()?;
    let with_grad = hidden.track_op() || projection.track_op();
    let op = crate::ops::projected_loss::FusedProjectedCrossEntropy::new(pad, epsilon, with_grad);
    let rows = hidden.contiguous()?.apply_op3(&projection.contiguous()?, &target, op)?;
    from_rows(&rows, &target, pad)
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
        let (batch, len, vocab) = (5, 13, 37); // 65 rows: several parallel tasks of 16 rows
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

    /// The fused projection and loss equal the product followed by the reference loss, in value and in
    /// the gradients of the hidden states and of the projection: f64, padding present, more rows than one
    /// chunk holds, a vocabulary that takes gemm's threaded path. The gradients repeat bit for bit; an
    /// upstream gradient that differs between rows (recomputed in the backward pass) is right too. In f32
    /// the fused op equals the reference to f32 precision.
    #[test]
    fn fused_projection_and_loss_equal_the_reference() {
        use crate::ops::projected_loss::FusedProjectedCrossEntropy;
        use candle_core::Var;
        let mut rng = crate::rng::Rng::seed(21);
        let (batch, len, d, vocab) = (9, 41, 48, 700);
        let mut randn = |n: usize, s: f64| -> Vec<f64> { (0..n).map(|_| s * rng.normal() as f64).collect() };
        let hidden = Var::from_vec(randn(batch * len * d, 1.0), (batch, len, d), &Device::Cpu).unwrap();
        let proj = Var::from_vec(randn(vocab * d, 0.3), (vocab, d), &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..batch * len).map(|i| if i % 5 == 4 { 0 } else { (i * 37 % vocab) as u32 }).collect();
        let target = Tensor::from_vec(ids, (batch, len), &Device::Cpu).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            let scale = b.abs().unwrap().max_all().unwrap().to_vec0::<f64>().unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f64>().unwrap();
            assert!(scale > 0.0);
            diff / scale
        };
        let run = |reference: bool| {
            let f = || {
                let l = projected_label_smoothed_cross_entropy(hidden.as_tensor(), proj.as_tensor(), &target, 0, 0.1)
                    .unwrap();
                let g = (&l.loss * 3.0).unwrap().backward().unwrap();
                (
                    l.loss.to_vec0::<f64>().unwrap(),
                    l.nll_sum,
                    g.get(&hidden).unwrap().clone(),
                    g.get(&proj).unwrap().clone(),
                )
            };
            if reference {
                crate::ops::with_reference_path(f)
            } else {
                f()
            }
        };
        let (fused, reference) = (run(false), run(true));
        assert!((fused.0 - reference.0).abs() < 1e-12 * reference.0, "loss {} vs {}", fused.0, reference.0);
        assert!((fused.1 - reference.1).abs() < 1e-10 * reference.1, "nll {} vs {}", fused.1, reference.1);
        assert!(max_diff(&fused.2, &reference.2) < 1e-10, "d hidden");
        assert!(max_diff(&fused.3, &reference.3) < 1e-10, "d projection");
        let again = run(false);
        assert_eq!(
            fused.3.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            again.3.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        );
        // In f32 (where the softmax uses `exp_f32` and the kernels' vector lanes), to f32 precision.
        let as_f32 = |v: &Var| Var::from_tensor(&v.to_dtype(DType::F32).unwrap()).unwrap();
        let (h32, p32) = (as_f32(&hidden), as_f32(&proj));
        let run32 = |reference: bool| {
            let f = || {
                let l =
                    projected_label_smoothed_cross_entropy(h32.as_tensor(), p32.as_tensor(), &target, 0, 0.1).unwrap();
                let g = l.loss.backward().unwrap();
                let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                (f64s(&l.loss).to_vec0::<f64>().unwrap(), f64s(g.get(&h32).unwrap()), f64s(g.get(&p32).unwrap()))
            };
            if reference {
                crate::ops::with_reference_path(f)
            } else {
                f()
            }
        };
        let (fused32, reference32) = (run32(false), run32(true));
        assert!((fused32.0 - reference32.0).abs() < 1e-5 * reference32.0, "f32 loss");
        assert!(max_diff(&fused32.1, &reference32.1) < 1e-4, "f32 d hidden");
        assert!(max_diff(&fused32.2, &reference32.2) < 1e-4, "f32 d projection");
        // Rows weighted differently: the op must recompute its gradients with the row weights.
        let weights = Tensor::from_vec(randn(batch * len, 1.0), batch * len, &Device::Cpu).unwrap();
        let h2 = hidden.as_tensor().reshape((batch * len, d)).unwrap();
        let flat_target = target.reshape(batch * len).unwrap();
        let op = FusedProjectedCrossEntropy::new(0, 0.1, true);
        let out = h2.apply_op3(proj.as_tensor(), &flat_target, op).unwrap();
        let fused_w = (out.narrow(1, 0, 1).unwrap().squeeze(1).unwrap() * &weights).unwrap().sum_all().unwrap();
        let logits = h2.matmul(&proj.as_tensor().t().unwrap()).unwrap().reshape((1, batch * len, vocab)).unwrap();
        let per_row = |eps: f64| -> Tensor {
            let lp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1).unwrap();
            let nll = lp
                .gather(&flat_target.reshape((batch * len, 1)).unwrap(), 1)
                .unwrap()
                .neg()
                .unwrap()
                .squeeze(1)
                .unwrap();
            let smooth = lp.mean(D::Minus1).unwrap().neg().unwrap();
            let keep = flat_target.ne(0u32).unwrap().to_dtype(DType::F64).unwrap();
            (((nll * (1.0 - eps)).unwrap() + (smooth * eps).unwrap()).unwrap() * keep).unwrap()
        };
        let reference_w = (per_row(0.1) * &weights).unwrap().sum_all().unwrap();
        let (ga, gb) = (fused_w.backward().unwrap(), reference_w.backward().unwrap());
        assert!(max_diff(ga.get(&hidden).unwrap(), gb.get(&hidden).unwrap()) < 1e-10, "weighted d hidden");
        assert!(max_diff(ga.get(&proj).unwrap(), gb.get(&proj).unwrap()) < 1e-10, "weighted d projection");
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
