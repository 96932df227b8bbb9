//! docs/CHECKPOINT.md's recipe: a numpy re-implementation of the forward pass, reading only the checkpoint,
//! the tokenizer and the config, reproduces `nmt eval`'s loss. Skipped when python3 lacks the packages.

mod common;
use common::{repo, Dir};
use std::process::Command;

fn python_has_packages() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy, tokenizers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn numpy_forward_pass_reproduces_the_eval_loss() {
    if !python_has_packages() {
        eprintln!("skipped: python3 with numpy, safetensors and tokenizers is not available");
        return;
    }
    for norm in ["post", "pre"] {
        let d = Dir::new();
        d.demo("train", 300);
        d.demo("valid", 5);
        d.demo("test", 6);
        let cfg = common::tiny_config_json(4).replace("\"d_ff\": 32,", &format!("\"d_ff\": 32, \"norm\": \"{norm}\","));
        d.write("tiny.json", cfg);
        d.nmt(&["train", "--config", "tiny.json", "--out", "run"], None).ok();
        let eval =
            d.nmt(&["eval", "--model", "run", "--src", "data/test.en", "--ref", "data/test.de", "--json"], None).ok();
        let e: serde_json::Value = serde_json::from_str(eval.stdout.trim()).unwrap();
        let script = repo().join("scripts/checkpoint_loss.py");
        let out = Command::new("python3")
            .arg(&script)
            .args(["--model", "run", "--src", "data/test.en", "--ref", "data/test.de", "-n", "6"])
            .current_dir(d.tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (a, b) = (e["loss"].as_f64().unwrap(), p["loss"].as_f64().unwrap());
        assert_eq!(e["tokens"], p["tokens"], "token counts differ");
        assert!((a - b).abs() < 1e-4 * a.max(1.0), "{norm}: nmt eval loss {a}, numpy loss {b}");
    }
}
