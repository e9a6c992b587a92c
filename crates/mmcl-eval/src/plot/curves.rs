//! Training curves: every metric of a run log against the epoch.

use std::path::Path;

use plotters::prelude::*;

use super::style::{FAMILY, PALETTE, axis_range, fmt_tick, shared_axes};
use super::{Area, Backend, DrawResult, Figure, grid_size, save, titled_panels};
use crate::runlog::RunLog;
use crate::{Error, Result};

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

    /// The metrics drawn: those asked for, or every metric of the log with the losses first
    /// (what a reader looks at first), then the others in the log's order.
    fn metric_list(&self) -> Vec<String> {
        if self.metrics.is_empty() {
            let mut names = self.log.metric_names();
            // A stable sort keeps the log's order within each group.
            names.sort_by_key(|m| !m.contains("loss"));
            names
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
        grid_size(self.grid(), (400, 300))
    }

    fn draw<DB: Backend>(&self, root: &Area<DB>) -> DrawResult {
        let cells = titled_panels(root, &self.title, self.grid())?;
        let splits = self.log.splits();
        for (metric, cell) in self.metric_list().iter().zip(cells) {
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
            let in_words = |axis: &str, reason: String| format!("{metric}, {axis}: {reason}");
            // Epochs fill the axis; one epoch gets half an epoch either side.
            let x_range = axis_range(x0, x1, 0.0, 0.5).map_err(|e| in_words("epoch", e))?;
            let y_range = axis_range(y0, y1, 0.06, y0.abs().max(1.0) * 0.1)
                .map_err(|e| in_words("value", e))?;
            let mut chart = ChartBuilder::on(&cell)
                .caption(metric, (FAMILY, 16))
                .margin(10)
                .x_label_area_size(34)
                .y_label_area_size(58)
                .build_cartesian_2d(x_range, y_range)?;
            // Epochs are whole numbers: ticks between them stay unlabelled (beyond 1e15, where
            // every f64 is whole, the usual tick labels).
            let epoch_label = |x: &f64| {
                if x.abs() >= 1e15 {
                    fmt_tick(x)
                } else if (x - x.round()).abs() < 1e-9 {
                    format!("{}", x.round() as i64)
                } else {
                    String::new()
                }
            };
            shared_axes(&mut chart.configure_mesh(), 12, 238)
                .x_desc("epoch")
                .y_desc(metric.as_str())
                .x_label_formatter(&epoch_label)
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
