//! What every figure shares: the embedded font, text styles, axis and value labels, the
//! palette of successive series.

use std::sync::OnceLock;

use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Error, Result};

/// The embedded font (see `assets/`).
const FONT: &[u8] = include_bytes!("../../assets/MmclSans.ttf");
/// The family name the embedded font is registered under.
pub(super) const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters once per process.
pub(super) fn ensure_font() -> Result<()> {
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

/// Text of `size` points in `color`, in the embedded font.
pub(super) fn text_style(size: f64, color: RGBColor) -> TextStyle<'static> {
    TextStyle {
        font: (FAMILY, size).into_font(),
        color: color.to_backend_color(),
        pos: plotters::style::text_anchor::Pos::default(),
    }
}

/// An axis tick label: up to four significant digits, trailing zeros dropped.
pub(super) fn fmt_tick(v: &f64) -> String {
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

/// A value printed beside a colour bar: three significant figures or so, exponent form
/// outside `[1e-3, 1e4)`.
pub(super) fn fmt_value(v: f64) -> String {
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

/// Colours of successive series.
pub(super) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The mesh (axes and grid) of a chart on two f64 axes.
type Mesh<'a, 'b, DB> = MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB>;

/// The axis style every chart shares: tick labels by [`fmt_tick`] in the embedded font of
/// `label_size`, light grid lines of grey level `grey`.
pub(super) fn shared_axes<'m, 'a, 'b, DB: DrawingBackend>(
    mesh: &'m mut Mesh<'a, 'b, DB>,
    label_size: i32,
    grey: u8,
) -> &'m mut Mesh<'a, 'b, DB> {
    mesh.x_label_formatter(&fmt_tick)
        .y_label_formatter(&fmt_tick)
        .label_style((FAMILY, label_size))
        .light_line_style(RGBColor(grey, grey, grey))
}

/// The axis range for data from `lo` to `hi`, widened by `fraction` of the span on either side
/// (by `single` when all values are one), checked to be one plotters can lay out.
///
/// plotters needs finite bounds a positive width apart: values whose span overflows `f64`
/// (±1e308) made it loop without end, and a width lost to rounding (one value of 1e20 ± 0.5)
/// divides by zero. Such spans are errors; a rounded-away width is widened relative to the
/// values.
pub(super) fn axis_range(
    lo: f64,
    hi: f64,
    fraction: f64,
    single: f64,
) -> std::result::Result<std::ops::Range<f64>, String> {
    let span = hi - lo;
    if !(lo.is_finite() && hi.is_finite() && span.is_finite() && span >= 0.0) {
        return Err(format!(
            "values from {lo:e} to {hi:e} do not fit on an axis (their span overflows)"
        ));
    }
    let pad = if span > 0.0 { span * fraction } else { single };
    let mut range = (lo - pad)..(hi + pad);
    if range.end <= range.start {
        // A margin far below the values' magnitude rounds back to the values: widen it.
        let pad = pad.max(lo.abs().max(hi.abs()) * 1e-6);
        range = (lo - pad)..(hi + pad);
    }
    if range.start.is_finite() && range.end.is_finite() && range.end > range.start {
        Ok(range)
    } else {
        Err(format!(
            "values from {lo:e} to {hi:e} do not fit on an axis with a margin"
        ))
    }
}
