//! Fast CPU inference convolutions over channels-last (`NHWC`) `f32` activations.
//!
//! candle's CPU convolution converts every input to channels-last, builds its patch matrix, runs
//! one matrix product per tile and scatters the result back to channels-first; between layers
//! that costs several passes over memory, and bias, ReLU and residual additions each cost one
//! more. Here activations stay channels-last from layer to layer, so that
//! - a 1×1 stride-1 convolution is one matrix product straight over the activations;
//! - a k×k convolution copies, per block of output pixels, `k²` contiguous channel runs into a
//!   small patch matrix that stays in cache;
//! - the output block is initialised with the bias (plus the residual, when there is one), the
//!   matrix product accumulates into it, and ReLU is applied while the block is still in cache.
//!
//! Blocks of output pixels run in parallel on rayon's pool; each matrix product is
//! single-threaded (`gemm` with AVX-512 kernels where the CPU has them).
//!
//! These are inference kernels: no gradients. Weights are packed once, with any per-channel
//! scale (a folded BatchNorm) already applied.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// A batch of channels-last `f32` activations, `[N, H, W, C]`, on the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct NhwcTensor {
    /// The values, `C` fastest, then `W`, `H`, `N`.
    pub data: Vec<f32>,
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl NhwcTensor {
    /// Converts a channels-first `[N, C, H, W]` tensor (any float dtype, any device) into
    /// channels-last `f32` on the CPU.
    pub fn from_nchw(x: &Tensor) -> Result<Self> {
        let (n, c, h, w) = x.dims4()?;
        let data = x
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))? // [N, H, W, C]
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self { data, n, h, w, c })
    }

    /// Converts back to a channels-first `[N, C, H, W]` tensor on `device`.
    pub fn to_nchw(&self, device: &Device) -> Result<Tensor> {
        let t = Tensor::from_slice(&self.data, (self.n, self.h, self.w, self.c), &Device::Cpu)?;
        let t = t.permute((0, 3, 1, 2))?.contiguous()?; // [N, C, H, W]
        Ok(t.to_device(device)?)
    }

    /// Number of pixels, `N·H·W`.
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// Activation buffers kept between layers and calls, so that a forward pass does not map, fault
/// in and zero fresh memory for every layer (large allocations go straight to the kernel).
///
/// Holds on to the largest working set it has seen; drop it to release the memory.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl Clone for BufferPool {
    /// A new, empty pool (buffers are not shared).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        // A panic elsewhere cannot leave a list of buffers inconsistent.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of `len` values (stale contents: the caller overwrites them).
    pub fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.lock();
        // The smallest buffer that is large enough, else the largest one (grown).
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
            .map(|(i, _)| i);
        let mut buffer = best.map(|i| free.swap_remove(i)).unwrap_or_default();
        drop(free);
        // Growing writes zeros only past the old length; shrinking writes nothing.
        buffer.resize(len, 0.0);
        buffer
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, buffer: Vec<f32>) {
        if buffer.capacity() > 0 {
            self.lock().push(buffer);
        }
    }

    /// Returns a tensor's buffer for reuse.
    pub fn recycle(&self, tensor: NhwcTensor) {
        self.give(tensor.data);
    }
}

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
        (input + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|span| span / self.stride + 1)
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
        let direct = self.kernel == 1 && self.stride == 1 && self.padding == 0;
        let block = block_rows(rows, depth);
        let mut out = pool.take(rows * cout);
        out.par_chunks_mut(block * cout).enumerate().for_each_init(
            Vec::new,
            |patches, (b, dst)| {
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
                    self.gather_patches(x, (ho, wo), r0, n_rows, patches);
                    patches
                };
                matmul_accumulate(dst, lhs, &self.weight, n_rows, depth, cout);
                if relu {
                    for v in dst.iter_mut() {
                        *v = v.max(0.0);
                    }
                }
            },
        );
        Ok(NhwcTensor {
            data: out,
            n: x.n,
            h: ho,
            w: wo,
            c: cout,
        })
    }

    /// Fills `patches` with the `[n_rows, k·k·C_in]` patch matrix of output pixels
    /// `r0 .. r0 + n_rows` (zeros where the window overlaps the padding).
    fn gather_patches(
        &self,
        x: &NhwcTensor,
        (ho, wo): (usize, usize),
        r0: usize,
        n_rows: usize,
        patches: &mut Vec<f32>,
    ) {
        let (k, s, p, c) = (self.kernel, self.stride, self.padding, x.c);
        let depth = k * k * c;
        patches.clear();
        patches.resize(n_rows * depth, 0.0);
        for (i, row) in patches.chunks_exact_mut(depth).enumerate() {
            let r = r0 + i;
            let (img, rem) = (r / (ho * wo), r % (ho * wo));
            let (oy, ox) = (rem / wo, rem % wo);
            let image = &x.data[img * x.h * x.w * c..(img + 1) * x.h * x.w * c];
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < x.h) else {
                    continue;
                };
                // The in-bounds columns of this kernel row form one contiguous run of pixels.
                let kx0 = p.saturating_sub(ox * s);
                let kx1 = (x.w + p).saturating_sub(ox * s).min(k);
                if kx0 >= kx1 {
                    continue;
                }
                let ix0 = ox * s + kx0 - p;
                let src = &image[(iy * x.w + ix0) * c..(iy * x.w + ix0 + kx1 - kx0) * c];
                row[(ky * k + kx0) * c..(ky * k + kx1) * c].copy_from_slice(src);
            }
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

/// `dst[m, n] += lhs[m, k] · rhs[k, n]`, all row-major and contiguous.
fn matmul_accumulate(dst: &mut [f32], lhs: &[f32], rhs: &[f32], m: usize, k: usize, n: usize) {
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n,
        "matmul_accumulate: slices shorter than their shapes"
    );
    // SAFETY: the assertion above bounds every access: gemm reads `lhs` at
    // `row * k + col` for row < m, col < k, `rhs` at `row * n + col` for row < k, col < n, and
    // reads/writes `dst` at `row * n + col` for row < m, col < n; the slices do not overlap
    // (`dst` is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn random(seed: u64, shape: &[usize]) -> Tensor {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    #[test]
    fn matches_candle_convolution_with_bias_residual_and_relu() -> Result<()> {
        for &(cin, cout, k, s, p, h, w) in &[
            (3, 8, 7, 2, 3, 21, 18),
            (16, 8, 3, 1, 1, 9, 11),
            (16, 24, 3, 2, 1, 10, 7),
            (8, 16, 1, 1, 0, 6, 5),
            (8, 16, 1, 2, 0, 7, 6),
        ] {
            let x = random(1, &[2, cin, h, w]);
            let weight = random(2, &[cout, cin, k, k]);
            let bias = random(3, &[cout]);
            let conv = PackedConv2d::new(&weight, Some(&bias), s, p)?;
            let expected = x
                .conv2d(&weight, p, s, 1, 1)?
                .broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
            let residual = random(4, expected.dims());
            let expected = (expected + &residual)?.relu()?;
            let out = conv.forward(
                &NhwcTensor::from_nchw(&x)?,
                Some(&NhwcTensor::from_nchw(&residual)?),
                true,
            )?;
            let diff = max_diff(&out.to_nchw(&Device::Cpu)?, &expected);
            assert!(diff < 1e-4, "{:?}: {diff}", (cin, cout, k, s, p, h, w));
        }
        Ok(())
    }

    #[test]
    fn pools_match_the_channels_first_versions() -> Result<()> {
        let x = random(5, &[2, 5, 13, 10]);
        let nhwc = NhwcTensor::from_nchw(&x)?;
        let pooled = max_pool2d_nhwc(&nhwc, 3, 2, 1)?.to_nchw(&Device::Cpu)?;
        let expected = crate::pool::max_pool2d(&x, 3, 2, 1)?;
        assert_eq!(max_diff(&pooled, &expected), 0.0);
        let mean = Tensor::from_vec(global_avg_pool_nhwc(&nhwc), (2, 5), &Device::Cpu)?;
        assert!(max_diff(&mean, &x.mean((2, 3))?) < 1e-6);
        Ok(())
    }

    #[test]
    fn wrong_shapes_are_errors() -> Result<()> {
        let conv = PackedConv2d::new(&random(0, &[4, 3, 3, 3]), None, 1, 1)?;
        let x = NhwcTensor::from_nchw(&random(1, &[1, 2, 5, 5]))?;
        assert!(conv.forward(&x, None, false).is_err());
        let x = NhwcTensor::from_nchw(&random(1, &[1, 3, 5, 5]))?;
        let bad_residual = NhwcTensor::from_nchw(&random(1, &[1, 4, 4, 5]))?;
        assert!(conv.forward(&x, Some(&bad_residual), false).is_err());
        Ok(())
    }
}
