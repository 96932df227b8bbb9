//! `nmt translate`: one output line per input line, in order, on stdout; progress on stderr.

use super::{load_model, print_lines};
use crate::cli::TranslateArgs;
use crate::data::corpus::read_lines;
use crate::progress::Progress;
use anyhow::{Context, Result};
use std::io::BufRead;

pub fn run(args: TranslateArgs) -> Result<()> {
    let lines: Vec<String> = if !args.text.is_empty() {
        args.text.clone()
    } else if let Some(path) = &args.input {
        read_lines(path)?
    } else {
        let stdin = std::io::stdin();
        let mut lines = vec![];
        for (i, l) in stdin.lock().lines().enumerate() {
            let l = l.with_context(|| format!("stdin line {}", i + 1))?;
            lines.push(l.strip_suffix('\r').map(str::to_string).unwrap_or(l));
        }
        lines
    };
    let m = load_model(&args.model)?;
    let decode = m.decode_config(&args.model, &args.search)?;
    if let Some(k) = args.nbest {
        if k == 0 || k > decode.beam {
            anyhow::bail!("--nbest {k}: must be between 1 and --beam {}", decode.beam);
        }
    }
    let translator = m.translator(&decode, args.search.search(&decode, args.nbest.unwrap_or(1))?);
    let progress = Progress::new(lines.len() as u64, "sentences");
    let nbest = translator.translate_nbest(&lines, |n| progress.inc(n as u64))?;
    progress.finish();
    let out: Vec<String> = match args.nbest {
        None => nbest.into_iter().map(|h| h.into_iter().next().map(|(t, _)| t).unwrap_or_default()).collect(),
        Some(_) => nbest
            .iter()
            .enumerate()
            .flat_map(|(i, hyps)| hyps.iter().map(move |(t, score)| format!("{i} ||| {t} ||| {score:.6}")))
            .collect(),
    };
    print_lines(&out)
}
