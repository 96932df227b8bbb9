//! Training you can trust: exact resume after SIGKILL, a clean stop on SIGINT, checkpoints that survive
//! a kill in the middle of saving, pruning, the best checkpoint, averaging.

mod common;
use common::{tiny_config_json, Dir};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A config whose steps take long enough to be interrupted, with a loss line every step.
fn config(d: &Dir, name: &str, extra_train: &str) {
    let cfg = tiny_config_json(100_000)
        .replace("\"d_model\": 16, \"d_ff\": 32", "\"d_model\": 32, \"d_ff\": 64")
        .replace("\"log_every\": 2", "\"log_every\": 1")
        .replace("\"valid_every\": 3", "\"valid_every\": 0")
        .replace("\"checkpoint_every\": 3", &format!("\"checkpoint_every\": 4{extra_train}"));
    d.write(name, cfg);
}

fn spawn(d: &Dir, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nmt"))
        .args(args)
        .current_dir(d.tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "training ended before {} appeared", path.display());
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {}", path.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

/// (step, loss, nll) of every train line.
fn losses(d: &Dir, run: &str) -> Vec<(u64, f64, f64)> {
    let text = std::fs::read_to_string(d.path(&format!("{run}/metrics.jsonl"))).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["nll"].as_f64().unwrap()))
        .collect()
}

#[test]
fn resume_after_sigkill_reproduces_the_uninterrupted_run_bit_for_bit() {
    let d = Dir::new();
    d.demo("train", 300);
    d.demo("valid", 5);
    config(&d, "c.json", "");
    let total = "40";
    d.nmt(&["train", "--config", "c.json", "--out", "straight", "--max-steps", total], None).ok();
    let mut child = spawn(&d, &["train", "--config", "c.json", "--out", "killed"]);
    wait_for(&d.path("killed/checkpoints/ckpt-00000008.state.json"), &mut child);
    signal(&child, "-KILL");
    child.wait().unwrap();
    let resumed = d.nmt(&["train", "--out", "killed", "--resume", "--max-steps", total], None).ok();
    let from: u64 =
        resumed.stderr.split("resuming from step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((8..40).contains(&from), "resumed from step {from}: the kill came too late to test anything");
    let (a, b) = (losses(&d, "straight"), losses(&d, "killed"));
    assert_eq!(a.len(), 40);
    assert_eq!(a, b, "losses after resuming from step {from} differ from the uninterrupted run");
    let wa = std::fs::read(d.path("straight/checkpoints/ckpt-00000040.safetensors")).unwrap();
    let wb = std::fs::read(d.path("killed/checkpoints/ckpt-00000040.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
}

#[test]
fn sigint_and_sigterm_checkpoint_and_exit_zero() {
    for sig in ["-INT", "-TERM"] {
        let d = Dir::new();
        d.demo("train", 300);
        d.demo("valid", 5);
        config(&d, "c.json", "");
        let mut child = spawn(&d, &["train", "--config", "c.json", "--out", "run"]);
        wait_for(&d.path("run/checkpoints/ckpt-00000004.state.json"), &mut child);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{sig}: {stderr}");
        assert!(stderr.contains("interrupted") && stderr.contains("--resume"), "{sig}: {stderr}");
        let step: usize =
            stderr.split("checkpoint written at step ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
        assert!(
            d.path(&format!("run/checkpoints/ckpt-{step:08}.state.json")).is_file(),
            "{sig}: no checkpoint at {step}"
        );
        let next = (step + 2).to_string();
        let out = d.nmt(&["train", "--out", "run", "--resume", "--max-steps", &next], None).ok();
        assert!(out.stderr.contains(&format!("resuming from step {step}")), "{}", out.stderr);
    }
}

#[test]
fn a_kill_at_any_moment_leaves_a_loadable_latest_checkpoint() {
    let d = Dir::new();
    d.demo("train", 300);
    d.demo("valid", 5);
    config(&d, "c.json", ", \"keep_last\": 2");
    let cfg = std::fs::read_to_string(d.path("c.json"))
        .unwrap()
        .replace("\"checkpoint_every\": 4", "\"checkpoint_every\": 1");
    d.write("c.json", cfg);
    // Even rounds kill at fixed delays, odd rounds as soon as a save is seen under way.
    let mut kills_during_save = 0;
    for (round, delay_ms) in [3u64, 17, 29, 41, 53, 67, 79, 97].into_iter().enumerate() {
        let args: Vec<String> = if round == 0 {
            ["train", "--config", "c.json", "--out", "run"].map(String::from).to_vec()
        } else {
            ["train", "--out", "run", "--resume", "--max-steps", "100000"].map(String::from).to_vec()
        };
        let mut child = spawn(&d, &args.iter().map(String::as_str).collect::<Vec<_>>());
        if round == 0 {
            wait_for(&d.path("run/checkpoints/ckpt-00000001.state.json"), &mut child);
        }
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(delay_ms));
            signal(&child, "-KILL");
        } else {
            kill_once_a_save_is_under_way(&d, &mut child);
        }
        child.wait().unwrap();
        // Whatever was being written, the newest complete checkpoint loads.
        d.nmt(&["translate", "--model", "run", "--beam", "1", "The dog sees the cat."], None).ok();
        if !leftovers(&d).is_empty() {
            kills_during_save += 1;
        }
    }
    eprintln!("{kills_during_save} of 8 kills landed in the middle of a save");
    assert!(kills_during_save > 0, "no kill landed in the middle of a save: the test checked nothing");
    let steps: Vec<_> = names(&d).into_iter().filter(|n| n.ends_with(".state.json")).collect();
    assert!(steps.len() <= 3, "keep_last 2 (plus one being written) exceeded: {steps:?}");
    // Resuming removes what the interrupted saves left behind.
    let last: usize = steps.iter().filter_map(|n| n[5..13].parse().ok()).max().unwrap();
    d.nmt(&["train", "--out", "run", "--resume", "--max-steps", &(last + 1).to_string()], None).ok();
    assert_eq!(leftovers(&d), Vec::<String>::new());
}

/// Polls the checkpoint directory and sends SIGKILL as soon as a save's traces appear that were not there
/// before (a temporary file, or weights without a state file).
fn kill_once_a_save_is_under_way(d: &Dir, child: &mut Child) {
    let before = leftovers(d);
    let start = Instant::now();
    loop {
        if leftovers(d).iter().any(|n| !before.contains(n)) {
            child.kill().unwrap();
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "training ended before a save was seen");
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for a save");
    }
}

fn names(d: &Dir) -> Vec<String> {
    std::fs::read_dir(d.path("run/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Temporary files, and files of a step without a state file: the traces of a save cut short.
fn leftovers(d: &Dir) -> Vec<String> {
    let all = names(d);
    let complete = |n: &str| all.contains(&format!("{}.state.json", &n[..13]));
    all.iter().filter(|n| n.ends_with(".tmp") || (n.starts_with("ckpt-") && !complete(n))).cloned().collect()
}

#[test]
fn keep_last_best_checkpoint_and_average() {
    let d = Dir::new();
    d.demo("train", 300);
    d.demo("valid", 5);
    let cfg = tiny_config_json(8)
        .replace("\"checkpoint_every\": 3", "\"checkpoint_every\": 1, \"keep_last\": 3")
        .replace("\"valid_every\": 3", "\"valid_every\": 2");
    d.write("c.json", cfg);
    d.nmt(&["train", "--config", "c.json", "--out", "run"], None).ok();
    let mut names: Vec<String> = std::fs::read_dir(d.path("run/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected_steps = ["ckpt-00000006", "ckpt-00000007", "ckpt-00000008"];
    for s in expected_steps {
        for suffix in [".safetensors", ".optim.safetensors", ".state.json"] {
            assert!(names.contains(&format!("{s}{suffix}")), "{s}{suffix} missing from {names:?}");
        }
    }
    assert!(!names.iter().any(|n| n.starts_with("ckpt-00000005")), "{names:?}");
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("run/checkpoints/best.json")).unwrap()).unwrap();
    let best_weights = format!("best-{:08}.safetensors", best["step"].as_u64().unwrap());
    assert_eq!(best["weights"], best_weights.as_str(), "{best}");
    let best_files: Vec<_> = names.iter().filter(|n| n.starts_with("best")).collect();
    assert_eq!(best_files, [&best_weights, &"best.json".to_string()], "only the best weights and best.json");
    let metrics = std::fs::read_to_string(d.path("run/metrics.jsonl")).unwrap();
    let valid: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "valid")
        .map(|v| (v["step"].as_u64().unwrap(), v["valid_loss"].as_f64().unwrap()))
        .collect();
    let lowest = valid.iter().cloned().fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    assert_eq!(best["step"].as_u64().unwrap(), lowest.0, "best.json should name the lowest valid loss: {valid:?}");
    d.nmt(&["translate", "--model", "run", "--checkpoint", "best", "A dog."], None).ok();
    let path = format!("run/checkpoints/{best_weights}");
    d.nmt(&["translate", "--model", "run", "--checkpoint", &path, "A dog."], None).ok();
    d.nmt(&["average", "--model", "run", "--last", "3"], None).ok();
    let avg = d.path("run/checkpoints/average-last3.safetensors");
    assert!(avg.is_file());
    d.nmt(&["translate", "--model", "run", "--checkpoint", avg.to_str().unwrap(), "A dog."], None).ok();
    d.nmt(&["average", "--model", "run", "--last", "4"], None).fails_with(&["holds 3 checkpoint(s)", "--last 4"]);
    // The average of one checkpoint is that checkpoint.
    d.nmt(&["average", "--model", "run", "--last", "1", "--output", "one.safetensors"], None).ok();
    let a = candle_core::safetensors::load(d.path("one.safetensors"), &candle_core::Device::Cpu).unwrap();
    let b =
        candle_core::safetensors::load(d.path("run/checkpoints/ckpt-00000008.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for (k, t) in &a {
        let diff = (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap().to_vec0::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{k}");
    }
}

/// Issue 16: a crash between writing the best weights and `best.json` (here an injected write failure of
/// the second `best.json`) leaves `best.json` naming the previous best's weights, complete; resuming
/// removes the weights nothing names. A run of the old layout (`best.safetensors`, a `best.json` without
/// a file name) is still read.
#[test]
fn a_crash_between_the_best_weights_and_best_json_leaves_a_consistent_pair() {
    let d = Dir::new();
    d.demo("train", 300);
    d.demo("valid", 5);
    let cfg = tiny_config_json(8)
        .replace("\"checkpoint_every\": 3", "\"checkpoint_every\": 1, \"keep_last\": 0")
        .replace("\"valid_every\": 3", "\"valid_every\": 1");
    d.write("c.json", cfg);
    let mut cmd = d.command(&["train", "--config", "c.json", "--out", "run"]);
    cmd.env("NMT_FAIL_WRITE", "best.json:2");
    let out = d.run(cmd, None).fails_with(&["run/checkpoints/best.json", "No space left on device"]);
    let read_json = |rel: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.path(rel)).unwrap()).unwrap()
    };
    let best = read_json("run/checkpoints/best.json");
    let step = best["step"].as_u64().unwrap();
    let named = format!("run/checkpoints/{}", best["weights"].as_str().unwrap());
    assert_eq!(named, format!("run/checkpoints/best-{step:08}.safetensors"));
    // The weights best.json names are the weights of its step, byte for byte.
    let weights = std::fs::read(d.path(&named)).unwrap();
    assert_eq!(weights, std::fs::read(d.path(&format!("run/checkpoints/ckpt-{step:08}.safetensors"))).unwrap());
    let orphans: Vec<String> =
        names(&d).into_iter().filter(|n| n.starts_with("best-") && !named.ends_with(n.as_str())).collect();
    assert_eq!(orphans.len(), 1, "the failed save's weights: {orphans:?}\n{}", out.stderr);
    d.nmt(&["translate", "--model", "run", "--checkpoint", "best", "A dog."], None).ok();

    let resumed = d.nmt(&["train", "--out", "run", "--resume"], None).ok();
    assert!(resumed.stderr.contains("removed 1 file(s)"), "{}", resumed.stderr);
    let best = read_json("run/checkpoints/best.json");
    let mut bests: Vec<String> = names(&d).into_iter().filter(|n| n.starts_with("best")).collect();
    bests.sort();
    assert_eq!(bests, [best["weights"].as_str().unwrap(), "best.json"], "one pair after the resumed run");

    // The old layout: best.safetensors and a best.json without `weights`.
    let path = d.path(&format!("run/checkpoints/{}", best["weights"].as_str().unwrap()));
    std::fs::rename(&path, d.path("run/checkpoints/best.safetensors")).unwrap();
    let old = serde_json::json!({"step": best["step"], "metric": best["metric"], "value": best["value"]});
    d.write("run/checkpoints/best.json", old.to_string());
    d.nmt(&["translate", "--model", "run", "--checkpoint", "best", "A dog."], None).ok();
    d.nmt(&["translate", "--model", "run", "--checkpoint", "run/checkpoints/best.safetensors", "A dog."], None).ok();
}

/// Issue 16: a crash can leave the last line of metrics.jsonl torn; resuming drops it (and the lines after
/// the checkpoint), and the resumed run's metrics are whole JSON lines in step order.
#[test]
fn a_torn_last_metrics_line_is_dropped_on_resume() {
    let d = Dir::new();
    d.trained();
    let path = d.path("run/metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"kind\":\"train\",\"step\":8,\"epoch\":1,\"loss\":4.1");
    std::fs::write(&path, text).unwrap();
    d.nmt(&["train", "--out", "run", "--resume", "--max-steps", "8"], None).ok();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in\n{text}"))).collect();
    let train: Vec<u64> = lines.iter().filter(|v| v["kind"] == "train").map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(train, [2, 4, 6, 8]);
}

#[test]
fn truncated_checkpoint_and_unwritable_output_are_clear_errors() {
    let d = Dir::new();
    d.trained();
    let full = std::fs::read(d.path("run/checkpoints/ckpt-00000006.safetensors")).unwrap();
    d.write("cut.safetensors", &full[..full.len() / 2]);
    d.nmt(&["translate", "--model", "run", "--checkpoint", "cut.safetensors", "hi"], None)
        .fails_with(&["cut.safetensors", "not a readable safetensors file"]);
    d.write("afile", "x");
    d.nmt(&["train", "--config", "tiny.json", "--out", "afile/run"], None).fails_with(&["afile/run"]);
    std::fs::create_dir_all(d.path("adir")).unwrap();
    d.nmt(&["train", "--config", "tiny.json", "--out", "x", "--train-src", "adir"], None)
        .fails_with(&["adir", "not a file"]);
    d.nmt(&["score", "--ref", "adir", "--hyp", "afile"], None).fails_with(&["adir", "directory"]);
}

#[test]
fn non_finite_updates_are_skipped_and_then_stop_training_without_saving() {
    let d = Dir::new();
    d.trained();
    // Poison the latest checkpoint: every loss computed from it is NaN.
    let path = d.path("run/checkpoints/ckpt-00000006.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let w = &tensors["embedding.weight"];
    let nan = (w * f64::NAN).unwrap();
    tensors.insert("embedding.weight".into(), nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let cfg = std::fs::read_to_string(d.path("run/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["train"]["max_skipped_steps"] = 3.into();
    d.write("run/config.json", serde_json::to_string(&v).unwrap());
    let out = d.nmt(&["train", "--out", "run", "--resume", "--max-steps", "20"], None);
    assert_eq!(out.stderr.matches("update skipped").count(), 3, "{}", out.stderr);
    out.fails_with(&["3 updates in a row had a non-finite loss or gradient after step 6"]);
    let left: Vec<String> = std::fs::read_dir(d.path("run/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-") && !n.starts_with("ckpt-00000006") && !n.starts_with("ckpt-00000003"))
        .collect();
    assert!(left.is_empty(), "checkpoints written after non-finite updates: {left:?}");
}

/// `--max-minutes` stops a run with a checkpoint and exit 0; the time spent is saved with the training
/// state, and a resumed run counts it against its own budget.
#[test]
fn a_time_budget_stops_with_a_checkpoint_and_resume_counts_the_time_spent() {
    let d = Dir::new();
    d.demo("train", 300);
    d.demo("valid", 20);
    d.tiny_config(1_000_000);
    let state = |d: &Dir| -> (usize, f64) {
        let steps: Vec<usize> = std::fs::read_dir(d.path("run/checkpoints"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_prefix("ckpt-")?.strip_suffix(".state.json")?.parse().ok()
            })
            .collect();
        let step = *steps.iter().max().expect("a checkpoint");
        let text = std::fs::read_to_string(d.path(&format!("run/checkpoints/ckpt-{step:08}.state.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (step, v["elapsed_sec"].as_f64().expect("elapsed_sec in the state"))
    };
    let out = d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--max-minutes", "0.01"], None).ok();
    assert!(out.stderr.contains("stopped at the time limit"), "{}", out.stderr);
    let (step1, spent1) = state(&d);
    assert!(step1 > 0 && step1 < 1_000_000, "step {step1}");
    assert!((0.6..60.0).contains(&spent1), "elapsed {spent1}");
    let out = d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--max-minutes", "0.03"], None).ok();
    assert!(out.stderr.contains(&format!("resuming from step {step1}")), "{}", out.stderr);
    assert!(out.stderr.contains("stopped at the time limit"), "{}", out.stderr);
    let (step2, spent2) = state(&d);
    assert!(step2 > step1, "{step2} after {step1}");
    assert!(spent2 >= 1.8 && spent2 > spent1, "elapsed {spent2} after {spent1}");
    // Nothing left of a smaller budget: the resumed run stops before another update.
    let out = d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--max-minutes", "0.02"], None).ok();
    assert!(out.stderr.contains("stopped at the time limit"), "{}", out.stderr);
    assert_eq!(state(&d).0, step2, "no update after the budget was spent");
    d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--max-minutes=-1"], None)
        .fails_with(&["train.max_minutes"]);
}
