//! The `model` section: the Transformer's shape (paper §3, Table 3).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Where each LayerNorm sits relative to its residual connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// The paper's `LayerNorm(x + Dropout(Sublayer(x)))`.
    #[default]
    Post,
    /// Deviation from the paper: `x + Dropout(Sublayer(LayerNorm(x)))` plus a final LayerNorm on each
    /// stack; trains deep stacks more stably.
    Pre,
}

/// The Transformer's shape (paper §3, Table 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// N for the encoder stack. Default 6.
    pub encoder_layers: usize,
    /// N for the decoder stack. Default 6.
    pub decoder_layers: usize,
    /// h, the number of attention heads. Default 8.
    pub heads: usize,
    /// d_model, the width of every sub-layer output. Default 512.
    pub d_model: usize,
    /// d_ff, the inner width of the feed-forward network. Default 2048.
    pub d_ff: usize,
    /// P_drop, applied to every sub-layer output and to the embedding sums. Default 0.1.
    pub dropout: f64,
    /// Size of the joint BPE vocabulary to learn (the run's config.json records the size actually
    /// learned). Default 37000, the paper's English-German vocabulary.
    pub vocab_size: usize,
    /// Longest sequence the positional-encoding table covers, in tokens (bos/eos included). Default 1024.
    pub max_positions: usize,
    /// Share one matrix between source embedding, target embedding and the output projection (§3.4).
    /// Default true.
    pub tie_embeddings: bool,
    /// Post-norm (the paper) or pre-norm (a deviation). Default post.
    pub norm: Norm,
    /// ε inside every LayerNorm. Default 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            encoder_layers: 6,
            decoder_layers: 6,
            heads: 8,
            d_model: 512,
            d_ff: 2048,
            dropout: 0.1,
            vocab_size: 37000,
            max_positions: 1024,
            tie_embeddings: true,
            norm: Norm::Post,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Upper bounds of the model's sizes: far beyond any Transformer trained, and small enough that every
/// parameter count and table size stays far from overflowing (their products fit in 64 bits).
pub const MAX_LAYERS: usize = 1024;
pub const MAX_D_MODEL: usize = 1 << 16;
pub const MAX_D_FF: usize = 1 << 20;
pub const MAX_VOCAB_SIZE: usize = 1 << 24;
pub const MAX_POSITIONS: usize = 1 << 16;

impl ModelConfig {
    /// d_k = d_v = d_model / h.
    pub fn d_k(&self) -> usize {
        self.d_model / self.heads
    }

    /// Checks the model's shape; the error names the JSON path and the reason.
    pub fn validate(&self) -> Result<()> {
        let m = self;
        let sizes = [
            ("encoder_layers", m.encoder_layers),
            ("decoder_layers", m.decoder_layers),
            ("heads", m.heads),
            ("d_model", m.d_model),
        ];
        super::at_least_one("model", &sizes)?;
        super::at_most(
            "model",
            &[
                ("encoder_layers", m.encoder_layers, MAX_LAYERS),
                ("decoder_layers", m.decoder_layers, MAX_LAYERS),
                ("d_model", m.d_model, MAX_D_MODEL),
                ("d_ff", m.d_ff, MAX_D_FF),
                ("vocab_size", m.vocab_size, MAX_VOCAB_SIZE),
                ("max_positions", m.max_positions, MAX_POSITIONS),
            ],
        )?;
        if !m.d_model.is_multiple_of(m.heads) {
            bail!("model.heads: d_model {} is not divisible by {}", m.d_model, m.heads);
        }
        if !m.d_model.is_multiple_of(2) {
            bail!("model.d_model: must be even for the sinusoidal positional encoding, got {}", m.d_model);
        }
        super::at_least_one("model", &[("d_ff", m.d_ff)])?;
        if !(0.0..1.0).contains(&m.dropout) {
            bail!("model.dropout: must be in [0, 1), got {}", m.dropout);
        }
        if m.vocab_size < 8 {
            bail!("model.vocab_size: must be at least 8 (4 special tokens plus text), got {}", m.vocab_size);
        }
        if m.max_positions < 3 {
            bail!("model.max_positions: must be at least 3, got {}", m.max_positions);
        }
        if !(m.layer_norm_eps > 0.0 && m.layer_norm_eps.is_finite()) {
            bail!("model.layer_norm_eps: must be a positive number, got {}", m.layer_norm_eps);
        }
        Ok(())
    }
}
