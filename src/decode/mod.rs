//! Translation: sort inputs by length, decode in batches, restore the input order.
//!
//! [`Search::Beam`] (the default of `translate` and `eval`: beam 4, α = 0.6, as in the paper) and
//! [`Search::Greedy`] both decode incrementally with the decoder's KV cache; `greedy_uncached` is the
//! slow reference. The maximum output length is source length + 50 tokens, capped by
//! `model.max_positions`.

pub mod beam;
pub mod greedy;
pub mod sample;

use crate::data::tokenizer::Tokenizer;
use crate::model::Transformer;
use anyhow::Result;
use beam::{length_penalty, BeamSettings};
use candle_core::Device;

/// A finished output: its tokens (no specials), log P(Y) including `</s>`, and the score it is ranked by.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub log_prob: f64,
    /// log P(Y) / lp(|Y|) with |Y| = tokens + `</s>`; equals `log_prob` when α = 0.
    pub score: f64,
}

impl Hypothesis {
    pub fn new(tokens: Vec<u32>, log_prob: f64, alpha: f64) -> Self {
        let score = log_prob / length_penalty(tokens.len() + 1, alpha);
        Self { tokens, log_prob, score }
    }
}

/// How to search for the best output (or, with `Sample`, draw a random one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Search {
    Greedy,
    Beam(BeamSettings),
    Sample(sample::SampleSettings),
}

impl Search {
    /// Beam 1 is greedy search.
    pub fn from_flags(beam: usize, alpha: f64, nbest: usize) -> Self {
        if beam <= 1 {
            Search::Greedy
        } else {
            Search::Beam(BeamSettings { beam, alpha, nbest })
        }
    }
}

pub struct Translator<'a> {
    pub model: &'a Transformer,
    pub tokenizer: &'a Tokenizer,
    pub device: Device,
    pub max_positions: usize,
    /// Sentences per decoding batch.
    pub batch_size: usize,
    pub search: Search,
}

impl Translator<'_> {
    /// Translates token ids into n-best lists (one hypothesis for greedy search). Empty inputs give one
    /// empty hypothesis. `progress` is called with the number of sentences finished after each batch.
    pub fn translate_ids(&self, inputs: &[Vec<u32>], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<Hypothesis>>> {
        let mut outputs = vec![vec![Hypothesis::new(vec![], 0.0, 0.0)]; inputs.len()];
        let max_src = self.max_positions - 1; // room for eos
        let mut rng = match self.search {
            Search::Sample(s) => crate::model::init::Rng::seed(s.seed),
            _ => crate::model::init::Rng::seed(0),
        };
        let mut order: Vec<usize> = (0..inputs.len()).filter(|&i| !inputs[i].is_empty()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        for chunk in order.chunks(self.batch_size.max(1)) {
            let srcs: Vec<&[u32]> = chunk.iter().map(|&i| &inputs[i][..inputs[i].len().min(max_src)]).collect();
            let (m, sp, mp, dev) = (self.model, self.tokenizer.specials, self.max_positions, &self.device);
            let nbest = match self.search {
                Search::Greedy => greedy::greedy(m, &srcs, sp, mp, dev)?.into_iter().map(|h| vec![h]).collect(),
                Search::Beam(s) => beam::beam_search(m, &srcs, sp, mp, dev, s)?,
                Search::Sample(s) => {
                    sample::sample(m, &srcs, sp, mp, dev, s, &mut rng)?.into_iter().map(|h| vec![h]).collect()
                }
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
