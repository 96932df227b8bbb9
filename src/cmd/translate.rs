//! `nmt translate`: one output line per input line, in order, on stdout; progress on stderr. With
//! `--attention DIR`, also the attention pictures of every sentence ([`super::attention`]).

use super::{attention, load_model, print_lines};
use crate::cli::TranslateArgs;
use crate::data::corpus::read_lines;
use crate::progress::Progress;
use crate::viz::Format;
use anyhow::{Context, Result};
use std::io::BufRead;

pub fn run(args: TranslateArgs) -> Result<()> {
    let lines = inputs(&args)?;
    if let Some(dir) = &args.attention {
        attention::prepare(dir)?;
    }
    let m = load_model(&args.model)?;
    let decode = m.decode_config(&args.model, &args.search)?;
    if let Some(k) = args.nbest {
        if k == 0 || k > decode.beam {
            anyhow::bail!("--nbest {k}: must be between 1 and --beam {}", decode.beam);
        }
    }
    let translator = m.translator(&decode, args.search.search(&decode, args.nbest.unwrap_or(1))?);
    let ids = lines.iter().map(|l| m.tokenizer.encode(l)).collect::<Result<Vec<_>>>()?;
    let progress = Progress::new(lines.len() as u64, "sentences");
    let hyps = translator.translate_ids(&ids, |n| progress.inc(n as u64))?;
    progress.finish();
    let texts = |i: usize| hyps[i].iter().map(|h| Ok((m.tokenizer.decode(&h.tokens)?, h.score)));
    let nbest: Vec<Vec<(String, f64)>> =
        (0..hyps.len()).map(|i| texts(i).collect::<Result<_>>()).collect::<Result<_>>()?;
    if let Some(dir) = &args.attention {
        let best: Vec<&[u32]> = hyps.iter().map(|h| h.first().map_or(&[][..], |h| h.tokens.as_slice())).collect();
        let translations: Vec<String> =
            nbest.iter().map(|h| h.first().map(|(t, _)| t.clone()).unwrap_or_default()).collect();
        let sentences =
            attention::Sentences { lines: &lines, sources: &ids, outputs: &best, translations: &translations };
        attention::write(&m, &sentences, dir, args.format.unwrap_or(Format::Svg))?;
    }
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

/// The sentences: from the arguments, else `--input`, else stdin.
fn inputs(args: &TranslateArgs) -> Result<Vec<String>> {
    if !args.text.is_empty() {
        return Ok(args.text.clone());
    }
    if let Some(path) = &args.input {
        return read_lines(path);
    }
    let stdin = std::io::stdin();
    let mut lines = vec![];
    for (i, l) in stdin.lock().lines().enumerate() {
        let l = l.with_context(|| format!("stdin line {}", i + 1))?;
        lines.push(l.strip_suffix('\r').map(str::to_string).unwrap_or(l));
    }
    Ok(lines)
}
