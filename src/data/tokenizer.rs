//! The joint BPE vocabulary, learned on both sides of the corpus with the `tokenizers` crate.
//!
//! Text is split on spaces with the SentencePiece-style Metaspace pre-tokenizer (`▁` marks a word start),
//! so decoding restores the original spacing exactly. The special tokens come first and so have fixed ids:
//! `<pad>` 0, `<s>` 1 (bos), `</s>` 2 (eos), `<unk>` 3.

use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::Metaspace;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

/// The special tokens, in id order.
pub const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// Ids of the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
}

pub struct Tokenizer {
    inner: HfTokenizer,
    pub specials: Specials,
}

impl Tokenizer {
    /// Learns a BPE vocabulary of at most `vocab_size` tokens from `texts` (both languages).
    pub fn train<'a>(texts: impl Iterator<Item = &'a str> + Send, vocab_size: usize) -> Result<Self> {
        let specials = SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let model = BPE::builder().unk_token("<unk>".into()).build().map_err(|e| anyhow!("{e}"))?;
        let mut inner = HfTokenizer::new(model);
        inner.with_pre_tokenizer(Some(Metaspace::default()));
        inner.with_decoder(Some(MetaspaceDecoder::default()));
        inner.train(&mut trainer, texts).map_err(|e| anyhow!("training the BPE vocabulary: {e}"))?;
        Self::wrap(inner)
    }

    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let inner =
            HfTokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        Self::wrap(inner).map_err(|e| anyhow!("tokenizer {}: {e}", path.display()))
    }

    /// Reads what [`Self::to_json`] wrote (a tokenizer received from another process).
    pub fn from_json(json: &str) -> Result<Self> {
        let inner: HfTokenizer = json.parse().map_err(|e| anyhow!("cannot read a tokenizer: {e}"))?;
        Self::wrap(inner)
    }

    fn wrap(inner: HfTokenizer) -> Result<Self> {
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| anyhow!("special token {t} is missing"));
        let specials = Specials { pad: id("<pad>")?, bos: id("<s>")?, eos: id("</s>")?, unk: id("<unk>")? };
        if [specials.pad, specials.bos, specials.eos, specials.unk] != [0, 1, 2, 3] {
            bail!("special tokens must have ids 0..4 in the order {SPECIALS:?}");
        }
        Ok(Self { inner, specials })
    }

    /// Serialises to JSON (what `tokenizer.json` holds).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| anyhow!("{e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without bos/eos.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("{e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BPE piece of each id as the vocabulary spells it (`▁` marks a word start; specials such as
    /// `</s>` included); an id outside the vocabulary is written `<id N>`.
    pub fn pieces(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&id| self.inner.id_to_token(id).unwrap_or_else(|| format!("<id {id}>"))).collect()
    }

    /// Text of `ids`; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_joint_vocabulary_and_round_trips_text() {
        let texts = [
            "der Hund sieht den Mann .",
            "the dog sees the man .",
            "die Frau sieht den Hund .",
            "the woman sees the dog .",
        ];
        let tok = Tokenizer::train(texts.iter().copied(), 60).unwrap();
        assert_eq!(tok.specials, Specials { pad: 0, bos: 1, eos: 2, unk: 3 });
        assert!(tok.vocab_size() <= 60 && tok.vocab_size() > 10);
        for t in texts {
            let ids = tok.encode(t).unwrap();
            assert!(!ids.contains(&3), "{t} has unknown tokens");
            assert_eq!(tok.decode(&ids).unwrap(), t);
        }
        // Unseen characters become <unk> and vanish on decoding rather than failing.
        let ids = tok.encode("der Hund ✓").unwrap();
        assert!(ids.contains(&3));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, tok.to_json().unwrap()).unwrap();
        let again = Tokenizer::load(&p).unwrap();
        assert_eq!(again.encode(texts[0]).unwrap(), tok.encode(texts[0]).unwrap());
    }

    #[test]
    fn loading_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{not json").unwrap();
        let e = Tokenizer::load(&p).err().unwrap().to_string();
        assert!(e.starts_with("cannot load tokenizer") && e.contains("tokenizer.json"), "{e}");
    }
}
