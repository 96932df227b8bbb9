//! Two aligned UTF-8 text files, one sentence a line.
//!
//! CRLF line endings and a missing final newline are accepted; tabs and non-breaking spaces inside a
//! line are kept. Invalid UTF-8 is an error naming the file and line; different line counts are an error
//! naming both files and their counts.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// Reads a text file as lines (without their `\n` or `\r\n`).
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if meta.is_dir() {
        bail!("{} is a directory, expected a text file", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_lines(&bytes, path)
}

/// Splits the contents of `path` into lines: `\n` or `\r\n` endings, a final newline optional, UTF-8
/// required (an error names the file and line).
pub fn parse_lines(bytes: &[u8], path: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    if bytes.is_empty() {
        return Ok(lines);
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(s) => lines.push(s.to_string()),
            Err(e) => bail!("{}:{}: invalid UTF-8 at byte {}", path.display(), i + 1, e.valid_up_to() + 1),
        }
    }
    Ok(lines)
}

/// A sentence pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub src: String,
    pub tgt: String,
}

/// Reads two line-aligned files into sentence pairs.
pub fn read_pairs(src: &Path, tgt: &Path) -> Result<Vec<Pair>> {
    let s = read_lines(src)?;
    let t = read_lines(tgt)?;
    if s.len() != t.len() {
        bail!(
            "{} has {} lines but {} has {} lines: the files must be line-aligned",
            src.display(),
            s.len(),
            tgt.display(),
            t.len()
        );
    }
    Ok(s.into_iter().zip(t).map(|(src, tgt)| Pair { src, tgt }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn crlf_and_missing_final_newline_are_accepted_and_tabs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", b"one\r\ntwo\tthree\r\nfour");
        let b = write(dir.path(), "b", "eins\nzwei\u{a0}drei\nvier\n".as_bytes());
        let pairs = read_pairs(&a, &b).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[1].src, "two\tthree");
        assert_eq!(pairs[1].tgt, "zwei\u{a0}drei");
        assert_eq!(pairs[2].src, "four");
    }

    #[test]
    fn mismatched_counts_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "x.en", b"a\nb\n");
        let b = write(dir.path(), "x.de", b"a\n");
        let e = read_pairs(&a, &b).unwrap_err().to_string();
        assert!(e.contains("x.en has 2 lines") && e.contains("x.de has 1 lines"), "{e}");
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "bad.txt", b"ok\nfine\nbro\xffken\n");
        let e = read_lines(&a).unwrap_err().to_string();
        assert!(e.ends_with("bad.txt:3: invalid UTF-8 at byte 4"), "{e}");
    }

    #[test]
    fn empty_lines_are_kept_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", b"x\n\ny\n");
        assert_eq!(read_lines(&a).unwrap(), vec!["x", "", "y"]);
        let e = write(dir.path(), "e", b"");
        assert!(read_lines(&e).unwrap().is_empty());
        assert!(read_lines(dir.path()).unwrap_err().to_string().contains("is a directory"));
    }
}
