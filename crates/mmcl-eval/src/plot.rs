//! Figures: the 12-lead ECG on the clinical grid with a per-patch importance overlay, a CMR
//! slice with a heat map, ROC curves, predicted-vs-true scatter plots and training curves.
//!
//! Every figure is a value with a `save(path)` method; the format follows the extension
//! (`.png`, or `.svg` for the vector figures: the ECG, ROC, scatter and training curves).
//! Files are written to a temporary sibling and renamed, so a failed plot leaves nothing
//! behind. Text uses an embedded font (a subset of DejaVu Sans, see `assets/`), so no system
//! font or fontconfig is needed.
//!
//! Importance inputs are what the localisation code produces: for the ECG, one value per lead
//! and patch (`12 × P`, patch `p` covering samples `p·T/P .. (p+1)·T/P`); for the CMR, any
//! `h × w` map, bilinearly resampled to the slice.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::metrics::RocCurve;
use crate::runlog::RunLog;
use crate::{Error, Matrix, Result};

const FONT: &[u8] = include_bytes!("../assets/MmclSans.ttf");
const FAMILY: &str = "sans-serif";

type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Registers the embedded font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ]
        .into_iter()
        .all(|style| plotters::style::register_font(FAMILY, style, FONT).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(
            "the embedded plot font cannot be loaded".into(),
        ))
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raster PNG (RGB).
    Png,
    /// Vector SVG.
    Svg,
}

impl ImageFormat {
    /// The format named by `path`'s extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(Error::InvalidInput(format!(
                "{}: figures are written as .png or .svg",
                path.display()
            ))),
        }
    }
}

/// Something that draws itself on any plotters backend.
trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Whether an SVG rendering stays small (false for per-pixel images).
    fn vector_friendly(&self) -> bool {
        true
    }
    /// Draws on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Renders `figure` into `path` atomically.
fn save(figure: &impl Figure, path: &Path) -> Result<()> {
    ensure_font()?;
    let format = ImageFormat::from_path(path)?;
    let (w, h) = figure.size();
    let plot_err = |source| Error::Plot {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match format {
        ImageFormat::Png => {
            let mut buffer = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(|e| plot_err(boxed(e)))?;
                figure.draw(&root).map_err(plot_err)?;
                root.present().map_err(|e| plot_err(boxed(e)))?;
            }
            let image = image::RgbImage::from_raw(w, h, buffer)
                .ok_or_else(|| plot_err("the pixel buffer does not fit the figure size".into()))?;
            let mut png = Vec::new();
            let encoder = image::codecs::png::PngEncoder::new_with_quality(
                &mut png,
                image::codecs::png::CompressionType::Best,
                image::codecs::png::FilterType::Adaptive,
            );
            image::ImageEncoder::write_image(
                encoder,
                image.as_raw(),
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| plot_err(boxed(e)))?;
            png
        }
        ImageFormat::Svg => {
            if !figure.vector_friendly() {
                return Err(Error::InvalidInput(format!(
                    "{}: this figure is a raster image; write it as .png",
                    path.display()
                )));
            }
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
                root.fill(&WHITE).map_err(|e| plot_err(boxed(e)))?;
                figure.draw(&root).map_err(plot_err)?;
                root.present().map_err(|e| plot_err(boxed(e)))?;
            }
            svg.into_bytes()
        }
    };
    mmcl_nn::io::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Colour maps.
// ---------------------------------------------------------------------------------------------

/// Colour maps for heat maps and overlays (anchor colours of matplotlib's maps, linearly
/// interpolated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colormap {
    /// Perceptually uniform, dark purple to yellow.
    Viridis,
    /// Perceptually uniform, black to pale yellow (the reference's CMR overlay).
    Inferno,
    /// Diverging blue-white-red (the reference's ECG overlay, for signed similarities).
    RdBuR,
    /// The classic rainbow.
    Jet,
}

impl Colormap {
    fn anchors(self) -> &'static [(u8, u8, u8)] {
        match self {
            Colormap::Viridis => &[
                (68, 1, 84),
                (71, 44, 122),
                (59, 81, 139),
                (44, 113, 142),
                (33, 145, 140),
                (39, 173, 129),
                (92, 200, 99),
                (170, 220, 50),
                (253, 231, 37),
            ],
            Colormap::Inferno => &[
                (0, 0, 4),
                (31, 12, 72),
                (85, 15, 109),
                (136, 34, 106),
                (186, 54, 85),
                (227, 89, 51),
                (249, 140, 10),
                (249, 201, 50),
                (252, 255, 164),
            ],
            Colormap::RdBuR => &[
                (5, 48, 97),
                (33, 102, 172),
                (67, 147, 195),
                (146, 197, 222),
                (209, 229, 240),
                (247, 247, 247),
                (253, 219, 199),
                (244, 165, 130),
                (214, 96, 77),
                (178, 24, 43),
                (103, 0, 31),
            ],
            Colormap::Jet => &[
                (0, 0, 128),
                (0, 0, 255),
                (0, 128, 255),
                (0, 255, 255),
                (128, 255, 128),
                (255, 255, 0),
                (255, 128, 0),
                (255, 0, 0),
                (128, 0, 0),
            ],
        }
    }

    /// Whether the map is diverging (its middle is neutral).
    pub fn is_diverging(self) -> bool {
        matches!(self, Colormap::RdBuR)
    }

    /// The colour at `t ∈ [0, 1]` (clamped; NaN maps to the middle).
    pub fn color(self, t: f64) -> RGBColor {
        let a = self.anchors();
        let t = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) };
        let x = t * (a.len() - 1) as f64;
        let i = (x.floor() as usize).min(a.len() - 2);
        let f = x - i as f64;
        let mix = |p: u8, q: u8| (p as f64 + f * (q as f64 - p as f64)).round() as u8;
        RGBColor(
            mix(a[i].0, a[i + 1].0),
            mix(a[i].1, a[i + 1].1),
            mix(a[i].2, a[i + 1].2),
        )
    }

    /// Parses `viridis`, `inferno`, `rdbu_r` or `jet`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "viridis" => Ok(Self::Viridis),
            "inferno" => Ok(Self::Inferno),
            "rdbu_r" | "rdbu" => Ok(Self::RdBuR),
            "jet" => Ok(Self::Jet),
            other => Err(Error::InvalidInput(format!(
                "unknown colour map {other:?}: use viridis, inferno, rdbu_r or jet"
            ))),
        }
    }
}

/// How importance values map onto `[0, 1]` of a colour map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorRange {
    /// From the smallest to the largest finite value (symmetric about 0 for diverging maps).
    Auto,
    /// A fixed range, e.g. `[-1, 1]` for cosine similarities.
    Fixed(f64, f64),
}

impl ColorRange {
    fn resolve(self, values: &[f32], diverging: bool) -> (f64, f64) {
        match self {
            ColorRange::Fixed(lo, hi) => (lo, hi),
            ColorRange::Auto => {
                let finite = values.iter().filter(|v| v.is_finite()).map(|&v| v as f64);
                let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
                if !lo.is_finite() {
                    return (0.0, 1.0);
                }
                if diverging {
                    let m = lo.abs().max(hi.abs()).max(1e-12);
                    (-m, m)
                } else if hi > lo {
                    (lo, hi)
                } else {
                    (lo - 0.5, lo + 0.5)
                }
            }
        }
    }
}

fn normalise(v: f64, (lo, hi): (f64, f64)) -> f64 {
    if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }
}

fn text_style(size: f64, color: RGBColor) -> TextStyle<'static> {
    TextStyle {
        font: (FAMILY, size).into_font(),
        color: color.to_backend_color(),
        pos: plotters::style::text_anchor::Pos::default(),
    }
}

/// An axis tick label: up to four significant digits, trailing zeros dropped.
fn fmt_tick(v: &f64) -> String {
    let v = *v;
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    if v.abs() < 1e-4 || v.abs() >= 1e6 {
        return format!("{v:.1e}");
    }
    let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

// ---------------------------------------------------------------------------------------------
// ECG.
// ---------------------------------------------------------------------------------------------

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
    /// Each lead over the whole recording, one per row.
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
    /// The signal, `12 × T` (leads in [`LEAD_NAMES`] order), in mV (or in the units of
    /// `mm_per_unit`).
    pub signal: &'a Matrix<f32>,
    /// Samples per second.
    pub sampling_rate: f64,
    /// Page layout.
    pub layout: EcgLayout,
    /// Millimetres of paper per signal unit (10 for mV; pick e.g. 5 for normalised signals).
    pub mm_per_unit: f64,
    /// Optional importance per lead and patch, `12 × P`.
    pub importance: Option<&'a Matrix<f32>>,
    /// Colour map of the overlay.
    pub colormap: Colormap,
    /// Value range of the overlay's colour map.
    pub color_range: ColorRange,
    /// Largest opacity of the overlay.
    pub alpha: f64,
    /// Title printed above the grid.
    pub title: Option<String>,
    /// Lead names (12).
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

    /// Adds an importance overlay (`12 × P`).
    pub fn with_importance(mut self, importance: &'a Matrix<f32>) -> Self {
        self.importance = Some(importance);
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
        if leads != 12 || self.lead_names.len() != 12 {
            return Err(Error::InvalidInput(format!(
                "ECG figure: expected 12 leads (and 12 names), got {leads} ({} names)",
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
            && (imp.rows() != 12 || imp.cols() == 0 || imp.cols() > t)
        {
            return Err(Error::InvalidInput(format!(
                "ECG importance must be 12 × P with 1 ≤ P ≤ {t}, got {} × {}",
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
            EcgLayout::Rows12 => 12,
        };
        let row_height = match self.layout {
            EcgLayout::Grid4x3 => 30.0,
            EcgLayout::Rows12 => 20.0,
        };
        (16.0, 12.0, self.seconds() * MM_PER_S, row_height, rows)
    }
}

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

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (left, top, width, row_h, rows) = self.geometry();
        let t = self.signal.cols();
        let grid_bottom = top + row_h * rows as f64;
        // The pink grid: paper background, 1 mm minor and 5 mm major lines.
        root.draw(&Rectangle::new(
            [(mm(left), mm(top)), (mm(left + width), mm(grid_bottom))],
            RGBColor(255, 247, 247).filled(),
        ))?;
        let minor = RGBColor(250, 208, 214);
        let major = RGBColor(232, 128, 146);
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
                for lead in 0..12 {
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
        let title = self.title.clone().unwrap_or_else(|| "12-lead ECG".into());
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
        if let Some(range) = range {
            draw_colorbar(
                root,
                self.colormap,
                range,
                (mm(left + width + 6.0), mm(top)),
                (mm(4.0) as u32, mm(row_h * 2.0) as u32),
                "importance",
            )?;
        }
        Ok(())
    }
}

/// A vertical colour bar with its range printed beside it.
fn draw_colorbar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    colormap: Colormap,
    (lo, hi): (f64, f64),
    (x, y): (i32, i32),
    (w, h): (u32, u32),
    caption: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let steps = h.max(2) as i32;
    for k in 0..steps {
        let u = 1.0 - k as f64 / (steps - 1) as f64;
        root.draw(&Rectangle::new(
            [(x, y + k), (x + w as i32, y + k + 1)],
            colormap.color(u).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + w as i32, y + h as i32)],
        RGBColor(80, 80, 80).stroke_width(1),
    ))?;
    let style = text_style(12.0, RGBColor(0, 0, 0));
    root.draw(&Text::new(
        fmt_value(hi),
        (x + w as i32 + 4, y),
        style.clone(),
    ))?;
    root.draw(&Text::new(
        fmt_value(lo),
        (x + w as i32 + 4, y + h as i32 - 12),
        style.clone(),
    ))?;
    root.draw(&Text::new(
        caption.to_string(),
        (x - 4, y + h as i32 + 6),
        style,
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CMR slice.
// ---------------------------------------------------------------------------------------------

/// A CMR slice in grayscale with an optional heat-map overlay. PNG only.
#[derive(Debug, Clone)]
pub struct CmrFigure<'a> {
    /// The slice, `H × W` (row 0 at the top).
    pub image: &'a Matrix<f32>,
    /// Optional heat map of any size `h × w`, bilinearly resampled to `H × W`.
    pub heatmap: Option<&'a Matrix<f32>>,
    /// Colour map of the heat map.
    pub colormap: Colormap,
    /// Value range of the heat map's colour map.
    pub color_range: ColorRange,
    /// Opacity of the heat map.
    pub alpha: f64,
    /// Grey levels span these percentiles of the slice (robust to bright outliers).
    pub window_percentiles: (f64, f64),
    /// Title above the image.
    pub title: Option<String>,
    /// Edge of the drawn image in pixels (the slice is scaled to fit).
    pub display_size: u32,
}

impl<'a> CmrFigure<'a> {
    /// A figure of `image` without overlay; overlay defaults: inferno, opacity 0.7, automatic
    /// range (the reference's choices).
    pub fn new(image: &'a Matrix<f32>) -> Self {
        Self {
            image,
            heatmap: None,
            colormap: Colormap::Inferno,
            color_range: ColorRange::Auto,
            alpha: 0.7,
            window_percentiles: (1.0, 99.0),
            title: None,
            display_size: 420,
        }
    }

    /// Adds a heat map.
    pub fn with_heatmap(mut self, heatmap: &'a Matrix<f32>) -> Self {
        self.heatmap = Some(heatmap);
        self
    }

    /// Sets the title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Writes the figure (`.png`).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.image.rows() < 2 || self.image.cols() < 2 {
            return Err(Error::InvalidInput(format!(
                "CMR figure: the slice is {} × {}",
                self.image.rows(),
                self.image.cols()
            )));
        }
        if let Some(h) = self.heatmap
            && (h.rows() == 0 || h.cols() == 0)
        {
            return Err(Error::InvalidInput("CMR figure: empty heat map".into()));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::InvalidInput(format!(
                "CMR figure: opacity must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        save(self, path)
    }

    fn scale(&self) -> f64 {
        self.display_size as f64 / self.image.rows().max(self.image.cols()) as f64
    }
}

/// Bilinear sample of `m` at fractional pixel centres (align-corners = false).
fn bilinear(m: &Matrix<f32>, y: f64, x: f64) -> f64 {
    let (h, w) = (m.rows(), m.cols());
    let fy = (y - 0.5).clamp(0.0, (h - 1) as f64);
    let fx = (x - 0.5).clamp(0.0, (w - 1) as f64);
    let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (ty, tx) = (fy - y0 as f64, fx - x0 as f64);
    let v = |i, j| m.get(i, j) as f64;
    let top = v(y0, x0) * (1.0 - tx) + v(y0, x1) * tx;
    let bottom = v(y1, x0) * (1.0 - tx) + v(y1, x1) * tx;
    top * (1.0 - ty) + bottom * ty
}

fn percentile(values: &[f32], q: f64) -> f64 {
    let mut v: Vec<f64> = values
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| x as f64)
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let h = (v.len() - 1) as f64 * (q / 100.0).clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

impl Figure for CmrFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let s = self.scale();
        let w = (self.image.cols() as f64 * s).round() as u32;
        let h = (self.image.rows() as f64 * s).round() as u32;
        (w + 110, h + 50)
    }

    fn vector_friendly(&self) -> bool {
        false
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let s = self.scale();
        let (h, w) = (self.image.rows(), self.image.cols());
        let (dw, dh) = ((w as f64 * s).round() as i32, (h as f64 * s).round() as i32);
        let (ox, oy) = (10, 40);
        let lo = percentile(self.image.as_slice(), self.window_percentiles.0);
        let hi = percentile(self.image.as_slice(), self.window_percentiles.1);
        let range = self.heatmap.map(|m| {
            self.color_range
                .resolve(m.as_slice(), self.colormap.is_diverging())
        });
        for py in 0..dh {
            for px in 0..dw {
                // Nearest pixel of the slice, bilinear position in the heat map.
                let (iy, ix) = ((py as f64 + 0.5) / s, (px as f64 + 0.5) / s);
                let v = self
                    .image
                    .get((iy as usize).min(h - 1), (ix as usize).min(w - 1))
                    as f64;
                let g =
                    normalise(if v.is_finite() { v } else { lo }, (lo, hi)).clamp(0.0, 1.0) * 255.0;
                let mut rgb = (g, g, g);
                if let (Some(m), Some(range)) = (self.heatmap, range) {
                    let hy = iy / h as f64 * m.rows() as f64;
                    let hx = ix / w as f64 * m.cols() as f64;
                    let value = bilinear(m, hy, hx);
                    if value.is_finite() {
                        let c = self.colormap.color(normalise(value, range));
                        let a = self.alpha;
                        rgb = (
                            (1.0 - a) * rgb.0 + a * c.0 as f64,
                            (1.0 - a) * rgb.1 + a * c.1 as f64,
                            (1.0 - a) * rgb.2 + a * c.2 as f64,
                        );
                    }
                }
                root.draw_pixel(
                    (ox + px, oy + py),
                    &RGBColor(rgb.0 as u8, rgb.1 as u8, rgb.2 as u8),
                )?;
            }
        }
        let title = self.title.clone().unwrap_or_else(|| "CMR".into());
        root.draw(&Text::new(
            title,
            (ox, 10),
            text_style(18.0, RGBColor(0, 0, 0)),
        ))?;
        if let Some(range) = range {
            draw_colorbar(
                root,
                self.colormap,
                range,
                (ox + dw + 14, oy),
                (16, (dh as u32).saturating_sub(24).max(10)),
                "importance",
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// ROC curves.
// ---------------------------------------------------------------------------------------------

/// Colours of successive series.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One model's ROC curve.
#[derive(Debug, Clone)]
pub struct RocSeries {
    /// Legend name.
    pub name: String,
    /// The curve.
    pub curve: RocCurve,
    /// Its AUROC, with an optional confidence interval, for the legend.
    pub auroc: f64,
    /// Optional `(low, high)` interval of the AUROC.
    pub ci: Option<(f64, f64)>,
}

/// ROC curves of several models on one chart.
#[derive(Debug, Clone)]
pub struct RocFigure {
    /// The curves.
    pub series: Vec<RocSeries>,
    /// Title.
    pub title: String,
}

impl RocFigure {
    /// Writes the figure (`.png` or `.svg`).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.series.is_empty() {
            return Err(Error::InvalidInput("ROC figure: no curve".into()));
        }
        save(self, path)
    }
}

impl Figure for RocFigure {
    fn size(&self) -> (u32, u32) {
        (640, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20).into_font())
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(54)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("False-positive rate (1 − specificity)")
            .y_desc("True-positive rate (sensitivity)")
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .label_style((FAMILY, 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            6,
            4,
            RGBColor(150, 150, 150).stroke_width(1),
        ))?;
        for (k, s) in self.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let label = match s.ci {
                Some((lo, hi)) => {
                    format!("{} (AUROC {:.3} [{:.3}, {:.3}])", s.name, s.auroc, lo, hi)
                }
                None => format!("{} (AUROC {:.3})", s.name, s.auroc),
            };
            chart
                .draw_series(LineSeries::new(
                    s.curve.fpr.iter().copied().zip(s.curve.tpr.iter().copied()),
                    color.stroke_width(2),
                ))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FAMILY, 14))
            .draw()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Predicted vs true.
// ---------------------------------------------------------------------------------------------

/// One phenotype's predictions.
#[derive(Debug, Clone)]
pub struct ScatterPanel {
    /// Phenotype name (with unit, e.g. `LVEDV (mL)`).
    pub name: String,
    /// True values (NaN rows are skipped).
    pub truth: Vec<f64>,
    /// Predicted values.
    pub prediction: Vec<f64>,
    /// R² printed in the panel's title.
    pub r2: Option<f64>,
}

/// Predicted-vs-true scatter plots, one panel per phenotype, with the identity line.
#[derive(Debug, Clone)]
pub struct ScatterFigure {
    /// The panels.
    pub panels: Vec<ScatterPanel>,
    /// Title.
    pub title: String,
}

impl ScatterFigure {
    /// Writes the figure (`.png` or `.svg`).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.panels.is_empty() {
            return Err(Error::InvalidInput("scatter figure: no panel".into()));
        }
        for p in &self.panels {
            if p.truth.len() != p.prediction.len() {
                return Err(Error::InvalidInput(format!(
                    "scatter figure {}: {} true values but {} predictions",
                    p.name,
                    p.truth.len(),
                    p.prediction.len()
                )));
            }
        }
        save(self, path)
    }

    fn grid(&self) -> (usize, usize) {
        let n = self.panels.len();
        let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
        (n.div_ceil(cols), cols)
    }
}

impl Figure for ScatterFigure {
    fn size(&self) -> (u32, u32) {
        let (rows, cols) = self.grid();
        (cols as u32 * 360, rows as u32 * 340 + 40)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (rows, cols) = self.grid();
        let area = root.titled(&self.title, (FAMILY, 20))?;
        for (panel, cell) in self.panels.iter().zip(area.split_evenly((rows, cols))) {
            let points: Vec<(f64, f64)> = panel
                .truth
                .iter()
                .zip(&panel.prediction)
                .filter(|(t, p)| t.is_finite() && p.is_finite())
                .map(|(&t, &p)| (t, p))
                .collect();
            let (mut lo, mut hi) = points
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
                    (a.0.min(p.0).min(p.1), a.1.max(p.0).max(p.1))
                });
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            let pad = ((hi - lo) * 0.05).max(1e-9);
            let (lo, hi) = (lo - pad, hi + pad);
            let caption = match panel.r2 {
                Some(r2) => format!("{}   R² = {r2:.3}", panel.name),
                None => panel.name.clone(),
            };
            let mut chart = ChartBuilder::on(&cell)
                .caption(caption, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(lo..hi, lo..hi)?;
            chart
                .configure_mesh()
                .x_desc("true")
                .y_desc("predicted")
                .x_labels(6)
                .y_labels(6)
                .x_label_formatter(&fmt_tick)
                .y_label_formatter(&fmt_tick)
                .label_style((FAMILY, 12))
                .light_line_style(RGBColor(238, 238, 238))
                .draw()?;
            chart.draw_series(LineSeries::new(
                vec![(lo, lo), (hi, hi)],
                RGBColor(200, 60, 60).stroke_width(1),
            ))?;
            chart.draw_series(
                points
                    .iter()
                    .map(|&(t, p)| Circle::new((t, p), 2, PALETTE[0].mix(0.55).filled())),
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Training curves.
// ---------------------------------------------------------------------------------------------

/// Every metric of a run log against the epoch, one panel per metric, one line per split.
#[derive(Debug, Clone)]
pub struct TrainingCurvesFigure<'a> {
    /// The log.
    pub log: &'a RunLog,
    /// Title.
    pub title: String,
    /// Metrics to draw (all when empty).
    pub metrics: Vec<String>,
}

impl<'a> TrainingCurvesFigure<'a> {
    /// All metrics of `log`.
    pub fn new(log: &'a RunLog) -> Self {
        Self {
            log,
            title: "Training curves".into(),
            metrics: Vec::new(),
        }
    }

    fn metric_list(&self) -> Vec<String> {
        if self.metrics.is_empty() {
            self.log.metric_names()
        } else {
            self.metrics.clone()
        }
    }

    fn grid(&self) -> (usize, usize) {
        let n = self.metric_list().len().max(1);
        let cols = n.min(3);
        (n.div_ceil(cols), cols)
    }

    /// Writes the figure (`.png` or `.svg`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let names = self.metric_list();
        if names.is_empty() {
            return Err(Error::InvalidInput(
                "training curves: the log has no numeric metric".into(),
            ));
        }
        if let Some(m) = names.iter().find(|m| self.log.series(m).is_empty()) {
            return Err(Error::InvalidInput(format!(
                "training curves: the log has no metric {m:?}"
            )));
        }
        save(self, path)
    }
}

impl Figure for TrainingCurvesFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, cols) = self.grid();
        (cols as u32 * 400, rows as u32 * 300 + 40)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (rows, cols) = self.grid();
        let area = root.titled(&self.title, (FAMILY, 20))?;
        let splits = self.log.splits();
        for (metric, cell) in self
            .metric_list()
            .iter()
            .zip(area.split_evenly((rows, cols)))
        {
            let series = self.log.series(metric);
            let all = series.iter().flat_map(|s| s.points.iter());
            let (x0, x1, y0, y1) = all.fold(
                (
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ),
                |a, &(x, y)| (a.0.min(x), a.1.max(x), a.2.min(y), a.3.max(y)),
            );
            let (x0, x1) = if x1 > x0 {
                (x0, x1)
            } else {
                (x0 - 0.5, x0 + 0.5)
            };
            let pad = if y1 > y0 {
                (y1 - y0) * 0.06
            } else {
                y0.abs().max(1.0) * 0.1
            };
            let mut chart = ChartBuilder::on(&cell)
                .caption(metric, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(34)
                .y_label_area_size(58)
                .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style((FAMILY, 12))
                .x_label_formatter(&fmt_tick)
                .y_label_formatter(&fmt_tick)
                .light_line_style(RGBColor(238, 238, 238))
                .draw()?;
            for s in &series {
                let k = splits.iter().position(|x| *x == s.split).unwrap_or(0);
                let color = PALETTE[k % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
                    .label(s.split.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
                    });
                if s.points.len() < 40 {
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 2, color.filled())))?;
                }
            }
            // Keep the legend away from where the curves end.
            let last_high = series
                .iter()
                .filter_map(|s| s.points.last())
                .any(|&(_, y)| y > 0.5 * (y0 + y1));
            chart
                .configure_series_labels()
                .position(if last_high {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperRight
                })
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font((FAMILY, 12))
                .draw()?;
        }
        Ok(())
    }
}

/// The path of a figure named `stem.ext` in `dir`.
pub fn figure_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    dir.join(format!("{stem}.{ext}"))
}
