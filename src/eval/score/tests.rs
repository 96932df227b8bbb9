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
        let bleu = Bleu::corpus(&c.hyps, &c.refs);
        assert!((bleu.score - c.bleu).abs() < 0.01, "{}: BLEU {} vs sacreBLEU {}", c.name, bleu.score, c.bleu);
        let chrf = Chrf::corpus(&c.hyps, &c.refs);
        assert!((chrf.score - c.chrf).abs() < 0.01, "{}: chrF {} vs sacreBLEU {}", c.name, chrf.score, c.chrf);
        // sacreBLEU's line, e.g. "BLEU = 37.07 62.5/41.2/30.1/22.0 (BP = 1.000 ratio = ...)".
        assert_eq!(bleu.line(), c.bleu_line, "{}", c.name);
        for (h, t) in c.hyps.iter().zip(&c.tok_13a) {
            assert_eq!(&tokenize_13a(h), t, "{}: 13a tokenization of {h:?}", c.name);
        }
    }
}

#[test]
fn perfect_match_is_100_and_empty_is_0() {
    let refs = vec![vec!["Ein Hund läuft.".to_string(), "Zwei Katzen schlafen.".to_string()]];
    let hyps = refs[0].clone();
    assert!((Bleu::corpus(&hyps, &refs).score - 100.0).abs() < 1e-9);
    assert!((Chrf::corpus(&hyps, &refs).score - 100.0).abs() < 1e-9);
    let empty = vec![String::new(), String::new()];
    assert_eq!(Bleu::corpus(&empty, &refs).score, 0.0);
    assert_eq!(Chrf::corpus(&empty, &refs).score, 0.0);
}

#[test]
fn closest_reference_length_prefers_the_shorter_on_ties() {
    assert_eq!(closest_ref_len(5, [3, 7].into_iter()), 3);
    assert_eq!(closest_ref_len(5, [7, 3].into_iter()), 3);
    assert_eq!(closest_ref_len(5, [6, 9].into_iter()), 6);
}
