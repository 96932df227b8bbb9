//! Bad input: one-line errors that name the file or field, non-zero exit, no panic, nothing half-written.

mod common;
use common::{tiny_config_json, Dir};

fn with_data() -> Dir {
    let d = Dir::new();
    d.demo("train", 50);
    d.demo("valid", 5);
    d.tiny_config(2);
    d
}

#[test]
fn missing_config_file() {
    let d = Dir::new();
    d.nmt(&["train", "--config", "nope.json"], None).fails_with(&["nope.json"]);
}

#[test]
fn invalid_json_names_line_and_column() {
    let d = with_data();
    d.write("bad.json", "{\n  \"model\": {\"heads\": 2,}\n}");
    d.nmt(&["train", "--config", "bad.json", "--out", "run"], None).fails_with(&["bad.json", "line 2 column"]);
    assert!(!d.path("run").exists(), "a failed start must not leave a run directory");
}

#[test]
fn unknown_field_and_impossible_values_name_the_json_path() {
    let d = with_data();
    d.write("a.json", r#"{"train": {"max_stepz": 3}}"#);
    d.nmt(&["train", "--config", "a.json"], None).fails_with(&["a.json", "train.max_stepz", "unknown field"]);
    d.write("b.json", r#"{"model": {"d_model": 16, "heads": 3}}"#);
    d.nmt(&["train", "--config", "b.json"], None)
        .fails_with(&["b.json", "model.heads: d_model 16 is not divisible by 3"]);
    d.write("c.json", r#"{"model": {"encoder_layers": 0}}"#);
    d.nmt(&["train", "--config", "c.json"], None).fails_with(&["model.encoder_layers"]);
    d.write("e.json", r#"{"model": {"dropout": 1.5}}"#);
    d.nmt(&["train", "--config", "e.json"], None).fails_with(&["model.dropout", "[0, 1)"]);
}

#[test]
fn missing_and_mismatched_corpus_files() {
    let d = with_data();
    d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--train-src", "missing.en"], None)
        .fails_with(&["data.train_src", "missing.en"]);
    d.write("short.de", "Ein Satz.\n");
    d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--train-tgt", "short.de"], None)
        .fails_with(&["data/train.en has 50 lines", "short.de has 1 lines"]);
    assert!(!d.path("run").exists());
}

#[test]
fn invalid_utf8_names_file_and_line() {
    let d = with_data();
    d.write("bad.en", b"fine\nalso fine\n\xff\xfe broken\n".as_slice());
    d.write("ok.de", "a\nb\nc\n");
    d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--train-src", "bad.en", "--train-tgt", "ok.de"], None)
        .fails_with(&["bad.en:3", "invalid UTF-8"]);
}

#[test]
fn corpus_with_only_too_long_or_empty_pairs() {
    let d = with_data();
    d.write("long.json", tiny_config_json(2).replace("\"max_len\": 60", "\"max_len\": 1"));
    d.nmt(&["train", "--config", "long.json", "--out", "run"], None).fails_with(&["no usable sentence pair"]);
    assert!(!d.path("run").exists());
    d.write("empty.en", "");
    d.write("empty.de", "");
    d.nmt(
        &["train", "--config", "tiny.json", "--out", "run", "--train-src", "empty.en", "--train-tgt", "empty.de"],
        None,
    )
    .fails_with(&["no usable sentence pair"]);
}

#[test]
fn existing_run_is_not_overwritten_without_force() {
    let d = with_data();
    d.nmt(&["train", "--config", "tiny.json", "--out", "run"], None).ok();
    // A different config is refused, naming the first field that differs.
    d.write("other.json", tiny_config_json(2).replace("\"seed\": 3", "\"seed\": 4"));
    d.nmt(&["train", "--config", "other.json", "--out", "run"], None).fails_with(&[
        "already holds a different run",
        "train.seed",
        "--resume",
        "--force",
    ]);
    d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--seed", "5"], None)
        .fails_with(&["different run", "train.seed"]);
    // The same command continues the run; a larger max_steps extends it.
    let again = d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--max-steps", "4"], None).ok();
    assert!(again.stderr.contains("already holds this run: continuing it"), "{}", again.stderr);
    assert!(again.stderr.contains("resuming from step 2"), "{}", again.stderr);
    assert!(d.path("run/checkpoints/ckpt-00000004.state.json").is_file());
    d.nmt(&["train", "--config", "other.json", "--out", "run", "--force"], None).ok();
    assert!(!d.path("run/checkpoints/ckpt-00000004.state.json").exists(), "--force kept old checkpoints");
    d.nmt(&["train", "--out", "fresh", "--resume"], None).fails_with(&["fresh", "no checkpoint"]);
}

#[test]
fn model_directory_problems() {
    let d = with_data();
    d.nmt(&["translate", "--model", "nowhere", "hello"], None).fails_with(&["nowhere", "not a run directory"]);
    d.nmt(&["train", "--config", "tiny.json", "--out", "run"], None).ok();
    std::fs::remove_dir_all(d.path("run/checkpoints")).unwrap();
    d.nmt(&["translate", "--model", "run", "hello"], None).fails_with(&["checkpoints", "no checkpoint"]);
    d.write("junk.safetensors", "not a checkpoint");
    d.nmt(&["translate", "--model", "run", "--checkpoint", "junk.safetensors", "hello"], None)
        .fails_with(&["junk.safetensors", "not a readable safetensors file"]);
}

#[test]
fn checkpoint_of_a_different_model_size() {
    let d = with_data();
    d.nmt(&["train", "--config", "tiny.json", "--out", "a"], None).ok();
    d.write("wide.json", tiny_config_json(2).replace("\"d_model\": 16", "\"d_model\": 24"));
    d.nmt(&["train", "--config", "wide.json", "--out", "b"], None).ok();
    d.nmt(&["translate", "--model", "a", "--checkpoint", "b/checkpoints/ckpt-00000002.safetensors", "hi"], None)
        .fails_with(&["ckpt-00000002.safetensors", "does not fit this model", "shape"]);
}

#[test]
fn tokenizer_that_does_not_match_the_config() {
    let d = with_data();
    d.nmt(&["train", "--config", "tiny.json", "--out", "a"], None).ok();
    let cfg = std::fs::read_to_string(d.path("a/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["model"]["vocab_size"] = 999.into();
    d.write("a/config.json", serde_json::to_string(&v).unwrap());
    d.nmt(&["translate", "--model", "a", "hi"], None).fails_with(&["tokenizer.json", "999", "different runs"]);
}

#[test]
fn score_with_mismatched_lengths_and_eval_with_missing_files() {
    let d = with_data();
    d.write("r.txt", "a\nb\n");
    d.write("h.txt", "a\n");
    d.nmt(&["score", "--ref", "r.txt", "--hyp", "h.txt"], None).fails_with(&["r.txt has 2 lines", "h.txt has 1 lines"]);
    d.nmt(&["score", "--ref", "none.txt", "--hyp", "h.txt"], None).fails_with(&["none.txt"]);
    d.nmt(&["eval", "--model", "run", "--src", "x.en", "--ref", "x.de"], None).fails_with(&["x.en"]);
}

#[test]
fn cuda_without_cuda_support_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let d = with_data();
    d.nmt(&["train", "--config", "tiny.json", "--out", "run", "--device", "cuda"], None)
        .fails_with(&["--device cuda", "--features cuda"]);
}

/// Mixed precision is for CUDA: on the CPU, `train.dtype` "bf16" is refused before anything is written;
/// an unknown dtype names the field.
#[test]
fn bf16_on_the_cpu_and_unknown_dtypes_are_clear_errors() {
    let d = with_data();
    let bf16 = tiny_config_json(2).replace(r#""seed": 3}"#, r#""seed": 3, "dtype": "bf16"}"#);
    assert!(bf16.contains("bf16"));
    d.write("bf16.json", &bf16);
    d.nmt(&["train", "--config", "bf16.json", "--out", "run"], None).fails_with(&[
        "train.dtype",
        "bf16",
        "--device cuda",
    ]);
    assert!(!d.path("run").exists(), "a refused start must not leave a run directory");
    d.write("f8.json", tiny_config_json(2).replace(r#""seed": 3}"#, r#""seed": 3, "dtype": "f8"}"#));
    d.nmt(&["train", "--config", "f8.json", "--out", "run"], None).fails_with(&["f8.json", "train.dtype"]);
}

/// Issue 16: values far beyond what a machine can hold are one-line errors, never an overflow panic or an
/// allocation abort.
#[test]
fn extreme_values_are_clear_errors_not_crashes() {
    let d = Dir::new();
    d.trained();
    d.demo("test", 3);
    let beam = ["--model", "run", "--beam", "1000000000"];
    d.nmt(&[&["translate"], &beam[..], &["A dog."]].concat(), None).fails_with(&["--beam", "1000000000", "vocabulary"]);
    let eval = ["eval", "--src", "data/test.en", "--ref", "data/test.de"];
    d.nmt(&[&eval[..], &beam[..]].concat(), None).fails_with(&["--beam", "1000000000", "vocabulary"]);
    d.nmt(&["info", "--config", "tiny.json", "--vocab", "18446744073709551615"], None)
        .fails_with(&["--vocab: must be at most 16777216"]);
    for (field, small) in [("max_positions", "96"), ("d_model", "16"), ("d_ff", "32"), ("vocab_size", "200")] {
        let (from, to) = (format!("\"{field}\": {small}"), format!("\"{field}\": 1000000000000"));
        d.write("huge.json", tiny_config_json(2).replace(&from, &to));
        d.nmt(&["train", "--config", "huge.json", "--out", "huge"], None)
            .fails_with(&["huge.json", &format!("model.{field}: must be at most")]);
    }
    let cfg = tiny_config_json(2).replace("\"max_len\": 60", "\"max_len\": 18446744073709551615");
    d.write("huge.json", cfg);
    d.nmt(&["train", "--config", "huge.json", "--out", "huge"], None).fails_with(&["data.max_len: must be at most"]);
    // Within every bound, but no machine has the memory: refused before anything is allocated.
    let cfg = tiny_config_json(2)
        .replace("\"d_model\": 16, \"d_ff\": 32", "\"d_model\": 65536, \"d_ff\": 1048576")
        .replace("\"encoder_layers\": 1, \"decoder_layers\": 1", "\"encoder_layers\": 1024, \"decoder_layers\": 1024");
    d.write("huge.json", cfg);
    d.nmt(&["train", "--config", "huge.json", "--out", "huge"], None).fails_with(&["model:", "GiB", "MemTotal"]);
    assert!(!d.path("huge").exists(), "a refused config must not leave a run directory");
}

/// Issue 16: an empty test set is an error naming the file, not loss 0 and perplexity 1.
#[test]
fn eval_on_an_empty_test_set_names_the_file() {
    let d = Dir::new();
    d.trained();
    d.write("empty.en", "");
    d.write("empty.de", "");
    d.nmt(&["eval", "--model", "run", "--src", "empty.en", "--ref", "empty.de"], None)
        .fails_with(&["empty.en", "the test set is empty"]);
}
