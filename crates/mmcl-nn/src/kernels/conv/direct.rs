//! A direct 3×3 stride-1 convolution over channels-first planes with AVX-512: no patch matrix,
//! no packing of the activations. It computes the training convolution's forward pass and its
//! input gradient (the same convolution with the kernel transposed and flipped) on maps large
//! enough to fill its pixel tiles (ResNet50's first two stages at 210 px).
//!
//! Hand-written because the `gemm` crate packs the patch matrix for every product and re-reads it
//! once per output channel: with 64 or 128 channels that packing is a third of the product's
//! time, and layer1's 3×3 product ran at 50–75 GFLOP/s a core on a Zen 4 where this kernel runs
//! at 93–97 (and PyTorch's oneDNN at about 100).
//!
//! A plane's pixels are read as one flat run: the input pixel of tap `(ky, kx)` for output pixel
//! `p` is `p + (ky − 1)·W + (kx − 1)` in the channel's plane, except where that crosses a row end
//! or the plane's edge (the padding), which a per-lane mask zeroes. A tile of 64 output pixels
//! (four vectors) and 6 output channels keeps 24 accumulators in registers over every input
//! channel and tap; each step loads the tap's four masked vectors and broadcasts six weights.

use std::sync::OnceLock;

use super::Geometry;
use crate::census::{self, ProductKey};
use crate::kernels::simd::first_lanes;

/// Output channels per register block.
const CHANNELS: usize = 6;
/// Vectors of 16 pixels per tile.
const VECTORS: usize = 4;
/// Output pixels per tile.
const TILE: usize = 16 * VECTORS;
/// Taps of the 3×3 kernel.
pub(super) const TAPS: usize = 9;
/// The least share of the tiles' pixels that must be the plane's own: a 14×14 map fills 196 of
/// 256 and ran at 78 GFLOP/s, below the `gemm` crate's product there; 27×27 fills 729 of 768.
const MIN_FILL: f64 = 0.9;

/// Whether the CPU has AVX-512 F and `MMCL_DIRECT_CONV` is not `0`; checked once.
fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("MMCL_DIRECT_CONV").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether a convolution of `geometry` over `[H, W]` = `plane` planes runs here: 3×3, stride 1,
/// padding 1, tiles at least [`MIN_FILL`] full, on a CPU with AVX-512.
pub(super) fn applies(geometry: Geometry, (h, w): (usize, usize)) -> bool {
    let pixels = h * w;
    let tiled = pixels.div_ceil(TILE) * TILE;
    geometry
        == (Geometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        })
        && pixels > 0
        && pixels as f64 >= MIN_FILL * tiled as f64
        && available()
}

/// Which pass of a layer a [`Direct3x3`] computes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pass {
    /// `Y = W ⋆ X`.
    Forward,
    /// `dX[i] = Σ_o W[o, i, 2 − ky, 2 − kx] ⋆ dY[o]`: the kernel transposed and flipped.
    InputGradient,
}

impl Pass {
    /// The planes this pass of a layer from `cin` to `cout` channels reads and writes:
    /// `(cin, cout)` forward, `(cout, cin)` for the input gradient.
    pub(super) fn planes(self, (cout, cin): (usize, usize)) -> (usize, usize) {
        match self {
            Pass::Forward => (cin, cout),
            Pass::InputGradient => (cout, cin),
        }
    }

    /// The pass's kernel as `tap(o, i, t)`: tap `t` (`ky·3 + kx`) from plane `i` to plane `o`
    /// of [`Self::planes`], read from the layer's weight `[cout, cin, 3, 3]` (PyTorch's layout)
    /// with `cin` input channels.
    pub(super) fn taps(
        self,
        weight: &[f32],
        cin: usize,
    ) -> impl Fn(usize, usize, usize) -> f32 + Sync + '_ {
        move |o, i, tap| match self {
            Pass::Forward => weight[(o * cin + i) * TAPS + tap],
            // From output-gradient plane `i` (the layer's output channel) to input-gradient plane
            // `o` (its input channel), the kernel flipped.
            Pass::InputGradient => weight[(i * cin + o) * TAPS + TAPS - 1 - tap],
        }
    }
}

/// A 3×3 stride-1 padding-1 convolution from `cin` to `cout` planes of `[H, W]`, its weights
/// packed for the kernel.
pub(super) struct Direct3x3 {
    /// `[cout / 6][cin][9][6]`, the last block's missing channels zero.
    packed: Vec<f32>,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    /// Per tile and tap: the lanes of each vector that read inside the plane.
    masks: Vec<[[u16; VECTORS]; TAPS]>,
}

impl Direct3x3 {
    /// The convolution that computes `pass` of a layer with weight `[cout, cin, 3, 3]`
    /// (PyTorch's layout) over `[H, W]` planes.
    pub(super) fn new(
        pass: Pass,
        weight: &[f32],
        (cout, cin): (usize, usize),
        (h, w): (usize, usize),
    ) -> Self {
        let (from, to) = pass.planes((cout, cin));
        Self::packed_with(from, to, (h, w), pass.taps(weight, cin))
    }

    /// The convolution from `cin` to `cout` planes whose tap `tap` from input `i` to output `o`
    /// is `weight(o, i, tap)`.
    fn packed_with(
        cin: usize,
        cout: usize,
        (h, w): (usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        let blocks = cout.div_ceil(CHANNELS);
        let mut packed = vec![0f32; blocks * cin * TAPS * CHANNELS];
        for o in 0..cout {
            let (block, lane) = (o / CHANNELS, o % CHANNELS);
            for i in 0..cin {
                for tap in 0..TAPS {
                    packed[((block * cin + i) * TAPS + tap) * CHANNELS + lane] = weight(o, i, tap);
                }
            }
        }
        Self {
            packed,
            cin,
            cout,
            h,
            w,
            masks: tile_masks(h, w),
        }
    }

    /// Values in one input image.
    pub(super) fn input_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Values in one output image.
    pub(super) fn output_len(&self) -> usize {
        self.cout * self.h * self.w
    }

    /// Writes every value of one output image `[cout, H, W]` from one input image
    /// `[cin, H, W]`.
    ///
    /// # Panics
    /// When the slices do not hold one image each (a bug in the caller).
    pub(super) fn image(&self, input: &[f32], output: &mut [std::mem::MaybeUninit<f32>]) {
        assert!(
            input.len() == self.input_len() && output.len() == self.output_len(),
            "direct convolution: {} and {} values for [{}, {}, {}] → [{}, ..]",
            input.len(),
            output.len(),
            self.cin,
            self.h,
            self.w,
            self.cout
        );
        assert!(available(), "direct convolution without AVX-512");
        let started = census::start();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (asserted); the slices hold one image each (asserted),
        // which is all `image_avx512` reads and writes.
        unsafe {
            self.image_avx512(input, output.as_mut_ptr().cast::<f32>())
        }
        census::record(started, || ProductKey {
            kernel: "direct 3x3",
            dims: (self.cout, self.h * self.w, self.cin * TAPS),
            lhs_strides: (0, 0),
            rhs_strides: (0, 0),
            threads: 1,
        });
    }

    /// # Safety
    /// AVX-512 F is available; `input` holds one input image and `output` points to one
    /// output image's `cout·H·W` writable values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn image_avx512(&self, input: &[f32], output: *mut f32) {
        use std::arch::x86_64::{
            __m512, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
            _mm512_setzero_ps,
        };
        let (w, pixels) = (self.w as isize, self.h * self.w);
        let shifts: [isize; TAPS] = std::array::from_fn(|tap| {
            let (ky, kx) = ((tap / 3) as isize, (tap % 3) as isize);
            (ky - 1) * w + kx - 1
        });
        for (tile, masks) in self.masks.iter().enumerate() {
            let p0 = tile * TILE;
            let stores: [u16; VECTORS] =
                std::array::from_fn(|v| first_lanes(pixels.saturating_sub(p0 + 16 * v)));
            for (block, weights) in self
                .packed
                .chunks_exact(self.cin * TAPS * CHANNELS)
                .enumerate()
            {
                let mut acc = [[_mm512_setzero_ps(); VECTORS]; CHANNELS];
                for (i, taps) in weights.chunks_exact(TAPS * CHANNELS).enumerate() {
                    let plane = input[i * pixels..].as_ptr().wrapping_add(p0);
                    for (tap, tap_weights) in taps.chunks_exact(CHANNELS).enumerate() {
                        let from = plane.wrapping_offset(shifts[tap]);
                        // SAFETY: a lane is enabled only where its input pixel lies inside
                        // channel `i`'s plane (`tile_masks`), so every value read is in
                        // `input`; disabled lanes are not accessed.
                        let x: [__m512; VECTORS] = std::array::from_fn(|v| unsafe {
                            _mm512_maskz_loadu_ps(masks[tap][v], from.wrapping_add(16 * v))
                        });
                        for (row, &weight) in acc.iter_mut().zip(tap_weights) {
                            let weight = _mm512_set1_ps(weight);
                            for (a, &x) in row.iter_mut().zip(&x) {
                                *a = _mm512_fmadd_ps(x, weight, *a);
                            }
                        }
                    }
                }
                for (c, row) in acc.iter().enumerate() {
                    let o = block * CHANNELS + c;
                    if o >= self.cout {
                        break;
                    }
                    for (v, &a) in row.iter().enumerate() {
                        // SAFETY: the enabled lanes are pixels `< H·W` of output channel
                        // `o < cout`, inside the caller's output image.
                        unsafe {
                            _mm512_mask_storeu_ps(
                                output.add(o * pixels + p0 + 16 * v),
                                stores[v],
                                a,
                            )
                        };
                    }
                }
            }
        }
    }
}

/// For each tile of [`TILE`] output pixels of an `[H, W]` plane and each tap, the lanes of its
/// vectors whose input pixel lies inside the plane (and whose output pixel exists).
fn tile_masks(h: usize, w: usize) -> Vec<[[u16; VECTORS]; TAPS]> {
    let pixels = h * w;
    (0..pixels.div_ceil(TILE))
        .map(|tile| {
            std::array::from_fn(|tap| {
                let (ky, kx) = (tap / 3, tap % 3);
                std::array::from_fn(|v| {
                    let mut mask = 0u16;
                    for lane in 0..16 {
                        let p = tile * TILE + 16 * v + lane;
                        let (oy, ox) = (p / w, p % w);
                        // Input row oy + ky − 1 and column ox + kx − 1 inside the plane.
                        let inside = p < pixels
                            && (1..=h).contains(&(oy + ky))
                            && (1..=w).contains(&(ox + kx));
                        mask |= u16::from(inside) << lane;
                    }
                    mask
                })
            })
        })
        .collect()
}
