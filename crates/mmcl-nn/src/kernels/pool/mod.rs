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
//!
//! The channels-last (`NHWC`) pools of the inference path ([`max_pool2d_nhwc`],
//! [`global_avg_pool_nhwc`]) work on the activations of [`crate::conv::PackedConv2d`].

mod max_pool_op;
mod nhwc;
#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};

use crate::{Error, Result};
use max_pool_op::MaxPool2d;
pub use nhwc::{global_avg_pool_nhwc, max_pool2d_nhwc, max_pool2d_nhwc_pooled};

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
        let op = MaxPool2d::new(params, (h, w), x.track_op());
        Ok(x.contiguous()?.apply_op1(op)?)
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
    let (k, s, p) = (params.kernel, params.stride, params.padding);
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
