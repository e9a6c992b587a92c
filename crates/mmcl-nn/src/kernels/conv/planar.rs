//! The differentiable CPU convolution over channels-first tensors: patch matrices (`im2col`)
//! and their adjoint, and the forward and backward passes as matrix products.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Geometry, gemm_acc};
use crate::kernels::gemm::MatRef;
use crate::kernels::{contiguous_f32, with_contiguous_f32};
use crate::precision::{Precision, matmul_precision};

/// The CPU convolution as a candle operation with a backward pass. It works on candle's
/// channels-first tensors directly: per image, the weight `[C_out, C_in·k·k]` (PyTorch's layout
/// read as a matrix) multiplies the patch matrix `[C_in·k·k, H'·W']`, whose rows are shifted
/// (strided) copies of input rows; a 1×1 stride-1 convolution multiplies the image itself.
pub(super) struct Conv2dOp(pub(super) Geometry);

/// Sizes of one channels-first convolution.
#[derive(Debug, Clone, Copy)]
struct Planar {
    geometry: Geometry,
    /// The matrix-product precision of the thread that started the operation.
    precision: Precision,
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl Planar {
    fn new(x: &[usize], weight: &[usize], geometry: Geometry) -> Result<Self> {
        let (&[n, cin, h, w], &[cout, _, _, _]) = (x, weight) else {
            candle_core::bail!("conv2d: expected 4-d input and weight");
        };
        let (Some(ho), Some(wo)) = (geometry.output_size(h), geometry.output_size(w)) else {
            candle_core::bail!("conv2d: the input is smaller than the kernel");
        };
        Ok(Self {
            geometry,
            precision: matmul_precision(),
            n,
            cin,
            cout,
            h,
            w,
            ho,
            wo,
        })
    }

    /// Rows of the patch matrix, `C_in·k·k`.
    fn depth(&self) -> usize {
        self.cin * self.geometry.kernel * self.geometry.kernel
    }

    fn in_image(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }

    /// For kernel column `kx`: the output columns `ox0..ox1` that read inside the image.
    fn valid_columns(&self, kx: usize) -> (usize, usize) {
        let Geometry {
            stride: s,
            padding: p,
            ..
        } = self.geometry;
        // ox·s + kx − p ∈ [0, w)
        let limit = self.w + p;
        if limit <= kx {
            return (0, 0);
        }
        let ox0 = p.saturating_sub(kx).div_ceil(s);
        let ox1 = ((limit - kx - 1) / s + 1).min(self.wo);
        if ox0 >= ox1 { (0, 0) } else { (ox0, ox1) }
    }

    /// The patch matrix `[C_in·k·k, H'·W']` of one image (zeros over the padding).
    fn im2col(&self, image: &[f32], patches: &mut Vec<f32>) {
        let g = self.geometry;
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let (h, w, ho, wo) = (self.h, self.w, self.ho, self.wo);
        patches.clear();
        patches.resize(self.depth() * ho * wo, 0.0);
        for (row, dst) in patches.chunks_exact_mut(ho * wo).enumerate() {
            let (ci, ky, kx) = (row / (k * k), (row / k) % k, row % k);
            let plane = &image[ci * h * w..(ci + 1) * h * w];
            let (ox0, ox1) = self.valid_columns(kx);
            if ox0 == ox1 {
                continue;
            }
            for oy in 0..ho {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                    continue;
                };
                let src = &plane[iy * w..(iy + 1) * w];
                let out = &mut dst[oy * wo..(oy + 1) * wo];
                if s == 1 {
                    let start = ox0 + kx - p;
                    out[ox0..ox1].copy_from_slice(&src[start..start + (ox1 - ox0)]);
                } else {
                    for ox in ox0..ox1 {
                        out[ox] = src[ox * s + kx - p];
                    }
                }
            }
        }
    }

    /// Adds the patch-matrix gradient `[C_in·k·k, H'·W']` back onto one image's gradient
    /// (the adjoint of [`Self::im2col`]).
    fn col2im(&self, patches: &[f32], image: &mut [f32]) {
        let g = self.geometry;
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let (h, w, ho, wo) = (self.h, self.w, self.ho, self.wo);
        for (row, src) in patches.chunks_exact(ho * wo).enumerate() {
            let (ci, ky, kx) = (row / (k * k), (row / k) % k, row % k);
            let plane = &mut image[ci * h * w..(ci + 1) * h * w];
            let (ox0, ox1) = self.valid_columns(kx);
            if ox0 == ox1 {
                continue;
            }
            for oy in 0..ho {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                    continue;
                };
                let dst = &mut plane[iy * w..(iy + 1) * w];
                let grad = &src[oy * wo..(oy + 1) * wo];
                for ox in ox0..ox1 {
                    dst[ox * s + kx - p] += grad[ox];
                }
            }
        }
    }

    /// `Y = W·P` for every image, images in parallel.
    fn forward(&self, x: &[f32], weight: &[f32]) -> Result<Vec<f32>> {
        let (depth, pixels) = (self.depth(), self.out_pixels());
        let mut y = vec![0f32; self.n * self.cout * pixels];
        if y.is_empty() {
            return Ok(y);
        }
        let w = MatRef::rows(weight, self.cout, depth);
        y.par_chunks_mut(self.cout * pixels)
            .zip(x.par_chunks(self.in_image()))
            .try_for_each_init(Vec::new, |patches: &mut Vec<f32>, (y_img, x_img)| {
                let p = if self.geometry.is_pointwise() {
                    x_img
                } else {
                    self.im2col(x_img, patches);
                    patches
                };
                gemm_acc(y_img, w, MatRef::rows(p, depth, pixels), self.precision)
            })?;
        Ok(y)
    }

    /// `(dX, dW)`: per image `dW += dY·Pᵀ` and `dX = col2im(Wᵀ·dY)`; images split into one
    /// contiguous group per thread, each with its own `dW` partial sum.
    fn backward(&self, x: &[f32], weight: &[f32], dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (depth, pixels) = (self.depth(), self.out_pixels());
        let w_t = MatRef::rows(weight, self.cout, depth).t(); // [depth, C_out]
        let mut dx = vec![0f32; self.n * self.in_image()];
        let groups = rayon::current_num_threads().clamp(1, self.n.max(1));
        let per_group = self.n.div_ceil(groups).max(1);
        let dw = dx
            .par_chunks_mut((per_group * self.in_image()).max(1))
            .enumerate()
            .map(|(g, dx_group)| {
                let mut dw = vec![0f32; self.cout * depth];
                let (mut patches, mut dpatches) = (Vec::new(), Vec::new());
                for (i, dx_img) in dx_group.chunks_exact_mut(self.in_image()).enumerate() {
                    let img = g * per_group + i;
                    let x_img = &x[img * self.in_image()..(img + 1) * self.in_image()];
                    let dy_img = MatRef::rows(
                        &dy[img * self.cout * pixels..(img + 1) * self.cout * pixels],
                        self.cout,
                        pixels,
                    );
                    if self.geometry.is_pointwise() {
                        let x_t = MatRef::rows(x_img, self.cin, pixels).t();
                        gemm_acc(&mut dw, dy_img, x_t, self.precision)?;
                        gemm_acc(dx_img, w_t, dy_img, self.precision)?;
                        continue;
                    }
                    self.im2col(x_img, &mut patches);
                    let p_t = MatRef::rows(&patches, depth, pixels).t();
                    gemm_acc(&mut dw, dy_img, p_t, self.precision)?;
                    dpatches.clear();
                    dpatches.resize(depth * pixels, 0.0);
                    gemm_acc(&mut dpatches, w_t, dy_img, self.precision)?;
                    self.col2im(&dpatches, dx_img);
                }
                Ok::<_, candle_core::Error>(dw)
            })
            .try_reduce(
                || vec![0f32; self.cout * depth],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        *x += y;
                    }
                    Ok(a)
                },
            )?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let conv = Planar::new(l1.dims(), l2.dims(), self.0)?;
        let x = contiguous_f32(s1, l1, self.name())?;
        let y = conv.forward(x, contiguous_f32(s2, l2, self.name())?)?;
        let shape = Shape::from((conv.n, conv.cout, conv.ho, conv.wo));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let conv = Planar::new(x.dims(), weight.dims(), self.0)?;
        let (dx, dw) = with_contiguous_f32(x, |xs| {
            with_contiguous_f32(weight, |ws| {
                with_contiguous_f32(grad, |dy| conv.backward(xs, ws, dy))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ))
    }
}
