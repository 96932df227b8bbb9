//! The checkpoint loader: any bytes give weights that fit the model or an error, never a panic.
//! The seed `fuzz/seeds/checkpoint/tiny.safetensors` holds the weights of exactly this model.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use nmt::config::{Config, ModelConfig};
use nmt::model::init::ParamStore;
use nmt::weights::{fit_weights, parse_tensors};
use std::path::Path;

/// A model small enough that each input is fast: d_model 8, one layer each side, vocabulary 10.
pub fn tiny_model() -> ModelConfig {
    let base = Config::from_json(r#"{"data": {"train_src": "a", "train_tgt": "b"}}"#).unwrap().model;
    ModelConfig { d_model: 8, heads: 2, d_ff: 8, vocab_size: 10, encoder_layers: 1, decoder_layers: 1, ..base }
}

thread_local! {
    static STORE: ParamStore = nmt::model::build(&tiny_model(), 1, &Device::Cpu).unwrap().1;
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    if let Ok(tensors) = parse_tensors(data, path, &Device::Cpu) {
        STORE.with(|store| {
            let _ = fit_weights(&tensors, path, store);
        });
    }
});
