//! Data-parallel training (issue 14): one process per GPU, each holding the whole model and computing the
//! gradient of its own share of every batch. Before every Adam step the shares' gradients are summed over
//! the processes, so that every process applies the same update and keeps the same weights.
//!
//! The engine is NCCL (through cudarc, as candle exposes it with `--features nccl`); this module is the
//! arithmetic around it and the launch contract, written so that everything but the NCCL call runs and is
//! tested on the CPU:
//!
//! - [`World`]: who this process is, from the environment contract of PyTorch's torchrun (`RANK`,
//!   `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`). `nmt train --nproc N` sets it for N processes
//!   on one machine; a cluster launcher (torchrun, Slurm, mpirun with a wrapper) sets it across machines.
//! - [`Collective`]: the one primitive, an element-wise sum over all processes. [`Solo`] is the world of 1
//!   (any device); `nccl::Nccl` runs NCCL's all-reduce on CUDA; [`tcp::TcpGroup`] sums CPU tensors through
//!   rank 0 over TCP (a few CPU processes, and the end-to-end tests). A broadcast from rank 0 is a sum to
//!   which every other process gives zeros ([`share_tensor`], [`share_bytes`]).
//! - [`shard`]: a process's share of a batch.
//! - [`all_reduce_update`]: the per-process gradients (each the mean over its own target tokens) become the
//!   gradient of the whole update, the mean over all its target tokens: the gradient one process would
//!   compute on the same batches.
//! - [`rendezvous`]: how every process gets NCCL's unique id from rank 0, over TCP at
//!   `MASTER_ADDR:MASTER_PORT` (what torchrun's rendezvous does).

#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;
pub mod tcp;
#[cfg(test)]
mod tests;

use crate::data::batch::{Batch, Example};
use crate::data::tokenizer::Specials;
use crate::train::checkpoint::TrainState;
use crate::train::gradients::UpdateGradients;
use crate::train::optim::Adam;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

/// This process's place among the processes of one training run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// 0..size; rank 0 reads and writes the run directory, validates and logs.
    pub rank: usize,
    /// Processes in all.
    pub size: usize,
    /// The GPU of this process on its machine (`--device cuda` opens `cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// Where rank 0 serves the rendezvous: `MASTER_ADDR` and `MASTER_PORT` (needed when `size` > 1).
    pub master: Option<(String, u16)>,
}

/// How long the rendezvous waits for every process (a cluster may start them minutes apart).
pub const RENDEZVOUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The environment variables of the contract, in the order the docs list them.
pub const ENV: [&str; 5] = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"];

impl World {
    /// The world the environment describes; None when neither `RANK` nor `WORLD_SIZE` is set (a plain
    /// single-process run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] with the variables looked up by `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (rank, size) = match (get("RANK"), get("WORLD_SIZE")) {
            (None, None) => return Ok(None),
            (Some(_), None) => bail!("RANK is set but WORLD_SIZE is not: set both, or neither for one process"),
            (None, Some(_)) => bail!("WORLD_SIZE is set but RANK is not: set both, or neither for one process"),
            (Some(r), Some(w)) => (r, w),
        };
        let number = |name: &str, v: &str| {
            v.trim().parse::<usize>().map_err(|_| anyhow!("{name}={v:?}: expected a non-negative integer"))
        };
        let (rank, size) = (number("RANK", &rank)?, number("WORLD_SIZE", &size)?);
        if size == 0 {
            bail!("WORLD_SIZE=0: a training run needs at least one process");
        }
        if rank >= size {
            bail!("RANK={rank} is out of range: ranks run from 0 to WORLD_SIZE-1 = {}", size - 1);
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master = match size {
            1 => None,
            _ => {
                let missing = |name: &str| anyhow!("WORLD_SIZE={size}: {name} is not set (where rank 0 listens)");
                let addr = get("MASTER_ADDR").filter(|a| !a.trim().is_empty()).ok_or_else(|| missing("MASTER_ADDR"))?;
                let port = get("MASTER_PORT").ok_or_else(|| missing("MASTER_PORT"))?;
                let port = port
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| anyhow!("MASTER_PORT={port:?}: expected a port number, 1 to 65535"))?;
                Some((addr.trim().to_string(), port))
            }
        };
        Ok(Some(Self { rank, size, local_rank, master }))
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

/// A group of processes that can sum tensors over all of them.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// The element-wise sum of `x` over every process, returned to every process. Every process passes a
    /// tensor of the same shape and dtype, in the same order of calls.
    fn all_reduce_sum(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

/// The world of one process: the sum is the tensor itself.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}

/// The group for `world` on `device`: [`Solo`] for a world of 1 off CUDA, [`tcp::TcpGroup`] for more;
/// NCCL on CUDA (a world of 1 included, so that the NCCL path can be checked on a machine with one GPU).
pub fn join(world: &World, device: &Device) -> Result<Box<dyn Collective>> {
    match (device.is_cuda(), world.size) {
        (false, 1) => Ok(Box::new(Solo)),
        (false, _) => Ok(Box::new(tcp::TcpGroup::join(world)?)),
        (true, _) => nccl_group(world, device),
    }
}

#[cfg(feature = "nccl")]
fn nccl_group(world: &World, device: &Device) -> Result<Box<dyn Collective>> {
    Ok(Box::new(nccl::Nccl::join(world, device)?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_group(world: &World, _device: &Device) -> Result<Box<dyn Collective>> {
    if world.size == 1 {
        // A world of 1 needs no communication: without NCCL it is the plain single-GPU run.
        return Ok(Box::new(Solo));
    }
    bail!(
        "WORLD_SIZE={}: data-parallel training needs NCCL, and this nmt was built without it \
         (rebuild with `--features nccl`)",
        world.size
    )
}

/// Process `rank`'s share of a batch's examples (of `size` processes): every `size`-th one from the
/// `rank`-th. A batch is sorted by length, so the shares have about the same number of tokens; a batch
/// with fewer examples than processes leaves some shares empty.
pub fn shard(examples: &[usize], rank: usize, size: usize) -> Vec<usize> {
    examples.iter().skip(rank).step_by(size.max(1)).copied().collect()
}

/// The batches process `rank` (of `size`) computes for one update whose batches are `batches` (indices into
/// `examples`): its [`shard`] of each, the empty shards left out.
pub fn local_batches(
    examples: &[Example],
    batches: &[Vec<usize>],
    rank: usize,
    size: usize,
    specials: Specials,
    device: &Device,
) -> candle_core::Result<Vec<Batch>> {
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mine: Vec<&Example> = shard(batch, rank, size).into_iter().map(|i| &examples[i]).collect();
        if !mine.is_empty() {
            out.push(Batch::new(&mine, specials, device)?);
        }
    }
    Ok(out)
}

/// Turns this process's gradients of its shares of an update's batches into the update's gradients over
/// all processes, and its loss statistics into the update's.
///
/// Each process's gradients are the mean over its own target tokens, so each is weighted by its share of
/// all the update's tokens before the sum: the result is the mean over every token, the gradient that one
/// process would compute on the whole batches. A parameter keeps no gradient only when no process has
/// one. A non-finite gradient anywhere makes the sum non-finite everywhere, so every process skips the
/// same updates. All gradients travel as one flat tensor: one all-reduce per update, plus one for the
/// statistics.
pub fn all_reduce_update(group: &dyn Collective, params: &[(String, Var)], g: &mut UpdateGradients) -> Result<()> {
    let Some((_, first)) = params.first() else { return Ok(()) };
    let device = first.device();
    // Counts are exact in f64: [loss_sum, nll_sum, tokens, src_tokens, has-gradient per parameter].
    let mut stats = vec![g.loss_sum, g.nll_sum, g.tokens as f64, g.src_tokens as f64];
    stats.extend(g.grads.iter().map(|x| if x.is_some() { 1.0 } else { 0.0 }));
    let n = stats.len();
    let stats = group.all_reduce_sum(&Tensor::from_vec(stats, n, device)?)?.to_vec1::<f64>()?;
    let total_tokens = stats[2];
    let weight = g.tokens as f64 / total_tokens.max(1.0);
    // The gradients are consumed as they are weighted, so that at most two copies exist at once (on a GPU,
    // the gradients' memory is the model's again).
    let mut pieces = Vec::with_capacity(params.len());
    for ((_, var), grad) in params.iter().zip(std::mem::take(&mut g.grads)) {
        pieces.push(match grad {
            Some(t) if weight == 1.0 => t.flatten_all()?,
            Some(t) => (t * weight)?.flatten_all()?,
            None => Tensor::zeros(var.elem_count(), var.dtype(), device)?,
        });
    }
    let flat = Tensor::cat(&pieces, 0)?;
    drop(pieces);
    let summed = group.all_reduce_sum(&flat)?;
    drop(flat);
    let mut offset = 0;
    for (i, (_, var)) in params.iter().enumerate() {
        let len = var.elem_count();
        g.grads.push(match stats[4 + i] > 0.0 {
            true => Some(summed.narrow(0, offset, len)?.reshape(var.shape())?),
            false => None,
        });
        offset += len;
    }
    g.loss_sum = stats[0];
    g.nll_sum = stats[1];
    g.tokens = total_tokens as usize;
    g.src_tokens = stats[3] as usize;
    Ok(())
}

/// `local` on this process, unless another process's failed: then an error that says so (its own error
/// is on its own stderr). Every process calls it at the same point, so that none is left waiting for a
/// process that gave up.
pub fn all_ok<T>(group: &dyn Collective, device: &Device, local: Result<T>) -> Result<T> {
    let failed = if local.is_err() { 1.0 } else { 0.0 };
    let failed = group.all_reduce_sum(&Tensor::new(&[failed], device)?)?.to_vec1::<f64>()?[0];
    match local {
        Ok(_) if failed > 0.0 => bail!("{failed} other process(es) failed while setting up (see their errors)"),
        local => local,
    }
}

/// Rank 0's `x` on every process (every process passes a tensor of the same shape and dtype).
pub fn share_tensor(group: &dyn Collective, x: &Tensor) -> Result<Tensor> {
    if group.size() == 1 {
        return Ok(x.clone());
    }
    let mine = match group.rank() {
        0 => x.clone(),
        _ => x.zeros_like()?,
    };
    Ok(group.all_reduce_sum(&mine)?)
}

/// Rank 0's bytes on every process: rank 0 passes `Some`, the others `None`. `what` names them in errors.
pub fn share_bytes(group: &dyn Collective, device: &Device, mine: Option<&[u8]>, what: &str) -> Result<Vec<u8>> {
    let leader = group.rank() == 0;
    if leader != mine.is_some() {
        bail!("share_bytes({what}): rank {} {} bytes to share", group.rank(), if leader { "has no" } else { "has" });
    }
    let len = mine.map_or(0, |b| b.len());
    let len = group.all_reduce_sum(&Tensor::new(&[len as f64], device)?)?.to_vec1::<f64>()?[0] as usize;
    let bytes = match mine {
        Some(b) => Tensor::from_slice(b, len, device)?,
        None => Tensor::zeros(len, DType::U8, device)?,
    };
    let bytes = group.all_reduce_sum(&bytes).with_context(|| format!("sharing the {what} of rank 0"))?;
    Ok(bytes.to_vec1::<u8>()?)
}

/// Rank 0's values of `vars` set on every process.
pub fn share_vars(group: &dyn Collective, vars: &[(String, Var)]) -> Result<()> {
    for (name, var) in vars {
        let value = share_tensor(group, var.as_tensor()).with_context(|| format!("sharing {name} of rank 0"))?;
        var.set(&value)?;
    }
    Ok(())
}

/// Rank 0's weights, Adam moments and training state (step, epoch, batch cursor, random generator, best
/// validation) on every process: after this, every rank starts from what rank 0 built or resumed, and
/// only rank 0 needs the run directory.
pub fn share_run_state(
    group: &dyn Collective,
    device: &Device,
    adam: &mut Adam,
    state: TrainState,
) -> Result<TrainState> {
    share_vars(group, adam.params())?;
    let mut moments = std::collections::HashMap::new();
    for (name, value) in adam.state() {
        let shared = share_tensor(group, &value).with_context(|| format!("sharing the Adam moment {name}"))?;
        moments.insert(name, shared);
    }
    let mine = match group.rank() {
        0 => Some(serde_json::to_vec(&(&state, adam.t))?),
        _ => None,
    };
    let bytes = share_bytes(group, device, mine.as_deref(), "training state")?;
    let (state, t): (TrainState, usize) = serde_json::from_slice(&bytes).context("reading rank 0's training state")?;
    adam.load_state(&moments, t)?;
    Ok(state)
}
