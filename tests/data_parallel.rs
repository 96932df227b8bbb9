//! Data-parallel training through the command line on the CPU:
//! - a world of one process, started by `--nproc 1` or by torchrun's environment contract, trains exactly
//!   as a plain run (the all-reduce path included) and resumes;
//! - two processes (`--nproc 2`, summing over TCP) train like one process on the same batches, with
//!   only rank 0 writing, and stop together with a checkpoint on SIGTERM;
//! - every impossible request is a one-line error, and a failing rank stops the others.
//!
//! NCCL itself needs a GPU: `scripts/gpu-smoke.sh` runs it.

mod common;
use common::Dir;
use std::process::Stdio;

fn trained(d: &Dir) {
    d.demo("train", 300);
    d.demo("valid", 20);
    d.tiny_config(6);
}

fn read(d: &Dir, path: &str) -> Vec<u8> {
    std::fs::read(d.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (step, loss) of every train line and (step, valid loss) of every valid line.
fn losses(d: &Dir, run: &str) -> Vec<(u64, f64)> {
    let text = String::from_utf8(read(d, &format!("{run}/metrics.jsonl"))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().or(v["valid_loss"].as_f64()).unwrap()))
        .collect()
}

#[test]
fn a_world_of_one_trains_and_resumes_exactly_as_one_process() {
    let d = Dir::new();
    trained(&d);
    let base = ["train", "--config", "tiny.json"];
    d.nmt(&[&base[..], &["--out", "plain"]].concat(), None).ok();
    let launched = d.nmt(&[&base[..], &["--out", "launched", "--nproc", "1"]].concat(), None).ok();
    assert!(launched.stderr.contains("starting 1 training process"), "{}", launched.stderr);
    let mut by_env = d.command(&[&base[..], &["--out", "env"]].concat());
    by_env.env("RANK", "0").env("WORLD_SIZE", "1");
    d.run(by_env, None).ok();
    // Four steps, then resumed to six through the launcher.
    d.nmt(&[&base[..], &["--out", "resumed", "--nproc", "1", "--max-steps", "4"]].concat(), None).ok();
    let out = d.nmt(&["train", "--out", "resumed", "--resume", "--nproc", "1", "--max-steps", "6"], None).ok();
    assert!(out.stderr.contains("resuming from step 4"), "{}", out.stderr);
    let weights = read(&d, "plain/checkpoints/ckpt-00000006.safetensors");
    assert!(!losses(&d, "plain").is_empty());
    for run in ["launched", "env", "resumed"] {
        assert!(read(&d, &format!("{run}/checkpoints/ckpt-00000006.safetensors")) == weights, "{run}: weights differ");
        assert_eq!(losses(&d, run), losses(&d, "plain"), "{run}: losses differ");
        assert_eq!(read(&d, &format!("{run}/tokenizer.json")), read(&d, "plain/tokenizer.json"), "{run}");
    }
}

/// The tiny config without dropout (so that one and two processes compute the same gradients), with
/// `replace` applied to it.
fn without_dropout(d: &Dir, max_steps: usize, replace: &[(&str, &str)]) {
    let mut cfg =
        common::tiny_config_json(max_steps).replace("\"max_positions\": 96", "\"max_positions\": 96, \"dropout\": 0.0");
    for (from, to) in replace {
        assert!(cfg.contains(from), "{from}");
        cfg = cfg.replace(from, to);
    }
    d.write("nodrop.json", cfg);
}

fn weights(d: &Dir, path: &str) -> Vec<(String, Vec<f32>)> {
    let bytes = read(d, path);
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn two_processes_train_like_one_on_the_same_batches() {
    let d = Dir::new();
    trained(&d);
    without_dropout(&d, 6, &[]);
    d.nmt(&["train", "--config", "nodrop.json", "--out", "one", "--threads", "1"], None).ok();
    let out = d.nmt(&["train", "--config", "nodrop.json", "--out", "two", "--nproc", "2"], None).ok();
    assert!(out.stderr.contains("starting 2 training process"), "{}", out.stderr);
    assert!(out.stderr.contains("data-parallel: 2 processes"), "{}", out.stderr);
    // Only rank 0 logs: one summary line.
    assert_eq!(out.stderr.matches("done: 6 steps").count(), 1, "{}", out.stderr);
    same_losses(&d, "one", "two");
    same_weights(&d, "one/checkpoints/ckpt-00000006.safetensors", "two/checkpoints/ckpt-00000006.safetensors");
}

/// A resumed run's weights, Adam moments and position reach rank 1 from rank 0's checkpoint: two
/// processes continue it as one process does.
#[test]
fn two_processes_resume_as_one_process_does() {
    let d = Dir::new();
    trained(&d);
    without_dropout(&d, 4, &[]);
    d.nmt(&["train", "--config", "nodrop.json", "--out", "alone", "--threads", "1"], None).ok();
    for file in walk(&d.path("alone")) {
        let to = d.path("together").join(file.strip_prefix(d.path("alone")).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, to).unwrap();
    }
    let more = ["--resume", "--max-steps", "8"];
    d.nmt(&[&["train", "--out", "alone", "--threads", "1"][..], &more].concat(), None).ok();
    let out = d.nmt(&[&["train", "--out", "together", "--nproc", "2"][..], &more].concat(), None).ok();
    assert!(out.stderr.contains("resuming from step 4"), "{}", out.stderr);
    same_losses(&d, "alone", "together");
    same_weights(&d, "alone/checkpoints/ckpt-00000008.safetensors", "together/checkpoints/ckpt-00000008.safetensors");
}

/// The same metrics lines (rank 0 alone writes them), with losses within 1e-4 relative.
fn same_losses(d: &Dir, alone: &str, together: &str) {
    let (one, two) = (losses(d, alone), losses(d, together));
    assert_eq!(one.len(), two.len(), "{together}: not one metrics line per line of {alone}");
    for ((s1, l1), (s2, l2)) in one.iter().zip(&two) {
        assert_eq!(s1, s2);
        assert!((l1 - l2).abs() <= 1e-4 * l1.abs(), "step {s1}: loss {l1} alone, {l2} on two processes");
    }
}

/// The files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The same weights within 1e-5, but for the key projection's bias: it adds the same q · b_K to every score
/// of a query, which the softmax cancels, so its exact gradient is zero and it holds only rounding noise,
/// which Adam scales up to steps of the full learning rate, different in each summation order.
fn same_weights(d: &Dir, a: &str, b: &str) {
    let (a, b) = (weights(d, a), weights(d, b));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if name.ends_with("w_k.bias") {
            continue;
        }
        let diff = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{name}: weights differ by {diff} between one and two processes");
    }
}

/// Ranks started by hand (the environment contract), each in its own directory: a rank 0 that fails tells
/// rank 1 why, and a rank 1 whose files differ from rank 0's fails both, with nothing left waiting.
#[test]
fn a_failing_rank_fails_every_rank_with_its_reason() {
    let (a, b) = (Dir::new(), Dir::new());
    trained(&a);
    b.demo("train", 200); // other files at the same paths
    let pair = |a_args: &[&str]| {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port().to_string();
        let start = |d: &Dir, rank: &str, args: &[&str]| {
            let mut cmd = d.command(args);
            cmd.env("RANK", rank).env("WORLD_SIZE", "2").env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", &port);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        };
        let r0 = start(&a, "0", a_args);
        let r1 = start(&b, "1", &["train", "--out", "run"]);
        let text = |c: std::process::Child| {
            let out = c.wait_with_output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        (text(r0), text(r1))
    };
    let ((c0, e0), (c1, e1)) = pair(&["train", "--config", "tiny.json", "--out", "run", "--train-src", "missing.en"]);
    assert!(c0 != Some(0) && e0.contains("missing.en"), "{e0}");
    assert!(c1 != Some(0) && e1.contains("rank 1 of 2: rank 0 failed") && e1.contains("missing.en"), "{e1}");
    let ((c0, e0), (c1, e1)) = pair(&["train", "--config", "tiny.json", "--out", "run"]);
    assert!(c1 != Some(0) && e1.contains("the training data differs from rank 0's (200 pairs here, 300 there"), "{e1}");
    assert!(c0 != Some(0) && e0.contains("rank 0 of 2: 1 other process(es) failed while setting up"), "{e0}");
}

#[test]
fn sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint() {
    let d = Dir::new();
    trained(&d);
    let every = [("\"log_every\": 2", "\"log_every\": 1"), ("\"valid_every\": 3", "\"valid_every\": 0")];
    without_dropout(&d, 100_000, &[every[0], every[1], ("\"checkpoint_every\": 3", "\"checkpoint_every\": 4")]);
    let mut cmd = d.command(&["train", "--config", "nodrop.json", "--out", "run", "--nproc", "2"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let first = d.path("run/checkpoints/ckpt-00000004.state.json");
    let start = std::time::Instant::now();
    while !first.exists() {
        assert!(child.try_wait().unwrap().is_none(), "training ended before its checkpoint at step 4");
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "no checkpoint at step 4");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let ok = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let step: usize =
        stderr.split("checkpoint written at step ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    assert!(d.path(&format!("run/checkpoints/ckpt-{step:08}.state.json")).is_file(), "no checkpoint at {step}");
    let next = (step + 2).to_string();
    let out = d.nmt(&["train", "--out", "run", "--resume", "--nproc", "2", "--max-steps", &next], None).ok();
    assert!(out.stderr.contains(&format!("resuming from step {step}")), "{}", out.stderr);
    assert!(d.path(&format!("run/checkpoints/ckpt-{:08}.state.json", step + 2)).is_file());
}

#[test]
fn impossible_worlds_are_one_line_errors() {
    let d = Dir::new();
    trained(&d);
    let train = ["train", "--config", "tiny.json", "--out", "run"];
    d.nmt(&[&train[..], &["--nproc", "0"]].concat(), None).fails_with(&["--nproc 0"]);
    let nccl = if cfg!(feature = "nccl") { "GPU" } else { "--features nccl" };
    let cuda = if cfg!(feature = "cuda") { nccl } else { "--features" };
    d.nmt(&[&train[..], &["--nproc", "2", "--device", "cuda"]].concat(), None).fails_with(&[cuda]);
    let env = |vars: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = d.command(&[&train[..], extra].concat());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        d.run(cmd, None)
    };
    env(&[("RANK", "3"), ("WORLD_SIZE", "2")], &[]).fails_with(&["RANK=3"]);
    env(&[("WORLD_SIZE", "2")], &[]).fails_with(&["WORLD_SIZE is set but RANK is not"]);
    env(&[("RANK", "0"), ("WORLD_SIZE", "1")], &["--nproc", "1"]).fails_with(&["--nproc", "RANK is already set"]);
    assert!(!d.path("run").exists(), "a refused world left a run directory behind");
    // A rank that fails stops the launcher with its rank, after the rank's own error.
    let out = d.nmt(&[&train[..], &["--nproc", "1", "--train-src", "missing.en"]].concat(), None);
    assert!(out.stderr.contains("missing.en"), "{}", out.stderr);
    out.fails_with(&["rank 0 failed"]);
    // With two ranks, rank 1 (waiting for rank 0's config) fails too, and nothing hangs.
    let out = d.nmt(&[&train[..], &["--nproc", "2", "--train-src", "missing.en"]].concat(), None);
    assert!(out.stderr.contains("missing.en"), "{}", out.stderr);
    out.fails_with(&["failed", "the other ranks were stopped"]);
}
