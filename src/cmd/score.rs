//! `nmt score`: BLEU and chrF of hypotheses against one or more references.

use super::print_lines;
use crate::cli::ScoreArgs;
use crate::data::corpus::read_lines;
use crate::eval::score::{bleu_signature, Bleu, Chrf, ScoreOptions};
use crate::eval::ScoreReport;
use anyhow::{bail, Context, Result};
use std::io::BufRead;

pub fn run(args: ScoreArgs) -> Result<()> {
    let refs = args.references.iter().map(|p| read_lines(p)).collect::<Result<Vec<_>>>()?;
    let (hyps, hyp_name) = match &args.hyp {
        Some(p) => (read_lines(p)?, p.display().to_string()),
        None => {
            let lines =
                std::io::stdin().lock().lines().collect::<std::io::Result<Vec<_>>>().context("reading stdin")?;
            (lines, "stdin".to_string())
        }
    };
    for (path, r) in args.references.iter().zip(&refs) {
        if r.len() != hyps.len() {
            bail!("{} has {} lines but {hyp_name} has {} lines", path.display(), r.len(), hyps.len());
        }
    }
    let opts = args.score.options();
    if args.sentence_level {
        return print_lines(&sentence_scores(&hyps, &refs, opts, args.json)?);
    }
    let report = ScoreReport::new(&hyps, &refs, opts);
    if args.json {
        print_lines(&[serde_json::to_string(&report)?])
    } else {
        print_lines(&[report.text()])
    }
}

/// One line (or JSON object) per sentence, then the signature in text mode.
fn sentence_scores(hyps: &[String], refs: &[Vec<String>], opts: ScoreOptions, json: bool) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(hyps.len() + 1);
    for (i, hyp) in hyps.iter().enumerate() {
        let r: Vec<&str> = refs.iter().map(|r| r[i].as_str()).collect();
        let bleu = Bleu::sentence(hyp, &r, opts);
        let single: Vec<Vec<String>> = refs.iter().map(|r| vec![r[i].clone()]).collect();
        let chrf = Chrf::corpus(std::slice::from_ref(hyp), &single, opts);
        out.push(if json {
            serde_json::to_string(&serde_json::json!({ "bleu": bleu.score, "chrf": chrf.score }))?
        } else {
            format!("{} chrF2 = {:.2}", bleu.line(), chrf.score)
        });
    }
    if !json {
        out.push(bleu_signature(refs.len(), opts, true));
    }
    Ok(out)
}
