//! `metrics.jsonl`: one JSON object a line, appended as training goes.
//!
//! Lines are appended without an fsync each; the file is fsynced before every checkpoint is written, so
//! the lines of every step up to a checkpoint are on disk once the checkpoint is. Lines after the last
//! checkpoint may be lost in a power cut, and a crash can leave the last line torn (half written).
//! Resuming rewrites the file (atomically) without the lines of steps after the checkpoint and without
//! any line that is not a whole JSON object, so a resumed run's metrics read as one uninterrupted run.

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

    /// Drops the lines of steps after `step` (written by a run that died after its last checkpoint), so
    /// that a resumed run's metrics read as one uninterrupted run.
    pub fn truncate_after(&self, step: usize) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(&self.path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| {
                let v = serde_json::from_str::<serde_json::Value>(l).ok();
                v.and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::run_dir::write_atomic(&self.path, kept.as_bytes())
    }

    /// Makes every line written so far durable (a missing file has nothing to sync).
    pub fn sync(&self) -> Result<()> {
        match std::fs::File::open(&self.path) {
            Ok(f) => f.sync_all().with_context(|| format!("cannot sync {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot open {}", self.path.display())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_after_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"kind\":\"train\",\"step\":2}\n{\"kind\":\"train\",\"step\":4,\"loss\":1.2").unwrap();
        let log = MetricsLog::new(&path);
        log.sync().unwrap();
        log.truncate_after(4).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"kind\":\"train\",\"step\":2}\n");
    }

    #[test]
    fn truncate_after_keeps_lines_up_to_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let log = MetricsLog::new(&dir.path().join("metrics.jsonl"));
        log.truncate_after(3).unwrap(); // no file yet: nothing to do
        for step in [2, 4, 6] {
            log.write(&serde_json::json!({"kind": "train", "step": step})).unwrap();
        }
        log.truncate_after(4).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(text, "{\"kind\":\"train\",\"step\":2}\n{\"kind\":\"train\",\"step\":4}\n");
    }
}
