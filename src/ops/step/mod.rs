//! The training step written by hand: forward and backward through the embeddings, both stacks and the
//! loss, on slices, with every weight's gradient added into one buffer per parameter.
//!
//! Hand-written because candle's autograd, which the step used before, costs more than the arithmetic
//! around the matrix products: it creates every gradient slot with `zeros_like` and adds into it, for
//! every node (reshapes and transposes included), allocates a tensor per node and per gradient, and
//! computes gradients that lead to no parameter. Here the graph is the model's own structure, known in
//! advance: each sub-layer's forward function returns what its backward function needs
//! (`sublayer.rs`), the stacks run them in order and in reverse (`stacks.rs`), and the kernels are the
//! fused ops of [`crate::ops`] (linear, attention, LayerNorm, residual dropout, projected loss).
//!
//! The reference is the model's forward pass ([`crate::model::Transformer::forward_hidden`]) with the
//! loss and `Tensor::backward`, which [`crate::train::gradients::accumulate`] takes wherever this step does
//! not apply (another device, another dtype, the reference path asked for). Dropout masks come from the
//! run's RNG in the same order as that forward pass draws them, so both paths drop the same elements and a
//! test compares their gradients, with dropout on, in f64 ([`crate::ops::with_whole_batches`]).
//!
//! Each batch runs as two shards of half its sentences, side by side (`rayon::join`), each adding into its
//! own gradient buffers, which are added together at the end of the update. On a 2-core machine this is
//! data parallelism inside the step: each core runs a whole forward and backward pass, and the thread
//! pool's work stealing balances the two, instead of both cores meeting at every kernel (a join, and a
//! sleep and a wake of the other thread, for each of several hundred parallel loops per update). A shard
//! draws its dropout masks from its own RNG, seeded from the run's, so results stay deterministic and do
//! not depend on the number of threads; the gradients equal the whole batch's up to rounding (tested).
//! Inside a shard, matrix products run on one thread ([`crate::ops::gemm::with_one_thread_products`]):
//! gemm split in two would pack its first operand once per half, on the same core.

mod index;
mod stacks;
mod sublayer;
#[cfg(test)]
mod tests;

use crate::data::batch::Batch;
use crate::model::Transformer;
use crate::ops::cpu::{contiguous_slice, simd, Real};
use crate::ops::gemm::with_one_thread_products as one_thread;
use crate::rng::Rng;
use crate::train::gradients::UpdateGradients;
use candle_core::{DType, Device, Result, Storage, Tensor, Var, WithDType};
use index::ModelIndex;
use rayon::prelude::*;
use stacks::{BatchIds, Sums};

/// Shards a batch runs in (see the module's documentation).
const SHARDS: usize = 2;

/// Forward and backward over `batches` by hand: the gradients (one per parameter, divided by the update's
/// target-token count) and the loss statistics. None where this step does not apply: the reference
/// path or the autograd step asked for, a device other than the CPU, a dtype other than f32/f64,
/// parameters that are not exactly the model's, or no batch.
pub fn accumulate(
    model: &Transformer,
    params: &[(String, Var)],
    batches: &[Batch],
    pad: u32,
    label_smoothing: f64,
    rng: &mut Rng,
) -> Result<Option<UpdateGradients>> {
    let Some((_, first)) = params.first() else { return Ok(None) };
    if batches.is_empty() {
        return Ok(None);
    }
    let dtype = first.dtype();
    if !super::hand_written_step(first.as_tensor())
        || params.iter().any(|(_, v)| v.dtype() != dtype || !v.device().is_cpu())
    {
        return Ok(None);
    }
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let Some(index) = ModelIndex::find(model.config(), &names) else { return Ok(None) };
    let tensors: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().contiguous()).collect::<Result<_>>()?;
    let sharded = super::sharded_step();
    let step = Step { model, index: &index, batches, pad, label_smoothing, sharded };
    // The whole step runs on a worker of the thread pool: its parallel loops then split work between the
    // pool's own threads, instead of each one handing work from this thread to the pool and waking it.
    rayon::scope(|_| match dtype {
        DType::F32 => step.run::<f32>(&tensors, rng).map(Some),
        DType::F64 => step.run::<f64>(&tensors, rng).map(Some),
        _ => Ok(None),
    })
}

/// g ← (g + s)·scale, or g·scale without `s`: the shards' gradients added and divided by the update's
/// token count in one pass.
fn sum_and_scale<T: Real>(g: &mut [T], s: Option<&[T]>, scale: T) {
    const ELEMENTS_PER_TASK: usize = 1 << 15;
    let tasks = g.par_chunks_mut(ELEMENTS_PER_TASK).enumerate();
    tasks.for_each(|(c, g)| match s {
        Some(s) => {
            let s = &s[c * ELEMENTS_PER_TASK..c * ELEMENTS_PER_TASK + g.len()];
            simd!(|| {
                for (g, &s) in g.iter_mut().zip(s) {
                    *g = (*g + s) * scale;
                }
            })
        }
        None => simd!(|| {
            for g in g.iter_mut() {
                *g *= scale;
            }
        }),
    });
}

/// One update's inputs.
struct Step<'a> {
    model: &'a Transformer,
    index: &'a ModelIndex,
    batches: &'a [Batch],
    pad: u32,
    label_smoothing: f64,
    /// Run each batch as [`SHARDS`] shards.
    sharded: bool,
}

impl Step<'_> {
    fn run<T: Real>(&self, tensors: &[Tensor], rng: &mut Rng) -> Result<UpdateGradients> {
        let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
        let params = guards
            .iter()
            .map(|(s, l)| match &**s {
                Storage::Cpu(c) => contiguous_slice::<T>(c, l, "training step"),
                _ => candle_core::bail!("training step: parameters must be on the CPU"),
            })
            .collect::<Result<Vec<&[T]>>>()?;
        let cfg = self.model.config();
        let ctx = sublayer::Ctx {
            params: &params,
            norm: cfg.norm,
            layer_norm_eps: cfg.layer_norm_eps,
            dropout: cfg.dropout,
            d_model: cfg.d_model,
        };
        let ix = self.index;
        let rows = |i: usize| params[i].len() / cfg.d_model.max(1);
        let vocab = rows(ix.src_embedding).min(rows(ix.tgt_embedding)).min(rows(ix.generator));
        let zeros = || -> Vec<Vec<T>> { params.iter().map(|p| vec![T::zero(); p.len()]).collect() };
        let mut grads = zeros();
        // The second shard's gradients, added into `grads` at the end.
        let mut second: Option<Vec<Vec<T>>> = None;
        let (mut sums, mut src_tokens) = (Sums::default(), 0);
        let loss = (self.pad, self.label_smoothing);
        for batch in self.batches {
            let ids = self.ids(batch, vocab)?;
            let pe = self.positions::<T>(ids.src_len.max(ids.tgt_len))?;
            if self.sharded && ids.batch >= SHARDS {
                let half = ids.batch.div_ceil(SHARDS);
                let (a, b) = (ids.rows(0..half), ids.rows(half..ids.batch));
                let (mut rng_a, mut rng_b) = (Rng::seed(rng.next_u64()), Rng::seed(rng.next_u64()));
                let grads_b = second.get_or_insert_with(&zeros);
                let (sa, sb) = rayon::join(
                    || one_thread(|| ctx.batch(&mut grads, ix, &a, &pe, cfg.heads, loss, &mut rng_a)),
                    || one_thread(|| ctx.batch(grads_b, ix, &b, &pe, cfg.heads, loss, &mut rng_b)),
                );
                sums += sa?;
                sums += sb?;
            } else {
                sums += ctx.batch(&mut grads, ix, &ids, &pe, cfg.heads, loss, rng)?;
            }
            src_tokens += batch.src_tokens;
        }
        drop(guards);
        let scale = T::from_f64(1.0 / sums.tokens.max(1) as f64);
        let grads = grads
            .into_iter()
            .enumerate()
            .zip(tensors)
            .map(|((i, mut g), t)| {
                sum_and_scale(&mut g, second.as_ref().map(|s| &s[i][..]), scale);
                Tensor::from_vec(g, t.shape(), &Device::Cpu).map(Some)
            })
            .collect::<Result<_>>()?;
        let Sums { loss_sum, nll_sum, tokens } = sums;
        Ok(UpdateGradients { grads, loss_sum, nll_sum, tokens, src_tokens })
    }

    /// The batch's ids and key-padding mask as flat vectors; an id outside the vocabulary is an error, as
    /// `index_select`'s.
    fn ids(&self, batch: &Batch, vocab: usize) -> Result<BatchIds> {
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<u32>();
        let (b, src_len) = batch.src.dims2()?;
        let (tgt_in, tgt_out) = (flat(&batch.tgt_in)?, flat(&batch.tgt_out)?);
        let src_mask = batch.src_mask.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if tgt_in.len() != tgt_out.len() || tgt_in.len() % b.max(1) != 0 || src_mask.len() != b * src_len {
            candle_core::bail!(
                "training step: batch shapes differ (src {:?}, src_mask {:?}, tgt_in {:?}, tgt_out {:?})",
                batch.src.dims(),
                batch.src_mask.dims(),
                batch.tgt_in.dims(),
                batch.tgt_out.dims()
            );
        }
        let tgt_len = tgt_in.len() / b.max(1);
        let ids = BatchIds { batch: b, src_len, tgt_len, src: flat(&batch.src)?, tgt_in, tgt_out, src_mask };
        if let Some(bad) = ids.src.iter().chain(&ids.tgt_in).find(|&&id| id as usize >= vocab) {
            candle_core::bail!("training step: token id {bad} outside the vocabulary of {vocab}");
        }
        crate::ops::cpu::check_targets("training step", &ids.tgt_out, self.pad, vocab)?;
        Ok(ids)
    }

    /// The first `len` rows of the positional-encoding table in `T`, (len, d_model) row-major.
    fn positions<T: WithDType>(&self, len: usize) -> Result<Vec<T>> {
        let table = self.model.positional_table();
        let max = table.dim(0)?;
        if len > max {
            candle_core::bail!("sequence of {len} positions exceeds model.max_positions {max}");
        }
        table.narrow(0, 0, len)?.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()
    }
}
