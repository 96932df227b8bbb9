//! Pictures: heatmaps of matrices (the positional-encoding table, attention weights) and training
//! curves, drawn with `plotters` as SVG (the default) or PNG. This module owns no file: `cmd/` writes the
//! bytes that [`render`] returns.
//!
//! - Text is drawn through the bundled DejaVu Sans (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera licence,
//!   `assets/fonts/LICENSE-DejaVu.txt`), registered once with plotters' `ab_glyph` backend as "sans-serif",
//!   so no system font is needed. In SVG, text stays `<text>` elements and the viewer's sans-serif draws it;
//!   in PNG, the glyphs are rasterised from the bundled font.
//! - PNG: plotters' bitmap backend draws into memory and the `png` crate encodes it. Plotters' own encoder
//!   would pull in the `image` crate with JPEG, BMP and GIF support that `nmt` never uses.

pub mod attention;
pub mod curves;
pub mod heatmap;
pub mod positional_encoding;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

/// The font family every picture uses; [`register_font`] binds it to the bundled font.
pub const FONT: &str = "sans-serif";

/// The largest picture side, in pixels, that [`render`] accepts (a PNG of 8192² pixels is 200 MB in memory).
pub const MAX_SIDE: u32 = 8192;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// `flag` when given; otherwise PNG for a file named `*.png`, else SVG.
    pub fn resolve(flag: Option<Format>, path: &Path) -> Format {
        let png_name = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        flag.unwrap_or(if png_name { Format::Png } else { Format::Svg })
    }

    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }
}

/// A picture that can draw itself on any plotters backend.
pub trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);

    /// Draws the whole picture on `area`, which is `size()` large.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Draws `picture` and returns the bytes of the SVG or PNG file.
pub fn render(picture: &impl Picture, format: Format) -> Result<Vec<u8>> {
    register_font()?;
    let (w, h) = picture.size();
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        bail!("a picture of {w}×{h} pixels is too large to draw (at most {MAX_SIDE} a side)");
    }
    let failed = |e: String| anyhow!("cannot draw the picture: {e}");
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let area = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                picture.draw(&area).map_err(|e| failed(e.to_string()))?;
                area.present().map_err(|e| failed(e.to_string()))?;
            }
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
                picture.draw(&area).map_err(|e| failed(e.to_string()))?;
                area.present().map_err(|e| failed(e.to_string()))?;
            }
            encode_png(&rgb, w, h)
        }
    }
}

/// Encodes 8-bit RGB pixels, row by row, as a PNG file.
fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

/// Binds [`FONT`] to the bundled DejaVu Sans (once per process).
pub fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
    });
    if !ok {
        bail!("the bundled font assets/fonts/DejaVuSans.ttf cannot be read");
    }
    Ok(())
}

/// Black text of `size` pixels, anchored at `h` and `v`.
pub(crate) fn text(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK).pos(Pos::new(h, v))
}

/// Width and height of `s` in pixels at `size`. Falls back to an estimate (0.6 em a character) when the font
/// is not registered yet, so layouts never fail.
pub(crate) fn text_size(s: &str, size: u32) -> (u32, u32) {
    match (FONT, size).into_font().box_size(s) {
        Ok(wh) => wh,
        Err(_) => ((s.chars().count() as f64 * 0.6 * size as f64).ceil() as u32, size),
    }
}

/// A short, readable label for `v` on an axis from `lo` to `hi`; every label of one axis gets the same
/// precision.
pub(crate) fn number_label(v: f64, (lo, hi): (f64, f64)) -> String {
    let span = (hi - lo).abs();
    let decimals = if span >= 100.0 {
        0
    } else if span >= 10.0 {
        1
    } else if span >= 0.1 {
        2
    } else {
        // Ticks are about span / 10 apart: give the mantissa enough digits to tell them apart.
        let magnitude = lo.abs().max(hi.abs());
        let digits = ((magnitude / span).log10().ceil() as i64).saturating_add(1).clamp(1, 6) as usize;
        return format!("{v:.digits$e}");
    };
    let s = format!("{v:.decimals$}");
    // "-0.00" reads as a bug.
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_the_flag_then_the_extension() {
        assert_eq!(Format::resolve(None, Path::new("a.png")), Format::Png);
        assert_eq!(Format::resolve(None, Path::new("a.PNG")), Format::Png);
        assert_eq!(Format::resolve(None, Path::new("a.svg")), Format::Svg);
        assert_eq!(Format::resolve(None, Path::new("a")), Format::Svg);
        assert_eq!(Format::resolve(Some(Format::Svg), Path::new("a.png")), Format::Svg);
    }

    #[test]
    fn number_labels_are_short_and_never_negative_zero() {
        assert_eq!(number_label(-0.0001, (-1.0, 1.0)), "0.00");
        assert_eq!(number_label(-0.5, (-1.0, 1.0)), "-0.50");
        assert_eq!(number_label(12.345, (0.0, 50.0)), "12.3");
        assert_eq!(number_label(600.0, (0.0, 600.0)), "600");
        assert_eq!(number_label(0.0007, (0.0, 0.001)), "7.0e-4");
        // Learning rates close together still get distinct labels, all with the same precision.
        assert_eq!(number_label(0.00110, (0.0009, 0.0011)), "1.10e-3");
        assert_eq!(number_label(0.00108, (0.0009, 0.0011)), "1.08e-3");
        assert_eq!(number_label(0.0009, (0.0009, 0.0011)), "9.00e-4");
        assert_eq!(number_label(1.0, (1.0, 1.0)), "1.000000e0", "no overflow on an empty span");
    }

    #[test]
    fn the_bundled_font_registers_and_measures_text() {
        register_font().unwrap();
        let (w_short, h) = text_size("ab", 14);
        let (w_long, _) = text_size("abababab", 14);
        assert!(h > 0 && w_short > 0);
        assert!(w_long > 3 * w_short, "{w_long} vs {w_short}");
    }
}
