//! Translation: sort inputs by length, decode in batches, restore the input order.
//!
//! [`Search::Beam`] (the default of `translate` and `eval`: beam 4, α = 0.6, as in the paper) and
//! [`Search::Greedy`] both decode incrementally with the decoder's KV cache; `greedy_uncached` is the
//! slow reference. Every default comes from the config's `decode` section ([`DecodeConfig`]); the
//! maximum output length is source length + `decode.max_len_extra` (50) tokens, capped by
//! `model.max_positions`.
//!
//! Each search takes a [`DecodeContext`] (the model, the special ids, the length limit, the device) and
//! a batch of sources, which [`DecodeContext::start`] encodes and hands back as [`steps::Steps`]: the
//! hand-written CPU step of [`fast`], or the model's tensor-op step; [`Translator`] batches whole inputs
//! and turns ids back into text.

pub mod beam;
pub mod fast;
pub mod greedy;
pub mod sample;
pub mod steps;

use crate::config::DecodeConfig;
use crate::data::batch::{source_rows, source_tensor};
use crate::data::tokenizer::{Specials, Tokenizer};
use crate::model::init::Mode;
use crate::model::Transformer;
use crate::rng::Rng;
use anyhow::Result;
use beam::BeamSettings;
use candle_core::{Device, Tensor};
use sample::SampleSettings;
use std::sync::OnceLock;
use steps::Steps;

/// What every search needs besides its sources.
pub struct DecodeContext<'a> {
    pub model: &'a Transformer,
    pub specials: Specials,
    /// An output is at most source length + this many tokens (and within the model's position table).
    pub max_len_extra: usize,
    pub device: Device,
    /// The hand-written step's weights ([`fast`]), laid out on the first batch that can use them.
    fast: OnceLock<fast::FastDecoder>,
}

impl<'a> DecodeContext<'a> {
    pub fn new(model: &'a Transformer, specials: Specials, max_len_extra: usize) -> Self {
        Self { model, specials, max_len_extra, device: model.device().clone(), fast: OnceLock::new() }
    }

    /// Output length limit for a source of `src_len` tokens: src_len + max_len_extra, within the
    /// position table (one position is the decoder's `<s>`).
    pub fn max_output_len(&self, src_len: usize) -> usize {
        src_len.saturating_add(self.max_len_extra).min(self.model.max_positions() - 1)
    }

    /// Encodes a batch of sources (ids without specials): (memory, src_mask).
    ///
    /// # Shapes
    /// - returns memory (batch, src_len, d_model) and src_mask (batch, 1, 1, src_len)
    pub fn encode_sources(&self, srcs: &[&[u32]]) -> candle_core::Result<(Tensor, Tensor)> {
        let sp = self.specials;
        let (src, src_mask) = source_tensor(&source_rows(srcs.iter().copied(), sp), sp, &self.device)?;
        let memory = self.model.encode(&src, &src_mask, &mut Mode::Eval)?;
        Ok((memory, src_mask))
    }

    /// Encodes a batch of sources and starts decoding it, one row per source: with the hand-written step
    /// of [`fast`] on CPU in f32, else (another device or dtype, or the reference path asked for by
    /// [`crate::ops::with_reference_path`]) with the model's tensor-op step ([`steps::ReferenceSteps`]).
    pub fn start(&self, srcs: &[&[u32]]) -> candle_core::Result<Box<dyn Steps + '_>> {
        let (memory, src_mask) = self.encode_sources(srcs)?;
        if fast::FastDecoder::applies(self.model) {
            if self.fast.get().is_none() {
                let _ = self.fast.set(fast::FastDecoder::new(self.model)?);
            }
            if let Some(f) = self.fast.get() {
                return Ok(Box::new(f.start(&memory, &src_mask)?));
            }
        }
        Ok(Box::new(steps::ReferenceSteps::new(self.model, &memory, src_mask)?))
    }
}

/// GNMT length penalty ((5 + len) / 6)^α.
pub fn length_penalty(len: usize, alpha: f64) -> f64 {
    ((5.0 + len as f64) / 6.0).powf(alpha)
}

/// A finished output: its tokens (no specials), log P(Y) including `</s>`, and the score it is ranked by.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub log_prob: f64,
    /// log P(Y) / lp(|Y|), |Y| counting `</s>` when the output has one; equals `log_prob` when α = 0.
    pub score: f64,
}

impl Hypothesis {
    /// An output that ended with `</s>`: |Y| = tokens + 1.
    pub fn new(tokens: Vec<u32>, log_prob: f64, alpha: f64) -> Self {
        let score = log_prob / length_penalty(tokens.len() + 1, alpha);
        Self { tokens, log_prob, score }
    }

    /// An output cut at the length limit, without `</s>`: |Y| = tokens. So no output is longer than the
    /// limit, the length a search's stopping bound assumes.
    pub fn cut(tokens: Vec<u32>, log_prob: f64, alpha: f64) -> Self {
        let score = log_prob / length_penalty(tokens.len(), alpha);
        Self { tokens, log_prob, score }
    }
}

/// How to search for the best output (or, with `Sample`, draw a random one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Search {
    Greedy,
    Beam(BeamSettings),
    Sample(SampleSettings),
}

impl Search {
    /// The search a decode config asks for, returning `nbest` hypotheses; beam 1 is greedy search.
    pub fn new(cfg: &DecodeConfig, nbest: usize) -> Self {
        if cfg.beam <= 1 {
            Search::Greedy
        } else {
            Search::Beam(BeamSettings { beam: cfg.beam, alpha: cfg.alpha, nbest })
        }
    }
}

pub struct Translator<'a> {
    pub ctx: DecodeContext<'a>,
    pub tokenizer: &'a Tokenizer,
    /// Sentences per decoding batch.
    pub batch_size: usize,
    pub search: Search,
}

impl<'a> Translator<'a> {
    /// A translator with every setting from `cfg`: its search (one hypothesis per input), batch size and
    /// length limit.
    pub fn new(model: &'a Transformer, tokenizer: &'a Tokenizer, cfg: &DecodeConfig) -> Self {
        Self {
            ctx: DecodeContext::new(model, tokenizer.specials, cfg.max_len_extra),
            tokenizer,
            batch_size: cfg.batch_size,
            search: Search::new(cfg, 1),
        }
    }

    /// The same translator with another search (sampling, or an n-best beam).
    pub fn with_search(self, search: Search) -> Self {
        Self { search, ..self }
    }

    /// Translates token ids into n-best lists (one hypothesis for greedy search). Empty inputs give one
    /// empty hypothesis. `progress` is called with the number of sentences finished after each batch.
    pub fn translate_ids(&self, inputs: &[Vec<u32>], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<Hypothesis>>> {
        let mut outputs = vec![vec![Hypothesis::new(vec![], 0.0, 0.0)]; inputs.len()];
        let max_src = self.ctx.model.max_positions() - 1; // room for eos
        let mut rng = Rng::seed(match self.search {
            Search::Sample(s) => s.seed,
            _ => 0,
        });
        let mut order: Vec<usize> = (0..inputs.len()).filter(|&i| !inputs[i].is_empty()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        for chunk in order.chunks(self.batch_size.max(1)) {
            let srcs: Vec<&[u32]> = chunk.iter().map(|&i| &inputs[i][..inputs[i].len().min(max_src)]).collect();
            let one = |hyps: Vec<Hypothesis>| hyps.into_iter().map(|h| vec![h]).collect::<Vec<_>>();
            let nbest = match self.search {
                Search::Greedy => one(greedy::greedy(&self.ctx, &srcs)?),
                Search::Beam(s) => beam::beam_search(&self.ctx, &srcs, s)?,
                Search::Sample(s) => one(sample::sample(&self.ctx, &srcs, s, &mut rng)?),
            };
            for (&i, h) in chunk.iter().zip(nbest) {
                outputs[i] = h;
            }
            progress(chunk.len());
        }
        Ok(outputs)
    }

    /// n-best lists as (text, score) pairs, best first.
    pub fn translate_nbest(&self, lines: &[String], progress: impl FnMut(usize)) -> Result<Vec<Vec<(String, f64)>>> {
        let ids = lines.iter().map(|l| self.tokenizer.encode(l)).collect::<Result<Vec<_>>>()?;
        let out = self.translate_ids(&ids, progress)?;
        out.iter().map(|hyps| hyps.iter().map(|h| Ok((self.tokenizer.decode(&h.tokens)?, h.score))).collect()).collect()
    }

    /// Translates sentences: exactly one output line per input line, in order.
    pub fn translate(&self, lines: &[String], progress: impl FnMut(usize)) -> Result<Vec<String>> {
        let nbest = self.translate_nbest(lines, progress)?;
        Ok(nbest.into_iter().map(|mut h| if h.is_empty() { String::new() } else { h.swap_remove(0).0 }).collect())
    }
}

#[cfg(test)]
mod tests;
