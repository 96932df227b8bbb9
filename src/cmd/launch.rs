//! `nmt train --nproc N`: starts N training processes on this machine, the same command without
//! `--nproc`, each with torchrun's environment contract (`RANK` = `LOCAL_RANK` = i, `WORLD_SIZE` = N,
//! `MASTER_ADDR` = 127.0.0.1, `MASTER_PORT` = a free port); waits for them; and when one fails, stops the
//! others and fails with its rank. Ctrl-C reaches every process of the terminal: each rank finishes its
//! update and rank 0 writes a checkpoint. A SIGTERM sent to this process alone is passed on to the ranks.
//!
//! On the CPU the cores are shared out: each rank gets `--threads` (cores / N unless given).

use crate::cli::DeviceArg;
use crate::dist::ENV;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn run(nproc: usize, device: DeviceArg) -> Result<()> {
    if nproc == 0 {
        bail!("--nproc 0: a training run needs at least one process");
    }
    if let Some(var) = ENV[..2].iter().find(|v| std::env::var_os(v).is_some()) {
        bail!("--nproc: {var} is already set: start the ranks either with --nproc or with a launcher's environment");
    }
    if nproc > 1 && device == DeviceArg::Cuda && !cfg!(feature = "nccl") {
        bail!("--nproc {nproc}: data-parallel training needs NCCL, and this nmt was built without it (rebuild with `--features nccl`)");
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("--nproc: cannot find a free port for the rendezvous")?
        .port();
    let exe = std::env::current_exe().context("--nproc: cannot find the nmt executable")?;
    let mut args = without_nproc(std::env::args_os().skip(1));
    if device == DeviceArg::Cpu
        && !args.iter().any(|a| a == "--threads" || a.to_string_lossy().starts_with("--threads="))
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        args.extend(["--threads".into(), (cores / nproc).max(1).to_string().into()]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        crate::log!("warning: cannot catch signals ({e}); a SIGTERM to this process will not reach the ranks");
    }
    crate::log!("starting {nproc} training process(es), ranks 0 to {}; rendezvous at 127.0.0.1:{port}", nproc - 1);
    let mut ranks: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut command = Command::new(&exe);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to the child when this
        // process dies, so that a killed launcher leaves no rank training on its own.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => ranks.push(c),
            Err(e) => {
                stop_all(&mut ranks);
                return Err(e).with_context(|| format!("--nproc: cannot start rank {rank} ({})", exe.display()));
            }
        }
    }
    wait_all(&mut ranks, &stop)
}

/// Waits until every rank has exited; the first failure stops the others and is the error.
fn wait_all(ranks: &mut [Child], stop: &AtomicBool) -> Result<()> {
    let mut done = vec![false; ranks.len()];
    let mut forwarded = false;
    while done.iter().any(|d| !d) {
        if stop.load(Ordering::SeqCst) && !forwarded {
            forwarded = true;
            for (child, _) in ranks.iter().zip(&done).filter(|(_, d)| !**d) {
                terminate(child);
            }
        }
        for rank in 0..ranks.len() {
            if done[rank] {
                continue;
            }
            let exited = match ranks[rank].try_wait() {
                Ok(exited) => exited,
                Err(e) => {
                    stop_all(ranks);
                    return Err(e).with_context(|| format!("waiting for rank {rank}"));
                }
            };
            if let Some(status) = exited {
                done[rank] = true;
                if !status.success() {
                    stop_all(ranks);
                    bail!("rank {rank} failed ({status}); the other ranks were stopped");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// SIGTERM: the rank finishes its update, checkpoints (rank 0) and stops.
fn terminate(child: &Child) {
    // SAFETY: kill(2) on a child's pid with a valid signal number.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// Kills the ranks still running (they wait on the failed one and cannot finish) and reaps them.
fn stop_all(ranks: &mut [Child]) {
    for child in ranks.iter_mut() {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command line without `--nproc N` / `--nproc=N`.
fn without_nproc(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if arg == "--nproc" {
            skip_value = true;
            continue;
        }
        if arg.to_str().is_some_and(|a| a.starts_with("--nproc=")) {
            continue;
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_get_the_command_without_nproc() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let got = without_nproc(
            args(&["train", "--nproc", "4", "--config", "c.json", "--nproc=2", "--device", "cuda"]).into_iter(),
        );
        assert_eq!(got, args(&["train", "--config", "c.json", "--device", "cuda"]));
    }
}
