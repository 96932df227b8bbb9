//! `nmt eval`: translate a test set, then report loss, perplexity, BLEU and chrF.

use super::{load_model, print_lines};
use crate::cli::EvalArgs;
use crate::data::batch::Example;
use crate::data::corpus::read_pairs;
use crate::eval::{teacher_forced_loss, ScoreReport};
use crate::progress::Progress;
use crate::run_dir::write_atomic;
use anyhow::{bail, Result};

pub fn run(args: EvalArgs) -> Result<()> {
    let pairs = read_pairs(&args.src, &args.reference)?;
    if pairs.is_empty() {
        // Loss 0 and perplexity 1 of nothing would read as a perfect model.
        bail!("{}: the test set is empty (no line to translate)", args.src.display());
    }
    let m = load_model(&args.model)?;
    let max = m.cfg.model.max_positions - 2;
    let mut examples = Vec::with_capacity(pairs.len());
    for p in &pairs {
        let (mut src, mut tgt) = (m.tokenizer.encode(&p.src)?, m.tokenizer.encode(&p.tgt)?);
        src.truncate(max);
        tgt.truncate(max);
        examples.push(Example { src, tgt });
    }
    let loss = teacher_forced_loss(&m.model, &examples, m.tokenizer.specials, m.cfg.train.batch_tokens, &m.device)?;
    let decode = m.decode_config(&args.model, &args.search)?;
    let translator = m.translator(&decode, args.search.search(&decode, 1)?);
    let srcs: Vec<String> = pairs.iter().map(|p| p.src.clone()).collect();
    let refs: Vec<String> = pairs.iter().map(|p| p.tgt.clone()).collect();
    let progress = Progress::new(srcs.len() as u64, "sentences");
    let hyps = translator.translate(&srcs, |n| progress.inc(n as u64))?;
    progress.finish();
    if let Some(path) = &args.hyp_out {
        let mut text = hyps.join("\n");
        if !hyps.is_empty() {
            text.push('\n');
        }
        write_atomic(path, text.as_bytes())?;
    }
    let report = ScoreReport::new(&hyps, &[refs], args.score.options());
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["loss"] = loss.loss.into();
        v["ppl"] = loss.ppl.into();
        v["tokens"] = loss.tokens.into();
        v["sentences"] = pairs.len().into();
        print_lines(&[serde_json::to_string(&v)?])
    } else {
        let head =
            format!("loss = {:.4} ppl = {:.2} (teacher forced, {} target tokens)", loss.loss, loss.ppl, loss.tokens);
        print_lines(&[head, report.text()])
    }
}
