//! `nmt`: the Transformer of "Attention Is All You Need" (Vaswani et al., 2017) for translation.
//!
//! Where each part of the paper lives:
//!
//! | paper | module |
//! |---|---|
//! | §3.1 encoder and decoder stacks | [`model::encoder`], [`model::decoder`] |
//! | §3.1 residual + LayerNorm around every sub-layer | [`model::norm`] |
//! | §3.2.1 scaled dot-product attention | [`model::attention::scaled_dot_product_attention`] |
//! | §3.2.2 multi-head attention | [`model::attention::MultiHeadAttention`] |
//! | §3.2.3 masks (padding, causal) | [`model::mask`] |
//! | §3.3 position-wise feed-forward | [`model::feed_forward`] |
//! | §3.4 embeddings × √d_model, tied softmax | [`model::embedding`], [`model::Transformer::logits`] |
//! | §3.5 sinusoidal positional encoding | [`model::embedding::PositionalEncoding`] |
//! | §5.1 batches by token count, BPE | [`data::batch`], [`data::tokenizer`] |
//! | §5.3 Adam and the warmup schedule | [`train::optim`], [`train::schedule`] |
//! | §5.4 dropout, label smoothing | [`model::init::Mode::dropout`], [`train::loss`] |
//! | §6.1 decoding | [`decode`] |
//! | BLEU (sacreBLEU-compatible) | [`eval::score`] |
//! | pictures: heatmaps, positional encoding, training curves | [`viz`] |
//!
//! Fast paths, each with the plain tensor-op version kept beside it as the reference that tests compare
//! against: the fused CPU ops with their own backward passes ([`model::fused_layer_norm`],
//! [`model::fused_softmax`], [`train::fused_loss`]) and the KV cache ([`model::attention::KvCache`]).

pub mod cli;
pub mod cmd;
pub mod config;
pub mod data;
pub mod decode;
pub mod eval;
pub mod model;
pub mod progress;
pub mod run_dir;
pub mod train;
pub mod viz;
