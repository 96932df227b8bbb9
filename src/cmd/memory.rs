//! The memory check before a model is built: its parameters must fit in the machine's memory.

use crate::config::ModelConfig;
use anyhow::{bail, Result};

/// What a model's tensors must hold at once, in f32 copies of its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// The weights only.
    Inference,
    /// Weights, gradients, and Adam's m and v.
    Training,
}

/// Refuses a model whose parameters (and positional table) alone would not fit in this machine's memory
/// (`MemTotal` of /proc/meminfo), before anything is allocated. Where /proc/meminfo cannot be read, the
/// check is skipped. The sizes are within the config's bounds, so the arithmetic cannot overflow.
pub(crate) fn check(cfg: &ModelConfig, usage: Use) -> Result<()> {
    let Some(total) = memory_total() else { return Ok(()) };
    let copies: u64 = match usage {
        Use::Inference => 1,
        Use::Training => 4,
    };
    let params = crate::model::count_parameters(cfg).total() as u64;
    let table = (cfg.max_positions as u64) * (cfg.d_model as u64);
    let need = (params * copies + table) * 4;
    if need > total {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let what = match usage {
            Use::Inference => "its weights",
            Use::Training => "weights, gradients and Adam's m and v",
        };
        bail!(
            "model: {params} parameters need {:.1} GiB for {what} alone, more than this machine's {:.1} GiB of memory \
             (MemTotal in /proc/meminfo); make model.d_model, model.d_ff, model.vocab_size or the layers smaller",
            gib(need),
            gib(total)
        );
    }
    Ok(())
}

/// The machine's memory in bytes, from /proc/meminfo.
fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
