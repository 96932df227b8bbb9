//! docs/CHECKPOINT.md's recipe: a numpy re-implementation of the forward pass, reading only the checkpoint,
//! the tokenizer and the config, reproduces `nmt eval`'s loss. Without numpy, safetensors or tokenizers in
//! python3 it is skipped, or fails with CI=true.

mod common;
use common::{repo, Dir};
use std::process::Command;

/// The Python modules the recipe needs that python3 cannot import (all of them without python3).
fn missing_python_modules() -> Vec<&'static str> {
    ["numpy", "safetensors.numpy", "tokenizers"]
        .into_iter()
        .filter(|m| {
            !Command::new("python3").args(["-c", &format!("import {m}")]).output().is_ok_and(|o| o.status.success())
        })
        .collect()
}

#[test]
fn numpy_forward_pass_reproduces_the_eval_loss() {
    let missing = missing_python_modules();
    if !missing.is_empty() {
        let what = format!("python3 with {} (pip install numpy safetensors tokenizers)", missing.join(", "));
        common::missing_prerequisite("numpy_forward_pass_reproduces_the_eval_loss", &what);
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
