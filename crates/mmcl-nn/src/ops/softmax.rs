//! Softmax over the last dimension, with a backward pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{CHUNK, contiguous_f32, fast_path};
use crate::simd::{self, multiversion};

/// Softmax over the last dimension, `exp(x - max) / Σ exp(x - max)` per row.
///
/// Unlike `candle_nn::ops::softmax_last_dim`, gradients flow through it.
///
/// # Shapes
/// Any shape `[.., N]`; the output has the shape of `x`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) && x.rank() > 0 {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        softmax_composed(x)
    }
}

/// The composed (device-generic) softmax; the max only shifts, so it needs no gradient.
pub(crate) fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Softmax of each row of `rows` (length `n`) in place.
#[inline(always)]
pub(crate) fn softmax_rows_kernel(rows: &mut [f32], n: usize) {
    for row in rows.chunks_exact_mut(n) {
        let max = simd::max(row);
        let sum = simd::exp_shifted_in_place(row, max);
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion!(pub(crate) fn softmax_rows(rows: &mut [f32], n: usize) => softmax_rows_kernel);

/// Softmax of each row of `x` (length `n`) written to `out`.
#[inline(always)]
fn softmax_rows_to_kernel(x: &[f32], out: &mut [f32], n: usize) {
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let max = simd::max(row);
        let inv = 1.0 / simd::exp_shifted(row, o, max);
        for v in o.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion!(fn softmax_rows_to(x: &[f32], out: &mut [f32], n: usize) => softmax_rows_to_kernel);

/// `y ⊙ (g − Σ g⊙y)` per row: the gradient of softmax given its output `y`.
#[inline(always)]
fn softmax_grad_kernel(y: &[f32], g: &[f32], out: &mut [f32], n: usize) {
    for ((o, y), g) in out
        .chunks_exact_mut(n)
        .zip(y.chunks_exact(n))
        .zip(g.chunks_exact(n))
    {
        let dot = simd::dot(y, g);
        for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
            *o = y * (g - dot);
        }
    }
}

multiversion!(fn softmax_grad_simd(y: &[f32], g: &[f32], out: &mut [f32], n: usize) => softmax_grad_kernel);

fn step_for(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1) * n.max(1)
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "mmcl-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        if n > 0 {
            let step = step_for(n);
            out.par_chunks_mut(step)
                .zip(x.par_chunks(step))
                .for_each(|(o, rows)| softmax_rows_to(rows, o, n));
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = res.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?;
        Ok(Some(grad))
    }
}

struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "mmcl-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let n = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; y.len()];
        if n > 0 {
            let step = step_for(n);
            out.par_chunks_mut(step)
                .zip(y.par_chunks(step).zip(g.par_chunks(step)))
                .for_each(|(o, (y, g))| softmax_grad_simd(y, g, o, n));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use candle_core::DType;

    #[test]
    fn forward_matches_f64_composition() -> Result<()> {
        let x = rand_tensor(&[3, 4, 301], 11, 20.0)?;
        let fast = softmax_last_dim(&x)?;
        let exact = softmax_composed(&x.to_dtype(DType::F64)?)?.to_dtype(DType::F32)?;
        assert!(rel_err(&fast, &exact)? < 1e-6);
        let sums = fast.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_and_finite_differences() -> Result<()> {
        let x = rand_tensor(&[4, 33], 12, 3.0)?;
        let w = rand_tensor(&[4, 33], 13, 1.0)?;
        let fast = autograd(&x, &w, &softmax_last_dim)?;
        let composed = autograd(&x, &w, &softmax_composed)?;
        assert!(rel_err(&fast, &composed)? < 1e-5);
        let fast_v = fast.flatten_all()?.to_vec1::<f32>()?;
        for (i, numeric) in
            finite_difference(&x, &w, &softmax_last_dim, &[0, 5, 40, 77, 131], 1e-2)?
        {
            assert!((fast_v[i] as f64 - numeric).abs() < 1e-3);
        }
        Ok(())
    }

    #[test]
    fn extreme_values_stay_finite() -> Result<()> {
        let x = Tensor::new(
            &[[1e30f32, -1e30, 0.0], [-50.0, -50.0, -50.0]],
            &candle_core::Device::Cpu,
        )?;
        let y = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!(y[0], vec![1.0, 0.0, 0.0]);
        assert!(y[1].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
        Ok(())
    }
}
