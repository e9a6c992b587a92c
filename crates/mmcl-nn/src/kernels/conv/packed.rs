//! The channels-last inference convolution: packed weights, bias, residual and ReLU fused
//! into one pass over each block of output pixels.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::{Geometry, gemm_acc};
use crate::kernels::gemm::MatRef;
use crate::kernels::nhwc::{BufferPool, NhwcTensor};
use crate::precision::matmul_precision;
use crate::{Error, Result};

/// A convolution with packed weights `[k·k·C_in, C_out]` and a bias, for [`NhwcTensor`]s.
#[derive(Debug, Clone)]
pub struct PackedConv2d {
    /// Rows ordered `(ky, kx, c_in)` to match channels-last patches; columns are output channels.
    weight: Vec<f32>,
    bias: Vec<f32>,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl PackedConv2d {
    /// Packs a PyTorch-layout weight `[C_out, C_in, k, k]` and an optional bias `[C_out]`.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (out_channels, in_channels, kh, kw) = weight.dims4()?;
        if kh != kw || kh == 0 || stride == 0 {
            return Err(Error::InvalidArgument(format!(
                "packed convolutions take square non-empty kernels and positive strides (got \
                 {kh}x{kw}, stride {stride})"
            )));
        }
        let k = kh;
        // [C_out, C_in, k, k] -> [k, k, C_in, C_out]: rows follow the patch order.
        let weight = weight
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .permute((2, 3, 1, 0))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = match bias {
            Some(b) => {
                let b = b
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if b.len() != out_channels {
                    return Err(Error::InvalidArgument(format!(
                        "bias of {} values for {out_channels} output channels",
                        b.len()
                    )));
                }
                b
            }
            None => vec![0.0; out_channels],
        };
        Ok(Self {
            weight,
            bias,
            in_channels,
            out_channels,
            kernel: k,
            stride,
            padding,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The output side for an input side.
    pub fn output_size(&self, input: usize) -> Option<usize> {
        self.geometry().output_size(input)
    }

    /// `relu?(conv(x) + bias + residual?)`.
    ///
    /// # Shapes
    /// `x`: `[N, H, W, C_in]` → `[N, H', W', C_out]`; `residual`, if any: `[N, H', W', C_out]`.
    pub fn forward(
        &self,
        x: &NhwcTensor,
        residual: Option<&NhwcTensor>,
        relu: bool,
    ) -> Result<NhwcTensor> {
        self.forward_pooled(x, residual, relu, &BufferPool::new())
    }

    /// [`Self::forward`] with the output buffer taken from `pool`.
    ///
    /// # Shapes
    /// `x`: `[N, H, W, C_in]` → `[N, H', W', C_out]`; `residual`, if any: `[N, H', W', C_out]`.
    pub fn forward_pooled(
        &self,
        x: &NhwcTensor,
        residual: Option<&NhwcTensor>,
        relu: bool,
        pool: &BufferPool,
    ) -> Result<NhwcTensor> {
        if x.c != self.in_channels || x.data.len() != x.pixels() * x.c {
            return Err(Error::InvalidArgument(format!(
                "a convolution over {} channels got a {}x{}x{}x{} input",
                self.in_channels, x.n, x.h, x.w, x.c
            )));
        }
        let (Some(ho), Some(wo)) = (self.output_size(x.h), self.output_size(x.w)) else {
            return Err(Error::InvalidArgument(format!(
                "a {}x{} input is smaller than the {k}x{k} kernel",
                x.h,
                x.w,
                k = self.kernel
            )));
        };
        let cout = self.out_channels;
        let rows = x.n * ho * wo;
        if let Some(r) = residual
            && (r.n, r.h, r.w, r.c) != (x.n, ho, wo, cout)
        {
            return Err(Error::InvalidArgument(format!(
                "residual of shape {}x{}x{}x{} for an output of {}x{ho}x{wo}x{cout}",
                r.n, r.h, r.w, r.c, x.n
            )));
        }
        let depth = self.kernel * self.kernel * self.in_channels;
        let direct = self.geometry().is_pointwise();
        let precision = matmul_precision();
        let block = block_rows(rows, depth);
        let mut out = pool.take(rows * cout);
        out.par_chunks_mut(block * cout)
            .enumerate()
            .try_for_each_init(Vec::new, |patches, (b, dst)| -> candle_core::Result<()> {
                let r0 = b * block;
                let n_rows = dst.len() / cout;
                // Start from bias (+ residual), then accumulate the product into it.
                match residual {
                    Some(res) => {
                        let src = &res.data[r0 * cout..(r0 + n_rows) * cout];
                        for (d, s) in dst.chunks_exact_mut(cout).zip(src.chunks_exact(cout)) {
                            for ((d, s), b) in d.iter_mut().zip(s).zip(&self.bias) {
                                *d = s + b;
                            }
                        }
                    }
                    None => {
                        for d in dst.chunks_exact_mut(cout) {
                            d.copy_from_slice(&self.bias);
                        }
                    }
                }
                let lhs: &[f32] = if direct {
                    &x.data[r0 * depth..(r0 + n_rows) * depth]
                } else {
                    gather_patches(x, self.geometry(), (ho, wo), r0, n_rows, patches);
                    patches
                };
                let lhs = MatRef::rows(lhs, n_rows, depth);
                let weight = MatRef::rows(&self.weight, depth, cout);
                gemm_acc(dst, lhs, weight, precision)?;
                if relu {
                    for v in dst.iter_mut() {
                        *v = v.max(0.0);
                    }
                }
                Ok(())
            })?;
        Ok(NhwcTensor {
            data: out,
            n: x.n,
            h: ho,
            w: wo,
            c: cout,
        })
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl Geometry {
    /// For output pixel `(oy, ox)` and kernel row `ky`: the input row, and the range of kernel
    /// columns `kx0..kx1` inside the image with the input column of `kx0` (a contiguous run).
    fn row_run(&self, (h, w): (usize, usize), (oy, ox): (usize, usize), ky: usize) -> Option<Run> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let iy = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h)?;
        let kx0 = p.saturating_sub(ox * s);
        let kx1 = (w + p).saturating_sub(ox * s).min(k);
        (kx0 < kx1).then(|| Run {
            iy,
            ix0: ox * s + kx0 - p,
            kx0,
            kx1,
        })
    }
}

/// A run of kernel columns `kx0..kx1` reading input row `iy` from column `ix0` on.
struct Run {
    iy: usize,
    ix0: usize,
    kx0: usize,
    kx1: usize,
}

/// Fills `patches` with the `[n_rows, k·k·C]` patch matrix of output pixels `r0 .. r0 + n_rows`
/// (zeros where the window overlaps the padding); rows are ordered `(ky, kx, c)`.
fn gather_patches(
    x: &NhwcTensor,
    geometry: Geometry,
    (ho, wo): (usize, usize),
    r0: usize,
    n_rows: usize,
    patches: &mut Vec<f32>,
) {
    let (k, c) = (geometry.kernel, x.c);
    let depth = k * k * c;
    patches.clear();
    patches.resize(n_rows * depth, 0.0);
    for (i, row) in patches.chunks_exact_mut(depth).enumerate() {
        let r = r0 + i;
        let (img, rem) = (r / (ho * wo), r % (ho * wo));
        let image = &x.data[img * x.h * x.w * c..(img + 1) * x.h * x.w * c];
        for ky in 0..k {
            let Some(run) = geometry.row_run((x.h, x.w), (rem / wo, rem % wo), ky) else {
                continue;
            };
            let start = (run.iy * x.w + run.ix0) * c;
            let len = (run.kx1 - run.kx0) * c;
            row[(ky * k + run.kx0) * c..(ky * k + run.kx0) * c + len]
                .copy_from_slice(&image[start..start + len]);
        }
    }
}

/// Output pixels per block: a patch matrix of about 192 KiB (so that it and the output block
/// stay in the core's L2 cache), but at least 128 rows (each block's product re-packs the
/// weights, which must stay cheap next to the arithmetic), and enough blocks for every thread.
fn block_rows(rows: usize, depth: usize) -> usize {
    let by_cache = (192 * 1024 / 4 / depth.max(1)).clamp(128, 1024);
    let threads = rayon::current_num_threads().max(1);
    let by_threads = rows.div_ceil(2 * threads).max(1);
    by_cache.min(by_threads).max(1)
}
