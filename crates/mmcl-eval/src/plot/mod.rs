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
//!
//! One file per figure kind (`ecg`, `cmr`, `roc`, `scatter`, `curves`); the colour maps and
//! colour bar in `colormap`, the font, text styles, tick labels and series palette in `style`;
//! rendering and the atomic write here. [`save_evaluation_figure`] is the figure of a test
//! evaluation that the probe and fine-tuning commands put in their reports.

mod cmr;
mod colormap;
mod curves;
mod ecg;
mod roc;
mod scatter;
mod style;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

pub use cmr::CmrFigure;
pub use colormap::{ColorRange, Colormap};
pub use curves::TrainingCurvesFigure;
pub use ecg::{EcgFigure, EcgLayout, LEAD_NAMES};
pub use roc::{RocFigure, RocSeries};
pub use scatter::{ScatterFigure, ScatterPanel};

use crate::metrics::{Estimate, Evaluation, TargetMetrics, Task};
use crate::{Error, Matrix, Result};

/// What drawing returns: any backend's error, boxed.
type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

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

/// A plotters backend whose errors can be boxed (PNG buffer or SVG string here).
trait Backend: DrawingBackend<ErrorType: 'static> {}

impl<DB: DrawingBackend<ErrorType: 'static>> Backend for DB {}

/// A region of a figure's canvas, in pixels from its top left corner.
type Area<DB> = DrawingArea<DB, Shift>;

/// Something that draws itself on any plotters backend.
trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Whether an SVG rendering stays small (false for per-pixel images).
    fn vector_friendly(&self) -> bool {
        true
    }
    /// Draws on `root`.
    fn draw<DB: Backend>(&self, root: &Area<DB>) -> DrawResult;
}

/// Boxes a backend error for [`Error::Plot`].
fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Size of a figure of `rows × cols` panels of `w × h` pixels under a 40-pixel title band.
fn grid_size((rows, cols): (usize, usize), (w, h): (u32, u32)) -> (u32, u32) {
    (cols as u32 * w, rows as u32 * h + 40)
}

/// The `rows × cols` panels, row by row, of `root` below `title`.
fn titled_panels<DB: Backend>(
    root: &Area<DB>,
    title: &str,
    grid: (usize, usize),
) -> std::result::Result<Vec<Area<DB>>, DrawingAreaErrorKind<DB::ErrorType>> {
    Ok(root.titled(title, (style::FAMILY, 20))?.split_evenly(grid))
}

/// Renders `figure` into `path` atomically.
fn save(figure: &impl Figure, path: &Path) -> Result<()> {
    style::ensure_font()?;
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

/// The path of a figure named `stem.ext` in `dir`.
pub fn figure_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    dir.join(format!("{stem}.{ext}"))
}

/// Writes the figure of a test evaluation into `dir`: ROC curves (`roc.png`) for
/// classification, predicted vs true (`scatter.png`) for regression, its default title followed
/// by `(context)`. `truth` and `predictions` are the matrices `evaluation` was computed from.
/// Returns the report's caption (the default title) and the file name relative to `dir`.
pub fn save_evaluation_figure(
    dir: &Path,
    evaluation: &Evaluation,
    truth: &Matrix<f64>,
    predictions: &Matrix<f64>,
    context: &str,
) -> Result<(String, PathBuf)> {
    let (caption, file) = match evaluation.task {
        Task::Classification => (roc::TITLE, "roc.png"),
        Task::Regression => (scatter::TITLE, "scatter.png"),
    };
    let title = format!("{caption} ({context})");
    match evaluation.task {
        Task::Classification => {
            let figure = RocFigure::from_evaluation(evaluation, truth, predictions)?;
            RocFigure { title, ..figure }.save(&dir.join(file))?;
        }
        Task::Regression => {
            let figure = ScatterFigure::from_evaluation(evaluation, truth, predictions)?;
            ScatterFigure { title, ..figure }.save(&dir.join(file))?;
        }
    }
    Ok((caption.to_string(), PathBuf::from(file)))
}

/// Per target of `evaluation`, its `(truth, prediction)` pairs where the truth is present
/// (not NaN), after checking that both matrices hold one column per target.
fn evaluation_pairs(
    evaluation: &Evaluation,
    truth: &Matrix<f64>,
    predictions: &Matrix<f64>,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let k = evaluation.targets.len();
    if truth.rows() != predictions.rows() || truth.cols() != k || predictions.cols() != k {
        return Err(Error::InvalidInput(format!(
            "figure of an evaluation of {k} target(s): truth is {} × {}, predictions {} × {}",
            truth.rows(),
            truth.cols(),
            predictions.rows(),
            predictions.cols()
        )));
    }
    Ok((0..k)
        .map(|j| {
            (0..truth.rows())
                .filter(|&i| !truth.get(i, j).is_nan())
                .map(|i| (truth.get(i, j), predictions.get(i, j)))
                .unzip()
        })
        .collect())
}

/// The estimate of `metric` in a target's metrics.
fn target_metric(target: &TargetMetrics, metric: &str) -> Result<Estimate> {
    target.metrics.get(metric).copied().ok_or_else(|| {
        Error::InvalidInput(format!(
            "target {}: the evaluation has no {metric}",
            target.name
        ))
    })
}

#[cfg(test)]
mod tests;
