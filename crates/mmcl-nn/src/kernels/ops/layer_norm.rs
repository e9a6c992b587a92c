//! LayerNorm over the last dimension, with a backward pass for the input, weight and bias.

use std::mem::MaybeUninit;

use candle_core::{D, Result, Shape, Tensor};

use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::simd::{self, multiversion};
use crate::kernels::{fast_path, row_step, with_contiguous_f32};

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`, with the
/// biased variance, as `torch.nn.LayerNorm`.
///
/// Unlike candle's fast `layer_norm`, gradients flow to `x`, `weight` and `bias`.
///
/// # Shapes
/// `x`: `[.., D]`, `weight` and `bias`: `[D]`; the output has the shape of `x`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if weight.dims() != [d] || bias.dims() != [d] {
        candle_core::bail!(
            "layer_norm: weight {:?} and bias {:?} must both be [{d}] for x of shape {:?}",
            weight.dims(),
            bias.dims(),
            x.dims()
        );
    }
    if fast_path(x) && fast_path(weight) && fast_path(bias) {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            Op(LayerNorm { eps: eps as f32 }),
        );
    }
    #[cfg(feature = "cuda")]
    if [x, weight, bias]
        .iter()
        .all(|t| crate::kernels::cuda::applies(t))
    {
        return crate::kernels::cuda::layer_norm(x, weight, bias, eps);
    }
    layer_norm_composed(x, weight, bias, eps)
}

/// The composed (device-generic) LayerNorm.
pub(crate) fn layer_norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Mean and 1/std of one row.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = simd::sum(row) / n;
    let var = simd::sum_sq_dev(row, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

#[inline(always)]
fn forward_kernel(x: &[f32], w: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>], eps: f32) {
    // Writes every value of `out` for its rows of `x` without reading it (the caller's buffer
    // is not zero-filled first).
    let d = w.len();
    for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let (mean, rstd) = row_stats(row, eps);
        for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(w).zip(b) {
            o.write((v - mean) * rstd * w + b);
        }
    }
}

/// Writes `dx` for the rows of `x` and accumulates the weight and bias gradients into `sums`
/// (`[dw | db]`, each `[D]`).
#[inline(always)]
fn backward_kernel(x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], sums: &mut [f32], eps: f32) {
    let d = w.len();
    let n = d as f32;
    let (dw, db) = sums.split_at_mut(d);
    for ((row, g), dx) in x
        .chunks_exact(d)
        .zip(g.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let (mean, rstd) = row_stats(row, eps);
        let sum_gw = simd::dot(g, w);
        // Σ g·w·x̂ = rstd · Σ g·w·(x − mean)
        let sum_gw_xhat = rstd * simd::dot3_centered(g, w, row, mean);
        let (a, b) = (sum_gw / n, sum_gw_xhat / n);
        for (((((dx, &v), &g), &w), dw), db) in dx
            .iter_mut()
            .zip(row)
            .zip(g)
            .zip(w)
            .zip(dw.iter_mut())
            .zip(db.iter_mut())
        {
            let xhat = (v - mean) * rstd;
            *dx = rstd * (g * w - a - xhat * b);
            *dw += g * xhat;
            *db += g;
        }
    }
}

multiversion!(
    fn forward_simd(x: &[f32], w: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>], eps: f32) =>
        forward_kernel
);
multiversion!(
    fn backward_simd(x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], sums: &mut [f32], eps: f32)
        => backward_kernel
);

/// LayerNorm of every row of `x` (width `w.len()`), rows in parallel.
pub(crate) fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let step = row_step(w.len());
    let kernel = |i: usize, o: &mut [MaybeUninit<f32>]| {
        forward_simd(&x[i * step..i * step + o.len()], w, b, o, eps)
    };
    if w.is_empty() || !x.len().is_multiple_of(w.len()) {
        // Not whole rows (no caller does this): the values the kernel leaves are zeros.
        return crate::kernels::par_filled(x.len(), step, |i, o| {
            // SAFETY: the kernel only stores initialised values.
            kernel(i, unsafe { crate::kernels::as_uninit(o) })
        });
    }
    // SAFETY: each chunk holds whole rows (`step` is a multiple of the width, and so is the
    // length of `x`), every value of which the kernel writes.
    unsafe { crate::kernels::par_written(x.len(), step, kernel) }
}

/// The LayerNorm backward of every row, rows in parallel: the input gradient (plus `residual`,
/// added in the same pass: the gradient of a residual stream around the norm) and the weight
/// and bias gradients.
///
/// Each chunk of rows sums its own weight and bias gradients; the chunks' sums are then added
/// in chunk order. (rayon's `fold`/`reduce` would associate them as the work happened to be
/// split, so that one step's gradients, and a whole training run, changed from run to run.)
pub(crate) fn layer_norm_backward_rows(
    x: &[f32],
    w: &[f32],
    grad: &[f32],
    residual: Option<&[f32]>,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = w.len();
    let step = row_step(d);
    if d == 0 {
        return (vec![0f32; x.len()], Vec::new(), Vec::new());
    }
    // One row of partial sums per chunk, `[dw | db]`, in a single buffer; each task writes
    // its own row (by raw pointer: `par_filled` hands each task its output chunk alone).
    let mut partials = vec![0f32; x.len().div_ceil(step) * 2 * d];
    let partial_rows = crate::kernels::SharedMut(partials.as_mut_ptr());
    let dx = crate::kernels::par_filled(x.len(), step, |i, dx| {
        let rows = i * step..i * step + dx.len();
        // SAFETY: task i alone writes row i of the partial sums, which the buffer holds (one
        // row of 2·d values per chunk of `step` values), and nothing reads it meanwhile.
        let partial =
            unsafe { std::slice::from_raw_parts_mut(partial_rows.get().add(i * 2 * d), 2 * d) };
        backward_simd(&x[rows.clone()], w, &grad[rows.clone()], dx, partial, eps);
        if let Some(residual) = residual {
            for (o, &r) in dx.iter_mut().zip(&residual[rows]) {
                *o += r;
            }
        }
    });
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    for partial in partials.chunks_exact(2 * d) {
        let (pw, pb) = partial.split_at(d);
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

struct LayerNorm {
    eps: f32,
}

impl CpuKernel<3> for LayerNorm {
    const NAME: &'static str = "mmcl-layer-norm";

    fn forward(&self, [x, w, b]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let out = layer_norm_rows(x.data, w.data, b.data, self.eps);
        Ok((out, x.shape().clone()))
    }

    fn backward(&self, [x, weight, _]: [&Tensor; 3], _: &Tensor, grad: &Tensor) -> Gradients<3> {
        let (dx, dw, db) = with_contiguous_f32(x, |x| {
            with_contiguous_f32(weight, |w| {
                with_contiguous_f32(grad, |g| {
                    Ok(layer_norm_backward_rows(x, w, g, None, self.eps))
                })
            })
        })?;
        let dev = x.device();
        Ok([
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, weight.shape(), dev)?),
            Some(Tensor::from_vec(db, weight.shape(), dev)?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::*;
    use candle_core::{DType, Var};

    #[test]
    fn forward_matches_f64_composition() -> Result<()> {
        let x = (rand_tensor(&[2, 9, 384], 21, 3.0)? + 5.0)?;
        let w = rand_tensor(&[384], 22, 1.0)?;
        let b = rand_tensor(&[384], 23, 1.0)?;
        let fast = layer_norm(&x, &w, &b, 1e-6)?;
        let f64 = |t: &Tensor| t.to_dtype(DType::F64);
        let exact =
            layer_norm_composed(&f64(&x)?, &f64(&w)?, &f64(&b)?, 1e-6)?.to_dtype(DType::F32)?;
        assert!(rel_err(&fast, &exact)? < 2e-6);
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_of_the_composition() -> Result<()> {
        let x = rand_tensor(&[3, 7, 48], 24, 2.0)?;
        let w = (rand_tensor(&[48], 25, 0.5)? + 1.0)?;
        let b = rand_tensor(&[48], 26, 0.5)?;
        let up = rand_tensor(&[3, 7, 48], 27, 1.0)?;
        let grads =
            |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
                let vars = [
                    Var::from_tensor(&x)?,
                    Var::from_tensor(&w)?,
                    Var::from_tensor(&b)?,
                ];
                let loss = (f(
                    vars[0].as_tensor(),
                    vars[1].as_tensor(),
                    vars[2].as_tensor(),
                )? * &up)?
                    .sum_all()?;
                let g = loss.backward()?;
                vars.iter()
                    .map(|v| {
                        g.get(v.as_tensor())
                            .cloned()
                            .ok_or(candle_core::Error::Msg("no grad".into()))
                    })
                    .collect()
            };
        let fast = grads(&|x, w, b| layer_norm(x, w, b, 1e-6))?;
        let composed = grads(&|x, w, b| layer_norm_composed(x, w, b, 1e-6))?;
        for (a, b) in fast.iter().zip(&composed) {
            assert!(rel_err(a, b)? < 1e-5, "{}", rel_err(a, b)?);
        }
        // And against finite differences on the input.
        let f = |t: &Tensor| layer_norm(t, &w, &b, 1e-6);
        let coords = [0, 50, 333, 1000];
        assert_matches_finite_differences(&fast[0], (&x, &up), &f, &coords, (1e-2, 5e-3))
    }
}
