//! Search properties: cached equals uncached, batching changes nothing, beam 1 is greedy, a wider beam
//! never finds a worse hypothesis.

use super::beam::{beam_search, BeamSettings};
use super::greedy::{greedy, greedy_uncached};
use super::DecodeContext;
use crate::config::ModelConfig;
use crate::data::tokenizer::Specials;
use crate::model::{build, Transformer};
use candle_core::Device;

const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };

fn model(seed: u64) -> Transformer {
    let cfg = ModelConfig {
        encoder_layers: 2,
        decoder_layers: 2,
        heads: 2,
        d_model: 16,
        d_ff: 32,
        dropout: 0.0,
        vocab_size: 20,
        max_positions: 40,
        ..ModelConfig::default()
    };
    build(&cfg, seed, &Device::Cpu).unwrap().0
}

/// The context of every search here: the paper's length limit of source + 50, within 40 positions.
fn ctx(m: &Transformer) -> DecodeContext<'_> {
    DecodeContext::new(m, SP, 50)
}

fn sources() -> Vec<Vec<u32>> {
    vec![vec![4, 5, 6, 7, 8, 9], vec![10, 11], vec![12, 4, 19, 7], vec![5], vec![6, 6, 6, 13, 14, 15, 16, 17]]
}

fn refs(v: &[Vec<u32>]) -> Vec<&[u32]> {
    v.iter().map(|s| s.as_slice()).collect()
}

#[test]
fn cached_greedy_equals_uncached_greedy() {
    for seed in [1, 2, 3] {
        let m = model(seed);
        let s = sources();
        let a = greedy(&ctx(&m), &refs(&s)).unwrap();
        let b = greedy_uncached(&ctx(&m), &refs(&s)).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.tokens, y.tokens);
            assert!((x.log_prob - y.log_prob).abs() < 1e-4);
        }
    }
}

#[test]
fn batched_equals_one_by_one() {
    let m = model(4);
    let s = sources();
    let settings = BeamSettings { beam: 3, alpha: 0.6, nbest: 2 };
    let batched = greedy(&ctx(&m), &refs(&s)).unwrap();
    let beams = beam_search(&ctx(&m), &refs(&s), settings).unwrap();
    for (i, src) in s.iter().enumerate() {
        let one = greedy(&ctx(&m), &[src.as_slice()]).unwrap();
        assert_eq!(one[0].tokens, batched[i].tokens, "greedy, sentence {i}");
        let one = beam_search(&ctx(&m), &[src.as_slice()], settings).unwrap();
        let tokens = |h: &Vec<super::Hypothesis>| h.iter().map(|x| x.tokens.clone()).collect::<Vec<_>>();
        assert_eq!(tokens(&one[0]), tokens(&beams[i]), "beam, sentence {i}");
    }
}

#[test]
fn beam_one_without_length_penalty_is_greedy() {
    for seed in [5, 6] {
        let m = model(seed);
        let s = sources();
        let g = greedy(&ctx(&m), &refs(&s)).unwrap();
        let b = beam_search(&ctx(&m), &refs(&s), BeamSettings { beam: 1, alpha: 0.0, nbest: 1 }).unwrap();
        for (x, y) in g.iter().zip(&b) {
            assert_eq!(x.tokens, y[0].tokens);
            assert!((x.log_prob - y[0].log_prob).abs() < 1e-4);
        }
    }
}

/// A tiny model trained for a moment to reverse its input, so that its outputs end with `</s>`.
fn trained_reverser() -> Transformer {
    use crate::data::batch::{Batch, Example};
    use crate::loss::label_smoothed_cross_entropy;
    use crate::model::init::Mode;
    use crate::rng::Rng;
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
    let cfg = ModelConfig {
        encoder_layers: 1,
        decoder_layers: 1,
        heads: 2,
        d_model: 32,
        d_ff: 64,
        dropout: 0.0,
        vocab_size: 12,
        max_positions: 40,
        ..ModelConfig::default()
    };
    let (model, store) = build(&cfg, 3, &Device::Cpu).unwrap();
    let vars = store.vars().into_iter().map(|(_, v)| v).collect();
    let params = ParamsAdamW { lr: 3e-3, beta1: 0.9, beta2: 0.98, eps: 1e-9, weight_decay: 0.0 };
    let mut adam = AdamW::new(vars, params).unwrap();
    let mut rng = Rng::seed(1);
    for _ in 0..150 {
        let examples: Vec<Example> = (0..16)
            .map(|_| {
                let src: Vec<u32> = (0..2 + rng.below(5)).map(|_| 4 + rng.below(8) as u32).collect();
                Example { tgt: src.iter().rev().copied().collect(), src }
            })
            .collect();
        let batch = Batch::new(&examples.iter().collect::<Vec<_>>(), SP, &Device::Cpu).unwrap();
        let logits = model.forward(&batch.src, &batch.src_mask, &batch.tgt_in, &mut Mode::Eval).unwrap();
        let loss = label_smoothed_cross_entropy(&logits, &batch.tgt_out, 0, 0.0).unwrap();
        adam.backward_step(&loss.loss).unwrap();
    }
    model
}

/// Beam search is not monotone in the beam size in general: when every hypothesis runs into the length
/// limit (an untrained model never says `</s>`), pruning can drop the path greedy search follows. On a
/// model whose outputs end with `</s>`, a wider beam must not return a worse-scored hypothesis.
#[test]
fn a_wider_beam_never_scores_worse_than_beam_one() {
    let m = trained_reverser();
    let mut rng = crate::rng::Rng::seed(9);
    let s: Vec<Vec<u32>> = (0..40).map(|_| (0..2 + rng.below(6)).map(|_| 4 + rng.below(8) as u32).collect()).collect();
    let mut terminated = 0;
    for alpha in [0.0, 0.6, 1.0] {
        let one = beam_search(&ctx(&m), &refs(&s), BeamSettings { beam: 1, alpha, nbest: 1 }).unwrap();
        let four = beam_search(&ctx(&m), &refs(&s), BeamSettings { beam: 4, alpha, nbest: 4 }).unwrap();
        for (i, (a, b)) in one.iter().zip(&four).enumerate() {
            // the same hypothesis may differ by f32 rounding across batch compositions
            assert!(
                b[0].score >= a[0].score - 1e-4,
                "α {alpha} sentence {i}: beam 4 {} < beam 1 {}",
                b[0].score,
                a[0].score
            );
            assert!(b.windows(2).all(|w| w[0].score >= w[1].score), "n-best list is not sorted");
            assert!(b.len() <= 4 && !b.is_empty());
            terminated += usize::from(a[0].tokens.len() + 1 < 40);
        }
    }
    assert!(terminated > 100, "only {terminated} of 120 outputs ended with </s>: the check would be vacuous");
}

#[test]
fn length_penalty_is_the_gnmt_formula() {
    use super::length_penalty;
    assert_eq!(length_penalty(1, 0.6), 1.0);
    assert!((length_penalty(7, 0.6) - 2f64.powf(0.6)).abs() < 1e-12);
    assert_eq!(length_penalty(30, 0.0), 1.0);
}

/// Sampling shares greedy search's row bookkeeping: restricted to the most probable token it is greedy
/// search, also when sentences finish at different steps and leave the batch; and a seed repeats its
/// samples.
#[test]
fn top_1_sampling_is_greedy_and_a_seed_repeats_its_samples() {
    use super::sample::{sample, SampleSettings};
    use crate::rng::Rng;
    let m = trained_reverser();
    let mut rng = Rng::seed(12);
    let s: Vec<Vec<u32>> = (0..12).map(|_| (0..2 + rng.below(6)).map(|_| 4 + rng.below(8) as u32).collect()).collect();
    let g = greedy(&ctx(&m), &refs(&s)).unwrap();
    let lengths: std::collections::BTreeSet<usize> = g.iter().map(|h| h.tokens.len()).collect();
    assert!(lengths.len() > 2 && g.iter().all(|h| h.tokens.len() < 20), "outputs must end at different steps");
    let top1 = SampleSettings { temperature: 1.0, top_k: 1, seed: 0 };
    let x = sample(&ctx(&m), &refs(&s), top1, &mut Rng::seed(1)).unwrap();
    for (a, b) in g.iter().zip(&x) {
        assert_eq!(a.tokens, b.tokens);
        assert!((a.log_prob - b.log_prob).abs() < 1e-4);
    }
    let all = SampleSettings { temperature: 1.5, top_k: 0, seed: 0 };
    let a = sample(&ctx(&m), &refs(&s), all, &mut Rng::seed(5)).unwrap();
    let b = sample(&ctx(&m), &refs(&s), all, &mut Rng::seed(5)).unwrap();
    assert_eq!(a, b);
}

/// Every search gives the same outputs through the hand-written step ([`super::fast`]) as through the
/// model's tensor-op step (the reference path): greedy, beam with n-best lists, and sampling, on a model
/// whose outputs end with `</s>` at different steps, so that finished sentences leave the batch and beams
/// reorder.
#[test]
fn the_fast_step_and_the_reference_step_give_the_same_outputs() {
    use super::fast::FastDecoder;
    use super::sample::{sample, SampleSettings};
    use crate::rng::Rng;
    let m = trained_reverser();
    let mut rng = Rng::seed(21);
    let s: Vec<Vec<u32>> = (0..30).map(|_| (0..2 + rng.below(6)).map(|_| 4 + rng.below(8) as u32).collect()).collect();
    let run = || {
        let beam = BeamSettings { beam: 4, alpha: 0.6, nbest: 3 };
        let drawn = SampleSettings { temperature: 1.0, top_k: 0, seed: 0 };
        let mut all = vec![greedy(&ctx(&m), &refs(&s)).unwrap()];
        all.extend(beam_search(&ctx(&m), &refs(&s), beam).unwrap());
        all.push(sample(&ctx(&m), &refs(&s), drawn, &mut Rng::seed(5)).unwrap());
        all
    };
    assert!(FastDecoder::applies(&m));
    let fast = run();
    let reference = crate::ops::with_reference_path(|| {
        assert!(!FastDecoder::applies(&m));
        run()
    });
    let mut terminated = 0;
    for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
        assert_eq!(a.len(), b.len(), "list {i}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.tokens, y.tokens, "list {i}");
            assert!((x.log_prob - y.log_prob).abs() < 1e-4, "list {i}: {} vs {}", x.log_prob, y.log_prob);
            terminated += usize::from(x.tokens.len() < 12);
        }
    }
    assert!(terminated > 100, "only {terminated} outputs ended with </s>");
}
