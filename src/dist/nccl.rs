//! [`Collective`] on NVIDIA GPUs: NCCL's all-reduce through cudarc (`--features nccl`), on the stream
//! candle's CUDA device runs its kernels on, so that the sum is ordered after the backward pass that
//! made the gradients and before the Adam step that reads them, with no extra synchronisation.
//!
//! Joining: rank 0 makes NCCL's unique id and hands it to the other ranks through the [`rendezvous`]
//! (`MASTER_ADDR:MASTER_PORT`); every rank then opens its communicator on `cuda:LOCAL_RANK`.

use super::{rendezvous, Collective, World, RENDEZVOUS_TIMEOUT};
use anyhow::{anyhow, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

pub struct Nccl {
    comm: Comm,
}

impl Nccl {
    /// Joins the world on `device` (a CUDA device): the rendezvous, then NCCL's communicator.
    pub fn join(world: &World, device: &Device) -> Result<Self> {
        let cuda = device.as_cuda_device()?;
        let id = match world.rank {
            0 => {
                let id = Id::new().map_err(|e| anyhow!("NCCL cannot make a unique id: {e:?}"))?;
                if let Some((addr, port)) = &world.master {
                    let bytes = id.internal().map(|c| c as u8);
                    rendezvous::serve(addr, *port, world.size, &bytes, RENDEZVOUS_TIMEOUT)?;
                }
                id
            }
            rank => {
                let (addr, port) = world.master.as_ref().context("MASTER_ADDR and MASTER_PORT are not set")?;
                let (bytes, _) = rendezvous::join(addr, *port, rank, world.size, RENDEZVOUS_TIMEOUT)?;
                Id::uninit(bytes.map(|b| b as std::ffi::c_char))
            }
        };
        let comm = Comm::from_rank(cuda.cuda_stream(), world.rank, world.size, id).map_err(|e| {
            anyhow!(
                "NCCL: rank {} of {} cannot open its communicator on cuda:{}: {e:?}",
                world.rank,
                world.size,
                world.local_rank
            )
        })?;
        Ok(Self { comm })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_sum(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(&AllReduceSum(&self.comm))
    }
}

/// NCCL's all-reduce (sum) as a candle op: a new tensor holding the sum.
struct AllReduceSum<'a>(&'a Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL's all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) =
            l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("all-reduce: not contiguous".into()))?;
        let device = s.device().clone();
        macro_rules! reduce {
            ($t:ty) => {{
                let src = s.as_cuda_slice::<$t>()?.slice(start..end);
                // SAFETY: every element is written by the all-reduce before anything reads it.
                let mut dst = unsafe { device.alloc::<$t>(end - start) }?;
                self.0
                    .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
                CudaStorage::wrap_cuda_slice(dst, device)
            }};
        }
        let out = match s.dtype() {
            DType::F32 => reduce!(f32),
            DType::F64 => reduce!(f64),
            DType::U8 => reduce!(u8),
            dtype => candle_core::bail!("NCCL all-reduce: dtype {dtype:?} is not supported"),
        };
        Ok((out, l.shape().clone()))
    }
}
