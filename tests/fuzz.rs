//! Fuzz targets for the config parser, the corpus reader and the checkpoint loader: arbitrary and
//! mutated inputs must give an error or a value, never a panic. They are `#[ignore]`d (not run in CI);
//! run them for a chosen time with
//!
//!     FUZZ_SECONDS=600 cargo test --release --test fuzz -- --ignored --nocapture
//!
//! Results are recorded in docs/RELIABILITY.md.

use nmt::config::Config;
use nmt::data::corpus::read_lines;
use nmt::train::checkpoint::load_weights;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use std::time::{Duration, Instant};

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    Duration::from_secs(secs)
}

/// Runs `check` on inputs from `strategy` until the time budget is spent; returns the number of runs.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>) -> u64
where
    S::Value: std::fmt::Debug,
{
    let start = Instant::now();
    let mut runs = 0u64;
    let mut seed = 0u64;
    while start.elapsed() < budget() {
        let config = RunnerConfig { cases: 2000, failure_persistence: None, ..RunnerConfig::default() };
        let mut runner = TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[seed as u8; 32]),
        );
        seed += 1;
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("{name}: {e}");
        }
        runs += 2000;
    }
    eprintln!("{name}: {runs} inputs in {:.0} s, no panic", start.elapsed().as_secs_f64());
    runs
}

const VALID_CONFIG: &str = r#"{"model": {"encoder_layers": 2, "decoder_layers": 2, "heads": 4, "d_model": 128,
 "d_ff": 512, "dropout": 0.1, "vocab_size": 1000, "max_positions": 128, "norm": "pre"},
 "train": {"batch_tokens": 2048, "warmup_steps": 400, "best_metric": "bleu", "clip_norm": 1.0},
 "data": {"train_src": "a", "train_tgt": "b", "max_len": 60}}"#;

/// Byte-level mutations of a seed: replace, insert or delete a few bytes.
fn mutated(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0usize..4, any::<usize>(), any::<u8>()), 0..8).prop_map(move |edits| {
        let mut v = seed.to_vec();
        for (kind, pos, byte) in edits {
            let i = if v.is_empty() { 0 } else { pos % v.len() };
            match kind {
                0 if !v.is_empty() => v[i] = byte,
                1 => v.insert(i, byte),
                2 if !v.is_empty() => {
                    v.remove(i);
                }
                _ => v.truncate(i),
            }
        }
        v
    })
}

#[test]
#[ignore]
fn fuzz_config_parser() {
    let check = |bytes: Vec<u8>| {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(c) = Config::from_json(text) {
                let _ = c.validate();
                let _ = c.model.validate();
            }
        }
        Ok(())
    };
    fuzz("config (mutated valid config)", mutated(VALID_CONFIG.as_bytes()), check);
    fuzz("config (arbitrary bytes)", prop::collection::vec(any::<u8>(), 0..256), check);
}

#[test]
#[ignore]
fn fuzz_corpus_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.txt");
    fuzz("corpus reader", prop::collection::vec(any::<u8>(), 0..512), |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(lines) = read_lines(&path) {
            let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
            prop_assert!(lines.len() == newlines || lines.len() == newlines + 1);
        }
        Ok(())
    });
}

#[test]
#[ignore]
fn fuzz_checkpoint_loader() {
    let cfg = Config::from_json(VALID_CONFIG).unwrap().model;
    let cfg = nmt::config::ModelConfig {
        d_model: 8,
        heads: 2,
        d_ff: 8,
        vocab_size: 10,
        encoder_layers: 1,
        decoder_layers: 1,
        ..cfg
    };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let (_, store) = nmt::model::build(&cfg, 1, &candle_core::Device::Cpu).unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = store.tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, &good).unwrap();
    let seed: &'static [u8] = Box::leak(std::fs::read(&good).unwrap().into_boxed_slice());
    let path = dir.path().join("fuzzed.safetensors");
    fuzz("checkpoint loader", mutated(seed), |bytes| {
        std::fs::write(&path, &bytes).unwrap();
        let target = nmt::model::build(&cfg, 2, &candle_core::Device::Cpu).unwrap().1;
        let _ = load_weights(&path, &target);
        Ok(())
    });
}
