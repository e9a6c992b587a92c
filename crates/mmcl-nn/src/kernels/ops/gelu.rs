//! Exact (erf) GELU, alone or fused with the bias add of the preceding linear layer.

use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::simd::{self, multiversion, normal_cdf_f32, normal_pdf_f32};
use crate::kernels::{
    CHUNK, as_uninit, bias_gradient, fast_path, map_tensors, par_written, row_step,
    with_contiguous_f32,
};
use crate::precision::matmul_precision;
use candle_core::{Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// Exact GELU, `x·Φ(x) = x·½(1 + erf(x/√2))`, as PyTorch's `nn.GELU()` (not the tanh
/// approximation that candle's `Tensor::gelu` computes).
///
/// # Shapes
/// Any shape; the output has the shape of `x`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        x.contiguous()?.apply_op1(Op(GeluErf))
    } else {
        gelu_composed(x)
    }
}

/// `gelu_erf(x + bias)` with `bias` broadcast over the last dimension, in one pass over memory.
///
/// # Shapes
/// `x`: `[.., H]`, `bias`: `[H]`; the output has the shape of `x`.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    if bias.dims() != [h] {
        candle_core::bail!(
            "bias_gelu: bias of shape {:?} does not match the last dimension {h} of x {:?}",
            bias.dims(),
            x.dims()
        );
    }
    if fast_path(x) && fast_path(bias) {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, Op(BiasGelu));
    }
    #[cfg(feature = "cuda")]
    if crate::kernels::cuda::applies(x) && crate::kernels::cuda::applies(bias) {
        return crate::kernels::cuda::bias_gelu(x, bias);
    }
    gelu_composed(&x.broadcast_add(bias)?)
}

/// The composed (device-generic, differentiable through candle) exact GELU.
fn gelu_composed(x: &Tensor) -> Result<Tensor> {
    let cdf = ((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5;
    x * cdf?
}

// The kernels write their outputs without reading them (`MaybeUninit::write`), so that the
// callers' buffers need not be zero-filled first; each writes as many values as its input has.

#[inline(always)]
fn gelu_kernel<const FMA: bool>(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(v * normal_cdf_f32::<FMA>(v));
    }
}

#[inline(always)]
fn gelu_grad_kernel<const FMA: bool>(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        let pdf = normal_pdf_f32::<FMA>(v);
        o.write(
            g * if FMA {
                v.mul_add(pdf, normal_cdf_f32::<FMA>(v))
            } else {
                normal_cdf_f32::<FMA>(v) + v * pdf
            },
        );
    }
}

#[inline(always)]
fn bias_gelu_kernel(x: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o_row, x_row) in out
        .chunks_exact_mut(bias.len())
        .zip(x.chunks_exact(bias.len()))
    {
        for ((o, &v), &b) in o_row.iter_mut().zip(x_row).zip(bias) {
            let u = v + b;
            o.write(u * normal_cdf_f32::<false>(u));
        }
    }
}

#[inline(always)]
fn bias_gelu_grad_kernel(x: &[f32], bias: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) {
    let h = bias.len();
    for ((o_row, x_row), g_row) in out
        .chunks_exact_mut(h)
        .zip(x.chunks_exact(h))
        .zip(grad.chunks_exact(h))
    {
        for (((o, &v), &b), &g) in o_row.iter_mut().zip(x_row).zip(bias).zip(g_row) {
            let u = v + b;
            o.write(g * (normal_cdf_f32::<false>(u) + u * normal_pdf_f32::<false>(u)));
        }
    }
}

multiversion!(fn gelu_simd(x: &[f32], out: &mut [MaybeUninit<f32>]) => gelu_kernel::<false>);
multiversion!(
    fn gelu_fused_simd(x: &[f32], out: &mut [MaybeUninit<f32>]) => gelu_kernel::<true>
);
multiversion!(
    fn gelu_grad_simd(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) =>
        gelu_grad_kernel::<false>
);
multiversion!(
    fn gelu_grad_fused_simd(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) =>
        gelu_grad_kernel::<true>
);

/// `out = gelu(x)`, with fused multiply-adds where `fused` ([`simd::fused_arithmetic`]); writes
/// the first `x.len()` values of `out` (at most its length) without reading them.
pub(crate) fn gelu_rows(x: &[f32], out: &mut [MaybeUninit<f32>], fused: bool) {
    if fused {
        gelu_fused_simd(x, out)
    } else {
        gelu_simd(x, out)
    }
}

/// `out = grad · gelu'(x)`, with fused multiply-adds where `fused`; writes as many values of
/// `out` as `x` and `grad` have, without reading them.
pub(crate) fn gelu_grad_rows(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>], fused: bool) {
    if fused {
        gelu_grad_fused_simd(x, grad, out)
    } else {
        gelu_grad_simd(x, grad, out)
    }
}
multiversion!(
    fn bias_gelu_simd(x: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) => bias_gelu_kernel
);
multiversion!(
    fn bias_gelu_grad_simd(x: &[f32], bias: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) =>
        bias_gelu_grad_kernel
);

struct GeluErf;

impl CpuKernel<1> for GeluErf {
    const NAME: &'static str = "mmcl-gelu-erf";

    fn forward(&self, [x]: [Input<'_>; 1]) -> Result<(Vec<f32>, Shape)> {
        let fused = simd::fused_arithmetic(matmul_precision());
        let data = x.data;
        // SAFETY: each chunk's kernel writes as many values as its input slice, of the
        // chunk's length.
        let out = unsafe {
            par_written(data.len(), CHUNK, |i, o| {
                gelu_rows(&data[i * CHUNK..][..o.len()], o, fused)
            })
        };
        Ok((out, x.shape().clone()))
    }

    fn backward(&self, [x]: [&Tensor; 1], _: &Tensor, grad: &Tensor) -> Gradients<1> {
        let fused = simd::fused_arithmetic(matmul_precision());
        // grad · gelu'(x)
        let grad = map_tensors([x, grad], "mmcl-gelu-erf-grad", CHUNK, |o, [x, g]| {
            // SAFETY: the kernel only stores initialised values.
            gelu_grad_rows(x, g, unsafe { as_uninit(o) }, fused)
        })?;
        Ok([Some(grad)])
    }
}

struct BiasGelu;

impl CpuKernel<2> for BiasGelu {
    const NAME: &'static str = "mmcl-bias-gelu";

    fn forward(&self, [x, bias]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let step = row_step(bias.data.len());
        let data = x.data;
        // SAFETY: the kernel writes whole rows, and each chunk is whole rows: `step` is a
        // multiple of the bias's length, which `bias_gelu` checked is the last dimension of `x`.
        let out = unsafe {
            par_written(data.len(), step, |i, o| {
                bias_gelu_simd(&data[i * step..][..o.len()], bias.data, o)
            })
        };
        Ok((out, x.shape().clone()))
    }

    fn backward(&self, [x, bias]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Gradients<2> {
        // grad · gelu'(x + bias)
        let grad_x = with_contiguous_f32(bias, |bias| {
            map_tensors(
                [x, grad],
                "mmcl-bias-gelu-grad",
                row_step(bias.len()),
                // SAFETY: the kernel only stores initialised values.
                |o, [x, g]| bias_gelu_grad_simd(x, bias, g, unsafe { as_uninit(o) }),
            )
        })?;
        let h = bias.elem_count();
        let grad_bias = bias_gradient(&grad_x, h)?;
        Ok([Some(grad_x), Some(grad_bias)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::*;
    use candle_core::DType;

    #[test]
    fn forward_matches_the_erf_definition() -> Result<()> {
        let x = rand_tensor(&[7, 333], 1, 6.0)?;
        let fast = gelu_erf(&x)?;
        let exact = gelu_composed(&x.to_dtype(DType::F64)?)?.to_dtype(DType::F32)?;
        assert!(rel_err(&fast, &exact)? < 1e-6);
        let b = rand_tensor(&[333], 2, 1.0)?;
        let fused = bias_gelu(&x, &b)?;
        let unfused = gelu_erf(&x.broadcast_add(&b)?)?;
        assert!(rel_err(&fused, &unfused)? < 1e-6);
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_of_the_composition_and_finite_differences() -> Result<()> {
        let x = rand_tensor(&[5, 40], 3, 4.0)?;
        let w = rand_tensor(&[5, 40], 4, 1.0)?;
        let coords = [0, 17, 55, 123, 199];
        assert_backward_matches((&x, &w), &gelu_erf, &gelu_composed, &coords, (1e-2, 2e-3))
    }

    #[test]
    fn fused_bias_backward_matches_autograd() -> Result<()> {
        let x = rand_tensor(&[6, 3, 24], 5, 3.0)?;
        let b = rand_tensor(&[24], 6, 1.0)?;
        let w = rand_tensor(&[6, 3, 24], 7, 1.0)?;
        let (xv, bv) = (
            candle_core::Var::from_tensor(&x)?,
            candle_core::Var::from_tensor(&b)?,
        );
        let loss = (bias_gelu(xv.as_tensor(), bv.as_tensor())? * &w)?.sum_all()?;
        let g = loss.backward()?;
        let (xr, br) = (
            candle_core::Var::from_tensor(&x)?,
            candle_core::Var::from_tensor(&b)?,
        );
        let loss_r =
            (gelu_composed(&xr.as_tensor().broadcast_add(br.as_tensor())?)? * &w)?.sum_all()?;
        let gr = loss_r.backward()?;
        let get = |g: &candle_core::backprop::GradStore, v: &candle_core::Var| {
            g.get(v.as_tensor()).cloned().expect("gradient")
        };
        assert!(rel_err(&get(&g, &xv), &get(&gr, &xr))? < 1e-5);
        assert!(rel_err(&get(&g, &bv), &get(&gr, &br))? < 1e-5);
        Ok(())
    }

    /// The fused-multiply-add kernels (bf16 passes) stay as close to the exact GELU and its
    /// derivative as the f32 ones, and differ from them somewhere (so that path does run).
    #[test]
    fn fused_kernels_stay_within_f32_accuracy() {
        let n = 4099;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 - 2049.0) * 0.004).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.3).collect();
        let cdf = |v: f64| 0.5 * (1.0 + erf_f64(v / std::f64::consts::SQRT_2));
        let pdf = |v: f64| (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mut differ = false;
        let mut exact = vec![0f32; n];
        for fused in [false, true] {
            let (mut y, mut dy) = (vec![0f32; n], vec![0f32; n]);
            // SAFETY: the kernels only store initialised values.
            unsafe {
                gelu_rows(&x, as_uninit(&mut y), fused);
                gelu_grad_rows(&x, &g, as_uninit(&mut dy), fused);
            }
            for i in 0..n {
                let v = x[i] as f64;
                let want = v * cdf(v);
                assert!(
                    (y[i] as f64 - want).abs() <= 2e-6 * want.abs() + 1e-9,
                    "{v}"
                );
                // Near x ≈ −0.75 the derivative's two terms cancel: bound by their size.
                let (gi, terms) = (g[i] as f64, cdf(v).abs() + (v * pdf(v)).abs());
                let want = gi * (cdf(v) + v * pdf(v));
                let bound = 2e-6 * gi.abs() * terms + 1e-9;
                assert!((dy[i] as f64 - want).abs() <= bound, "{v}");
            }
            if fused {
                differ = y
                    .iter()
                    .zip(&exact)
                    .any(|(a, b)| a.to_bits() != b.to_bits());
            } else {
                exact = y;
            }
        }
        let has_fma = simd::fused_arithmetic(crate::precision::Precision::Bf16);
        assert_eq!(
            differ, has_fma,
            "the fused kernels ran (FMA on this CPU: {has_fma})"
        );
    }

    /// erf in f64 (Abramowitz–Stegun 7.1.28 is too coarse; this sums the Maclaurin series for
    /// small arguments and the continued fraction of erfc beyond).
    fn erf_f64(z: f64) -> f64 {
        if z.abs() < 2.5 {
            let (mut term, mut sum, mut k) = (z, z, 0.0);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                k += 1.0;
                term *= -z * z / k;
                sum += term / (2.0 * k + 1.0);
            }
            return sum * 2.0 / std::f64::consts::PI.sqrt();
        }
        let a = z.abs();
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
        (1.0 - erfc).copysign(z)
    }

    #[test]
    fn non_contiguous_and_f64_inputs_work() -> Result<()> {
        let x = rand_tensor(&[8, 6], 8, 3.0)?;
        let t = x.t()?;
        let a = gelu_erf(&t)?;
        let b = gelu_erf(&t.contiguous()?)?;
        assert!(rel_err(&a, &b)? == 0.0);
        let d = gelu_erf(&x.to_dtype(DType::F64)?)?.to_dtype(DType::F32)?;
        assert!(rel_err(&d, &gelu_erf(&x)?)? < 1e-6);
        Ok(())
    }
}
