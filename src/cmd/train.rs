//! `nmt train`: resolve the config, read and tokenize the corpus, then hand over to the Trainer.

use crate::cli::TrainArgs;
use crate::config::Config;
use crate::data::batch::{tokenize_pairs, Example};
use crate::data::corpus::read_pairs;
use crate::data::tokenizer::Tokenizer;
use crate::dist::{self, Collective, World};
use crate::model::init::ParamStore;
use crate::model::{build, ParameterCounts};
use crate::rng::Rng;
use crate::run_dir::{write_atomic, RunDir};
use crate::train::checkpoint::{self, TrainState};
use crate::train::log::MetricsLog;
use crate::train::optim::Adam;
use crate::train::{StopReason, Summary, Trainer, ValidSet};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Config file + flags → a validated config (flags win).
fn resolve(args: &TrainArgs, run: &RunDir) -> Result<Config> {
    let mut cfg = if args.resume { Config::from_file(&run.config())? } else { Config::from_file(&args.config)? };
    let set = |slot: &mut Option<PathBuf>, flag: &Option<PathBuf>| {
        if let Some(p) = flag {
            *slot = Some(p.clone());
        }
    };
    set(&mut cfg.data.train_src, &args.train_src);
    set(&mut cfg.data.train_tgt, &args.train_tgt);
    set(&mut cfg.data.valid_src, &args.valid_src);
    set(&mut cfg.data.valid_tgt, &args.valid_tgt);
    if let Some(s) = args.seed {
        cfg.train.seed = s;
    }
    if let Some(m) = args.max_steps {
        cfg.train.max_steps = m;
    }
    if let Some(m) = args.max_minutes {
        cfg.train.max_minutes = m;
    }
    if let Some(n) = args.threads {
        cfg.train.threads = n;
    }
    let what = if args.resume { run.config() } else { args.config.clone() };
    cfg.validate().with_context(|| format!("invalid config {}", what.display()))?;
    Ok(cfg)
}

/// Where training starts: `(Some(step), _)` resumes the checkpoint at `step`; `(None, start_over)` is a fresh
/// run, which first clears an old run's checkpoints and metrics when `start_over`.
///
/// `--resume` continues the latest checkpoint and `--force` starts over. Without either, a directory that
/// holds a run continues it when the config is the one that made it (re-running the same command), and is
/// refused when the config differs. `model.vocab_size` (replaced by the size learned) and `train.max_steps`
/// (to extend a run) may differ.
fn start(args: &TrainArgs, run: &RunDir, cfg: &Config) -> Result<(Option<usize>, bool)> {
    if args.resume {
        return Ok((run.latest_step()?, false));
    }
    if args.force || !run.config().exists() {
        return Ok((None, args.force));
    }
    let stored = Config::from_file(&run.config())?;
    if let Some(field) = stored.differs_as_a_run(cfg)? {
        bail!(
            "{} already holds a different run ({field} differs): pass --resume to continue it or --force to start over",
            run.root.display()
        );
    }
    match run.latest_step()? {
        Some(step) => {
            crate::log!("{} already holds this run: continuing it", run.root.display());
            Ok((Some(step), false))
        }
        // The run never wrote a checkpoint: there is nothing to continue, and nothing to lose.
        None => Ok((None, true)),
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    if let Some(n) = args.nproc {
        return super::launch::run(n, args.device.device);
    }
    match World::from_env()? {
        None => train(&args, None),
        Some(world) => {
            if !world.is_leader() {
                crate::progress::set_quiet();
            }
            let (rank, size) = (world.rank, world.size);
            train(&args, Some(world)).with_context(|| format!("rank {rank} of {size}"))
        }
    }
}

/// Trains as the one process of a run (`world` None), or as one rank of a data-parallel run: rank 0 does
/// what a single process does (the config, the run directory, the tokenizer, the checkpoints) and hands
/// the config, the tokenizer, the weights and the training state to the other ranks.
fn train(args: &TrainArgs, world: Option<World>) -> Result<()> {
    let clock = Instant::now(); // the time budget counts the whole command: reading, BPE, checkpoints
                                // A rank catches Ctrl-C and SIGTERM from the start, so that a signal during the setup stops every rank
                                // together at their first update instead of killing one of them.
    let early_interrupt = world.as_ref().map(|_| interrupt_flag());
    let run = RunDir::new(out_dir(args));
    let device = super::device_at(&args.device, world.as_ref().map_or(0, |w| w.local_rank))?;
    let group = world.as_ref().map(|w| dist::join(w, &device)).transpose()?;
    let setup = match &group {
        Some(g) if g.size() > 1 => {
            let mine = (g.rank() == 0).then(|| lead(args, &run, &device));
            share_setup(g.as_ref(), &device, mine)?
        }
        _ => lead(args, &run, &device)?,
    };
    let Setup { cfg, data, resume_step } = setup;
    let (mut model, store) = build(&cfg.model, cfg.train.seed, &device)?;
    model.set_compute_dtype(cfg.train.dtype.compute_dtype());
    let t = &cfg.train;
    let mut adam = Adam::new(store.vars(), t.adam_beta1, t.adam_beta2, t.adam_eps)?;
    let mut state = initial_state(&run, &cfg, resume_step, &store, &mut adam)?;
    if let Some(g) = group.as_ref().filter(|g| g.size() > 1) {
        state = dist::share_run_state(g.as_ref(), &device, &mut adam, state)?;
    }
    report_model(&store, &cfg);
    if let Some(g) = group.as_ref().filter(|g| g.size() > 1) {
        crate::log!("data-parallel: {} processes, each computing its share of every batch", g.size());
    }
    let started = Instant::now();
    let mut trainer = Trainer {
        cfg: &cfg,
        model: &model,
        store: &store,
        adam,
        tokenizer: &data.tokenizer,
        device,
        run: run.clone(),
        state,
        train: data.train,
        valid: data.valid,
        interrupt: early_interrupt.unwrap_or_else(interrupt_flag),
        clock,
        group,
    };
    let summary = trainer.run()?;
    report_summary(&summary, started, &run);
    Ok(())
}

/// What training starts from: the resolved config, the tokenized corpus, and the checkpoint step to
/// resume from (None for a fresh run).
struct Setup {
    cfg: Config,
    data: Data,
    resume_step: Option<usize>,
}

/// The single process's (or rank 0's) setup: resolve and check the config, decide between a fresh run and
/// a resumed one, read the corpus, learn or load the tokenizer, and prepare the run directory.
fn lead(args: &TrainArgs, run: &RunDir, device: &Device) -> Result<Setup> {
    if args.resume && run.latest_step()?.is_none() {
        bail!("--resume: {} holds no checkpoint to resume from", run.root.display());
    }
    let mut cfg = resolve(args, run)?;
    crate::ops::cpu::set_threads(cfg.train.threads)?;
    let (resume_step, start_over) = start(args, run, &cfg)?;
    super::memory::check(&cfg.model, super::memory::Use::Training)?;
    if cfg.train.dtype == crate::config::Precision::Bf16 && !device.is_cuda() {
        bail!("train.dtype \"bf16\": mixed precision runs on CUDA only (--device cuda); on the CPU use \"f32\"");
    }
    let vocabulary = match resume_step {
        Some(_) => Vocabulary::Load(run.tokenizer()),
        None => Vocabulary::Learn,
    };
    let data = load_data(&cfg, vocabulary, true)?;
    cfg.model.vocab_size = data.tokenizer.vocab_size();
    if resume_step.is_none() {
        prepare_run_dir(run, &cfg, &data.tokenizer, start_over)?;
    }
    Ok(Setup { cfg, data, resume_step })
}

/// What rank 0 tells the other ranks before training: its config and a digest of its tokenized corpus
/// (every rank reads its own copy of the files), or that it failed.
#[derive(serde::Serialize, serde::Deserialize)]
enum Handshake {
    Ready { config: Box<Config>, pairs: usize, digest: u64 },
    Failed(String),
}

/// The token ids of every example, hashed: ranks that read different files disagree on it.
fn digest(train: &[Example]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new(); // fixed keys: the same in every process of one binary
    for e in train {
        (&e.src, &e.tgt).hash(&mut h);
    }
    h.finish()
}

/// A data-parallel run's setup on every rank: rank 0's (`mine`) as it is; on the others, rank 0's config and
/// tokenizer, and their own copy of the corpus tokenized with it (checked to be the same as rank 0's). The
/// other ranks neither validate nor touch the run directory. A failure on any rank fails them all.
fn share_setup(group: &dyn Collective, device: &Device, mine: Option<Result<Setup>>) -> Result<Setup> {
    let hello = mine.as_ref().map(|m| match m {
        Ok(s) => Handshake::Ready {
            config: Box::new(s.cfg.clone()),
            pairs: s.data.train.len(),
            digest: digest(&s.data.train),
        },
        Err(e) => Handshake::Failed(format!("{e:#}")),
    });
    let hello = hello.map(|h| serde_json::to_vec(&h)).transpose()?;
    let hello = dist::share_bytes(group, device, hello.as_deref(), "config")?;
    let mine = mine.transpose()?; // rank 0 stops here on its own error, after telling the others
    let (config, pairs, expected) = match serde_json::from_slice(&hello).context("reading rank 0's config")? {
        Handshake::Ready { config, pairs, digest } => (*config, pairs, digest),
        Handshake::Failed(error) => bail!("rank 0 failed: {error}"),
    };
    let tokenizer = mine.as_ref().map(|s| s.data.tokenizer.to_json()).transpose()?;
    let tokenizer = dist::share_bytes(group, device, tokenizer.as_ref().map(|t| t.as_bytes()), "tokenizer")?;
    if let Some(setup) = mine {
        return dist::all_ok(group, device, Ok(setup));
    }
    let follow = || -> Result<Setup> {
        let tokenizer = Tokenizer::from_json(&String::from_utf8_lossy(&tokenizer))?;
        crate::ops::cpu::set_threads(config.train.threads)?;
        let data = load_data(&config, Vocabulary::Given(Box::new(tokenizer)), false)?;
        if (data.train.len(), digest(&data.train)) != (pairs, expected) {
            bail!(
                "the training data differs from rank 0's ({} pairs here, {pairs} there, or other tokens): every \
                 process must read the same files",
                data.train.len()
            );
        }
        Ok(Setup { cfg: config.clone(), data, resume_step: None })
    };
    dist::all_ok(group, device, follow())
}

/// `--out`, or runs/<config file stem>.
fn out_dir(args: &TrainArgs) -> PathBuf {
    args.out.clone().unwrap_or_else(|| {
        let stem = args.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or("run".into());
        PathBuf::from("runs").join(stem)
    })
}

/// The tokenizer (learned for a new run, the run's own when resuming) and the tokenized corpus.
struct Data {
    tokenizer: Tokenizer,
    train: Vec<Example>,
    valid: Option<ValidSet>,
}

/// Where the tokenizer comes from.
enum Vocabulary {
    /// Learned from the training corpus (a new run).
    Learn,
    /// The run's own `tokenizer.json` (a resumed run).
    Load(PathBuf),
    /// Rank 0's, in a data-parallel run.
    Given(Box<Tokenizer>),
}

/// Reads the corpus, learns or loads the tokenizer, and tokenizes the training pairs and, `with_valid`,
/// the validation pairs.
fn load_data(cfg: &Config, vocabulary: Vocabulary, with_valid: bool) -> Result<Data> {
    let d = &cfg.data;
    let (train_src, train_tgt) = (d.train_src.clone().unwrap_or_default(), d.train_tgt.clone().unwrap_or_default());
    let pairs = read_pairs(&train_src, &train_tgt)?;
    let valid_pairs = match (&d.valid_src, &d.valid_tgt) {
        (Some(s), Some(t)) if with_valid => Some(read_pairs(s, t)?),
        _ => None,
    };
    let tokenizer = match vocabulary {
        Vocabulary::Load(path) => Tokenizer::load(&path)?,
        Vocabulary::Given(tokenizer) => *tokenizer,
        Vocabulary::Learn => {
            crate::log!("learning a joint BPE vocabulary of up to {} tokens", cfg.model.vocab_size);
            let texts = pairs.iter().flat_map(|p| [p.src.as_str(), p.tgt.as_str()]);
            Tokenizer::train(texts, cfg.model.vocab_size)?
        }
    };
    let (train, empty, long) = tokenize_pairs(&tokenizer, &pairs, d.max_len)?;
    crate::log!(
        "train: {} pairs used, {empty} skipped as empty, {long} skipped as longer than {} tokens",
        train.len(),
        d.max_len
    );
    if train.is_empty() {
        bail!("{} and {}: no usable sentence pair (all empty or too long)", train_src.display(), train_tgt.display());
    }
    let valid = match valid_pairs {
        Some(vp) => {
            let (examples, _, _) = tokenize_pairs(&tokenizer, &vp, cfg.model.max_positions - 2)?;
            Some(ValidSet {
                examples,
                src_lines: vp.iter().map(|p| p.src.clone()).collect(),
                ref_lines: vp.iter().map(|p| p.tgt.clone()).collect(),
            })
        }
        None => None,
    };
    Ok(Data { tokenizer, train, valid })
}

/// A new run's directory: an old run's checkpoints and metrics removed when starting over, then the
/// tokenizer and the resolved config written.
fn prepare_run_dir(run: &RunDir, cfg: &Config, tokenizer: &Tokenizer, start_over: bool) -> Result<()> {
    if start_over && run.root.exists() {
        for p in [run.checkpoints(), run.metrics()] {
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p).or_else(|e| if p.exists() { Err(e) } else { Ok(()) })
            }
            .with_context(|| format!("--force: cannot remove {}", p.display()))?;
        }
    }
    std::fs::create_dir_all(&run.root).with_context(|| format!("cannot create {}", run.root.display()))?;
    write_atomic(&run.tokenizer(), tokenizer.to_json()?.as_bytes())?;
    write_atomic(&run.config(), serde_json::to_string_pretty(cfg)?.as_bytes())
}

/// The training state to start from: the checkpoint's when resuming (after cleaning up an interrupted
/// save and trimming metrics past it), a fresh one otherwise.
fn initial_state(
    run: &RunDir,
    cfg: &Config,
    resume_step: Option<usize>,
    store: &ParamStore,
    adam: &mut Adam,
) -> Result<TrainState> {
    let Some(step) = resume_step else {
        return Ok(TrainState {
            step: 0,
            epoch: 0,
            cursor: 0,
            rng: Rng::seed(cfg.train.seed ^ 0x5EED),
            best: Default::default(),
            elapsed_sec: 0.0,
        });
    };
    let state = checkpoint::resume(run, step, store, adam)?;
    crate::log!("resuming from step {} (epoch {})", state.step, state.epoch + 1);
    let removed = checkpoint::remove_incomplete(run)?;
    if removed > 0 {
        crate::log!("removed {removed} file(s) of a checkpoint save that was interrupted");
    }
    MetricsLog::new(&run.metrics()).truncate_after(state.step)?;
    Ok(state)
}

fn report_model(store: &ParamStore, cfg: &Config) {
    let counts = ParameterCounts::from_store(store);
    crate::log!(
        "model: {} parameters ({} embeddings, {} encoder, {} decoder); vocabulary {}; threads {}",
        counts.total(),
        counts.embeddings,
        counts.encoder,
        counts.decoder,
        cfg.model.vocab_size,
        rayon::current_num_threads()
    );
}

fn report_summary(summary: &Summary, started: Instant, run: &RunDir) {
    let how = match summary.reason {
        StopReason::MaxSteps => "done",
        StopReason::MaxEpochs => "done (train.max_epochs reached)",
        StopReason::EarlyStopping => "stopped early (no improvement for train.patience validations)",
        StopReason::Interrupted => "interrupted",
        StopReason::TimeLimit => "stopped at the time limit (train.max_minutes)",
    };
    crate::log!(
        "{how}: {} steps, {} epochs in {:.0} s{}{}; model in {}",
        summary.steps,
        summary.epochs,
        started.elapsed().as_secs_f64(),
        summary.last_valid_bleu.map(|b| format!(", last valid BLEU {b:.2}")).unwrap_or_default(),
        match summary.skipped_updates {
            0 => String::new(),
            n => format!(", {n} updates skipped for non-finite values"),
        },
        run.root.display()
    );
    if summary.reason == StopReason::Interrupted {
        crate::log!(
            "checkpoint written at step {}; continue with: nmt train --out {} --resume",
            summary.steps,
            run.root.display()
        );
    }
}

/// A flag that Ctrl-C (SIGINT) and SIGTERM set, so that training checkpoints and stops cleanly. A second
/// signal is not caught specially: the flag is simply set again.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if let Err(e) = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst)) {
        crate::log!("warning: cannot catch Ctrl-C ({e}); an interrupt will stop training without a checkpoint");
    }
    flag
}
