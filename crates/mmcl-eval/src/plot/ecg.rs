//! The 12-lead ECG (or a subset of its leads) on the clinical grid, with a per-patch
//! importance overlay.

use std::path::Path;

use plotters::prelude::*;

use super::colormap::{ColorRange, Colormap, draw_colorbar, normalise};
use super::style::{fmt_value, text_style};
use super::{Area, Backend, DrawResult, Figure, save};
use crate::{Error, Matrix, Result};

/// The standard lead names, in the canonical order.
pub const LEAD_NAMES: [&str; 12] = [
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
];

/// Arrangement of the leads on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcgLayout {
    /// Four columns of three leads (I–III, aVR–aVF, V1–V3, V4–V6), each a quarter of the
    /// recording, plus a rhythm strip of lead II over the whole recording.
    Grid4x3,
    /// Each lead over the whole recording, one per row: the 12 leads, or the subset a cache
    /// holds (its rows named by [`EcgFigure::lead_names`]).
    Rows12,
}

/// Pixels per millimetre of ECG paper.
const PX_PER_MM: f64 = 4.0;
/// Paper speed in mm/s.
const MM_PER_S: f64 = 25.0;

/// A 12-lead ECG on the clinical grid (25 mm/s, 10 mm/mV: small squares 0.04 s × 0.1 mV, large
/// squares 0.2 s × 0.5 mV), optionally with a per-patch importance overlay.
#[derive(Debug, Clone)]
pub struct EcgFigure<'a> {
    /// The signal, `leads × T` (the 12 in [`LEAD_NAMES`] order, or those of `lead_names` in
    /// the [`EcgLayout::Rows12`] layout), in mV (or in the units of `mm_per_unit`).
    pub signal: &'a Matrix<f32>,
    /// Samples per second.
    pub sampling_rate: f64,
    /// Page layout.
    pub layout: EcgLayout,
    /// Millimetres of paper per signal unit (10 for mV; pick e.g. 5 for normalised signals).
    pub mm_per_unit: f64,
    /// Optional importance per lead and patch, `leads × P`.
    pub importance: Option<&'a Matrix<f32>>,
    /// Colour map of the overlay.
    pub colormap: Colormap,
    /// Value range of the overlay's colour map.
    pub color_range: ColorRange,
    /// Largest opacity of the overlay.
    pub alpha: f64,
    /// Title printed above the grid.
    pub title: Option<String>,
    /// Lead names, one per row of `signal` (the 12 standard names by default).
    pub lead_names: Vec<String>,
}

impl<'a> EcgFigure<'a> {
    /// A 4×3 + rhythm-strip figure of `signal` (`12 × T`, mV) without overlay; importance
    /// defaults: diverging blue-red map over `[-1, 1]` (cosine similarities), opacity 0.6.
    pub fn new(signal: &'a Matrix<f32>, sampling_rate: f64) -> Self {
        Self {
            signal,
            sampling_rate,
            layout: EcgLayout::Grid4x3,
            mm_per_unit: 10.0,
            importance: None,
            colormap: Colormap::RdBuR,
            color_range: ColorRange::Fixed(-1.0, 1.0),
            alpha: 0.6,
            title: None,
            lead_names: LEAD_NAMES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Adds an importance overlay (`leads × P`).
    pub fn with_importance(mut self, importance: &'a Matrix<f32>) -> Self {
        self.importance = Some(importance);
        self
    }

    /// Names the rows of a signal that holds a subset of the 12 leads.
    pub fn with_lead_names(mut self, names: Vec<String>) -> Self {
        self.lead_names = names;
        self
    }

    /// Sets the layout.
    pub fn with_layout(mut self, layout: EcgLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    fn validate(&self) -> Result<()> {
        let (leads, t) = (self.signal.rows(), self.signal.cols());
        let expected = match self.layout {
            EcgLayout::Grid4x3 => leads == 12,
            EcgLayout::Rows12 => (1..=12).contains(&leads),
        };
        if !expected || self.lead_names.len() != leads {
            return Err(Error::InvalidInput(format!(
                "ECG figure: expected 12 leads (1 to 12 one per row) and a name for each, got \
                 {leads} ({} names)",
                self.lead_names.len()
            )));
        }
        if t < 8 {
            return Err(Error::InvalidInput(format!(
                "ECG figure: {t} samples per lead are too few to draw"
            )));
        }
        if !(self.sampling_rate > 0.0 && self.sampling_rate.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "ECG figure: sampling rate must be positive, got {}",
                self.sampling_rate
            )));
        }
        if !(self.mm_per_unit > 0.0 && self.mm_per_unit.is_finite()) {
            return Err(Error::InvalidInput(
                "ECG figure: mm_per_unit must be positive".into(),
            ));
        }
        let seconds = t as f64 / self.sampling_rate;
        if seconds > 60.0 {
            return Err(Error::InvalidInput(format!(
                "ECG figure: {seconds:.0} s is too long for one page (at most 60 s)"
            )));
        }
        if let Some(imp) = self.importance
            && (imp.rows() != leads || imp.cols() == 0 || imp.cols() > t)
        {
            return Err(Error::InvalidInput(format!(
                "ECG importance must be {leads} × P with 1 ≤ P ≤ {t}, got {} × {}",
                imp.rows(),
                imp.cols()
            )));
        }
        Ok(())
    }

    /// Writes the figure (`.png` or `.svg`).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        save(self, path)
    }

    fn seconds(&self) -> f64 {
        self.signal.cols() as f64 / self.sampling_rate
    }

    /// Page geometry in mm: (left margin, top margin, trace width, row height, rows).
    fn geometry(&self) -> (f64, f64, f64, f64, usize) {
        let rows = match self.layout {
            EcgLayout::Grid4x3 => 4,
            EcgLayout::Rows12 => self.signal.rows(),
        };
        let row_height = match self.layout {
            EcgLayout::Grid4x3 => 30.0,
            EcgLayout::Rows12 => 20.0,
        };
        (16.0, 12.0, self.seconds() * MM_PER_S, row_height, rows)
    }
}

/// Millimetres of paper to pixels.
fn mm(v: f64) -> i32 {
    (v * PX_PER_MM).round() as i32
}

/// One drawn strip: a lead over a sample range at a place on the page (mm).
struct Strip {
    lead: usize,
    samples: std::ops::Range<usize>,
    x0: f64,
    baseline: f64,
    top: f64,
    bottom: f64,
}

impl Figure for EcgFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (left, top, width, row_h, rows) = self.geometry();
        let legend = if self.importance.is_some() { 26.0 } else { 4.0 };
        (
            mm(left + width + legend) as u32,
            mm(top + row_h * rows as f64 + 8.0) as u32,
        )
    }

    fn draw<DB: Backend>(&self, root: &Area<DB>) -> DrawResult {
        let (left, top, width, row_h, rows) = self.geometry();
        let t = self.signal.cols();
        let grid_bottom = top + row_h * rows as f64;
        // The paper: background, 1 mm minor and 5 mm major lines. Pink as printed ECGs are,
        // except under an importance overlay, whose reds would vanish on pink: neutral grey
        // keeps every colour of the map readable.
        let (background, minor, major) = if self.importance.is_some() {
            (
                RGBColor(252, 252, 252),
                RGBColor(228, 228, 228),
                RGBColor(188, 188, 188),
            )
        } else {
            (
                RGBColor(255, 247, 247),
                RGBColor(250, 208, 214),
                RGBColor(232, 128, 146),
            )
        };
        root.draw(&Rectangle::new(
            [(mm(left), mm(top)), (mm(left + width), mm(grid_bottom))],
            background.filled(),
        ))?;
        for pass in [false, true] {
            let color = if pass { major } else { minor };
            let mut x = 0.0;
            while x <= width + 1e-9 {
                let is_major = (x / 5.0 - (x / 5.0).round()).abs() < 1e-6;
                if is_major == pass {
                    root.draw(&PathElement::new(
                        vec![(mm(left + x), mm(top)), (mm(left + x), mm(grid_bottom))],
                        color.stroke_width(1),
                    ))?;
                }
                x += 1.0;
            }
            let mut y = 0.0;
            while y <= row_h * rows as f64 + 1e-9 {
                let is_major = (y / 5.0 - (y / 5.0).round()).abs() < 1e-6;
                if is_major == pass {
                    root.draw(&PathElement::new(
                        vec![(mm(left), mm(top + y)), (mm(left + width), mm(top + y))],
                        color.stroke_width(1),
                    ))?;
                }
                y += 1.0;
            }
        }

        // Which lead goes where.
        let mut strips = Vec::new();
        match self.layout {
            EcgLayout::Grid4x3 => {
                let quarter = t / 4;
                for col in 0..4 {
                    for row in 0..3 {
                        let start = col * quarter;
                        let end = if col == 3 { t } else { (col + 1) * quarter };
                        strips.push(Strip {
                            lead: col * 3 + row,
                            samples: start..end,
                            x0: left + start as f64 / self.sampling_rate * MM_PER_S,
                            baseline: top + row_h * (row as f64 + 0.5),
                            top: top + row_h * row as f64,
                            bottom: top + row_h * (row as f64 + 1.0),
                        });
                    }
                }
                strips.push(Strip {
                    lead: 1,
                    samples: 0..t,
                    x0: left,
                    baseline: top + row_h * 3.5,
                    top: top + row_h * 3.0,
                    bottom: top + row_h * 4.0,
                });
            }
            EcgLayout::Rows12 => {
                for lead in 0..self.signal.rows() {
                    strips.push(Strip {
                        lead,
                        samples: 0..t,
                        x0: left,
                        baseline: top + row_h * (lead as f64 + 0.5),
                        top: top + row_h * lead as f64,
                        bottom: top + row_h * (lead as f64 + 1.0),
                    });
                }
            }
        }

        // Importance overlay under the traces.
        let range = self.importance.map(|imp| {
            self.color_range
                .resolve(imp.as_slice(), self.colormap.is_diverging())
        });
        if let (Some(imp), Some(range)) = (self.importance, range) {
            let patches = imp.cols();
            for s in &strips {
                for p in 0..patches {
                    let (a, b) = (p * t / patches, (p + 1) * t / patches);
                    let (a, b) = (a.max(s.samples.start), b.min(s.samples.end));
                    if a >= b {
                        continue;
                    }
                    let v = imp.get(s.lead, p) as f64;
                    if !v.is_finite() {
                        continue;
                    }
                    let u = normalise(v, range);
                    // Opacity grows with the distance from "no effect": the middle of a
                    // diverging map, the bottom of a sequential one.
                    let strength = if self.colormap.is_diverging() {
                        (2.0 * u - 1.0).abs()
                    } else {
                        u
                    };
                    let x_a = s.x0 + (a - s.samples.start) as f64 / self.sampling_rate * MM_PER_S;
                    let x_b = s.x0 + (b - s.samples.start) as f64 / self.sampling_rate * MM_PER_S;
                    root.draw(&Rectangle::new(
                        [(mm(x_a), mm(s.top) + 1), (mm(x_b), mm(s.bottom) - 1)],
                        self.colormap
                            .color(u)
                            .mix(self.alpha * strength.clamp(0.0, 1.0))
                            .filled(),
                    ))?;
                }
            }
        }

        // Calibration pulses (1 mV, 0.2 s) in the left margin, then the traces.
        let trace = RGBColor(20, 20, 20);
        let rows_drawn: Vec<f64> = (0..rows).map(|r| top + row_h * (r as f64 + 0.5)).collect();
        for baseline in &rows_drawn {
            let (x0, amp) = (left - 9.0, 10.0);
            root.draw(&PathElement::new(
                vec![
                    (mm(x0), mm(*baseline)),
                    (mm(x0 + 1.0), mm(*baseline)),
                    (mm(x0 + 1.0), mm(baseline - amp)),
                    (mm(x0 + 6.0), mm(baseline - amp)),
                    (mm(x0 + 6.0), mm(*baseline)),
                    (mm(x0 + 7.0), mm(*baseline)),
                ],
                trace.stroke_width(2),
            ))?;
        }
        let label = text_style(14.0, RGBColor(0, 0, 0));
        for s in &strips {
            let row = self.signal.row(s.lead);
            let points: Vec<(i32, i32)> = s
                .samples
                .clone()
                .map(|i| {
                    let x = s.x0 + (i - s.samples.start) as f64 / self.sampling_rate * MM_PER_S;
                    let v = row[i] as f64;
                    let v = if v.is_finite() { v } else { 0.0 };
                    let y = (s.baseline - v * self.mm_per_unit)
                        .clamp(s.top - row_h * 0.4, s.bottom + row_h * 0.4);
                    (mm(x), mm(y.clamp(top, grid_bottom)))
                })
                .collect();
            root.draw(&PathElement::new(points, trace.stroke_width(2)))?;
            root.draw(&Text::new(
                self.lead_names[s.lead].clone(),
                (mm(s.x0 + 1.0), mm(s.top + 1.5)),
                label.clone(),
            ))?;
        }
        // Column separators of the 4×3 layout.
        if self.layout == EcgLayout::Grid4x3 {
            for col in 1..4 {
                let x = left + (col * (t / 4)) as f64 / self.sampling_rate * MM_PER_S;
                root.draw(&PathElement::new(
                    vec![(mm(x), mm(top)), (mm(x), mm(top + 3.0 * row_h))],
                    trace.stroke_width(2),
                ))?;
            }
        }
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| format!("{}-lead ECG", self.signal.rows()));
        root.draw(&Text::new(
            title,
            (mm(left), mm(2.5)),
            text_style(20.0, RGBColor(0, 0, 0)),
        ))?;
        root.draw(&Text::new(
            format!(
                "25 mm/s   {} mm/{}   {:.0} Hz   {:.1} s",
                if self.mm_per_unit.fract() == 0.0 {
                    format!("{:.0}", self.mm_per_unit)
                } else {
                    fmt_value(self.mm_per_unit)
                },
                if self.mm_per_unit == 10.0 {
                    "mV"
                } else {
                    "unit"
                },
                self.sampling_rate,
                self.seconds()
            ),
            (mm(left), mm(grid_bottom + 2.0)),
            text_style(14.0, RGBColor(60, 60, 60)),
        ))?;
        let bar_size = (mm(4.0) as u32, mm(row_h * 2.0) as u32);
        draw_colorbar(
            root,
            self.colormap,
            range,
            (mm(left + width + 6.0), mm(top)),
            bar_size,
        )
    }
}
