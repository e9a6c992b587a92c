//! Predicted-vs-true scatter plots, one panel per phenotype.

use std::path::Path;

use plotters::prelude::*;

use super::style::{FAMILY, PALETTE, axis_range, shared_axes};
use super::{
    Area, Backend, DrawResult, Figure, evaluation_pairs, grid_size, save, target_metric,
    titled_panels,
};
use crate::metrics::Evaluation;
use crate::{Error, Matrix, Result};

/// The title of [`ScatterFigure::from_evaluation`], the caption of its report entry.
pub(super) const TITLE: &str = "Predicted vs true";

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
    /// The R² interval printed beside it.
    pub r2_ci: Option<(f64, f64)>,
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

    /// One panel per target of a regression `evaluation`: the target's present (non-NaN
    /// truth) rows of `truth` and `predictions` (`N × K`, the matrices the evaluation was
    /// computed from), headed by its name and R²; titled "Predicted vs true". Targets whose
    /// metrics are undefined get no panel.
    pub fn from_evaluation(
        evaluation: &Evaluation,
        truth: &Matrix<f64>,
        predictions: &Matrix<f64>,
    ) -> Result<Self> {
        let panels = evaluation_pairs(evaluation, truth, predictions)?
            .into_iter()
            .zip(&evaluation.targets)
            // A target without metrics has no predictions to plot.
            .filter(|(_, target)| target.undefined.is_none())
            .map(|((truth, prediction), target)| {
                let r2 = target_metric(target, "r2")?;
                // Phenotypes carry their unit on the panel (the axes are in it).
                let name = match mmcl_data::phenotypes::phenotype_unit(&target.name) {
                    Some(unit) => format!("{} ({unit})", target.name),
                    None => target.name.clone(),
                };
                Ok(ScatterPanel {
                    name,
                    truth,
                    prediction,
                    r2: Some(r2.value),
                    r2_ci: r2.ci_low.zip(r2.ci_high),
                })
            })
            .collect::<Result<_>>()?;
        let title = TITLE.into();
        Ok(Self { panels, title })
    }

    fn grid(&self) -> (usize, usize) {
        let n = self.panels.len();
        let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
        (n.div_ceil(cols), cols)
    }
}

impl Figure for ScatterFigure {
    fn size(&self) -> (u32, u32) {
        grid_size(self.grid(), (360, 340))
    }

    fn draw<DB: Backend>(&self, root: &Area<DB>) -> DrawResult {
        let cells = titled_panels(root, &self.title, self.grid())?;
        for (panel, cell) in self.panels.iter().zip(cells) {
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
            if points.is_empty() {
                (lo, hi) = (0.0, 1.0);
            }
            let range =
                axis_range(lo, hi, 0.05, 1e-9).map_err(|e| format!("{}: {e}", panel.name))?;
            let caption = match (panel.r2, panel.r2_ci) {
                (Some(r2), Some((lo, hi))) => {
                    format!("{}   R² = {r2:.2} ({lo:.2} to {hi:.2})", panel.name)
                }
                (Some(r2), None) => format!("{}   R² = {r2:.3}", panel.name),
                (None, _) => panel.name.clone(),
            };
            let mut chart = ChartBuilder::on(&cell)
                .caption(caption, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(48)
                .build_cartesian_2d(range.clone(), range)?;
            shared_axes(&mut chart.configure_mesh(), 12, 238)
                .x_desc("true")
                .y_desc("predicted")
                .x_labels(6)
                .y_labels(6)
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
