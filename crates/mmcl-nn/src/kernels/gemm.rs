//! The one matrix product of the kernels: `gemm` (AVX-512 kernels where the CPU has them) over
//! strided views, with the bounds checks that make it safe to call.
//!
//! [`matmul`] is the safe entry point over slices; [`gemm_raw`] serves the attention kernel,
//! whose parallel tasks write disjoint column blocks of one shared buffer (which no `&mut`
//! slice can describe).

use candle_core::Result;
use rayon::prelude::*;

use crate::census::{self, ProductKey};
use crate::kernels::bf16::{Engine, Start, gemm_bf16};
use crate::kernels::finished::Finish;
use crate::kernels::{CHUNK, rows_per_task, simd};
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

    /// `rows` rows of `cols` values each, `row_stride` apart: a block of columns of a wider
    /// row-major matrix (its first element at the start of `data`).
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
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

/// The number of tasks a `gemm` crate parallelism setting asks for (`Rayon(0)`: rayon's pool).
pub(crate) fn threads_of(parallelism: gemm::Parallelism) -> usize {
    match parallelism {
        gemm::Parallelism::None => 1,
        gemm::Parallelism::Rayon(0) => rayon::current_num_threads(),
        gemm::Parallelism::Rayon(n) => n,
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
    let (m, n) = (lhs.rows, rhs.cols);
    if dst.len() != m * n {
        candle_core::bail!(
            "internal error: a [{m}, {n}] matrix product into {} values",
            dst.len()
        );
    }
    matmul_strided(dst, n, lhs, rhs, accumulate, parallelism, precision)
}

/// As [`matmul`], into `m` rows of `dst` that lie `dst_row_stride` values apart (a block of
/// columns of a wider row-major matrix, starting at `dst[0]`); the values between the rows
/// are left alone.
///
/// # Errors
/// As [`matmul`], and when the rows overlap or exceed `dst`.
pub(crate) fn matmul_strided(
    dst: &mut [f32],
    dst_row_stride: usize,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    parallelism: gemm::Parallelism,
    precision: Precision,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let dst_fits =
        m == 0 || n == 0 || (dst_row_stride >= n && (m - 1) * dst_row_stride + n <= dst.len());
    if rhs.rows != k || !dst_fits || !lhs.in_bounds() || !rhs.in_bounds() {
        candle_core::bail!(
            "internal error: inconsistent matrix product [{m}, {k}]·[{}, {n}] into {} values \
             with rows {dst_row_stride} apart",
            rhs.rows,
            dst.len()
        );
    }
    let product = RawProduct::of(lhs, rhs, dst.as_mut_ptr(), dst_row_stride);
    let start = if accumulate { Start::Dst } else { Start::Zero };
    // SAFETY: the views were checked to address only elements of their slices; the m rows of
    // n values, `dst_row_stride ≥ n` apart, lie inside `dst`, which, being a unique borrow,
    // aliases neither input.
    unsafe { gemm_raw_in(product, (1.0, start), parallelism, precision) };
    Ok(())
}

/// `x[M, K]·w[N, K]ᵀ + bias` (a linear layer with PyTorch's weight layout) as a new row-major
/// `[M, N]` matrix, multi-threaded, in the calling thread's [`matmul_precision`].
///
/// The bias starts the sums: the tile engine loads it into its accumulators, so the output is
/// written once instead of being zeroed, filled with the bias and read back.
///
/// # Errors
/// When the slices do not hold the shapes (a bug in the calling kernel).
pub(crate) fn linear_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
) -> Result<Vec<f32>> {
    if x.len() != m * k || w.len() != n * k || bias.is_some_and(|b| b.len() != n) {
        candle_core::bail!(
            "internal error: a [{m}, {k}]·[{k}, {n}] linear map from {}, {} and {:?} values",
            x.len(),
            w.len(),
            bias.map(<[f32]>::len)
        );
    }
    let (x, w) = (MatRef::rows(x, m, k), MatRef::rows(w, n, k));
    let start = bias.map_or(Start::Zero, Start::Bias);
    product_new(x, w.t(), start, gemm_parallelism(), matmul_precision())
}

/// `start + lhs·rhs` as a new row-major `[m, n]` matrix, written once: no engine reads the
/// destination of a product that starts from zero or from a bias, and each writes every value
/// of it, so the buffer is not zero-filled first (that pass over memory cost as much as a
/// third of a bf16 product's time at the encoder's shapes).
///
/// # Errors
/// When the shapes disagree or a view exceeds its slice (a bug in the calling kernel).
pub(crate) fn product_new(
    lhs: MatRef,
    rhs: MatRef,
    start: Start<'_>,
    parallelism: gemm::Parallelism,
    precision: Precision,
) -> Result<Vec<f32>> {
    let (m, _, n) = new_product_dims(lhs, rhs, start)?;
    let mut out = Vec::<f32>::with_capacity(m * n);
    let product = RawProduct::of(lhs, rhs, out.as_mut_ptr(), n);
    // SAFETY: the views were checked to address only elements of their slices; the output's
    // capacity holds the m·n values of a row-major [m, n], which a product from zero or from a
    // bias does not read before writing, and it aliases nothing.
    unsafe {
        gemm_raw_in(product, (1.0, start), parallelism, precision);
        // Every value was written (see above).
        out.set_len(m * n);
    }
    Ok(out)
}

/// `(m, k, n)` of a new product `start + lhs·rhs`, checked: the shapes agree, the views lie
/// inside their slices, and the product starts from zero or a bias of `n` values.
///
/// # Errors
/// Where they do not (a bug in the calling kernel).
pub(super) fn new_product_dims(
    lhs: MatRef,
    rhs: MatRef,
    start: Start<'_>,
) -> Result<(usize, usize, usize)> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let bias_fits = match start {
        Start::Zero => true,
        Start::Bias(bias) => bias.len() == n,
        Start::Dst => false,
    };
    if rhs.rows != k || !lhs.in_bounds() || !rhs.in_bounds() || !bias_fits {
        candle_core::bail!(
            "internal error: inconsistent new matrix product [{m}, {k}]·[{}, {n}] from {start:?}",
            rhs.rows
        );
    }
    Ok((m, k, n))
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
    let (dw, db) = linear_param_grads(g, a, (m, k, n))?;
    let (g_mat, w_mat) = (MatRef::rows(g, m, n), MatRef::rows(w, n, k));
    let da = product_new(
        g_mat,
        w_mat,
        Start::Zero,
        gemm_parallelism(),
        matmul_precision(),
    )?;
    Ok((dw, db, da))
}

/// The parameters' part of [`linear_grads`]: `(dW = gᵀ·a, db = Σ_rows g)`.
pub(crate) fn linear_param_grads(
    g: &[f32],
    a: &[f32],
    (m, k, n): (usize, usize, usize),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let dw = weight_gradient(g, a, (m, k, n), matmul_precision())?;
    Ok((dw, column_sums(g, n)))
}

/// Rows of the sum per thread below which a weight gradient stays one product.
const MIN_ROWS_PER_PART: usize = 1024;

/// `dW = gᵀ·a` (`g` `[M, N]`, `a` `[M, K]`): a sum over the M rows (tokens), usually many more
/// than the gradient's N·K entries. `gemm` parallelises a product over blocks of its output,
/// which leaves threads waiting on such a long, narrow sum (165–185 GFLOP/s on two Zen 4 cores
/// at the encoder's shapes, against 200–210 when each thread sums its own rows), so each thread
/// sums one contiguous range of rows on its own and the partial sums are added in range order:
/// the same thread count gives the same bits on every run, as in the convolutions.
fn weight_gradient(
    g: &[f32],
    a: &[f32],
    (m, k, n): (usize, usize, usize),
    precision: Precision,
) -> Result<Vec<f32>> {
    if g.len() != m * n || a.len() != m * k {
        candle_core::bail!(
            "internal error: a weight gradient over {m} rows from {} and {} values",
            g.len(),
            a.len()
        );
    }
    let parts = rayon::current_num_threads()
        .min(m / MIN_ROWS_PER_PART)
        .max(1);
    if parts == 1 || m < n.max(k) {
        let (g, a) = (MatRef::rows(g, m, n), MatRef::rows(a, m, k));
        return product_new(g.t(), a, Start::Zero, gemm_parallelism(), precision);
    }
    let rows = m.div_ceil(parts);
    let partials = (0..parts)
        .into_par_iter()
        .map(|part| {
            let (r0, r1) = (part * rows, ((part + 1) * rows).min(m));
            let g = MatRef::rows(&g[r0 * n..r1 * n], r1 - r0, n);
            let a = MatRef::rows(&a[r0 * k..r1 * k], r1 - r0, k);
            product_new(g.t(), a, Start::Zero, gemm::Parallelism::None, precision)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(sum_in_order(partials, n * k))
}

/// The element-wise sum of partial results of length `len`, added in the order given (so
/// that a fixed split gives the same bits however its tasks were scheduled). The additions run
/// in parallel over blocks of values: called from a candle operation's backward pass, they
/// would otherwise run on candle's thread alone while the other cores wait (1 % of the ResNet50
/// trunk's training step on two Zen 4 cores).
pub(crate) fn sum_in_order(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![0f32; len]);
    let rest: Vec<Vec<f32>> = partials.collect();
    if rest.is_empty() {
        return total;
    }
    total
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(block, acc)| {
            let start = block * CHUNK;
            for partial in &rest {
                // Every partial holds `len` values (its caller's product); one that does not
                // is left out rather than read past.
                if let Some(values) = partial.get(start..start + acc.len()) {
                    simd::add_rows(acc, values);
                }
            }
        });
    total
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
            simd::add_rows(&mut acc, chunk);
            acc
        })
        .collect();
    for block in &partial {
        simd::add_rows(&mut total, block);
    }
    total
}

/// One strided matrix product by raw pointers: `dst[m, n] (+)= lhs[m, k]·rhs[k, n]` with
/// `dims = (m, n, k)`, each operand given by its first element and (row, column) strides, `dst`
/// by rows of stride `dst_rs` and unit column stride. What every engine ([`gemm_raw`],
/// [`gemm_bf16`] and its packed driver) takes, so that one value travels between them.
#[derive(Clone, Copy)]
pub(crate) struct RawProduct {
    /// `(m, n, k)`.
    pub(crate) dims: (usize, usize, usize),
    /// The destination's first element.
    pub(crate) dst: *mut f32,
    /// The destination's row stride (≥ n).
    pub(crate) dst_rs: usize,
    /// The left operand's first element.
    pub(crate) lhs: *const f32,
    /// The left operand's (row, column) strides.
    pub(crate) lhs_strides: (usize, usize),
    /// The right operand's first element.
    pub(crate) rhs: *const f32,
    /// The right operand's (row, column) strides.
    pub(crate) rhs_strides: (usize, usize),
}

impl RawProduct {
    /// The product `lhs·rhs` of two views into the rows of `dst`, `dst_rs` values apart.
    pub(super) fn of(lhs: MatRef, rhs: MatRef, dst: *mut f32, dst_rs: usize) -> Self {
        Self {
            dims: (lhs.rows, rhs.cols, lhs.cols),
            dst,
            dst_rs,
            lhs: lhs.data.as_ptr(),
            lhs_strides: (lhs.row_stride, lhs.col_stride),
            rhs: rhs.data.as_ptr(),
            rhs_strides: (rhs.row_stride, rhs.col_stride),
        }
    }
}

/// A [`RawProduct`] shared by the parallel tasks of one product (the OpenBLAS and AVX2
/// engines split a product into blocks of its destination).
pub(crate) struct SharedProduct(pub(crate) RawProduct);

impl SharedProduct {
    /// The product (a method, so that closures capture the whole `Sync` wrapper).
    pub(crate) fn get(&self) -> RawProduct {
        self.0
    }
}

// SAFETY: the tasks of a split product only read the operands and each writes its own block of
// the destination, which the caller of the engine guarantees nothing else touches meanwhile.
unsafe impl Sync for SharedProduct {}

/// `dst[m, n] = start + beta · Σ_k lhs[m, k] · rhs[k, n]` for the [`RawProduct`] `product` in
/// `precision`: [`gemm_raw`] in f32; in bf16 [`gemm_bf16`] on the machine's best engine, its
/// f32 sums then scaled by `beta` (which must be 1 unless `start` is [`Start::Zero`]: no
/// caller scales a sum it adds).
///
/// # Safety
/// As [`gemm_raw`]; with [`Start::Bias`] the bias holds `n` values. With [`Start::Zero`] or
/// [`Start::Bias`] `dst` may be uninitialised: every engine writes each value before reading
/// it (`gemm` does not read a destination it is told not to, the tile and AVX-512 BF16 blocks
/// start from zeros or the bias, OpenBLAS's `beta = 0` ignores `C`).
pub(crate) unsafe fn gemm_raw_in(
    product: RawProduct,
    (beta, start): (f32, Start<'_>),
    parallelism: gemm::Parallelism,
    precision: Precision,
) {
    debug_assert!(
        beta == 1.0 || matches!(start, Start::Zero),
        "a scaled product is not added"
    );
    let started = census::start();
    if precision == Precision::F32 {
        // SAFETY: forwarded from the caller's contract.
        if !unsafe { on_avx2_engine(product, (beta, start), Finish::Sums, parallelism) } {
            let (m, n, _) = product.dims;
            // SAFETY: the destination's rows are the caller's.
            let accumulate = unsafe { start.into_dst(product.dst, (m, n), product.dst_rs) };
            // SAFETY: forwarded from the caller's contract.
            unsafe { gemm_raw(product, beta, accumulate, parallelism) };
        }
    } else {
        // SAFETY: forwarded from the caller's contract.
        unsafe { gemm_bf16(Engine::best(), product, start, parallelism) };
        let (m, n, _) = product.dims;
        if beta != 1.0 && n > 0 {
            for r in 0..m {
                // SAFETY: row r of the destination holds n valid elements that this call owns
                // (caller's contract), and no reference to them is alive.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(product.dst.add(r * product.dst_rs), n)
                };
                row.iter_mut().for_each(|x| *x *= beta);
            }
        }
    }
    record(started, &product, precision.as_str(), parallelism);
}

/// Counts a finished product in the census (`mmcl_nn::census`).
pub(super) fn record(
    started: Option<std::time::Instant>,
    product: &RawProduct,
    kernel: &'static str,
    parallelism: gemm::Parallelism,
) {
    census::record(started, || ProductKey {
        kernel,
        dims: product.dims,
        lhs_strides: product.lhs_strides,
        rhs_strides: product.rhs_strides,
        threads: threads_of(parallelism),
    });
}

/// Runs the f32 `product` from `start` on the AVX2 engine, finished as `finish` says, if that
/// engine takes it (a CPU with AVX2 and no AVX-512, a product large enough, OpenBLAS not
/// chosen); `false`, nothing written, otherwise.
///
/// # Safety
/// As [`gemm_raw_in`], and as [`super::avx2_gemm::sgemm`] for the matrices of `finish`.
pub(super) unsafe fn on_avx2_engine(
    product: RawProduct,
    (beta, start): (f32, Start<'_>),
    finish: Finish<'_>,
    parallelism: gemm::Parallelism,
) -> bool {
    #[cfg(feature = "openblas")]
    if super::blas::enabled() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx2_gemm::enabled() && super::avx2_gemm::worth_it(&product) {
        let threads = threads_of(parallelism);
        // SAFETY: forwarded from the caller's contract; the CPU has AVX2 and FMA (`enabled`).
        return unsafe { super::avx2_gemm::sgemm(product, beta, start, threads, finish) };
    }
    let _ = (product, beta, start, finish, parallelism);
    false
}

/// Whether [`gemm_raw`] runs the f32 products on the `gemm` crate, or for some on the AVX2
/// engine (not on OpenBLAS, the optional engine): callers that rely on a product and its
/// transpose giving the same bits ask. Both sum each value as one chain along the inner
/// dimension, and the AVX2 engine takes a product exactly when it takes its transpose.
pub(crate) fn f32_products_on_gemm_crate() -> bool {
    #[cfg(feature = "openblas")]
    {
        !super::blas::enabled()
    }
    #[cfg(not(feature = "openblas"))]
    {
        true
    }
}

/// `dst[m, n] = beta · Σ_k lhs[m, k] · rhs[k, n]` (plus `dst` if `accumulate`) for the
/// [`RawProduct`] `product`.
///
/// # Safety
/// Every element addressed through the pointers and strides must be valid, and `dst` must not
/// alias the inputs or be written concurrently by another task.
pub(crate) unsafe fn gemm_raw(
    product: RawProduct,
    beta: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let RawProduct {
        dims: (m, n, k),
        dst,
        dst_rs,
        lhs,
        lhs_strides: (lhs_rs, lhs_cs),
        rhs,
        rhs_strides: (rhs_rs, rhs_cs),
    } = product;
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
    #[cfg(feature = "openblas")]
    if super::blas::enabled() {
        let threads = threads_of(parallelism);
        // SAFETY: forwarded from the caller's contract.
        if unsafe { super::blas::sgemm(product, beta, accumulate, threads) } {
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx2_gemm::enabled() && super::avx2_gemm::worth_it(&product) {
        let threads = threads_of(parallelism);
        let start = if accumulate { Start::Dst } else { Start::Zero };
        // SAFETY: forwarded from the caller's contract; the CPU has AVX2 and FMA (`enabled`).
        if unsafe { super::avx2_gemm::sgemm(product, beta, start, threads, Finish::Sums) } {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel blocks add each value's partials in the order given: the bits of one
    /// sequential pass, over several blocks and a short last one.
    #[test]
    fn partials_are_summed_in_order() {
        let len = 2 * CHUNK + 123;
        let partials: Vec<Vec<f32>> = (0..3)
            .map(|p| {
                (0..len)
                    .map(|i| ((i * 7919 + p * 104_729) % 1013) as f32 / 7.0 - 70.0)
                    .collect()
            })
            .collect();
        let mut expected = partials[0].clone();
        for partial in &partials[1..] {
            for (e, &v) in expected.iter_mut().zip(partial) {
                *e += v;
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&sum_in_order(partials, len)), bits(&expected));
        assert_eq!(sum_in_order(Vec::new(), 3), vec![0.0; 3]);
    }
}
