//! The four commands end to end on a tiny model: train, translate, eval, score.

mod common;
use common::Dir;
use std::process::Stdio;

#[test]
fn train_writes_the_documented_run_directory() {
    let d = Dir::new();
    d.trained();
    for f in ["run/config.json", "run/tokenizer.json", "run/metrics.jsonl"] {
        assert!(d.path(f).is_file(), "{f} missing");
    }
    for step in [3, 6] {
        for suffix in ["safetensors", "optim.safetensors", "state.json"] {
            let p = d.path(&format!("run/checkpoints/ckpt-{step:08}.{suffix}"));
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("run/config.json")).unwrap()).unwrap();
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("run/tokenizer.json")).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap().len() as u64;
    assert_eq!(cfg["model"]["vocab_size"].as_u64().unwrap(), vocab, "config records the learned vocabulary");
    let metrics = std::fs::read_to_string(d.path("run/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let train: Vec<_> = lines.iter().filter(|l| l["kind"] == "train").collect();
    let valid: Vec<_> = lines.iter().filter(|l| l["kind"] == "valid").collect();
    assert_eq!(train.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4, 6]);
    for key in ["epoch", "loss", "lr", "src_tokens_per_sec", "tgt_tokens_per_sec", "elapsed_sec"] {
        assert!(train[0][key].is_number(), "train line lacks {key}: {}", train[0]);
    }
    assert_eq!(valid.len(), 2);
    for key in ["valid_loss", "valid_bleu", "valid_chrf"] {
        assert!(valid[0][key].is_number(), "valid line lacks {key}: {}", valid[0]);
    }
}

#[test]
fn translate_gives_one_line_per_input_from_args_stdin_and_file() {
    let d = Dir::new();
    d.trained();
    let out = d.nmt(&["translate", "--model", "run", "The dog sees the cat.", "Two men like the car."], None).ok();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let input = "The dog sees the cat.\n\nTwo men like the car.\n";
    let out = d.nmt(&["translate", "--model", "run"], Some(input)).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[1], "", "an empty input line gives an empty output line");
    d.write("in.txt", input);
    let from_file = d.nmt(&["translate", "--model", "run", "--input", "in.txt"], None).ok();
    assert_eq!(from_file.stdout, out.stdout);
    // Batching and order: one sentence at a time gives the same lines.
    let one = d.nmt(&["translate", "--model", "run", "--batch-size", "1"], Some(input)).ok();
    assert_eq!(one.stdout, out.stdout);
}

#[test]
fn eval_and_score_agree_on_bleu() {
    let d = Dir::new();
    d.trained();
    d.demo("test", 15);
    let out = d
        .nmt(
            &[
                "eval",
                "--model",
                "run",
                "--src",
                "data/test.en",
                "--ref",
                "data/test.de",
                "--hyp-out",
                "hyp.txt",
                "--json",
            ],
            None,
        )
        .ok();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    for key in ["bleu", "chrf", "signature", "loss", "ppl"] {
        assert!(!v[key].is_null(), "eval --json lacks {key}: {v}");
    }
    assert!(v["signature"].as_str().unwrap().starts_with("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:nmt-"));
    let loss = v["loss"].as_f64().unwrap();
    assert!((v["ppl"].as_f64().unwrap() - loss.exp()).abs() < 1e-6 * loss.exp());
    let hyps = std::fs::read_to_string(d.path("hyp.txt")).unwrap();
    assert_eq!(hyps.lines().count(), 15);
    let score = d.nmt(&["score", "--ref", "data/test.de", "--hyp", "hyp.txt", "--json"], None).ok();
    let s: serde_json::Value = serde_json::from_str(score.stdout.trim()).unwrap();
    assert_eq!(s["bleu"], v["bleu"]);
    assert_eq!(s["chrf"], v["chrf"]);
    let text = d.nmt(&["eval", "--model", "run", "--src", "data/test.en", "--ref", "data/test.de"], None).ok();
    assert!(text.stdout.starts_with("loss = "), "{}", text.stdout);
    assert!(text.stdout.contains("BLEU = ") && text.stdout.contains("chrF2 = "), "{}", text.stdout);
}

#[test]
fn score_reads_stdin_and_several_references() {
    let d = Dir::new();
    d.write("ref1.txt", "Der Hund sieht die Katze.\nZwei Männer mögen das Auto.\n");
    d.write("ref2.txt", "Der Hund sieht eine Katze.\nZwei Männer mögen ein Auto.\n");
    let hyp = "Der Hund sieht die Katze.\nZwei Männer mögen das Auto.\n";
    let out = d.nmt(&["score", "--ref", "ref1.txt", "--json"], Some(hyp)).ok();
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!((v["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-9, "{v}");
    let out = d.nmt(&["score", "--ref", "ref2.txt", "--ref", "ref1.txt"], Some(hyp)).ok();
    assert!(out.stdout.starts_with("BLEU = 100.00"), "{}", out.stdout);
    assert!(out.stdout.contains("nrefs:2|"), "{}", out.stdout);
}

#[test]
fn sentence_level_scores_one_line_per_sentence() {
    let d = Dir::new();
    d.write("ref.txt", "Der Hund sieht die Katze.\nZwei Männer mögen das Auto.\n");
    let hyp = "Der Hund sieht die Katze.\nZwei Frauen mögen ein Auto.\n";
    let out = d.nmt(&["score", "--ref", "ref.txt", "--sentence-level", "--json"], Some(hyp)).ok();
    let v: Vec<serde_json::Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 2);
    assert!((v[0]["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    assert!(v[1]["bleu"].as_f64().unwrap() < 100.0);
    let text = d.nmt(&["score", "--ref", "ref.txt", "--sentence-level"], Some(hyp)).ok();
    assert!(text.stdout.lines().last().unwrap().contains("|eff:yes|"), "{}", text.stdout);
}

#[test]
fn validation_eval_and_score_report_the_same_bleu() {
    let d = Dir::new();
    d.trained(); // validates greedy BLEU on the first 5 valid sentences at steps 3 and 6 (the last)
    let metrics = std::fs::read_to_string(d.path("run/metrics.jsonl")).unwrap();
    let last_valid = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["kind"] == "valid")
        .unwrap();
    assert_eq!(last_valid["step"], 6);
    for lang in ["en", "de"] {
        let text = std::fs::read_to_string(d.path(&format!("data/valid.{lang}"))).unwrap();
        d.write(&format!("v5.{lang}"), text.lines().take(5).collect::<Vec<_>>().join("\n") + "\n");
    }
    let eval = d
        .nmt(
            &[
                "eval",
                "--model",
                "run",
                "--src",
                "v5.en",
                "--ref",
                "v5.de",
                "--beam",
                "1",
                "--hyp-out",
                "h.txt",
                "--json",
            ],
            None,
        )
        .ok();
    let e: serde_json::Value = serde_json::from_str(eval.stdout.trim()).unwrap();
    let score = d.nmt(&["score", "--ref", "v5.de", "--hyp", "h.txt", "--json"], None).ok();
    let s: serde_json::Value = serde_json::from_str(score.stdout.trim()).unwrap();
    assert_eq!(e["bleu"], last_valid["valid_bleu"], "eval vs validation");
    assert_eq!(s["bleu"], last_valid["valid_bleu"], "score vs validation");
    assert_eq!(e["chrf"], last_valid["valid_chrf"]);
}

#[test]
fn resume_continues_from_the_latest_checkpoint() {
    let d = Dir::new();
    d.trained();
    let out = d.nmt(&["train", "--out", "run", "--resume", "--max-steps", "9"], None).ok();
    assert!(out.stderr.contains("resuming from step 6"), "{}", out.stderr);
    assert!(d.path("run/checkpoints/ckpt-00000009.safetensors").is_file());
}

#[test]
fn same_seed_same_run() {
    let d = Dir::new();
    d.trained();
    let again = d.nmt(&["train", "--config", "tiny.json", "--out", "run2"], None).ok();
    drop(again);
    let a = std::fs::read(d.path("run/checkpoints/ckpt-00000006.safetensors")).unwrap();
    let b = std::fs::read(d.path("run2/checkpoints/ckpt-00000006.safetensors")).unwrap();
    assert!(a == b, "two runs with the same seed wrote different weights");
}

#[test]
fn info_prints_parameter_counts() {
    let d = Dir::new();
    let base = common::repo().join("configs/base.json");
    let out = d.nmt(&["info", "--config", base.to_str().unwrap(), "--vocab", "37000"], None).ok();
    assert!(out.stdout.contains("embeddings") && out.stdout.contains("total"), "{}", out.stdout);
    assert!(
        out.stdout.contains("(63.") || out.stdout.contains("(64.") || out.stdout.contains("(65."),
        "{}",
        out.stdout
    );
}

#[test]
fn beam_nbest_and_sampling_flags() {
    let d = Dir::new();
    d.trained();
    let input = "The dog sees the cat.\nTwo men like the car.\n";
    let greedy = d.nmt(&["translate", "--model", "run", "--beam", "1"], Some(input)).ok();
    let top1 = d.nmt(&["translate", "--model", "run", "--sample", "--top-k", "1"], Some(input)).ok();
    assert_eq!(top1.stdout, greedy.stdout, "top-1 sampling is greedy search");
    let a = d.nmt(&["translate", "--model", "run", "--sample", "--sample-seed", "5"], Some(input)).ok();
    let b = d.nmt(&["translate", "--model", "run", "--sample", "--sample-seed", "5"], Some(input)).ok();
    assert_eq!(a.stdout, b.stdout, "same seed, same samples");
    assert_eq!(a.stdout.lines().count(), 2);
    let nbest = d.nmt(&["translate", "--model", "run", "--beam", "3", "--nbest", "3"], Some(input)).ok();
    let lines: Vec<&str> = nbest.stdout.lines().collect();
    assert!(!lines.is_empty() && lines.len() <= 6, "{}", nbest.stdout);
    let mut last: Option<(usize, f64)> = None;
    for l in &lines {
        let parts: Vec<&str> = l.split(" ||| ").collect();
        assert_eq!(parts.len(), 3, "{l}");
        let (i, score): (usize, f64) = (parts[0].parse().unwrap(), parts[2].parse().unwrap());
        if let Some((pi, ps)) = last {
            assert!(i > pi || (i == pi && score <= ps), "n-best lines out of order: {l}");
        }
        last = Some((i, score));
    }
    d.nmt(&["translate", "--model", "run", "--beam", "2", "--nbest", "3", "x"], None)
        .fails_with(&["--nbest 3", "--beam 2"]);
    let beam4 = d.nmt(&["translate", "--model", "run"], Some(input)).ok();
    assert_eq!(beam4.stdout.lines().count(), 2);
}

/// The run's `config.json` records the `decode` section; translate uses it, and flags override it.
#[test]
fn decode_defaults_come_from_the_runs_config_and_flags_override_them() {
    let d = Dir::new();
    d.trained();
    let config = std::fs::read_to_string(d.path("run/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["decode"]["beam"], 4, "{config}");
    assert_eq!(v["decode"]["batch_size"], 32, "{config}");
    v["decode"]["beam"] = 1.into();
    d.write("run/config.json", serde_json::to_string_pretty(&v).unwrap());
    // The run's beam is now 1, so an n-best list of 2 is refused unless --beam says otherwise.
    d.nmt(&["translate", "--model", "run", "--nbest", "2", "x"], None).fails_with(&["--nbest 2", "--beam 1"]);
    let two = d.nmt(&["translate", "--model", "run", "--beam", "3", "--nbest", "2", "A dog."], None).ok();
    assert!((1..=2).contains(&two.stdout.lines().count()), "{}", two.stdout);
    let input = "The dog sees the cat.\nTwo men like the car.\n";
    let default = d.nmt(&["translate", "--model", "run"], Some(input)).ok();
    let greedy = d.nmt(&["translate", "--model", "run", "--beam", "1"], Some(input)).ok();
    assert_eq!(default.stdout, greedy.stdout);
    d.nmt(&["translate", "--model", "run", "--beam", "0", "x"], None).fails_with(&["--beam: must be at least 1"]);
    d.write("src.txt", "A dog.\n");
    d.nmt(&["eval", "--model", "run", "--src", "src.txt", "--ref", "src.txt", "--alpha=-1"], None)
        .fails_with(&["--alpha: must be a number ≥ 0, got -1"]);
    for (flag, shown) in [("--alpha=NaN", "NaN"), ("--alpha=inf", "inf")] {
        d.nmt(&["translate", "--model", "run", flag, "x"], None)
            .fails_with(&[&format!("--alpha: must be a number ≥ 0, got {shown}")]);
    }
    v["decode"]["batch_size"] = 0.into();
    d.write("run/config.json", serde_json::to_string_pretty(&v).unwrap());
    d.nmt(&["translate", "--model", "run", "x"], None).fails_with(&["run/config.json", "decode.batch_size"]);
}

/// Issue 16: a broken stderr pipe (`nmt train 2>&1 | head -1`) does not stop or crash training: log lines
/// that cannot be written are dropped.
#[test]
fn a_broken_stderr_pipe_does_not_stop_training() {
    let d = Dir::new();
    d.demo("train", 300);
    d.demo("valid", 20);
    d.tiny_config(6);
    let mut cmd = d.command(&["train", "--config", "tiny.json", "--out", "run"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stderr.take()); // the reader goes away: every write to stderr now fails with EPIPE
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "nmt train with a broken stderr: {status}");
    assert!(d.path("run/checkpoints/ckpt-00000006.state.json").is_file());
    // The error path writes to stderr too, and still exits 1.
    let mut cmd = d.command(&["translate", "--model", "nope", "A dog."]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(1));
}

/// The exit codes the README documents: 0 success, 1 an error (one `nmt: error:` line), 2 a usage error
/// from clap (its own several-line message). A run stopped by SIGINT or SIGTERM exits 0 after its
/// checkpoint: `tests/reliability.rs::sigint_and_sigterm_checkpoint_and_exit_zero`.
#[test]
fn exit_codes_are_0_1_and_2() {
    let d = Dir::new();
    let ok = d.nmt(&["score", "--ref", "r.txt", "--hyp", "r.txt"], None);
    assert_eq!(ok.code, 1, "missing file: {}", ok.stderr);
    d.write("r.txt", "a b c\n");
    d.nmt(&["score", "--ref", "r.txt", "--hyp", "r.txt"], None).ok();
    let usage = d.nmt(&["translate", "--bogus-flag"], None);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(usage.stderr.starts_with("error: unexpected argument '--bogus-flag'"), "{}", usage.stderr);
    assert!(usage.stderr.contains("Usage: nmt translate") && usage.stderr.lines().count() > 2, "{}", usage.stderr);
    let bad_value = d.nmt(&["translate", "--model", "m", "--beam", "many"], None);
    assert_eq!(bad_value.code, 2, "{}", bad_value.stderr);
    assert!(bad_value.stderr.contains("invalid value 'many' for '--beam"), "{}", bad_value.stderr);
    let help = d.nmt(&["--help"], None);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Usage: nmt"), "{}", help.stdout);
}

/// `--threads` sets the training pool's size; the log says how many threads train.
#[test]
fn threads_flag_sets_the_worker_threads() {
    let d = Dir::new();
    d.demo("train", 100);
    d.demo("valid", 5);
    d.tiny_config(2);
    let out = d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--threads", "1"], None).ok();
    assert!(out.stderr.contains("; threads 1"), "{}", out.stderr);
    let out = d.nmt(&["train", "--config", "tiny.json", "--out", "two", "--threads", "2"], None).ok();
    assert!(out.stderr.contains("; threads 2"), "{}", out.stderr);
    d.nmt(&["train", "--config", "tiny.json", "--out", "x", "--threads", "5000"], None).fails_with(&["train.threads"]);
}
