//! `nmt inspect positional-encoding` and `nmt plot`, driven through the binary: the pictures parse, have one
//! cell per table entry and the right labels, the PNGs decode, and bad input fails without leaving a file.

mod common;

use common::Dir;
use nmt::viz::heatmap::Palette;
use std::collections::{BTreeMap, BTreeSet};

/// The SVG as a parsed document; panics with the text if it is not well-formed XML.
fn parse(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("SVG is not well-formed: {e}\n{svg:.2000}"))
}

fn num(n: roxmltree::Node, attr: &str) -> i64 {
    n.attribute(attr).and_then(|v| v.parse::<f64>().ok()).unwrap_or_else(|| panic!("no number {attr} on {n:?}")) as i64
}

/// The texts of every `<text>` element, in document order.
fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants().filter(|n| n.has_tag_name("text")).map(|n| n.text().unwrap_or("").trim().to_string()).collect()
}

/// The heatmap cells: the equal rectangles that form a `rows × cols` grid (there must be exactly one such
/// grid), as (y, x) → fill colour.
fn cells(doc: &roxmltree::Document, rows: usize, cols: usize) -> BTreeMap<(i64, i64), String> {
    cells_and_size(doc, rows, cols).0
}

/// [`cells`], and the width and height of one cell.
fn cells_and_size(doc: &roxmltree::Document, rows: usize, cols: usize) -> (BTreeMap<(i64, i64), String>, (i64, i64)) {
    let rects: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("rect")).collect();
    let mut by_size: BTreeMap<(i64, i64), Vec<roxmltree::Node>> = BTreeMap::new();
    for r in rects {
        by_size.entry((num(r, "width"), num(r, "height"))).or_default().push(r);
    }
    let grids: Vec<_> = by_size
        .iter()
        .filter(|(_, v)| v.len() == rows * cols)
        .map(|(size, cells)| {
            let grid: BTreeMap<(i64, i64), String> = cells
                .iter()
                .map(|r| ((num(*r, "y"), num(*r, "x")), r.attribute("fill").unwrap().to_string()))
                .collect();
            (grid, *size)
        })
        .filter(|(grid, _)| {
            let ys: BTreeSet<i64> = grid.keys().map(|k| k.0).collect();
            let xs: BTreeSet<i64> = grid.keys().map(|k| k.1).collect();
            (ys.len(), xs.len(), grid.len()) == (rows, cols, rows * cols)
        })
        .collect();
    assert_eq!(grids.len(), 1, "no single {rows}×{cols} grid of equal rectangles; sizes: {:?}", by_size.keys());
    grids.into_iter().next().unwrap()
}

/// The fills of the top row of cells, left to right.
fn first_row(grid: &BTreeMap<(i64, i64), String>) -> Vec<String> {
    let top = grid.keys().next().unwrap().0;
    grid.iter().filter(|(k, _)| k.0 == top).map(|(_, v)| v.clone()).collect()
}

fn hex(c: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Width, height and RGB(A) pixels of a PNG file.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).expect("PNG data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn svg_size(doc: &roxmltree::Document) -> (u32, u32) {
    let root = doc.root_element();
    (num(root, "width") as u32, num(root, "height") as u32)
}

#[test]
fn positional_encoding_svg_has_one_cell_per_entry_and_the_labels() {
    let dir = Dir::new();
    dir.nmt(&["inspect", "positional-encoding", "--positions", "8", "--d-model", "6", "-o", "pe.svg"], None).ok();
    let svg = std::fs::read_to_string(dir.path("pe.svg")).unwrap();
    let doc = parse(&svg);
    let grid = cells(&doc, 8, 6);
    let texts = texts(&doc);
    for label in ["0", "1", "2", "3", "4", "5", "6", "7", "position", "dimension"] {
        assert!(texts.iter().any(|t| t == label), "no label {label:?} in {texts:?}");
    }
    assert!(texts.iter().any(|t| t.starts_with("Positional encoding, d_model = 6")), "{texts:?}");
    // Position 0: sin 0 = 0 (the middle of the scale) on even dims, cos 0 = 1 (its top) on odd dims.
    let (zero, one) = (hex(Palette::Diverging.colour(0.5)), hex(Palette::Diverging.colour(1.0)));
    assert_eq!(first_row(&grid), [&*zero, &*one, &*zero, &*one, &*zero, &*one]);
    // The colour scale runs from -1 to 1.
    for tick in ["-1.00", "0.00", "1.00"] {
        assert!(texts.iter().any(|t| t == tick), "no colour-bar label {tick} in {texts:?}");
    }
}

#[test]
fn halves_layout_puts_the_sine_columns_first() {
    let dir = Dir::new();
    let args = ["inspect", "positional-encoding", "--positions", "4", "--d-model", "8", "--layout", "halves"];
    dir.nmt(&[&args[..], &["-o", "pe.svg"]].concat(), None).ok();
    let svg = std::fs::read_to_string(dir.path("pe.svg")).unwrap();
    let doc = parse(&svg);
    let (grid, (_, cell_h)) = cells_and_size(&doc, 4, 8);
    let (zero, one) = (hex(Palette::Diverging.colour(0.5)), hex(Palette::Diverging.colour(1.0)));
    assert_eq!(first_row(&grid), [&*zero, &*zero, &*zero, &*zero, &*one, &*one, &*one, &*one]);
    // Column labels under the grid, left to right, are the model's dimensions: evens, then odds.
    let grid_bottom = grid.keys().map(|k| k.0).max().unwrap() + cell_h;
    let mut under: Vec<(i64, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text") && num(*n, "y") > grid_bottom)
        .filter_map(|n| n.text().map(|t| (num(n, "x"), t.trim().to_string())))
        .filter(|(_, t)| t.parse::<usize>().is_ok())
        .collect();
    under.sort();
    let labels: Vec<&str> = under.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(labels, ["0", "2", "4", "6", "1", "3", "5", "7"]);
}

#[test]
fn positional_encoding_png_decodes_at_the_svg_size_with_text_drawn() {
    let dir = Dir::new();
    let base = ["inspect", "positional-encoding", "--positions", "20", "--d-model", "32"];
    dir.nmt(&[&base[..], &["-o", "pe.svg"]].concat(), None).ok();
    dir.nmt(&[&base[..], &["-o", "pe.png"]].concat(), None).ok();
    dir.nmt(&[&base[..], &["--format", "png", "-o", "pe.picture"]].concat(), None).ok();
    let svg = std::fs::read_to_string(dir.path("pe.svg")).unwrap();
    let (w, h) = svg_size(&parse(&svg));
    let png_bytes = std::fs::read(dir.path("pe.png")).unwrap();
    assert_eq!(std::fs::read(dir.path("pe.picture")).unwrap(), png_bytes, "--format png differs from *.png");
    let (pw, ph, rgb) = decode_png(&png_bytes);
    assert_eq!((pw, ph), (w, h));
    let colours: BTreeSet<&[u8]> = rgb.chunks(3).collect();
    assert!(colours.len() > 50, "only {} colours", colours.len());
    // The title band (above the grid) holds only the title: dark pixels there are glyphs from the bundled font.
    let title_band = &rgb[..(w * 40 * 3) as usize];
    let dark = title_band.chunks(3).filter(|p| p.iter().all(|&c| c < 80)).count();
    assert!(dark > 100, "{dark} dark pixels in the title band: is text drawn?");
}

#[test]
fn inspect_rejects_bad_sizes_and_writes_nothing() {
    let dir = Dir::new();
    let pe = |extra: &[&str]| dir.nmt(&[&["inspect", "positional-encoding", "-o", "pe.svg"][..], extra].concat(), None);
    pe(&["--positions", "0"]).fails_with(&["--positions", "at least 1"]);
    pe(&["--d-model", "7"]).fails_with(&["--d-model", "even", "7"]);
    pe(&["--d-model", "0"]).fails_with(&["--d-model", "even"]);
    pe(&["--positions", "100000"]).fails_with(&["too many"]);
    assert_eq!(std::fs::read_dir(dir.tmp.path()).unwrap().count(), 0, "a file was left behind");
}

/// A metrics.jsonl as the trainer writes it: 10 training lines, and a validation at steps 4, 8 and 10.
fn metrics() -> String {
    let mut lines = vec![];
    for step in (2..=20).step_by(2) {
        let loss = 8.0 / (1.0 + step as f64 / 4.0);
        lines.push(format!(
            r#"{{"kind":"train","step":{step},"epoch":1,"loss":{loss},"nll":{},"lr":{},"src_tokens_per_sec":1000.0,"tgt_tokens_per_sec":1000.0,"elapsed_sec":1.0}}"#,
            loss - 0.4,
            1e-4 * step as f64
        ));
        if step % 8 == 0 || step == 20 {
            lines.push(format!(
                r#"{{"kind":"valid","step":{step},"epoch":1,"valid_loss":{},"valid_ppl":9.0,"valid_bleu":{},"valid_chrf":{},"elapsed_sec":2.0}}"#,
                loss - 0.2,
                step as f64,
                step as f64 * 2.0
            ));
        }
    }
    lines.join("\n") + "\n"
}

/// Polylines (the drawn series) grouped by their number of points.
fn polylines_by_length(doc: &roxmltree::Document) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for n in doc.descendants().filter(|n| n.has_tag_name("polyline")) {
        *counts.entry(n.attribute("points").unwrap().split_whitespace().count()).or_default() += 1;
    }
    counts
}

#[test]
fn plot_draws_every_series_with_its_name_and_axis_labels() {
    let dir = Dir::new();
    dir.write("run/metrics.jsonl", metrics());
    dir.nmt(&["plot", "--model", "run", "-o", "curves.svg"], None).ok();
    let svg = std::fs::read_to_string(dir.path("curves.svg")).unwrap();
    let doc = parse(&svg);
    let lines = polylines_by_length(&doc);
    // Training loss, training NLL and learning rate: 10 points each; validation NLL, BLEU, chrF: 3 each.
    assert_eq!(lines.get(&10), Some(&3), "{lines:?}");
    assert_eq!(lines.get(&3), Some(&3), "{lines:?}");
    let texts = texts(&doc);
    for t in
        ["training loss (label-smoothed)", "training NLL", "validation NLL", "BLEU", "chrF2", "step", "Learning rate"]
    {
        assert!(texts.iter().any(|x| x == t), "no text {t:?} in {texts:?}");
    }
    let dots = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
    assert_eq!(dots, 9, "one dot per validation point and series");
}

#[test]
fn plot_defaults_to_the_run_directory_and_png_decodes() {
    let dir = Dir::new();
    dir.write("run/metrics.jsonl", metrics());
    dir.nmt(&["plot", "--model", "run"], None).ok();
    parse(&std::fs::read_to_string(dir.path("run/metrics.svg")).unwrap());
    dir.nmt(&["plot", "--model", "run", "--format", "png"], None).ok();
    let (w, h, rgb) = decode_png(&std::fs::read(dir.path("run/metrics.png")).unwrap());
    assert_eq!((w, h), (1000, 940));
    let colours: BTreeSet<&[u8]> = rgb.chunks(3).collect();
    assert!(colours.len() > 20, "only {} colours", colours.len());
}

#[test]
fn plot_reads_a_real_training_run() {
    let dir = Dir::new();
    dir.trained();
    dir.nmt(&["plot", "--model", "run", "-o", "curves.svg"], None).ok();
    let svg = std::fs::read_to_string(dir.path("curves.svg")).unwrap();
    let doc = parse(&svg);
    let metrics = std::fs::read_to_string(dir.path("run/metrics.jsonl")).unwrap();
    let count = |kind: &str| metrics.lines().filter(|l| l.contains(&format!("\"kind\":\"{kind}\""))).count();
    let (train, valid) = (count("train"), count("valid"));
    assert!(train >= 3 && valid >= 1, "the tiny run logged {train} training and {valid} validation lines");
    // Loss, NLL and learning rate: one line each through every training point (and the validation lines
    // too if there are as many validations).
    let expected = if valid == train { 6 } else { 3 };
    assert_eq!(polylines_by_length(&doc).get(&train), Some(&expected), "{metrics}");
    // Validation NLL, BLEU and chrF: a dot per validation.
    let dots = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
    assert_eq!(dots, 3 * valid);
}

#[test]
fn plot_errors_name_the_metrics_file_and_leave_no_picture() {
    let dir = Dir::new();
    std::fs::create_dir(dir.path("run")).unwrap();
    let plot = || dir.nmt(&["plot", "--model", "run", "-o", "out.svg"], None);
    plot().fails_with(&["cannot read", "metrics.jsonl"]);
    dir.write("run/metrics.jsonl", "");
    plot().fails_with(&["metrics.jsonl", "no training or validation lines"]);
    dir.write("run/metrics.jsonl", metrics() + "{\"kind\":\"train\",\"step\":");
    plot().fails_with(&["metrics.jsonl", "line 14"]);
    dir.nmt(&["plot", "--model", "missing"], None).fails_with(&["missing/metrics.jsonl"]);
    let left: Vec<_> = std::fs::read_dir(dir.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["run"], "files left behind");
    assert_eq!(std::fs::read_dir(dir.path("run")).unwrap().count(), 1);
}

/// The text labels of a heatmap SVG after its title: the row labels, then the column labels.
fn row_and_col_labels(doc: &roxmltree::Document, rows: usize, cols: usize) -> (Vec<String>, Vec<String>) {
    let t = texts(doc);
    (t[1..1 + rows].to_vec(), t[1 + rows..1 + rows + cols].to_vec())
}

/// The side of the one square grid of equal rectangles (the cells of a self-attention map).
fn square_side(doc: &roxmltree::Document) -> usize {
    let mut by_size: BTreeMap<(i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
    for r in doc.descendants().filter(|n| n.has_tag_name("rect")) {
        by_size.entry((num(r, "width"), num(r, "height"))).or_default().push((num(r, "y"), num(r, "x")));
    }
    let sides: Vec<usize> = by_size
        .values()
        .filter_map(|cells| {
            let ys = cells.iter().map(|c| c.0).collect::<BTreeSet<_>>().len();
            let xs = cells.iter().map(|c| c.1).collect::<BTreeSet<_>>().len();
            (ys == xs && ys * xs == cells.len() && ys > 1).then_some(ys)
        })
        .collect();
    assert_eq!(sides.len(), 1, "no single square grid: {:?}", by_size.keys());
    sides[0]
}

/// A trained tiny run whose outputs are at most 4 tokens longer than their sources (so that every label of
/// the pictures is drawn, none thinned out).
fn trained_short_outputs() -> Dir {
    let dir = Dir::new();
    dir.trained();
    let path = dir.path("run/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["decode"]["max_len_extra"] = 4.into();
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn translate_attention_draws_every_layer_and_head_with_pieces_and_an_index() {
    let dir = trained_short_outputs();
    let sentence = "The dog.";
    let out = dir.nmt(&["translate", "--model", "run", "--beam", "1", "--attention", "att", sentence, ""], None).ok();
    let translation = out.stdout.lines().next().unwrap().to_string();
    let same = dir.nmt(&["translate", "--model", "run", "--beam", "1", sentence], None).ok();
    assert_eq!(same.stdout.lines().next().unwrap(), translation, "--attention changed the translation");
    let tok = nmt::data::tokenizer::Tokenizer::load(&dir.path("run/tokenizer.json")).unwrap();
    let mut source = tok.pieces(&tok.encode(sentence).unwrap());
    source.push("</s>".to_string());
    let n = source.len();
    // The tiny model has 1 encoder and 1 decoder layer of 2 heads: 2 + 2 + 2 pictures and the alignment.
    let mut stems = vec!["sentence0-alignment".to_string()];
    for kind in ["encoder", "decoder-self", "cross"] {
        stems.extend((0..2).map(|h| format!("sentence0-{kind}-layer0-head{h}")));
    }
    let encoder = std::fs::read_to_string(dir.path("att/sentence0-encoder-layer0-head1.svg")).unwrap();
    let doc = parse(&encoder);
    cells(&doc, n, n);
    assert_eq!(row_and_col_labels(&doc, n, n), (source.clone(), source.clone()), "labels are the pieces");
    // The decoder reads <s> and the translation's pieces: m rows, the same m columns.
    let decoder = std::fs::read_to_string(dir.path("att/sentence0-decoder-self-layer0-head0.svg")).unwrap();
    let doc = parse(&decoder);
    let m = square_side(&doc);
    let grid = cells(&doc, m, m);
    let (rows, cols) = row_and_col_labels(&doc, m, m);
    assert_eq!((rows[0].as_str(), &rows), ("<s>", &cols));
    let text: String = rows[1..].iter().filter(|p| !p.starts_with('<')).map(|p| p.replace('▁', " ")).collect();
    assert_eq!(text.trim(), translation, "the decoder's labels are the translation's pieces");
    let zero = hex(Palette::Sequential.colour(0.0));
    let ys: Vec<i64> = grid.keys().map(|k| k.0).collect::<BTreeSet<_>>().into_iter().collect();
    let xs: Vec<i64> = grid.keys().map(|k| k.1).collect::<BTreeSet<_>>().into_iter().collect();
    for (r, y) in ys.iter().enumerate() {
        for (c, x) in xs.iter().enumerate().skip(r + 1) {
            assert_eq!(grid[&(*y, *x)], zero, "cell ({r}, {c}) above the diagonal is not zero");
        }
    }
    let cross = std::fs::read_to_string(dir.path("att/sentence0-cross-layer0-head0.svg")).unwrap();
    let doc = parse(&cross);
    cells(&doc, m, n);
    assert_eq!(row_and_col_labels(&doc, m, n), (rows.clone(), source.clone()));
    let alignment = std::fs::read_to_string(dir.path("att/sentence0-alignment.svg")).unwrap();
    cells(&parse(&alignment), m, n);
    // index.html shows exactly the files written (the empty second input has none), under headings.
    let html = std::fs::read_to_string(dir.path("att/index.html")).unwrap();
    let shown: BTreeSet<String> =
        html.split("src=\"").skip(1).map(|s| s.split('"').next().unwrap().to_string()).collect();
    let written: BTreeSet<String> = std::fs::read_dir(dir.path("att"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f != "index.html")
        .collect();
    let expected: BTreeSet<String> = stems.iter().map(|s| format!("{s}.svg")).collect();
    assert_eq!((&shown, &written), (&expected, &expected));
    for heading in ["Alignment", "Encoder self-attention, layer 0", "Decoder masked self-attention, layer 0"] {
        assert!(html.contains(&format!("<h3>{heading}</h3>")), "no heading {heading}");
    }
    assert!(html.contains(sentence));
}

#[test]
fn translate_attention_png_decodes_and_bad_directories_name_the_flag() {
    let dir = trained_short_outputs();
    let args = ["translate", "--model", "run", "--attention", "att", "--format", "png", "The dog runs."];
    dir.nmt(&args, None).ok();
    let (w, h, rgb) = decode_png(&std::fs::read(dir.path("att/sentence0-encoder-layer0-head0.png")).unwrap());
    assert!(w > 100 && h > 100 && rgb.chunks(3).collect::<BTreeSet<_>>().len() > 10);
    assert!(std::fs::read_to_string(dir.path("att/index.html")).unwrap().contains("sentence0-alignment.png"));
    dir.write("file.txt", "not a directory");
    let out = dir.nmt(&["translate", "--model", "run", "--attention", "file.txt/att", "The dog runs."], None);
    assert!(out.stdout.is_empty(), "translated before failing: {}", out.stdout);
    out.fails_with(&["--attention", "file.txt/att"]);
    let usage = dir.nmt(&["translate", "--model", "run", "--format", "png", "The dog runs."], None);
    assert_eq!(usage.code, 2, "--format without --attention is a usage error");
}
