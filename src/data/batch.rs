//! Batches by token count (fairseq's `--max-tokens`) from length-sorted buckets, in a seeded order.
//!
//! An [`Example`] holds BPE ids without specials. A [`Batch`] adds them: the source ends with `</s>`,
//! the decoder input is `<s> y₁ … yₙ` and its expected output `y₁ … yₙ </s>` (teacher forcing), all
//! right-padded with `<pad>`. The order of batches in an epoch depends only on the seed and the epoch
//! number, so a resumed run needs nothing but (epoch, position) to continue exactly.

use super::corpus::Pair;
use super::tokenizer::{Specials, Tokenizer};
use crate::model::mask::padding_mask;
use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// One tokenized sentence pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

/// Tokenizes sentence pairs, dropping empty and over-long ones; returns (examples, empty, too long).
pub fn tokenize_pairs(tok: &Tokenizer, pairs: &[Pair], max_len: usize) -> anyhow::Result<(Vec<Example>, usize, usize)> {
    let (mut out, mut empty, mut long) = (Vec::with_capacity(pairs.len()), 0, 0);
    for p in pairs {
        if p.src.trim().is_empty() || p.tgt.trim().is_empty() {
            empty += 1;
            continue;
        }
        let (src, tgt) = (tok.encode(&p.src)?, tok.encode(&p.tgt)?);
        if src.len() > max_len || tgt.len() > max_len {
            long += 1;
            continue;
        }
        out.push(Example { src, tgt });
    }
    Ok((out, empty, long))
}

/// Tensors for one training or scoring step.
pub struct Batch {
    /// (batch, src_len) u32, ending in eos, padded.
    pub src: Tensor,
    /// (batch, 1, 1, src_len) additive key-padding mask.
    pub src_mask: Tensor,
    /// (batch, tgt_len) u32: bos + target, padded.
    pub tgt_in: Tensor,
    /// (batch, tgt_len) u32: target + eos, padded.
    pub tgt_out: Tensor,
    /// Real (non-pad) source tokens, eos included.
    pub src_tokens: usize,
    /// Real target tokens, eos included.
    pub tgt_tokens: usize,
}

/// Pads rows to the longest one.
fn pad_rows(rows: &[Vec<u32>], pad: u32, device: &Device) -> Result<Tensor> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = Vec::with_capacity(rows.len() * len);
    for r in rows {
        flat.extend_from_slice(r);
        flat.extend(std::iter::repeat_n(pad, len - r.len()));
    }
    Tensor::from_vec(flat, (rows.len(), len), device)
}

/// Source rows as the encoder sees them: ids then eos.
pub fn source_rows<'a>(srcs: impl Iterator<Item = &'a [u32]>, sp: Specials) -> Vec<Vec<u32>> {
    srcs.map(|s| s.iter().copied().chain([sp.eos]).collect()).collect()
}

/// Builds the padded source tensor and its mask.
pub fn source_tensor(rows: &[Vec<u32>], sp: Specials, device: &Device) -> Result<(Tensor, Tensor)> {
    let src = pad_rows(rows, sp.pad, device)?;
    let mask = padding_mask(&src, sp.pad)?;
    Ok((src, mask))
}

impl Batch {
    pub fn new(examples: &[&Example], sp: Specials, device: &Device) -> Result<Self> {
        let src_rows = source_rows(examples.iter().map(|e| e.src.as_slice()), sp);
        let tgt_in: Vec<Vec<u32>> = examples.iter().map(|e| [&[sp.bos], e.tgt.as_slice()].concat()).collect();
        let tgt_out: Vec<Vec<u32>> = examples.iter().map(|e| [e.tgt.as_slice(), &[sp.eos]].concat()).collect();
        let (src, src_mask) = source_tensor(&src_rows, sp, device)?;
        Ok(Self {
            src,
            src_mask,
            tgt_in: pad_rows(&tgt_in, sp.pad, device)?,
            tgt_out: pad_rows(&tgt_out, sp.pad, device)?,
            src_tokens: src_rows.iter().map(Vec::len).sum(),
            tgt_tokens: tgt_out.iter().map(Vec::len).sum(),
        })
    }
}

/// Groups example indices into batches of at most `batch_tokens` padded tokens (counting the longer side,
/// specials included), from examples sorted by length so that little padding is wasted. A single example
/// longer than the budget gets a batch of its own.
pub fn make_batches(examples: &[Example], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].src.len(), examples[i].tgt.len(), i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = examples[i].src.len().max(examples[i].tgt.len()) + 1;
        let new_longest = longest.max(len);
        if !current.is_empty() && new_longest * (current.len() + 1) > batch_tokens {
            batches.push(std::mem::take(&mut current));
            longest = len;
        } else {
            longest = new_longest;
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// The order in which epoch `epoch` visits `n` batches: a shuffle seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64));
    rng.shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: usize, t: usize) -> Example {
        Example { src: vec![5; s], tgt: vec![6; t] }
    }

    const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };

    #[test]
    fn batches_respect_the_token_budget_and_cover_every_example_once() {
        let examples: Vec<Example> = (0..100).map(|i| ex(1 + i % 17, 1 + (i * 7) % 13)).collect();
        let batches = make_batches(&examples, 64);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| examples[i].src.len().max(examples[i].tgt.len()) + 1).max().unwrap();
            assert!(longest * b.len() <= 64 || b.len() == 1);
        }
    }

    #[test]
    fn an_oversized_example_gets_its_own_batch() {
        let examples = vec![ex(2, 2), ex(100, 3), ex(2, 3)];
        let batches = make_batches(&examples, 16);
        assert!(batches.contains(&vec![1]));
    }

    #[test]
    fn epoch_order_is_seeded_and_differs_between_epochs() {
        assert_eq!(epoch_order(50, 1, 0), epoch_order(50, 1, 0));
        assert_ne!(epoch_order(50, 1, 0), epoch_order(50, 1, 1));
        assert_ne!(epoch_order(50, 1, 0), epoch_order(50, 2, 0));
        let mut o = epoch_order(50, 1, 3);
        o.sort();
        assert_eq!(o, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn batch_shifts_the_target_and_pads() {
        let a = Example { src: vec![7, 8], tgt: vec![9] };
        let b = Example { src: vec![7], tgt: vec![10, 11] };
        let batch = Batch::new(&[&a, &b], SP, &Device::Cpu).unwrap();
        assert_eq!(batch.src.to_vec2::<u32>().unwrap(), vec![vec![7, 8, 2], vec![7, 2, 0]]);
        assert_eq!(batch.tgt_in.to_vec2::<u32>().unwrap(), vec![vec![1, 9, 0], vec![1, 10, 11]]);
        assert_eq!(batch.tgt_out.to_vec2::<u32>().unwrap(), vec![vec![9, 2, 0], vec![10, 11, 2]]);
        assert_eq!((batch.src_tokens, batch.tgt_tokens), (5, 5));
        assert_eq!(batch.src_mask.dims(), &[2, 1, 1, 3]);
    }
}
