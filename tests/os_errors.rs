//! Real operating-system failures, not injected ones: files that may not be read, directories that may not
//! be written, and a disk that fills up while a checkpoint is being saved.
//!
//! Permissions do not bind root, and CI runs as root: there `nmt` runs as the user `nobody` (uid 65534).
//! The full disk is a small tmpfs mounted in a private mount namespace (`unshare`), so nothing outside the
//! test sees it; where mounting is not allowed, the test runs with an injected write failure instead
//! (`NMT_FAIL_WRITE`), and says which of the two ran.

mod common;
use common::{tiny_config_json, Dir, Output};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NOBODY: u32 = 65534;

fn is_root(d: &Dir) -> bool {
    // A fresh temporary directory belongs to the effective user.
    std::fs::metadata(d.tmp.path()).unwrap().uid() == 0
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The `nmt` binary as a path `nobody` may execute: the build's own, or a copy inside `d`.
fn binary_for_nobody(d: &Dir) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_nmt"));
    let runs = Command::new(&built).arg("--version").uid(NOBODY).gid(NOBODY).output().is_ok_and(|o| o.status.success());
    if runs {
        return built;
    }
    let copy = d.path("nmt-bin");
    if std::fs::hard_link(&built, &copy).is_err() {
        std::fs::copy(&built, &copy).unwrap();
    }
    chmod(&copy, 0o755);
    copy
}

/// Runs `nmt` in `d` so that file permissions apply to it: as `nobody` when the tests run as root.
fn unprivileged(d: &Dir, args: &[&str]) -> Output {
    if !is_root(d) {
        return d.nmt(args, None);
    }
    chmod(d.tmp.path(), 0o755);
    let mut cmd = Command::new(binary_for_nobody(d));
    cmd.args(args).current_dir(d.tmp.path()).uid(NOBODY).gid(NOBODY);
    d.run(cmd, None)
}

/// A directory that the unprivileged `nmt` may write.
fn writable_dir(d: &Dir, rel: &str) {
    let p = d.path(rel);
    std::fs::create_dir_all(&p).unwrap();
    if is_root(d) {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn unreadable_inputs_and_unwritable_outputs_are_clear_errors() {
    let d = Dir::new();
    d.demo("train", 100);
    d.demo("valid", 5);
    d.tiny_config(2);
    writable_dir(&d, "w");

    // Inputs that may not be read.
    d.write("secret.json", tiny_config_json(2));
    chmod(&d.path("secret.json"), 0o000);
    unprivileged(&d, &["train", "--config", "secret.json", "--out", "w/run"])
        .fails_with(&["secret.json", "Permission denied"]);
    chmod(&d.path("data/train.de"), 0o000);
    unprivileged(&d, &["train", "--config", "tiny.json", "--out", "w/run"])
        .fails_with(&["data/train.de", "Permission denied"]);
    assert!(!d.path("w/run").exists(), "a failed start left a run directory behind");
    chmod(&d.path("data/train.de"), 0o644);

    // An output directory that may not be written.
    std::fs::create_dir_all(d.path("ro")).unwrap();
    chmod(&d.path("ro"), 0o555);
    unprivileged(&d, &["train", "--config", "tiny.json", "--out", "ro/run"])
        .fails_with(&["ro/run", "Permission denied"]);
    assert!(files_under(&d.path("ro")).is_empty());

    // A trained model whose files may not be read.
    unprivileged(&d, &["train", "--config", "tiny.json", "--out", "w/run"]).ok();
    let weights = d.path("w/run/checkpoints/ckpt-00000002.safetensors");
    chmod(&weights, 0o000);
    unprivileged(&d, &["translate", "--model", "w/run", "A dog."])
        .fails_with(&["ckpt-00000002.safetensors", "Permission denied"]);
    chmod(&weights, 0o644);
    chmod(&d.path("w/run/tokenizer.json"), 0o000);
    unprivileged(&d, &["translate", "--model", "w/run", "A dog."]).fails_with(&["tokenizer.json", "Permission denied"]);
    chmod(&d.path("w/run/tokenizer.json"), 0o644);
    chmod(&d.path("data/valid.de"), 0o000);
    unprivileged(&d, &["eval", "--model", "w/run", "--src", "data/valid.en", "--ref", "data/valid.de"])
        .fails_with(&["data/valid.de", "Permission denied"]);
    chmod(&d.path("data/valid.de"), 0o644);

    // A checkpoint directory that stops being writable in the middle of a run: the save fails with an
    // error naming the file, and the previous checkpoint stays complete and the latest.
    chmod(&d.path("w/run/checkpoints"), 0o555);
    unprivileged(&d, &["train", "--out", "w/run", "--resume", "--max-steps", "4"])
        .fails_with(&["cannot write w/run/checkpoints/", "Permission denied"]);
    chmod(&d.path("w/run/checkpoints"), 0o755);
    let left = files_under(&d.path("w/run/checkpoints"));
    assert!(left.iter().all(|n| n.starts_with("ckpt-00000002")), "{left:?}");
    unprivileged(&d, &["translate", "--model", "w/run", "A dog."]).ok();
}

/// Runs `script` with `sh` in a private mount namespace, where it may mount a tmpfs; None when this
/// machine does not allow that.
fn in_mount_namespace(d: &Dir, script: &str) -> Option<std::process::Output> {
    let mut cmd = Command::new("unshare");
    if !is_root(d) {
        cmd.arg("--map-root-user");
    }
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script]).current_dir(d.tmp.path());
    cmd.output().ok()
}

/// Bytes that `dir`'s files take on a tmpfs: whole 4 KiB pages.
fn pages_used(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { pages_used(&entry.path()) } else { meta.len().div_ceil(4096) * 4096 };
    }
    total
}

/// How the full-disk test made step 2's checkpoint fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FullDisk {
    /// A real tmpfs too small for it, in a private mount namespace.
    Tmpfs,
    /// `NMT_FAIL_WRITE`: the write of step 2's weights fails with ENOSPC, as on a full disk.
    Injected,
}

#[test]
fn a_full_disk_while_saving_keeps_the_previous_checkpoint() {
    let d = Dir::new();
    std::fs::create_dir_all(d.path("probe")).unwrap();
    let probe = in_mount_namespace(&d, "mount -t tmpfs -o size=64k tmpfs probe && touch probe/x");
    // NMT_TEST_FULL_DISK=injected runs the fallback on a machine that allows the mount, to check it.
    let forced = std::env::var("NMT_TEST_FULL_DISK").is_ok_and(|v| v == "injected");
    let how = match probe.is_some_and(|o| o.status.success()) && !forced {
        true => FullDisk::Tmpfs,
        false => FullDisk::Injected,
    };
    match how {
        FullDisk::Tmpfs => eprintln!("full disk: a real tmpfs in a private mount namespace"),
        FullDisk::Injected => eprintln!(
            "full disk: an injected write failure (NMT_FAIL_WRITE), since this machine does not allow mounting \
             a tmpfs in a private mount namespace{}",
            if forced { " or NMT_TEST_FULL_DISK=injected asks for it" } else { "" }
        ),
    }
    d.demo("train", 100);
    d.demo("valid", 5);
    let cfg = tiny_config_json(3)
        .replace("\"log_every\": 2", "\"log_every\": 1")
        .replace("\"valid_every\": 3", "\"valid_every\": 0")
        .replace("\"checkpoint_every\": 3", "\"checkpoint_every\": 1");
    d.write("c.json", &cfg);

    // How much one step's run directory takes, and how much one checkpoint takes.
    d.nmt(&["train", "--config", "c.json", "--out", "one", "--max-steps", "1"], None).ok();
    let out = match how {
        FullDisk::Tmpfs => train_on_a_small_tmpfs(&d),
        FullDisk::Injected => {
            let mut cmd = d.command(&["train", "--config", "c.json", "--out", "full/run"]);
            cmd.env("NMT_FAIL_WRITE", "ckpt-00000002.safetensors");
            let out = d.run(cmd, None);
            std::fs::rename(d.path("full/run"), d.path("copy")).unwrap();
            out
        }
    };
    out.fails_with(&["full/run/checkpoints/ckpt-00000002", "No space left on device"]);

    // The step-1 checkpoint is complete and the latest; nothing of step 2 and no temporary file is left.
    let left = files_under(&d.path("copy/checkpoints"));
    assert_eq!(left, files_under(&d.path("one/checkpoints")), "files left after the failed save");
    d.nmt(&["translate", "--model", "copy", "--beam", "1", "A dog."], None).ok();
    let resumed = d.nmt(&["train", "--out", "copy", "--resume"], None).ok();
    assert!(resumed.stderr.contains("resuming from step 1"), "{}", resumed.stderr);
}

/// Trains c.json into `full/run` on a tmpfs with room for step 1's run directory and half a checkpoint,
/// so that step 2's checkpoint cannot fit; the run directory is copied to `copy` afterwards.
fn train_on_a_small_tmpfs(d: &Dir) -> Output {
    let used = pages_used(&d.path("one"));
    let checkpoint = pages_used(&d.path("one/checkpoints"));
    let size_kib = (used + checkpoint / 2) / 1024;
    std::fs::create_dir_all(d.path("full")).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size_kib}k tmpfs full || exit 99; \
         '{}' train --config c.json --out full/run >out.txt 2>err.txt; echo $? >code.txt; cp -a full/run copy",
        env!("CARGO_BIN_EXE_nmt")
    );
    let ns = in_mount_namespace(d, &script).unwrap();
    assert!(ns.status.success(), "{}", String::from_utf8_lossy(&ns.stderr));
    let read = |name: &str| std::fs::read_to_string(d.path(name)).unwrap();
    Output { code: read("code.txt").trim().parse().unwrap(), stdout: read("out.txt"), stderr: read("err.txt") }
}
