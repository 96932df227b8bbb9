//! The attention pictures of `nmt translate --attention DIR` (paper §3.2): for one sentence and its
//! translation, a heatmap per layer and head of the encoder self-attention, the masked decoder
//! self-attention (zero above the diagonal: a position never sees the future) and the encoder-decoder
//! attention, plus the alignment (the last decoder layer's cross-attention averaged over its heads); and
//! one HTML page that shows them all. Rows are queries, columns keys, both labelled with BPE pieces;
//! colours run over [0, 1], the range of a softmax weight. Layers and heads are counted from 0.
//!
//! This module only builds heatmaps and the page's text; `cmd/` writes the files.

use super::heatmap::Heatmap;
use crate::model::trace::AttentionMaps;
use anyhow::{ensure, Result};
use candle_core::Tensor;

/// One picture: its file name without the extension, and the heatmap.
pub struct AttentionPicture {
    pub stem: String,
    pub heatmap: Heatmap,
}

/// Pictures under one heading (one kind of attention in one layer, or the alignment).
pub struct Group {
    pub heading: String,
    pub pictures: Vec<AttentionPicture>,
}

/// One sentence's pictures.
pub struct SentencePictures {
    /// The input's index, counted from 0 (as `--nbest` counts them).
    pub index: usize,
    pub source: String,
    pub translation: String,
    pub groups: Vec<Group>,
}

/// The kinds of attention, with the names used in titles, headings and file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Encoder,
    DecoderSelf,
    Cross,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Encoder => "Encoder self-attention",
            Kind::DecoderSelf => "Decoder masked self-attention",
            Kind::Cross => "Encoder-decoder attention",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Encoder => "encoder",
            Kind::DecoderSelf => "decoder-self",
            Kind::Cross => "cross",
        }
    }
}

/// The pieces on each axis: the source with its `</s>`, the decoder's input starting with `<s>`.
pub struct Pieces<'a> {
    pub source: &'a [String],
    pub target_in: &'a [String],
}

/// Every picture of one sentence, grouped by kind and layer, then the alignment.
///
/// # Shapes
/// - `maps`: per layer (heads, q_len, k_len), with src_len = `pieces.source.len()` and tgt_len =
///   `pieces.target_in.len()`
pub fn sentence_pictures(index: usize, maps: &AttentionMaps, pieces: &Pieces) -> Result<Vec<Group>> {
    let prefix = format!("sentence{index}");
    let mut groups = vec![];
    for (kind, layers) in
        [(Kind::Encoder, &maps.encoder), (Kind::DecoderSelf, &maps.decoder_self), (Kind::Cross, &maps.cross)]
    {
        let (rows, cols) = match kind {
            Kind::Encoder => (pieces.source, pieces.source),
            Kind::DecoderSelf => (pieces.target_in, pieces.target_in),
            Kind::Cross => (pieces.target_in, pieces.source),
        };
        for (layer, weights) in layers.iter().enumerate() {
            let mut pictures = vec![];
            for (head, matrix) in weights.to_vec3::<f32>()?.into_iter().enumerate() {
                let title = format!("{}, layer {layer}, head {head}", kind.name());
                pictures.push(AttentionPicture {
                    stem: format!("{prefix}-{}-layer{layer}-head{head}", kind.file()),
                    heatmap: weights_heatmap(title, matrix, kind, rows, cols)?,
                });
            }
            groups.push(Group { heading: format!("{}, layer {layer}", kind.name()), pictures });
        }
    }
    if let Some(last) = maps.cross.last() {
        let layer = maps.cross.len() - 1;
        let title = format!("Alignment: encoder-decoder attention of layer {layer}, averaged over the heads");
        let heatmap = weights_heatmap(title, head_average(last)?, Kind::Cross, pieces.target_in, pieces.source)?;
        let pictures = vec![AttentionPicture { stem: format!("{prefix}-alignment"), heatmap }];
        groups.insert(0, Group { heading: "Alignment".to_string(), pictures });
    }
    Ok(groups)
}

/// The mean over heads.
///
/// # Shapes
/// - `weights`: (heads, q_len, k_len) → q_len × k_len
pub fn head_average(weights: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(weights.mean(0)?.to_vec2::<f32>()?)
}

fn weights_heatmap(
    title: String,
    matrix: Vec<Vec<f32>>,
    kind: Kind,
    rows: &[String],
    cols: &[String],
) -> Result<Heatmap> {
    ensure!(
        matrix.len() == rows.len() && matrix.first().is_some_and(|r| r.len() == cols.len()),
        "{title}: the weights do not match {} query and {} key pieces",
        rows.len(),
        cols.len()
    );
    let (row_name, col_name) = match kind {
        Kind::Encoder => ("query: source piece", "key: source piece"),
        Kind::DecoderSelf => ("query: decoder input", "key: decoder input"),
        Kind::Cross => ("query: decoder input", "key: source piece (encoder output)"),
    };
    Heatmap::new(title, matrix)?
        .with_rows(row_name, rows.to_vec())?
        .with_cols(col_name, cols.to_vec())?
        .with_range(0.0, 1.0)
}

/// The page that shows every picture: per sentence its source and translation, then one section per
/// group. `extension` is the pictures' file extension (svg or png).
pub fn index_html(sentences: &[SentencePictures], extension: &str) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Attention maps</title>\n\
         <style>body{font-family:sans-serif;margin:2em}img{max-width:100%;margin:0.5em 0}\
         section{margin-bottom:2em}</style>\n</head>\n<body>\n<h1>Attention maps</h1>\n\
         <p>Rows are queries, columns are keys; each row's weights sum to 1. Layers and heads are counted from \
         0.</p>\n",
    );
    for s in sentences {
        html += &format!(
            "<section>\n<h2>Sentence {}: {}</h2>\n<p>Translation: {}</p>\n",
            s.index,
            escape(&s.source),
            escape(&s.translation)
        );
        for g in &s.groups {
            html += &format!("<h3>{}</h3>\n", escape(&g.heading));
            for p in &g.pictures {
                let file = format!("{}.{extension}", p.stem);
                html += &format!("<img src=\"{}\" alt=\"{}\">\n", escape(&file), escape(p.heatmap.title()));
            }
        }
        html += "</section>\n";
    }
    html + "</body>\n</html>\n"
}

/// Escapes text for HTML content and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn pieces(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn maps() -> AttentionMaps {
        let uniform = |heads: usize, q: usize, k: usize| {
            Tensor::ones((heads, q, k), candle_core::DType::F32, &Device::Cpu).unwrap() / k as f64
        };
        AttentionMaps {
            encoder: vec![uniform(2, 3, 3).unwrap(); 2],
            decoder_self: vec![uniform(2, 2, 2).unwrap(); 2],
            cross: vec![uniform(2, 2, 3).unwrap(); 2],
        }
    }

    #[test]
    fn one_picture_per_layer_and_head_plus_the_alignment() {
        let (src, tgt) = (pieces(&["▁Hi", "!", "</s>"]), pieces(&["<s>", "▁Hallo"]));
        let groups = sentence_pictures(3, &maps(), &Pieces { source: &src, target_in: &tgt }).unwrap();
        assert_eq!(groups.len(), 1 + 3 * 2);
        assert_eq!(groups[0].heading, "Alignment");
        assert_eq!(groups[0].pictures[0].stem, "sentence3-alignment");
        assert!(groups[1..].iter().all(|g| g.pictures.len() == 2));
        let cross = &groups[5].pictures[1];
        assert_eq!(cross.stem, "sentence3-cross-layer0-head1");
        assert_eq!(cross.heatmap.rows().labels, tgt);
        assert_eq!(cross.heatmap.cols().labels, src);
        assert_eq!(cross.heatmap.range(), (0.0, 1.0));
    }

    #[test]
    fn mismatched_pieces_are_an_error_and_the_page_escapes_text() {
        let (src, tgt) = (pieces(&["a", "</s>"]), pieces(&["<s>", "b"]));
        assert!(sentence_pictures(0, &maps(), &Pieces { source: &src, target_in: &tgt }).is_err());
        let s = SentencePictures { index: 0, source: "a < b & \"c\"".into(), translation: "x".into(), groups: vec![] };
        let html = index_html(&[s], "svg");
        assert!(html.contains("a &lt; b &amp; &quot;c&quot;"), "{html}");
    }
}
