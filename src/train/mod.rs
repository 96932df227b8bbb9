//! Training (paper §5): batches by token count, label-smoothed loss, Adam with the warmup schedule,
//! periodic validation (loss and greedy BLEU through the one scorer), checkpoints and metrics.

pub mod checkpoint;
pub mod log;
pub mod loss;
pub mod optim;
pub mod schedule;

use crate::config::Config;
use crate::data::batch::{epoch_order, make_batches, Batch, Example};
use crate::data::tokenizer::Tokenizer;
use crate::decode::{Search, Translator};
use crate::eval::{teacher_forced_loss, ScoreReport};
use crate::model::init::{Mode, ParamStore};
use crate::model::Transformer;
use crate::progress::Progress;
use crate::run_dir::RunDir;
use anyhow::{bail, Result};
use candle_core::Device;
use checkpoint::TrainState;
use log::{MetricsLog, TrainLine, ValidLine};
use optim::Adam;
use std::time::Instant;

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

/// What a finished run reports.
pub struct Summary {
    pub steps: usize,
    pub epochs: usize,
    pub last_valid_bleu: Option<f64>,
}

impl Trainer<'_> {
    /// One update on one batch; returns (smoothed loss sum, nll sum, target tokens).
    fn step(&mut self, batch: &Batch) -> Result<(f64, f64, usize)> {
        let t = &self.cfg.train;
        let mut mode = Mode::Train { rng: &mut self.state.rng };
        let logits = self.model.forward(&batch.src, &batch.src_mask, &batch.tgt_in, &mut mode)?;
        let l = loss::label_smoothed_cross_entropy(
            &logits,
            &batch.tgt_out,
            self.tokenizer.specials.pad,
            t.label_smoothing,
        )?;
        let loss_value = l.loss.to_dtype(candle_core::DType::F64)?.to_vec0::<f64>()?;
        if !loss_value.is_finite() {
            bail!("loss became {loss_value} at step {}: lower train.lr_scale or check the data", self.state.step + 1);
        }
        let grads = l.loss.backward()?;
        let lr = self.lr(self.state.step + 1);
        self.adam.step(&grads, lr)?;
        Ok((loss_value * l.tokens as f64, l.nll_sum, l.tokens))
    }

    fn lr(&self, step: usize) -> f64 {
        let t = &self.cfg.train;
        schedule::learning_rate(step, self.cfg.model.d_model, t.warmup_steps, t.lr_scale)
    }

    /// Trains until `train.max_steps` (or `train.max_epochs`), then writes a final checkpoint.
    pub fn run(&mut self) -> Result<Summary> {
        let t = self.cfg.train.clone();
        let batches = make_batches(&self.train, t.batch_tokens);
        let metrics = MetricsLog::new(&self.run.metrics());
        let progress = Progress::new(t.max_steps as u64, "steps");
        let started = Instant::now();
        let mut interval = Interval::default();
        let mut last_valid_bleu = None;
        let mut last_saved = None;
        'epochs: while self.state.step < t.max_steps && (t.max_epochs == 0 || self.state.epoch < t.max_epochs) {
            let order = epoch_order(batches.len(), t.seed, self.state.epoch);
            while self.state.cursor < order.len() {
                let idx = &batches[order[self.state.cursor]];
                let examples: Vec<&Example> = idx.iter().map(|&i| &self.train[i]).collect();
                let batch = Batch::new(&examples, self.tokenizer.specials, &self.device)?;
                interval.start.get_or_insert_with(Instant::now);
                let (loss_sum, nll_sum, tokens) = self.step(&batch)?;
                self.state.cursor += 1;
                self.state.step += 1;
                interval.loss_sum += loss_sum;
                interval.nll_sum += nll_sum;
                interval.tokens += tokens;
                interval.src_tokens += batch.src_tokens;
                let step = self.state.step;
                if step.is_multiple_of(t.log_every) || step == t.max_steps {
                    let line = self.train_line(&interval, started);
                    let msg = format!("loss {:.3} lr {:.2e} {:.0} tok/s", line.loss, line.lr, line.tgt_tokens_per_sec);
                    progress.set_position(step as u64, msg.clone());
                    if !progress.is_bar() {
                        progress.println(&format!("step {step}/{} epoch {} {msg}", t.max_steps, line.epoch));
                    }
                    metrics.write(&line)?;
                    interval = Interval::default();
                }
                if t.valid_every > 0 && step.is_multiple_of(t.valid_every) {
                    if let Some(v) = self.validate(started)? {
                        progress.println(&format!(
                            "step {step}: valid loss {:.3} ppl {:.2} BLEU {:.2} chrF2 {:.2}",
                            v.valid_loss, v.valid_ppl, v.valid_bleu, v.valid_chrf
                        ));
                        last_valid_bleu = Some(v.valid_bleu);
                        metrics.write(&v)?;
                    }
                }
                if step.is_multiple_of(t.checkpoint_every) {
                    checkpoint::save(&self.run, self.store, &self.adam, &self.state)?;
                    last_saved = Some(step);
                }
                if step >= t.max_steps {
                    break 'epochs;
                }
            }
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
        progress.finish();
        if last_saved != Some(self.state.step) {
            checkpoint::save(&self.run, self.store, &self.adam, &self.state)?;
        }
        Ok(Summary { steps: self.state.step, epochs: self.state.epoch, last_valid_bleu })
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

    /// Loss on the whole valid set and BLEU of greedy translations of (a prefix of) it.
    pub fn validate(&self, started: Instant) -> Result<Option<ValidLine>> {
        let Some(v) = &self.valid else { return Ok(None) };
        let t = &self.cfg.train;
        let loss = teacher_forced_loss(self.model, &v.examples, self.tokenizer.specials, t.batch_tokens, &self.device)?;
        let n = match t.valid_bleu_sentences {
            0 => v.src_lines.len(),
            n => n.min(v.src_lines.len()),
        };
        let translator = Translator {
            model: self.model,
            tokenizer: self.tokenizer,
            device: self.device.clone(),
            max_positions: self.cfg.model.max_positions,
            batch_size: 64,
            search: Search::Greedy,
        };
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
