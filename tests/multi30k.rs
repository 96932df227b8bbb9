//! A few training steps on the real Multi30k corpus, when `../shared/data/multi30k/` is present; without it
//! the test is skipped, or fails with CI=true.

mod common;
use common::{repo, Dir};

#[test]
fn trains_a_few_steps_on_multi30k_when_present() {
    let data = repo().join("../shared/data/multi30k");
    let files = ["train.de", "train.en", "valid.de", "valid.en"];
    if let Some(f) = files.iter().find(|f| !data.join(f).is_file()) {
        let what = format!("{} (../shared/data/multi30k, from scripts/fetch_multi30k.sh)", data.join(f).display());
        common::missing_prerequisite("trains_a_few_steps_on_multi30k_when_present", &what);
        return;
    }
    let d = Dir::new();
    // 2,000 training pairs keep the tokenizer and the steps quick; the text is read, never copied.
    for (split, n) in [("train", 2000), ("valid", 20)] {
        for lang in ["de", "en"] {
            let text = std::fs::read_to_string(data.join(format!("{split}.{lang}"))).unwrap();
            let lines: Vec<&str> = text.lines().take(n).collect();
            d.write(&format!("data/{split}.{lang}"), lines.join("\n") + "\n");
        }
    }
    let cfg = common::tiny_config_json(4)
        .replace("\"vocab_size\": 200", "\"vocab_size\": 2000")
        .replace(".en\"", ".tgt\"")
        .replace(".de\"", ".en\"")
        .replace(".tgt\"", ".de\""); // German → English, the usual Multi30k direction
    assert!(cfg.contains("\"train_src\": \"data/train.de\""), "{cfg}");
    d.write("m30k.json", cfg);
    let out = d.nmt(&["train", "--config", "m30k.json", "--out", "run"], None).ok();
    assert!(out.stderr.contains("train: 2000 pairs used"), "{}", out.stderr);
    let t = d.nmt(&["translate", "--model", "run", "Ein Hund läuft im Schnee."], None).ok();
    assert_eq!(t.stdout.lines().count(), 1);
}
