//! Differentiable 2-D pooling.
//!
//! candle's `max_pool2d` has no padding and no backward pass when kernel ≠ stride, which is the
//! ResNet stem's case (3×3, stride 2, padding 1). [`max_pool2d`] provides both, with PyTorch's
//! semantics: padding never wins a window, the gradient of a window goes to its **first** largest
//! element in row-major scan order, and a NaN in a window propagates.
//!
//! On the CPU it is a custom operation (one pass forward, one scatter backward); on other devices
//! it is composed of differentiable tensor operations with the same values and gradients, so
//! nothing moves between devices.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::{Error, Result};

/// Geometry of a square-window 2-D pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dParams {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding on every side (never selected by a max-pool).
    pub padding: usize,
}

impl Pool2dParams {
    /// The output side for an input side, as PyTorch computes it (`ceil_mode=False`).
    pub fn output_size(&self, input: usize) -> usize {
        (input + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn check(&self, h: usize, w: usize) -> Result<()> {
        if self.kernel == 0 || self.stride == 0 {
            return Err(Error::InvalidArgument(
                "pooling kernel and stride must be positive".into(),
            ));
        }
        if 2 * self.padding > self.kernel {
            return Err(Error::InvalidArgument(format!(
                "pooling padding {} must be at most half the kernel {}",
                self.padding, self.kernel
            )));
        }
        if h + 2 * self.padding < self.kernel || w + 2 * self.padding < self.kernel {
            return Err(Error::InvalidArgument(format!(
                "a {}x{} input is smaller than the {k}x{k} pooling window",
                h,
                w,
                k = self.kernel
            )));
        }
        Ok(())
    }
}

/// Max-pooling over square windows, differentiable for any kernel, stride and padding.
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C, H', W']` with `H' = (H + 2·padding − kernel) / stride + 1`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let params = Pool2dParams {
        kernel,
        stride,
        padding,
    };
    let (_, _, h, w) = x.dims4()?;
    params.check(h, w)?;
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(MaxPool2d(params))?)
    } else {
        max_pool2d_composed(x, params)
    }
}

/// [`max_pool2d`] composed of differentiable tensor operations (runs on any device).
///
/// The windows' elements are gathered as `kernel²` strided views of the padded input; the
/// output selects, per window, the first view holding the window's maximum, so that the
/// gradient flows to that element only (PyTorch's rule). NaNs are not propagated here.
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C, H', W']`.
pub fn max_pool2d_composed(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    params.check(h, w)?;
    let Pool2dParams {
        kernel: k,
        stride: s,
        padding: p,
    } = params;
    let (ho, wo) = (params.output_size(h), params.output_size(w));
    // Pad with -inf so that padding never wins; the right side gets enough for every offset.
    let pad = |t: &Tensor, dim: usize, len: usize, out: usize| -> Result<Tensor> {
        let right = (k - 1 + s * out).saturating_sub(p + len);
        let mut parts = Vec::with_capacity(3);
        let mut shape = t.dims().to_vec();
        if p > 0 {
            shape[dim] = p;
            parts.push(neg_inf(&shape, t)?);
        }
        parts.push(t.clone());
        if right > 0 {
            shape[dim] = right;
            parts.push(neg_inf(&shape, t)?);
        }
        Ok(Tensor::cat(&parts, dim)?)
    };
    let xp = pad(&pad(x, 2, h, ho)?, 3, w, wo)?; // [N, C, Hp, Wp]
    let wp = xp.dim(3)?;
    let mut views = Vec::with_capacity(k * k);
    for ky in 0..k {
        // Rows ky, ky + s, ..., ky + s·(ho − 1).
        let rows = xp
            .narrow(2, ky, s * ho)?
            .reshape((n, c, ho, s, wp))?
            .narrow(3, 0, 1)?
            .squeeze(3)?; // [N, C, H', Wp]
        for kx in 0..k {
            let view = rows
                .narrow(3, kx, s * wo)?
                .reshape((n, c, ho, wo, s))?
                .narrow(4, 0, 1)?
                .squeeze(4)?; // [N, C, H', W']
            views.push(view);
        }
    }
    let maximum = Tensor::stack(&views, 4)?.max(4)?.detach(); // [N, C, H', W']
    let zeros = maximum.zeros_like()?;
    let mut taken = zeros.clone();
    let mut out = zeros.clone();
    for view in &views {
        let hit = view.detach().eq(&maximum)?.to_dtype(x.dtype())?;
        let first = (hit * (1.0 - &taken)?)?;
        taken = (&taken + &first)?;
        out = (out + first.to_dtype(DType::U8)?.where_cond(view, &zeros)?)?;
    }
    Ok(out)
}

fn neg_inf(shape: &[usize], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::full(f32::NEG_INFINITY, shape, like.device())?.to_dtype(like.dtype())?)
}

/// Average-pooling to a fixed output size, as `torch.nn.AdaptiveAvgPool2d`: output cell `i`
/// averages input rows `floor(i·H/H')` up to `ceil((i+1)·H/H')` (and likewise for columns).
///
/// Computed as two small matrix products, so it is differentiable on every device.
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C, H', W']` for `output = (H', W')`.
pub fn adaptive_avg_pool2d(x: &Tensor, output: (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ho, wo) = output;
    if ho == 0 || wo == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "adaptive average pooling from {h}x{w} to {ho}x{wo}"
        )));
    }
    let rows = adaptive_matrix(ho, h, x)?; // [H', H]
    let cols = adaptive_matrix(wo, w, x)?.t()?; // [W, W']
    let x = x.broadcast_matmul(&cols)?; // [N, C, H, W']
    Ok(rows.broadcast_matmul(&x)?) // [N, C, H', W']
}

/// The averaging matrix `[out, len]` of adaptive pooling along one axis.
fn adaptive_matrix(out: usize, len: usize, like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f32; out * len];
    for i in 0..out {
        let start = i * len / out;
        let end = ((i + 1) * len).div_ceil(out);
        let weight = 1.0 / (end - start) as f32;
        m[i * len + start..i * len + end].fill(weight);
    }
    Ok(Tensor::from_vec(m, (out, len), like.device())?.to_dtype(like.dtype())?)
}

/// Global average pooling, `torch.nn.AdaptiveAvgPool2d(1)` followed by flattening.
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(
            "global average pooling of an empty feature map".into(),
        ));
    }
    Ok(x.mean((2, 3))?) // [N, C]
}

/// The CPU max-pool forward, with its scatter backward.
struct MaxPool2d(Pool2dParams);

/// For each output element of one `[H, W]` plane, the input index of its window's first maximum
/// (NaN wins, as in PyTorch), written through `visit(output_index, input_index)`.
fn for_each_argmax<T: WithDType>(
    plane: &[T],
    (h, w): (usize, usize),
    params: Pool2dParams,
    mut visit: impl FnMut(usize, usize),
) {
    let Pool2dParams {
        kernel: k,
        stride: s,
        padding: p,
    } = params;
    let (ho, wo) = (params.output_size(h), params.output_size(w));
    for oy in 0..ho {
        let y0 = (oy * s).saturating_sub(p);
        let y1 = (oy * s + k - p).min(h);
        for ox in 0..wo {
            let x0 = (ox * s).saturating_sub(p);
            let x1 = (ox * s + k - p).min(w);
            let mut best = y0 * w + x0;
            let mut best_value = plane[best];
            // The first in-bounds element starts as the candidate; later ones replace it only
            // when strictly larger, or NaN (PyTorch's rule), so ties keep the first.
            for y in y0..y1 {
                for x in x0..x1 {
                    let v = plane[y * w + x];
                    #[allow(clippy::eq_op)] // `v != v` is the NaN test for any float type.
                    if v > best_value || v != v {
                        best_value = v;
                        best = y * w + x;
                    }
                }
            }
            visit(oy * wo + ox, best);
        }
    }
}

impl MaxPool2d {
    fn forward<T: WithDType>(&self, src: &[T], shape: &[usize]) -> Vec<T> {
        let (h, w) = (shape[2], shape[3]);
        let (ho, wo) = (self.0.output_size(h), self.0.output_size(w));
        let mut out = vec![T::zero(); shape[0] * shape[1] * ho * wo];
        out.par_chunks_mut(ho * wo)
            .zip(src.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                for_each_argmax(plane, (h, w), self.0, |o, i| dst[o] = plane[i]);
            });
        out
    }
}

/// Runs `f` on the contiguous CPU data of a float storage.
macro_rules! float_dispatch {
    ($storage:expr, $layout:expr, $name:expr, |$data:ident| $body:expr) => {{
        let offset = $layout.start_offset();
        let count = $layout.shape().elem_count();
        match $storage {
            CpuStorage::F32(d) => {
                let $data = &d[offset..offset + count];
                CpuStorage::F32($body)
            }
            CpuStorage::F64(d) => {
                let $data = &d[offset..offset + count];
                CpuStorage::F64($body)
            }
            CpuStorage::F16(d) => {
                let $data = &d[offset..offset + count];
                CpuStorage::F16($body)
            }
            CpuStorage::BF16(d) => {
                let $data = &d[offset..offset + count];
                CpuStorage::BF16($body)
            }
            other => candle_core::bail!("{}: unsupported dtype {:?}", $name, other.dtype()),
        }
    }};
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("max-pool2d: the input must be contiguous");
        }
        let (n, c, h, w) = layout.shape().dims4()?;
        let dims = [n, c, h, w];
        let out = float_dispatch!(storage, layout, self.name(), |data| self
            .forward(data, &dims));
        let shape = Shape::from((n, c, self.0.output_size(h), self.0.output_size(w)));
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2dBackward(self.0))?;
        Ok(Some(grad))
    }
}

/// Scatters each output gradient onto its window's first maximum.
struct MaxPool2dBackward(Pool2dParams);

impl MaxPool2dBackward {
    fn backward<T: WithDType>(&self, src: &[T], grad: &[T], shape: &[usize]) -> Vec<T> {
        let (h, w) = (shape[2], shape[3]);
        let (ho, wo) = (self.0.output_size(h), self.0.output_size(w));
        let mut out = vec![T::zero(); src.len()];
        out.par_chunks_mut(h * w)
            .zip(src.par_chunks(h * w))
            .zip(grad.par_chunks(ho * wo))
            .for_each(|((dst, plane), g)| {
                for_each_argmax(plane, (h, w), self.0, |o, i| dst[i] += g[o]);
            });
        out
    }
}

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("max-pool2d backward: inputs must be contiguous");
        }
        let dims = l1.shape().dims().to_vec();
        let (o2, n2) = (l2.start_offset(), l2.shape().elem_count());
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(self.backward(
                &x[l1.start_offset()..l1.start_offset() + l1.shape().elem_count()],
                &g[o2..o2 + n2],
                &dims,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(self.backward(
                &x[l1.start_offset()..l1.start_offset() + l1.shape().elem_count()],
                &g[o2..o2 + n2],
                &dims,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(g)) => CpuStorage::F16(self.backward(
                &x[l1.start_offset()..l1.start_offset() + l1.shape().elem_count()],
                &g[o2..o2 + n2],
                &dims,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(g)) => CpuStorage::BF16(self.backward(
                &x[l1.start_offset()..l1.start_offset() + l1.shape().elem_count()],
                &g[o2..o2 + n2],
                &dims,
            )),
            (a, b) => candle_core::bail!(
                "max-pool2d backward: unsupported dtypes {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
    }

    #[test]
    fn small_example_with_ties_and_padding() -> Result<()> {
        // One 4x4 plane with a tie (two 5s) in the first window.
        let x = Var::new(
            &[[[
                [5f32, 5., 1., 9.],
                [2., 3., 4., 0.],
                [1., 1., 1., 1.],
                [0., 8., 2., 2.],
            ]]],
            &Device::Cpu,
        )?;
        let y = max_pool2d(x.as_tensor(), 3, 2, 1)?;
        assert_eq!(flat(&y), vec![5., 9., 8., 8.]);
        let grads = y.sum_all()?.backward()?;
        let g = flat(grads.get(&x).expect("grad"));
        // The tie goes to the first 5; the 8 wins two windows.
        let mut expected = vec![0f32; 16];
        expected[0] = 1.0;
        expected[3] = 1.0;
        expected[13] = 2.0;
        assert_eq!(g, expected);
        let composed = max_pool2d_composed(
            x.as_tensor(),
            Pool2dParams {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        )?;
        assert_eq!(flat(&composed), flat(&y));
        let grads = composed.sum_all()?.backward()?;
        assert_eq!(flat(grads.get(&x).expect("grad")), expected);
        Ok(())
    }

    #[test]
    fn nan_propagates_on_cpu() -> Result<()> {
        let x = Tensor::new(&[[[[1f32, f32::NAN], [3., 2.]]]], &Device::Cpu)?;
        let y = max_pool2d(&x, 2, 2, 0)?;
        assert!(flat(&y)[0].is_nan());
        Ok(())
    }

    #[test]
    fn custom_and_composed_agree_in_value_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SplitMix64::new(5);
        for &(h, w, k, s, p) in &[
            (9, 7, 3, 2, 1),
            (8, 8, 2, 2, 0),
            (10, 6, 3, 1, 1),
            (7, 11, 5, 3, 2),
        ] {
            let data: Vec<f32> = (0..2 * 3 * h * w)
                .map(|_| (rng.next_f64() * 8.0).round() as f32) // many ties
                .collect();
            let x = Var::from_tensor(&Tensor::from_vec(data, (2, 3, h, w), &dev)?)?;
            let weights: Vec<f32> =
                (0..2 * 3 * ((h + 2 * p - k) / s + 1) * ((w + 2 * p - k) / s + 1))
                    .map(|_| rng.next_f64() as f32 - 0.5)
                    .collect();
            let params = Pool2dParams {
                kernel: k,
                stride: s,
                padding: p,
            };
            let a = max_pool2d(x.as_tensor(), k, s, p)?;
            let b = max_pool2d_composed(x.as_tensor(), params)?;
            assert_eq!(flat(&a), flat(&b), "values for {:?}", (h, w, k, s, p));
            let wt = Tensor::from_vec(weights, a.shape(), &dev)?;
            let ga = (&a * &wt)?.sum_all()?.backward()?;
            let gb = (&b * &wt)?.sum_all()?.backward()?;
            let (ga, gb) = (
                flat(ga.get(&x).expect("grad")),
                flat(gb.get(&x).expect("grad")),
            );
            for (u, v) in ga.iter().zip(&gb) {
                assert!((u - v).abs() < 1e-6, "gradients for {:?}", (h, w, k, s, p));
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        // Distinct values: the max is locally linear, so central differences are exact up to
        // rounding.
        let dev = Device::Cpu;
        let (h, w) = (7, 6);
        let n = 2 * h * w;
        let mut rng = crate::rng::SplitMix64::new(11);
        let mut data: Vec<f64> = (0..n).map(|i| i as f64 * 0.37).collect();
        for i in (1..n).rev() {
            data.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let weights: Vec<f64> = (0..2 * 4 * 3).map(|_| rng.next_f64() - 0.5).collect();
        let wt = Tensor::from_vec(weights, (1, 2, 4, 3), &dev)?;
        let loss = |d: &[f64]| -> Result<f64> {
            let x = Tensor::from_vec(d.to_vec(), (1, 2, h, w), &dev)?;
            Ok((max_pool2d(&x, 3, 2, 1)? * &wt)?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        let x = Var::from_tensor(&Tensor::from_vec(data.clone(), (1, 2, h, w), &dev)?)?;
        let grads = (max_pool2d(x.as_tensor(), 3, 2, 1)? * &wt)?
            .sum_all()?
            .backward()?;
        let analytic: Vec<f64> = grads.get(&x).expect("grad").flatten_all()?.to_vec1()?;
        let eps = 1e-3;
        for i in 0..n {
            let mut plus = data.clone();
            plus[i] += eps;
            let mut minus = data.clone();
            minus[i] -= eps;
            let numeric = (loss(&plus)? - loss(&minus)?) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 1e-9,
                "element {i}: {numeric} vs {}",
                analytic[i]
            );
        }
        Ok(())
    }

    #[test]
    fn adaptive_and_global_average_pooling() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 5.0 * 7.0, &dev)?.reshape((1, 2, 5, 7))?;
        let g = global_avg_pool2d(&x)?;
        assert_eq!(g.dims(), &[1, 2]);
        assert!((flat(&g)[0] - 17.0).abs() < 1e-5);
        let a = adaptive_avg_pool2d(&x, (1, 1))?;
        assert!((flat(&a)[1] - flat(&g)[1]).abs() < 1e-4);
        // 5 -> 3 rows: bins [0, 2), [1, 4), [3, 5); 7 -> 2 columns: [0, 4), [3, 7).
        let a = adaptive_avg_pool2d(&x, (3, 2))?;
        let v = flat(&a);
        let cell = |r0: usize, r1: usize, c0: usize, c1: usize| {
            let mut s = 0.0;
            for r in r0..r1 {
                for c in c0..c1 {
                    s += (r * 7 + c) as f32;
                }
            }
            s / ((r1 - r0) * (c1 - c0)) as f32
        };
        assert!((v[0] - cell(0, 2, 0, 4)).abs() < 1e-4);
        assert!((v[3] - cell(1, 4, 3, 7)).abs() < 1e-4);
        assert!((v[5] - cell(3, 5, 3, 7)).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).expect("zeros");
        assert!(max_pool2d(&x, 3, 2, 0).is_err());
        assert!(max_pool2d(&x, 3, 2, 2).is_err());
        assert!(max_pool2d(&x, 2, 0, 0).is_err());
    }
}
