//! The one matrix product of the kernels: `gemm` (AVX-512 kernels where the CPU has them) over
//! strided views, with the bounds checks that make it safe to call.
//!
//! [`matmul`] is the safe entry point over slices; [`gemm_raw`] serves the attention kernel,
//! whose parallel tasks write disjoint column blocks of one shared buffer (which no `&mut`
//! slice can describe).

use candle_core::Result;
use rayon::prelude::*;

use crate::kernels::bf16::{Engine, gemm_bf16};
use crate::kernels::rows_per_task;
use crate::precision::{Precision, matmul_precision};

/// A read-only strided matrix view: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (a view, nothing moves).
    pub(crate) fn t(self) -> Self {
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

/// Threads to give one large matrix product (rayon's pool size).
pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, `dst` row-major with exactly `m·n` values; with
/// `accumulate` the product is added to `dst`, otherwise it replaces it. With
/// [`Precision::Bf16`] the operands are rounded to bf16 and the products summed in f32.
///
/// # Errors
/// When the shapes disagree or a view exceeds its slice (a bug in the calling kernel: every
/// caller derives the shapes from the same tensors).
pub(crate) fn matmul(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    parallelism: gemm::Parallelism,
    precision: Precision,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || dst.len() != m * n || !lhs.in_bounds() || !rhs.in_bounds() {
        candle_core::bail!(
            "internal error: inconsistent matrix product [{m}, {k}]·[{}, {n}] into {} values",
            rhs.rows,
            dst.len()
        );
    }
    let (lhs_strides, rhs_strides) = (
        (lhs.row_stride, lhs.col_stride),
        (rhs.row_stride, rhs.col_stride),
    );
    if precision == Precision::Bf16 {
        // SAFETY: as below.
        unsafe {
            gemm_bf16(
                Engine::best(),
                (m, n, k),
                dst.as_mut_ptr(),
                n,
                lhs.data.as_ptr(),
                lhs_strides,
                rhs.data.as_ptr(),
                rhs_strides,
                accumulate,
                parallelism,
            )
        };
        return Ok(());
    }
    // SAFETY: the views were checked to address only elements of their slices, `dst` holds
    // exactly m·n elements in rows of n and, being a unique borrow, aliases neither input.
    unsafe {
        gemm_raw(
            (m, n, k),
            dst.as_mut_ptr(),
            n,
            lhs.data.as_ptr(),
            lhs_strides,
            rhs.data.as_ptr(),
            rhs_strides,
            1.0,
            accumulate,
            parallelism,
        );
    }
    Ok(())
}

/// `dst[M, N] (+)= x[M, K] · w[N, K]ᵀ` over row-major slices (a linear layer with PyTorch's
/// weight layout), multi-threaded, in the calling thread's [`matmul_precision`]; with
/// `accumulate`, `dst` already holds the bias rows.
pub(crate) fn gemm_xwt(
    x: &[f32],
    w: &[f32],
    dst: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) -> Result<()> {
    let (x, w) = (MatRef::rows(x, m, k), MatRef::rows(w, n, k));
    matmul(
        dst,
        x,
        w.t(),
        accumulate,
        gemm_parallelism(),
        matmul_precision(),
    )
}

/// The gradients of a linear map `y = a·Wᵀ + b` (`a` `[M, K]`, `W` `[N, K]`) for the upstream
/// gradient `g` `[M, N]`: `(dW = gᵀ·a, db = Σ_rows g, da = g·W)`, in the calling thread's
/// [`matmul_precision`].
pub(crate) fn linear_grads(
    g: &[f32],
    a: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let precision = matmul_precision();
    let g_mat = MatRef::rows(g, m, n);
    let mut dw = vec![0f32; n * k];
    matmul(
        &mut dw,
        g_mat.t(),
        MatRef::rows(a, m, k),
        false,
        gemm_parallelism(),
        precision,
    )?;
    let db = column_sums(g, n);
    let mut da = vec![0f32; m * k];
    matmul(
        &mut da,
        g_mat,
        MatRef::rows(w, n, k),
        false,
        gemm_parallelism(),
        precision,
    )?;
    Ok((dw, db, da))
}

/// Column sums of a row-major matrix of width `w` (bias gradients), in parallel and
/// deterministic: each task sums a fixed block of rows and the blocks' sums are added in
/// order, so the result does not depend on how the tasks were scheduled.
pub(crate) fn column_sums(x: &[f32], w: usize) -> Vec<f32> {
    let mut total = vec![0f32; w];
    if w == 0 {
        return total;
    }
    let step = rows_per_task(w) * w;
    let partial: Vec<Vec<f32>> = x
        .par_chunks(step)
        .map(|chunk| {
            let mut acc = vec![0f32; w];
            for row in chunk.chunks_exact(w) {
                acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            acc
        })
        .collect();
    for block in &partial {
        total.iter_mut().zip(block).for_each(|(t, &v)| *t += v);
    }
    total
}

/// `dst[m, n] = beta · Σ_k lhs[m, k] · rhs[k, n]` (plus `dst` if `accumulate`) for views given
/// by (row, column) strides; `dst` has rows of stride `dst_rs` and unit column stride.
///
/// # Safety
/// Every element addressed through the pointers and strides must be valid, and `dst` must not
/// alias the inputs or be written concurrently by another task.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: nothing to add, or zeros to write.
        if !accumulate {
            for r in 0..m {
                // SAFETY: row r of the destination holds n valid elements (caller's contract).
                unsafe { std::ptr::write_bytes(dst.add(r * dst_rs), 0, n) };
            }
        }
        return;
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}
