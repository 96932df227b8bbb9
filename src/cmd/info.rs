//! `nmt info`: what a config builds, with parameter counts per component.

use super::print_lines;
use crate::cli::InfoArgs;
use crate::config::Config;
use crate::model::count_parameters;
use anyhow::{Context, Result};

pub fn run(args: InfoArgs) -> Result<()> {
    let mut cfg = Config::from_file(&args.config)?;
    if let Some(v) = args.vocab {
        cfg.model.vocab_size = v;
    }
    // Within the config's bounds every count fits in 64 bits; a `--vocab` beyond them is named as the flag.
    if let Err(e) = cfg.model.validate() {
        let msg = e.to_string();
        return match (args.vocab, msg.strip_prefix("model.vocab_size")) {
            (Some(_), Some(rest)) => Err(anyhow::anyhow!("--vocab{rest}")),
            _ => Err(e).with_context(|| format!("invalid config {}", args.config.display())),
        };
    }
    let m = &cfg.model;
    let c = count_parameters(m);
    let millions = |n: usize| format!("{:>12} ({:.2}M)", n, n as f64 / 1e6);
    print_lines(&[
        format!(
            "{}: N = {}/{} layers, d_model = {}, d_ff = {}, h = {}, vocab = {}, tied = {}, norm = {:?}",
            args.config.display(),
            m.encoder_layers,
            m.decoder_layers,
            m.d_model,
            m.d_ff,
            m.heads,
            m.vocab_size,
            m.tie_embeddings,
            m.norm
        ),
        format!("embeddings {}", millions(c.embeddings)),
        format!("encoder    {}", millions(c.encoder)),
        format!("decoder    {}", millions(c.decoder)),
        format!("total      {}", millions(c.total())),
    ])
}
