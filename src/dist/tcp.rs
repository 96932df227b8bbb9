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
use std::io::{BufReader, BufWriter, Read, Write};
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
            0 => rendezvous::serve(*port, world.size, &[0; rendezvous::ID_LEN], RENDEZVOUS_TIMEOUT)?,
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
        let mine = Message::of(&x)?;
        if self.rank != 0 {
            let mut stream = self.peers[0].borrow_mut();
            mine.write(&mut stream).context("sending to rank 0")?;
            let sum = Message::read(&mut stream).context("receiving the sum from rank 0 (did it fail?)")?;
            sum.check(&mine, 0)?;
            return Ok(sum.tensor(x.device())?.reshape(&shape)?);
        }
        let mut acc = x.clone();
        for (i, peer) in self.peers.iter().enumerate() {
            let rank = i + 1;
            let mut stream = peer.borrow_mut();
            let theirs =
                Message::read(&mut stream).with_context(|| format!("receiving from rank {rank} (did it fail?)"))?;
            theirs.check(&mine, rank)?;
            acc = (acc + theirs.tensor(x.device())?)?;
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

/// One tensor on the wire: dtype, element count, then the little-endian elements.
struct Message {
    dtype: DType,
    len: usize,
    bytes: Vec<u8>,
}

const DTYPES: [DType; 3] = [DType::F32, DType::F64, DType::U8];

impl Message {
    fn of(x: &Tensor) -> Result<Self> {
        let x = x.flatten_all()?;
        let bytes = match x.dtype() {
            DType::F32 => x.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F64 => x.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::U8 => x.to_vec1::<u8>()?,
            dtype => anyhow::bail!("dtype {dtype:?} cannot be summed over TCP"),
        };
        Ok(Self { dtype: x.dtype(), len: x.elem_count(), bytes })
    }

    fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self.dtype {
            DType::F32 => {
                let v: Vec<f32> =
                    self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_vec(v, self.len, device)
            }
            DType::F64 => {
                let v: Vec<f64> =
                    self.bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
                Tensor::from_vec(v, self.len, device)
            }
            _ => Tensor::from_slice(&self.bytes, self.len, device),
        }
    }

    /// Both ranks are at the same sum: the same dtype and element count.
    fn check(&self, mine: &Message, rank: usize) -> Result<()> {
        if (self.dtype, self.len) != (mine.dtype, mine.len) {
            anyhow::bail!(
                "rank {rank} is out of step: it has {} {:?} elements where this rank has {} {:?}",
                self.len,
                self.dtype,
                mine.len,
                mine.dtype
            );
        }
        Ok(())
    }

    fn write(&self, stream: &mut TcpStream) -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, stream);
        let code = DTYPES.iter().position(|&d| d == self.dtype).unwrap_or(0) as u8;
        w.write_all(&[code])?;
        w.write_all(&(self.len as u64).to_le_bytes())?;
        w.write_all(&self.bytes)?;
        w.flush()?;
        Ok(())
    }

    fn read(stream: &mut TcpStream) -> Result<Self> {
        let mut r = BufReader::with_capacity(1 << 20, stream);
        let mut head = [0u8; 9];
        r.read_exact(&mut head)?;
        let dtype = *DTYPES.get(head[0] as usize).context("an unknown dtype code")?;
        let len = u64::from_le_bytes(head[1..9].try_into()?) as usize;
        let mut bytes = vec![0u8; len * dtype.size_in_bytes()];
        r.read_exact(&mut bytes)?;
        Ok(Self { dtype, len, bytes })
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
