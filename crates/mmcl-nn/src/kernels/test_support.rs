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

/// The bits of every value of `t` (any shape), for tests that demand the same bits.
pub fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
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

/// A deterministic pseudo-random matrix with a few exact zeros.
pub(crate) fn matrix(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..len)
        .map(|i| {
            if i % 13 == 0 {
                0.0
            } else {
                (rng.next_f64() as f32 - 0.5) * 4.0
            }
        })
        .collect()
}

/// How a test operand `[rows, cols]` is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout {
    /// Row-major.
    Rows,
    /// Column-major (a transposed view).
    Columns,
    /// Every other value of a row-major matrix twice as wide: no dimension is contiguous.
    Spread,
}

impl Layout {
    /// Every layout.
    pub(crate) const ALL: [Layout; 3] = [Layout::Rows, Layout::Columns, Layout::Spread];

    /// The strides `(row, column)` of a `[rows, cols]` operand.
    pub(crate) fn strides(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Layout::Rows => (cols, 1),
            Layout::Columns => (1, rows),
            Layout::Spread => (2 * cols, 2),
        }
    }
}

/// Checks one product engine: `run(product, parallelism)` must leave
/// `dst (+)= Σ_k round(lhs[m, k])·round(rhs[k, n])` in the destination (plus its start with
/// `accumulate`), within f32 summation error of the f64 sums, and must not touch the padding
/// after each destination row. Run with one task and with two; `label` names the engine in
/// failures.
pub(crate) fn check_product(
    label: &str,
    (m, n, k): (usize, usize, usize),
    (lhs_layout, rhs_layout): (Layout, Layout),
    accumulate: bool,
    round: fn(f32) -> f32,
    run: impl Fn(crate::kernels::gemm::RawProduct, gemm::Parallelism),
) {
    let a = matrix(2 * m * k, 1 + (m * n * k) as u64);
    let b = matrix(2 * k * n, 2 + (m + n + k) as u64);
    let a_strides = lhs_layout.strides(m, k);
    let b_strides = rhs_layout.strides(k, n);
    let at = |i: usize, p: usize| a[i * a_strides.0 + p * a_strides.1];
    let bt = |p: usize, j: usize| b[p * b_strides.0 + j * b_strides.1];
    let dst_rs = n + 3; // a padded destination, as the attention kernel writes
    let start = matrix(m * dst_rs, 3);
    let mut dst = start.clone();
    for parallelism in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
        dst.copy_from_slice(&start);
        // The views address a[..2·m·k] and b[..2·k·n]; dst holds m rows of dst_rs ≥ n.
        run(
            crate::kernels::gemm::RawProduct {
                dims: (m, n, k),
                dst: dst.as_mut_ptr(),
                dst_rs,
                lhs: a.as_ptr(),
                lhs_strides: a_strides,
                rhs: b.as_ptr(),
                rhs_strides: b_strides,
            },
            parallelism,
        );
        for i in 0..m {
            for j in 0..n {
                let mut exact = if accumulate {
                    start[i * dst_rs + j] as f64
                } else {
                    0.0
                };
                let mut scale = exact.abs();
                for p in 0..k {
                    let prod = round(at(i, p)) as f64 * round(bt(p, j)) as f64;
                    exact += prod;
                    scale += prod.abs();
                }
                let got = dst[i * dst_rs + j] as f64;
                assert!(
                    (got - exact).abs() <= 2e-6 * scale + 1e-30,
                    "{label} {m}x{n}x{k} {lhs_layout:?} {rhs_layout:?} acc {accumulate} \
                     {parallelism:?} at ({i}, {j}): {got} vs {exact}"
                );
            }
            // The padding after each row is left alone.
            for j in n..dst_rs {
                assert_eq!(dst[i * dst_rs + j], start[i * dst_rs + j]);
            }
        }
    }
}

/// The product `lhs[m, k]·rhs[k, n]` of two row-major operands into the row-major `dst`.
pub(crate) fn row_major_product(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
) -> crate::kernels::gemm::RawProduct {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    crate::kernels::gemm::RawProduct {
        dims: (m, n, k),
        dst: dst.as_mut_ptr(),
        dst_rs: n,
        lhs: lhs.as_ptr(),
        lhs_strides: (k, 1),
        rhs: rhs.as_ptr(),
        rhs_strides: (n, 1),
    }
}

/// Checks that an engine writes a new output without reading it (NaN left in a recycled
/// buffer does not leak into it) and applies the product's scale: `run(product, 0.5)` must
/// accept the row-major product of `dims` and leave `0.5 · Σ_k lhs·rhs` in it, within f32
/// summation error of the f64 sums.
pub(crate) fn check_fresh_output_scaled(
    dims: (usize, usize, usize),
    run: impl Fn(crate::kernels::gemm::RawProduct, f32) -> bool,
) {
    let (m, n, k) = dims;
    let (a, b) = (matrix(m * k, 4), matrix(k * n, 5));
    let mut dst = vec![f32::NAN; m * n];
    assert!(run(row_major_product(&mut dst, &a, &b, dims), 0.5));
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]));
            let exact: f64 = terms.clone().sum();
            let scale: f64 = terms.map(f64::abs).sum();
            let got = f64::from(dst[i * n + j]);
            assert!(
                (got - 0.5 * exact).abs() <= 2e-6 * scale + 1e-30,
                "{m}x{n}x{k} at ({i}, {j}): {got} vs {}",
                0.5 * exact
            );
        }
    }
}

/// [`check_product`] for every shape of `shapes`, every pair of `layouts` and with and without
/// accumulation, in f32: `run(product, parallelism, accumulate)` computes the product.
pub(crate) fn check_products(
    label: &str,
    shapes: &[(usize, usize, usize)],
    layouts: &[Layout],
    run: impl Fn(crate::kernels::gemm::RawProduct, gemm::Parallelism, bool),
) {
    for &dims in shapes {
        for &lhs in layouts {
            for &rhs in layouts {
                for accumulate in [false, true] {
                    check_product(
                        label,
                        dims,
                        (lhs, rhs),
                        accumulate,
                        |x| x,
                        |p, par| run(p, par, accumulate),
                    );
                }
            }
        }
    }
}
