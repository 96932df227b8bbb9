//! Checkpoints: the weights (what `translate` loads; see docs/CHECKPOINT.md), Adam's m and v, and the
//! training state (step, epoch, position in the epoch's batch order, the dropout RNG).
//!
//! Each file is written atomically; the state file is written last, and a checkpoint counts only once
//! it exists, so a crash mid-save leaves the previous checkpoint as the latest one.

use super::early_stop::BestTracker;
use super::optim::Adam;
use crate::model::init::{ParamStore, Rng};
use crate::run_dir::{write_atomic, write_atomic_with, RunDir};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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
}

fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let tensors: HashMap<&str, Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_atomic_with(path, |tmp| Ok(candle_core::safetensors::save(&tensors, tmp)?))
}

fn create_dir(run: &RunDir) -> Result<()> {
    std::fs::create_dir_all(run.checkpoints()).with_context(|| format!("cannot create {}", run.checkpoints().display()))
}

/// Writes a complete checkpoint for `state.step`.
pub fn save(run: &RunDir, store: &ParamStore, adam: &Adam, state: &TrainState) -> Result<()> {
    create_dir(run)?;
    save_tensors(&run.weights(state.step), &store.tensors())?;
    save_tensors(&run.optimizer(state.step), &adam.state())?;
    write_atomic(&run.state(state.step), serde_json::to_string_pretty(state)?.as_bytes())
}

/// Writes the current weights as `checkpoints/best.safetensors`, with `best.json` naming its step.
pub fn save_best(run: &RunDir, store: &ParamStore, step: usize, metric: &str, value: f64) -> Result<()> {
    create_dir(run)?;
    save_tensors(&run.best_weights(), &store.tensors())?;
    let info = serde_json::json!({ "step": step, "metric": metric, "value": value });
    write_atomic(&run.best_info(), serde_json::to_string_pretty(&info)?.as_bytes())
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

/// Loads a safetensors file; a missing, truncated or corrupt file is an error naming it.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        anyhow::bail!("checkpoint {} does not exist", path.display());
    }
    candle_core::safetensors::load(path, device)
        .with_context(|| format!("checkpoint {} is not a readable safetensors file", path.display()))
}

/// Loads model weights into `store`, with errors naming the file.
pub fn load_weights(path: &Path, store: &ParamStore) -> Result<()> {
    let tensors = load_tensors(path, &Device::Cpu)?;
    store.load(&tensors).with_context(|| format!("checkpoint {} does not fit this model", path.display()))
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
