//! Dense f64 kernels the probes need: mixed-precision dot/axpy, Gram matrices and Cholesky.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

// The solvers' inner loops, compiled for the running CPU's vector width (the crate's baseline
// has two doubles per vector; the versions give the same bits): a quarter of `mmcl reproduce`'s
// probe stage ran in these three on baseline code.
mmcl_core::multiversion!(
    /// `Σ x[i]·u[i]` with an f32 row and f64 weights, accumulated in f64 over 8 lanes (so that
    /// the compiler vectorises it).
    pub(crate) fn dot_f32_f64(x: &[f32], u: &[f64]) -> f64 => dot_lanes
);
mmcl_core::multiversion!(
    /// `Σ a[i]·b[i]` in f64 over 8 lanes.
    pub(crate) fn dot_f64(a: &[f64], b: &[f64]) -> f64 => dot_lanes
);
mmcl_core::multiversion!(
    /// `acc += a·x` with an f32 row.
    pub(crate) fn axpy_f32(acc: &mut [f64], a: f64, x: &[f32]) => axpy_f32_kernel
);

/// `Σ x[i]·u[i]` in f64 over 8 lanes, with `x` widened to f64 (exactly): the kernel of both
/// [`dot_f32_f64`] and [`dot_f64`].
#[inline(always)]
fn dot_lanes<T: Copy + Into<f64>>(x: &[T], u: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let xc = x.chunks_exact(8);
    let uc = u.chunks_exact(8);
    let (xr, ur) = (xc.remainder(), uc.remainder());
    for (xs, us) in xc.zip(uc) {
        for l in 0..8 {
            lanes[l] += xs[l].into() * us[l];
        }
    }
    let mut sum: f64 = lanes.iter().sum();
    for (&a, b) in xr.iter().zip(ur) {
        sum += a.into() * b;
    }
    sum
}

#[inline(always)]
fn axpy_f32_kernel(acc: &mut [f64], a: f64, x: &[f32]) {
    for (s, &v) in acc.iter_mut().zip(x) {
        *s += a * v as f64;
    }
}

/// Rows per block of the blocked Gram computation (bounds the f64 copy to a few hundred MB at
/// D = 2048).
const GRAM_BLOCK_ROWS: usize = 8192;

/// `Σᵢ zᵢ zᵢᵀ` over the rows `rows` of `x`, with `zᵢ = (xᵢ − shift) ⊙ inv_scale`, as a
/// row-major `D × D` matrix; the products run through candle's multi-threaded f64 GEMM.
pub(crate) fn gram(
    x: &[f32],
    dim: usize,
    rows: &[usize],
    shift: &[f64],
    inv_scale: &[f64],
) -> Result<Vec<f64>> {
    let mut total: Option<Tensor> = None;
    for block in rows.chunks(GRAM_BLOCK_ROWS) {
        let mut data = vec![0.0f64; block.len() * dim];
        data.par_chunks_mut(dim)
            .zip(block.par_iter())
            .for_each(|(out, &i)| {
                let row = &x[i * dim..(i + 1) * dim];
                for j in 0..dim {
                    out[j] = (row[j] as f64 - shift[j]) * inv_scale[j];
                }
            });
        let z = Tensor::from_vec(data, (block.len(), dim), &Device::Cpu)?; // [B, D]
        let g = z.t()?.contiguous()?.matmul(&z)?; // [D, D]
        total = Some(match total {
            Some(t) => (t + g)?,
            None => g,
        });
    }
    match total {
        Some(t) => Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?),
        None => Ok(vec![0.0; dim * dim]),
    }
}

/// Cholesky factor `L` (row-major, lower triangle) of a symmetric positive-definite matrix.
/// Columns are computed left to right; the entries of one column are independent dot
/// products and run in parallel.
pub(crate) fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0f64; n * n];
    for j in 0..n {
        let (_, rest) = l.split_at_mut(j * n);
        let (row_j, below) = rest.split_at_mut(n);
        let diag = a[j * n + j] - dot_f64(&row_j[..j], &row_j[..j]);
        if diag.is_nan() || diag <= 0.0 || diag.is_infinite() {
            return Err(Error::InvalidInput(format!(
                "the regularised Gram matrix is not positive definite (pivot {j} is {diag})"
            )));
        }
        let d = diag.sqrt();
        row_j[j] = d;
        let row_j: &[f64] = row_j;
        below
            .par_chunks_mut(n)
            .enumerate()
            .with_min_len(32)
            .for_each(|(offset, row_i)| {
                let i = j + 1 + offset;
                row_i[j] = (a[i * n + j] - dot_f64(&row_i[..j], &row_j[..j])) / d;
            });
    }
    Ok(l)
}

/// Solves `L Lᵀ x = b` given the Cholesky factor.
pub(crate) fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - dot_f64(&l[i * n..i * n + i], &y[..i])) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_small_system() {
        let a = [4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let l = cholesky(&a, 3).unwrap();
        let x = cholesky_solve(&l, 3, &[1.0, 2.0, 3.0]);
        for i in 0..3 {
            let r: f64 = (0..3).map(|k| a[i * 3 + k] * x[k]).sum();
            assert!((r - [1.0, 2.0, 3.0][i]).abs() < 1e-12);
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_err());
    }

    #[test]
    fn gram_matches_direct_sum() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 7.0];
        let g = gram(&x, 2, &[0, 2], &[1.0, 1.0], &[1.0, 0.5]).unwrap();
        // z0 = (0, 0.5), z2 = (4, 3)
        assert_eq!(g, vec![16.0, 12.0, 12.0, 9.25]);
    }

    #[test]
    fn mixed_dot_handles_remainders() {
        let x: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let u: Vec<f64> = (0..19).map(|i| 0.5 * i as f64).collect();
        let expected: f64 = (0..19).map(|i| 0.5 * (i * i) as f64).sum();
        assert_eq!(dot_f32_f64(&x, &u), expected);
    }
}
