//! Safetensors files of named tensors: model weights (a checkpoint's, the best, an average) and optimizer
//! state. `translate`, `eval` and `average` load weights through here without depending on the trainer.
//! Every error names the file.

use crate::model::init::ParamStore;
use crate::run_dir::write_atomic;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Writes named tensors as a safetensors file, atomically. The file is serialized in memory and written
/// by `write_atomic`, so that a failure (a full disk, a read-only directory) is one plain I/O error.
pub fn save_tensors<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<()> {
    let bytes =
        safetensors::serialize(tensors, None).with_context(|| format!("cannot serialize {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Loads a safetensors file; a missing, unreadable, truncated or corrupt file is an error naming it.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        anyhow::bail!("checkpoint {} does not exist", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    parse_tensors(&bytes, path, device)
}

/// Parses the contents of the safetensors file `path`.
pub fn parse_tensors(bytes: &[u8], path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, device)
        .with_context(|| format!("checkpoint {} is not a readable safetensors file", path.display()))
}

/// Loads model weights into `store`, with errors naming the file.
pub fn load_weights(path: &Path, store: &ParamStore) -> Result<()> {
    let tensors = load_tensors(path, &Device::Cpu)?;
    fit_weights(&tensors, path, store)
}

/// Copies checkpoint tensors into `store`; a missing, extra or misshapen tensor is an error naming `path`.
pub fn fit_weights(tensors: &HashMap<String, Tensor>, path: &Path, store: &ParamStore) -> Result<()> {
    store.load(tensors).with_context(|| format!("checkpoint {} does not fit this model", path.display()))
}
