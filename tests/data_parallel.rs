//! Data-parallel training through the command line on the CPU: a world of one process, started by
//! `--nproc 1` or by torchrun's environment contract, trains exactly as a plain run (the all-reduce path
//! included), resumes, and every impossible request is a one-line error. Worlds larger than one need
//! GPUs and NCCL: their arithmetic is tested in `src/dist/tests.rs`, and `scripts/gpu-smoke.sh` runs the
//! NCCL path on a GPU.

mod common;
use common::Dir;

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

#[test]
fn impossible_worlds_are_one_line_errors() {
    let d = Dir::new();
    trained(&d);
    let train = ["train", "--config", "tiny.json", "--out", "run"];
    d.nmt(&[&train[..], &["--nproc", "2"]].concat(), None).fails_with(&["--nproc 2", "--device cuda"]);
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
    let two = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29999")];
    env(&two, &[]).fails_with(&["rank 0 of 2", "WORLD_SIZE=2", "--device cuda"]);
    env(&[("RANK", "3"), ("WORLD_SIZE", "2")], &[]).fails_with(&["RANK=3"]);
    env(&[("WORLD_SIZE", "2")], &[]).fails_with(&["WORLD_SIZE is set but RANK is not"]);
    env(&[("RANK", "0"), ("WORLD_SIZE", "1")], &["--nproc", "1"]).fails_with(&["--nproc", "RANK is already set"]);
    assert!(!d.path("run").exists(), "a refused world left a run directory behind");
    // A rank that fails stops the launcher with its rank, after the rank's own error.
    let out = d.nmt(&[&train[..], &["--nproc", "1", "--train-src", "missing.en"]].concat(), None);
    assert!(out.stderr.contains("missing.en"), "{}", out.stderr);
    out.fails_with(&["rank 0 failed"]);
}
