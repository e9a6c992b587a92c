//! Pooling of channels-last (`NHWC`) activations, for the inference path of
//! [`PackedConv2d`](crate::conv::PackedConv2d).

use rayon::prelude::*;

use crate::kernels::nhwc::{BufferPool, NhwcTensor};
use crate::{Error, Result};

/// Max-pooling over square windows of channels-last activations (padding never wins; NaN
/// propagates).
///
/// # Shapes
/// `[N, H, W, C]` → `[N, H', W', C]`.
pub fn max_pool2d_nhwc(
    x: &NhwcTensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<NhwcTensor> {
    max_pool2d_nhwc_pooled(x, kernel, stride, padding, &BufferPool::new())
}

/// [`max_pool2d_nhwc`] with the output buffer taken from `pool`.
///
/// # Shapes
/// `[N, H, W, C]` → `[N, H', W', C]`.
pub fn max_pool2d_nhwc_pooled(
    x: &NhwcTensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    pool: &BufferPool,
) -> Result<NhwcTensor> {
    if kernel == 0 || stride == 0 || 2 * padding > kernel || x.h + 2 * padding < kernel {
        return Err(Error::InvalidArgument(format!(
            "max-pool {kernel}x{kernel} stride {stride} padding {padding} over {}x{}",
            x.h, x.w
        )));
    }
    let ho = (x.h + 2 * padding - kernel) / stride + 1;
    let wo = (x.w + 2 * padding - kernel) / stride + 1;
    let c = x.c;
    let mut out = pool.take(x.n * ho * wo * c);
    out.par_chunks_mut(wo * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, oy) = (row / ho, row % ho);
            let image = &x.data[img * x.h * x.w * c..(img + 1) * x.h * x.w * c];
            let y0 = (oy * stride).saturating_sub(padding);
            let y1 = (oy * stride + kernel - padding).min(x.h);
            for ox in 0..wo {
                let x0 = (ox * stride).saturating_sub(padding);
                let x1 = (ox * stride + kernel - padding).min(x.w);
                let d = &mut dst[ox * c..(ox + 1) * c];
                d.fill(f32::NEG_INFINITY);
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let s = &image[(iy * x.w + ix) * c..(iy * x.w + ix + 1) * c];
                        for (d, &v) in d.iter_mut().zip(s) {
                            // Selects rather than branches, so that the loop vectorises.
                            let larger = if v > *d { v } else { *d };
                            *d = if v.is_nan() { v } else { larger };
                        }
                    }
                }
            }
        });
    Ok(NhwcTensor {
        data: out,
        n: x.n,
        h: ho,
        w: wo,
        c,
    })
}

/// The mean over all pixels of each image and channel.
///
/// # Shapes
/// `[N, H, W, C]` → `[N, C]` (row-major).
pub fn global_avg_pool_nhwc(x: &NhwcTensor) -> Vec<f32> {
    let c = x.c;
    let per_image = x.h * x.w;
    let mut out = vec![0f32; x.n * c];
    out.par_chunks_mut(c).enumerate().for_each(|(img, dst)| {
        // Sum in f64: a map can hold thousands of pixels.
        let mut acc = vec![0f64; c];
        for px in x.data[img * per_image * c..(img + 1) * per_image * c].chunks_exact(c) {
            for (a, &v) in acc.iter_mut().zip(px) {
                *a += v as f64;
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = (a / per_image as f64) as f32;
        }
    });
    out
}
