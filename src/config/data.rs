//! The `data` section: where the parallel corpus lives.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the parallel corpus lives. Relative paths are taken from the current directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Source side of the training corpus, one sentence a line. Required.
    pub train_src: Option<PathBuf>,
    /// Target side of the training corpus, line-aligned with `train_src`. Required.
    pub train_tgt: Option<PathBuf>,
    /// Source side of the validation set. Optional: without it there is no validation.
    pub valid_src: Option<PathBuf>,
    /// Target side of the validation set; required when `valid_src` is given.
    pub valid_tgt: Option<PathBuf>,
    /// Pairs with more BPE tokens than this on either side are skipped (and counted). Default 100.
    pub max_len: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { train_src: None, train_tgt: None, valid_src: None, valid_tgt: None, max_len: 100 }
    }
}

impl DataConfig {
    /// Checks the values, without touching the files.
    pub fn validate_values(&self) -> Result<()> {
        if self.max_len == 0 {
            bail!("data.max_len: must be at least 1");
        }
        super::at_most("data", &[("max_len", self.max_len, super::model::MAX_POSITIONS - 2)])?;
        Ok(())
    }

    /// Checks that the corpus files are given, and exist as files.
    pub fn validate_files(&self) -> Result<()> {
        let d = self;
        let required = [("data.train_src", &d.train_src), ("data.train_tgt", &d.train_tgt)];
        for (name, path) in required {
            match path {
                None => bail!("{name}: missing (set it in the config or with --{})", flag(name)),
                Some(p) => check_file(name, p)?,
            }
        }
        match (&d.valid_src, &d.valid_tgt) {
            (Some(s), Some(t)) => {
                check_file("data.valid_src", s)?;
                check_file("data.valid_tgt", t)?;
            }
            (Some(_), None) => bail!("data.valid_tgt: missing while data.valid_src is set"),
            (None, Some(_)) => bail!("data.valid_src: missing while data.valid_tgt is set"),
            (None, None) => {}
        }
        Ok(())
    }
}

fn flag(json_path: &str) -> String {
    json_path.trim_start_matches("data.").replace('_', "-")
}

fn check_file(name: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => bail!("{name}: {} is not a file", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.starts_with("data/multi30k") => bail!(
            "{name}: cannot open {}: {e} (get Multi30k with `bash scripts/fetch_multi30k.sh`, or point \
             --{} at a copy)",
            path.display(),
            flag(name)
        ),
        Err(e) => bail!("{name}: cannot open {}: {e}", path.display()),
    }
}
