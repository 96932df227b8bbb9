//! The run directory: the names of its files, and atomic writes (temporary file, fsync, rename), so that
//! a crash leaves either the old or the new version of a file, never a torn one.
//!
//! ```text
//! <run>/config.json        the resolved config (vocab_size is the size actually learned)
//! <run>/tokenizer.json     the joint BPE vocabulary
//! <run>/metrics.jsonl      one JSON object per log interval and per validation
//! <run>/checkpoints/ckpt-<step>.safetensors        model weights
//! <run>/checkpoints/ckpt-<step>.optim.safetensors  Adam's m and v
//! <run>/checkpoints/ckpt-<step>.state.json         step, epoch, position in the epoch, RNG state
//! <run>/checkpoints/best-<step>.safetensors         weights of the best validation so far
//! <run>/checkpoints/best.json                       its step, metric and value, and the weights' file name
//! ```
//!
//! `best.json` is written after the weights it names, so it always names complete weights of its step.
//! Runs made before that layout have `best.safetensors` and a `best.json` without a file name; they are
//! still read.
//!
//! For tests of failures that a real disk rarely gives on demand, `NMT_FAIL_WRITE=NAME[:N]` makes the
//! N-th (default first) atomic write of a file named NAME fail as a full disk does (ENOSPC), after part of
//! it was written.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Model weights at `step`.
    pub fn weights(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("ckpt-{step:08}.safetensors"))
    }

    /// Optimizer state at `step`.
    pub fn optimizer(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("ckpt-{step:08}.optim.safetensors"))
    }

    /// Training state at `step`.
    pub fn state(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("ckpt-{step:08}.state.json"))
    }

    /// The best validation's weights when they were taken at `step`.
    pub fn best_weights_at(&self, step: usize) -> PathBuf {
        self.checkpoints().join(format!("best-{step:08}.safetensors"))
    }

    /// Where runs made before `best-<step>.safetensors` kept the best weights.
    pub fn legacy_best_weights(&self) -> PathBuf {
        self.checkpoints().join("best.safetensors")
    }

    /// Which step, metric and value the best weights hold, and their file name (`weights`).
    pub fn best_info(&self) -> PathBuf {
        self.checkpoints().join("best.json")
    }

    /// The best weights that `best.json` names (`best.safetensors` for a run of the old layout); None
    /// when the run has no best checkpoint yet.
    pub fn best_weights(&self) -> Result<Option<PathBuf>> {
        let info = self.best_info();
        let text = match std::fs::read_to_string(&info) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", info.display())),
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", info.display()))?;
        match v.get("weights") {
            None => Ok(Some(self.legacy_best_weights())),
            Some(serde_json::Value::String(name)) if is_best_weights_name(name) => {
                Ok(Some(self.checkpoints().join(name)))
            }
            Some(other) => anyhow::bail!("{}: weights: {other} is not a best-<step>.safetensors name", info.display()),
        }
    }

    /// Steps of every complete checkpoint (weights and state both present), ascending.
    pub fn checkpoint_steps(&self) -> Result<Vec<usize>> {
        let dir = self.checkpoints();
        if !dir.exists() {
            return Ok(vec![]);
        }
        let mut steps = vec![];
        let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let name = entry?.file_name();
            if let Some((step, "safetensors")) = parse_checkpoint_name(&name.to_string_lossy()) {
                if self.state(step).exists() {
                    steps.push(step);
                }
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    /// The newest complete checkpoint's step.
    pub fn latest_step(&self) -> Result<Option<usize>> {
        Ok(self.checkpoint_steps()?.last().copied())
    }
}

/// The step and the kind of a checkpoint file's name: `ckpt-00000300.optim.safetensors` gives
/// `(300, "optim.safetensors")`; names of other files give None.
pub fn parse_checkpoint_name(name: &str) -> Option<(usize, &str)> {
    let (step, kind) = name.strip_prefix("ckpt-")?.split_once('.')?;
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((step.parse().ok()?, kind))
}

/// Whether `name` is a `best-<step>.safetensors` file name.
pub fn is_best_weights_name(name: &str) -> bool {
    let step = name.strip_prefix("best-").and_then(|n| n.strip_suffix(".safetensors"));
    step.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether this write is the one `NMT_FAIL_WRITE=NAME[:N]` asks to fail (see the module doc).
fn injected_failure(name: &str) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static MATCHING_WRITES: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("NMT_FAIL_WRITE") else { return false };
    let (target, nth) = match spec.rsplit_once(':') {
        Some((t, n)) => (t, n.parse().unwrap_or(1)),
        None => (spec.as_str(), 1),
    };
    target == name && MATCHING_WRITES.fetch_add(1, Ordering::SeqCst) + 1 == nth
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        Ok(())
    })
}

/// Lets `write` fill a temporary file, then fsyncs it and renames it to `path`. On any error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = write(&tmp).and_then(|_| {
        if injected_failure(&name) {
            Err(std::io::Error::from_raw_os_error(28))?; // ENOSPC, as from a full disk
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable, so that files renamed later (the checkpoint's state file) never
        // survive a power cut that this one does not.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_failed_write_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let err = write_atomic_with(&p, |tmp| {
            std::fs::write(tmp, b"partial")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
    }

    #[test]
    fn checkpoint_names_parse_to_step_and_kind() {
        let run = RunDir::new("r");
        for (path, kind) in [(run.weights(300), "safetensors"), (run.optimizer(7), "optim.safetensors")] {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let step = if kind == "safetensors" { 300 } else { 7 };
            assert_eq!(parse_checkpoint_name(&name), Some((step, kind)));
        }
        assert_eq!(parse_checkpoint_name("ckpt-00000009.state.json"), Some((9, "state.json")));
        for other in ["best.safetensors", "ckpt-.safetensors", "ckpt-12", "ckpt-+1.safetensors", ".ckpt-1.json.tmp"] {
            assert_eq!(parse_checkpoint_name(other), None, "{other}");
        }
    }

    #[test]
    fn only_complete_checkpoints_count() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        for step in [100, 300] {
            std::fs::write(run.weights(step), b"w").unwrap();
            std::fs::write(run.state(step), b"{}").unwrap();
        }
        std::fs::write(run.weights(500), b"w").unwrap(); // no state: incomplete
        assert_eq!(run.checkpoint_steps().unwrap(), vec![100, 300]);
        assert_eq!(run.latest_step().unwrap(), Some(300));
    }
}
