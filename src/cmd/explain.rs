//! `nmt explain`: the walk-through of one sentence ([`crate::explain`]) as text, or as JSON with `--json`.

use super::load_model;
use crate::cli::{ExplainArgs, ModelFlags};
use crate::explain::{explain, text, Request};
use anyhow::Result;
use std::io::Write;

pub fn run(args: ExplainArgs) -> Result<()> {
    let flags = ModelFlags { model: args.model, checkpoint: args.checkpoint, batch_size: None, device: args.device };
    let m = load_model(&flags)?;
    let request = Request { token: args.token, layer: args.layer, head: Some(args.head) };
    let e = explain(&m.model, &m.cfg.model, &m.tokenizer, m.cfg.decode.max_len_extra, &args.sentence, &request)?;
    let out = if args.json { serde_json::to_string_pretty(&e)? + "\n" } else { text::render(&e) };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
