//! Beam search (paper §6.1: beam size 4, length penalty α = 0.6), batched over sentences, decoding
//! incrementally with the KV cache.
//!
//! Hypotheses are ranked by log-probability while searching and by the GNMT length-normalised score
//! log P(Y) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^α (Wu et al., 2016; |Y| counts `</s>`, and an output cut at
//! the length limit, which has none, counts its tokens), when finished.
//! At every step each sentence's 2K best extensions are ranked; an extension ending in `</s>` that ranks
//! among the top K becomes a finished hypothesis, and the best K others stay live. A sentence stops when
//! its n-best finished hypotheses are final: no live hypothesis can still beat them, since a live
//! log-probability only falls and its length penalty is at most lp(limit). Finished sentences leave the
//! batch, so they stop costing work.

use super::{length_penalty, DecodeContext, Hypothesis};
use crate::data::tokenizer::Specials;
use candle_core::Result;

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
    /// Ranks the extensions of the live hypotheses, given each row's 2K most probable next tokens
    /// ([`super::steps::NextTokens::best_of_rows`]): the 2K best extensions overall are among the 2K best of each
    /// hypothesis. Returns the new live hypotheses (their `row` still names the parent's row).
    fn extend(&mut self, best: &[Vec<(u32, f32)>], step: usize, k: usize, alpha: f64, sp: Specials) -> Vec<Live> {
        let mut cands: Vec<(f64, usize, u32)> = Vec::with_capacity(self.live.len() * 2 * k);
        for (hi, h) in self.live.iter().enumerate() {
            for &(v, lp) in &best[h.row] {
                cands.push((h.log_prob + lp as f64, hi, v));
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
                self.finished.push(Hypothesis::cut(l.tokens, l.log_prob, alpha));
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
        // No output is longer than `limit` (`limit - 1` tokens and `</s>`, or `limit` tokens cut there), and
        // with α ≥ 0 and log P ≤ 0 the longest length gives the highest score a live hypothesis can reach.
        let best_live = live.iter().map(|l| l.log_prob).fold(f64::NEG_INFINITY, f64::max);
        let bound = best_live / length_penalty(self.limit, alpha);
        self.finished[nbest - 1].score >= bound
    }
}

/// Beam-searches a batch of sources (ids without specials); returns up to `nbest` hypotheses per source,
/// best first.
pub fn beam_search(ctx: &DecodeContext, srcs: &[&[u32]], s: BeamSettings) -> Result<Vec<Vec<Hypothesis>>> {
    let (k, nbest) = (s.beam.max(1), s.nbest.clamp(1, s.beam.max(1)));
    let sp = ctx.specials;
    let mut steps = ctx.start(srcs)?;
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
        let best = steps.step(&feed)?.best_of_rows(2 * k); // one row per live hypothesis
        let (mut rows, mut next_feed) = (vec![], vec![]);
        for sentence in sentences.iter_mut().filter(|x| !x.live.is_empty()) {
            let mut next = sentence.extend(&best, step, k, s.alpha, sp);
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
        steps.select(&rows)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::steps::NextTokens;
    use crate::rng::Rng;

    const SP: Specials = Specials { pad: 0, bos: 1, eos: 2, unk: 3 };
    const VOCAB: u32 = 5;

    /// Next-token log-probabilities after `prefix`: a seeded random distribution per prefix, or the
    /// given one.
    type Table<'a> = &'a dyn Fn(&[u32]) -> Vec<f32>;
    type BoxedTable = Box<dyn Fn(&[u32]) -> Vec<f32>>;

    fn random_table(seed: u64) -> impl Fn(&[u32]) -> Vec<f32> {
        move |prefix: &[u32]| {
            let key =
                prefix.iter().fold(seed.wrapping_mul(1_000_003), |h, &t| h.wrapping_mul(31).wrapping_add(t as u64 + 1));
            let mut rng = Rng::seed(key);
            let logits: Vec<f32> = (0..VOCAB).map(|_| 4.0 * rng.normal()).collect();
            let log_sum = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln() as f32;
            logits.iter().map(|l| l - log_sum).collect()
        }
    }

    /// One sentence's beam search over `table`, driven as [`beam_search`] drives it.
    fn search(table: Table, limit: usize, s: BeamSettings) -> Vec<Hypothesis> {
        let mut x = Sentence { live: vec![Live { tokens: vec![], log_prob: 0.0, row: 0 }], finished: vec![], limit };
        for step in 0.. {
            let log_probs: Vec<Vec<f32>> = x.live.iter().map(|l| table(&l.tokens)).collect();
            let best = NextTokens::normalized(&log_probs).best_of_rows(2 * s.beam);
            let mut next = x.extend(&best, step, s.beam, s.alpha, SP);
            if x.is_final(&next, s.nbest, s.alpha) {
                next.clear();
            }
            for (row, l) in next.iter_mut().enumerate() {
                l.row = row;
            }
            x.live = next;
            if x.live.is_empty() {
                break;
            }
        }
        x.finished.sort_by(|a, b| b.score.total_cmp(&a.score));
        x.finished
    }

    /// Every output of at most `limit` tokens, scored as the search scores it, best first.
    fn every_output(table: Table, limit: usize, alpha: f64) -> Vec<Hypothesis> {
        let mut out = vec![];
        let mut stack = vec![(vec![], 0.0f64)];
        while let Some((prefix, log_prob)) = stack.pop() {
            if prefix.len() == limit {
                out.push(Hypothesis::cut(prefix, log_prob, alpha));
                continue;
            }
            let lp = table(&prefix);
            out.push(Hypothesis::new(prefix.clone(), log_prob + lp[SP.eos as usize] as f64, alpha));
            for v in (0..VOCAB).filter(|&v| v != SP.eos) {
                stack.push((prefix.iter().copied().chain([v]).collect(), log_prob + lp[v as usize] as f64));
            }
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
    }

    /// With a beam wide enough never to prune, the search differs from trying every output only by its
    /// early stop; so it must find the best output exactly. An output cut at the limit once scored one
    /// position longer than the stopping bound assumed, and the search stopped while such an output could
    /// still win (the first table here is that case).
    #[test]
    fn the_early_stop_never_drops_an_output_that_would_win() {
        let cut_wins_by_one_position = |prefix: &[u32]| match prefix {
            [] => vec![-20.0, -20.0, -1.0, -20.0, -1.25],
            _ => vec![-20.0, -20.0, -8.0, -20.0, -0.001],
        };
        let mut tables: Vec<BoxedTable> = vec![Box::new(cut_wins_by_one_position)];
        tables.extend((0..60).map(|seed| Box::new(random_table(seed)) as BoxedTable));
        for (i, table) in tables.iter().enumerate() {
            for limit in [2, 3] {
                for alpha in [0.0, 0.6, 1.0, 2.0] {
                    let all = every_output(table.as_ref(), limit, alpha);
                    let s = BeamSettings { beam: all.len(), alpha, nbest: 1 };
                    let found = search(table.as_ref(), limit, s);
                    assert!(
                        (found[0].score - all[0].score).abs() < 1e-9 && found[0].tokens == all[0].tokens,
                        "table {i}, limit {limit}, α {alpha}: search found {:?}, best is {:?}",
                        found[0],
                        all[0]
                    );
                }
            }
        }
    }
}
