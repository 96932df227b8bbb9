//! Beam search (paper §6.1: beam size 4, length penalty α = 0.6), batched over sentences, decoding
//! incrementally with the KV cache.
//!
//! Hypotheses are ranked by log-probability while searching and by the GNMT length-normalised score
//! log P(Y) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^α (Wu et al., 2016; |Y| counts `</s>`), when finished.
//! At every step each sentence's 2K best extensions are ranked; an extension ending in `</s>` that ranks
//! among the top K becomes a finished hypothesis, and the best K others stay live. A sentence stops when
//! its n-best finished hypotheses are final: no live hypothesis can still beat them, since a live
//! log-probability only falls and its length penalty is at most lp(limit). Finished sentences leave the
//! batch, so they stop costing work.

use super::{length_penalty, DecodeContext, Hypothesis};
use crate::data::tokenizer::Specials;
use candle_core::{DType, Result, Tensor, D};

/// Beam size, length-penalty exponent and how many hypotheses to return per sentence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamSettings {
    pub beam: usize,
    pub alpha: f64,
    pub nbest: usize,
}

struct Live {
    tokens: Vec<u32>,
    log_prob: f64,
    /// This hypothesis's row in the current decoder batch.
    row: usize,
}

struct Sentence {
    live: Vec<Live>,
    finished: Vec<Hypothesis>,
    limit: usize,
}

impl Sentence {
    /// Ranks the extensions of the live hypotheses, given each row's next-token log-probabilities.
    /// Returns the new live hypotheses (their `row` still names the parent's row).
    fn extend(&mut self, log_probs: &[Vec<f32>], step: usize, k: usize, alpha: f64, sp: Specials) -> Vec<Live> {
        let mut cands: Vec<(f64, usize, u32)> = Vec::with_capacity(self.live.len() * log_probs[0].len());
        for (hi, h) in self.live.iter().enumerate() {
            for (v, &lp) in log_probs[h.row].iter().enumerate() {
                cands.push((h.log_prob + lp as f64, hi, v as u32));
            }
        }
        let take = (2 * k).min(cands.len());
        let by_score = |a: &(f64, usize, u32), b: &(f64, usize, u32)| b.0.total_cmp(&a.0);
        if take < cands.len() {
            cands.select_nth_unstable_by(take, by_score);
            cands.truncate(take);
        }
        cands.sort_by(by_score);
        let mut next = Vec::with_capacity(k);
        for (rank, &(score, hi, v)) in cands.iter().enumerate() {
            let parent = &self.live[hi];
            if v == sp.eos {
                if rank < k {
                    self.finished.push(Hypothesis::new(parent.tokens.clone(), score, alpha));
                }
            } else if next.len() < k {
                let tokens = parent.tokens.iter().copied().chain([v]).collect();
                next.push(Live { tokens, log_prob: score, row: parent.row });
            }
        }
        if step + 1 >= self.limit {
            // Out of length: the live hypotheses end here, without `</s>`.
            for l in next.drain(..) {
                self.finished.push(Hypothesis::new(l.tokens, l.log_prob, alpha));
            }
        }
        next
    }

    /// Whether the n-best finished hypotheses can no longer be beaten by a live one.
    fn is_final(&mut self, live: &[Live], nbest: usize, alpha: f64) -> bool {
        self.finished.sort_by(|a, b| b.score.total_cmp(&a.score));
        if live.is_empty() {
            return true;
        }
        if self.finished.len() < nbest {
            return false;
        }
        let best_live = live.iter().map(|l| l.log_prob).fold(f64::NEG_INFINITY, f64::max);
        let bound = best_live / length_penalty(self.limit, alpha);
        self.finished[nbest - 1].score >= bound
    }
}

/// Beam-searches a batch of sources (ids without specials); returns up to `nbest` hypotheses per source,
/// best first.
pub fn beam_search(ctx: &DecodeContext, srcs: &[&[u32]], s: BeamSettings) -> Result<Vec<Vec<Hypothesis>>> {
    let (k, nbest) = (s.beam.max(1), s.nbest.clamp(1, s.beam.max(1)));
    let (sp, device) = (ctx.specials, &ctx.device);
    let (memory, mut src_mask) = ctx.encode_sources(srcs)?;
    let mut cache = ctx.model.start_decoding(&memory)?;
    let mut sentences: Vec<Sentence> = srcs
        .iter()
        .enumerate()
        .map(|(b, src)| Sentence {
            live: vec![Live { tokens: vec![], log_prob: 0.0, row: b }],
            finished: vec![],
            limit: ctx.max_output_len(src.len()),
        })
        .collect();
    let mut feed = vec![sp.bos; srcs.len()];
    for step in 0.. {
        let tokens = Tensor::new(feed.as_slice(), device)?;
        let logits = ctx.model.decode_step(&tokens, &mut cache, &src_mask)?; // (rows, vocab)
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let (mut rows, mut next_feed) = (vec![], vec![]);
        for sentence in sentences.iter_mut().filter(|x| !x.live.is_empty()) {
            let mut next = sentence.extend(&log_probs, step, k, s.alpha, sp);
            if sentence.is_final(&next, nbest, s.alpha) {
                next.clear();
            }
            for l in next.iter_mut() {
                rows.push(l.row as u32);
                next_feed.push(*l.tokens.last().unwrap_or(&sp.bos));
                l.row = rows.len() - 1;
            }
            sentence.live = next;
        }
        if rows.is_empty() {
            break;
        }
        let rows = Tensor::new(rows.as_slice(), device)?;
        cache.select(&rows)?;
        src_mask = src_mask.index_select(&rows, 0)?;
        feed = next_feed;
    }
    Ok(sentences
        .into_iter()
        .map(|mut x| {
            x.finished.sort_by(|a, b| b.score.total_cmp(&a.score));
            x.finished.truncate(nbest);
            x.finished
        })
        .collect())
}
