//! Matrix products finished in the tiles that compute them: an activation or its gradient
//! applied to each block of sums while it is in the cache, instead of a pass over the whole
//! output afterwards (the AVX2 engine's tiles; other engines run the product and the pass).

use candle_core::Result;

use super::SharedMut;
use super::bf16::Start;
use super::gemm::{MatRef, RawProduct, gemm_parallelism, new_product_dims, on_avx2_engine, record};
use crate::census;
use crate::precision::{Precision, matmul_precision};

/// What a product does with its finished sums, where its engine can fuse that into the tiles
/// that hold them (the AVX2 engine; see [`product_new_finished`]).
#[derive(Clone, Copy)]
pub(crate) enum Finish<'a> {
    /// Stores them.
    Sums,
    /// Stores `gelu(sums + bias)`, the bias (`n` values) added to each row after the sums, as
    /// [`crate::ops::bias_gelu`] adds it to a product's output.
    BiasGelu { bias: &'a [f32] },
    /// Stores their exact GELU, and the sums themselves into `pre` when given (a matrix of the
    /// destination's shape and row stride): a linear layer and the activation after it.
    Gelu {
        pre: Option<SharedMut>,
        /// Fused multiply-adds in the formula ([`crate::kernels::simd::fused_arithmetic`]).
        fused: bool,
    },
    /// Stores the sums times the GELU's derivative at the values of `pre` (read only; the
    /// destination's shape and row stride): the gradient through an activation from the
    /// gradient after the linear layer that follows it.
    GeluGrad {
        pre: SharedMut,
        /// As for [`Finish::Gelu`].
        fused: bool,
    },
}

impl Finish<'_> {
    /// Whether the sums are only stored.
    pub(crate) fn is_sums(&self) -> bool {
        matches!(self, Finish::Sums)
    }
}

/// What [`product_new_finished`] does with the finished sums, with its matrices.
pub(crate) enum FinishInto<'a> {
    /// `gelu(sums + bias)` ([`Finish::BiasGelu`]).
    BiasGelu { bias: &'a [f32] },
    /// The exact GELU of the sums; the sums themselves into `pre` (its values replaced by the
    /// `m·n` of the product) when given.
    Gelu {
        pre: Option<&'a mut Vec<f32>>,
        /// Fused multiply-adds in the formula ([`crate::kernels::simd::fused_arithmetic`]).
        fused: bool,
    },
    /// The sums times the GELU's derivative at `pre` (`m·n` values, row-major).
    GeluGrad {
        pre: &'a [f32],
        /// As for [`FinishInto::Gelu`].
        fused: bool,
    },
}

/// As [`product_new`] in f32, the sums finished by `finish` in the engine's tiles while they
/// are in registers (no pass over the output afterwards), when the calling thread's
/// [`matmul_precision`] is f32 and the AVX2 engine takes the product; `None`, nothing
/// computed, otherwise: the caller then runs the product and its finish apart.
///
/// # Errors
/// When the shapes disagree, a view exceeds its slice, or `finish`'s matrix to read does not
/// hold `m·n` values (a bug in the calling kernel).
pub(crate) fn product_new_finished(
    lhs: MatRef,
    rhs: MatRef,
    start: Start<'_>,
    finish: FinishInto<'_>,
) -> Result<Option<Vec<f32>>> {
    let (m, k, n) = new_product_dims(lhs, rhs, start)?;
    let read_fits = match &finish {
        FinishInto::Gelu { .. } => true,
        FinishInto::BiasGelu { bias } => bias.len() == n,
        FinishInto::GeluGrad { pre, .. } => pre.len() == m * n,
    };
    if !read_fits {
        candle_core::bail!(
            "internal error: a finished matrix product [{m}, {k}]·[{k}, {n}] with a matrix or \
             bias of another size"
        );
    }
    if matmul_precision() != Precision::F32 || m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    let parallelism = gemm_parallelism();
    let mut out = Vec::<f32>::with_capacity(m * n);
    let product = RawProduct::of(lhs, rhs, out.as_mut_ptr(), n);
    let (finish, kept) = match finish {
        FinishInto::Gelu {
            pre: Some(pre),
            fused,
        } => {
            pre.clear();
            pre.reserve(m * n);
            let at = SharedMut(pre.as_mut_ptr());
            (
                Finish::Gelu {
                    pre: Some(at),
                    fused,
                },
                Some(pre),
            )
        }
        FinishInto::Gelu { pre: None, fused } => (Finish::Gelu { pre: None, fused }, None),
        FinishInto::BiasGelu { bias } => (Finish::BiasGelu { bias }, None),
        FinishInto::GeluGrad { pre, fused } => {
            let pre = SharedMut(pre.as_ptr().cast_mut());
            (Finish::GeluGrad { pre, fused }, None)
        }
    };
    let started = census::start();
    // SAFETY: the views were checked to address only elements of their slices; the output's
    // capacity, and that of a kept pre-activation, holds the m·n values of a row-major [m, n],
    // which the engine writes without reading first (it starts from zero or the bias); they
    // alias nothing else; a matrix read holds m·n values (checked).
    if !unsafe { on_avx2_engine(product, (1.0, start), finish, parallelism) } {
        return Ok(None);
    }
    record(started, &product, "f32", parallelism);
    // SAFETY: every value of both was written (see above).
    unsafe {
        out.set_len(m * n);
        if let Some(pre) = kept {
            pre.set_len(m * n);
        }
    }
    Ok(Some(out))
}
