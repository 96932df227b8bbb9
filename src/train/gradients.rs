//! Gradients of one update: accumulated over `update_freq` batches, checked for non-finite values, and
//! clipped by global norm.
//!
//! Each batch contributes the gradient of its *summed* token loss, and the total is divided by the
//! update's target-token count, so an update over several batches has exactly the gradient of one big
//! batch (not the mean of per-batch means).

use crate::data::batch::Batch;
use crate::loss::projected_label_smoothed_cross_entropy;
use crate::model::init::Mode;
use crate::model::Transformer;
use crate::rng::Rng;
use candle_core::{DType, Result, Tensor, Var};

/// One update's gradients (in parameter order) and loss statistics.
pub struct UpdateGradients {
    pub grads: Vec<Option<Tensor>>,
    /// Sum of label-smoothed token losses.
    pub loss_sum: f64,
    /// Sum of -log p over reference tokens.
    pub nll_sum: f64,
    /// Target tokens (the divisor).
    pub tokens: usize,
    pub src_tokens: usize,
}

impl UpdateGradients {
    /// No batch, no gradient: what a process whose shares of an update are all empty contributes.
    pub fn empty(params: usize) -> Self {
        Self { grads: vec![None; params], loss_sum: 0.0, nll_sum: 0.0, tokens: 0, src_tokens: 0 }
    }
}

/// Runs forward and backward over `batches` and returns the token-averaged gradients: by the hand-written
/// step of [`crate::ops::step`] on CPU, otherwise (and as its reference) through the model's forward pass
/// and candle's autograd.
pub fn accumulate(
    model: &Transformer,
    params: &[(String, Var)],
    batches: &[Batch],
    pad: u32,
    label_smoothing: f64,
    rng: &mut Rng,
) -> Result<UpdateGradients> {
    if batches.is_empty() {
        return Ok(UpdateGradients::empty(params.len()));
    }
    if let Some(update) = crate::ops::step::accumulate(model, params, batches, pad, label_smoothing, rng)? {
        return Ok(update);
    }
    let mut out = UpdateGradients::empty(params.len());
    for batch in batches {
        let hidden = model.forward_hidden(&batch.src, &batch.src_mask, &batch.tgt_in, &mut Mode::Train { rng })?;
        let l = projected_label_smoothed_cross_entropy(
            &hidden,
            model.output_projection(),
            &batch.tgt_out,
            pad,
            label_smoothing,
        )?;
        let summed = (&l.loss * l.tokens as f64)?;
        out.loss_sum += summed.to_dtype(DType::F64)?.to_vec0::<f64>()?;
        out.nll_sum += l.nll_sum;
        out.tokens += l.tokens;
        out.src_tokens += batch.src_tokens;
        let grads = summed.backward()?;
        for (slot, (_, var)) in out.grads.iter_mut().zip(params) {
            if let Some(g) = grads.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
    }
    let scale = 1.0 / out.tokens.max(1) as f64;
    for g in out.grads.iter_mut().flatten() {
        *g = (&*g * scale)?;
    }
    Ok(out)
}

/// The L2 norm of all gradients together (NaN or infinite if any entry is): on CPU one parallel pass per
/// gradient ([`crate::ops::cpu::sum_of_squares`]), otherwise (and as its reference) tensor ops.
pub fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum = 0.0;
    for g in grads.iter().flatten() {
        sum += match crate::ops::fused(g) {
            true => crate::ops::cpu::sum_of_squares(g)?,
            false => g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_vec0::<f64>()?,
        };
    }
    Ok(sum.sqrt())
}

/// Scales the gradients so that their global norm is at most `max_norm`; returns the norm before.
pub fn clip_by_global_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / norm;
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::data::batch::Example;
    use crate::data::tokenizer::Specials;
    use candle_core::Device;

    const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };

    #[test]
    fn two_accumulated_batches_equal_one_merged_batch() {
        let cfg = ModelConfig {
            encoder_layers: 1,
            decoder_layers: 1,
            heads: 2,
            d_model: 8,
            d_ff: 16,
            dropout: 0.0,
            vocab_size: 12,
            max_positions: 16,
            ..ModelConfig::default()
        };
        let (model, store) = crate::model::build(&cfg, 2, &Device::Cpu).unwrap();
        let params = store.vars();
        let a = Example { src: vec![4, 5, 6], tgt: vec![7, 8] };
        let b = Example { src: vec![9], tgt: vec![10, 11, 4, 5] };
        let c = Example { src: vec![6, 7], tgt: vec![8] };
        let split = [Batch::new(&[&a], SP, &Device::Cpu).unwrap(), Batch::new(&[&b, &c], SP, &Device::Cpu).unwrap()];
        let merged = [Batch::new(&[&a, &b, &c], SP, &Device::Cpu).unwrap()];
        let mut rng = Rng::seed(1);
        let x = accumulate(&model, &params, &split, 0, 0.1, &mut rng).unwrap();
        let y = accumulate(&model, &params, &merged, 0, 0.1, &mut rng).unwrap();
        assert_eq!(x.tokens, y.tokens);
        assert!((x.loss_sum - y.loss_sum).abs() < 1e-4);
        for ((name, _), (g, h)) in params.iter().zip(x.grads.iter().zip(&y.grads)) {
            let (g, h) = (g.as_ref().unwrap(), h.as_ref().unwrap());
            let diff = (g - h).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f32>().unwrap();
            assert!(diff < 1e-5, "{name}: accumulated and merged gradients differ by {diff}");
        }
    }

    /// The one-pass norm equals the tensor-op reference on a gradient spread over several parallel tasks.
    #[test]
    fn fast_norm_equals_the_reference() {
        let mut rng = Rng::seed(4);
        let v: Vec<f32> = (0..100_003).map(|_| rng.normal()).collect();
        let grads = vec![Some(Tensor::from_vec(v, (1, 100_003), &Device::Cpu).unwrap()), None];
        let fast = global_norm(&grads).unwrap();
        let reference = crate::ops::with_reference_path(|| global_norm(&grads)).unwrap();
        assert!((fast - reference).abs() < 1e-6 * reference, "{fast} vs {reference}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_non_finite() {
        let t = |v: &[f32]| Some(Tensor::new(v, &Device::Cpu).unwrap());
        let mut grads = vec![t(&[3.0, 0.0]), None, t(&[4.0])];
        let norm = clip_by_global_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((global_norm(&grads).unwrap() - 1.0).abs() < 1e-6);
        let mut small = vec![t(&[0.3, 0.4])];
        clip_by_global_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
        let bad = vec![t(&[1.0, f32::NAN])];
        assert!(!global_norm(&bad).unwrap().is_finite());
        let inf = vec![t(&[f32::INFINITY])];
        assert!(!global_norm(&inf).unwrap().is_finite());
    }
}
