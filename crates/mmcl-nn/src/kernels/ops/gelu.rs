//! Exact (erf) GELU, alone or fused with the bias add of the preceding linear layer.

use crate::kernels::bf16::Start;
use crate::kernels::finished::{FinishInto, product_new_finished};
use crate::kernels::gemm::{MatRef, gemm_parallelism, linear_forward, product_new};
use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::simd::{self, Arith, Formula, multiversion, normal_cdf_of, normal_pdf_of};
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

/// `gelu(v) = v·Φ(v)`.
pub(crate) struct Gelu<const FMA: bool>;

impl<const FMA: bool> Formula<1> for Gelu<FMA> {
    #[inline(always)]
    fn eval<T: Arith>(&self, [v]: [T; 1]) -> T {
        v.mul(normal_cdf_of::<T, FMA>(v))
    }
}

/// `g · gelu'(v) = g · (Φ(v) + v·φ(v))`, the sum fused where `FMA`.
pub(crate) struct GeluGrad<const FMA: bool>;

impl<const FMA: bool> Formula<2> for GeluGrad<FMA> {
    #[inline(always)]
    fn eval<T: Arith>(&self, [v, g]: [T; 2]) -> T {
        let pdf = normal_pdf_of::<T, FMA>(v);
        let cdf = normal_cdf_of::<T, FMA>(v);
        g.mul(if FMA {
            v.mul_add::<true>(pdf, cdf)
        } else {
            cdf.add(v.mul(pdf))
        })
    }
}

/// `gelu(v + b)`.
pub(crate) struct BiasGeluValue;

impl Formula<2> for BiasGeluValue {
    #[inline(always)]
    fn eval<T: Arith>(&self, [v, b]: [T; 2]) -> T {
        Gelu::<false>.eval([v.add(b)])
    }
}

/// `g · gelu'(v + b)`.
struct BiasGeluGrad;

impl Formula<3> for BiasGeluGrad {
    #[inline(always)]
    fn eval<T: Arith>(&self, [v, b, g]: [T; 3]) -> T {
        GeluGrad::<false>.eval([v.add(b), g])
    }
}

// The kernels write their outputs without reading them (`MaybeUninit::write`), so that the
// callers' buffers need not be zero-filled first; each writes as many values as its input has.

#[inline(always)]
fn gelu_kernel<const FMA: bool>(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(Gelu::<FMA>.eval([v]));
    }
}

#[inline(always)]
fn gelu_grad_kernel<const FMA: bool>(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
        o.write(GeluGrad::<FMA>.eval([v, g]));
    }
}

#[inline(always)]
fn bias_gelu_kernel(x: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    for (o_row, x_row) in out
        .chunks_exact_mut(bias.len())
        .zip(x.chunks_exact(bias.len()))
    {
        for ((o, &v), &b) in o_row.iter_mut().zip(x_row).zip(bias) {
            o.write(BiasGeluValue.eval([v, b]));
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
            o.write(BiasGeluGrad.eval([v, b, g]));
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
multiversion!(
    fn bias_gelu_simd(x: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) => bias_gelu_kernel
);
multiversion!(
    fn bias_gelu_grad_simd(x: &[f32], bias: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) =>
        bias_gelu_grad_kernel
);

/// `out = gelu(x)`, with fused multiply-adds where `fused` ([`simd::fused_arithmetic`]); writes
/// the first `x.len()` values of `out` (at most its length) without reading them.
pub(crate) fn gelu_rows(x: &[f32], out: &mut [MaybeUninit<f32>], fused: bool) {
    match fused {
        true if simd::side_by_side(out, [x], &Gelu::<true>) => {}
        false if simd::side_by_side(out, [x], &Gelu::<false>) => {}
        true => gelu_fused_simd(x, out),
        false => gelu_simd(x, out),
    }
}

/// `out = grad · gelu'(x)`, with fused multiply-adds where `fused`; writes as many values of
/// `out` as `x` and `grad` have, without reading them.
pub(crate) fn gelu_grad_rows(x: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>], fused: bool) {
    match fused {
        true if simd::side_by_side(out, [x, grad], &GeluGrad::<true>) => {}
        false if simd::side_by_side(out, [x, grad], &GeluGrad::<false>) => {}
        true => gelu_grad_fused_simd(x, grad, out),
        false => gelu_grad_simd(x, grad, out),
    }
}

/// `out = gelu(x + bias)` over whole rows of `bias.len()` values.
fn bias_gelu_rows(x: &[f32], bias: &[f32], out: &mut [MaybeUninit<f32>]) {
    let h = bias.len();
    // Every row or none: the path depends on the CPU alone.
    let done = (out.chunks_exact_mut(h).zip(x.chunks_exact(h)))
        .all(|(o, x)| simd::side_by_side(o, [x, bias], &BiasGeluValue));
    if !done {
        bias_gelu_simd(x, bias, out)
    }
}

/// `out = grad · gelu'(x + bias)` over whole rows of `bias.len()` values.
fn bias_gelu_grad_rows(x: &[f32], bias: &[f32], grad: &[f32], out: &mut [MaybeUninit<f32>]) {
    let h = bias.len();
    let done = (out.chunks_exact_mut(h).zip(x.chunks_exact(h)))
        .zip(grad.chunks_exact(h))
        .all(|((o, x), g)| simd::side_by_side(o, [x, bias, g], &BiasGeluGrad));
    if !done {
        bias_gelu_grad_simd(x, bias, grad, out)
    }
}

/// `gelu(x)` as a new vector, in parallel.
pub(crate) fn gelu_new(x: &[f32], fused: bool) -> Vec<f32> {
    // Written by the tasks that compute it, not zero-filled first (a zeroed allocation was a
    // pass over memory, a zero-fill per chunk 10 % of the GELU's time).
    // SAFETY: each chunk's kernel writes as many values as its input slice, of the chunk's
    // length.
    unsafe {
        par_written(x.len(), CHUNK, |i, o| {
            gelu_rows(&x[i * CHUNK..][..o.len()], o, fused)
        })
    }
}

/// `grad · gelu'(x)` as a new vector, in parallel (`grad` as long as `x`).
pub(crate) fn gelu_grad_new(x: &[f32], grad: &[f32], fused: bool) -> Vec<f32> {
    let len = x.len().min(grad.len());
    // SAFETY: as in `gelu_new`; each chunk's inputs are as long as the chunk.
    unsafe {
        par_written(len, CHUNK, |i, o| {
            let at = i * CHUNK..i * CHUNK + o.len();
            gelu_grad_rows(&x[at.clone()], &grad[at], o, fused)
        })
    }
}

/// `(fc1(x) if keep_pre, gelu(fc1(x)))` for the linear map `fc1(x) = x·wᵀ + bias` (`x`
/// `[M, K]`, `w` `[N, K]`, `bias` `[N]`; outputs `[M, N]`): where the AVX2 engine runs the
/// product, the GELU is taken in its tiles and `fc1(x)` is written only if kept; elsewhere a
/// product, then a pass. The same bits either way (the same formula on the same sums).
///
/// # Errors
/// When the slices do not hold the shapes (a bug in the calling kernel).
pub(crate) fn linear_gelu(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    (m, k, n): (usize, usize, usize),
    fused: bool,
    keep_pre: bool,
) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
    if x.len() != m * k || w.len() != n * k || bias.len() != n {
        candle_core::bail!(
            "internal error: a [{m}, {k}]·[{k}, {n}] linear map and GELU from {}, {} and {} values",
            x.len(),
            w.len(),
            bias.len()
        );
    }
    let mut kept = Vec::new();
    let (lhs, rhs) = (MatRef::rows(x, m, k), MatRef::rows(w, n, k).t());
    let finish = FinishInto::Gelu {
        pre: keep_pre.then_some(&mut kept),
        fused,
    };
    if let Some(act) = product_new_finished(lhs, rhs, Start::Bias(bias), finish)? {
        return Ok((keep_pre.then_some(kept), act));
    }
    let pre = linear_forward(x, w, Some(bias), (m, k, n))?;
    let act = gelu_new(&pre, fused);
    Ok((keep_pre.then_some(pre), act))
}

/// `(g·w) · gelu'(pre)` (`g` `[M, N]`, `w` `[N, K]`, `pre` `[M, K]`): the gradient before a
/// GELU from the gradient `g` after the linear map `w` that follows it, the derivative taken
/// in the product's tiles where the AVX2 engine runs it (as [`linear_gelu`]).
///
/// # Errors
/// When the slices do not hold the shapes (a bug in the calling kernel).
pub(crate) fn gelu_grad_after_linear(
    g: &[f32],
    w: &[f32],
    pre: &[f32],
    (m, k, n): (usize, usize, usize),
    fused: bool,
) -> Result<Vec<f32>> {
    if g.len() != m * n || w.len() != n * k || pre.len() != m * k {
        candle_core::bail!(
            "internal error: a GELU's gradient [{m}, {k}] through [{n}, {k}] from {}, {} and {} \
             values",
            g.len(),
            w.len(),
            pre.len()
        );
    }
    let (lhs, rhs) = (MatRef::rows(g, m, n), MatRef::rows(w, n, k));
    let finish = FinishInto::GeluGrad { pre, fused };
    if let Some(grad) = product_new_finished(lhs, rhs, Start::Zero, finish)? {
        return Ok(grad);
    }
    let d_act = product_new(
        lhs,
        rhs,
        Start::Zero,
        gemm_parallelism(),
        matmul_precision(),
    )?;
    Ok(gelu_grad_new(pre, &d_act, fused))
}

struct GeluErf;

impl CpuKernel<1> for GeluErf {
    const NAME: &'static str = "mmcl-gelu-erf";

    fn forward(&self, [x]: [Input<'_>; 1]) -> Result<(Vec<f32>, Shape)> {
        let fused = simd::fused_arithmetic(matmul_precision());
        Ok((gelu_new(x.data, fused), x.shape().clone()))
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
        Ok((bias_gelu_new(x.data, bias.data)?, x.shape().clone()))
    }

    fn backward(&self, [x, bias]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Gradients<2> {
        let (grad_x, grad_bias) = bias_gelu_backward(x, bias, grad)?;
        Ok([Some(grad_x), Some(grad_bias)])
    }
}

/// `gelu(x + bias)` over rows of `bias.len()` values as a new vector, in parallel.
///
/// # Errors
/// When `x` is not whole rows (a bug in the calling kernel).
pub(crate) fn bias_gelu_new(x: &[f32], bias: &[f32]) -> Result<Vec<f32>> {
    if !x.len().is_multiple_of(bias.len()) {
        candle_core::bail!(
            "internal error: {} values are not rows of {} for a bias and GELU",
            x.len(),
            bias.len()
        );
    }
    let step = row_step(bias.len());
    // SAFETY: the kernel writes whole rows, and each chunk is whole rows: `step` is a multiple
    // of the bias's length, and so is the length of `x` (checked).
    Ok(unsafe {
        par_written(x.len(), step, |i, o| {
            bias_gelu_rows(&x[i * step..][..o.len()], bias, o)
        })
    })
}

/// The gradients `(of x, of bias)` of `gelu(x + bias)` for the upstream gradient `grad`.
pub(crate) fn bias_gelu_backward(
    x: &Tensor,
    bias: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    // grad · gelu'(x + bias)
    let grad_x = with_contiguous_f32(bias, |bias| {
        map_tensors(
            [x, grad],
            "mmcl-bias-gelu-grad",
            row_step(bias.len()),
            // SAFETY: the kernel only stores initialised values.
            |o, [x, g]| bias_gelu_grad_rows(x, bias, g, unsafe { as_uninit(o) }),
        )
    })?;
    let h = bias.elem_count();
    let grad_bias = bias_gradient(&grad_x, h)?;
    Ok((grad_x, grad_bias))
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

    /// The row kernels as dispatched (the four-vector AVX2 path where the CPU takes it) give
    /// the bits of the scalar loops, for each kernel, with and without fused multiply-adds.
    #[test]
    fn dispatched_kernels_keep_the_bits_of_the_scalar_loops() {
        let h = 96;
        let rows = 7;
        let x: Vec<f32> = (0..h * rows + 5)
            .map(|i| (i as f32 - 340.0) * 0.023)
            .collect();
        let g: Vec<f32> = (0..x.len())
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.3)
            .collect();
        let bias: Vec<f32> = (0..h).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |f: &dyn Fn(&mut [MaybeUninit<f32>])| {
            let mut out = vec![MaybeUninit::new(f32::NAN); x.len()];
            f(&mut out);
            // SAFETY: each kernel wrote the values compared (the bias kernels whole rows).
            out.iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect::<Vec<_>>()
        };
        let whole = h * rows;
        for fused in [false, true] {
            let want = match fused {
                true => run(&|o| gelu_kernel::<true>(&x, o)),
                false => run(&|o| gelu_kernel::<false>(&x, o)),
            };
            assert_eq!(
                run(&|o| gelu_rows(&x, o, fused)),
                want,
                "gelu, fused {fused}"
            );
            let want = match fused {
                true => run(&|o| gelu_grad_kernel::<true>(&x, &g, o)),
                false => run(&|o| gelu_grad_kernel::<false>(&x, &g, o)),
            };
            let got = run(&|o| gelu_grad_rows(&x, &g, o, fused));
            assert_eq!(got, want, "gelu gradient, fused {fused}");
        }
        let (xr, gr) = (&x[..whole], &g[..whole]);
        let want = run(&|o| bias_gelu_kernel(xr, &bias, &mut o[..whole]));
        assert_eq!(run(&|o| bias_gelu_rows(xr, &bias, &mut o[..whole])), want);
        let want = run(&|o| bias_gelu_grad_kernel(xr, &bias, gr, &mut o[..whole]));
        let got = run(&|o| bias_gelu_grad_rows(xr, &bias, gr, &mut o[..whole]));
        assert_eq!(got, want, "bias gelu gradient");
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
