//! Training (paper §5): batches by token count, label-smoothed loss, Adam with the warmup schedule,
//! periodic validation (loss and greedy BLEU through the one scorer), checkpoints and metrics.
//!
//! Beyond the paper: gradient accumulation (`update_freq`), clipping by global norm (`clip_norm`),
//! skipping of updates with a non-finite loss or gradient, the best checkpoint by a validation metric,
//! early stopping, a clean stop on Ctrl-C / SIGTERM that writes a checkpoint first, and data-parallel
//! training over several processes ([`crate::dist`]): each computes its share of every batch, the
//! gradients are summed before the Adam step, and rank 0 validates, logs and writes checkpoints.

pub mod checkpoint;
pub mod early_stop;
pub mod gradients;
pub mod log;
pub mod optim;
pub mod schedule;

use crate::config::{BestMetric, Config};
use crate::data::batch::{epoch_order, make_batches, Example};
use crate::data::tokenizer::Tokenizer;
use crate::decode::Translator;
use crate::dist::{self, Collective};
use crate::eval::{teacher_forced_loss, ScoreReport};
use crate::model::init::ParamStore;
use crate::model::Transformer;
use crate::progress::Progress;
use crate::rng::Rng;
use crate::run_dir::RunDir;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use checkpoint::TrainState;
use early_stop::Verdict;
use log::{MetricsLog, TrainLine, ValidLine};
use optim::Adam;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The validation set: tokenized pairs for the loss, raw text for BLEU.
pub struct ValidSet {
    pub examples: Vec<Example>,
    pub src_lines: Vec<String>,
    pub ref_lines: Vec<String>,
}

pub struct Trainer<'a> {
    pub cfg: &'a Config,
    pub model: &'a Transformer,
    pub store: &'a ParamStore,
    pub adam: Adam,
    pub tokenizer: &'a Tokenizer,
    pub device: Device,
    pub run: RunDir,
    pub state: TrainState,
    pub train: Vec<Example>,
    pub valid: Option<ValidSet>,
    /// Set by a signal handler: finish the current update, checkpoint, stop.
    pub interrupt: Arc<AtomicBool>,
    /// When this process started working on the run (the time budget's clock, added to the time of
    /// earlier processes in `state.elapsed_sec`).
    pub clock: Instant,
    /// The processes of a data-parallel run (None: this process alone, with no all-reduce at all).
    pub group: Option<Box<dyn Collective>>,
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxSteps,
    MaxEpochs,
    EarlyStopping,
    Interrupted,
    /// `train.max_minutes` spent.
    TimeLimit,
}

impl StopReason {
    /// Every reason, in the order of the codes that data-parallel ranks exchange.
    const ALL: [StopReason; 5] =
        [Self::MaxSteps, Self::MaxEpochs, Self::EarlyStopping, Self::Interrupted, Self::TimeLimit];
}

/// What a finished run reports.
pub struct Summary {
    pub steps: usize,
    pub epochs: usize,
    pub last_valid_bleu: Option<f64>,
    pub skipped_updates: usize,
    pub reason: StopReason,
}

/// Running sums over one log interval.
#[derive(Default)]
struct Interval {
    loss_sum: f64,
    nll_sum: f64,
    tokens: usize,
    src_tokens: usize,
    start: Option<Instant>,
}

/// The batch order of the current epoch, recomputed only when the epoch changes.
struct EpochOrder {
    epoch: usize,
    order: Vec<usize>,
}

/// What the training loop carries from one update to the next.
struct Loop {
    metrics: MetricsLog,
    progress: Progress,
    started: Instant,
    interval: Interval,
    last_valid_bleu: Option<f64>,
    last_saved: Option<usize>,
    skipped_in_a_row: usize,
    skipped: usize,
    reason: StopReason,
}

impl Loop {
    fn new(run: &RunDir, max_steps: usize, step: usize, deadline: Option<Instant>) -> Self {
        let progress = Progress::with_deadline(max_steps as u64, "steps", deadline);
        progress.set_position(step as u64, String::new());
        Self {
            metrics: MetricsLog::new(&run.metrics()),
            progress,
            started: Instant::now(),
            interval: Interval::default(),
            last_valid_bleu: None,
            last_saved: None,
            skipped_in_a_row: 0,
            skipped: 0,
            reason: StopReason::MaxSteps,
        }
    }
}

impl Trainer<'_> {
    /// The next batch of the seeded order, moving to the next epoch at the end of one; None once
    /// `max_epochs` is done.
    fn next_batch(&mut self, batches: &[Vec<usize>], order: &mut Option<EpochOrder>) -> Option<usize> {
        let t = &self.cfg.train;
        loop {
            if t.max_epochs > 0 && self.state.epoch >= t.max_epochs {
                return None;
            }
            if order.as_ref().is_none_or(|o| o.epoch != self.state.epoch) {
                *order = Some(EpochOrder {
                    epoch: self.state.epoch,
                    order: epoch_order(batches.len(), t.seed, self.state.epoch),
                });
            }
            let o = order.as_ref().map(|o| &o.order)?;
            if let Some(&b) = o.get(self.state.cursor) {
                self.state.cursor += 1;
                return Some(b);
            }
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
    }

    fn lr(&self, step: usize) -> f64 {
        let t = &self.cfg.train;
        schedule::learning_rate(step, self.cfg.model.d_model, t.warmup_steps, t.lr_scale)
    }

    /// Whether this process validates, logs and writes the run directory (rank 0, or the only process).
    fn leader(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// One update over `batches` (example indices; this process computes its share of each); false when
    /// it was skipped for a non-finite loss or gradient.
    fn update(&mut self, batches: &[Vec<usize>], interval: &mut Interval) -> Result<bool> {
        let t = &self.cfg.train;
        let pad = self.tokenizer.specials.pad;
        let (rank, size) = self.group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
        let local = dist::local_batches(&self.train, batches, rank, size, self.tokenizer.specials, &self.device)?;
        // One process draws its dropout from the run's generator; several processes each draw from their
        // own stream of it (different masks on different shards), and the generator stays the same on all.
        let mut own;
        let rng = match size {
            1 => &mut self.state.rng,
            _ => {
                own = Rng::stream(self.state.rng.next_u64(), rank as u64);
                &mut own
            }
        };
        let mut g = gradients::accumulate(self.model, self.adam.params(), &local, pad, t.label_smoothing, rng)?;
        if let Some(group) = &self.group {
            dist::all_reduce_update(group.as_ref(), self.adam.params(), &mut g)?;
        }
        let norm = match t.clip_norm {
            0.0 => gradients::global_norm(&g.grads)?,
            max => gradients::clip_by_global_norm(&mut g.grads, max)?,
        };
        if !norm.is_finite() || !g.loss_sum.is_finite() {
            return Ok(false);
        }
        let lr = self.lr(self.state.step + 1);
        self.adam.step_with(&g.grads, lr)?;
        self.state.step += 1;
        interval.loss_sum += g.loss_sum;
        interval.nll_sum += g.nll_sum;
        interval.tokens += g.tokens;
        interval.src_tokens += g.src_tokens;
        Ok(true)
    }

    /// The next update's batches (`update_freq` of them, fewer at the end of the last epoch), as example
    /// indices: the same on every process of a data-parallel run.
    fn next_group(&mut self, batches: &[Vec<usize>], order: &mut Option<EpochOrder>) -> Vec<Vec<usize>> {
        let mut group = Vec::with_capacity(self.cfg.train.update_freq);
        while group.len() < self.cfg.train.update_freq {
            let Some(b) = self.next_batch(batches, order) else { break };
            group.push(batches[b].clone());
        }
        group
    }

    /// The reason every process stops for: rank 0's (its validation and its clock decide), or an
    /// interrupt that reached any process. Alone, `reason` itself.
    fn agree(&self, reason: StopReason) -> Result<StopReason> {
        let Some(group) = self.group.as_ref().filter(|g| g.size() > 1) else { return Ok(reason) };
        let code = StopReason::ALL.iter().position(|&r| r == reason).unwrap_or(0);
        let mine =
            [if group.rank() == 0 { code as f64 } else { 0.0 }, self.interrupt.load(Ordering::SeqCst) as u8 as f64];
        let sum = group.all_reduce_sum(&Tensor::new(&mine, &self.device)?)?.to_vec1::<f64>()?;
        Ok(match StopReason::ALL.get(sum[0] as usize) {
            Some(&StopReason::MaxSteps) | None if sum[1] > 0.0 => StopReason::Interrupted,
            Some(&r) => r,
            None => reason,
        })
    }

    /// Trains until `max_steps`, `max_epochs`, early stopping or an interrupt, then writes a final
    /// checkpoint.
    pub fn run(&mut self) -> Result<Summary> {
        let t = self.cfg.train.clone();
        let batches = make_batches(&self.train, t.batch_tokens);
        let before = self.state.elapsed_sec; // seconds spent by earlier processes
        let left = t.max_minutes * 60.0 - before - self.clock.elapsed().as_secs_f64();
        let deadline = (t.max_minutes > 0.0).then(|| Instant::now() + Duration::from_secs_f64(left.max(0.0)));
        let mut lp = Loop::new(&self.run, t.max_steps, self.state.step, deadline);
        let mut order = None;
        while self.state.step < t.max_steps {
            if t.max_minutes > 0.0 && before >= t.max_minutes * 60.0 {
                // A run resumed with nothing left of its budget: stop before another update.
                lp.reason = StopReason::TimeLimit;
                lp.last_saved = Some(self.state.step);
                break;
            }
            let group = self.next_group(&batches, &mut order);
            if group.is_empty() {
                lp.reason = StopReason::MaxEpochs;
                break;
            }
            lp.interval.start.get_or_insert_with(Instant::now);
            if !self.update(&group, &mut lp.interval)? {
                self.skipped(&mut lp)?;
                continue;
            }
            lp.skipped_in_a_row = 0;
            self.log_when_due(&mut lp)?;
            self.validate_when_due(&mut lp)?;
            self.state.elapsed_sec = before + self.clock.elapsed().as_secs_f64();
            if lp.reason == StopReason::MaxSteps && self.out_of_time() {
                lp.reason = StopReason::TimeLimit;
            }
            if lp.reason == StopReason::MaxSteps && self.interrupt.load(Ordering::SeqCst) {
                lp.reason = StopReason::Interrupted;
            }
            lp.reason = self.agree(lp.reason)?;
            let step = self.state.step;
            if step.is_multiple_of(t.checkpoint_every) || lp.reason != StopReason::MaxSteps {
                self.save()?;
                lp.last_saved = Some(step);
            }
            if lp.reason != StopReason::MaxSteps {
                break;
            }
        }
        lp.progress.finish();
        self.state.elapsed_sec = before + self.clock.elapsed().as_secs_f64();
        if lp.last_saved != Some(self.state.step) {
            self.save()?;
        }
        Ok(Summary {
            steps: self.state.step,
            epochs: self.state.epoch,
            last_valid_bleu: lp.last_valid_bleu,
            skipped_updates: lp.skipped,
            reason: lp.reason,
        })
    }

    /// Whether `train.max_minutes` (0: no limit) is spent, by the last recorded `state.elapsed_sec`.
    fn out_of_time(&self) -> bool {
        let budget = self.cfg.train.max_minutes;
        budget > 0.0 && self.state.elapsed_sec >= budget * 60.0
    }

    /// Counts an update skipped for a non-finite loss or gradient; too many in a row end the run.
    fn skipped(&self, lp: &mut Loop) -> Result<()> {
        lp.skipped += 1;
        lp.skipped_in_a_row += 1;
        lp.progress.println(&format!("step {}: non-finite loss or gradient, update skipped", self.state.step + 1));
        if lp.skipped_in_a_row >= self.cfg.train.max_skipped_steps {
            bail!(
                "{} updates in a row had a non-finite loss or gradient after step {}: stopped without saving them \
                 (lower train.lr_scale, set train.clip_norm, or check the data)",
                lp.skipped_in_a_row,
                self.state.step
            );
        }
        Ok(())
    }

    /// Every `log_every` steps (and at the last): a metrics line, the progress bar or a log line (rank 0).
    fn log_when_due(&self, lp: &mut Loop) -> Result<()> {
        let (t, step) = (&self.cfg.train, self.state.step);
        if !(step.is_multiple_of(t.log_every) || step == t.max_steps) {
            return Ok(());
        }
        if !self.leader() {
            lp.interval = Interval::default();
            return Ok(());
        }
        let line = self.train_line(&lp.interval, lp.started);
        let mut msg = format!("loss {:.3} lr {:.2e} {:.0} tok/s", line.loss, line.lr, line.tgt_tokens_per_sec);
        if t.max_minutes > 0.0 {
            let left = (t.max_minutes * 60.0 - self.state.elapsed_sec).max(0.0) as u64;
            msg.push_str(&format!(" time left {}:{:02}:{:02}", left / 3600, left / 60 % 60, left % 60));
        }
        lp.progress.set_position(step as u64, msg.clone());
        if !lp.progress.is_bar() {
            lp.progress.println(&format!("step {step}/{} epoch {} {msg}", t.max_steps, line.epoch));
        }
        lp.metrics.write(&line)?;
        lp.interval = Interval::default();
        Ok(())
    }

    /// Every `valid_every` steps: validate, log, keep the best checkpoint, and stop early when patience
    /// runs out.
    fn validate_when_due(&mut self, lp: &mut Loop) -> Result<()> {
        let (cfg, step) = (self.cfg, self.state.step);
        let t = &cfg.train;
        if t.valid_every == 0 || !step.is_multiple_of(t.valid_every) {
            return Ok(());
        }
        let Some(v) = self.validate(lp.started)? else { return Ok(()) };
        lp.progress.println(&format!(
            "step {step}: valid loss {:.3} ppl {:.2} BLEU {:.2} chrF2 {:.2}",
            v.valid_loss, v.valid_ppl, v.valid_bleu, v.valid_chrf
        ));
        lp.last_valid_bleu = Some(v.valid_bleu);
        lp.metrics.write(&v)?;
        let (name, value) = match t.best_metric {
            BestMetric::Loss => ("loss", v.valid_loss),
            BestMetric::Bleu => ("bleu", v.valid_bleu),
        };
        match self.state.best.observe(t.best_metric, value, step, t.patience) {
            Verdict::Improved => checkpoint::save_best(&self.run, self.store, step, name, value)?,
            Verdict::NotImproved => {}
            Verdict::Stop => lp.reason = StopReason::EarlyStopping,
        }
        Ok(())
    }

    /// A checkpoint (rank 0 writes it; the other ranks hold the same weights).
    fn save(&self) -> Result<()> {
        if !self.leader() {
            return Ok(());
        }
        // The metrics of the steps up to this checkpoint become durable before the checkpoint does.
        MetricsLog::new(&self.run.metrics()).sync()?;
        checkpoint::save(&self.run, self.store, &self.adam, &self.state)?;
        checkpoint::prune(&self.run, self.cfg.train.keep_last)
    }

    fn train_line(&self, iv: &Interval, started: Instant) -> TrainLine {
        let secs = iv.start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0).max(1e-9);
        let tokens = iv.tokens.max(1) as f64;
        TrainLine {
            kind: "train",
            step: self.state.step,
            epoch: self.state.epoch + 1,
            loss: iv.loss_sum / tokens,
            nll: iv.nll_sum / tokens,
            lr: self.lr(self.state.step),
            src_tokens_per_sec: iv.src_tokens as f64 / secs,
            tgt_tokens_per_sec: iv.tokens as f64 / secs,
            elapsed_sec: started.elapsed().as_secs_f64(),
        }
    }

    /// Loss on the whole valid set and BLEU of translations of (a prefix of) it, made with the `decode`
    /// section's validation settings (greedy by default).
    pub fn validate(&self, started: Instant) -> Result<Option<ValidLine>> {
        let Some(v) = &self.valid else { return Ok(None) };
        let t = &self.cfg.train;
        let loss = teacher_forced_loss(self.model, &v.examples, self.tokenizer.specials, t.batch_tokens, &self.device)?;
        let n = match t.valid_bleu_sentences {
            0 => v.src_lines.len(),
            n => n.min(v.src_lines.len()),
        };
        let translator = Translator::new(self.model, self.tokenizer, &self.cfg.decode.for_validation());
        let hyps = translator.translate(&v.src_lines[..n], |_| {})?;
        let report = ScoreReport::new(&hyps, &[v.ref_lines[..n].to_vec()], Default::default());
        Ok(Some(ValidLine {
            kind: "valid",
            step: self.state.step,
            epoch: self.state.epoch + 1,
            valid_loss: loss.loss,
            valid_ppl: loss.ppl,
            valid_bleu: report.bleu,
            valid_chrf: report.chrf,
            elapsed_sec: started.elapsed().as_secs_f64(),
        }))
    }
}
