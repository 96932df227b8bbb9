//! The rendezvous: rank 0 hands a secret (NCCL's 128-byte unique id) to every other process over TCP, at
//! `MASTER_ADDR:MASTER_PORT`, as torchrun's static rendezvous does, and keeps one connection to each (the
//! CPU's [`super::tcp::TcpGroup`] sums over them; NCCL needs only the id).
//!
//! Rank 0 listens at `MASTER_PORT`: on the loopback interface when `MASTER_ADDR` is this machine's loopback
//! (`--nproc`), on every interface otherwise. The others connect to `MASTER_ADDR` (each address it resolves
//! to, IPv6 and IPv4), retrying until rank 0 is up. Every connection says which rank it is and how large it
//! believes the world to be, so that two processes started with different contracts are refused with an
//! error that names them; a connection that is not an nmt rank (a port scanner) is dropped.
//!
//! Written here because it is a hundred lines of `std::net` that NCCL leaves to its caller (NCCL only
//! makes the id); it runs on the CPU and is tested there with several threads on one machine.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The length of the secret: NCCL's `ncclUniqueId`.
pub const ID_LEN: usize = 128;
const MAGIC: &[u8; 8] = b"nmt-rdzv";

/// Where rank 0 listens for `MASTER_ADDR` = `addr`: its loopback address when `addr` is one (or
/// `localhost`), every interface otherwise (IPv6 and IPv4 where the system allows both).
fn listen(addr: &str, port: u16) -> std::io::Result<TcpListener> {
    let loopback =
        addr == "localhost" || (addr, port).to_socket_addrs().is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()));
    match loopback {
        true => TcpListener::bind(("127.0.0.1", port)),
        false => TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port))),
    }
}

/// Rank 0: serves `id` to the `size - 1` other ranks at `port`, each once; fails after `timeout` without
/// all of them. Returns the connections to ranks 1, 2, ... in rank order.
pub fn serve(addr: &str, port: u16, size: usize, id: &[u8; ID_LEN], timeout: Duration) -> Result<Vec<TcpStream>> {
    let listener =
        listen(addr, port).with_context(|| format!("rendezvous: rank 0 cannot listen on MASTER_PORT={port}"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut joined = vec![false; size];
    joined[0] = true;
    let mut streams: Vec<Option<TcpStream>> = (0..size).map(|_| None).collect();
    while joined.iter().any(|&j| !j) {
        let (mut stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (0..size).filter(|&r| !joined[r]).map(|r| r.to_string()).collect();
                    bail!(
                        "rendezvous: rank(s) {} did not connect to MASTER_PORT={port} within {:.1} s",
                        missing.join(", "),
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context("rendezvous: accepting a connection"),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut hello = [0u8; 24];
        if stream.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
            continue; // not an nmt rank: drop it and keep waiting
        }
        let rank = u64::from_le_bytes(hello[8..16].try_into().unwrap_or_default()) as usize;
        let their_size = u64::from_le_bytes(hello[16..24].try_into().unwrap_or_default()) as usize;
        if their_size != size {
            bail!("rendezvous: rank {rank} (from {peer}) has WORLD_SIZE={their_size}, rank 0 has WORLD_SIZE={size}");
        }
        if rank == 0 || rank >= size || joined[rank] {
            bail!("rendezvous: {peer} says it is rank {rank}, which is not a free rank of 1..{}", size - 1);
        }
        stream.write_all(id).with_context(|| format!("rendezvous: answering rank {rank} at {peer}"))?;
        joined[rank] = true;
        streams[rank] = Some(stream);
    }
    Ok(streams.into_iter().skip(1).flatten().collect())
}

/// Rank `rank` > 0: gets the secret from rank 0 at `addr:port`, retrying the connection until `timeout`;
/// returns it with the connection to rank 0.
pub fn join(addr: &str, port: u16, rank: usize, size: usize, timeout: Duration) -> Result<([u8; ID_LEN], TcpStream)> {
    let deadline = Instant::now() + timeout;
    let mut stream = 'connected: loop {
        let mut error = format!("MASTER_ADDR={addr} resolves to no address");
        match (addr, port).to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                        Ok(s) => break 'connected s,
                        Err(e) => error = format!("{a}: {e}"),
                    }
                }
            }
            Err(e) => error = format!("cannot resolve MASTER_ADDR={addr}: {e}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "rendezvous: rank {rank} could not reach rank 0 at MASTER_ADDR={addr} MASTER_PORT={port} within {:.1} s \
                 ({error})",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stream.set_read_timeout(Some(timeout))?;
    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(rank as u64).to_le_bytes());
    hello.extend_from_slice(&(size as u64).to_le_bytes());
    stream.write_all(&hello).context("rendezvous: writing to rank 0")?;
    let mut id = [0u8; ID_LEN];
    stream.read_exact(&mut id).with_context(|| {
        format!("rendezvous: rank 0 at {addr}:{port} refused rank {rank} or closed the connection (see its error)")
    })?;
    Ok((id, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn every_rank_gets_rank_0s_id() {
        let port = free_port();
        let mut id = [0u8; ID_LEN];
        for (i, b) in id.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let size = 4;
        // The others start first: they retry until rank 0 listens. They name it "localhost", which may
        // resolve to ::1 before 127.0.0.1, where rank 0 listens.
        let others: Vec<_> = (1..size)
            .map(|rank| std::thread::spawn(move || join("localhost", port, rank, size, Duration::from_secs(20))))
            .collect();
        // Something that is not an nmt rank connects too, and is dropped.
        let stray = std::thread::spawn(move || loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        });
        std::thread::sleep(Duration::from_millis(200));
        let streams = serve("localhost", port, size, &id, Duration::from_secs(20)).unwrap();
        assert_eq!(streams.len(), size - 1);
        stray.join().unwrap();
        for t in others {
            assert_eq!(t.join().unwrap().unwrap().0, id);
        }
    }

    #[test]
    fn a_different_world_size_is_refused_by_name() {
        let port = free_port();
        let other = std::thread::spawn(move || join("127.0.0.1", port, 1, 3, Duration::from_secs(20)));
        let err = serve("127.0.0.1", port, 2, &[1; ID_LEN], Duration::from_secs(20)).unwrap_err().to_string();
        assert!(err.contains("rank 1") && err.contains("WORLD_SIZE=3") && err.contains("WORLD_SIZE=2"), "{err}");
        let err = other.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("refused rank 1"), "{err}");
    }

    #[test]
    fn missing_ranks_and_an_absent_rank_0_time_out_with_names() {
        let port = free_port();
        let err = serve("127.0.0.1", port, 3, &[0; ID_LEN], Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("rank(s) 1, 2") && err.contains(&format!("MASTER_PORT={port}")), "{err}");
        let err = join("127.0.0.1", free_port(), 2, 3, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("rank 2 could not reach rank 0") && err.contains("MASTER_ADDR=127.0.0.1"), "{err}");
    }
}
