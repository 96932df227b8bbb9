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
//! | §3.3 position-wise feed-forward | [`model::feed_forward`], [`model::linear`] |
//! | §3.4 embeddings × √d_model, tied softmax | [`model::embedding`], [`model::Transformer::logits`] |
//! | §3.5 sinusoidal positional encoding | [`model::embedding::PositionalEncoding`] |
//! | §5.1 batches by token count, BPE | [`data::batch`], [`data::tokenizer`] |
//! | §5.3 Adam and the warmup schedule | [`train::optim`], [`train::schedule`] |
//! | §5.4 dropout, label smoothing | [`model::init::Mode::dropout`], [`loss`] |
//! | §6.1 decoding (beam search, length penalty), checkpoint averaging | [`decode`], `cmd::average` |
//! | BLEU and chrF (sacreBLEU-compatible) | [`eval::score`] |
//! | data-parallel training over several GPUs (NCCL) | [`dist`] |
//! | `nmt explain`: one sentence through the model with its own numbers | [`explain`] |
//! | pictures: heatmaps, positional encoding, attention maps, training curves | [`viz`], [`model::trace`] |
//!
//! The layers depend one way: `cmd` (the subcommands, glue only) uses `train`, `eval`, `explain` and `decode`;
//! `explain` uses `decode` and `model` (its [`model::trace`]);
//! `train` uses `eval` and `decode` (validation); `eval` and `decode` use `model`, `loss`, `data` and
//! `weights`; `model` uses `ops`. [`config`] (one file per section) owns every default and every check;
//! [`run_dir`] names a run's files and writes them atomically; [`weights`] reads and writes safetensors;
//! [`rng`] is the one seeded random-number generator.
//!
//! Fast paths, each with the plain tensor-op version kept beside it as the reference that tests compare
//! against: the fused CPU ops with their own backward passes ([`ops`]), the hand-written training step
//! ([`ops::step`]), the KV cache ([`model::attention::KvCache`]) and the hand-written decoding step
//! ([`decode::fast`]).

pub mod cli;
pub mod cmd;
pub mod config;
pub mod data;
pub mod decode;
pub mod dist;
pub mod eval;
pub mod explain;
pub mod loss;
pub mod model;
pub mod ops;
pub mod progress;
pub mod rng;
pub mod run_dir;
pub mod train;
pub mod viz;
pub mod weights;
