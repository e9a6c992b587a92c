//! L2-regularised logistic regression with balanced class weights, minimised by L-BFGS.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::linear::{LinearModel, Standardizer};
use crate::linalg::{axpy_f32, dot_f32_f64, dot_f64};
use crate::{Error, Matrix, Result};

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

pub(super) fn sigmoid(z: f64) -> f64 {
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
        // Partial sums per chunk, added in chunk order: the same bits on any number of
        // threads (rayon's fold/reduce would associate them as the work happened to split).
        let partials: Vec<(f64, f64, Vec<f64>)> = self
            .rows
            .par_chunks(256)
            .zip(self.targets.par_chunks(256))
            .map(|(rows, targets)| {
                let (mut loss, mut rsum, mut acc) = (0.0f64, 0.0f64, vec![0.0f64; d]);
                for (&i, &(y, s)) in rows.iter().zip(targets) {
                    let row = self.x.row(i);
                    let z = dot_f32_f64(row, &u) + offset;
                    loss += s * (log1p_exp(z) - y * z);
                    let r = s * (sigmoid(z) - y);
                    rsum += r;
                    axpy_f32(&mut acc, r, row);
                }
                (loss, rsum, acc)
            })
            .collect();
        let (loss, residual_sum, acc) = partials.into_iter().fold(
            (0.0f64, 0.0f64, vec![0.0f64; d]),
            |(l1, r1, mut a1), (l2, r2, a2)| {
                a1.iter_mut().zip(&a2).for_each(|(x, y)| *x += y);
                (l1 + l2, r1 + r2, a1)
            },
        );
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
        return Err(Error::undefined(
            "logistic regression",
            format!("the {} training labels have one class only", rows.len()),
        ));
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
}
