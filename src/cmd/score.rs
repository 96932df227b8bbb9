//! `nmt score`: BLEU and chrF of hypotheses against one or more references.

use super::print_lines;
use crate::cli::ScoreArgs;
use crate::data::corpus::read_lines;
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
    let report = ScoreReport::new(&hyps, &refs, args.score.options());
    if args.json {
        print_lines(&[serde_json::to_string(&report)?])
    } else {
        print_lines(&[report.text()])
    }
}
