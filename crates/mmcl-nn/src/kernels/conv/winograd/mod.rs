//! Winograd's minimal filtering F(2×2, 3×3) for the 3×3 stride-1 convolutions of the training
//! convolution on mid-sized maps with many channels (ResNet50's layer3 at 210 px: 256 channels
//! at 14²), all three passes.
//!
//! A 2×2 block of output pixels needs 36 multiply-adds per input and output channel directly and
//! 16 here: each 4×4 input tile `d` and each 3×3 kernel `g` are transformed (`V = Bᵀ·d·B`,
//! `U = G·g·Gᵀ`), the 16 positions of the transformed tiles multiply as 16 independent matrix
//! products over the channels, `M[ξ] = U[ξ]·V[ξ]` (`[C_out, C_in]·[C_in, tiles]`), and each
//! output block is `Aᵀ·M·A`. The products dominate; the transforms are additions (and halves of
//! the kernel, computed once per call in `f64`). The same convolution with the kernel
//! transposed and flipped is the input gradient; the weight gradient is the adjoint,
//! `Gᵀ·(Σ_tiles A·dy·Aᵀ ⊙ V)·G`, again 16 products.
//!
//! Hand-written because no kept Rust crate offers it, and the products go through the kernels'
//! one GEMM entry point (so the census counts them). The results differ from the direct sum by
//! rounding only (the transforms' constants are 0, ±1 and ½): the tests hold them to a few
//! units of `f32` rounding of the sum of `|w·x|`. On a Zen 4, layer3's 3×3 convolution at batch
//! 16 ran 1.6× faster forward and 1.57× forward and backward than the patch-matrix products
//! (CPU time; `kernels -- conv_3x3_layer3`), ahead of PyTorch's oneDNN (about 1.3×).

use candle_core::Result;
use rayon::prelude::*;

mod tiles;

use tiles::{PlaneTiles, gradient_tiles, input_tiles, output_tiles};

use super::direct::{Pass, TAPS};
use super::planar::grown;
use super::{Geometry, gemm_acc, gemm_set};
use crate::kernels::gemm::{MatRef, sum_in_order};
use crate::precision::Precision;

/// Positions of a transformed 4×4 tile.
const POSITIONS: usize = 16;
/// Tiles per block of images whose transforms and products run together: enough columns for
/// the products to run near the GEMM's peak, few enough for the block's transformed input and
/// output (`16 · channels · tiles` values each) to stay in the last-level cache.
const BLOCK_TILES: usize = 256;
/// The least share of the tiles' output pixels that must lie on the map: a 7×7 map fills 49
/// of its 64 (the products then do 1.72× fewer multiply-adds than directly, not 2.25×) and ran
/// slower than the patch-matrix product on a Zen 4 (19.8 against 19.4 ms for layer4's forward
/// pass at batch 16); 14×14 fills all of them, 13×13 86 %.
const MIN_FILL: f64 = 0.85;
/// The smallest map side that runs here. Measured on 14² maps only; the small maps of the 48-px
/// ResNet18 of the reproduction and the 64-px parity models (2² to 6², whose single tiles fill
/// them) keep the patch-matrix kernels and their results.
const MIN_SIDE: usize = 8;
/// The fewest channels entering a pass that run here (the products' depth): measured faster at
/// 256 (ResNet50's layer3), not measured below, where shallower products run further from the
/// GEMM's peak while the transforms cost the same per channel.
const MIN_CHANNELS: usize = 256;

/// Whether `MMCL_WINOGRAD` is not `0`; read once.
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| !std::env::var("MMCL_WINOGRAD").is_ok_and(|v| v.trim() == "0"))
}

/// Whether `pass` of a convolution of `geometry` from `cin` to `cout` channels over `[H, W]`
/// maps in `precision` runs here: 3×3, stride 1, padding 1, `f32`, sides of at least
/// [`MIN_SIDE`], tiles at least [`MIN_FILL`] full, at least [`MIN_CHANNELS`] channels entering
/// the pass.
pub(super) fn applies(
    geometry: Geometry,
    pass: Pass,
    (cout, cin): (usize, usize),
    (h, w): (usize, usize),
    precision: Precision,
) -> bool {
    let (entering, _) = pass.planes((cout, cin));
    geometry
        == (Geometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        })
        && precision == Precision::F32
        && h.min(w) >= MIN_SIDE
        && (h * w) as f64 >= MIN_FILL * (4 * h.div_ceil(2) * w.div_ceil(2)) as f64
        && entering >= MIN_CHANNELS
        && enabled()
}

/// A 3×3 stride-1 padding-1 convolution from `cin` to `cout` planes of `[H, W]` by F(2×2, 3×3),
/// its kernel transformed.
pub(super) struct Winograd3x3 {
    /// `U`: `[cout][16][cin]`, so that each output channel's values are transformed together.
    kernel: Vec<f32>,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

impl Winograd3x3 {
    /// The convolution that computes `pass` of a layer with weight `[cout, cin, 3, 3]`
    /// (PyTorch's layout) over `[H, W]` planes.
    pub(super) fn new(
        pass: Pass,
        weight: &[f32],
        (cout, cin): (usize, usize),
        (h, w): (usize, usize),
    ) -> Self {
        let (from, to) = pass.planes((cout, cin));
        Self::transformed_with(from, to, (h, w), pass.taps(weight, cin))
    }

    /// The convolution from `cin` to `cout` planes whose tap `tap` from input `i` to output `o`
    /// is `weight(o, i, tap)`: `U = G·g·Gᵀ` per pair of channels, in `f64`, output channels in
    /// parallel (a serial transform of ResNet50's 512-channel kernels was 2 % of its step).
    fn transformed_with(
        cin: usize,
        cout: usize,
        (h, w): (usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32 + Sync,
    ) -> Self {
        // G·v for a column of three taps: (v0, (v0 + v1 + v2)/2, (v0 − v1 + v2)/2, v2).
        let g = |v: [f64; 3]| {
            [
                v[0],
                0.5 * (v[0] + v[1] + v[2]),
                0.5 * (v[0] - v[1] + v[2]),
                v[2],
            ]
        };
        let mut kernel = vec![0f32; cout * POSITIONS * cin];
        kernel
            .par_chunks_mut(POSITIONS * cin.max(1))
            .enumerate()
            .for_each(|(o, positions)| {
                for i in 0..cin {
                    let tap = |ky: usize, kx: usize| f64::from(weight(o, i, ky * 3 + kx));
                    // G·g: the kernel's columns transformed, [3][4].
                    let columns: [[f64; 4]; 3] =
                        std::array::from_fn(|kx| g([tap(0, kx), tap(1, kx), tap(2, kx)]));
                    for a in 0..4 {
                        let row = g([columns[0][a], columns[1][a], columns[2][a]]);
                        for (b, &value) in row.iter().enumerate() {
                            positions[(a * 4 + b) * cin + i] = value as f32;
                        }
                    }
                }
            });
        Self {
            kernel,
            cin,
            cout,
            h,
            w,
        }
    }

    /// Values in one input image.
    fn input_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Values in one output image.
    fn output_len(&self) -> usize {
        self.cout * self.h * self.w
    }

    /// Tiles of 2×2 output pixels per image: rows and columns.
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }

    /// The tiles of one plane.
    fn plane_tiles(&self) -> PlaneTiles {
        let (th, tw) = self.tiles();
        PlaneTiles {
            h: self.h,
            w: self.w,
            th,
            tw,
        }
    }

    /// The convolution of `n` images of `input` (`[n, cin, H, W]`), blocks of images in
    /// parallel: `[n, cout, H, W]`.
    ///
    /// # Errors
    /// When `input` does not hold `n` images (a bug in the calling kernel), or a product fails.
    pub(super) fn images(&self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let (in_image, out_image) = (self.input_len(), self.output_len());
        if input.len() != n * in_image {
            candle_core::bail!(
                "internal error: a Winograd convolution of {n} images of {in_image} values from {}",
                input.len()
            );
        }
        let mut output = crate::kernels::zeros(n * out_image);
        if output.is_empty() || in_image == 0 {
            return Ok(output);
        }
        let per_block = self.images_per_block(n, rayon::current_num_threads().max(1));
        output
            .par_chunks_mut(per_block * out_image)
            .zip(input.par_chunks(per_block * in_image))
            .try_for_each_init(
                || (Vec::new(), Vec::new(), Vec::new()),
                |(tiles_in, tiles_out, rows), (out_blk, in_blk)| {
                    self.block(in_blk, out_blk, (tiles_in, tiles_out, rows))
                },
            )?;
        Ok(output)
    }

    /// Images per block for `n` images on `threads` threads: about [`BLOCK_TILES`] tiles, and a
    /// number of blocks that the threads share evenly.
    fn images_per_block(&self, n: usize, threads: usize) -> usize {
        let (th, tw) = self.tiles();
        let target = (BLOCK_TILES / (th * tw).max(1)).max(1);
        let blocks = n.div_ceil(target).next_multiple_of(threads).min(n.max(1));
        n.div_ceil(blocks.max(1)).max(1)
    }

    /// One block of images: transform every input tile, multiply position by position,
    /// transform back. `tiles_in` `[16][cin][tiles]`, `tiles_out` `[16][cout][tiles]` and
    /// `scratch` (the transforms' phase planes and rows) are reused from block to block.
    fn block(
        &self,
        input: &[f32],
        output: &mut [f32],
        (tiles_in, tiles_out, scratch): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    ) -> Result<()> {
        let (th, tw) = self.tiles();
        let images = input.len() / self.input_len();
        let tiles = images * th * tw;
        let (cin, cout) = (self.cin, self.cout);
        let plane = self.plane_tiles();
        let scratch = grown(scratch, plane.scratch());
        let v = grown(tiles_in, POSITIONS * cin * tiles);
        for (image, x) in input.chunks_exact(self.input_len()).enumerate() {
            for (c, x) in x.chunks_exact(self.h * self.w).enumerate() {
                let start = c * tiles + image * plane.count();
                input_tiles(x, plane, &mut v[start..], cin * tiles, scratch);
            }
        }
        let m = grown(tiles_out, POSITIONS * cout * tiles);
        for (xi, m_xi) in m.chunks_exact_mut(cout * tiles).enumerate() {
            let u = MatRef::strided(&self.kernel[xi * cin..], cout, cin, POSITIONS * cin);
            let v = MatRef::rows(&v[xi * cin * tiles..], cin, tiles);
            gemm_set(m_xi, tiles, u, v, Precision::F32)?;
        }
        for (image, y) in output.chunks_exact_mut(self.output_len()).enumerate() {
            for (c, y) in y.chunks_exact_mut(self.h * self.w).enumerate() {
                let start = c * tiles + image * plane.count();
                output_tiles(&m[start..], cout * tiles, plane, y, scratch);
            }
        }
        Ok(())
    }
}

/// The weight gradient `dW` `[cout, cin, 3, 3]` of a 3×3 stride-1 padding-1 convolution from
/// `cin` to `cout` planes of `[H, W]`, from `n` images of its input `x` and output gradient
/// `dy`, by F(2×2, 3×3): `dU[ξ] = Σ_tiles Ŷ[ξ]·V[ξ]ᵀ` with `Ŷ = A·dy·Aᵀ` per tile (the adjoint
/// of the forward pass's `Aᵀ·M·A`), then `dW = Gᵀ·dU·G`. Images split into one contiguous group
/// per thread, each with its own `dU`, added in group order (the same thread count gives the
/// same bits).
///
/// # Errors
/// When `x` or `dy` does not hold `n` images (a bug in the calling kernel), or a product fails.
pub(super) fn weight_gradient(
    x: &[f32],
    dy: &[f32],
    n: usize,
    (cout, cin): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Vec<f32>> {
    // The layer's shape and tiles; the weight gradient needs no transformed kernel.
    let layer = Winograd3x3 {
        kernel: Vec::new(),
        cin,
        cout,
        h,
        w,
    };
    let (in_image, out_image) = (layer.input_len(), layer.output_len());
    if x.len() != n * in_image || dy.len() != n * out_image {
        candle_core::bail!(
            "internal error: a Winograd weight gradient of {n} images from {} and {} values",
            x.len(),
            dy.len()
        );
    }
    let len = POSITIONS * cout * cin;
    if [n, h, w, cin, cout].contains(&0) {
        return Ok(vec![0f32; cout * cin * TAPS]);
    }
    let groups = rayon::current_num_threads().clamp(1, n);
    let per_group = n.div_ceil(groups);
    let per_block = layer.images_per_block(per_group, 1);
    let plane = layer.plane_tiles();
    let partials = (0..n.div_ceil(per_group))
        .into_par_iter()
        .map(|g| {
            let mut sum = vec![0f32; len];
            let mut scratch = vec![0f32; plane.scratch()];
            let (mut tiles_in, mut tiles_dy) = (Vec::new(), Vec::new());
            let group = g * per_group..((g + 1) * per_group).min(n);
            for first in group.clone().step_by(per_block) {
                let images = per_block.min(group.end - first);
                let tiles = images * plane.count();
                let x_blk = &x[first * in_image..(first + images) * in_image];
                let dy_blk = &dy[first * out_image..(first + images) * out_image];
                let v = grown(&mut tiles_in, POSITIONS * cin * tiles);
                let y = grown(&mut tiles_dy, POSITIONS * cout * tiles);
                for image in 0..images {
                    let at = image * plane.count();
                    let planes =
                        x_blk[image * in_image..(image + 1) * in_image].chunks_exact(h * w);
                    for (c, x) in planes.enumerate() {
                        let start = c * tiles + at;
                        input_tiles(x, plane, &mut v[start..], cin * tiles, &mut scratch);
                    }
                    let planes =
                        dy_blk[image * out_image..(image + 1) * out_image].chunks_exact(h * w);
                    for (c, dy) in planes.enumerate() {
                        let start = c * tiles + at;
                        gradient_tiles(dy, plane, &mut y[start..], cout * tiles, &mut scratch);
                    }
                }
                for (xi, du) in sum.chunks_exact_mut(cout * cin).enumerate() {
                    let y = MatRef::rows(&y[xi * cout * tiles..], cout, tiles);
                    let v = MatRef::rows(&v[xi * cin * tiles..], cin, tiles);
                    gemm_acc(du, y, v.t(), Precision::F32)?;
                }
            }
            Ok::<_, candle_core::Error>(sum)
        })
        .collect::<Result<Vec<_>>>()?;
    let du = sum_in_order(partials, len);
    // dW = Gᵀ·dU·G per pair of channels, in f64: Gᵀ·u for a column of four positions is
    // (u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3).
    let gt = |u: [f64; 4]| {
        let half = 0.5 * (u[1] + u[2]);
        [u[0] + half, 0.5 * (u[1] - u[2]), half + u[3]]
    };
    let mut dw = vec![0f32; cout * cin * TAPS];
    dw.par_chunks_mut(cin * TAPS)
        .enumerate()
        .for_each(|(o, dw)| {
            for (i, taps) in dw.chunks_exact_mut(TAPS).enumerate() {
                let u = |a: usize, b: usize| f64::from(du[((a * 4 + b) * cout + o) * cin + i]);
                // Gᵀ·dU: [3][4].
                let rows: [[f64; 3]; 4] =
                    std::array::from_fn(|b| gt([u(0, b), u(1, b), u(2, b), u(3, b)]));
                for ky in 0..3 {
                    let row = gt([rows[0][ky], rows[1][ky], rows[2][ky], rows[3][ky]]);
                    for (kx, &value) in row.iter().enumerate() {
                        taps[ky * 3 + kx] = value as f32;
                    }
                }
            }
        });
    Ok(dw)
}

#[cfg(test)]
mod tests;
