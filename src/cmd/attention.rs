//! `nmt translate --attention DIR`: the attention pictures of each sentence and its 1-best translation
//! (one teacher-forced pass on the reference path, [`crate::model::Transformer::attention_maps`]), drawn by
//! [`crate::viz::attention`], and `DIR/index.html`.

use super::Loaded;
use crate::run_dir::write_atomic;
use crate::viz::attention::{index_html, sentence_pictures, Pieces, SentencePictures};
use crate::viz::{render, Format};
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::path::Path;

/// The sentences to draw, all indexed by input line.
pub(super) struct Sentences<'a> {
    pub lines: &'a [String],
    /// Source ids, without specials.
    pub sources: &'a [Vec<u32>],
    /// The 1-best output ids, without specials.
    pub outputs: &'a [&'a [u32]],
    pub translations: &'a [String],
}

/// Creates `dir` (and its parents) before any work, so that an unwritable directory fails at once.
pub(super) fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--attention {}: cannot create the directory", dir.display()))
}

/// Draws every non-empty sentence's pictures into `dir`, then writes `dir/index.html`.
pub(super) fn write(m: &Loaded, s: &Sentences, dir: &Path, format: Format) -> Result<()> {
    let sp = m.tokenizer.specials;
    let max_src = m.model.max_positions() - 1; // as the translator truncates: room for </s>
    let mut pages = vec![];
    let mut written = 0;
    for (i, line) in s.lines.iter().enumerate() {
        if s.sources[i].is_empty() {
            continue;
        }
        let src: Vec<u32> = s.sources[i][..s.sources[i].len().min(max_src)].iter().copied().chain([sp.eos]).collect();
        let tgt_in: Vec<u32> = [sp.bos].into_iter().chain(s.outputs[i].iter().copied()).collect();
        let maps = m
            .model
            .attention_maps(&Tensor::new(src.as_slice(), &m.device)?, &Tensor::new(tgt_in.as_slice(), &m.device)?)?;
        let (source, target_in) = (m.tokenizer.pieces(&src), m.tokenizer.pieces(&tgt_in));
        let groups = sentence_pictures(i, &maps, &Pieces { source: &source, target_in: &target_in })?;
        for picture in groups.iter().flat_map(|g| &g.pictures) {
            let path = dir.join(format!("{}.{}", picture.stem, format.extension()));
            let bytes = render(&picture.heatmap, format).with_context(|| format!("{}", path.display()))?;
            write_atomic(&path, &bytes).with_context(|| format!("--attention {}", dir.display()))?;
            written += 1;
        }
        pages.push(SentencePictures { index: i, source: line.clone(), translation: s.translations[i].clone(), groups });
    }
    let index = dir.join("index.html");
    write_atomic(&index, index_html(&pages, format.extension()).as_bytes())
        .with_context(|| format!("--attention {}", dir.display()))?;
    crate::log!("wrote {written} attention pictures and {}", index.display());
    Ok(())
}
