//! One file per subcommand: glue between the CLI and the library. Only `cmd/` touches files and the
//! terminal.

mod average;
mod eval;
mod info;
// `nmt train --nproc N`.
mod launch;
mod memory;
mod score;
mod train;
mod translate;
// `nmt translate --attention`.
mod attention;
// Pictures (issue 13).
mod inspect;
mod plot;
// `nmt explain` (issue 13).
mod explain;

use crate::cli::{Cli, Command, DeviceArg, DeviceFlags, ModelFlags, SearchFlags};
use crate::config::{Config, DecodeConfig};
use crate::data::tokenizer::Tokenizer;
use crate::decode::{Search, Translator};
use crate::model::{init::ParamStore, Transformer};
use crate::run_dir::RunDir;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::Path;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Translate(a) => translate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Score(a) => score::run(a),
        Command::Info(a) => info::run(a),
        Command::Average(a) => average::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Explain(a) => explain::run(a),
    }
}

/// The device the flags ask for.
pub(crate) fn device(flags: &DeviceFlags) -> Result<Device> {
    device_at(flags, 0)
}

/// The device the flags ask for, GPU `ordinal` for `--device cuda` (a data-parallel rank's LOCAL_RANK).
pub(crate) fn device_at(flags: &DeviceFlags, ordinal: usize) -> Result<Device> {
    match flags.device {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Cuda if !candle_core::utils::cuda_is_available() => {
            bail!("--device cuda: this nmt was built without CUDA support (rebuild with `--features cuda`)")
        }
        DeviceArg::Cuda => {
            Device::new_cuda(ordinal).with_context(|| format!("--device cuda: cannot open GPU {ordinal}"))
        }
    }
}

/// A trained model loaded from its run directory.
pub(crate) struct Loaded {
    pub cfg: Config,
    pub tokenizer: Tokenizer,
    pub model: Transformer,
    pub device: Device,
}

impl Loaded {
    /// The run's `decode` section (checked when loading) with the command line's flags applied; a bad
    /// value can then only come from a flag, and the error names it.
    pub fn decode_config(&self, model: &ModelFlags, search: &SearchFlags) -> Result<DecodeConfig> {
        let mut d = self.cfg.decode.clone();
        let flag_error = |e: anyhow::Error| {
            let msg = e.to_string();
            let flags = [("decode.beam", "--beam"), ("decode.alpha", "--alpha"), ("decode.batch_size", "--batch-size")];
            match flags.iter().find_map(|(field, flag)| Some((flag, msg.strip_prefix(field)?))) {
                Some((flag, rest)) => anyhow::anyhow!("{flag}{rest}"),
                None => e,
            }
        };
        d.beam = search.beam.unwrap_or(d.beam);
        d.alpha = search.alpha.unwrap_or(d.alpha);
        d.batch_size = model.batch_size.unwrap_or(d.batch_size);
        d.validate().and_then(|_| d.validate_for_vocab(self.cfg.model.vocab_size)).map_err(flag_error)?;
        Ok(d)
    }

    /// A translator over this model with the decode settings of `decode` and the given search.
    pub fn translator(&self, decode: &DecodeConfig, search: Search) -> Translator<'_> {
        Translator::new(&self.model, &self.tokenizer, decode).with_search(search)
    }
}

/// Loads config.json, tokenizer.json and a checkpoint (the latest unless `--checkpoint`).
pub(crate) fn load_model(flags: &ModelFlags) -> Result<Loaded> {
    let run = RunDir::new(&flags.model);
    if !run.root.is_dir() {
        bail!("--model {}: not a run directory", run.root.display());
    }
    let cfg = Config::from_file(&run.config())?;
    let checks = cfg.model.validate().and_then(|_| cfg.decode.validate());
    (checks.and_then(|_| cfg.decode.validate_for_vocab(cfg.model.vocab_size)))
        .with_context(|| format!("invalid config {}", run.config().display()))?;
    let tokenizer = Tokenizer::load(&run.tokenizer())?;
    if tokenizer.vocab_size() != cfg.model.vocab_size {
        bail!(
            "{} has {} tokens but {} says model.vocab_size {}: they belong to different runs",
            run.tokenizer().display(),
            tokenizer.vocab_size(),
            run.config().display(),
            cfg.model.vocab_size
        );
    }
    let weights = match &flags.checkpoint {
        Some(p) if p.as_os_str() == "best" && !p.exists() => match run.best_weights()? {
            Some(best) => best,
            None => bail!("--checkpoint best: {} names no best checkpoint yet", run.best_info().display()),
        },
        Some(p) => p.clone(),
        None => match run.latest_step()? {
            Some(step) => run.weights(step),
            None => bail!("{} holds no checkpoint (train it first)", run.checkpoints().display()),
        },
    };
    memory::check(&cfg.model, memory::Use::Inference)?;
    let device = device(&flags.device)?;
    let store = ParamStore::new(0, &device);
    let model = Transformer::new(&cfg.model, store.var_builder())?;
    crate::weights::load_weights(&weights, &store)?;
    Ok(Loaded { cfg, tokenizer, model, device })
}

/// Writes lines to stdout.
pub(crate) fn print_lines(lines: &[String]) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for l in lines {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    Ok(())
}

/// Draws `picture` as `format` and writes it to `path` atomically, so a failure leaves no file behind.
pub(crate) fn save_picture(picture: &impl crate::viz::Picture, format: crate::viz::Format, path: &Path) -> Result<()> {
    let bytes = crate::viz::render(picture, format)?;
    crate::run_dir::write_atomic(path, &bytes)?;
    crate::log!("wrote {}", path.display());
    Ok(())
}
