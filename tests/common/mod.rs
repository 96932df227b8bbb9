//! Test harness: a temporary directory, the real `nmt` binary, and its stdout, stderr and exit code.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "nmt failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts a one-line error (the `nmt: error:` line) that contains every fragment, and a non-zero exit.
    pub fn fails_with(self, fragments: &[&str]) -> Self {
        assert_ne!(self.code, 0, "expected failure\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        let last = self.stderr.trim_end().lines().last().unwrap_or("");
        assert!(last.starts_with("nmt: error: "), "no error line in stderr:\n{}", self.stderr);
        for f in fragments {
            assert!(last.contains(f), "error line lacks {f:?}:\n{last}");
        }
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        self
    }
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Self { tmp: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Runs `nmt` in this directory with `args` and optional stdin.
    pub fn nmt(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run(self.command(args), stdin)
    }

    /// The `nmt` command with `args`, run in this directory, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nmt"));
        cmd.args(args).current_dir(self.tmp.path());
        cmd
    }

    /// Runs `cmd` with optional stdin and collects its output.
    pub fn run(&self, mut cmd: Command, stdin: Option<&str>) -> Output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("spawn nmt");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Copies the first `n` lines of a demo split into `data/<split>.<lang>`.
    pub fn demo(&self, split: &str, n: usize) {
        for lang in ["en", "de"] {
            let src = repo().join(format!("data/demo/{split}.{lang}"));
            let text = std::fs::read_to_string(&src).unwrap();
            let lines: Vec<&str> = text.lines().take(n).collect();
            self.write(&format!("data/{split}.{lang}"), lines.join("\n") + "\n");
        }
    }

    /// A tiny config that trains in seconds.
    pub fn tiny_config(&self, max_steps: usize) -> PathBuf {
        self.write("tiny.json", tiny_config_json(max_steps))
    }

    /// Trains the tiny config on 300 demo pairs into `run/`.
    pub fn trained(&self) -> &Self {
        self.demo("train", 300);
        self.demo("valid", 20);
        self.tiny_config(6);
        self.nmt(&["train", "--config", "tiny.json", "--out", "run"], None).ok();
        self
    }
}

pub fn tiny_config_json(max_steps: usize) -> String {
    format!(
        r#"{{
  "model": {{"encoder_layers": 1, "decoder_layers": 1, "heads": 2, "d_model": 16, "d_ff": 32,
             "vocab_size": 200, "max_positions": 96}},
  "train": {{"batch_tokens": 512, "warmup_steps": 10, "max_steps": {max_steps}, "log_every": 2,
             "valid_every": 3, "valid_bleu_sentences": 5, "checkpoint_every": 3, "seed": 3}},
  "data": {{"train_src": "data/train.en", "train_tgt": "data/train.de",
            "valid_src": "data/valid.en", "valid_tgt": "data/valid.de", "max_len": 60}}
}}"#
    )
}

/// A test whose prerequisite (`what`) is missing: in CI (`CI=true`) that is a failure naming it, since a
/// test that passes by skipping checks nothing; elsewhere the test is skipped with a message.
pub fn missing_prerequisite(test: &str, what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {what} is missing, and CI=true: a test must not pass by skipping");
    }
    eprintln!("skipped {test}: {what} is missing (with CI=true this fails)");
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
