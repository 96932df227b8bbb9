//! The scorer against fixtures produced by the real sacreBLEU (`scripts/make_bleu_fixtures.py`).

use super::*;

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    bleu: f64,
    chrf: f64,
    tok_13a: Vec<String>,
    bleu_line: String,
    #[serde(default)]
    tokenize: Option<String>,
    #[serde(default)]
    lowercase: bool,
    #[serde(default)]
    tok: Vec<String>,
    signature: String,
    #[serde(default)]
    sentence_level: bool,
}

impl Case {
    fn options(&self) -> ScoreOptions {
        let tokenize = match self.tokenize.as_deref() {
            None | Some("13a") => Tokenize::Mteval13a,
            Some("intl") => Tokenize::Intl,
            Some("char") => Tokenize::Char,
            Some("none") => Tokenize::None,
            Some(other) => panic!("unknown tokenizer {other}"),
        };
        ScoreOptions { tokenize, lowercase: self.lowercase }
    }
}

#[derive(serde::Deserialize)]
struct Fixtures {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sacrebleu.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str::<Fixtures>(&text).unwrap().cases
}

#[test]
fn bleu_and_chrf_equal_sacrebleu_on_every_fixture() {
    let cases = cases();
    assert!(cases.len() >= 8);
    for c in cases {
        let opts = c.options();
        let bleu = if c.sentence_level {
            let refs: Vec<&str> = c.refs.iter().map(|r| r[0].as_str()).collect();
            Bleu::sentence(&c.hyps[0], &refs, opts)
        } else {
            Bleu::corpus(&c.hyps, &c.refs, opts)
        };
        assert!((bleu.score - c.bleu).abs() < 0.01, "{}: BLEU {} vs sacreBLEU {}", c.name, bleu.score, c.bleu);
        let chrf = Chrf::corpus(&c.hyps, &c.refs, opts);
        assert!((chrf.score - c.chrf).abs() < 0.01, "{}: chrF {} vs sacreBLEU {}", c.name, chrf.score, c.chrf);
        let without_version = |sig: &str| sig.split("|version:").next().unwrap_or_default().to_string();
        let ours = bleu_signature(c.refs.len(), opts, c.sentence_level);
        assert_eq!(without_version(&ours), without_version(&c.signature), "{}", c.name);
        // sacreBLEU's line, e.g. "BLEU = 37.07 62.5/41.2/30.1/22.0 (BP = 1.000 ratio = ...)".
        assert_eq!(bleu.line(), c.bleu_line, "{}", c.name);
        for (h, t) in c.hyps.iter().zip(&c.tok_13a) {
            assert_eq!(&tokenize_13a(h), t, "{}: 13a tokenization of {h:?}", c.name);
        }
        for (h, t) in c.hyps.iter().zip(&c.tok) {
            // Compared as token lists: sacreBLEU's char tokenizer keeps the spaces that split() later drops.
            let ours = opts.tokenize.apply(&opts.preprocess(h));
            assert_eq!(py_split(&ours).collect::<Vec<_>>(), py_split(t).collect::<Vec<_>>(), "{}: {h:?}", c.name);
        }
    }
}

#[test]
fn perfect_match_is_100_and_empty_is_0() {
    let refs = vec![vec!["Ein Hund läuft.".to_string(), "Zwei Katzen schlafen.".to_string()]];
    let hyps = refs[0].clone();
    let o = ScoreOptions::default();
    assert!((Bleu::corpus(&hyps, &refs, o).score - 100.0).abs() < 1e-9);
    assert!((Chrf::corpus(&hyps, &refs, o).score - 100.0).abs() < 1e-9);
    let empty = vec![String::new(), String::new()];
    assert_eq!(Bleu::corpus(&empty, &refs, o).score, 0.0);
    assert_eq!(Chrf::corpus(&empty, &refs, o).score, 0.0);
}

#[test]
fn closest_reference_length_prefers_the_shorter_on_ties() {
    assert_eq!(closest_ref_len(5, [3, 7].into_iter()), 3);
    assert_eq!(closest_ref_len(5, [7, 3].into_iter()), 3);
    assert_eq!(closest_ref_len(5, [6, 9].into_iter()), 6);
}

#[test]
fn signatures_name_the_options() {
    let o = ScoreOptions { tokenize: Tokenize::Intl, lowercase: true };
    assert!(bleu_signature(1, o, true).contains("|eff:yes|"));
    assert!(bleu_signature(2, o, false).starts_with("nrefs:2|case:lc|eff:no|tok:intl|smooth:exp|version:nmt-"));
    assert!(chrf_signature(1, o).starts_with("nrefs:1|case:lc|eff:yes|nc:6|nw:0|space:no|version:nmt-"));
}
