//! The picture of the sinusoidal positional encoding (paper §3.5): positions down, dimensions across.
//!
//! The values are the model's own table ([`crate::model::embedding::PositionalEncoding`]), not a second
//! copy of the formula, so the picture shows exactly what the model adds to its embeddings:
//! PE(pos, 2i) = sin(pos / 10000^(2i/d_model)) and PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).
//!
//! [`Layout::Interleaved`] keeps the model's order (sine, cosine, sine, …). [`Layout::Halves`] draws the
//! sine dimensions 0, 2, 4, … first and then the cosine dimensions 1, 3, 5, …, as "The Illustrated
//! Transformer" does (its code concatenates sines and cosines). Both show the same numbers: only the columns
//! are reordered.

use super::heatmap::{Heatmap, Palette, MAX_CELLS};
use crate::model::embedding::PositionalEncoding;
use anyhow::{ensure, Result};
use candle_core::Device;

/// The order of the dimensions across the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// The model's order: sin, cos, sin, cos, …
    Interleaved,
    /// All sine dimensions (even), then all cosine dimensions (odd).
    Halves,
}

/// The model dimension shown in each column of `layout`.
pub fn column_dims(d_model: usize, layout: Layout) -> Vec<usize> {
    match layout {
        Layout::Interleaved => (0..d_model).collect(),
        Layout::Halves => (0..d_model).step_by(2).chain((1..d_model).step_by(2)).collect(),
    }
}

/// The heatmap of PE for positions 0..positions and every dimension of a `d_model`-wide model.
pub fn heatmap(positions: usize, d_model: usize, layout: Layout) -> Result<Heatmap> {
    ensure!(positions >= 1, "--positions must be at least 1, got {positions}");
    ensure!(
        d_model >= 2 && d_model.is_multiple_of(2),
        "--d-model must be a positive even number (dimensions 2i and 2i+1 pair a sine with a cosine), got {d_model}"
    );
    ensure!(
        positions.checked_mul(d_model).is_some_and(|cells| cells <= MAX_CELLS),
        "--positions {positions} × --d-model {d_model} is more than {MAX_CELLS} cells: too many to draw"
    );
    let table = PositionalEncoding::new(positions, d_model, &Device::Cpu)?.table().to_vec2::<f32>()?;
    let dims = column_dims(d_model, layout);
    let values = table.iter().map(|row| dims.iter().map(|&d| row[d]).collect()).collect();
    let (title, cols) = match layout {
        Layout::Interleaved => (
            format!("Positional encoding, d_model = {d_model}: sin on even, cos on odd dimensions"),
            "dimension".to_string(),
        ),
        Layout::Halves => (
            format!("Positional encoding, d_model = {d_model}: sine half | cosine half"),
            format!("dimension (left: sin, even 0…{}; right: cos, odd 1…{})", d_model - 2, d_model - 1),
        ),
    };
    Heatmap::new(title, values)?
        .with_rows("position", (0..positions).map(|p| p.to_string()).collect())?
        .with_cols(cols, dims.iter().map(|d| d.to_string()).collect())?
        .with_palette(Palette::Diverging)
        .with_range(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's formula, written out here independently of the model's code.
    fn paper(pos: usize, dim: usize, d_model: usize) -> f64 {
        let angle = pos as f64 / 10000f64.powf((dim - dim % 2) as f64 / d_model as f64);
        if dim.is_multiple_of(2) {
            angle.sin()
        } else {
            angle.cos()
        }
    }

    #[test]
    fn interleaved_values_equal_the_paper_formula() {
        let h = heatmap(50, 64, Layout::Interleaved).unwrap();
        assert_eq!((h.values().len(), h.values()[0].len()), (50, 64));
        for (pos, dim) in [(0, 0), (0, 1), (1, 0), (1, 1), (7, 10), (23, 31), (49, 62), (49, 63)] {
            let got = h.values()[pos][dim] as f64;
            assert!((got - paper(pos, dim, 64)).abs() < 1e-6, "PE({pos}, {dim}) = {got}");
        }
        assert_eq!(h.cols().labels[..4], ["0", "1", "2", "3"]);
        assert_eq!(h.rows().labels[49], "49");
    }

    #[test]
    fn halves_put_the_sine_columns_first() {
        let d_model = 16;
        let h = heatmap(10, d_model, Layout::Halves).unwrap();
        let labels: Vec<&str> = h.cols().labels.iter().map(String::as_str).collect();
        assert_eq!(labels, ["0", "2", "4", "6", "8", "10", "12", "14", "1", "3", "5", "7", "9", "11", "13", "15"]);
        for pos in [0, 3, 9] {
            for i in 0..d_model / 2 {
                let (sin, cos) = (h.values()[pos][i] as f64, h.values()[pos][d_model / 2 + i] as f64);
                assert!((sin - paper(pos, 2 * i, d_model)).abs() < 1e-6, "sin at ({pos}, {i})");
                assert!((cos - paper(pos, 2 * i + 1, d_model)).abs() < 1e-6, "cos at ({pos}, {i})");
            }
        }
        // Position 0: every sine is 0 and every cosine is 1.
        assert!(h.values()[0][..8].iter().all(|&v| v == 0.0));
        assert!(h.values()[0][8..].iter().all(|&v| v == 1.0));
    }

    #[test]
    fn bad_sizes_are_errors_that_name_the_flag() {
        let err = heatmap(0, 16, Layout::Interleaved).unwrap_err().to_string();
        assert!(err.contains("--positions"), "{err}");
        let err = heatmap(100_000, 512, Layout::Interleaved).unwrap_err().to_string();
        assert!(err.contains("too many"), "{err}");
        for d in [0, 7] {
            let err = heatmap(5, d, Layout::Interleaved).unwrap_err().to_string();
            assert!(err.contains("--d-model") && err.contains("even"), "{err}");
        }
    }
}
