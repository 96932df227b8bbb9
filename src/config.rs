//! The typed configuration: every default and every check lives here.
//!
//! A config file is JSON with three sections, `model`, `train` and `data`; every field is optional and
//! falls back to the default documented on it. Unknown fields are rejected, and [`Config::validate`]
//! names the JSON path of any impossible value (`model.heads: d_model 512 is not divisible by 6`).
//! Modules receive `&ModelConfig` / `&TrainConfig` and keep no defaults of their own.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

impl ModelConfig {
    /// d_k = d_v = d_model / h.
    pub fn d_k(&self) -> usize {
        self.d_model / self.heads
    }
}

/// Which validation number picks the best checkpoint and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BestMetric {
    /// Validation loss, lower is better.
    #[default]
    Loss,
    /// Validation BLEU (greedy), higher is better.
    Bleu,
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
    /// Validate (loss and greedy BLEU on the valid set) every N steps; 0 turns it off. Default 1000.
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
        }
    }
}

/// Where the parallel corpus lives. Relative paths are taken from the current directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Source side of the training corpus, one sentence a line. Required.
    pub train_src: Option<PathBuf>,
    /// Target side of the training corpus, line-aligned with `train_src`. Required.
    pub train_tgt: Option<PathBuf>,
    /// Source side of the validation set. Optional: without it there is no validation.
    pub valid_src: Option<PathBuf>,
    /// Target side of the validation set; required when `valid_src` is given.
    pub valid_tgt: Option<PathBuf>,
    /// Pairs with more BPE tokens than this on either side are skipped (and counted). Default 100.
    pub max_len: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { train_src: None, train_tgt: None, valid_src: None, valid_tgt: None, max_len: 100 }
    }
}

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
}

impl Config {
    /// Reads a config file; errors name the file, and for bad JSON the line and column.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses a config from JSON text (no validation).
    pub fn from_json(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                anyhow::anyhow!("{inner}")
            } else {
                anyhow::anyhow!("{path}: {inner}")
            }
        })
    }

    /// The first field (as a JSON path) where `other` would make a different run than `self`, ignoring
    /// `model.vocab_size` (a run stores the size it learned) and `train.max_steps` (raising it extends a run).
    pub fn differs_as_a_run(&self, other: &Config) -> Result<Option<String>> {
        let comparable = |c: &Config| -> Result<serde_json::Value> {
            let mut v = serde_json::to_value(c)?;
            v["model"]["vocab_size"] = serde_json::Value::Null;
            v["train"]["max_steps"] = serde_json::Value::Null;
            Ok(v)
        };
        Ok(first_difference(&comparable(self)?, &comparable(other)?, String::new()))
    }

    /// Checks every value a run depends on; the error names the JSON path and the reason.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        self.data.validate()
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        let m = self;
        if m.encoder_layers == 0 {
            bail!("model.encoder_layers: must be at least 1");
        }
        if m.decoder_layers == 0 {
            bail!("model.decoder_layers: must be at least 1");
        }
        if m.heads == 0 {
            bail!("model.heads: must be at least 1");
        }
        if m.d_model == 0 {
            bail!("model.d_model: must be at least 1");
        }
        if !m.d_model.is_multiple_of(m.heads) {
            bail!("model.heads: d_model {} is not divisible by {}", m.d_model, m.heads);
        }
        if !m.d_model.is_multiple_of(2) {
            bail!("model.d_model: must be even for the sinusoidal positional encoding, got {}", m.d_model);
        }
        if m.d_ff == 0 {
            bail!("model.d_ff: must be at least 1");
        }
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

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        let t = self;
        if t.batch_tokens == 0 {
            bail!("train.batch_tokens: must be at least 1");
        }
        if t.warmup_steps == 0 {
            bail!("train.warmup_steps: must be at least 1");
        }
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
        if t.max_steps == 0 {
            bail!("train.max_steps: must be at least 1");
        }
        if t.log_every == 0 {
            bail!("train.log_every: must be at least 1");
        }
        if t.checkpoint_every == 0 {
            bail!("train.checkpoint_every: must be at least 1");
        }
        if !(t.clip_norm >= 0.0 && t.clip_norm.is_finite()) {
            bail!("train.clip_norm: must be 0 (off) or a positive number, got {}", t.clip_norm);
        }
        if t.update_freq == 0 {
            bail!("train.update_freq: must be at least 1");
        }
        if t.max_skipped_steps == 0 {
            bail!("train.max_skipped_steps: must be at least 1");
        }
        Ok(())
    }
}

impl DataConfig {
    fn validate(&self) -> Result<()> {
        let d = self;
        if d.max_len == 0 {
            bail!("data.max_len: must be at least 1");
        }
        let required = [("data.train_src", &d.train_src), ("data.train_tgt", &d.train_tgt)];
        for (name, path) in required {
            match path {
                None => bail!("{name}: missing (set it in the config or with --{})", flag(name)),
                Some(p) => check_file(name, p)?,
            }
        }
        match (&d.valid_src, &d.valid_tgt) {
            (Some(s), Some(t)) => {
                check_file("data.valid_src", s)?;
                check_file("data.valid_tgt", t)?;
            }
            (Some(_), None) => bail!("data.valid_tgt: missing while data.valid_src is set"),
            (None, Some(_)) => bail!("data.valid_src: missing while data.valid_tgt is set"),
            (None, None) => {}
        }
        Ok(())
    }
}

fn flag(json_path: &str) -> String {
    json_path.trim_start_matches("data.").replace('_', "-")
}

fn check_file(name: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("{name}: {} is not a file", path.display()),
        Err(e) => bail!("{name}: cannot open {}: {e}", path.display()),
    }
}

/// The JSON path of the first value that differs between `a` and `b`.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            let null = serde_json::Value::Null;
            let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            first_difference(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), sub)
        }),
        _ if a == b => None,
        _ => Some(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match Config::from_json(json).and_then(|c| c.model.validate().map(|_| c)) {
            Ok(_) => panic!("expected an error for {json}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn defaults_are_the_paper_base_model() {
        let c = Config::from_json("{}").unwrap();
        assert_eq!(c.model.d_model, 512);
        assert_eq!(c.model.heads, 8);
        assert_eq!(c.model.d_k(), 64);
        assert_eq!(c.model.encoder_layers, 6);
        assert_eq!(c.train.warmup_steps, 4000);
        assert_eq!(c.train.adam_beta2, 0.98);
        c.model.validate().unwrap();
    }

    #[test]
    fn unknown_field_names_its_path() {
        let e = err(r#"{"model": {"d_modle": 3}}"#);
        assert!(e.starts_with("model.d_modle: unknown field `d_modle`"), "{e}");
    }

    #[test]
    fn wrong_type_names_its_path() {
        let e = err(r#"{"train": {"batch_tokens": "many"}}"#);
        assert!(e.starts_with("train.batch_tokens: invalid type"), "{e}");
    }

    #[test]
    fn impossible_values_are_rejected_with_reason() {
        let e = err(r#"{"model": {"d_model": 512, "heads": 6}}"#);
        assert_eq!(e, "model.heads: d_model 512 is not divisible by 6");
        let e = err(r#"{"model": {"encoder_layers": 0}}"#);
        assert_eq!(e, "model.encoder_layers: must be at least 1");
        let e = err(r#"{"model": {"dropout": 1.0}}"#);
        assert_eq!(e, "model.dropout: must be in [0, 1), got 1");
    }

    #[test]
    fn train_and_data_values_are_checked() {
        let mut c = Config::default();
        c.train.label_smoothing = -0.1;
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(e, "train.label_smoothing: must be in [0, 1), got -0.1");
        let c = Config::default();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("data.train_src: missing"), "{e}");
        let mut c = Config::default();
        c.data.train_src = Some("/nonexistent/x.en".into());
        c.data.train_tgt = Some("/nonexistent/x.de".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("data.train_src: cannot open /nonexistent/x.en"), "{e}");
    }

    #[test]
    fn bad_json_reports_line_and_column() {
        let e = format!("{:#}", Config::from_json("{\n  \"model\": {,}\n}").unwrap_err());
        assert!(e.contains("line 2 column"), "{e}");
    }

    #[test]
    fn shipped_configs_parse_and_validate_their_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        for name in ["demo.json", "multi30k.json", "base.json", "big.json"] {
            let c = Config::from_file(&dir.join(name)).unwrap();
            c.model.validate().unwrap();
            c.train.validate().unwrap();
        }
    }

    #[test]
    fn a_different_run_is_named_by_its_first_differing_field() {
        let a = Config::from_json(r#"{"data": {"train_src": "a", "train_tgt": "b"}}"#).unwrap();
        let mut b = a.clone();
        b.model.vocab_size += 1;
        b.train.max_steps += 1;
        assert_eq!(a.differs_as_a_run(&b).unwrap(), None);
        b.model.d_ff += 1;
        b.data.max_len += 1;
        assert_eq!(a.differs_as_a_run(&b).unwrap().as_deref(), Some("data.max_len"));
        b.data.max_len -= 1;
        assert_eq!(a.differs_as_a_run(&b).unwrap().as_deref(), Some("model.d_ff"));
    }
}
