//! The linear probe: one standardiser and one head per target, each head's regularisation
//! chosen on a validation split (or a seeded hold-out of the training rows).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::linear::{LinearModel, Standardizer};
use super::logistic::{FitReport, SolverOptions, logistic_regression, sigmoid};
use super::ridge::ridge_path;
use crate::linalg::dot_f32_f64;
use crate::metrics::{self, Task};
use crate::{Error, Matrix, Result};

/// Settings of [`LinearProbe::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// Grid of inverse regularisation strengths `C` of the logistic probe.
    pub cs: Vec<f64>,
    /// Grid of ridge penalties `alpha`.
    pub alphas: Vec<f64>,
    /// Stopping rules of the logistic solver.
    pub solver: SolverOptions,
    /// Without a validation split, this fraction of the training rows (drawn with `seed`) is
    /// held out to choose the regularisation; the probe is then refitted on all of them.
    pub holdout_fraction: f64,
    /// Seed of the hold-out draw.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            cs: (-4..=4).map(|e| 10f64.powi(e)).collect(),
            alphas: (-2..=6).map(|e| 10f64.powi(e)).collect(),
            solver: SolverOptions::default(),
            holdout_fraction: 0.2,
            seed: 0,
        }
    }
}

/// One grid point of the regularisation search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SelectionPoint {
    /// `C` (logistic) or `alpha` (ridge).
    pub regularisation: f64,
    /// Validation AUROC (logistic) or R² (ridge).
    pub validation_score: f64,
}

/// The fitted model of one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeHead {
    /// The model on standardised features.
    pub model: LinearModel,
    /// The chosen `C` or `alpha`.
    pub regularisation: f64,
    /// The validation score of every grid point.
    pub selection: Vec<SelectionPoint>,
    /// How the final logistic fit ended (`None` for ridge, which is solved exactly).
    pub fit: Option<FitReport>,
}

/// A linear probe: one standardiser and one head per target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearProbe {
    /// Classification (probabilities) or regression.
    pub task: Task,
    /// Standardiser fitted on the training rows.
    pub scaler: Standardizer,
    /// One head per target column.
    pub heads: Vec<ProbeHead>,
}

fn check_xy(what: &str, x: &Matrix<f32>, y: &Matrix<f64>) -> Result<()> {
    if x.rows() != y.rows() {
        return Err(Error::InvalidInput(format!(
            "{what}: {} embedding rows but {} target rows",
            x.rows(),
            y.rows()
        )));
    }
    if x.rows() == 0 || x.cols() == 0 || y.cols() == 0 {
        return Err(Error::InvalidInput(format!(
            "{what}: empty embeddings or targets"
        )));
    }
    Ok(())
}

fn validation_score(task: Task, truth: &[f64], decision: &[f64]) -> Result<f64> {
    match task {
        Task::Classification => Ok(metrics::auroc(truth, decision)?),
        Task::Regression => Ok(metrics::r2(truth, decision)?),
    }
}

/// Index of the first maximum.
fn first_best(scores: &[f64]) -> usize {
    let mut best = 0;
    for (k, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = k;
        }
    }
    best
}

/// The regularisation-path fits of all targets for one training set, scored on a validation
/// set.
struct PathFit {
    /// `[target][grid point]` models and logistic fit reports.
    models: Vec<Vec<(LinearModel, Option<FitReport>)>>,
    /// `[target][grid point]` validation scores.
    scores: Vec<Vec<f64>>,
}

// The arguments are the probe's whole specification; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
fn fit_path(
    task: Task,
    x: &Matrix<f32>,
    y: &Matrix<f64>,
    train_rows: &[usize],
    scaler: &Standardizer,
    grid: &[f64],
    solver: &SolverOptions,
    validation: Option<(&Matrix<f32>, &Matrix<f64>, &[usize])>,
) -> Result<PathFit> {
    let k = y.cols();
    let columns: Vec<Vec<f64>> = (0..k).map(|t| y.column(t)).collect();
    let models: Vec<Vec<(LinearModel, Option<FitReport>)>> = match task {
        Task::Classification => columns
            .par_iter()
            .enumerate()
            .map(|(t, labels)| {
                let rows: Vec<usize> = train_rows
                    .iter()
                    .copied()
                    .filter(|&i| !labels[i].is_nan())
                    .collect();
                let mut path = Vec::with_capacity(grid.len());
                let mut warm: Option<LinearModel> = None;
                for &c in grid {
                    let (model, report) =
                        logistic_regression(x, scaler, &rows, labels, c, solver, warm.as_ref())
                            .map_err(|e| label_error(t, e))?;
                    warm = Some(model.clone());
                    path.push((model, Some(report)));
                }
                Ok(path)
            })
            .collect::<Result<_>>()?,
        Task::Regression => ridge_path(x, scaler, train_rows, &columns, grid)
            .map_err(|e| label_error(usize::MAX, e))?
            .into_iter()
            .map(|path| path.into_iter().map(|m| (m, None)).collect())
            .collect(),
    };
    let mut scores = vec![Vec::new(); k];
    if let Some((vx, vy, vrows)) = validation {
        for t in 0..k {
            let truth_col = vy.column(t);
            let rows: Vec<usize> = vrows
                .iter()
                .copied()
                .filter(|&i| !truth_col[i].is_nan())
                .collect();
            let truth: Vec<f64> = rows.iter().map(|&i| truth_col[i]).collect();
            for (model, _) in &models[t] {
                let decision = model.decision(vx, scaler, &rows);
                let score = validation_score(task, &truth, &decision).map_err(|e| {
                    Error::InvalidInput(format!(
                        "target {t}: cannot choose the regularisation on the validation rows ({} present): {e}",
                        rows.len()
                    ))
                })?;
                scores[t].push(score);
            }
        }
    }
    Ok(PathFit { models, scores })
}

fn label_error(t: usize, e: Error) -> Error {
    if t == usize::MAX {
        return e;
    }
    match e {
        Error::Core(mmcl_core::Error::Undefined { reason, .. }) => {
            Error::InvalidInput(format!("target {t}: cannot fit a classifier: {reason}"))
        }
        Error::InvalidInput(reason) => Error::InvalidInput(format!("target {t}: {reason}")),
        other => other,
    }
}

impl LinearProbe {
    /// Fits one head per column of `train_y` on the embeddings `train_x`, choosing each
    /// head's regularisation on `validation` (or on a seeded hold-out of the training rows when
    /// it is `None`, then refitting on all of them). `train_y` holds NaN where a target is
    /// missing; for classification the present values must be 0 or 1 with both classes.
    ///
    /// ```
    /// use mmcl_eval::{Matrix, metrics::Task, probe::{LinearProbe, ProbeConfig}};
    /// // One informative feature and one noise feature.
    /// let x: Vec<f32> = (0..40).flat_map(|i| [i as f32, ((i * 7) % 5) as f32]).collect();
    /// let y: Vec<f64> = (0..40).map(|i| (i >= 20) as u8 as f64).collect();
    /// let (x, y) = (Matrix::new(40, 2, x).unwrap(), Matrix::column_vector(y));
    /// let probe = LinearProbe::fit(Task::Classification, &x, &y, None, &ProbeConfig::default()).unwrap();
    /// let p = probe.predict(&x).unwrap();
    /// assert!(p.get(0, 0) < 0.5 && p.get(39, 0) > 0.5);
    /// ```
    pub fn fit(
        task: Task,
        train_x: &Matrix<f32>,
        train_y: &Matrix<f64>,
        validation: Option<(&Matrix<f32>, &Matrix<f64>)>,
        config: &ProbeConfig,
    ) -> Result<Self> {
        check_xy("training set", train_x, train_y)?;
        let grid: &[f64] = match task {
            Task::Classification => &config.cs,
            Task::Regression => &config.alphas,
        };
        if grid.is_empty() {
            return Err(Error::InvalidInput("empty regularisation grid".into()));
        }
        for t in 0..train_y.cols() {
            if (0..train_y.rows()).all(|i| train_y.get(i, t).is_nan()) {
                return Err(Error::InvalidInput(format!(
                    "target {t}: every training value is missing (NaN)"
                )));
            }
        }
        let all_rows: Vec<usize> = (0..train_x.rows()).collect();
        let scaler = Standardizer::fit(train_x)?;
        let (chosen, selection): (Vec<usize>, Vec<Vec<f64>>) = match validation {
            Some((vx, vy)) => {
                check_xy("validation set", vx, vy)?;
                if vx.cols() != train_x.cols() || vy.cols() != train_y.cols() {
                    return Err(Error::InvalidInput(format!(
                        "validation set is {}-dimensional with {} targets, training set {}-dimensional with {}",
                        vx.cols(),
                        vy.cols(),
                        train_x.cols(),
                        train_y.cols()
                    )));
                }
                let vrows: Vec<usize> = (0..vx.rows()).collect();
                let path = fit_path(
                    task,
                    train_x,
                    train_y,
                    &all_rows,
                    &scaler,
                    grid,
                    &config.solver,
                    Some((vx, vy, &vrows)),
                )?;
                let chosen: Vec<usize> = path.scores.iter().map(|s| first_best(s)).collect();
                let heads = path
                    .models
                    .into_iter()
                    .zip(&chosen)
                    .zip(&path.scores)
                    .map(|((mut models, &best), scores)| {
                        let (model, fit) = models.swap_remove(best);
                        ProbeHead {
                            model,
                            regularisation: grid[best],
                            selection: selection_points(grid, scores),
                            fit,
                        }
                    })
                    .collect();
                return Ok(Self {
                    task,
                    scaler,
                    heads,
                });
            }
            None => {
                let (fit_rows, held_out) =
                    holdout_split(train_x.rows(), config.holdout_fraction, config.seed)?;
                let sub_scaler = Standardizer::fit_rows(train_x, &fit_rows)?;
                let path = fit_path(
                    task,
                    train_x,
                    train_y,
                    &fit_rows,
                    &sub_scaler,
                    grid,
                    &config.solver,
                    Some((train_x, train_y, &held_out)),
                )?;
                (
                    path.scores.iter().map(|s| first_best(s)).collect(),
                    path.scores,
                )
            }
        };
        // Refit on every training row at each target's chosen value.
        let mut heads = Vec::with_capacity(train_y.cols());
        for t in 0..train_y.cols() {
            let single = Matrix::column_vector(train_y.column(t));
            let value = grid[chosen[t]];
            let path = fit_path(
                task,
                train_x,
                &single,
                &all_rows,
                &scaler,
                &[value],
                &config.solver,
                None,
            )?;
            let (model, fit) = path
                .models
                .into_iter()
                .next()
                .and_then(|mut p| p.pop())
                .ok_or_else(|| Error::InvalidInput("empty refit".into()))?;
            heads.push(ProbeHead {
                model,
                regularisation: value,
                selection: selection_points(grid, &selection[t]),
                fit,
            });
        }
        Ok(Self {
            task,
            scaler,
            heads,
        })
    }

    /// Predictions for every row of `x`: probabilities (classification) or values
    /// (regression), one column per head.
    pub fn predict(&self, x: &Matrix<f32>) -> Result<Matrix<f64>> {
        if x.cols() != self.scaler.dim() {
            return Err(Error::InvalidInput(format!(
                "embeddings have {} features, the probe was fitted on {}",
                x.cols(),
                self.scaler.dim()
            )));
        }
        let k = self.heads.len();
        let raw: Vec<(Vec<f64>, f64)> = self
            .heads
            .iter()
            .map(|h| h.model.raw_form(&self.scaler))
            .collect();
        let mut out = vec![0.0f64; x.rows() * k];
        out.par_chunks_mut(k).enumerate().for_each(|(i, row_out)| {
            let row = x.row(i);
            for (o, (u, offset)) in row_out.iter_mut().zip(&raw) {
                let z = dot_f32_f64(row, u) + offset;
                *o = match self.task {
                    Task::Classification => sigmoid(z),
                    Task::Regression => z,
                };
            }
        });
        Matrix::new(x.rows(), k, out)
    }
}

fn selection_points(grid: &[f64], scores: &[f64]) -> Vec<SelectionPoint> {
    grid.iter()
        .zip(scores)
        .map(|(&regularisation, &validation_score)| SelectionPoint {
            regularisation,
            validation_score,
        })
        .collect()
}

/// A seeded split of `n` rows into (kept, held out).
fn holdout_split(n: usize, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::InvalidInput(format!(
            "hold-out fraction must lie in (0, 1), got {fraction}"
        )));
    }
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1));
    if n < 4 {
        return Err(Error::InvalidInput(format!(
            "{n} training rows are too few to hold out a validation split; pass one"
        )));
    }
    let mut rng = mmcl_nn::rng::SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    let mut kept = order[held..].to_vec();
    let mut out = order[..held].to_vec();
    kept.sort_unstable();
    out.sort_unstable();
    Ok((kept, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_seeded_and_disjoint() {
        let (a, b) = holdout_split(50, 0.2, 3).unwrap();
        assert_eq!((a.len(), b.len()), (40, 10));
        assert!(b.iter().all(|i| !a.contains(i)));
        assert_eq!(holdout_split(50, 0.2, 3).unwrap(), (a, b));
    }
}
