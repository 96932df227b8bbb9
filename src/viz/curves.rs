//! Training curves from `metrics.jsonl` (written by [`crate::train::log`]): three panels over the step,
//! sharing one step axis: the losses (training loss with label smoothing, training NLL, validation NLL),
//! validation BLEU and chrF, and the learning rate of the warmup schedule (paper §5.3).
//!
//! The reader is here, beside the picture, and reads only what it draws; a unit test writes lines with
//! the training code's own structs, so a change of the format breaks a test instead of the picture.

use super::{number_label, text, Picture, FONT};
use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use serde::Deserialize;

const WIDTH: u32 = 1000;
const PANEL_H: u32 = 300;
const TITLE_H: u32 = 40;

/// One line of `metrics.jsonl`. Lines of other kinds are skipped; a non-finite number is written as
/// `null` by serde_json and read as a missing point.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    Train {
        step: usize,
        loss: Option<f64>,
        nll: Option<f64>,
        lr: Option<f64>,
    },
    Valid {
        step: usize,
        valid_loss: Option<f64>,
        valid_bleu: Option<f64>,
        valid_chrf: Option<f64>,
    },
    #[serde(other)]
    Other,
}

/// The series that `nmt plot` draws, each as (step, value) in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub train_loss: Vec<(f64, f64)>,
    pub train_nll: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    pub valid_loss: Vec<(f64, f64)>,
    pub valid_bleu: Vec<(f64, f64)>,
    pub valid_chrf: Vec<(f64, f64)>,
}

impl Metrics {
    /// Reads the text of a `metrics.jsonl`. Errors name the line; a file with no training or validation
    /// line is an error too.
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = vec![];
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(raw).map_err(|e| {
                // serde_json counts lines within this one line: say the file's line and the column instead.
                let message = e.to_string();
                let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m).to_string();
                anyhow!("line {}, column {}: {message}", i + 1, e.column())
            })?;
            if !matches!(line, Line::Other) {
                lines.push(line);
            }
        }
        if lines.is_empty() {
            bail!("no training or validation lines");
        }
        let step = |l: &Line| match l {
            Line::Train { step, .. } | Line::Valid { step, .. } => *step,
            Line::Other => 0,
        };
        lines.sort_by_key(step);
        let mut m = Metrics::default();
        let push = |series: &mut Vec<(f64, f64)>, step: usize, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                series.push((step as f64, v));
            }
        };
        for line in lines {
            match line {
                Line::Train { step, loss, nll, lr } => {
                    push(&mut m.train_loss, step, loss);
                    push(&mut m.train_nll, step, nll);
                    push(&mut m.lr, step, lr);
                }
                Line::Valid { step, valid_loss, valid_bleu, valid_chrf } => {
                    push(&mut m.valid_loss, step, valid_loss);
                    push(&mut m.valid_bleu, step, valid_bleu);
                    push(&mut m.valid_chrf, step, valid_chrf);
                }
                Line::Other => {}
            }
        }
        Ok(m)
    }

    /// The first and last step of any series.
    fn steps(&self) -> (f64, f64) {
        let all = [&self.train_loss, &self.train_nll, &self.lr, &self.valid_loss, &self.valid_bleu, &self.valid_chrf];
        let steps = all.iter().flat_map(|s| s.iter().map(|p| p.0));
        steps.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s), hi.max(s)))
    }
}

/// The three panels of `nmt plot`.
#[derive(Debug, Clone)]
pub struct Curves {
    pub title: String,
    pub metrics: Metrics,
}

/// One line on a panel. Validation series get a dot per point: they are sparse and may be one point long.
struct Series<'a> {
    name: &'static str,
    colour: RGBColor,
    points: &'a [(f64, f64)],
    marks: Marks,
}

#[derive(Clone, Copy)]
enum Marks {
    Line,
    LineAndDots,
}

struct Panel<'a> {
    caption: &'static str,
    y_desc: &'static str,
    legend: SeriesLabelPosition,
    series: Vec<Series<'a>>,
}

// Matplotlib's "tab" colours: distinct, and readable on white.
const TAB_BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TAB_ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const TAB_GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const TAB_RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const TAB_PURPLE: RGBColor = RGBColor(0x94, 0x67, 0xbd);

impl Curves {
    fn panels(&self) -> [Panel<'_>; 3] {
        let m = &self.metrics;
        let s = |name, colour, points, marks| Series { name, colour, points, marks };
        [
            Panel {
                caption: "Loss per target token",
                y_desc: "nats",
                legend: SeriesLabelPosition::UpperRight,
                series: vec![
                    s("training loss (label-smoothed)", TAB_BLUE, &m.train_loss, Marks::Line),
                    s("training NLL", TAB_ORANGE, &m.train_nll, Marks::Line),
                    s("validation NLL", TAB_GREEN, &m.valid_loss, Marks::LineAndDots),
                ],
            },
            Panel {
                caption: "Validation BLEU and chrF (greedy search)",
                y_desc: "score",
                legend: SeriesLabelPosition::LowerRight,
                series: vec![
                    s("BLEU", TAB_RED, &m.valid_bleu, Marks::LineAndDots),
                    s("chrF2", TAB_PURPLE, &m.valid_chrf, Marks::LineAndDots),
                ],
            },
            Panel {
                caption: "Learning rate",
                y_desc: "lr",
                legend: SeriesLabelPosition::UpperRight,
                series: vec![s("learning rate", TAB_BLUE, &m.lr, Marks::Line)],
            },
        ]
    }
}

impl Picture for Curves {
    fn size(&self) -> (u32, u32) {
        (WIDTH, TITLE_H + 3 * PANEL_H)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        area.fill(&WHITE)?;
        area.draw(&Text::new(self.title.clone(), (WIDTH as i32 / 2, 12), text(18, HPos::Center, VPos::Top)))?;
        let (_, body) = area.split_vertically(TITLE_H);
        let (lo, hi) = self.metrics.steps();
        let steps = if lo < hi { (lo, hi) } else { ((lo - 1.0).max(0.0), lo + 1.0) };
        for (panel, region) in self.panels().iter().zip(body.split_evenly((3, 1))) {
            draw_panel(&region, panel, steps)?;
        }
        Ok(())
    }
}

/// The smallest and largest finite value of the series, padded by 5% (and never empty).
fn value_range(series: &[Series]) -> Option<(f64, f64)> {
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { (0.1 * hi.abs()).max(1e-6) };
    Some((lo - pad, hi + pad))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    steps: (f64, f64),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let Some((y_lo, y_hi)) = value_range(&panel.series) else {
        let (w, h) = area.dim_in_pixel();
        let note = format!("{}: nothing to plot (no such lines in metrics.jsonl)", panel.caption);
        return area.draw(&Text::new(note, (w as i32 / 2, h as i32 / 2), text(15, HPos::Center, VPos::Center)));
    };
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, (FONT, 16))
        .margin(10)
        .margin_right(24)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(steps.0..steps.1, y_lo..y_hi)?;
    // Steps are whole numbers: a short run gets ticks between them, which stay unlabelled.
    let x_fmt = |v: &f64| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() };
    let y_fmt = |v: &f64| number_label(*v, (y_lo, y_hi));
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_desc)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .max_light_lines(4)
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .bold_line_style(RGBColor(0xcc, 0xcc, 0xcc))
        .draw()?;
    for s in panel.series.iter().filter(|s| !s.points.is_empty()) {
        let style = s.colour.stroke_width(2);
        // A line through one point draws nothing, so a lone point gets its dot too.
        let dots = match s.marks {
            Marks::Line if s.points.len() > 1 => 0,
            _ => 3,
        };
        let colour = s.colour;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style).point_size(dots))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    // A lone series is named by the panel's caption.
    if panel.series.len() < 2 {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0x99, 0x99, 0x99))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::log::{TrainLine, ValidLine};

    fn train(step: usize, loss: f64) -> String {
        let l = TrainLine {
            kind: "train",
            step,
            epoch: 1,
            loss,
            nll: loss - 0.5,
            lr: 1e-4 * step as f64,
            src_tokens_per_sec: 1.0,
            tgt_tokens_per_sec: 1.0,
            elapsed_sec: 1.0,
        };
        serde_json::to_string(&l).unwrap()
    }

    fn valid(step: usize, bleu: f64) -> String {
        let l = ValidLine {
            kind: "valid",
            step,
            epoch: 1,
            valid_loss: 3.0,
            valid_ppl: 20.0,
            valid_bleu: bleu,
            valid_chrf: bleu + 10.0,
            elapsed_sec: 1.0,
        };
        serde_json::to_string(&l).unwrap()
    }

    #[test]
    fn reads_the_lines_the_trainer_writes() {
        let text =
            [train(2, 5.0), train(4, 4.0), valid(4, 1.5), "{\"kind\":\"future\",\"x\":1}".into(), train(6, f64::NAN)]
                .join("\n");
        let m = Metrics::parse(&text).unwrap();
        assert_eq!(m.train_loss, vec![(2.0, 5.0), (4.0, 4.0)], "NaN (written as null) is skipped");
        assert_eq!(m.train_nll, vec![(2.0, 4.5), (4.0, 3.5)]);
        assert_eq!(m.lr.len(), 3);
        assert_eq!(m.valid_loss, vec![(4.0, 3.0)]);
        assert_eq!(m.valid_bleu, vec![(4.0, 1.5)]);
        assert_eq!(m.valid_chrf, vec![(4.0, 11.5)]);
        assert_eq!(m.steps(), (2.0, 6.0));
    }

    #[test]
    fn empty_or_broken_text_is_an_error_naming_the_line() {
        assert!(Metrics::parse("").unwrap_err().to_string().contains("no training or validation"));
        assert!(Metrics::parse("{\"kind\":\"other\"}\n").is_err());
        let err = Metrics::parse(&format!("{}\n{{\"kind\":\"train\",", train(2, 5.0))).unwrap_err();
        assert!(format!("{err:#}").starts_with("line 2, column 16: EOF while parsing"), "{err:#}");
        let err = Metrics::parse("{\"kind\":\"train\",\"loss\":1}").unwrap_err();
        assert!(format!("{err:#}").contains("step"), "{err:#}");
    }

    #[test]
    fn a_single_point_still_has_a_range() {
        let s = [Series { name: "x", colour: TAB_BLUE, points: &[(1.0, 2.0)], marks: Marks::Line }];
        let (lo, hi) = value_range(&s).unwrap();
        assert!(lo < 2.0 && 2.0 < hi);
        assert!(value_range(&[Series { name: "x", colour: TAB_BLUE, points: &[], marks: Marks::Line }]).is_none());
    }
}
