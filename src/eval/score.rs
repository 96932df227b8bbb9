//! BLEU and chrF, computed as sacreBLEU 2.x computes them by default: the only scorer in `nmt`
//! (`nmt score`, `nmt eval` and validation during training all call it).
//!
//! BLEU: mteval-13a tokenization, corpus-level clipped n-gram counts (n ≤ 4), brevity penalty from the
//! closest reference length, and the "exp" smoothing of mteval-v13a. chrF: character 6-grams with
//! whitespace removed, β = 2, statistics summed over the corpus, averaged precision and recall over the
//! orders that occur.

use regex::Regex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::OnceLock;

const MAX_NGRAM: usize = 4;
const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// Python's `str.split()` whitespace: Unicode White_Space plus the ASCII separators 0x1c–0x1f.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// sacreBLEU's BLEU tokenizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenize {
    /// mteval-v13a, sacreBLEU's default (`tok:13a`).
    #[default]
    #[value(name = "13a")]
    #[serde(rename = "13a")]
    Mteval13a,
    /// mteval-v14 international: split on Unicode punctuation and symbols (`tok:intl`).
    Intl,
    /// Every character is a token (`tok:char`).
    Char,
    /// Whitespace only (`tok:none`).
    None,
}

impl Tokenize {
    pub fn signature(self) -> &'static str {
        match self {
            Tokenize::Mteval13a => "13a",
            Tokenize::Intl => "intl",
            Tokenize::Char => "char",
            Tokenize::None => "none",
        }
    }

    /// Tokenizes one line; the result's tokens are separated by single spaces.
    pub fn apply(self, line: &str) -> String {
        match self {
            Tokenize::Mteval13a => tokenize_13a(line),
            Tokenize::Intl => tokenize_intl(line),
            Tokenize::Char => line.chars().filter(|c| !is_py_space(*c)).map(String::from).collect::<Vec<_>>().join(" "),
            Tokenize::None => py_split(line).collect::<Vec<_>>().join(" "),
        }
    }
}

/// What to score with: the tokenizer and whether to lowercase (sacreBLEU's `--tokenize`, `--lowercase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScoreOptions {
    pub tokenize: Tokenize,
    pub lowercase: bool,
}

impl ScoreOptions {
    /// sacreBLEU's segment preprocessing: optional lowercasing, then `rstrip()`.
    fn preprocess<'a>(&self, line: &'a str) -> std::borrow::Cow<'a, str> {
        let line = line.trim_end_matches(is_py_space);
        if self.lowercase {
            line.to_lowercase().into()
        } else {
            line.into()
        }
    }

    fn case(&self) -> &'static str {
        if self.lowercase {
            "lc"
        } else {
            "mixed"
        }
    }
}

/// The mteval-v13a tokenizer, as sacreBLEU's `Tokenizer13a`.
pub fn tokenize_13a(line: &str) -> String {
    static RULES: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            (static_regex(r"([\{-~\[-` -&\(-\+:-@/])"), " $1 "),
            (static_regex(r"([^0-9])([\.,])"), "$1 $2 "),
            (static_regex(r"([\.,])([^0-9])"), " $1 $2"),
            (static_regex(r"([0-9])(-)"), "$1 $2 "),
        ]
    });
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    apply_rules(rules, &format!(" {line} "))
}

/// The mteval-v14 international tokenizer, as sacreBLEU's `TokenizerV14International`.
pub fn tokenize_intl(line: &str) -> String {
    static RULES: OnceLock<[(Regex, &'static str); 3]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            (static_regex(r"(\P{N})(\p{P})"), "$1 $2 "),
            (static_regex(r"(\p{P})(\P{N})"), " $1 $2"),
            (static_regex(r"(\p{S})"), " $1 "),
        ]
    });
    apply_rules(rules, line)
}

fn static_regex(pattern: &str) -> Regex {
    // The patterns are constants of this file; a test compiles every one of them.
    Regex::new(pattern).unwrap_or_else(|e| panic!("invalid built-in regex {pattern}: {e}"))
}

fn apply_rules(rules: &[(Regex, &'static str)], line: &str) -> String {
    let mut line = line.to_string();
    for (re, rep) in rules {
        line = re.replace_all(&line, *rep).into_owned();
    }
    py_split(&line).collect::<Vec<_>>().join(" ")
}

/// A corpus BLEU score with its statistics.
#[derive(Debug, Clone, Serialize)]
pub struct Bleu {
    pub score: f64,
    pub precisions: [f64; MAX_NGRAM],
    pub bp: f64,
    pub sys_len: usize,
    pub ref_len: usize,
    pub correct: [usize; MAX_NGRAM],
    pub total: [usize; MAX_NGRAM],
}

impl Bleu {
    /// Corpus BLEU of `hyps` against one or more reference streams (`refs[k][i]` is reference k of
    /// sentence i): n-gram statistics summed over the corpus.
    pub fn corpus(hyps: &[String], refs: &[Vec<String>], opts: ScoreOptions) -> Self {
        let mut sum = Stats::default();
        for (i, hyp) in hyps.iter().enumerate() {
            let r: Vec<&str> = refs.iter().map(|r| r[i].as_str()).collect();
            sum.add(&Stats::of(hyp, &r, opts));
        }
        Self::from_stats(sum.correct, sum.total, sum.sys_len, sum.ref_len, false)
    }

    /// Sentence-level BLEU as sacreBLEU's `sentence_bleu`: effective order on (`eff:yes`).
    pub fn sentence(hyp: &str, refs: &[&str], opts: ScoreOptions) -> Self {
        let s = Stats::of(hyp, refs, opts);
        Self::from_stats(s.correct, s.total, s.sys_len, s.ref_len, true)
    }

    /// sacreBLEU's `compute_bleu` with `smooth_method='exp'`; `effective_order` drops the n-gram orders
    /// the hypothesis is too short to have.
    pub fn from_stats(
        correct: [usize; 4],
        total: [usize; 4],
        sys_len: usize,
        ref_len: usize,
        effective_order: bool,
    ) -> Self {
        let bp = if sys_len < ref_len {
            if sys_len > 0 {
                (1.0 - ref_len as f64 / sys_len as f64).exp()
            } else {
                0.0
            }
        } else {
            1.0
        };
        let mut precisions = [0.0f64; MAX_NGRAM];
        let mut out = Self { score: 0.0, precisions, bp, sys_len, ref_len, correct, total };
        if correct.iter().all(|&c| c == 0) {
            return out;
        }
        let mut smooth = 1.0;
        let mut order = MAX_NGRAM;
        for n in 0..MAX_NGRAM {
            if total[n] == 0 {
                break;
            }
            if effective_order {
                order = n + 1;
            }
            precisions[n] = if correct[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total[n] as f64)
            } else {
                100.0 * correct[n] as f64 / total[n] as f64
            };
        }
        let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
        let mean_log = precisions[..order].iter().map(|&p| log(p)).sum::<f64>() / order as f64;
        out.precisions = precisions;
        out.score = bp * mean_log.exp();
        out
    }

    /// sacreBLEU's one-line layout, e.g.
    /// `BLEU = 41.30 41.3/13.6/8.1/5.6 (BP = 1.000 ratio = 1.033 hyp_len = 6421 ref_len = 6218)`.
    pub fn line(&self) -> String {
        let p = self.precisions.map(|p| format!("{p:.1}")).join("/");
        let ratio = if self.ref_len > 0 { self.sys_len as f64 / self.ref_len as f64 } else { 0.0 };
        format!(
            "BLEU = {:.2} {p} (BP = {:.3} ratio = {ratio:.3} hyp_len = {} ref_len = {})",
            self.score, self.bp, self.sys_len, self.ref_len
        )
    }
}

/// BLEU's sufficient statistics for one or more sentences.
#[derive(Debug, Default, Clone)]
struct Stats {
    correct: [usize; MAX_NGRAM],
    total: [usize; MAX_NGRAM],
    sys_len: usize,
    ref_len: usize,
}

impl Stats {
    /// Clipped n-gram matches of one hypothesis against its references, and the closest reference length.
    fn of(hyp: &str, refs: &[&str], opts: ScoreOptions) -> Self {
        let tok = |line: &str| opts.tokenize.apply(&opts.preprocess(line));
        let h = tok(hyp);
        let hw: Vec<&str> = h.split(' ').filter(|w| !w.is_empty()).collect();
        let toks: Vec<String> = refs.iter().map(|r| tok(r)).collect();
        let rws: Vec<Vec<&str>> = toks.iter().map(|t| t.split(' ').filter(|w| !w.is_empty()).collect()).collect();
        let mut s = Stats {
            sys_len: hw.len(),
            ref_len: closest_ref_len(hw.len(), rws.iter().map(Vec::len)),
            ..Stats::default()
        };
        for n in 1..=MAX_NGRAM {
            let mut max_ref: HashMap<&[&str], usize> = HashMap::new();
            for rw in &rws {
                for (g, c) in counts(rw, n) {
                    let e = max_ref.entry(g).or_insert(0);
                    *e = (*e).max(c);
                }
            }
            for (g, c) in counts(&hw, n) {
                s.correct[n - 1] += c.min(max_ref.get(g).copied().unwrap_or(0));
                s.total[n - 1] += c;
            }
        }
        s
    }

    fn add(&mut self, o: &Stats) {
        for n in 0..MAX_NGRAM {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
    }
}

fn counts<'a>(words: &'a [&'a str], n: usize) -> HashMap<&'a [&'a str], usize> {
    let mut m = HashMap::new();
    if words.len() >= n {
        for g in words.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

/// The reference length closest to the hypothesis length; ties go to the shorter reference.
fn closest_ref_len(hyp_len: usize, ref_lens: impl Iterator<Item = usize>) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            None => Some((diff, r)),
            Some((d, _)) if diff < d => Some((diff, r)),
            Some((d, l)) if diff == d => Some((d, l.min(r))),
            keep => keep,
        };
    }
    best.map(|(_, l)| l).unwrap_or(0)
}

/// chrF2 (β = 2, character 6-grams, no word n-grams) over a corpus.
#[derive(Debug, Clone, Serialize)]
pub struct Chrf {
    pub score: f64,
}

impl Chrf {
    /// chrF2 of `hyps` against one or more reference streams; only `opts.lowercase` applies.
    pub fn corpus(hyps: &[String], refs: &[Vec<String>], opts: ScoreOptions) -> Self {
        let mut stats = [0usize; 3 * CHRF_ORDER];
        for (i, hyp) in hyps.iter().enumerate() {
            let hc = char_ngram_counts(&opts.preprocess(hyp));
            let mut best: Option<(f64, [usize; 3 * CHRF_ORDER])> = None;
            for r in refs {
                let rc = char_ngram_counts(&opts.preprocess(&r[i]));
                let mut s = [0usize; 3 * CHRF_ORDER];
                for n in 0..CHRF_ORDER {
                    let matches: usize = hc[n].iter().map(|(g, c)| (*c).min(rc[n].get(g).copied().unwrap_or(0))).sum();
                    s[3 * n] = hc[n].values().sum();
                    s[3 * n + 1] = rc[n].values().sum();
                    s[3 * n + 2] = matches;
                }
                let f = chrf_from_stats(&s);
                if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
                    best = Some((f, s));
                }
            }
            if let Some((_, s)) = best {
                for (a, b) in stats.iter_mut().zip(s) {
                    *a += b;
                }
            }
        }
        Self { score: chrf_from_stats(&stats) }
    }

    pub fn line(&self) -> String {
        format!("chrF2 = {:.2}", self.score)
    }
}

/// Character n-gram counts (n = 1..=6) of a line with its whitespace removed.
fn char_ngram_counts(line: &str) -> Vec<HashMap<String, usize>> {
    let chars: Vec<char> = py_split(line).flat_map(str::chars).collect();
    (1..=CHRF_ORDER)
        .map(|n| {
            let mut m = HashMap::new();
            if chars.len() >= n {
                for w in chars.windows(n) {
                    *m.entry(w.iter().collect::<String>()).or_insert(0) += 1;
                }
            }
            m
        })
        .collect()
}

/// sacreBLEU's `CHRF._compute_f_score` without eps smoothing.
fn chrf_from_stats(stats: &[usize]) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_prec, mut avg_rec, mut effective) = (0.0, 0.0, 0);
    for n in 0..CHRF_ORDER {
        let (hyp, rf, m) = (stats[3 * n], stats[3 * n + 1], stats[3 * n + 2]);
        if hyp > 0 && rf > 0 {
            avg_prec += m as f64 / hyp as f64;
            avg_rec += m as f64 / rf as f64;
            effective += 1;
        }
    }
    if effective == 0 {
        return 0.0;
    }
    avg_prec /= effective as f64;
    avg_rec /= effective as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)
}

/// sacreBLEU's signature for the BLEU settings used here, naming this scorer in `version`;
/// `eff:yes` for sentence-level BLEU.
pub fn bleu_signature(nrefs: usize, opts: ScoreOptions, sentence_level: bool) -> String {
    format!(
        "nrefs:{nrefs}|case:{}|eff:{}|tok:{}|smooth:exp|version:nmt-{}",
        opts.case(),
        if sentence_level { "yes" } else { "no" },
        opts.tokenize.signature(),
        env!("CARGO_PKG_VERSION")
    )
}

/// sacreBLEU's signature for chrF2.
pub fn chrf_signature(nrefs: usize, opts: ScoreOptions) -> String {
    format!("nrefs:{nrefs}|case:{}|eff:yes|nc:6|nw:0|space:no|version:nmt-{}", opts.case(), env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests;
