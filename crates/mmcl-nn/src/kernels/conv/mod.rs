//! 2-D convolutions: fast CPU inference over channels-last (`NHWC`) `f32` activations, and a
//! differentiable convolution for training.
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
//! gradients as matrix products; the forward pass and input gradient of 3×3 stride-1 layers on
//! large maps by the direct kernel, all three passes of those with 256 channels or more on
//! mid-sized maps by Winograd's F(2×2, 3×3)), elsewhere candle's convolution. [`residual_block`] is a
//! ResNet block (conv-BN units and the residual sum), one autograd node in training on the CPU;
//! [`residual_stage`] chains blocks, one node for all of them.
//!
//! The pieces: `packed` is the channels-last inference kernel, `planar` the channels-first
//! training operation (patch matrices, forward and backward), `direct` its AVX-512 3×3
//! stride-1 kernel for the forward pass and input gradient on large maps (no patch matrix),
//! `winograd` the F(2×2, 3×3) kernels for 3×3 stride-1 layers on mid-sized maps (ResNet50's
//! layer3), `weight_gradient` the patch-matrix weight gradient, `residual` the fused block over
//! `planar` and the batch-norm kernel; the others multiply with the kernels' shared GEMM. The NHWC pooling that goes with [`PackedConv2d`] is in [`crate::pool`].

mod direct;
mod packed;
mod planar;
mod residual;
#[cfg(test)]
mod tests;
mod weight_gradient;
mod winograd;

use candle_core::{DType, Tensor};

use crate::kernels::gemm::{MatRef, matmul, matmul_strided};
pub use crate::kernels::nhwc::{BufferPool, NhwcTensor};
use crate::kernels::op::Op;
use crate::precision::{self, Precision};
use crate::{Error, Result};
pub use packed::PackedConv2d;
use planar::Conv2dOp;
pub use residual::{BlockUnits, ConvBnUnit, residual_block, residual_stage};

/// Kernel side, stride and padding of a square convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    /// The output side for an input side (`None` when the kernel does not fit).
    fn output_size(&self, input: usize) -> Option<usize> {
        (input + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|span| span / self.stride + 1)
    }

    /// Whether the patch matrix is the activation matrix itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }
}

/// A differentiable 2-D convolution with a square kernel (no bias, dilation 1, one group),
/// PyTorch's `F.conv2d(x, weight, stride=stride, padding=padding)`.
///
/// On the CPU in `f32` this is a custom operation over the GEMM kernels of this module
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
            .apply_op2(&weight.contiguous()?, Op(Conv2dOp(geometry)))?);
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
    Ok(precision::conv2d(&x, weight, padding, stride)?) // [N, C_out, H', W']
}

/// `dst += a · b` on one thread: both convolutions run one product per block or image, in
/// parallel, so a multi-threaded product would only oversubscribe the pool.
/// `precision` is read once when the operation starts, on its calling thread (the tasks run on
/// pool threads, whose own setting is not the caller's).
fn gemm_acc(
    dst: &mut [f32],
    a: MatRef,
    b: MatRef,
    precision: Precision,
) -> candle_core::Result<()> {
    matmul(dst, a, b, true, gemm::Parallelism::None, precision)
}

/// `dst = a · b` on one thread, into rows of `dst` that lie `dst_row_stride` values apart (a
/// block of columns of a wider matrix); otherwise as [`gemm_acc`].
fn gemm_set(
    dst: &mut [f32],
    dst_row_stride: usize,
    a: MatRef,
    b: MatRef,
    precision: Precision,
) -> candle_core::Result<()> {
    let parallelism = gemm::Parallelism::None;
    matmul_strided(dst, dst_row_stride, a, b, false, parallelism, precision)
}
