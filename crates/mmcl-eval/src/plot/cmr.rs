//! A CMR slice in grayscale with a heat-map overlay.

use std::path::Path;

use plotters::prelude::*;

use super::colormap::{ColorRange, Colormap, draw_colorbar, normalise};
use super::style::text_style;
use super::{Area, Backend, DrawResult, Figure, save};
use crate::{Error, Matrix, Result};

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
    /// Millimetres per slice pixel, when known: a scale bar is drawn in the lower left.
    pub pixel_mm: Option<f64>,
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
            pixel_mm: None,
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
// Hand-written rather than `image::imageops::resize`: the overlay samples the heat map once
// per display pixel, at the centre of the slice pixel under it (so the heat map follows the
// slice's nearest-neighbour upscaling), in f64 on raw importance values where a NaN cell must
// stay NaN (left uncoloured). `imageops` resizes whole pixel buffers to a fixed size, in f32,
// and its triangle filter widens when shrinking, so it would not give these pixels.
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

/// The `q`-th percentile of the finite `values` (linear interpolation; 0 when none).
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

    fn draw<DB: Backend>(&self, root: &Area<DB>) -> DrawResult {
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
        if let Some(mm) = self.pixel_mm.filter(|m| m.is_finite() && *m > 0.0) {
            // The longest of 50, 20, 10, 5 mm that fits in a third of the image.
            let px_per_mm = s / mm;
            let length = [50.0, 20.0, 10.0, 5.0]
                .into_iter()
                .find(|l| l * px_per_mm <= dw as f64 / 3.0);
            if let Some(length) = length {
                let bar = (length * px_per_mm).round() as i32;
                let (x0, y0) = (ox + 12, oy + dh - 14);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + bar, y0 + 4)],
                    RGBColor(255, 255, 255).filled(),
                ))?;
                root.draw(&Text::new(
                    format!("{length:.0} mm"),
                    (x0, y0 - 18),
                    text_style(13.0, RGBColor(255, 255, 255)),
                ))?;
            }
        }
        let bar_height = (dh as u32).saturating_sub(24).max(10);
        draw_colorbar(
            root,
            self.colormap,
            range,
            (ox + dw + 14, oy),
            (16, bar_height),
        )
    }
}
