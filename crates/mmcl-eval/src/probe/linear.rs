//! Standardisation fitted on the training rows, and the linear model acting on standardised
//! features.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linalg::{dot_f32_f64, dot_f64};
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
pub(super) fn column_sums(
    x: &Matrix<f32>,
    rows: &[usize],
    f: impl Fn(usize, f64) -> f64 + Sync,
) -> Vec<f64> {
    let d = x.cols();
    // Per-chunk sums added in chunk order: the same bits on any number of threads.
    let partials: Vec<Vec<f64>> = rows
        .par_chunks(1024)
        .map(|chunk| {
            let mut acc = vec![0.0f64; d];
            for &i in chunk {
                for (j, (a, &v)) in acc.iter_mut().zip(x.row(i)).enumerate() {
                    *a += f(j, v as f64);
                }
            }
            acc
        })
        .collect();
    partials.into_iter().fold(vec![0.0f64; d], |mut a, b| {
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        a
    })
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
    pub(super) fn raw_form(&self, scaler: &Standardizer) -> (Vec<f64>, f64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardizer_keeps_constant_features() {
        let x = Matrix::new(3, 2, vec![1.0f32, 5.0, 2.0, 5.0, 3.0, 5.0]).unwrap();
        let s = Standardizer::fit(&x).unwrap();
        assert_eq!(s.scale[1], 1.0);
        assert!((s.scale[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
