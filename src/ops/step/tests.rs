//! The hand-written step against its reference, the model's forward pass with candle's autograd.

use crate::config::{ModelConfig, Norm};
use crate::data::batch::{Batch, Example};
use crate::data::tokenizer::Specials;
use crate::model::init::ParamStore;
use crate::rng::Rng;
use crate::train::gradients::{accumulate, UpdateGradients};
use candle_core::{DType, Device, Var};

const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };

/// Large enough that every kernel crosses its parallel chunk boundaries: batches of 10 sentences with a
/// 29-token target (300 target rows, more than 256 of them not padding: two 256-row chunks of the loss,
/// several 64-row LayerNorm tasks, over 32,768 elements per decoder dropout call, the size of a task),
/// d_model 128 (two 64-column bias tasks), products large enough for gemm's threads; padding on both
/// sides.
fn config(norm: Norm, tie_embeddings: bool) -> ModelConfig {
    ModelConfig {
        encoder_layers: 2,
        decoder_layers: 2,
        heads: 4,
        d_model: 128,
        d_ff: 256,
        dropout: 0.1,
        vocab_size: 60,
        max_positions: 64,
        tie_embeddings,
        norm,
        ..ModelConfig::default()
    }
}

fn refs(xs: &[Example]) -> Vec<&Example> {
    xs.iter().collect()
}

/// Two batches (one update of `update_freq` 2) of 10 random sentences each, of varied lengths (targets
/// of 25 to 29 tokens, so that more than 256 target positions are not padding and the loss, which runs
/// on those only, crosses a chunk boundary); the first of each has a 25-token source and a 29-token
/// target.
fn batches(vocab: usize) -> Vec<Batch> {
    let mut rng = Rng::seed(11);
    let mut sentence = |len: usize| -> Vec<u32> {
        (0..len).map(|_| 4 + (rng.uniform() * (vocab - 4) as f32) as u32 % (vocab as u32 - 4)).collect()
    };
    let mut length = Rng::seed(12);
    let mut below = |max: usize| 1 + (length.uniform() * max as f32) as usize % max;
    let examples: Vec<Example> = (0..20)
        .map(|i| {
            let (s, t) = if i % 10 == 0 { (25, 29) } else { (below(25), 24 + below(5)) };
            Example { src: sentence(s), tgt: sentence(t) }
        })
        .collect();
    let out: Vec<Batch> = examples.chunks(10).map(|c| Batch::new(&refs(c), SP, &Device::Cpu).unwrap()).collect();
    let real =
        |b: &Batch| b.tgt_out.flatten_all().unwrap().to_vec1::<u32>().unwrap().iter().filter(|&&y| y != SP.pad).count();
    assert!(out.iter().all(|b| real(b) > 256), "the loss's 256-row chunks are crossed");
    out
}

/// One update's gradients from a model built with seed 5 in `dtype`, by whichever path is on; checks
/// that the hand-written step applies unless the reference or autograd path was asked for.
fn update(cfg: &ModelConfig, dtype: DType) -> (Vec<(String, Var)>, UpdateGradients) {
    let store = ParamStore::with_dtype(5, dtype, &Device::Cpu);
    let model = crate::model::Transformer::new(cfg, store.var_builder()).unwrap();
    let params = store.vars();
    let data = batches(cfg.vocab_size);
    let applies = super::accumulate(&model, &params, &data, SP.pad, 0.1, &mut Rng::seed(9)).unwrap().is_some();
    assert_eq!(applies, crate::ops::hand_written_step(params[0].1.as_tensor()), "{:?}", cfg.norm);
    let g = accumulate(&model, &params, &data, SP.pad, 0.1, &mut Rng::seed(9)).unwrap();
    (params, g)
}

fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Compares two updates' loss statistics and gradients: each parameter's largest difference must stay
/// within `tolerance` times its reference gradient's largest entry, or times a floor of 1e-3 of the
/// whole model's largest entry. The floor is for the key projections' biases, whose gradient is zero in
/// exact arithmetic (softmax ignores a constant added to a row of scores), so both paths leave only
/// rounding noise there.
fn compare(params: &[(String, Var)], fast: &UpdateGradients, reference: &UpdateGradients, tolerance: f64, what: &str) {
    assert_eq!(fast.tokens, reference.tokens);
    assert_eq!(fast.src_tokens, reference.src_tokens);
    let relative = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(relative(fast.loss_sum, reference.loss_sum) < tolerance, "{what}: loss");
    assert!(relative(fast.nll_sum, reference.nll_sum) < tolerance, "{what}: nll");
    let largest =
        |g: &Option<candle_core::Tensor>| values(g.as_ref().unwrap()).iter().fold(0f64, |m, v| m.max(v.abs()));
    let floor = 1e-3 * reference.grads.iter().map(largest).fold(0f64, f64::max);
    assert!(floor > 0.0, "{what}: the reference has no gradient");
    let mut above_floor = 0;
    for ((name, _), (a, b)) in params.iter().zip(fast.grads.iter().zip(&reference.grads)) {
        let (a, b) = (values(a.as_ref().unwrap()), values(b.as_ref().unwrap()));
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
        above_floor += usize::from(scale > floor);
        let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= tolerance * scale.max(floor), "{what}: {name} differs by {diff} (largest {scale})");
    }
    // Only the key biases (one per attention) may lie below the floor.
    assert!(above_floor + params.iter().filter(|(n, _)| n.ends_with("w_k.bias")).count() >= params.len(), "{what}");
}

/// Value and every parameter's gradient equal the autograd reference in f64, with dropout on (both
/// paths draw the same masks: whole batches), for post-norm and pre-norm, tied and untied embeddings.
#[test]
fn equals_the_autograd_reference_in_f64() {
    for (norm, tied) in [(Norm::Post, true), (Norm::Pre, true), (Norm::Post, false), (Norm::Pre, false)] {
        let cfg = config(norm, tied);
        let (params, fast) = crate::ops::with_whole_batches(|| update(&cfg, DType::F64));
        let (_, reference) = crate::ops::with_reference_path(|| update(&cfg, DType::F64));
        compare(&params, &fast, &reference, 1e-9, &format!("{norm:?}, tied {tied}"));
    }
}

/// In f32, the precision training uses, the step equals the autograd path with the fused ops to
/// rounding, and gives the same gradients bit for bit on a second run (exact resume depends on it), in
/// shards too.
#[test]
fn equals_autograd_in_f32_and_is_deterministic() {
    let cfg = config(Norm::Post, true);
    let (params, whole) = crate::ops::with_whole_batches(|| update(&cfg, DType::F32));
    let (_, autograd) = crate::ops::with_autograd_step(|| update(&cfg, DType::F32));
    compare(&params, &whole, &autograd, 1e-4, "f32");
    let (_, a) = update(&cfg, DType::F32);
    let (_, b) = update(&cfg, DType::F32);
    for (x, y) in a.grads.iter().zip(&b.grads) {
        assert_eq!(values(x.as_ref().unwrap()), values(y.as_ref().unwrap()));
    }
}

/// Two shards of half a batch each give the whole batch's loss and gradients up to rounding when nothing
/// is dropped (in f64, post- and pre-norm), and with dropout on they draw masks of their own (so the
/// sharded path did run).
#[test]
fn shards_equal_whole_batches() {
    for norm in [Norm::Post, Norm::Pre] {
        let cfg = ModelConfig { dropout: 0.0, ..config(norm, true) };
        let (params, sharded) = update(&cfg, DType::F64);
        let (_, whole) = crate::ops::with_whole_batches(|| update(&cfg, DType::F64));
        compare(&params, &sharded, &whole, 1e-9, &format!("{norm:?}, shards"));
    }
    let cfg = config(Norm::Post, true);
    let (_, sharded) = update(&cfg, DType::F64);
    let (_, whole) = crate::ops::with_whole_batches(|| update(&cfg, DType::F64));
    assert_ne!(sharded.loss_sum, whole.loss_sum);
}

/// It steps aside for parameters that are not exactly the model's, and for an empty update.
#[test]
fn steps_aside_off_its_domain() {
    let cfg = config(Norm::Post, true);
    let store = ParamStore::new(5, &Device::Cpu);
    let model = crate::model::Transformer::new(&cfg, store.var_builder()).unwrap();
    let params = store.vars();
    let data = batches(cfg.vocab_size);
    let run = |p: &[(String, Var)], b: &[Batch]| super::accumulate(&model, p, b, SP.pad, 0.1, &mut Rng::seed(9));
    assert!(run(&params, &data).unwrap().is_some());
    assert!(run(&params[1..], &data).unwrap().is_none());
    assert!(run(&params, &[]).unwrap().is_none());
}
