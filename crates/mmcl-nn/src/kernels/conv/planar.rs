//! The differentiable CPU convolution over channels-first tensors: patch matrices (`im2col`)
//! and their adjoint, and the forward and backward passes as matrix products.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use std::ops::Range;

use super::direct::{self, Direct3x3, Pass};
use super::weight_gradient::WeightGradient;
use super::winograd::{self, Winograd3x3};
use super::{Geometry, gemm_set};
use crate::kernels::gemm::{MatRef, sum_in_order};
use crate::kernels::op::{CpuKernel, Gradients, Input};
use crate::kernels::{simd, with_contiguous_f32};
use crate::precision::{Precision, matmul_precision};

/// The CPU convolution as a candle operation with a backward pass. It works on candle's
/// channels-first tensors directly: per block of images, the weight `[C_out, C_in·k·k]`
/// (PyTorch's layout read as a matrix) multiplies the block's patch matrix
/// `[C_in·k·k, n·H'·W']`, whose rows are shifted (strided) copies of input rows.
pub(super) struct Conv2dOp(pub(super) Geometry);

/// Output pixels per patch-matrix block. Late ResNet layers have a few pixels per image (2×2
/// at 48 px): one product per image would stream the whole weight for a handful of columns and
/// make `dW += dY·Pᵀ` a rank-4 update, so small images are laid side by side up to this width.
const BLOCK_COLUMNS: usize = 512;

/// Output rows from which a patch matrix is copied run by run rather than looked up value by
/// value in a tap table (see [`Planar::block_sources`]).
const RUN_COPY_MIN_WIDTH: usize = 12;

/// Sizes of one channels-first convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Planar {
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
    /// The convolution of an input `x` `[N, C_in, H, W]` with a `weight` `[C_out, C_in, k, k]`,
    /// in the calling thread's matrix-product precision.
    pub(super) fn new(x: &[usize], weight: &[usize], geometry: Geometry) -> Result<Self> {
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

    /// The output's dimensions `[N, C_out, H', W']`.
    pub(super) fn output_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
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

    /// Images per patch-matrix block when a group holds `images`: enough for about
    /// [`BLOCK_COLUMNS`] output pixels side by side, never more than the group.
    fn images_per_block(&self, images: usize) -> usize {
        (BLOCK_COLUMNS / self.out_pixels().max(1)).clamp(1, images.max(1))
    }

    /// Bands of output rows of one image, each about [`BLOCK_COLUMNS`] output pixels wide: a
    /// large image's patch matrix is built and multiplied one band at a time, so that it stays
    /// in cache between being written and being read (a 3×3 layer at 53² would otherwise write
    /// and re-read 6.5 MB per image).
    fn bands(&self) -> impl Iterator<Item = Range<usize>> {
        let rows = (BLOCK_COLUMNS / self.wo.max(1)).max(1);
        let ho = self.ho;
        (0..ho.div_ceil(rows)).map(move |b| b * rows..((b + 1) * rows).min(ho))
    }

    /// Writes output rows `band` of one image's patch matrix `[C_in·k·k, H'·W']` into columns
    /// `col0..col0 + band.len()·W'` of `patches`, a row-major matrix with `ld` columns, every
    /// entry of them (zeros over the padding).
    fn im2col(
        &self,
        image: &[f32],
        band: Range<usize>,
        patches: &mut [f32],
        ld: usize,
        col0: usize,
    ) {
        let g = self.geometry;
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let (h, w, wo) = (self.h, self.w, self.wo);
        let cols = band.len() * wo;
        if g.is_pointwise() {
            // Each row of the patch matrix is the band's rows of one channel, contiguous.
            let pixels = band.start * w..band.end * w;
            for (ci, plane) in image.chunks_exact(h * w).enumerate() {
                let dst = &mut patches[ci * ld + col0..ci * ld + col0 + cols];
                dst.copy_from_slice(&plane[pixels.clone()]);
            }
            return;
        }
        for row in 0..self.depth() {
            let dst = &mut patches[row * ld + col0..row * ld + col0 + cols];
            let (ci, ky, kx) = (row / (k * k), (row / k) % k, row % k);
            let plane = &image[ci * h * w..(ci + 1) * h * w];
            let (ox0, ox1) = self.valid_columns(kx);
            for (out, oy) in dst.chunks_exact_mut(wo).zip(band.clone()) {
                let iy = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h);
                let Some(iy) = iy.filter(|_| ox0 < ox1) else {
                    out.fill(0.0);
                    continue;
                };
                let src = &plane[iy * w..(iy + 1) * w];
                out[..ox0].fill(0.0);
                out[ox1..].fill(0.0);
                simd::gather_strided(&mut out[ox0..ox1], &src[ox0 * s + kx - p..], s);
            }
        }
    }

    /// Adds the patch-matrix gradient of output rows `band` (columns `col0..` of `patches`, a
    /// row-major matrix with `ld` columns) back onto one image's gradient (the adjoint of
    /// [`Self::im2col`]).
    fn col2im(
        &self,
        patches: &[f32],
        ld: usize,
        col0: usize,
        band: Range<usize>,
        image: &mut [f32],
    ) {
        let g = self.geometry;
        let (k, s, p) = (g.kernel, g.stride, g.padding);
        let (h, w, wo) = (self.h, self.w, self.wo);
        let cols = band.len() * wo;
        if g.is_pointwise() {
            // One addition per value, as below, a channel's rows at a time.
            let pixels = band.start * w..band.end * w;
            for (ci, plane) in image.chunks_exact_mut(h * w).enumerate() {
                let src = &patches[ci * ld + col0..ci * ld + col0 + cols];
                simd::add_rows(&mut plane[pixels.clone()], src);
            }
            return;
        }
        for row in 0..self.depth() {
            let src = &patches[row * ld + col0..row * ld + col0 + cols];
            let (ci, ky, kx) = (row / (k * k), (row / k) % k, row % k);
            let plane = &mut image[ci * h * w..(ci + 1) * h * w];
            let (ox0, ox1) = self.valid_columns(kx);
            if ox0 == ox1 {
                continue;
            }
            for (grad, oy) in src.chunks_exact(wo).zip(band.clone()) {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else {
                    continue;
                };
                let dst = &mut plane[iy * w..(iy + 1) * w];
                simd::scatter_add_strided(&mut dst[ox0 * s + kx - p..], &grad[ox0..ox1], s);
            }
        }
    }

    /// For each kernel tap `ky·k + kx` and output pixel `oy·W' + ox` of one image, the index
    /// in a channel plane of the input pixel it reads (`iy·W + ix`), or `usize::MAX` where it
    /// reads the padding: what [`Self::im2col`] works out run by run, as one table per shape.
    fn tap_sources(&self) -> Vec<usize> {
        let Geometry {
            kernel: k,
            stride: s,
            padding: p,
        } = self.geometry;
        let inside =
            |o: usize, tap: usize, side: usize| (o * s + tap).checked_sub(p).filter(|&i| i < side);
        let mut sources = Vec::with_capacity(k * k * self.out_pixels());
        for (ky, kx) in (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx))) {
            for (oy, ox) in (0..self.ho).flat_map(|oy| (0..self.wo).map(move |ox| (oy, ox))) {
                sources.push(match (inside(oy, ky, self.h), inside(ox, kx, self.w)) {
                    (Some(iy), Some(ix)) => iy * self.w + ix,
                    _ => usize::MAX,
                });
            }
        }
        sources
    }

    /// The [`Self::tap_sources`] that blocks of `per_block` images build their patch matrices
    /// from, or none (empty) where [`Self::im2col`]'s copies are faster: single images,
    /// pointwise convolutions (one copy per channel: 4–5× faster than the lookups on ResNet50's
    /// 14² and 7² maps) and stride-1 output rows of at least [`RUN_COPY_MIN_WIDTH`] pixels
    /// (15 % faster at 14², slower below 12; strided runs, copied value by value, are slower at
    /// any width).
    fn block_sources(&self, per_block: usize) -> Vec<usize> {
        let runs = self.geometry.is_pointwise()
            || (self.geometry.stride == 1 && self.wo >= RUN_COPY_MIN_WIDTH);
        if per_block > 1 && !runs {
            self.tap_sources()
        } else {
            Vec::new()
        }
    }

    /// Walks the rows of one image's patch matrix for [`Self::im2col_taps`] and its adjoint:
    /// `visit(ci, columns, sources)` per channel `ci` and kernel tap, in row order, with the
    /// row's columns `col0..col0 + H'·W'` in a row-major matrix of `ld` columns and the tap's
    /// [`Self::tap_sources`]. Nothing for an empty map.
    #[inline(always)]
    fn for_each_tap_row(
        &self,
        sources: &[usize],
        (ld, col0): (usize, usize),
        mut visit: impl FnMut(usize, Range<usize>, &[usize]),
    ) {
        let (pixels, taps) = (
            self.out_pixels(),
            self.geometry.kernel * self.geometry.kernel,
        );
        if pixels == 0 || self.h * self.w == 0 {
            return;
        }
        for ci in 0..self.cin {
            for (tap, sources) in sources.chunks_exact(pixels).enumerate() {
                let start = (ci * taps + tap) * ld + col0;
                visit(ci, start..start + pixels, sources);
            }
        }
    }

    /// [`Self::im2col`] of a whole image (into columns `col0..col0 + H'·W'` of `patches`, `ld`
    /// columns) through its [`Self::tap_sources`]: one lookup per entry. On small maps (a few
    /// output pixels per row, the late layers of a 48-px ResNet) this beats a copy per run of
    /// columns, whose set-up costs more than the two to twelve values it moves.
    fn im2col_taps(
        &self,
        image: &[f32],
        sources: &[usize],
        patches: &mut [f32],
        ld: usize,
        col0: usize,
    ) {
        let plane = self.h * self.w;
        self.for_each_tap_row(sources, (ld, col0), |ci, columns, sources| {
            let plane = &image[ci * plane..(ci + 1) * plane];
            for (d, &i) in patches[columns].iter_mut().zip(sources) {
                *d = plane.get(i).copied().unwrap_or(0.0);
            }
        });
    }

    /// The adjoint of [`Self::im2col_taps`]: adds columns `col0..col0 + H'·W'` of the patch
    /// gradient onto one image's gradient, in [`Self::col2im`]'s order (the same sums, bit for
    /// bit).
    fn col2im_taps(
        &self,
        patches: &[f32],
        ld: usize,
        col0: usize,
        sources: &[usize],
        image: &mut [f32],
    ) {
        let plane = self.h * self.w;
        self.for_each_tap_row(sources, (ld, col0), |ci, columns, sources| {
            let plane = &mut image[ci * plane..(ci + 1) * plane];
            for (&g, &i) in patches[columns].iter().zip(sources) {
                if let Some(d) = plane.get_mut(i) {
                    *d += g;
                }
            }
        });
    }

    /// The patch matrix of the `images` (consecutive, channels-first) side by side:
    /// `[C_in·k·k, n·H'·W']`, image `i` in columns `i·H'·W'..`, from the shape's
    /// [`Self::tap_sources`]; returns its columns.
    fn block_patches<'p>(
        &self,
        images: &[f32],
        sources: &[usize],
        patches: &'p mut Vec<f32>,
    ) -> (&'p [f32], usize) {
        let cols = images.len() / self.in_image() * self.out_pixels();
        let patches = grown(patches, self.depth() * cols);
        for (i, image) in images.chunks_exact(self.in_image()).enumerate() {
            let col0 = i * self.out_pixels();
            if sources.is_empty() {
                self.im2col(image, 0..self.ho, patches, cols, col0);
            } else {
                self.im2col_taps(image, sources, patches, cols, col0);
            }
        }
        (patches, cols)
    }

    /// `Y = W·P` of one image, `y` its `[C_out, H'·W']` output: the image itself is the patch
    /// matrix of a pointwise convolution; otherwise one product per band of output rows.
    fn forward_image(
        &self,
        image: &[f32],
        w: MatRef,
        y: &mut [f32],
        patches: &mut Vec<f32>,
    ) -> Result<()> {
        let (depth, pixels, wo) = (self.depth(), self.out_pixels(), self.wo);
        if self.geometry.is_pointwise() {
            return gemm_set(
                y,
                pixels,
                w,
                MatRef::rows(image, depth, pixels),
                self.precision,
            );
        }
        for band in self.bands() {
            let cols = band.len() * wo;
            let p = grown(patches, depth * cols);
            self.im2col(image, band.clone(), p, cols, 0);
            let p = MatRef::rows(p, depth, cols);
            gemm_set(&mut y[band.start * wo..], pixels, w, p, self.precision)?;
        }
        Ok(())
    }

    /// The direct kernel for `pass` of this convolution in `f32`, where it applies (see
    /// [`direct`]).
    fn direct(&self, pass: Pass, weight: &[f32]) -> Option<Direct3x3> {
        let applies = self.precision == Precision::F32
            && weight.len() == self.cout * self.depth()
            && direct::applies(self.geometry, (self.h, self.w));
        applies.then(|| Direct3x3::new(pass, weight, (self.cout, self.cin), (self.h, self.w)))
    }

    /// The Winograd kernel for `pass` of this convolution, where it applies (see [`winograd`])
    /// and the direct kernel does not.
    fn winograd(&self, pass: Pass, weight: &[f32]) -> Option<Winograd3x3> {
        let applies = weight.len() == self.cout * self.depth() && self.winograd_applies(pass);
        applies.then(|| Winograd3x3::new(pass, weight, (self.cout, self.cin), (self.h, self.w)))
    }

    /// Whether the Winograd kernel computes `pass` of this convolution (the weight gradient goes
    /// with the forward pass).
    fn winograd_applies(&self, pass: Pass) -> bool {
        let (channels, maps) = ((self.cout, self.cin), (self.h, self.w));
        winograd::applies(self.geometry, pass, channels, maps, self.precision)
            && !direct::applies(self.geometry, maps)
    }

    /// `Y = W·P` for blocks of images, blocks in parallel; images one by one through the direct
    /// kernel, or blocks of them through the Winograd kernel, where they apply.
    pub(super) fn forward(&self, x: &[f32], weight: &[f32]) -> Result<Vec<f32>> {
        let (depth, pixels, cout) = (self.depth(), self.out_pixels(), self.cout);
        if let Some(conv) = self.direct(Pass::Forward, weight) {
            return direct_images(&conv, x, self.n);
        }
        if let Some(conv) = self.winograd(Pass::Forward, weight) {
            return conv.images(x, self.n);
        }
        let mut y = crate::kernels::zeros(self.n * cout * pixels);
        if y.is_empty() || self.in_image() == 0 {
            // An empty input has no patches: its output (all padding) stays zero.
            return Ok(y);
        }
        let w = MatRef::rows(weight, cout, depth);
        let threads = rayon::current_num_threads().max(1);
        let per_block = self.images_per_block(self.n.div_ceil(threads));
        let sources = self.block_sources(per_block);
        y.par_chunks_mut(per_block * cout * pixels)
            .zip(x.par_chunks(per_block * self.in_image()))
            .try_for_each_init(
                || (Vec::new(), Vec::new()),
                |(patches, block_y): &mut (Vec<f32>, Vec<f32>), (y_blk, x_blk)| {
                    if y_blk.len() == cout * pixels {
                        return self.forward_image(x_blk, w, y_blk, patches);
                    }
                    let (p, cols) = self.block_patches(x_blk, &sources, patches);
                    let block_y = grown(block_y, cout * cols);
                    gemm_set(
                        block_y,
                        cols,
                        w,
                        MatRef::rows(p, depth, cols),
                        self.precision,
                    )?;
                    // [C_out, n·H'·W'] → n × [C_out, H'·W']
                    for (i, y_img) in y_blk.chunks_exact_mut(cout * pixels).enumerate() {
                        for (co, dst) in y_img.chunks_exact_mut(pixels).enumerate() {
                            let at = co * cols + i * pixels;
                            dst.copy_from_slice(&block_y[at..at + pixels]);
                        }
                    }
                    Ok(())
                },
            )?;
        Ok(y)
    }

    /// One image's `dW += dY·Pᵀ` and, when `dx` is given, `dX = col2im(Wᵀ·dY)`, band by band
    /// as in [`Self::forward_image`]; `dx` is the image's gradient, still zero.
    fn backward_image(
        &self,
        image: &[f32],
        (w_t, dy): (MatRef, &[f32]),
        (mut dx, dw): (Option<&mut [f32]>, &mut WeightGradient),
        (patches, dpatches): (&mut Vec<f32>, &mut Vec<f32>),
    ) -> Result<()> {
        let (depth, pixels, cout, wo) = (self.depth(), self.out_pixels(), self.cout, self.wo);
        if self.geometry.is_pointwise() {
            let dy = MatRef::rows(dy, cout, pixels);
            dw.add(dy, MatRef::rows(image, depth, pixels))?;
            return match dx {
                Some(dx) => gemm_set(dx, pixels, w_t, dy, self.precision),
                None => Ok(()),
            };
        }
        for band in self.bands() {
            let cols = band.len() * wo;
            let p = grown(patches, depth * cols);
            self.im2col(image, band.clone(), p, cols, 0);
            let dy_band = MatRef::strided(&dy[band.start * wo..], cout, cols, pixels);
            dw.add(dy_band, MatRef::rows(p, depth, cols))?;
            if let Some(dx) = dx.as_deref_mut() {
                let dp = grown(dpatches, depth * cols);
                gemm_set(dp, cols, w_t, dy_band, self.precision)?;
                self.col2im(dp, cols, 0, band, dx);
            }
        }
        Ok(())
    }

    /// `(dX, dW)`: per image or block of small images `dW += dY·Pᵀ` and `dX = col2im(Wᵀ·dY)`;
    /// images split into one contiguous group per thread, each with its own `dW` partial sum.
    /// Without `need_dx` (an input nothing upstream needs, such as the images of a first
    /// layer) `dX` is neither computed nor allocated: `None`.
    pub(super) fn backward(
        &self,
        x: &[f32],
        weight: &[f32],
        dy: &[f32],
        need_dx: bool,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let (depth, pixels, cout) = (self.depth(), self.out_pixels(), self.cout);
        let in_image = self.in_image();
        // The direct kernel writes the input gradient on its own, after the weight gradient.
        let direct_dx = if need_dx {
            self.direct(Pass::InputGradient, weight)
        } else {
            None
        };
        // So does the Winograd kernel.
        let winograd_dx = if need_dx && direct_dx.is_none() {
            self.winograd(Pass::InputGradient, weight)
        } else {
            None
        };
        let separate_dx = direct_dx.is_some() || winograd_dx.is_some();
        // Where both passes run by Winograd, no patch matrix is needed: the weight gradient
        // too, whether or not the input needs a gradient (so that its bits do not depend on it).
        let both =
            self.winograd_applies(Pass::Forward) && self.winograd_applies(Pass::InputGradient);
        if both && (!need_dx || winograd_dx.is_some()) {
            let channels = (self.cout, self.cin);
            let dw = winograd::weight_gradient(x, dy, self.n, channels, (self.h, self.w))?;
            let dx = match winograd_dx {
                Some(conv) => Some(conv.images(dy, self.n)?),
                None => None,
            };
            return Ok((dx, dw));
        }
        let need_dx = need_dx && !separate_dx;
        let mut dx = need_dx.then(|| crate::kernels::zeros(self.n * in_image));
        if self.n * in_image == 0 || pixels == 0 {
            let dx = dx.or_else(|| separate_dx.then(Vec::new));
            return Ok((dx, vec![0f32; cout * depth]));
        }
        let w_t = MatRef::rows(weight, cout, depth).t(); // [depth, C_out]
        let groups = rayon::current_num_threads().clamp(1, self.n.max(1));
        let per_group = self.n.div_ceil(groups).max(1);
        let per_block = self.images_per_block(per_group);
        let sources = self.block_sources(per_block);
        // One slot per group: its part of `dX`, when computed.
        let slots: Vec<Option<&mut [f32]>> = match dx.as_mut() {
            Some(dx) => dx.chunks_mut(per_group * in_image).map(Some).collect(),
            None => (0..self.n.div_ceil(per_group)).map(|_| None).collect(),
        };
        let partials = slots
            .into_par_iter()
            .enumerate()
            .map(|(g, mut dx_group)| {
                let mut dw = WeightGradient::new(cout, depth, self.precision);
                let (mut patches, mut dpatches, mut block_dy) =
                    (Vec::new(), Vec::new(), Vec::new());
                let group = g * per_group..((g + 1) * per_group).min(self.n);
                for first in group.clone().step_by(per_block) {
                    let images = per_block.min(group.end - first);
                    let x_blk = &x[first * in_image..(first + images) * in_image];
                    let dy_blk = &dy[first * cout * pixels..(first + images) * cout * pixels];
                    let at = (first - group.start) * in_image;
                    let dx_blk = dx_group
                        .as_deref_mut()
                        .map(|d| &mut d[at..at + images * in_image]);
                    if images == 1 {
                        let buffers = (&mut patches, &mut dpatches);
                        self.backward_image(x_blk, (w_t, dy_blk), (dx_blk, &mut dw), buffers)?;
                        continue;
                    }
                    let (p, cols) = self.block_patches(x_blk, &sources, &mut patches);
                    // n × [C_out, H'·W'] → [C_out, n·H'·W']
                    let block_dy = grown(&mut block_dy, cout * cols);
                    for (i, dy_img) in dy_blk.chunks_exact(cout * pixels).enumerate() {
                        for (co, src) in dy_img.chunks_exact(pixels).enumerate() {
                            let at = co * cols + i * pixels;
                            block_dy[at..at + pixels].copy_from_slice(src);
                        }
                    }
                    let dy_mat = MatRef::rows(block_dy, cout, cols);
                    dw.add(dy_mat, MatRef::rows(p, depth, cols))?;
                    if let Some(dx_blk) = dx_blk {
                        let dp = grown(&mut dpatches, depth * cols);
                        gemm_set(dp, cols, w_t, dy_mat, self.precision)?;
                        for (i, dx_img) in dx_blk.chunks_exact_mut(in_image).enumerate() {
                            if sources.is_empty() {
                                self.col2im(dp, cols, i * pixels, 0..self.ho, dx_img);
                            } else {
                                self.col2im_taps(dp, cols, i * pixels, &sources, dx_img);
                            }
                        }
                    }
                }
                Ok::<_, candle_core::Error>(dw.into_rows())
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(conv) = direct_dx {
            dx = Some(direct_images(&conv, dy, self.n)?);
        } else if let Some(conv) = winograd_dx {
            dx = Some(conv.images(dy, self.n)?);
        }
        // The groups' partial sums added in group order, not in the order rayon's reduction
        // happens to pair them: the same thread count gives the same bits on every run.
        Ok((dx, sum_in_order(partials, cout * depth)))
    }
}

/// The direct convolution of `n` images of `input`, images in parallel, each written whole.
///
/// # Errors
/// When `input` does not hold `n` images (a bug in the calling kernel).
fn direct_images(conv: &Direct3x3, input: &[f32], n: usize) -> Result<Vec<f32>> {
    let (in_image, out_image) = (conv.input_len(), conv.output_len());
    if input.len() != n * in_image {
        candle_core::bail!(
            "internal error: a direct convolution of {n} images of {in_image} values from {}",
            input.len()
        );
    }
    // SAFETY: `Direct3x3::image` writes every value of its output image; the `n` chunks of
    // one output image each cover the buffer.
    Ok(unsafe {
        crate::kernels::par_written(n * out_image, out_image, |i, out| {
            conv.image(&input[i * in_image..(i + 1) * in_image], out);
        })
    })
}

/// The first `len` values of a reusable buffer, grown (with zeros) if it is shorter; the
/// values are whatever the last use left, for callers that overwrite all of them.
pub(super) fn grown(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

impl CpuKernel<2> for Conv2dOp {
    const NAME: &'static str = "conv2d-gemm";

    fn forward(&self, [x, w]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let conv = Planar::new(x.dims(), w.dims(), self.0)?;
        let y = conv.forward(x.data, w.data)?;
        let shape = Shape::from((conv.n, conv.cout, conv.ho, conv.wo));
        Ok((y, shape))
    }

    fn backward(&self, [x, weight]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Gradients<2> {
        let conv = Planar::new(x.dims(), weight.dims(), self.0)?;
        let need_dx = x.track_op();
        let (dx, dw) = with_contiguous_f32(x, |xs| {
            with_contiguous_f32(weight, |ws| {
                with_contiguous_f32(grad, |dy| conv.backward(xs, ws, dy, need_dx))
            })
        })?;
        Ok([
            dx.map(|dx| Tensor::from_vec(dx, x.shape(), x.device()))
                .transpose()?,
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ])
    }
}
