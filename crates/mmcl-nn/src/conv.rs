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
//! [`PackedConv2d`] is an inference kernel: no gradients; weights are packed once, with any
//! per-channel scale (a folded BatchNorm) already applied. [`conv2d`] is the differentiable
//! convolution for training: on the CPU in `f32` it runs the same kernels (forward, and both
//! gradients as matrix products), elsewhere candle's convolution.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
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
                    gather_patches(x, self.geometry(), (ho, wo), r0, n_rows, patches);
                    patches
                };
                gemm_acc(
                    dst,
                    n_rows,
                    cout,
                    Mat::rows(lhs, n_rows, depth),
                    Mat::rows(&self.weight, depth, cout),
                );
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

    fn geometry(&self) -> Geometry {
        Geometry {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// Kernel side, stride and padding of a square convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn output_size(&self, input: usize) -> Option<usize> {
        (input + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|span| span / self.stride + 1)
    }

    /// Whether the patch matrix is the activation matrix itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

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

/// A differentiable 2-D convolution with a square kernel (no bias, dilation 1, one group),
/// PyTorch's `F.conv2d(x, weight, stride=stride, padding=padding)`.
///
/// On the CPU in `f32` this is a custom operation over the channels-last kernels of this module
/// (the backward pass computes both gradients as matrix products); otherwise candle's
/// convolution, also on inputs whose height and width differ in parity (where candle's own
/// backward pass, which derives the transposed convolution's output padding from the height
/// alone, fails for stride 2).
///
/// # Shapes
/// `x`: `[N, C_in, H, W]`, `weight`: `[C_out, C_in, k, k]` → `[N, C_out, H', W']` with
/// `H' = (H + 2·padding − k) / stride + 1`.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (_, cin, kh, kw) = weight.dims4()?;
    if c != cin || kh != kw || kh == 0 || stride == 0 {
        return Err(Error::InvalidArgument(format!(
            "conv2d of a {:?} input with a {:?} kernel and stride {stride}",
            x.dims(),
            weight.dims()
        )));
    }
    let geometry = Geometry {
        kernel: kh,
        stride,
        padding,
    };
    if geometry.output_size(h).is_none() || geometry.output_size(w).is_none() {
        return Err(Error::InvalidArgument(format!(
            "a {h}x{w} input is smaller than the {kh}x{kh} kernel with padding {padding}"
        )));
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        return Ok(x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, Conv2dOp(geometry))?);
    }
    let x = if stride == 2 {
        // With an even (H + 2p − k), one more zero row at the bottom leaves the output size
        // and values unchanged (the row is read, if at all, as padding) and makes it odd.
        let odd_h = (h + 2 * padding - kh) % 2 == 1;
        let odd_w = (w + 2 * padding - kh) % 2 == 1;
        match (odd_h, odd_w) {
            (true, false) => x.pad_with_zeros(3, 0, 1)?, // [N, C, H, W + 1]
            (false, true) => x.pad_with_zeros(2, 0, 1)?, // [N, C, H + 1, W]
            _ => x.clone(),
        }
    } else {
        x.clone()
    };
    Ok(x.conv2d(weight, padding, stride, 1, 1)?) // [N, C_out, H', W']
}

/// The CPU convolution as a candle operation with a backward pass. It works on candle's
/// channels-first tensors directly: per image, the weight `[C_out, C_in·k·k]` (PyTorch's layout
/// read as a matrix) multiplies the patch matrix `[C_in·k·k, H'·W']`, whose rows are shifted
/// (strided) copies of input rows; a 1×1 stride-1 convolution multiplies the image itself.
struct Conv2dOp(Geometry);

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(data) if layout.is_contiguous() => {
            let start = layout.start_offset();
            Ok(&data[start..start + layout.shape().elem_count()])
        }
        CpuStorage::F32(_) => candle_core::bail!("conv2d: inputs must be contiguous"),
        other => candle_core::bail!("conv2d: unsupported dtype {:?}", other.dtype()),
    }
}

/// Sizes of one channels-first convolution.
#[derive(Debug, Clone, Copy)]
struct Planar {
    geometry: Geometry,
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl Planar {
    fn new(x: &[usize], weight: &[usize], geometry: Geometry) -> candle_core::Result<Self> {
        let (&[n, cin, h, w], &[cout, _, _, _]) = (x, weight) else {
            candle_core::bail!("conv2d: expected 4-d input and weight");
        };
        let (Some(ho), Some(wo)) = (geometry.output_size(h), geometry.output_size(w)) else {
            candle_core::bail!("conv2d: the input is smaller than the kernel");
        };
        Ok(Self {
            geometry,
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
        let Geometry {
            kernel: k,
            stride: s,
            padding: p,
        } = self.geometry;
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
        let Geometry {
            kernel: k,
            stride: s,
            padding: p,
        } = self.geometry;
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
    fn forward(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let (depth, pixels) = (self.depth(), self.out_pixels());
        let mut y = vec![0f32; self.n * self.cout * pixels];
        if y.is_empty() {
            return y;
        }
        let w = Mat::rows(weight, self.cout, depth);
        y.par_chunks_mut(self.cout * pixels)
            .zip(x.par_chunks(self.in_image()))
            .for_each_init(Vec::new, |patches: &mut Vec<f32>, (y_img, x_img)| {
                let p = if self.geometry.is_pointwise() {
                    x_img
                } else {
                    self.im2col(x_img, patches);
                    patches
                };
                gemm_acc(y_img, self.cout, pixels, w, Mat::rows(p, depth, pixels));
            });
        y
    }

    /// `(dX, dW)`: per image `dW += dY·Pᵀ` and `dX = col2im(Wᵀ·dY)`; images split into one
    /// contiguous group per thread, each with its own `dW` partial sum.
    fn backward(&self, x: &[f32], weight: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (depth, pixels) = (self.depth(), self.out_pixels());
        let w_t = Mat::rows(weight, self.cout, depth).t(); // [depth, C_out]
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
                    let dy_img = Mat::rows(
                        &dy[img * self.cout * pixels..(img + 1) * self.cout * pixels],
                        self.cout,
                        pixels,
                    );
                    if self.geometry.is_pointwise() {
                        let x_t = Mat::rows(x_img, self.cin, pixels).t();
                        gemm_acc(&mut dw, self.cout, depth, dy_img, x_t);
                        gemm_acc(dx_img, self.cin, pixels, w_t, dy_img);
                        continue;
                    }
                    self.im2col(x_img, &mut patches);
                    let p_t = Mat::rows(&patches, depth, pixels).t();
                    gemm_acc(&mut dw, self.cout, depth, dy_img, p_t);
                    dpatches.clear();
                    dpatches.resize(depth * pixels, 0.0);
                    gemm_acc(&mut dpatches, depth, pixels, w_t, dy_img);
                    self.col2im(&dpatches, dx_img);
                }
                dw
            })
            .reduce(
                || vec![0f32; self.cout * depth],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        *x += y;
                    }
                    a
                },
            );
        (dx, dw)
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
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let conv = Planar::new(l1.dims(), l2.dims(), self.0)?;
        let y = conv.forward(contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let shape = Shape::from((conv.n, conv.cout, conv.ho, conv.wo));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let conv = Planar::new(x.dims(), weight.dims(), self.0)?;
        let (dx, dw) = with_cpu_f32(x, |xs| {
            with_cpu_f32(weight, |ws| {
                with_cpu_f32(grad, |dy| conv.backward(xs, ws, dy))
            })
        })
        .and_then(|r| r)
        .and_then(|r| r)
        .map_err(crate::batch_norm::into_candle_error)?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ))
    }
}

/// Runs `f` on the values of a CPU `f32` tensor, without copying when it is contiguous.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(data)) => {
            let start = layout.start_offset();
            Ok(f(&data[start..start + layout.shape().elem_count()]))
        }
        _ => Err(Error::InvalidArgument(format!(
            "expected an f32 tensor on the CPU, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        ))),
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

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `[rows, cols]` matrix.
    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (a view, nothing moves).
    fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst[m, n] += a[m, k] · b[k, n]`, `dst` row-major and contiguous.
///
/// # Panics
/// When the shapes disagree or a view exceeds its slice (a bug in this module, not an input
/// error: every caller derives the shapes from the same tensors).
fn gemm_acc(dst: &mut [f32], m: usize, n: usize, a: Mat, b: Mat) {
    assert!(
        a.rows == m && b.cols == n && a.cols == b.rows && dst.len() >= m * n,
        "gemm_acc: inconsistent shapes"
    );
    assert!(
        a.in_bounds() && b.in_bounds(),
        "gemm_acc: view out of bounds"
    );
    if m == 0 || n == 0 || a.cols == 0 {
        return;
    }
    // SAFETY: the assertions bound every access: gemm reads `a` at `i * row_stride + j *
    // col_stride` for i < a.rows, j < a.cols (likewise `b`), and reads/writes `dst` at
    // `i * n + j` for i < m, j < n; `dst` is borrowed mutably, so nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            a.cols,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
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
            (2, 3, 7, 2, 3, 1, 1),
            (2, 3, 3, 1, 1, 1, 2),
            (2, 3, 3, 2, 1, 2, 1),
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
    fn differentiable_convolution_matches_candle_in_values_and_gradients() -> Result<()> {
        use candle_core::Var;
        for &(cin, cout, k, s, p, h, w) in &[
            (3, 8, 7, 2, 3, 21, 18),
            (16, 8, 3, 1, 1, 9, 11),
            (16, 24, 3, 2, 1, 10, 7),
            (8, 16, 1, 1, 0, 6, 5),
            (8, 16, 1, 2, 0, 7, 6),
            (4, 4, 3, 2, 1, 8, 8),
            (2, 3, 7, 2, 3, 1, 1),
            (2, 3, 3, 1, 1, 1, 2),
            (2, 3, 3, 2, 1, 2, 1),
            (2, 3, 5, 1, 2, 3, 1),
        ] {
            let case = (cin, cout, k, s, p, h, w);
            let x = Var::from_tensor(&random(1, &[2, cin, h, w]))?;
            let weight = Var::from_tensor(&random(2, &[cout, cin, k, k]))?;
            let y = conv2d(x.as_tensor(), weight.as_tensor(), s, p)?;
            let r = random(3, y.dims());
            let grads = (&y * &r)?.sum_all()?.backward()?;
            // The reference: candle's convolution in f64 (its backward works for these shapes
            // once the parity workaround applies, which `conv2d` does for non-f32 inputs).
            let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64)?)?;
            let w64 = Var::from_tensor(&weight.as_tensor().to_dtype(DType::F64)?)?;
            let y64 = conv2d(x64.as_tensor(), w64.as_tensor(), s, p)?;
            let g64 = (&y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                let b = b.to_dtype(DType::F32)?;
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                let diff = max_diff(a, &b);
                assert!(diff <= 1e-5 * scale * 10.0, "{what} {case:?}: {diff}");
                Ok(())
            };
            close(&y, &y64, "output")?;
            let get = |g: &candle_core::backprop::GradStore, v: &Var| {
                g.get(v.as_tensor())
                    .cloned()
                    .ok_or(Error::InvalidArgument("no grad".into()))
            };
            close(&get(&grads, &x)?, &get(&g64, &x64)?, "input gradient")?;
            close(&get(&grads, &weight)?, &get(&g64, &w64)?, "weight gradient")?;
        }
        Ok(())
    }

    /// Stride-2 convolutions over inputs whose sides differ in parity: same values as candle's
    /// convolution, and gradients equal to central differences.
    #[test]
    fn strided_conv_on_mixed_parity_inputs_has_correct_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SplitMix64::new(4);
        for &(h, w, k, p) in &[(5, 4, 3, 1), (4, 7, 3, 1), (6, 5, 1, 0), (7, 8, 7, 3)] {
            let xs: Vec<f64> = (0..2 * h * w).map(|_| rng.next_normal()).collect();
            let ws: Vec<f64> = (0..3 * 2 * k * k).map(|_| rng.next_normal()).collect();
            let weight = Tensor::from_vec(ws, (3, 2, k, k), &dev)?;
            let x =
                candle_core::Var::from_tensor(&Tensor::from_vec(xs.clone(), (1, 2, h, w), &dev)?)?;
            let y = conv2d(x.as_tensor(), &weight, 2, p)?;
            let plain = x.as_tensor().conv2d(&weight, p, 2, 1, 1)?;
            assert_eq!(y.dims(), plain.dims());
            let diff = (&y - &plain)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12);
            let r = Tensor::from_vec(
                (0..y.elem_count())
                    .map(|_| rng.next_normal())
                    .collect::<Vec<f64>>(),
                y.shape(),
                &dev,
            )?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let analytic: Vec<f64> = grads
                .get(x.as_tensor())
                .ok_or_else(|| Error::InvalidArgument("no gradient".into()))?
                .flatten_all()?
                .to_vec1()?;
            let loss = |d: &[f64]| -> Result<f64> {
                let x = Tensor::from_vec(d.to_vec(), (1, 2, h, w), &dev)?;
                Ok((conv2d(&x, &weight, 2, p)? * &r)?
                    .sum_all()?
                    .to_scalar::<f64>()?)
            };
            for i in 0..xs.len() {
                let (mut plus, mut minus) = (xs.clone(), xs.clone());
                plus[i] += 1e-4;
                minus[i] -= 1e-4;
                let numeric = (loss(&plus)? - loss(&minus)?) / 2e-4;
                assert!(
                    (numeric - analytic[i]).abs() < 1e-8,
                    "{:?} element {i}: {numeric} vs {}",
                    (h, w, k, p),
                    analytic[i]
                );
            }
        }
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
