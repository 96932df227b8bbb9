//! The `train` section: how to train (paper §5), and the limits and knobs of a run.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Which validation number picks the best checkpoint and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BestMetric {
    /// Validation loss, lower is better.
    #[default]
    Loss,
    /// Validation BLEU, higher is better.
    Bleu,
}

/// The precision of a training step's activations and matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: activations and matrix products in bf16, with f32 weights (the master copy), f32
    /// gradients and f32 Adam state, and LayerNorm, softmax and the loss in f32. CUDA only.
    Bf16,
}

impl Precision {
    /// The dtype of activations and products.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// How to train (paper §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Tokens per batch (source or target side, whichever is larger, padding included), like fairseq's
    /// `--max-tokens`. Default 4096.
    pub batch_tokens: usize,
    /// warmup_steps of the learning-rate schedule (§5.3). Default 4000.
    pub warmup_steps: usize,
    /// Factor in front of the schedule: lr = lr_scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5).
    /// Default 1.0 (the paper).
    pub lr_scale: f64,
    /// Adam β1. Default 0.9.
    pub adam_beta1: f64,
    /// Adam β2. Default 0.98.
    pub adam_beta2: f64,
    /// Adam ε. Default 1e-9.
    pub adam_eps: f64,
    /// ε_ls of label smoothing (§5.4). Default 0.1.
    pub label_smoothing: f64,
    /// Stop after this many updates. Default 100000 (the paper's base model).
    pub max_steps: usize,
    /// Stop after this many passes over the data; 0 means no limit. Default 0.
    pub max_epochs: usize,
    /// Write a metrics line (and a plain log line when stderr is not a terminal) every N steps. Default 100.
    pub log_every: usize,
    /// Validate (loss, and BLEU of translations made with the `decode` section's validation settings)
    /// every N steps; 0 turns it off. Default 1000.
    pub valid_every: usize,
    /// Translate at most this many valid sentences for validation BLEU; 0 means all. Default 0.
    pub valid_bleu_sentences: usize,
    /// Write a checkpoint every N steps (and always at the end). Default 1000.
    pub checkpoint_every: usize,
    /// Seed for weight initialisation, dropout and batch order. Default 1.
    pub seed: u64,
    /// Clip gradients to this global L2 norm; 0 turns clipping off (the paper does not clip). Default 0.
    pub clip_norm: f64,
    /// Accumulate gradients over this many batches per update, so that a small machine reaches the
    /// paper's ~25k tokens per update. Default 1.
    pub update_freq: usize,
    /// Keep only the newest N step checkpoints (the best one is kept apart); 0 keeps all. Default 5.
    pub keep_last: usize,
    /// The validation metric that picks `checkpoints/best.safetensors`: "loss" or "bleu". Default "loss".
    pub best_metric: BestMetric,
    /// Stop after this many validations in a row without improving `best_metric`; 0 never stops early.
    /// Default 0.
    pub patience: usize,
    /// Give up after this many updates in a row with a non-finite loss or gradient (each is skipped,
    /// leaving the weights untouched). Default 10.
    pub max_skipped_steps: usize,
    /// Stop, with a checkpoint, once `nmt train` has spent this many minutes (fractions allowed; the time
    /// of earlier runs of a resumed run counts), like fairseq's `--stop-time-hours`; 0 means no limit.
    /// The update in progress at the deadline finishes first. Default 0.
    pub max_minutes: f64,
    /// Worker threads for training (the fused ops, the matrix products and candle's element-wise ops all
    /// share them); 0 means one per core. Default 0.
    pub threads: usize,
    /// "f32", or "bf16" for mixed precision on CUDA (activations and products in bf16, weights, gradients
    /// and Adam state in f32); the CPU trains in f32 only. Default "f32".
    pub dtype: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch_tokens: 4096,
            warmup_steps: 4000,
            lr_scale: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.98,
            adam_eps: 1e-9,
            label_smoothing: 0.1,
            max_steps: 100_000,
            max_epochs: 0,
            log_every: 100,
            valid_every: 1000,
            valid_bleu_sentences: 0,
            checkpoint_every: 1000,
            seed: 1,
            clip_norm: 0.0,
            update_freq: 1,
            keep_last: 5,
            best_metric: BestMetric::Loss,
            patience: 0,
            max_skipped_steps: 10,
            max_minutes: 0.0,
            threads: 0,
            dtype: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// Checks every training value; the error names the JSON path and the reason.
    pub fn validate(&self) -> Result<()> {
        let t = self;
        let counts = [
            ("batch_tokens", t.batch_tokens),
            ("warmup_steps", t.warmup_steps),
            ("max_steps", t.max_steps),
            ("log_every", t.log_every),
            ("checkpoint_every", t.checkpoint_every),
            ("update_freq", t.update_freq),
            ("max_skipped_steps", t.max_skipped_steps),
        ];
        super::at_least_one("train", &counts)?;
        // Batches of one update are gathered in one list; beyond this, accumulation is not what is wanted.
        super::at_most("train", &[("update_freq", t.update_freq, 1 << 16)])?;
        if !(t.lr_scale > 0.0 && t.lr_scale.is_finite()) {
            bail!("train.lr_scale: must be a positive number, got {}", t.lr_scale);
        }
        for (name, v) in [("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("train.{name}: must be in [0, 1), got {v}");
            }
        }
        if !(t.adam_eps > 0.0 && t.adam_eps.is_finite()) {
            bail!("train.adam_eps: must be a positive number, got {}", t.adam_eps);
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            bail!("train.label_smoothing: must be in [0, 1), got {}", t.label_smoothing);
        }
        if t.threads > 1024 {
            bail!("train.threads: must be at most 1024, got {}", t.threads);
        }
        if !(t.max_minutes >= 0.0 && t.max_minutes.is_finite()) {
            bail!("train.max_minutes: must be 0 (no limit) or a positive number, got {}", t.max_minutes);
        }
        if !(t.clip_norm >= 0.0 && t.clip_norm.is_finite()) {
            bail!("train.clip_norm: must be 0 (off) or a positive number, got {}", t.clip_norm);
        }
        Ok(())
    }
}
