//! Bilinear upsampling of feature maps, as the reference's localisation maps do it
//! (`F.interpolate(x, scale_factor=upsample_factor_img, mode="bilinear")`).

use candle_core::Tensor;

use crate::{Error, Result};

/// Resizes `x` by `scale_factor` with bilinear interpolation, exactly as PyTorch's
/// `F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)`: the output side is
/// `⌊side·s⌋`, and output pixel `o` reads the input at `(o + 0.5)/s − 0.5` (clamped at 0).
///
/// Computed as two small matrix products, so it is differentiable and runs on `x`'s device.
///
/// # Shapes
/// `x`: `[N, C, H, W]` → `[N, C, ⌊H·s⌋, ⌊W·s⌋]`.
pub fn upsample_bilinear2d(x: &Tensor, scale_factor: f64) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if !(scale_factor.is_finite() && scale_factor > 0.0) {
        return Err(Error::InvalidConfig(format!(
            "the upsampling factor must be positive and finite, got {scale_factor}"
        )));
    }
    let (ho, wo) = (
        (h as f64 * scale_factor).floor() as usize,
        (w as f64 * scale_factor).floor() as usize,
    );
    if ho == 0 || wo == 0 {
        return Err(Error::InvalidConfig(format!(
            "upsampling a {h}x{w} map by {scale_factor} leaves nothing"
        )));
    }
    let rows = interpolation_matrix(h, ho, scale_factor, x)?; // [H', H]
    let cols = interpolation_matrix(w, wo, scale_factor, x)?.t()?; // [W, W']
    let x = x.broadcast_matmul(&cols)?; // [N, C, H, W']
    Ok(rows.broadcast_matmul(&x)?) // [N, C, H', W']
}

/// Linear-interpolation weights `[out, len]` along one axis (PyTorch's `align_corners=False`
/// rule with a given scale factor).
fn interpolation_matrix(
    len: usize,
    out: usize,
    scale_factor: f64,
    like: &Tensor,
) -> Result<Tensor> {
    let mut m = vec![0f32; out * len];
    let step = 1.0 / scale_factor;
    for o in 0..out {
        let src = (step * (o as f64 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        let i1 = if i0 + 1 < len { i0 + 1 } else { i0 };
        let lambda1 = (src - i0 as f64).clamp(0.0, 1.0);
        m[o * len + i0] += (1.0 - lambda1) as f32;
        m[o * len + i1] += lambda1 as f32;
    }
    Ok(Tensor::from_vec(m, (out, len), like.device())?.to_dtype(like.dtype())?)
}
