//! ROC curves of several models or targets on one chart.

use std::path::Path;

use plotters::prelude::*;

use super::style::{FAMILY, PALETTE, shared_axes};
use super::{Area, Backend, DrawResult, Figure, evaluation_pairs, save, target_metric};
use crate::metrics::{Evaluation, RocCurve, roc_curve};
use crate::{Error, Matrix, Result};

/// The title of [`RocFigure::from_evaluation`], the caption of its report entry.
pub(super) const TITLE: &str = "ROC curves";

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
    /// The ROC curve of every target of a classification `evaluation`, named as the target,
    /// its legend with the target's AUROC and interval, titled "ROC curves". `truth` and
    /// `predictions` (`N × K`) are the matrices the evaluation was computed from; rows whose
    /// truth is missing (NaN) are left out of that target's curve; targets whose metrics are
    /// undefined have no curve.
    pub fn from_evaluation(
        evaluation: &Evaluation,
        truth: &Matrix<f64>,
        predictions: &Matrix<f64>,
    ) -> Result<Self> {
        let pairs = evaluation_pairs(evaluation, truth, predictions)?;
        let mut series = Vec::with_capacity(pairs.len());
        for (target, (t, p)) in evaluation.targets.iter().zip(&pairs) {
            if target.undefined.is_some() {
                // No curve exists for a target with one class or without predictions.
                continue;
            }
            let auroc = target_metric(target, "auroc")?;
            series.push(RocSeries {
                name: target.name.clone(),
                curve: roc_curve(t, p)?,
                auroc: auroc.value,
                ci: auroc.ci_low.zip(auroc.ci_high),
            });
        }
        let title = TITLE.into();
        Ok(Self { series, title })
    }

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

    fn draw<DB: Backend>(&self, root: &Area<DB>) -> DrawResult {
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20).into_font())
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(54)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
        shared_axes(&mut chart.configure_mesh(), 14, 235)
            .x_desc("False-positive rate (1 − specificity)")
            .y_desc("True-positive rate (sensitivity)")
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
