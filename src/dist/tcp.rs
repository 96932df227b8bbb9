//! [`Collective`] on the CPU: the sum goes through rank 0 over the rendezvous's TCP connections. Every
//! other rank sends its tensor to rank 0, which adds them in rank order (so every rank gets the same bits)
//! and sends the sum back.
//!
//! This is what lets a data-parallel run work without a GPU, with every process on its own machine or
//! core, and what the end-to-end tests of `--nproc` run in CI. It moves 2 × (N-1) copies of the gradients
//! through rank 0 per update, so it suits a few processes, not a cluster.
//!
//! It is written here because no crate does it without an MPI or Gloo install, and that is not available
//! where nmt builds. On GPUs, [`super::nccl`] sums with NCCL instead.

use super::{rendezvous, Collective, World, RENDEZVOUS_TIMEOUT};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;

pub struct TcpGroup {
    rank: usize,
    size: usize,
    /// Rank 0: the connections to ranks 1.. in rank order; any other rank: its connection to rank 0.
    peers: Vec<RefCell<TcpStream>>,
}

impl TcpGroup {
    /// Joins the world through the rendezvous at `MASTER_ADDR:MASTER_PORT`.
    pub fn join(world: &World) -> Result<Self> {
        let (addr, port) = world.master.as_ref().context("MASTER_ADDR and MASTER_PORT are not set")?;
        let peers = match world.rank {
            0 => rendezvous::serve(addr, *port, world.size, &[0; rendezvous::ID_LEN], RENDEZVOUS_TIMEOUT)?,
            rank => vec![rendezvous::join(addr, *port, rank, world.size, RENDEZVOUS_TIMEOUT)?.1],
        };
        for p in &peers {
            // A rank waits for rank 0's validation between two sums: no time-out on reads.
            p.set_read_timeout(None)?;
            p.set_nodelay(true)?;
        }
        Ok(Self { rank: world.rank, size: world.size, peers: peers.into_iter().map(RefCell::new).collect() })
    }

    fn sum(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape().clone();
        let x = x.flatten_all()?;
        let (dtype, len, device) = (x.dtype(), x.elem_count(), x.device().clone());
        if self.rank != 0 {
            let mut stream = self.peers[0].borrow_mut();
            Message::of(&x)?.write(&mut stream).context("sending to rank 0")?;
            let sum = Message::read(&mut stream, dtype, len, 0).context("receiving the sum from rank 0")?;
            return Ok(sum.tensor(&device)?.reshape(&shape)?);
        }
        let mut acc = x;
        for (i, peer) in self.peers.iter().enumerate() {
            let rank = i + 1;
            let mut stream = peer.borrow_mut();
            let theirs =
                Message::read(&mut stream, dtype, len, rank).with_context(|| format!("receiving from rank {rank}"))?;
            acc = (acc + theirs.tensor(&device)?)?;
        }
        let sum = Message::of(&acc)?;
        for (i, peer) in self.peers.iter().enumerate() {
            let mut stream = peer.borrow_mut();
            sum.write(&mut stream).with_context(|| format!("sending the sum to rank {}", i + 1))?;
        }
        Ok(acc.reshape(&shape)?)
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.sum(x).map_err(|e| candle_core::Error::Msg(format!("all-reduce over TCP: {e:#}")))
    }
}

/// One tensor on the wire: a dtype code, the element count, then the elements as they lie in memory
/// (every machine nmt runs on is little-endian; the ranks must agree on it).
enum Message {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
}

const DTYPES: [DType; 3] = [DType::F32, DType::F64, DType::U8];

impl Message {
    /// The elements of `x`, a 1-D tensor.
    fn of(x: &Tensor) -> Result<Self> {
        Ok(match x.dtype() {
            DType::F32 => Self::F32(x.to_vec1()?),
            DType::F64 => Self::F64(x.to_vec1()?),
            DType::U8 => Self::U8(x.to_vec1()?),
            dtype => anyhow::bail!("dtype {dtype:?} cannot be summed over TCP"),
        })
    }

    fn dtype_and_len(&self) -> (DType, usize) {
        match self {
            Self::F32(v) => (DType::F32, v.len()),
            Self::F64(v) => (DType::F64, v.len()),
            Self::U8(v) => (DType::U8, v.len()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::F32(v) => bytemuck::cast_slice(v),
            Self::F64(v) => bytemuck::cast_slice(v),
            Self::U8(v) => v,
        }
    }

    fn tensor(self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(v) => {
                let n = v.len();
                Tensor::from_vec(v, n, device)
            }
            Self::F64(v) => {
                let n = v.len();
                Tensor::from_vec(v, n, device)
            }
            Self::U8(v) => {
                let n = v.len();
                Tensor::from_vec(v, n, device)
            }
        }
    }

    fn write(&self, stream: &mut TcpStream) -> Result<()> {
        let (dtype, len) = self.dtype_and_len();
        let code = DTYPES.iter().position(|&d| d == dtype).unwrap_or(0) as u8;
        let mut head = [0u8; 9];
        head[0] = code;
        head[1..].copy_from_slice(&(len as u64).to_le_bytes());
        stream.write_all(&head)?;
        stream.write_all(self.bytes())?;
        stream.flush()?;
        Ok(())
    }

    /// The next tensor from `rank`, which must be at the same sum as this one: `dtype`, `len` elements.
    fn read(stream: &mut TcpStream, dtype: DType, len: usize, rank: usize) -> Result<Self> {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => anyhow::anyhow!("rank {rank} closed the connection (did it fail?)"),
            _ => e.into(),
        })?;
        let theirs = DTYPES.get(head[0] as usize).copied();
        let n = u64::from_le_bytes(head[1..9].try_into()?) as usize;
        if (theirs, n) != (Some(dtype), len) {
            anyhow::bail!(
                "rank {rank} is out of step: it has {n} {theirs:?} elements where this rank has {len} {dtype:?}"
            );
        }
        let mut out = match dtype {
            DType::F32 => Self::F32(vec![0.0; len]),
            DType::F64 => Self::F64(vec![0.0; len]),
            _ => Self::U8(vec![0; len]),
        };
        let bytes: &mut [u8] = match &mut out {
            Self::F32(v) => bytemuck::cast_slice_mut(v),
            Self::F64(v) => bytemuck::cast_slice_mut(v),
            Self::U8(v) => v,
        };
        stream.read_exact(bytes)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Three processes (threads here) sum f32, f64 and u8 tensors over TCP: every rank gets the sum, and
    /// a rank out of step is an error that names it.
    #[test]
    fn every_rank_gets_the_sum_and_a_rank_out_of_step_is_named() {
        let port = TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
        let size = 3;
        let results: Vec<Result<Vec<Vec<f64>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..size)
                .map(|rank| {
                    s.spawn(move || {
                        let world = World { rank, size, local_rank: rank, master: Some(("127.0.0.1".into(), port)) };
                        let g = TcpGroup::join(&world)?;
                        let r = rank as f32;
                        let a = Tensor::new(&[[1.0f32 + r, -2.5 * r], [0.25, r * r]], &Device::Cpu)?;
                        let b = Tensor::new(&[1e-3f64 * (rank as f64 + 1.0)], &Device::Cpu)?;
                        let c = Tensor::new(&[rank as u8, 7], &Device::Cpu)?;
                        let a = g.all_reduce_sum(&a)?;
                        assert_eq!(a.dims(), &[2, 2]);
                        let b = g.all_reduce_sum(&b)?;
                        let c = g.all_reduce_sum(&c)?.to_dtype(DType::F64)?;
                        // Out of step: rank 2 sends 3 elements where the others send 2.
                        let n = if rank == 2 { 3 } else { 2 };
                        let bad = g.all_reduce_sum(&Tensor::zeros(n, DType::F32, &Device::Cpu)?);
                        if rank == 0 {
                            let err = format!("{}", bad.unwrap_err());
                            assert!(err.contains("rank 2 is out of step"), "{err}");
                        }
                        let f = |t: Tensor| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
                        Ok(vec![f(a)?, f(b)?, f(c)?])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let expected = vec![vec![6.0, -7.5, 0.75, 5.0], vec![6e-3], vec![3.0, 21.0]];
        for (rank, r) in results.into_iter().enumerate() {
            let got = r.unwrap_or_else(|e| panic!("rank {rank}: {e:#}"));
            for (g, e) in got.iter().zip(&expected) {
                assert!(g.iter().zip(e).all(|(x, y)| (x - y).abs() < 1e-12), "rank {rank}: {got:?}");
            }
        }
    }
}
