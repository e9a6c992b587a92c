//! Helpers for the gradient tests of the kernels (and of the layers built on them).

use candle_core::{D, Device, Result, Tensor, Var};

/// A deterministic pseudo-random tensor in [-scale, scale].
pub fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A deterministic tensor of standard normal values.
pub fn randn(seed: u64, shape: &[usize]) -> Result<Tensor> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Max |a-b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

/// Max |a-b| / max(1, max|b|).
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    let diff = (a - b)?
        .abs()?
        .flatten_all()?
        .max(D::Minus1)?
        .to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1.0))
}

/// Central finite differences of `f(x)·w` summed, in f64 accumulation, at a sample of
/// coordinates; returns (coordinate, numeric gradient) pairs.
fn finite_difference(
    x: &Tensor,
    w: &Tensor,
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    coords: &[usize],
    eps: f32,
) -> Result<Vec<(usize, f64)>> {
    let base = x.flatten_all()?.to_vec1::<f32>()?;
    let wv = w.flatten_all()?.to_vec1::<f32>()?;
    let loss = |v: &[f32]| -> Result<f64> {
        let t = Tensor::from_slice(v, x.dims(), x.device())?;
        let y = f(&t)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(y.iter().zip(&wv).map(|(&a, &b)| a as f64 * b as f64).sum())
    };
    let mut out = Vec::new();
    for &i in coords {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let h = (plus[i] - minus[i]) as f64;
        out.push((i, (loss(&plus)? - loss(&minus)?) / h));
    }
    Ok(out)
}

/// Asserts that `grad`, the gradient of `sum(f(x)·w)` with respect to `x`, is within `tol` of
/// central finite differences (step `eps`) at the coordinates `coords`.
pub fn assert_matches_finite_differences(
    grad: &Tensor,
    (x, w): (&Tensor, &Tensor),
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    coords: &[usize],
    (eps, tol): (f32, f64),
) -> Result<()> {
    let grad = grad.flatten_all()?.to_vec1::<f32>()?;
    for (i, numeric) in finite_difference(x, w, f, coords, eps)? {
        let analytic = grad[i] as f64;
        assert!(
            (analytic - numeric).abs() < tol,
            "{i}: {analytic} vs {numeric}"
        );
    }
    Ok(())
}

/// The gradient of `sum(f(x)·w)` with respect to `x`, by candle's autograd.
pub fn autograd(x: &Tensor, w: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let var = Var::from_tensor(x)?;
    let loss = (f(var.as_tensor())? * w)?.sum_all()?;
    let grads = loss.backward()?;
    grads
        .get(var.as_tensor())
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
}

/// Asserts that the gradient of `sum(fast(x)·w)` with respect to `x` agrees with that of
/// `composed` (relative error below 1e-5) and with central finite differences at `coords`
/// (step and tolerance `fd`, as [`assert_matches_finite_differences`]): the backward check of
/// a kernel against its composed form.
pub fn assert_backward_matches(
    (x, w): (&Tensor, &Tensor),
    fast: &dyn Fn(&Tensor) -> Result<Tensor>,
    composed: &dyn Fn(&Tensor) -> Result<Tensor>,
    coords: &[usize],
    fd: (f32, f64),
) -> Result<()> {
    let grad = autograd(x, w, fast)?;
    let err = rel_err(&grad, &autograd(x, w, composed)?)?;
    assert!(err < 1e-5, "{err}");
    assert_matches_finite_differences(&grad, (x, w), fast, coords, fd)
}

/// An output and the gradients of one path through a layer, as flat values.
pub type PathValues = (Vec<f32>, Vec<Vec<f32>>);

/// Asserts that two paths through a layer (fused and composed) give the same output and
/// gradients, each within `tol` of the larger of 1 and the second path's largest magnitude;
/// `what` names the case in a failure.
pub fn assert_paths_agree(a: &PathValues, b: &PathValues, tol: f32, what: &str) {
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * scale)
    };
    assert!(close(&a.0, &b.0), "{what}: output");
    for (i, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(close(ga, gb), "{what}: gradient {i}: {ga:?} vs {gb:?}");
    }
}
