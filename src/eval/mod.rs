//! Evaluation: teacher-forced loss and perplexity of references under a model, plus BLEU and chrF of
//! its translations (through [`score`], the only scorer).

pub mod score;

use crate::data::batch::{make_batches, Batch, Example};
use crate::data::tokenizer::Specials;
use crate::loss::projected_label_smoothed_cross_entropy;
use crate::model::init::Mode;
use crate::model::Transformer;
use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

/// Mean per-token cross-entropy (nats, no label smoothing, eos included) and its perplexity.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LossReport {
    pub loss: f64,
    pub ppl: f64,
    pub tokens: usize,
}

/// Teacher-forced loss of `examples` under `model`, batched by `batch_tokens`.
pub fn teacher_forced_loss(
    model: &Transformer,
    examples: &[Example],
    sp: Specials,
    batch_tokens: usize,
    device: &Device,
) -> Result<LossReport> {
    let (mut nll, mut tokens) = (0.0, 0usize);
    for idx in make_batches(examples, batch_tokens) {
        let refs: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let batch = Batch::new(&refs, sp, device)?;
        let hidden = model.forward_hidden(&batch.src, &batch.src_mask, &batch.tgt_in, &mut Mode::Eval)?;
        // Detached: no gradient is needed, so the fused loss computes none.
        let (hidden, projection) = (hidden.detach(), model.output_projection().detach());
        let l = projected_label_smoothed_cross_entropy(&hidden, &projection, &batch.tgt_out, sp.pad, 0.0)?;
        nll += l.nll_sum;
        tokens += l.tokens;
    }
    let loss = if tokens == 0 { 0.0 } else { nll / tokens as f64 };
    Ok(LossReport { loss, ppl: loss.exp(), tokens })
}

/// BLEU and chrF of hypotheses against references, with their signatures.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    pub bleu: f64,
    pub chrf: f64,
    pub signature: String,
    pub chrf_signature: String,
    pub bleu_line: String,
    pub chrf_line: String,
    pub precisions: [f64; 4],
    pub bp: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

impl ScoreReport {
    pub fn new(hyps: &[String], refs: &[Vec<String>], opts: score::ScoreOptions) -> Self {
        let bleu = score::Bleu::corpus(hyps, refs, opts);
        let chrf = score::Chrf::corpus(hyps, refs, opts);
        Self {
            bleu: bleu.score,
            chrf: chrf.score,
            signature: score::bleu_signature(refs.len(), opts, false),
            chrf_signature: score::chrf_signature(refs.len(), opts),
            bleu_line: bleu.line(),
            chrf_line: chrf.line(),
            precisions: bleu.precisions,
            bp: bleu.bp,
            sys_len: bleu.sys_len,
            ref_len: bleu.ref_len,
        }
    }

    /// Human-readable lines, sacreBLEU style.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n{}", self.bleu_line, self.signature, self.chrf_line, self.chrf_signature)
    }
}
