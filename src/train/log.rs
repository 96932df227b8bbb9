//! `metrics.jsonl`: one JSON object a line, appended as training goes.

use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A training-interval line.
#[derive(Debug, Serialize)]
pub struct TrainLine {
    pub kind: &'static str,
    pub step: usize,
    /// The epoch in progress, counting from 1.
    pub epoch: usize,
    /// Mean label-smoothed loss per target token over the interval.
    pub loss: f64,
    /// Mean negative log-likelihood per target token over the interval (no smoothing).
    pub nll: f64,
    pub lr: f64,
    pub src_tokens_per_sec: f64,
    pub tgt_tokens_per_sec: f64,
    pub elapsed_sec: f64,
}

/// A validation line.
#[derive(Debug, Serialize)]
pub struct ValidLine {
    pub kind: &'static str,
    pub step: usize,
    pub epoch: usize,
    pub valid_loss: f64,
    pub valid_ppl: f64,
    pub valid_bleu: f64,
    pub valid_chrf: f64,
    pub elapsed_sec: f64,
}

pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf() }
    }

    pub fn write<T: Serialize>(&self, line: &T) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(line)?).with_context(|| format!("cannot write {}", self.path.display()))
    }
}
