//! Softmax over the last dimension, with a backward pass.

use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::simd::{self, multiversion};
use crate::kernels::{fast_path, map_chunks, map_tensors, row_step};
use candle_core::{D, Result, Shape, Tensor};

/// Softmax over the last dimension, `exp(x - max) / Σ exp(x - max)` per row.
///
/// Unlike `candle_nn::ops::softmax_last_dim`, gradients flow through it.
///
/// # Shapes
/// Any shape `[.., N]`; the output has the shape of `x`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) && x.rank() > 0 {
        return x.contiguous()?.apply_op1(Op(SoftmaxLastDim));
    }
    #[cfg(feature = "cuda")]
    if crate::kernels::cuda::applies(x) && x.rank() > 0 {
        return crate::kernels::cuda::softmax_last_dim(x);
    }
    softmax_composed(x)
}

/// The composed (device-generic) softmax; the max only shifts, so it needs no gradient.
pub(crate) fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Softmax of each row of `rows` (length `n`) in place (`FMA`: see [`simd::fused_arithmetic`]).
#[inline(always)]
pub(crate) fn softmax_rows_kernel<const FMA: bool>(rows: &mut [f32], n: usize) {
    for row in rows.chunks_exact_mut(n) {
        let max = simd::max(row);
        let sum = simd::exp_shifted_in_place::<FMA>(row, max);
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion!(fn softmax_rows_exact(rows: &mut [f32], n: usize) => softmax_rows_kernel::<false>);
multiversion!(fn softmax_rows_fused(rows: &mut [f32], n: usize) => softmax_rows_kernel::<true>);

/// Softmax of each row of `rows` (length `n`) in place, with fused multiply-adds where `fused`
/// ([`simd::fused_arithmetic`]).
pub(crate) fn softmax_rows(rows: &mut [f32], n: usize, fused: bool) {
    if fused {
        softmax_rows_fused(rows, n)
    } else {
        softmax_rows_exact(rows, n)
    }
}

/// Softmax of each row of `x` (length `n`) written to `out`.
#[inline(always)]
fn softmax_rows_to_kernel(x: &[f32], out: &mut [f32], n: usize) {
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let max = simd::max(row);
        let inv = 1.0 / simd::exp_shifted::<false>(row, o, max);
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

struct SoftmaxLastDim;

impl CpuKernel<1> for SoftmaxLastDim {
    const NAME: &'static str = "mmcl-softmax-last-dim";

    fn forward(&self, [x]: [Input<'_>; 1]) -> Result<(Vec<f32>, Shape)> {
        // A last dimension of 0 leaves no values, so the kernel never sees n = 0.
        let n = x.dims().last().copied().unwrap_or(1);
        map_chunks([x], Self::NAME, row_step(n), |o, [rows]| {
            softmax_rows_to(rows, o, n)
        })
    }

    fn backward(&self, _: [&Tensor; 1], res: &Tensor, grad: &Tensor) -> Gradients<1> {
        let n = res.dims().last().copied().unwrap_or(1);
        let grad = map_tensors(
            [res, grad],
            "mmcl-softmax-grad",
            row_step(n),
            |o, [y, g]| softmax_grad_simd(y, g, o, n),
        )?;
        Ok([Some(grad)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::*;
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
        let coords = [0, 5, 40, 77, 131];
        let (fast, composed) = (&softmax_last_dim, &softmax_composed);
        assert_backward_matches((&x, &w), fast, composed, &coords, (1e-2, 1e-3))
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
