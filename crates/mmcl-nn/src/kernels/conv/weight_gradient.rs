//! The weight gradient of the patch-matrix convolution, summed over blocks of output pixels in
//! the orientation the GEMM runs fastest.

use candle_core::Result;

use super::gemm_acc;
use crate::kernels::gemm::{MatRef, f32_products_on_gemm_crate};
use crate::kernels::transpose;
use crate::precision::Precision;

/// A weight gradient `dW` `[C_out, C_in·k·k]` summed over blocks of output pixels,
/// `dW += dY·Pᵀ` for each block's upstream gradient `dY` `[C_out, cols]` and patch matrix `P`
/// `[C_in·k·k, cols]`.
///
/// In f32, when `dW` has more columns than rows (every layer whose `C_in·k·k` exceeds
/// `C_out`), it is summed transposed, `dWᵀ += P·dYᵀ`, and transposed once at the end: the
/// `gemm` crate runs a product whose right operand is transposed about twice as fast when the
/// output has more rows than columns (layer1's 3×3 weight gradient, `[64, 576]` over 1024
/// pixels: 36–54 GFLOP/s as `dY·Pᵀ`, 98–113 as `P·dYᵀ`, one core of an Emerald Rapids Xeon).
/// The bits are the same: the crate sums each output value as one chain of fused
/// multiply-adds along the pixels, in chunks that depend only on their number, and a
/// product's two factors commute (`weight_gradients_have_the_same_bits_in_either_orientation`
/// checks it; so does the AVX2 engine, `kernels::avx2_gemm`, which takes a product exactly
/// when it takes its transpose). In bf16, and in f32 on OpenBLAS, the gradient keeps its
/// orientation.
pub(super) struct WeightGradient {
    values: Vec<f32>,
    cout: usize,
    depth: usize,
    transposed: bool,
    precision: Precision,
}

impl WeightGradient {
    /// Zeros, summed in the orientation that suits `[cout, depth]` in `precision`.
    pub(super) fn new(cout: usize, depth: usize, precision: Precision) -> Self {
        let transposed = transposed_weight_gradient(cout, depth, precision);
        Self::oriented(cout, depth, precision, transposed)
    }

    /// Zeros, summed transposed if `transposed`.
    pub(super) fn oriented(
        cout: usize,
        depth: usize,
        precision: Precision,
        transposed: bool,
    ) -> Self {
        Self {
            values: vec![0f32; cout * depth],
            cout,
            depth,
            transposed,
            precision,
        }
    }

    /// `dW += dy·pᵀ` for `dy` `[C_out, cols]` and `p` `[C_in·k·k, cols]`.
    pub(super) fn add(&mut self, dy: MatRef, p: MatRef) -> Result<()> {
        if self.transposed {
            gemm_acc(&mut self.values, p, dy.t(), self.precision)
        } else {
            gemm_acc(&mut self.values, dy, p.t(), self.precision)
        }
    }

    /// The sum as `[C_out, C_in·k·k]`, row-major.
    pub(super) fn into_rows(self) -> Vec<f32> {
        if !self.transposed {
            return self.values;
        }
        let (cout, depth) = (self.cout, self.depth);
        let mut rows = vec![0f32; cout * depth];
        assert_eq!(self.values.len(), cout * depth, "a [depth, cout] sum");
        // SAFETY: `values` holds `depth` rows of `cout` values (checked above), `rows` the
        // `cout` rows of `depth` values written; separate buffers.
        unsafe {
            transpose(
                self.values.as_ptr(),
                cout,
                (depth, cout),
                rows.as_mut_ptr(),
                depth,
            )
        };
        rows
    }
}

/// Whether a `[cout, depth]` weight gradient is summed transposed (see [`WeightGradient`]):
/// in f32 on the `gemm` crate (OpenBLAS's sums depend on the orientation) when it has more
/// columns than rows, at least two rows, and more than 256 values. The crate sends a single
/// row or column to its matrix-vector kernels, and products of at most 256 values whose
/// operands both run along the inner dimension to its "horizontal" ones; the bits of those
/// depend on the orientation too.
pub(super) fn transposed_weight_gradient(cout: usize, depth: usize, precision: Precision) -> bool {
    precision == Precision::F32
        && depth > cout
        && cout >= 2
        && cout * depth > 256
        && f32_products_on_gemm_crate()
}
