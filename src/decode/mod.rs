//! Translation: sort inputs by length, decode in batches, restore the input order.
//!
//! Greedy search is implemented here; beam search, the incremental KV cache and n-best lists are the
//! subject of their own issue. The maximum output length is source length + 50 tokens, capped by
//! `model.max_positions`.

pub mod greedy;

use crate::data::tokenizer::Tokenizer;
use crate::model::Transformer;
use anyhow::Result;
use candle_core::Device;

/// How to search for the best output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Greedy,
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
    /// Translates token ids. Empty inputs give empty outputs. `progress` is called with the number of
    /// sentences finished after each batch.
    pub fn translate_ids(&self, inputs: &[Vec<u32>], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<u32>>> {
        let mut outputs = vec![Vec::new(); inputs.len()];
        let max_src = self.max_positions - 1; // room for eos
        let mut order: Vec<usize> = (0..inputs.len()).filter(|&i| !inputs[i].is_empty()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        for chunk in order.chunks(self.batch_size.max(1)) {
            let srcs: Vec<&[u32]> = chunk.iter().map(|&i| &inputs[i][..inputs[i].len().min(max_src)]).collect();
            let hyps = match self.search {
                Search::Greedy => {
                    greedy::greedy(self.model, &srcs, self.tokenizer.specials, self.max_positions, &self.device)?
                }
            };
            for (&i, h) in chunk.iter().zip(hyps) {
                outputs[i] = h;
            }
            progress(chunk.len());
        }
        Ok(outputs)
    }

    /// Translates sentences: exactly one output line per input line, in order.
    pub fn translate(&self, lines: &[String], progress: impl FnMut(usize)) -> Result<Vec<String>> {
        let ids = lines.iter().map(|l| self.tokenizer.encode(l)).collect::<Result<Vec<_>>>()?;
        let out = self.translate_ids(&ids, progress)?;
        out.iter().map(|ids| self.tokenizer.decode(ids)).collect()
    }
}
