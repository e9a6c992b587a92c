//! Colour maps of the heat-map overlays, how values map onto them, and the colour bar.

use plotters::prelude::*;

use super::style::{fmt_value, text_style};
use super::{Area, Backend, DrawResult};
use crate::{Error, Result};

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
    /// Anchor colours as `0xRRGGBB`, evenly spaced over `[0, 1]`.
    fn anchors(self) -> &'static [u32] {
        match self {
            Colormap::Viridis => &VIRIDIS,
            Colormap::Inferno => &INFERNO,
            Colormap::RdBuR => &RDBUR,
            Colormap::Jet => &JET,
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
        // Channel `shift` (16 red, 8 green, 0 blue) between anchors i and i + 1.
        let mix = |shift: u32| {
            let (p, q) = ((a[i] >> shift) & 0xff, (a[i + 1] >> shift) & 0xff);
            (p as f64 + f * (q as f64 - p as f64)).round() as u8
        };
        RGBColor(mix(16), mix(8), mix(0))
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
    /// The `(lo, hi)` value range for `values` on a (diverging or sequential) map.
    pub(super) fn resolve(self, values: &[f32], diverging: bool) -> (f64, f64) {
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

/// Where `v` falls in `(lo, hi)`, as a fraction (0.5 for an empty range).
pub(super) fn normalise(v: f64, (lo, hi): (f64, f64)) -> f64 {
    if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }
}

/// The vertical colour bar of an importance overlay, `w × h` pixels at `(x, y)`, with its
/// range printed beside it; nothing when there is no overlay (`range` is `None`).
pub(super) fn draw_colorbar<DB: Backend>(
    root: &Area<DB>,
    colormap: Colormap,
    range: Option<(f64, f64)>,
    (x, y): (i32, i32),
    (w, h): (u32, u32),
) -> DrawResult {
    let Some((lo, hi)) = range else {
        return Ok(());
    };
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
        "importance".to_string(),
        (x - 4, y + h as i32 + 6),
        style,
    ))?;
    Ok(())
}

/// Anchors of matplotlib's `viridis`.
const VIRIDIS: [u32; 9] = [
    0x440154, 0x472c7a, 0x3b518b, 0x2c718e, 0x21918c, 0x27ad81, 0x5cc863, 0xaadc32, 0xfde725,
];
/// Anchors of matplotlib's `inferno`.
const INFERNO: [u32; 9] = [
    0x000004, 0x1f0c48, 0x550f6d, 0x88226a, 0xba3655, 0xe35933, 0xf98c0a, 0xf9c932, 0xfcffa4,
];
/// Anchors of matplotlib's `RdBu_r`.
const RDBUR: [u32; 11] = [
    0x053061, 0x2166ac, 0x4393c3, 0x92c5de, 0xd1e5f0, 0xf7f7f7, 0xfddbc7, 0xf4a582, 0xd6604d,
    0xb2182b, 0x67001f,
];
/// Anchors of matplotlib's `jet`.
const JET: [u32; 9] = [
    0x000080, 0x0000ff, 0x0080ff, 0x00ffff, 0x80ff80, 0xffff00, 0xff8000, 0xff0000, 0x800000,
];
