//! The typed configuration: every default and every check lives here.
//!
//! A config file is JSON with four sections, one file each here: `model` ([`model`]), `train` ([`train`]),
//! `data` ([`data`]) and `decode` ([`decode`]). Every field is optional and falls back to the default
//! documented on it. Unknown fields are rejected, and [`Config::validate`] names the JSON path of any
//! impossible value (`model.heads: d_model 512 is not divisible by 6`). Modules receive `&ModelConfig`,
//! `&TrainConfig` or `&DecodeConfig` and keep no defaults of their own.

pub mod data;
pub mod decode;
pub mod model;
pub mod train;

use anyhow::{bail, Context, Result};
pub use data::DataConfig;
pub use decode::DecodeConfig;
pub use model::{ModelConfig, Norm};
use serde::{Deserialize, Serialize};
use std::path::Path;
pub use train::{BestMetric, Precision, TrainConfig};

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub decode: DecodeConfig,
}

/// The fields (JSON paths; a section name covers the whole section) that do not change what a run is:
/// what a run learned (`model.vocab_size`, recorded after learning the vocabulary), its limits, and knobs
/// that only change what is logged, validated, kept or how results are decoded. A run re-started with
/// other values of these continues; any other difference makes it a different run. Every new field of
/// that kind (a time budget, thread counts) belongs here.
pub const NOT_PART_OF_A_RUN: &[&str] = &[
    "model.vocab_size",
    "train.max_steps",
    "train.max_epochs",
    "train.log_every",
    "train.valid_every",
    "train.valid_bleu_sentences",
    "train.checkpoint_every",
    "train.keep_last",
    "train.patience",
    "train.max_skipped_steps",
    "train.max_minutes",
    "train.threads",
    "decode",
];

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
    /// the fields of [`NOT_PART_OF_A_RUN`].
    pub fn differs_as_a_run(&self, other: &Config) -> Result<Option<String>> {
        let comparable = |c: &Config| -> Result<serde_json::Value> {
            let mut v = serde_json::to_value(c)?;
            for path in NOT_PART_OF_A_RUN {
                let (section, field) = path.split_once('.').unwrap_or((path, ""));
                match field {
                    "" => v[section] = serde_json::Value::Null,
                    _ => v[section][field] = serde_json::Value::Null,
                }
            }
            Ok(v)
        };
        Ok(first_difference(&comparable(self)?, &comparable(other)?, String::new()))
    }

    /// Checks every value a run depends on, and that its corpus files exist; the error names the JSON
    /// path and the reason.
    pub fn validate(&self) -> Result<()> {
        self.validate_values()?;
        self.data.validate_files()
    }

    /// Checks every value, across sections too, without touching the corpus files.
    pub fn validate_values(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        self.data.validate_values()?;
        self.decode.validate()?;
        if self.data.max_len.saturating_add(2) > self.model.max_positions {
            bail!(
                "data.max_len: {} tokens plus bos/eos exceed model.max_positions {}",
                self.data.max_len,
                self.model.max_positions
            );
        }
        self.decode.validate_for_vocab(self.model.vocab_size)
    }
}

/// Fails on the first of `fields` (names within `section`) that is 0.
fn at_least_one(section: &str, fields: &[(&str, usize)]) -> Result<()> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => bail!("{section}.{name}: must be at least 1"),
        None => Ok(()),
    }
}

/// Fails on the first of `fields` (names within `section`, each with its upper bound) above its bound.
/// The bounds keep sizes far from overflow and from allocations no machine can make.
fn at_most(section: &str, fields: &[(&str, usize, usize)]) -> Result<()> {
    match fields.iter().find(|(_, v, max)| v > max) {
        Some((name, v, max)) => bail!("{section}.{name}: must be at most {max}, got {v}"),
        None => Ok(()),
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

    /// The error of parsing `json` and then checking it with `check`.
    fn error_of(json: &str, check: fn(&Config) -> Result<()>) -> String {
        match Config::from_json(json).and_then(|c| check(&c)) {
            Ok(()) => panic!("expected an error for {json}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn err_all(json: &str) -> String {
        error_of(json, Config::validate_values)
    }

    fn err(json: &str) -> String {
        error_of(json, |c| c.model.validate())
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

    /// Every config in `configs/` loads and passes every check; the demo config, whose corpus ships with
    /// the repository, passes the file checks too (from the repository root, as the README runs it).
    #[test]
    fn every_shipped_config_loads_and_validates() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<_> = std::fs::read_dir(root.join("configs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        assert!(names.len() >= 4, "{names:?}");
        for path in &names {
            let c = Config::from_file(path).unwrap();
            c.validate_values().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let mut demo = Config::from_file(&root.join("configs/demo.json")).unwrap();
        for p in
            [&mut demo.data.train_src, &mut demo.data.train_tgt, &mut demo.data.valid_src, &mut demo.data.valid_tgt]
        {
            *p = p.as_ref().map(|p| root.join(p));
        }
        demo.validate().unwrap();
    }

    /// Sizes no machine can hold are refused with their path before anything is built, and no check
    /// overflows on them (tests run with overflow checks).
    #[test]
    fn huge_sizes_are_rejected_with_their_path() {
        let huge = usize::MAX;
        for (json, expected) in [
            (format!(r#"{{"model": {{"d_model": {huge}}}}}"#), "model.d_model: must be at most 65536"),
            (format!(r#"{{"model": {{"d_ff": {huge}}}}}"#), "model.d_ff: must be at most 1048576"),
            (format!(r#"{{"model": {{"vocab_size": {huge}}}}}"#), "model.vocab_size: must be at most 16777216"),
            (format!(r#"{{"model": {{"max_positions": {huge}}}}}"#), "model.max_positions: must be at most 65536"),
            (format!(r#"{{"model": {{"encoder_layers": {huge}}}}}"#), "model.encoder_layers: must be at most 1024"),
            (format!(r#"{{"data": {{"max_len": {huge}}}}}"#), "data.max_len: must be at most 65534"),
            (format!(r#"{{"decode": {{"max_len_extra": {huge}}}}}"#), "decode.max_len_extra: must be at most 65536"),
            (format!(r#"{{"train": {{"update_freq": {huge}}}}}"#), "train.update_freq: must be at most 65536"),
            (r#"{"model": {"vocab_size": 100}, "decode": {"beam": 101}}"#.into(), "decode.beam: 101 is larger than"),
            (r#"{"model": {"vocab_size": 100}, "decode": {"valid_beam": 1000000000}}"#.into(), "decode.valid_beam"),
        ] {
            let e = err_all(&json);
            assert!(e.starts_with(expected), "{json}: {e}");
        }
        let mut c = Config::default();
        c.model.max_positions = model::MAX_POSITIONS;
        c.data.max_len = model::MAX_POSITIONS - 2;
        c.decode.beam = c.model.vocab_size;
        c.validate_values().unwrap();
    }

    /// The largest model the bounds allow is counted without overflow (`nmt info` prints it).
    #[test]
    fn the_largest_allowed_model_is_counted_without_overflow() {
        let m = ModelConfig {
            encoder_layers: model::MAX_LAYERS,
            decoder_layers: model::MAX_LAYERS,
            d_model: model::MAX_D_MODEL,
            d_ff: model::MAX_D_FF,
            vocab_size: model::MAX_VOCAB_SIZE,
            max_positions: model::MAX_POSITIONS,
            tie_embeddings: false,
            norm: Norm::Pre,
            ..ModelConfig::default()
        };
        m.validate().unwrap();
        assert!(crate::model::count_parameters(&m).total() > 1 << 40);
    }

    /// A missing file of the shipped Multi30k configs' corpus says how to get the corpus.
    #[test]
    fn a_missing_multi30k_file_says_how_to_get_it() {
        let mut c = Config::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/multi30k.json")).unwrap();
        c.data.train_src = Some("data/multi30k/no-such-split.de".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("data.train_src: cannot open data/multi30k/no-such-split.de"), "{e}");
        assert!(e.contains("scripts/fetch_multi30k.sh") && e.contains("--train-src"), "{e}");
    }

    #[test]
    fn max_len_must_fit_the_position_table() {
        let mut c = Config::default();
        c.model.max_positions = 50;
        c.data.max_len = 49;
        let e = c.validate_values().unwrap_err().to_string();
        assert_eq!(e, "data.max_len: 49 tokens plus bos/eos exceed model.max_positions 50");
        c.data.max_len = 48;
        c.validate_values().unwrap();
    }

    #[test]
    fn decode_defaults_are_the_papers_and_are_checked() {
        let c = Config::from_json("{}").unwrap();
        assert_eq!((c.decode.beam, c.decode.alpha, c.decode.batch_size), (4, 0.6, 32));
        let e = err_all(r#"{"decode": {"alpha": -1}}"#);
        assert_eq!(e, "decode.alpha: must be a number ≥ 0, got -1");
        let e = err_all(r#"{"decode": {"beam": 0}}"#);
        assert_eq!(e, "decode.beam: must be at least 1");
    }

    /// Each field of [`NOT_PART_OF_A_RUN`] exists, and changing it keeps the run the same run.
    #[test]
    fn limits_and_knobs_do_not_change_a_run() {
        let a = Config::default();
        let v = serde_json::to_value(&a).unwrap();
        for path in NOT_PART_OF_A_RUN {
            let (section, field) = path.split_once('.').unwrap_or((path, ""));
            let value = if field.is_empty() { &v[section] } else { &v[section][field] };
            assert!(!value.is_null(), "{path} is not a config field");
            let mut changed = v.clone();
            let slot = if field.is_empty() { &mut changed[section]["beam"] } else { &mut changed[section][field] };
            *slot = serde_json::json!(7);
            let b: Config = serde_json::from_value(changed).unwrap();
            assert_ne!(a, b, "{path}");
            assert_eq!(a.differs_as_a_run(&b).unwrap(), None, "{path}");
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
