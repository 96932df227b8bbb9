//! The command line (clap derive). Doc comments here are the `--help` text.

use crate::config::DecodeConfig;
use crate::decode::{sample::SampleSettings, Search};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Train, run and understand Transformer translation models ("Attention Is All You Need").
#[derive(Debug, Parser)]
#[command(name = "nmt", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model on a parallel corpus (defaults: configs/demo.json → runs/demo).
    Train(TrainArgs),
    /// Translate sentences from the arguments, a file, or stdin (one per line).
    Translate(TranslateArgs),
    /// Loss, perplexity, BLEU and chrF of a model on a test set.
    Eval(EvalArgs),
    /// BLEU and chrF of hypotheses against references (no model).
    Score(ScoreArgs),
    /// Parameter counts of a config, per component.
    Info(InfoArgs),
    /// Average the weights of a run's last K checkpoints into a new checkpoint (paper §6.1).
    Average(AverageArgs),
    /// Plot training and validation loss, validation BLEU and the learning rate from a run's metrics.jsonl.
    Plot(PlotArgs),
    /// Pictures of the model's parts: `nmt inspect positional-encoding`.
    Inspect(InspectArgs),
    /// Walk one sentence through a trained model in the paper's order, with the model's own numbers:
    /// embeddings and positional encoding, one token's self-attention step by step, every head, residual
    /// and LayerNorm, the feed-forward network, and greedy decoding with the top 5 next tokens.
    Explain(ExplainArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// Flags every model-running command shares.
#[derive(Debug, Args)]
pub struct DeviceFlags {
    /// Where to run: cpu, or cuda (needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Config file (JSON).
    #[arg(long, default_value = "configs/demo.json")]
    pub config: PathBuf,
    /// Run directory; defaults to runs/<config file stem>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the run directory's latest checkpoint, with the run's own config.json plus any flags.
    /// (Re-running the command that made a run continues it too; a different config is refused.)
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Start over in a run directory that already holds a run (its checkpoints and metrics are deleted).
    #[arg(long)]
    pub force: bool,
    /// Overrides train.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Overrides train.max_steps.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Overrides train.max_minutes: stop with a checkpoint after this many minutes (fractions allowed).
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Overrides train.threads: worker threads for training (0: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Overrides data.train_src.
    #[arg(long)]
    pub train_src: Option<PathBuf>,
    /// Overrides data.train_tgt.
    #[arg(long)]
    pub train_tgt: Option<PathBuf>,
    /// Overrides data.valid_src.
    #[arg(long)]
    pub valid_src: Option<PathBuf>,
    /// Overrides data.valid_tgt.
    #[arg(long)]
    pub valid_tgt: Option<PathBuf>,
    /// Data-parallel training with N processes on this machine (rank i on GPU i with --device cuda): each
    /// computes its share of every batch, and the gradients are summed before every update, with NCCL on
    /// GPUs (a build with `--features nccl`) and over TCP on the CPU. Across machines, start one `nmt train`
    /// per GPU with torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (docs/SCALING.md).
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    #[command(flatten)]
    pub device: DeviceFlags,
}

/// Flags that locate a trained model.
#[derive(Debug, Args)]
pub struct ModelFlags {
    /// Run directory written by `nmt train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Checkpoint weights to use; defaults to the run's latest. `best` is the best validation's weights
    /// (the file that checkpoints/best.json names).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Sentences per decoding batch [default: the run's decode.batch_size, 32 unless set].
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[command(flatten)]
    pub device: DeviceFlags,
}

/// How to search for translations.
#[derive(Debug, Args)]
pub struct SearchFlags {
    /// Beam size; 1 is greedy search [default: the run's decode.beam, 4 unless set].
    #[arg(long)]
    pub beam: Option<usize>,
    /// Length-penalty exponent α of ((5 + |Y|) / 6)^α [default: the run's decode.alpha, 0.6 unless set].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Sample each token instead of searching (for back-translation); --beam is then ignored.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature (with --sample).
    #[arg(long, default_value_t = 1.0, requires = "sample")]
    pub temperature: f64,
    /// Sample among the k most probable tokens only; 0 means all (with --sample).
    #[arg(long, default_value_t = 0, requires = "sample")]
    pub top_k: usize,
    /// Seed of the sampling RNG (with --sample).
    #[arg(long, default_value_t = 1, requires = "sample")]
    pub sample_seed: u64,
}

impl SearchFlags {
    /// The search to run: sampling with `--sample`, otherwise the search of `decode` (the run's config
    /// with these flags applied) returning `nbest` hypotheses.
    pub fn search(&self, decode: &DecodeConfig, nbest: usize) -> anyhow::Result<Search> {
        if self.sample {
            if !(self.temperature > 0.0 && self.temperature.is_finite()) {
                anyhow::bail!("--temperature must be a positive number, got {}", self.temperature);
            }
            let s = SampleSettings { temperature: self.temperature, top_k: self.top_k, seed: self.sample_seed };
            return Ok(Search::Sample(s));
        }
        Ok(Search::new(decode, nbest))
    }
}

#[derive(Debug, Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub search: SearchFlags,
    /// Print the K best hypotheses per input as `INDEX ||| TRANSLATION ||| SCORE` lines (Moses n-best
    /// format; INDEX counts inputs from 0; SCORE is the length-normalised log-probability). K ≤ --beam.
    #[arg(long, conflicts_with = "sample")]
    pub nbest: Option<usize>,
    /// Read sentences from this file instead of stdin.
    #[arg(long, conflicts_with = "text")]
    pub input: Option<PathBuf>,
    /// Also draw every attention map of each sentence and its translation (encoder self-attention,
    /// decoder self-attention and encoder-decoder attention per layer and head, and the alignment) into
    /// this directory, with an index.html that shows them all.
    #[arg(long, value_name = "DIR")]
    pub attention: Option<PathBuf>,
    /// Format of the --attention pictures: svg (the default) or png.
    #[arg(long, value_enum, requires = "attention")]
    pub format: Option<crate::viz::Format>,
    /// Sentences to translate; without them, lines are read from --input or stdin.
    pub text: Vec<String>,
}

/// How BLEU and chrF are computed (sacreBLEU's options).
#[derive(Debug, Args)]
pub struct ScoreFlags {
    /// BLEU tokenizer, as sacreBLEU's --tokenize.
    #[arg(long, value_enum, default_value = "13a")]
    pub tokenize: crate::eval::score::Tokenize,
    /// Case-insensitive BLEU and chrF.
    #[arg(long)]
    pub lowercase: bool,
}

impl ScoreFlags {
    pub fn options(&self) -> crate::eval::score::ScoreOptions {
        crate::eval::score::ScoreOptions { tokenize: self.tokenize, lowercase: self.lowercase }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub search: SearchFlags,
    /// Source side of the test set.
    #[arg(long)]
    pub src: PathBuf,
    /// Reference translations, line-aligned with --src.
    #[arg(long = "ref")]
    pub reference: PathBuf,
    /// Also write the translations to this file.
    #[arg(long)]
    pub hyp_out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub score: ScoreFlags,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reference file; repeat for several references.
    #[arg(long = "ref", required = true)]
    pub references: Vec<PathBuf>,
    /// Hypotheses; stdin when absent.
    #[arg(long)]
    pub hyp: Option<PathBuf>,
    /// One score per sentence (BLEU with effective order, as sacreBLEU's sentence_bleu) instead of the
    /// corpus score.
    #[arg(long)]
    pub sentence_level: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub score: ScoreFlags,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Config file (JSON).
    #[arg(long, default_value = "configs/demo.json")]
    pub config: PathBuf,
    /// Vocabulary size to count with (defaults to model.vocab_size).
    #[arg(long)]
    pub vocab: Option<usize>,
}

#[derive(Debug, Args)]
pub struct AverageArgs {
    /// Run directory written by `nmt train`.
    #[arg(long)]
    pub model: PathBuf,
    /// How many of the newest checkpoints to average (the paper averages the last 5 or 20).
    #[arg(long, default_value_t = 5)]
    pub last: usize,
    /// Where to write the averaged weights; defaults to <model>/checkpoints/average-last<K>.safetensors.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

// Pictures (issue 13): `nmt plot` and `nmt inspect`.

/// The format of a picture.
#[derive(Debug, Args)]
pub struct PictureFlags {
    /// svg or png. Without it, an output file named *.png gets png, and anything else svg.
    #[arg(long, value_enum)]
    pub format: Option<crate::viz::Format>,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directory written by `nmt train`; its metrics.jsonl is read.
    #[arg(long)]
    pub model: PathBuf,
    /// Picture to write; defaults to <model>/metrics.svg (metrics.png with --format png).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub picture: PictureFlags,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectCommand,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// The sinusoidal positional encoding (paper §3.5) as a heatmap: positions down, dimensions across.
    PositionalEncoding(PositionalEncodingArgs),
}

#[derive(Debug, Args)]
pub struct PositionalEncodingArgs {
    /// Number of positions (rows), counted from 0.
    #[arg(long, default_value_t = 50)]
    pub positions: usize,
    /// Model width: the number of dimensions (columns); even.
    #[arg(long, default_value_t = 512)]
    pub d_model: usize,
    /// Column order: the model's (interleaved), or all sines then all cosines (halves).
    #[arg(long, value_enum, default_value = "interleaved")]
    pub layout: crate::viz::positional_encoding::Layout,
    /// Picture to write.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub picture: PictureFlags,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Run directory written by `nmt train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Checkpoint weights to use; defaults to the run's latest (`best`: the best validation's).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The source piece whose self-attention is shown: a piece index counted from 0, or the piece's text
    /// (its leading ▁ optional) [default: the last piece that is not punctuation].
    #[arg(long)]
    pub token: Option<String>,
    /// Encoder layer, counted from 0 [default: the last].
    #[arg(long)]
    pub layer: Option<usize>,
    /// Attention head, counted from 0.
    #[arg(long, default_value_t = 0)]
    pub head: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The sentence to explain.
    pub sentence: String,
    #[command(flatten)]
    pub device: DeviceFlags,
}
