//! A heatmap: one coloured cell per matrix entry, a label per row and per column, a title and a colour
//! bar. It draws the positional-encoding table, and attention weights with BPE pieces on both axes.
//!
//! Hand-written on plotters' drawing area rather than built on its `ChartBuilder`: a chart's mesh puts
//! ticks at round values of a continuous axis, while a heatmap needs one label per row and per column
//! (thinned only where labels would overlap) and exactly one rectangle per entry. The colour scales are a
//! few anchor colours interpolated linearly (viridis; a blue-white-red diverging scale), so that one
//! function colours the cells and the colour bar alike and a NaN is drawn grey instead of panicking.

use super::{number_label, text, text_size, Picture};
use anyhow::{bail, ensure, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

/// The most cells one heatmap draws (an SVG spends about 100 bytes a cell).
pub const MAX_CELLS: usize = 250_000;
/// The colour bar is drawn as this many stacked rectangles.
pub const COLOUR_BAR_STEPS: usize = 64;

const MARGIN: i32 = 16;
const GAP: i32 = 6;
const LABEL: u32 = 14;
const AXIS: u32 = 15;
const TITLE: u32 = 18;
const GRID_MAX_W: u32 = 1100;
const GRID_MAX_H: u32 = 720;
const CELL_MAX: u32 = 36;
const BAR_W: i32 = 16;
const BAR_GAP: i32 = 24;
const BAR_MIN_H: i32 = 160;
const BAR_TICKS: usize = 5;

/// How values map to colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Palette {
    /// Viridis, dark blue (low) to yellow (high): for weights in [0, 1] such as attention.
    Sequential,
    /// Blue (negative), white (zero), red (positive): for signed values such as sin and cos.
    Diverging,
}

impl Palette {
    /// The colour at `t` in [0, 1] (clamped); grey for NaN.
    pub fn colour(self, t: f64) -> RGBColor {
        const VIRIDIS: [(u8, u8, u8); 10] = [
            (0x44, 0x01, 0x54),
            (0x48, 0x28, 0x78),
            (0x3e, 0x49, 0x89),
            (0x31, 0x68, 0x8e),
            (0x26, 0x82, 0x8e),
            (0x1f, 0x9e, 0x89),
            (0x35, 0xb7, 0x79),
            (0x6e, 0xce, 0x58),
            (0xb5, 0xde, 0x2b),
            (0xfd, 0xe7, 0x25),
        ];
        const BLUE_WHITE_RED: [(u8, u8, u8); 9] = [
            (0x21, 0x66, 0xac),
            (0x43, 0x93, 0xc3),
            (0x92, 0xc5, 0xde),
            (0xd1, 0xe5, 0xf0),
            (0xf7, 0xf7, 0xf7),
            (0xfd, 0xdb, 0xc7),
            (0xf4, 0xa5, 0x82),
            (0xd6, 0x60, 0x4d),
            (0xb2, 0x18, 0x2b),
        ];
        if t.is_nan() {
            return RGBColor(0xaa, 0xaa, 0xaa);
        }
        let anchors: &[(u8, u8, u8)] = match self {
            Palette::Sequential => &VIRIDIS,
            Palette::Diverging => &BLUE_WHITE_RED,
        };
        let x = t.clamp(0.0, 1.0) * (anchors.len() - 1) as f64;
        let i = (x.floor() as usize).min(anchors.len() - 2);
        let f = x - i as f64;
        let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
        let (a, b) = (anchors[i], anchors[i + 1]);
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }
}

/// One axis of the matrix: its name and one label per row (or column).
#[derive(Debug, Clone)]
pub struct Axis {
    pub name: String,
    pub labels: Vec<String>,
}

/// A matrix drawn as coloured cells; row 0 is at the top, column 0 at the left.
#[derive(Debug, Clone)]
pub struct Heatmap {
    title: String,
    values: Vec<Vec<f32>>,
    rows: Axis,
    cols: Axis,
    palette: Palette,
    range: Option<(f64, f64)>,
}

impl Heatmap {
    /// A heatmap of `values` (rows × columns), labelled 0, 1, 2, … until [`Heatmap::with_rows`] and
    /// [`Heatmap::with_cols`] name them; sequential palette; range from the data.
    pub fn new(title: impl Into<String>, values: Vec<Vec<f32>>) -> Result<Self> {
        let rows = values.len();
        let cols = values.first().map_or(0, |r| r.len());
        ensure!(rows > 0 && cols > 0, "a heatmap needs at least one row and one column");
        if let Some(r) = values.iter().position(|r| r.len() != cols) {
            bail!("heatmap row {r} has {} values, row 0 has {cols}", values[r].len());
        }
        if rows * cols > MAX_CELLS {
            bail!("a heatmap of {rows}×{cols} = {} cells is too large (at most {MAX_CELLS})", rows * cols);
        }
        let numbers = |n: usize| Axis { name: String::new(), labels: (0..n).map(|i| i.to_string()).collect() };
        Ok(Self {
            title: title.into(),
            values,
            rows: numbers(rows),
            cols: numbers(cols),
            palette: Palette::Sequential,
            range: None,
        })
    }

    /// Names the rows (the vertical axis) and gives each row its label.
    pub fn with_rows(mut self, name: impl Into<String>, labels: Vec<String>) -> Result<Self> {
        ensure!(labels.len() == self.values.len(), "{} row labels for {} rows", labels.len(), self.values.len());
        self.rows = Axis { name: name.into(), labels };
        Ok(self)
    }

    /// Names the columns (the horizontal axis) and gives each column its label.
    pub fn with_cols(mut self, name: impl Into<String>, labels: Vec<String>) -> Result<Self> {
        let cols = self.values[0].len();
        ensure!(labels.len() == cols, "{} column labels for {cols} columns", labels.len());
        self.cols = Axis { name: name.into(), labels };
        Ok(self)
    }

    pub fn with_palette(mut self, palette: Palette) -> Self {
        self.palette = palette;
        self
    }

    /// Fixes the values at the bottom and the top of the colour bar (for example 0 and 1 for weights).
    pub fn with_range(mut self, low: f64, high: f64) -> Result<Self> {
        ensure!(low.is_finite() && high.is_finite() && low < high, "invalid colour range {low}..{high}");
        self.range = Some((low, high));
        Ok(self)
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    /// The matrix, rows × columns.
    pub fn values(&self) -> &[Vec<f32>] {
        &self.values
    }

    pub fn rows(&self) -> &Axis {
        &self.rows
    }

    pub fn cols(&self) -> &Axis {
        &self.cols
    }

    /// The values at the bottom and the top of the colour bar: the fixed range, else the data's finite
    /// extremes (symmetric around 0 for the diverging palette).
    pub fn range(&self) -> (f64, f64) {
        if let Some(r) = self.range {
            return r;
        }
        let finite = self.values.iter().flatten().map(|&v| v as f64).filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = match self.palette {
            _ if lo > hi => (0.0, 1.0),
            Palette::Diverging => (-lo.abs().max(hi.abs()), lo.abs().max(hi.abs())),
            Palette::Sequential => (lo, hi),
        };
        if lo < hi {
            (lo, hi)
        } else {
            (lo - 0.5, hi + 0.5)
        }
    }

    /// The colour of one value under this heatmap's palette and range.
    pub fn colour_of(&self, v: f32) -> RGBColor {
        let (lo, hi) = self.range();
        self.palette.colour((v as f64 - lo) / (hi - lo))
    }

    fn layout(&self) -> Layout {
        let (rows, cols) = (self.values.len() as u32, self.values[0].len() as u32);
        let cell = ((GRID_MAX_W / cols).clamp(1, CELL_MAX), (GRID_MAX_H / rows).clamp(1, CELL_MAX));
        let row_step = nice_step((LABEL + 2).div_ceil(cell.1));
        let widest = |axis: &Axis, step: usize| {
            axis.labels.iter().step_by(step).map(|l| text_size(l, LABEL).0).max().unwrap_or(0) as i32
        };
        let flat_step = nice_step((widest(&self.cols, 1) as u32 + 8).div_ceil(cell.0));
        let upright_step = nice_step((LABEL + 2).div_ceil(cell.0));
        let (col_step, col_labels) =
            if flat_step <= upright_step { (flat_step, ColLabels::Flat) } else { (upright_step, ColLabels::Upright) };
        let band = match col_labels {
            ColLabels::Flat => LABEL as i32 + 4,
            ColLabels::Upright => widest(&self.cols, col_step) + 4,
        };
        let name_w = |axis: &Axis| if axis.name.is_empty() { 0 } else { AXIS as i32 + 2 * GAP };
        let left = MARGIN + name_w(&self.rows) + widest(&self.rows, row_step) + GAP;
        let top = MARGIN + TITLE as i32 + 2 * GAP;
        let grid = ((cell.0 * cols) as i32, (cell.1 * rows) as i32);
        let bar_h = grid.1.max(BAR_MIN_H);
        let bar_x = left + grid.0 + BAR_GAP;
        let (lo, hi) = self.range();
        let tick_w = (0..BAR_TICKS)
            .map(|k| text_size(&number_label(lo + (hi - lo) * k as f64 / (BAR_TICKS - 1) as f64, (lo, hi)), LABEL).0)
            .max()
            .unwrap_or(0) as i32;
        let width = (bar_x + BAR_W + GAP + tick_w + MARGIN).max(text_size(&self.title, TITLE).0 as i32 + 2 * MARGIN);
        let below = grid.1 + GAP + band + name_w(&self.cols);
        let height = top + below.max(bar_h + LABEL as i32 / 2) + MARGIN;
        Layout {
            cell,
            left,
            top,
            row_step,
            col_step,
            col_labels,
            band,
            bar_x,
            bar_h,
            size: (width as u32, height as u32),
        }
    }
}

/// Where everything goes, in pixels.
struct Layout {
    /// Width and height of one cell.
    cell: (u32, u32),
    /// The grid's top-left corner.
    left: i32,
    top: i32,
    /// Every `row_step`-th row and `col_step`-th column is labelled.
    row_step: usize,
    col_step: usize,
    col_labels: ColLabels,
    /// Height of the column-label band under the grid.
    band: i32,
    bar_x: i32,
    bar_h: i32,
    size: (u32, u32),
}

/// Column labels are written flat when they fit, else turned upright (read from the bottom up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColLabels {
    Flat,
    Upright,
}

/// The smallest of 1, 2, 5, 10, 20, 50, … that is at least `min`.
fn nice_step(min: u32) -> usize {
    let mut base = 1usize;
    loop {
        for m in [1, 2, 5] {
            if base * m >= min as usize {
                return base * m;
            }
        }
        base *= 10;
    }
}

impl Picture for Heatmap {
    fn size(&self) -> (u32, u32) {
        self.layout().size
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let l = self.layout();
        let (cw, ch) = (l.cell.0 as i32, l.cell.1 as i32);
        let grid = (cw * self.values[0].len() as i32, ch * self.values.len() as i32);
        area.fill(&WHITE)?;
        area.draw(&Text::new(self.title.clone(), (l.size.0 as i32 / 2, MARGIN), text(TITLE, HPos::Center, VPos::Top)))?;
        for (r, row) in self.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x, y) = (l.left + c as i32 * cw, l.top + r as i32 * ch);
                area.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], self.colour_of(v).filled()))?;
            }
        }
        let row_style = text(LABEL, HPos::Right, VPos::Center);
        for (r, label) in self.rows.labels.iter().enumerate().step_by(l.row_step) {
            area.draw(&Text::new(label.clone(), (l.left - GAP, l.top + r as i32 * ch + ch / 2), row_style.clone()))?;
        }
        let col_style = match l.col_labels {
            ColLabels::Flat => text(LABEL, HPos::Center, VPos::Top),
            ColLabels::Upright => text(LABEL, HPos::Right, VPos::Center).transform(FontTransform::Rotate270),
        };
        for (c, label) in self.cols.labels.iter().enumerate().step_by(l.col_step) {
            let pos = (l.left + c as i32 * cw + cw / 2, l.top + grid.1 + GAP);
            area.draw(&Text::new(label.clone(), pos, col_style.clone()))?;
        }
        let row_name = text(AXIS, HPos::Center, VPos::Top).transform(FontTransform::Rotate270);
        area.draw(&Text::new(self.rows.name.clone(), (MARGIN, l.top + grid.1 / 2), row_name))?;
        let col_name_pos = (l.left + grid.0 / 2, l.top + grid.1 + GAP + l.band + GAP);
        area.draw(&Text::new(self.cols.name.clone(), col_name_pos, text(AXIS, HPos::Center, VPos::Top)))?;
        self.draw_colour_bar(area, &l)
    }
}

impl Heatmap {
    /// The scale beside the grid: the palette from the bottom (low) to the top (high), with value labels.
    fn draw_colour_bar<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        l: &Layout,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (x0, x1, top) = (l.bar_x, l.bar_x + BAR_W, l.top);
        let steps = COLOUR_BAR_STEPS as i32;
        for i in 0..steps {
            let (y0, y1) = (top + i * l.bar_h / steps, top + (i + 1) * l.bar_h / steps);
            let t = 1.0 - (i as f64 + 0.5) / steps as f64;
            area.draw(&Rectangle::new([(x0, y0), (x1, y1)], self.palette.colour(t).filled()))?;
        }
        area.draw(&Rectangle::new([(x0, top), (x1, top + l.bar_h)], BLACK.stroke_width(1)))?;
        let (lo, hi) = self.range();
        for k in 0..BAR_TICKS {
            let t = k as f64 / (BAR_TICKS - 1) as f64;
            let y = top + l.bar_h - (t * l.bar_h as f64).round() as i32;
            area.draw(&PathElement::new(vec![(x1, y), (x1 + 4, y)], BLACK))?;
            let label = number_label(lo + (hi - lo) * t, (lo, hi));
            area.draw(&Text::new(label, (x1 + GAP + 2, y), text(LABEL, HPos::Left, VPos::Center)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palettes_run_from_their_first_to_their_last_anchor_and_nan_is_grey() {
        assert_eq!(Palette::Sequential.colour(0.0), RGBColor(0x44, 0x01, 0x54));
        assert_eq!(Palette::Sequential.colour(1.0), RGBColor(0xfd, 0xe7, 0x25));
        assert_eq!(Palette::Sequential.colour(7.0), Palette::Sequential.colour(1.0));
        assert_eq!(Palette::Diverging.colour(0.5), RGBColor(0xf7, 0xf7, 0xf7));
        assert_eq!(Palette::Diverging.colour(-1.0), RGBColor(0x21, 0x66, 0xac));
        assert_eq!(Palette::Diverging.colour(f64::NAN), RGBColor(0xaa, 0xaa, 0xaa));
    }

    #[test]
    fn ragged_empty_or_mislabelled_matrices_are_errors() {
        assert!(Heatmap::new("t", vec![]).is_err());
        assert!(Heatmap::new("t", vec![vec![]]).is_err());
        assert!(Heatmap::new("t", vec![vec![1.0, 2.0], vec![3.0]]).is_err());
        assert!(Heatmap::new("t", vec![vec![0.0; 600]; 600]).is_err());
        let h = Heatmap::new("t", vec![vec![1.0, 2.0]]).unwrap();
        assert!(h.clone().with_rows("r", vec!["a".into(), "b".into()]).is_err());
        assert!(h.clone().with_cols("c", vec!["a".into()]).is_err());
        assert!(h.with_range(1.0, 1.0).is_err());
    }

    #[test]
    fn the_range_comes_from_finite_values_and_is_symmetric_when_diverging() {
        let h = Heatmap::new("t", vec![vec![-0.5, 2.0, f32::NAN]]).unwrap();
        assert_eq!(h.range(), (-0.5, 2.0));
        assert_eq!(h.clone().with_palette(Palette::Diverging).range(), (-2.0, 2.0));
        assert_eq!(Heatmap::new("t", vec![vec![3.0]]).unwrap().range(), (2.5, 3.5));
        assert_eq!(h.with_range(0.0, 1.0).unwrap().range(), (0.0, 1.0));
    }

    #[test]
    fn labels_are_thinned_to_round_steps_only_when_cells_are_small() {
        assert_eq!([1, 2, 3, 6, 11, 51].map(nice_step), [1, 2, 5, 10, 20, 100]);
        let small = Heatmap::new("t", vec![vec![0.0; 4]; 3]).unwrap().layout();
        assert_eq!((small.row_step, small.col_step), (1, 1));
        assert_eq!(small.col_labels, ColLabels::Flat);
        let wide = Heatmap::new("t", vec![vec![0.0; 512]; 50]).unwrap().layout();
        assert_eq!(wide.cell, (2, 14));
        assert!(wide.col_step > 1 && wide.row_step > 1, "{} {}", wide.col_step, wide.row_step);
    }

    #[test]
    fn long_column_labels_stand_upright() {
        let pieces: Vec<String> =
            ["▁The", "▁animal", "▁didn", "'t", "▁cross", "▁the", "▁street"].iter().map(|s| s.to_string()).collect();
        let h = Heatmap::new("t", vec![vec![0.1; 7]; 7]).unwrap().with_cols("key", pieces).unwrap();
        let l = h.layout();
        assert_eq!((l.col_labels, l.col_step), (ColLabels::Upright, 1));
    }
}
