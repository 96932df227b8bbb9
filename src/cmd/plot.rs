//! `nmt plot`: a run's training curves (loss, BLEU, learning rate) from its metrics.jsonl.

use super::save_picture;
use crate::cli::PlotArgs;
use crate::run_dir::RunDir;
use crate::viz::curves::{Curves, Metrics};
use crate::viz::Format;
use anyhow::{Context, Result};

pub fn run(args: PlotArgs) -> Result<()> {
    let run = RunDir::new(&args.model);
    let path = run.metrics();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let metrics = Metrics::parse(&text).with_context(|| format!("{}", path.display()))?;
    let (output, format) = match args.output {
        Some(out) => {
            let format = Format::resolve(args.picture.format, &out);
            (out, format)
        }
        None => {
            let format = args.picture.format.unwrap_or(Format::Svg);
            (run.root.join(format!("metrics.{}", format.extension())), format)
        }
    };
    let curves = Curves { title: format!("Training curves of {}", run.root.display()), metrics };
    save_picture(&curves, format, &output)
}
