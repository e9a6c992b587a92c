//! Linear probes on frozen embeddings: L2-regularised logistic regression with balanced class
//! weights and multi-target ridge regression with missing values, regularisation chosen on a
//! validation split.
//!
//! The recipe is scikit-learn's `StandardScaler` (fitted on the training rows only) followed by
//! `LogisticRegression(C, class_weight="balanced")` or `Ridge(alpha)` per target, fitted on the
//! rows where that target is present; each target picks its own `C` / `alpha` from a grid by
//! the validation AUROC / R² (the first best on ties, so the strongest regularisation). All
//! arithmetic is f64; embeddings stay f32 in memory and are standardised on the fly, so
//! `N = 100 000, D = 2048` needs no copy of them.
//!
//! - Logistic regression minimises `Σᵢ sᵢ·ℓ(yᵢ, wᵀx̃ᵢ + b) + ‖w‖²/(2C)` (intercept not
//!   penalised, `sᵢ = n / (2·n_class(yᵢ))`) with L-BFGS and a backtracking Armijo line search,
//!   one parallel pass over the embeddings per evaluation, warm-started along the `C` grid.
//! - Ridge regression solves `(X̃ᵀX̃ + αI) w = X̃ᵀ(y − ȳ)` with `X̃` centred on the target's
//!   present rows, by Cholesky; targets sharing a missing-value pattern share one Gram matrix.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linalg::{axpy_f32, cholesky, cholesky_solve, dot_f32_f64, dot_f64, gram};
use crate::metrics::{self, Task};
use crate::{Error, Matrix, Result};

/// Per-feature mean and standard deviation fitted on training embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean of each feature.
    pub mean: Vec<f64>,
    /// Population standard deviation of each feature (1 where the feature is constant, as
    /// scikit-learn does).
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Fits on every row of `x`. Errors on an empty matrix or a non-finite value.
    pub fn fit(x: &Matrix<f32>) -> Result<Self> {
        let rows: Vec<usize> = (0..x.rows()).collect();
        Self::fit_rows(x, &rows)
    }

    /// Fits on the rows `rows` of `x`.
    pub fn fit_rows(x: &Matrix<f32>, rows: &[usize]) -> Result<Self> {
        let d = x.cols();
        if rows.is_empty() || d == 0 {
            return Err(Error::InvalidInput(
                "cannot standardise an empty embedding matrix".into(),
            ));
        }
        if let Some(&i) = rows
            .iter()
            .find(|&&i| x.row(i).iter().any(|v| !v.is_finite()))
        {
            return Err(Error::InvalidInput(format!(
                "embedding row {i} holds a NaN or infinite value"
            )));
        }
        let n = rows.len() as f64;
        let mean: Vec<f64> = column_sums(x, rows, |_, v| v)
            .into_iter()
            .map(|s| s / n)
            .collect();
        let squares = column_sums(x, rows, |j, v| (v - mean[j]) * (v - mean[j]));
        // A feature is constant when its variance is within rounding of zero (scikit-learn's
        // rule); its scale is then 1 so that it standardises to 0 instead of blowing up.
        let scale = squares
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let var = s / n;
                let rounding = n * f64::EPSILON * m.abs();
                if var <= rounding * rounding || var == 0.0 {
                    1.0
                } else {
                    var.sqrt()
                }
            })
            .collect();
        Ok(Self { mean, scale })
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// `Σᵢ f(j, x[i][j])` for every column `j`, over the rows `rows`.
fn column_sums(x: &Matrix<f32>, rows: &[usize], f: impl Fn(usize, f64) -> f64 + Sync) -> Vec<f64> {
    let d = x.cols();
    rows.par_chunks(1024)
        .fold(
            || vec![0.0f64; d],
            |mut acc, chunk| {
                for &i in chunk {
                    for (j, (a, &v)) in acc.iter_mut().zip(x.row(i)).enumerate() {
                        *a += f(j, v as f64);
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0.0f64; d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// A linear function of the standardised features: `wᵀ(x − mean)/scale + b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    /// Weights on standardised features.
    pub weights: Vec<f64>,
    /// Intercept.
    pub intercept: f64,
}

impl LinearModel {
    /// Weights and offset acting on raw features: `u = w / scale`, `c = b − meanᵀu`.
    fn raw_form(&self, scaler: &Standardizer) -> (Vec<f64>, f64) {
        let u: Vec<f64> = self
            .weights
            .iter()
            .zip(&scaler.scale)
            .map(|(w, s)| w / s)
            .collect();
        let offset = self.intercept - dot_f64(&scaler.mean, &u);
        (u, offset)
    }

    /// The decision values `wᵀx̃ + b` of the rows `rows` of `x`.
    pub fn decision(&self, x: &Matrix<f32>, scaler: &Standardizer, rows: &[usize]) -> Vec<f64> {
        let (u, offset) = self.raw_form(scaler);
        rows.par_iter()
            .map(|&i| dot_f32_f64(x.row(i), &u) + offset)
            .collect()
    }
}

/// Stopping rules of the iterative solver.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SolverOptions {
    /// Most L-BFGS iterations.
    pub max_iter: usize,
    /// Converged when the largest gradient component of the (sample-weight-normalised)
    /// objective is at most this.
    pub tol: f64,
    /// L-BFGS history length.
    pub memory: usize,
}

impl Default for SolverOptions {
    fn default() -> Self {
        Self {
            max_iter: 2000,
            tol: 1e-7,
            memory: 10,
        }
    }
}

/// How an iterative fit ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Iterations taken.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached.
    pub converged: bool,
    /// Largest gradient component at the end.
    pub gradient_norm: f64,
}

fn log1p_exp(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The logistic objective, normalised by the total sample weight `S`:
/// `(1/S) Σ sᵢ ℓᵢ + ‖w‖²/(2·C·S)`, over parameters `[w; b]`.
struct LogisticObjective<'a> {
    x: &'a Matrix<f32>,
    scaler: &'a Standardizer,
    rows: &'a [usize],
    /// Per present row: (label 0/1, sample weight / S).
    targets: Vec<(f64, f64)>,
    lambda: f64,
}

impl LogisticObjective<'_> {
    /// Value and gradient at `theta = [w; b]` in one parallel pass over the rows.
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let d = self.x.cols();
        let model = LinearModel {
            weights: theta[..d].to_vec(),
            intercept: theta[d],
        };
        let (u, offset) = model.raw_form(self.scaler);
        let identity = || (0.0f64, 0.0f64, vec![0.0f64; d]);
        let (loss, residual_sum, acc) = self
            .rows
            .par_chunks(256)
            .zip(self.targets.par_chunks(256))
            .fold(
                identity,
                |(mut loss, mut rsum, mut acc), (rows, targets)| {
                    for (&i, &(y, s)) in rows.iter().zip(targets) {
                        let row = self.x.row(i);
                        let z = dot_f32_f64(row, &u) + offset;
                        loss += s * (log1p_exp(z) - y * z);
                        let r = s * (sigmoid(z) - y);
                        rsum += r;
                        axpy_f32(&mut acc, r, row);
                    }
                    (loss, rsum, acc)
                },
            )
            .reduce(identity, |(l1, r1, mut a1), (l2, r2, a2)| {
                a1.iter_mut().zip(&a2).for_each(|(x, y)| *x += y);
                (l1 + l2, r1 + r2, a1)
            });
        // Back from raw features to standardised ones: x̃ = (x − μ)/σ.
        for j in 0..d {
            grad[j] = (acc[j] - self.scaler.mean[j] * residual_sum) / self.scaler.scale[j]
                + self.lambda * theta[j];
        }
        grad[d] = residual_sum;
        loss + 0.5 * self.lambda * dot_f64(&theta[..d], &theta[..d])
    }
}

fn inf_norm(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Minimises a smooth convex function with L-BFGS and backtracking (Armijo) line search.
fn lbfgs(
    mut theta: Vec<f64>,
    options: &SolverOptions,
    f: impl Fn(&[f64], &mut [f64]) -> f64,
) -> (Vec<f64>, FitReport) {
    let n = theta.len();
    let mut grad = vec![0.0; n];
    let mut value = f(&theta, &mut grad);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::new();
    let mut trial = vec![0.0; n];
    let mut trial_grad = vec![0.0; n];
    let mut iterations = 0;
    while iterations < options.max_iter && inf_norm(&grad) > options.tol {
        iterations += 1;
        // Two-loop recursion: direction = −H·grad.
        let mut q = grad.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot_f64(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match history.back() {
            Some((s, y, _)) => dot_f64(s, y) / dot_f64(y, y),
            None => 1.0 / dot_f64(&grad, &grad).sqrt().max(1.0),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot_f64(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot_f64(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            direction = grad.iter().map(|g| -g).collect();
            slope = -dot_f64(&grad, &grad);
        }
        let mut step = 1.0;
        let accepted = loop {
            for k in 0..n {
                trial[k] = theta[k] + step * direction[k];
            }
            let v = f(&trial, &mut trial_grad);
            if v.is_finite() && v <= value + 1e-4 * step * slope {
                break Some(v);
            }
            step *= 0.5;
            if step < 1e-20 {
                break None;
            }
        };
        let Some(new_value) = accepted else {
            break;
        };
        let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = trial_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy = dot_f64(&s, &y);
        if sy > 1e-12 * dot_f64(&y, &y).sqrt() * dot_f64(&s, &s).sqrt() {
            history.push_back((s, y, 1.0 / sy));
            if history.len() > options.memory {
                history.pop_front();
            }
        }
        let decrease = value - new_value;
        std::mem::swap(&mut theta, &mut trial);
        std::mem::swap(&mut grad, &mut trial_grad);
        value = new_value;
        // Stop when the objective no longer moves at f64 resolution.
        if decrease <= 1e-16 * value.abs().max(1e-300) && inf_norm(&grad) <= 1e3 * options.tol {
            break;
        }
    }
    let gradient_norm = inf_norm(&grad);
    (
        theta,
        FitReport {
            iterations,
            converged: gradient_norm <= options.tol,
            gradient_norm,
        },
    )
}

/// Fits an L2-regularised logistic regression with balanced class weights on the rows `rows`
/// of `x` (standardised by `scaler`); `labels[i]` is the 0/1 label of row `i` of `x`.
///
/// The objective is scikit-learn's `LogisticRegression(C=c, class_weight="balanced")`.
pub fn logistic_regression(
    x: &Matrix<f32>,
    scaler: &Standardizer,
    rows: &[usize],
    labels: &[f64],
    c: f64,
    options: &SolverOptions,
    warm_start: Option<&LinearModel>,
) -> Result<(LinearModel, FitReport)> {
    let d = x.cols();
    if scaler.dim() != d || labels.len() != x.rows() {
        return Err(Error::InvalidInput(format!(
            "logistic regression: {} labels and a {}-feature scaler for a {}×{d} matrix",
            labels.len(),
            scaler.dim(),
            x.rows()
        )));
    }
    if !(c > 0.0 && c.is_finite()) {
        return Err(Error::InvalidInput(format!("C must be positive, got {c}")));
    }
    let positives = rows.iter().filter(|&&i| labels[i] == 1.0).count();
    if let Some(&i) = rows.iter().find(|&&i| labels[i] != 0.0 && labels[i] != 1.0) {
        return Err(Error::InvalidInput(format!(
            "row {i}: labels must be 0 or 1, found {}",
            labels[i]
        )));
    }
    let negatives = rows.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(Error::Undefined {
            metric: "logistic regression",
            reason: format!("the {} training labels have one class only", rows.len()),
        });
    }
    // Balanced weights n/(2·n_c) sum to n; dividing by that sum keeps the objective O(1).
    let n = rows.len() as f64;
    let weight_of = |y: f64| {
        let count = if y == 1.0 { positives } else { negatives } as f64;
        n / (2.0 * count) / n
    };
    let objective = LogisticObjective {
        x,
        scaler,
        rows,
        targets: rows
            .iter()
            .map(|&i| (labels[i], weight_of(labels[i])))
            .collect(),
        lambda: 1.0 / (c * n),
    };
    let start = match warm_start {
        Some(m) if m.weights.len() == d => {
            let mut t = m.weights.clone();
            t.push(m.intercept);
            t
        }
        _ => vec![0.0; d + 1],
    };
    let (theta, report) = lbfgs(start, options, |t, g| objective.eval(t, g));
    Ok((
        LinearModel {
            weights: theta[..d].to_vec(),
            intercept: theta[d],
        },
        report,
    ))
}

/// Ridge regressions of several targets for every `alpha`: `result[t][a]` is target `t` at
/// `alphas[a]`. `targets[t][i]` is the value of row `i` of `x` (NaN when missing); each target
/// is fitted on its rows among `rows` where it is present, centred there (intercept not
/// penalised), as scikit-learn's `Ridge(alpha)` on those rows.
pub fn ridge_path(
    x: &Matrix<f32>,
    scaler: &Standardizer,
    rows: &[usize],
    targets: &[Vec<f64>],
    alphas: &[f64],
) -> Result<Vec<Vec<LinearModel>>> {
    let d = x.cols();
    if scaler.dim() != d {
        return Err(Error::InvalidInput(format!(
            "ridge: a {}-feature scaler for {d} features",
            scaler.dim()
        )));
    }
    if let Some(a) = alphas.iter().find(|a| !(**a > 0.0 && a.is_finite())) {
        return Err(Error::InvalidInput(format!(
            "alpha must be positive, got {a}"
        )));
    }
    // Group targets by which rows they are present on: one Gram matrix per group.
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    let mut index: HashMap<Vec<usize>, usize> = HashMap::new();
    for (t, values) in targets.iter().enumerate() {
        if values.len() != x.rows() {
            return Err(Error::InvalidInput(format!(
                "ridge: target {t} has {} values for {} rows",
                values.len(),
                x.rows()
            )));
        }
        let present: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&i| !values[i].is_nan())
            .collect();
        if present.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "target {t}: {} training values present, at least 2 are needed",
                present.len()
            )));
        }
        if let Some(&i) = present.iter().find(|&&i| !values[i].is_finite()) {
            return Err(Error::InvalidInput(format!(
                "target {t}: row {i} is {}",
                values[i]
            )));
        }
        match index.get(&present) {
            Some(&g) => groups[g].1.push(t),
            None => {
                index.insert(present.clone(), groups.len());
                groups.push((present, vec![t]));
            }
        }
    }
    let mut result: Vec<Vec<LinearModel>> = vec![Vec::new(); targets.len()];
    let inv_scale: Vec<f64> = scaler.scale.iter().map(|s| 1.0 / s).collect();
    // The Gram matrix of all rows, computed once when some pattern misses only a few rows.
    let mut full_gram: Option<Vec<f64>> = None;
    for (present, members) in groups {
        let n = present.len() as f64;
        let raw_mean: Vec<f64> = column_sums(x, &present, |_, v| v)
            .into_iter()
            .map(|s| s / n)
            .collect();
        // Mean of the standardised features over these rows (for centring and the intercept).
        let centre: Vec<f64> = (0..d)
            .map(|j| (raw_mean[j] - scaler.mean[j]) * inv_scale[j])
            .collect();
        let missing: Vec<usize> = {
            let mut is_present = vec![false; x.rows()];
            present.iter().for_each(|&i| is_present[i] = true);
            rows.iter().copied().filter(|&i| !is_present[i]).collect()
        };
        let g = if missing.len() < present.len() {
            // Σ_present s sᵀ = Σ_all s sᵀ − Σ_missing s sᵀ (s standardised by the scaler),
            // then centred: − n·m mᵀ. Saves a full N·D² product per missing-value pattern.
            if full_gram.is_none() {
                full_gram = Some(gram(x.as_slice(), d, rows, &scaler.mean, &inv_scale)?);
            }
            let mut g = full_gram.clone().unwrap_or_default(); // [D, D]
            if !missing.is_empty() {
                let removed = gram(x.as_slice(), d, &missing, &scaler.mean, &inv_scale)?;
                g.iter_mut().zip(&removed).for_each(|(a, b)| *a -= b);
            }
            g.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v -= n * centre[i] * centre[j];
                }
            });
            g
        } else {
            gram(x.as_slice(), d, &present, &raw_mean, &inv_scale)? // [D, D]
        };
        let target_means: Vec<f64> = members
            .iter()
            .map(|&t| present.iter().map(|&i| targets[t][i]).sum::<f64>() / n)
            .collect();
        // Right-hand sides X̃cᵀ(y − ȳ), one per member target.
        let rhs: Vec<Vec<f64>> = members
            .par_iter()
            .zip(&target_means)
            .map(|(&t, &ym)| {
                let mut acc = vec![0.0f64; d];
                let mut shift = 0.0;
                for &i in &present {
                    let r = targets[t][i] - ym;
                    axpy_f32(&mut acc, r, x.row(i));
                    shift += r;
                }
                (0..d)
                    .map(|j| (acc[j] - raw_mean[j] * shift) * inv_scale[j])
                    .collect()
            })
            .collect();
        for &alpha in alphas {
            let mut a = g.clone();
            for j in 0..d {
                a[j * d + j] += alpha;
            }
            let l = cholesky(&a, d)?;
            for ((&t, b), &ym) in members.iter().zip(&rhs).zip(&target_means) {
                let weights = cholesky_solve(&l, d, b);
                let intercept = ym - dot_f64(&centre, &weights);
                result[t].push(LinearModel { weights, intercept });
            }
        }
    }
    Ok(result)
}

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
        Error::Undefined { reason, .. } => {
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
    fn lbfgs_minimises_a_quadratic() {
        let (theta, report) = lbfgs(vec![5.0, -3.0], &SolverOptions::default(), |t, g| {
            g[0] = 2.0 * (t[0] - 1.0);
            g[1] = 20.0 * (t[1] + 2.0);
            (t[0] - 1.0).powi(2) + 10.0 * (t[1] + 2.0).powi(2)
        });
        assert!(report.converged, "{report:?}");
        assert!((theta[0] - 1.0).abs() < 1e-7 && (theta[1] + 2.0).abs() < 1e-7);
    }

    #[test]
    fn logistic_gradient_matches_finite_differences() {
        let x = Matrix::new(
            6,
            2,
            vec![
                1.0f32, 2.0, -1.0, 0.5, 3.0, 1.0, 0.0, -2.0, 2.0, 2.0, -1.0, -1.0,
            ],
        )
        .unwrap();
        let scaler = Standardizer::fit(&x).unwrap();
        let rows: Vec<usize> = (0..6).collect();
        let objective = LogisticObjective {
            x: &x,
            scaler: &scaler,
            rows: &rows,
            targets: vec![
                (1.0, 0.1),
                (0.0, 0.2),
                (1.0, 0.1),
                (0.0, 0.2),
                (1.0, 0.1),
                (0.0, 0.3),
            ],
            lambda: 0.3,
        };
        let theta = [0.3, -0.7, 0.2];
        let mut g = [0.0; 3];
        objective.eval(&theta, &mut g);
        for k in 0..3 {
            let mut up = theta;
            let mut down = theta;
            up[k] += 1e-6;
            down[k] -= 1e-6;
            let mut scratch = [0.0; 3];
            let numeric =
                (objective.eval(&up, &mut scratch) - objective.eval(&down, &mut scratch)) / 2e-6;
            assert!((numeric - g[k]).abs() < 1e-7, "{k}: {numeric} vs {}", g[k]);
        }
    }

    #[test]
    fn holdout_is_seeded_and_disjoint() {
        let (a, b) = holdout_split(50, 0.2, 3).unwrap();
        assert_eq!((a.len(), b.len()), (40, 10));
        assert!(b.iter().all(|i| !a.contains(i)));
        assert_eq!(holdout_split(50, 0.2, 3).unwrap(), (a, b));
    }

    #[test]
    fn standardizer_keeps_constant_features() {
        let x = Matrix::new(3, 2, vec![1.0f32, 5.0, 2.0, 5.0, 3.0, 5.0]).unwrap();
        let s = Standardizer::fit(&x).unwrap();
        assert_eq!(s.scale[1], 1.0);
        assert!((s.scale[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
