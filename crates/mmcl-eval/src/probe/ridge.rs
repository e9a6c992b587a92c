//! Multi-target ridge regression with missing values, by Cholesky, one Gram matrix per
//! missing-value pattern.

use std::collections::HashMap;

use rayon::prelude::*;

use super::linear::{LinearModel, Standardizer, column_sums};
use crate::linalg::{axpy_f32, cholesky, cholesky_solve, dot_f64, gram};
use crate::{Error, Matrix, Result};

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
