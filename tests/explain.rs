//! `nmt explain` through the binary on a tiny trained model: the five sections, `--json`, the greedy
//! translation equal to `nmt translate --beam 1`, and one-line errors that name the flag.

mod common;
use common::Dir;

const SENTENCE: &str = "The dog sees the cat.";

#[test]
fn explain_prints_five_sections_and_the_greedy_translation() {
    let dir = Dir::new();
    dir.trained();
    let greedy = dir.nmt(&["translate", "--model", "run", "--beam", "1", SENTENCE], None).ok().stdout;
    let text = dir.nmt(&["explain", "--model", "run", SENTENCE], None).ok().stdout;
    for section in ["1. Pieces and embeddings", "2. Self-attention of", "3. Multi-head", "4. Residual", "5. Decoding"] {
        assert!(text.contains(section), "no section {section:?}:\n{text}");
    }
    assert!(text.contains(&format!("Translation: {}", greedy.trim_end())), "{text}\nvs translate: {greedy}");
    let json = dir.nmt(&["explain", "--model", "run", "--json", SENTENCE], None).ok().stdout;
    let e: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(e["decoding"]["translation"], greedy.trim_end());
    // The tiny model: 1 encoder layer of 2 heads; the defaults are the last layer, head 0, and the last
    // piece with a letter in it.
    let a = &e["attention"];
    assert_eq!((a["layer"].as_u64(), a["head"].as_u64()), (Some(0), Some(0)));
    let pieces: Vec<&str> = e["pieces"].as_array().unwrap().iter().map(|p| p["piece"].as_str().unwrap()).collect();
    assert_eq!(pieces.last(), Some(&"</s>"));
    let token = a["token"].as_u64().unwrap() as usize;
    assert!(pieces[token].chars().any(char::is_alphanumeric), "{}", pieces[token]);
    assert!(pieces[token + 1..pieces.len() - 1].iter().all(|p| !p.chars().any(char::is_alphanumeric)));
    let sum: f64 = a["keys"].as_array().unwrap().iter().map(|k| k["weight"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-5, "weights sum to {sum}");
    assert_eq!(e["heads"]["heads"].as_array().unwrap().len(), 2);
    // --token by index, --head 1.
    let json = dir.nmt(&["explain", "--model", "run", "--json", "--token", "0", "--head", "1", SENTENCE], None).ok();
    let e: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!((e["attention"]["token"].as_u64(), e["attention"]["head"].as_u64()), (Some(0), Some(1)));
    assert_eq!(e["attention"]["piece"], pieces[0]);
}

#[test]
fn explain_bad_flags_give_one_line_errors_naming_the_flag() {
    let dir = Dir::new();
    dir.trained();
    let explain = |extra: &[&str]| dir.nmt(&[&["explain", "--model", "run"][..], extra, &[SENTENCE]].concat(), None);
    explain(&["--token", "zebra"]).fails_with(&["--token \"zebra\"", "no piece of the sentence"]);
    explain(&["--token", "99"]).fails_with(&["--token 99", "pieces"]);
    explain(&["--layer", "1"]).fails_with(&["--layer 1", "the encoder has 1 layer,"]);
    explain(&["--head", "2"]).fails_with(&["--head 2", "each layer has 2 heads"]);
    let out = explain(&["--head", "-1"]);
    assert_eq!(out.code, 2, "a negative head is a usage error:\n{}", out.stderr);
    dir.nmt(&["explain", "--model", "missing", SENTENCE], None).fails_with(&["--model missing"]);
}
