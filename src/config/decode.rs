//! The `decode` section: every decoding default, in one place. `nmt translate` and `nmt eval` read it
//! from the run's `config.json` (their flags override it), and training's validation translates with it.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How translations are searched for (paper §6.1: beam 4, α = 0.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Beam size of `translate` and `eval`; 1 is greedy search. Default 4.
    pub beam: usize,
    /// Length-penalty exponent α of ((5 + |Y|) / 6)^α. Default 0.6.
    pub alpha: f64,
    /// Sentences per decoding batch of `translate` and `eval`. Default 32.
    pub batch_size: usize,
    /// The longest output is the source length plus this many tokens (within `model.max_positions`).
    /// Default 50.
    pub max_len_extra: usize,
    /// Beam size of the translations that validation scores; 1 (greedy) keeps validation fast. Default 1.
    pub valid_beam: usize,
    /// Sentences per decoding batch during validation. Default 64.
    pub valid_batch_size: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self { beam: 4, alpha: 0.6, batch_size: 32, max_len_extra: 50, valid_beam: 1, valid_batch_size: 64 }
    }
}

impl DecodeConfig {
    /// Checks every decoding value; the error names the JSON path and the reason.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("beam", self.beam),
            ("batch_size", self.batch_size),
            ("valid_beam", self.valid_beam),
            ("valid_batch_size", self.valid_batch_size),
        ];
        super::at_least_one("decode", &sizes)?;
        super::at_most("decode", &[("max_len_extra", self.max_len_extra, super::model::MAX_POSITIONS)])?;
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            bail!("decode.alpha: must be a number ≥ 0, got {}", self.alpha);
        }
        Ok(())
    }

    /// Checks that no beam is wider than the vocabulary: a beam keeps at most that many distinct
    /// continuations, and a wider one would only allocate for hypotheses that cannot exist.
    pub fn validate_for_vocab(&self, vocab_size: usize) -> Result<()> {
        for (name, beam) in [("beam", self.beam), ("valid_beam", self.valid_beam)] {
            if beam > vocab_size {
                bail!("decode.{name}: {beam} is larger than the vocabulary ({vocab_size} tokens)");
            }
        }
        Ok(())
    }

    /// The settings validation translates with: its own beam and batch size, the rest as here.
    pub fn for_validation(&self) -> Self {
        Self { beam: self.valid_beam, batch_size: self.valid_batch_size, ..self.clone() }
    }
}
