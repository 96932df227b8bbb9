//! Checkpoints: the weights (what `translate` loads, through [`crate::weights`]; see docs/CHECKPOINT.md),
//! Adam's m and v, and the training state (step, epoch, position in the epoch's batch order, the dropout RNG).
//!
//! Each file is written atomically; the state file is written last, and a checkpoint counts only once
//! it exists, so a crash mid-save leaves the previous checkpoint as the latest one.

use super::early_stop::BestTracker;
use super::optim::Adam;
use crate::model::init::ParamStore;
use crate::rng::Rng;
use crate::run_dir::{is_best_weights_name, parse_checkpoint_name, write_atomic, RunDir};
use crate::weights::{load_tensors, load_weights, save_tensors};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

/// Everything besides tensors that a run needs to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Updates done.
    pub step: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Batches of the current epoch's order already consumed.
    pub cursor: usize,
    /// The dropout RNG.
    pub rng: Rng,
    /// Best validation so far and the patience count.
    pub best: BestTracker,
    /// Seconds `nmt train` has spent on this run, over every process that worked on it (0 in
    /// checkpoints written before the time budget existed).
    #[serde(default)]
    pub elapsed_sec: f64,
}

fn create_dir(run: &RunDir) -> Result<()> {
    std::fs::create_dir_all(run.checkpoints()).with_context(|| format!("cannot create {}", run.checkpoints().display()))
}

/// Writes a complete checkpoint for `state.step`. If any part fails (a full disk, say), the parts already
/// written for this step are removed, so the previous checkpoint stays the latest and nothing is left half-done.
pub fn save(run: &RunDir, store: &ParamStore, adam: &Adam, state: &TrainState) -> Result<()> {
    create_dir(run)?;
    let step = state.step;
    let complete_before = run.state(step).exists();
    let result = save_tensors(&run.weights(step), &store.tensors())
        .and_then(|_| save_tensors(&run.optimizer(step), &adam.state()))
        .and_then(|_| write_atomic(&run.state(step), serde_json::to_string_pretty(state)?.as_bytes()));
    if result.is_err() && !complete_before {
        for path in [run.state(step), run.optimizer(step), run.weights(step)] {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// Writes the current weights as `checkpoints/best-<step>.safetensors`, then `best.json` naming them
/// (with the step, metric and value), then removes the previous best weights. A crash before `best.json`
/// is renamed into place leaves the previous pair intact, plus weights that nothing names (removed on
/// resume by [`remove_incomplete`]); the pair never disagrees.
pub fn save_best(run: &RunDir, store: &ParamStore, step: usize, metric: &str, value: f64) -> Result<()> {
    create_dir(run)?;
    let weights = run.best_weights_at(step);
    save_tensors(&weights, &store.tensors())?;
    let name = weights.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let info = serde_json::json!({ "step": step, "metric": metric, "value": value, "weights": name });
    write_atomic(&run.best_info(), serde_json::to_string_pretty(&info)?.as_bytes())?;
    for old in unnamed_best_weights(run)? {
        std::fs::remove_file(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// Best weights that `best.json` does not name: the previous best, an old-layout `best.safetensors`, or
/// what a crash before `best.json` was written left behind.
fn unnamed_best_weights(run: &RunDir) -> Result<Vec<std::path::PathBuf>> {
    let named = run.best_weights()?;
    let mut out = vec![];
    for entry in
        std::fs::read_dir(run.checkpoints()).with_context(|| format!("cannot list {}", run.checkpoints().display()))?
    {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let best = is_best_weights_name(&name) || path == run.legacy_best_weights();
        if best && named.as_ref() != Some(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Deletes all but the newest `keep` complete checkpoints (0 keeps all). The state file goes first, so an
/// interrupted deletion never leaves something that looks complete but is not.
pub fn prune(run: &RunDir, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let steps = run.checkpoint_steps()?;
    for &step in steps.iter().take(steps.len().saturating_sub(keep)) {
        for path in [run.state(step), run.weights(step), run.optimizer(step)] {
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes what a crash in the middle of a save left in `checkpoints/`: temporary files, the weights or
/// optimizer state of a step whose state file was never written, and best weights that `best.json` does
/// not name. Returns how many files it removed.
pub fn remove_incomplete(run: &RunDir) -> Result<usize> {
    let dir = run.checkpoints();
    if !dir.is_dir() {
        return Ok(0);
    }
    let complete = run.checkpoint_steps()?;
    let mut removed = 0;
    for path in unnamed_best_weights(run)? {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        removed += 1;
    }
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let step = parse_checkpoint_name(&name).map(|(step, _)| step);
        let stale_tmp = name.starts_with('.') && name.ends_with(".tmp");
        let orphan = step.is_some_and(|s| !complete.contains(&s));
        if stale_tmp || orphan {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Restores weights, optimizer and training state of the checkpoint at `step`.
pub fn resume(run: &RunDir, step: usize, store: &ParamStore, adam: &mut Adam) -> Result<TrainState> {
    load_weights(&run.weights(step), store)?;
    let state_path = run.state(step);
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid training state", state_path.display()))?;
    let optim_path = run.optimizer(step);
    let optim = load_tensors(&optim_path, &Device::Cpu)?;
    adam.load_state(&optim, state.step).with_context(|| format!("optimizer state {}", optim_path.display()))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_incomplete_keeps_complete_checkpoints_and_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        let keep = [run.weights(3), run.optimizer(3), run.state(3), run.best_weights_at(2), run.best_info()];
        let stale = [
            run.weights(5),
            run.optimizer(5),
            run.checkpoints().join(".ckpt-00000005.state.json.tmp"),
            run.checkpoints().join(".best-00000004.safetensors.tmp"),
            run.best_weights_at(4), // written, but the crash came before best.json named it
        ];
        for p in keep.iter().chain(&stale) {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::write(run.best_info(), r#"{"step": 2, "weights": "best-00000002.safetensors"}"#).unwrap();
        assert_eq!(remove_incomplete(&run).unwrap(), stale.len());
        assert!(keep.iter().all(|p| p.exists()) && !stale.iter().any(|p| p.exists()));
        assert_eq!(remove_incomplete(&run).unwrap(), 0);
    }
}
