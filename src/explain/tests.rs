//! The walk-through's numbers are the model's: weights are distributions, z is Σ softmax · v, the steps
//! follow from each other, the reference path agrees with the fast path, and the greedy steps are the
//! fast greedy search's.

use super::*;
use crate::decode::{greedy::greedy, DecodeContext};
use crate::model::build;
use candle_core::{Device, D};

const TEXTS: [&str; 4] = [
    "the dog sees the old man .",
    "der Hund sieht den alten Mann .",
    "the man sees a dog !",
    "der Mann sieht einen Hund !",
];

fn setup(norm: Norm) -> (Transformer, ModelConfig, Tokenizer) {
    let tokenizer = Tokenizer::train(TEXTS.iter().copied(), 60).unwrap();
    let cfg = ModelConfig {
        encoder_layers: 2,
        decoder_layers: 2,
        heads: 2,
        d_model: 16,
        d_ff: 32,
        vocab_size: tokenizer.vocab_size(),
        max_positions: 64,
        norm,
        ..ModelConfig::default()
    };
    let (model, _) = build(&cfg, 9, &Device::Cpu).unwrap();
    (model, cfg, tokenizer)
}

fn run(model: &Transformer, cfg: &ModelConfig, tok: &Tokenizer, request: &Request) -> Result<Explanation> {
    explain(model, cfg, tok, 6, "the dog sees the old man .", request)
}

#[test]
fn the_six_steps_follow_from_each_other_and_z_is_the_weighted_sum_of_values() {
    for norm in [Norm::Post, Norm::Pre] {
        let (model, cfg, tok) = setup(norm);
        let request = Request { token: Some("dog".into()), layer: Some(0), head: Some(1) };
        let e = run(&model, &cfg, &tok, &request).unwrap();
        let a = &e.attention;
        assert_eq!((a.layer, a.head, a.piece.as_str()), (0, 1, "▁dog"));
        let sum: f32 = a.keys.iter().map(|k| k.weight).sum();
        assert!((sum - 1.0).abs() < 1e-5, "the weights sum to {sum}");
        // Step 3 is step 2 over √d_k, and step 4 is the softmax of step 3.
        let z: f32 = a.keys.iter().map(|k| k.scaled.exp()).sum();
        for k in &a.keys {
            assert!((k.scaled - k.score / (cfg.d_k() as f32).sqrt()).abs() < 1e-5);
            assert!((k.weight - k.scaled.exp() / z).abs() < 1e-5, "{norm:?}: softmax of key {}", k.index);
        }
        // Step 6: z = Σ softmax · v, with the values of the same pass.
        let src = Tensor::new([tok.encode(&e.sentence).unwrap(), vec![2]].concat(), &Device::Cpu).unwrap();
        let src = src.unsqueeze(0).unwrap(); // (1, src_len)
        let mask = Tensor::zeros((1, 1, 1, src.dim(1).unwrap()), candle_core::DType::F32, &Device::Cpu).unwrap();
        let trace = model.trace(&src, &mask, &Tensor::new(&[[1u32]], &Device::Cpu).unwrap()).unwrap();
        let v = trace.encoder[0].self_attn.v.i((0, 1)).unwrap().to_vec2::<f32>().unwrap(); // (src_len, d_k)
        for (c, z_c) in a.context.iter().enumerate() {
            let expect: f32 = a.keys.iter().map(|k| k.weight * v[k.index][c]).sum();
            assert!((z_c - expect).abs() < 1e-5, "{norm:?}: z[{c}] = {z_c}, Σ softmax · v = {expect}");
        }
        let top: Vec<f32> = a.top.iter().map(|k| k.contribution_norm).collect();
        assert!(top.windows(2).all(|w| w[0] >= w[1]) && top.len() == TOP_CANDIDATES_ENCODER);
        assert!(e.heads.heads.iter().all(|h| h.weight > 0.0 && h.weight <= 1.0) && e.heads.heads.len() == 2);
    }
}

const TOP_CANDIDATES_ENCODER: usize = encoder::TOP_CONTRIBUTIONS;

/// The greedy steps are the fast path's greedy search (KV cache, fused ops), and the first step's
/// probabilities equal the fast path's to 1e-5.
#[test]
fn greedy_steps_equal_the_fast_greedy_search_and_its_probabilities() {
    for norm in [Norm::Post, Norm::Pre] {
        let (model, cfg, tok) = setup(norm);
        let e = run(&model, &cfg, &tok, &Request::default()).unwrap();
        let ids = tok.encode(&e.sentence).unwrap();
        let ctx = DecodeContext::new(&model, tok.specials, 6);
        let fast = greedy(&ctx, &[ids.as_slice()]).unwrap().remove(0);
        assert_eq!(e.decoding.tokens, fast.tokens, "{norm:?}");
        let chosen: Vec<u32> = e.decoding.steps.iter().map(|s| s.candidates[0].id).collect();
        let ended = chosen.last() == Some(&tok.specials.eos);
        assert_eq!(&chosen[..chosen.len() - usize::from(ended)], fast.tokens.as_slice());
        let (memory, mask) = ctx.encode_sources(&[ids.as_slice()]).unwrap();
        let mut cache = model.start_decoding(&memory).unwrap();
        let logits = model.decode_step(&Tensor::new(&[tok.specials.bos], &Device::Cpu).unwrap(), &mut cache, &mask);
        let probs =
            candle_nn::ops::softmax(&logits.unwrap(), D::Minus1).unwrap().i(0).unwrap().to_vec1::<f32>().unwrap();
        for c in &e.decoding.steps[0].candidates {
            assert!((c.probability - probs[c.id as usize]).abs() < 1e-5, "{norm:?}: {} differs", c.piece);
        }
        let p: Vec<f32> = e.decoding.steps[0].candidates.iter().map(|c| c.probability).collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]) && p.len() == decoder::TOP_CANDIDATES);
    }
}

#[test]
fn tokens_are_chosen_by_index_or_text_and_default_to_the_last_word() {
    let pieces: Vec<String> = ["▁the", "▁dog", "▁runs", "▁.", "</s>"].iter().map(|s| s.to_string()).collect();
    assert_eq!(choose_token(None, &pieces).unwrap(), 2, "punctuation and </s> are skipped");
    assert_eq!(choose_token(Some("1"), &pieces).unwrap(), 1);
    assert_eq!(choose_token(Some("▁runs"), &pieces).unwrap(), 2);
    assert_eq!(choose_token(Some("runs"), &pieces).unwrap(), 2);
    let err = choose_token(Some("cat"), &pieces).unwrap_err().to_string();
    assert!(err.starts_with("--token \"cat\"") && err.contains("▁the ▁dog"), "{err}");
    let err = choose_token(Some("5"), &pieces).unwrap_err().to_string();
    assert!(err.starts_with("--token 5") && err.contains("5 pieces"), "{err}");
    let only_punctuation: Vec<String> = ["▁!", "</s>"].iter().map(|s| s.to_string()).collect();
    assert_eq!(choose_token(None, &only_punctuation).unwrap(), 0);
}

#[test]
fn layers_and_heads_out_of_range_and_empty_sentences_are_errors_naming_the_flag() {
    let (model, cfg, tok) = setup(Norm::Post);
    let layer = Request { layer: Some(2), ..Request::default() };
    let err = run(&model, &cfg, &tok, &layer).unwrap_err().to_string();
    assert!(err.starts_with("--layer 2: the encoder has 2 layers"), "{err}");
    let head = Request { head: Some(7), ..Request::default() };
    let err = run(&model, &cfg, &tok, &head).unwrap_err().to_string();
    assert!(err.starts_with("--head 7: each layer has 2 heads"), "{err}");
    let err = explain(&model, &cfg, &tok, 6, "", &Request::default()).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn text_and_json_show_the_same_explanation() {
    let (model, cfg, tok) = setup(Norm::Post);
    let e = run(&model, &cfg, &tok, &Request::default()).unwrap();
    assert_eq!((e.attention.layer, e.attention.head, e.attention.piece.as_str()), (1, 0, "▁man"));
    let text = text::render(&e);
    for heading in ["1. Pieces", "2. Self-attention of \"▁man\"", "3. Multi-head", "4. Residual", "5. Decoding"] {
        assert!(text.contains(heading), "no {heading:?} in\n{text}");
    }
    assert!(text.contains(&format!("Translation: {}", e.decoding.translation)));
    assert_eq!(text.lines().filter(|l| l.contains("▁dog ")).count(), 2, "one row in sections 1 and 2:\n{text}");
    let json: serde_json::Value = serde_json::to_value(&e).unwrap();
    assert_eq!(json["attention"]["keys"].as_array().unwrap().len(), e.pieces.len());
    assert_eq!(json["decoding"]["translation"], e.decoding.translation.as_str());
    assert_eq!(json["model"]["norm"], "post");
}
