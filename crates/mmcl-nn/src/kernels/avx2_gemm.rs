//! The f32 matrix products on CPUs with AVX2 and FMA but without AVX-512 (AMD Zen 2 and 3,
//! Intel before Skylake-X): both operands packed, a 6 × 16 register tile.
//!
//! Hand-written because the `gemm` crate's AVX2 kernel reads its right operand in place, with
//! a strided broadcast per row of the tile, and ran the encoder's products at 72–80 GFLOP/s a
//! thread on a Zen 3 whose FMA peak is 102 (OpenBLAS's packed kernel 89 on one thread at the
//! encoder's `fc1` shape); on AVX-512 CPUs the crate's wider kernel reaches 88–98 % of the peak
//! and keeps the products.
//!
//! The layout is the classic one of BLIS and OpenBLAS: for each block of [`NC`] columns and
//! [`KC`] inner steps, the right operand is packed into panels of [`NR`] columns, `KC × NR`
//! contiguous values that stay in L1 while a packed block of [`MC`] rows of the left operand
//! (in panels of [`MR`] rows, from L2) streams past it; each register tile holds `MR × NR`
//! sums in twelve vectors.
//!
//! Every output value is one chain of fused multiply-adds along the inner dimension in order,
//! continued through the destination from one block of [`KC`] to the next, so a product and
//! its transpose give the same bits (the weight gradients rely on it:
//! `conv::weight_gradient`), and so do the thread count and the split of the work. A scale
//! other than 1 multiplies the finished chain.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::SharedMut;
use super::gemm::{RawProduct, SharedProduct};

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile (two vectors of 8).
const NR: usize = 16;
/// The most inner steps per packed block: a right panel of `KC × NR` values (24 KiB) stays in
/// a 32 KiB L1. The inner dimension is cut into equal blocks of at most this many, because
/// every block past the first reads and writes the whole destination once more (the encoder's
/// `fc1` output is 118 MB at batch 64): 384 steps, the encoder's width, in one block.
const KC: usize = 384;
/// Rows per packed block of the left operand: `MC × KC` values (216 KiB) stay in a Zen 3's
/// 512 KiB L2 beside the right panel's traffic.
const MC: usize = 144;
/// Columns per packed block of the right operand: `KC × NC` values (4 MiB) in L3.
const NC: usize = 4096;
/// Products with fewer multiply-adds stay on the `gemm` crate: the attention's per-head
/// products (`301 × 301 × 64`, 5.8 M) ran 10 % slower here, packing both operands afresh for
/// each head.
const MIN_WORK: usize = 1 << 24;
/// Products whose output has fewer rows or columns than this stay on the `gemm` crate: each
/// operand is packed once and reused `n` (left) or `m` (right) times, and the `gemm` crate
/// reads its right operand in place. A convolution's patch matrix, used by only 64 output
/// channels in ResNet50's layer1, cost a quarter of its product's time to pack (layer1's 3×3
/// convolution ran 15–20 % slower here).
const MIN_SIDE: usize = 256;
/// Products with shorter sums stay on the `gemm` crate: each tile then stores its sums after
/// few steps, and layer1's pointwise expansion (64 inner steps) ran 15 % slower here.
const MIN_DEPTH: usize = 128;
/// Products with longer sums than one packed block ([`KC`]) stay on the `gemm` crate: in the
/// MAE step those (the weight gradients over 1920–4816 tokens, `fc2` and the input gradients
/// through `fc1`, 1024–4816 steps) ran 5–10 % slower here, the same step's one-block products
/// 2–17 % faster.
const MAX_DEPTH: usize = KC;
/// Products with fewer multiply-adds run on the calling thread alone.
const PARALLEL_WORK: usize = 1 << 21;

/// Whether the products run here: AVX2 and FMA without AVX-512 F, and `MMCL_AVX2_GEMM` not
/// `0`; decided once.
pub(crate) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        if std::env::var("MMCL_AVX2_GEMM").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        supported()
    })
}

/// Whether the CPU has what the kernel needs and lacks the AVX-512 that the `gemm` crate uses
/// better.
fn supported() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx2") && has!("fma") && !has!("avx512f")
}

/// Whether `product` is large enough to run here (a condition symmetric in `m` and `n`, so
/// that a product and its transpose take the same engine: see the module's note on bits).
pub(crate) fn worth_it(product: &RawProduct) -> bool {
    let (m, n, k) = product.dims;
    m.min(n) >= MIN_SIDE
        && (MIN_DEPTH..=MAX_DEPTH).contains(&k)
        && m.saturating_mul(n).saturating_mul(k) >= MIN_WORK
}

thread_local! {
    /// Each thread's packed left block, reused across products.
    static LEFT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's packed right block.
    static RIGHT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer in `cell`, at least `len` values long; on a fresh one when
/// the thread's is in use (a task that rayon ran on this thread while it waited inside
/// another product).
fn with_buffer<R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    cell.with(|buffer| match buffer.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            f(&mut buffer[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// `dst[m, n] = beta · Σ_k lhs[m, k]·rhs[k, n]`, plus `dst` if `accumulate`, split over
/// `threads` rayon tasks when large; `false` (nothing written) for a scaled sum added to the
/// destination, which no caller asks for.
///
/// # Safety
/// As [`super::gemm::gemm_raw`]; the CPU has AVX2 and FMA ([`enabled`]); `m, n, k > 0`.
pub(crate) unsafe fn sgemm(
    product: RawProduct,
    beta: f32,
    accumulate: bool,
    threads: usize,
) -> bool {
    if accumulate && beta != 1.0 {
        return false;
    }
    let (m, n, k) = product.dims;
    let threads = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_WORK {
        1
    } else {
        threads.max(1)
    };
    let shared = SharedProduct(product);
    let steps = k.div_ceil(k.div_ceil(KC));
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(steps) {
            let kc = steps.min(k - p0);
            let block = Block {
                j0,
                nc,
                p0,
                kc,
                load: accumulate || p0 > 0,
                scale: (p0 + kc == k && beta != 1.0).then_some(beta),
            };
            let panels = nc.div_ceil(NR);
            with_buffer(&RIGHT, panels * kc * NR, |right| {
                // SAFETY: the operand's elements are valid (caller's contract).
                unsafe { pack_right(&shared, &block, right, threads) };
                // SAFETY: as above; the CPU has AVX2 and FMA.
                unsafe { multiply_block(&shared, &block, right, threads) };
            });
        }
    }
    true
}

/// One block of columns and inner steps of a product.
struct Block {
    /// First column and columns.
    j0: usize,
    nc: usize,
    /// First inner step and steps.
    p0: usize,
    kc: usize,
    /// Whether the tiles continue the sums in the destination (not the first inner block, or
    /// a product added to the destination).
    load: bool,
    /// The scale of the finished sums, in the last inner block of a scaled product.
    scale: Option<f32>,
}

/// Packs the block's right operand into `right`: panel `q` holds columns `j0 + NR·q ..` as
/// `kc` rows of [`NR`] values, columns past the block zero.
///
/// # Safety
/// The operand's elements are valid.
unsafe fn pack_right(shared: &SharedProduct, block: &Block, right: &mut [f32], threads: usize) {
    let pack = |(q, panel): (usize, &mut [f32])| {
        let p = shared.get();
        let (rs, cs) = p.rhs_strides;
        let cols = NR.min(block.nc - q * NR);
        // SAFETY: row p0 and column j0 + NR·q of the operand (caller's contract).
        let corner = unsafe { p.rhs.add(block.p0 * rs + (block.j0 + q * NR) * cs) };
        if cols < NR {
            panel.fill(0.0);
        }
        if cs == 1 {
            for (step, row) in panel.chunks_exact_mut(NR).enumerate() {
                // SAFETY: `cols` consecutive values of row p0 + step < k (caller's contract).
                let from = unsafe { std::slice::from_raw_parts(corner.add(step * rs), cols) };
                row[..cols].copy_from_slice(from);
            }
        } else {
            // Column by column: a transposed operand (`rs == 1`) is then read in order.
            for j in 0..cols {
                for (step, v) in panel.iter_mut().skip(j).step_by(NR).enumerate() {
                    // SAFETY: row p0 + step < k, column j0 + NR·q + j < n (caller's contract).
                    *v = unsafe { *corner.add(step * rs + j * cs) };
                }
            }
        }
    };
    if threads > 1 {
        right
            .par_chunks_mut(block.kc * NR)
            .enumerate()
            .for_each(pack);
    } else {
        right.chunks_mut(block.kc * NR).enumerate().for_each(pack);
    }
}

/// Packs rows `i0 .. i0 + rows` of the block's left operand into `left`: panel `q` holds rows
/// `i0 + MR·q ..` as `kc` groups of [`MR`] values, rows past the block zero.
///
/// # Safety
/// The operand's elements are valid.
unsafe fn pack_left(p: &RawProduct, block: &Block, (i0, rows): (usize, usize), left: &mut [f32]) {
    let (rs, cs) = p.lhs_strides;
    for (q, panel) in left.chunks_exact_mut(block.kc * MR).enumerate() {
        let valid = MR.min(rows - q * MR);
        if valid < MR {
            panel.fill(0.0);
        }
        // SAFETY: row i0 + MR·q and column p0 of the operand (caller's contract).
        let corner = unsafe { p.lhs.add((i0 + q * MR) * rs + block.p0 * cs) };
        if cs == 1 {
            // Row by row, each read in order.
            for r in 0..valid {
                for (step, v) in panel.iter_mut().skip(r).step_by(MR).enumerate() {
                    // SAFETY: row i0 + MR·q + r < m, column p0 + step < k (caller's contract).
                    *v = unsafe { *corner.add(r * rs + step) };
                }
            }
        } else {
            // Step by step: a transposed operand (`rs == 1`) gives each step's rows in order.
            for (step, group) in panel.chunks_exact_mut(MR).enumerate() {
                for (r, v) in group[..valid].iter_mut().enumerate() {
                    // SAFETY: as above.
                    *v = unsafe { *corner.add(r * rs + step * cs) };
                }
            }
        }
    }
}

/// All tiles of the block: tasks over blocks of [`MC`] rows (and, when those are fewer than
/// the threads, ranges of column panels), each packing its rows of the left operand.
///
/// # Safety
/// As [`sgemm`]; `right` holds the block's packed right operand.
unsafe fn multiply_block(shared: &SharedProduct, block: &Block, right: &[f32], threads: usize) {
    let (m, _, _) = shared.get().dims;
    let row_blocks = m.div_ceil(MC);
    let panels = block.nc.div_ceil(NR);
    let column_parts = if threads > 1 && row_blocks < 2 * threads {
        (2 * threads).div_ceil(row_blocks).min(panels)
    } else {
        1
    };
    let per_part = panels.div_ceil(column_parts);
    let task = |t: usize| {
        let (rb, part) = (t / column_parts, t % column_parts);
        let (i0, rows) = (rb * MC, MC.min(m - rb * MC));
        let first = part * per_part;
        let columns = first..(first + per_part).min(panels);
        if columns.is_empty() {
            return;
        }
        let p = shared.get();
        with_buffer(&LEFT, rows.div_ceil(MR) * block.kc * MR, |left| {
            // SAFETY: rows i0 .. i0 + rows of the operand (caller's contract).
            unsafe { pack_left(&p, block, (i0, rows), left) };
            // SAFETY: this task alone writes these rows and column panels of the destination.
            unsafe { tiles(&p, block, (i0, rows), columns, left, right) };
        });
    };
    let tasks = row_blocks * column_parts;
    if threads > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// The tiles of rows `i0 .. i0 + rows` and column panels `columns` of the block.
///
/// # Safety
/// The destination's tiles are valid and written by no other task; `left` and `right` hold
/// the packed rows and the block's packed panels; the CPU has AVX2 and FMA.
unsafe fn tiles(
    p: &RawProduct,
    block: &Block,
    (i0, rows): (usize, usize),
    columns: std::ops::Range<usize>,
    left: &[f32],
    right: &[f32],
) {
    let dst = SharedMut(p.dst);
    for q in columns {
        let b = &right[q * block.kc * NR..(q + 1) * block.kc * NR];
        let j = block.j0 + q * NR;
        let cols = NR.min(block.j0 + block.nc - j);
        let row_panels = rows.div_ceil(MR);
        for (r, a) in left.chunks_exact(block.kc * MR).enumerate() {
            let i = i0 + r * MR;
            let tile_rows = MR.min(i0 + rows - i);
            // SAFETY: element (i, j) of the destination, inside it (caller's contract).
            let c = unsafe { dst.get().add(i * p.dst_rs + j) };
            if r + 1 < row_panels {
                // The next tile's rows, fetched while this one computes: a tile that continues
                // its sums (or stores them) would otherwise wait on the destination's lines.
                let next_rows = MR.min(i0 + rows - i - MR);
                for rr in 0..next_rows {
                    let row = c.wrapping_add((MR + rr) * p.dst_rs);
                    prefetch(row);
                    prefetch(row.wrapping_add(NR - 1));
                }
            }
            if tile_rows == MR && cols == NR {
                // SAFETY: a whole tile of the destination; the CPU has AVX2 and FMA.
                unsafe { tile(block, a, b, c, p.dst_rs) };
            } else {
                // An edge tile: through a whole tile of scratch, its missing rows and
                // columns zero (they multiply the packed operands' zero padding).
                let mut scratch = [0f32; MR * NR];
                if block.load {
                    for rr in 0..tile_rows {
                        // SAFETY: valid rows and columns of the destination.
                        let from =
                            unsafe { std::slice::from_raw_parts(c.add(rr * p.dst_rs), cols) };
                        scratch[rr * NR..rr * NR + cols].copy_from_slice(from);
                    }
                }
                // SAFETY: the scratch tile has NR columns; the CPU has AVX2 and FMA.
                unsafe { tile(block, a, b, scratch.as_mut_ptr(), NR) };
                for rr in 0..tile_rows {
                    // SAFETY: valid rows and columns of the destination, this task's.
                    let to = unsafe { std::slice::from_raw_parts_mut(c.add(rr * p.dst_rs), cols) };
                    to.copy_from_slice(&scratch[rr * NR..rr * NR + cols]);
                }
            }
        }
    }
}

/// Asks for the cache line of `at` (any address: a prefetch does not fault).
#[inline(always)]
fn prefetch(at: *const f32) {
    // SAFETY: a prefetch reads nothing architecturally and does not fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>())
    };
}

/// One `MR × NR` tile: `c` (`MR` rows `ldc` apart) continues (`block.load`) or starts its
/// chains over the block's `kc` steps of the packed panels `a` and `b`.
///
/// # Safety
/// `c` addresses `MR` rows of `NR` valid values; `a` and `b` hold `kc` steps; the CPU has
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(block: &Block, a: &[f32], b: &[f32], c: *mut f32, ldc: usize) {
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let kc = block.kc;
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    let mut acc: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
    if block.load {
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r of the tile (caller's contract).
            unsafe {
                row[0] = _mm256_loadu_ps(c.add(r * ldc));
                row[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
            }
        }
    }
    for (a, b) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * NR].chunks_exact(NR))
    {
        // SAFETY: `b` holds NR = 16 values.
        let (b0, b1) = unsafe {
            (
                _mm256_loadu_ps(b.as_ptr()),
                _mm256_loadu_ps(b.as_ptr().add(8)),
            )
        };
        for (row, x) in acc.iter_mut().zip(a) {
            let x = _mm256_broadcast_ss(x);
            row[0] = _mm256_fmadd_ps(x, b0, row[0]);
            row[1] = _mm256_fmadd_ps(x, b1, row[1]);
        }
    }
    if let Some(scale) = block.scale {
        let scale = _mm256_set1_ps(scale);
        for row in acc.iter_mut() {
            row[0] = _mm256_mul_ps(row[0], scale);
            row[1] = _mm256_mul_ps(row[1], scale);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r of the tile (caller's contract).
        unsafe {
            _mm256_storeu_ps(c.add(r * ldc), row[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::threads_of;
    use crate::kernels::test_support::{
        Layout, check_fresh_output_scaled, check_products, matrix, row_major_product,
    };

    fn has_avx2_fma() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Whole tiles, edges in both dimensions, sums over more than one packed block, a column
    /// block past [`NC`], and products large enough to be split over tasks by rows and, with
    /// few rows, by columns.
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (12, 32, 40),
        (37, 21, 300),
        (5, 70, 513),
        (150, 45, 800),
        (2, 4200, 9),
        (301, 400, 384),
    ];

    #[test]
    fn products_equal_their_definition_in_every_layout() {
        if !has_avx2_fma() {
            return;
        }
        check_products("avx2", &SHAPES, &Layout::ALL, |p, par, accumulate| {
            // SAFETY: `check_product` hands out views inside its buffers; the CPU has AVX2 and
            // FMA.
            let done = unsafe { sgemm(p, 1.0, accumulate, threads_of(par)) };
            assert!(done, "an unscaled product runs here");
        });
    }

    /// A new output is written, never read, and the scale multiplies the finished sums, over
    /// two packed blocks; a scaled sum added to the destination is declined, untouched.
    #[test]
    fn fresh_outputs_are_overwritten_and_scaled() {
        if !has_avx2_fma() {
            return;
        }
        let dims = (40, 30, 2 * KC + 5);
        // SAFETY: the helper hands out views inside its buffers; the CPU has AVX2 and FMA.
        check_fresh_output_scaled(dims, |p, scale| unsafe { sgemm(p, scale, false, 2) });
        let (m, n, k) = dims;
        let (a, b) = (matrix(m * k, 4), matrix(k * n, 5));
        let mut dst = vec![7f32; m * n];
        let product = row_major_product(&mut dst, &a, &b, dims);
        // SAFETY: as above.
        assert!(!unsafe { sgemm(product, 0.5, true, 2) });
        assert!(
            dst.iter().all(|&v| v == 7.0),
            "a declined product writes nothing"
        );
    }

    /// Each value is one chain along the inner dimension: the transposed product, and any
    /// thread count, give the same bits; and the engine takes a product exactly when it takes
    /// its transpose.
    #[test]
    fn bits_do_not_depend_on_orientation_or_threads() {
        if !has_avx2_fma() {
            return;
        }
        let (m, n, k) = (130, 75, 700);
        let (lhs, rhs) = (matrix(m * k, 3), matrix(k * n, 4));
        let run = |transposed: bool, threads: usize| {
            let mut dst = vec![0f32; m * n];
            let product = if transposed {
                // Cᵀ[n, m] = rhsᵀ·lhsᵀ, read back transposed.
                RawProduct {
                    dims: (n, m, k),
                    dst: dst.as_mut_ptr(),
                    dst_rs: m,
                    lhs: rhs.as_ptr(),
                    lhs_strides: (1, n),
                    rhs: lhs.as_ptr(),
                    rhs_strides: (1, k),
                }
            } else {
                row_major_product(&mut dst, &lhs, &rhs, (m, n, k))
            };
            // SAFETY: the views address their vectors; the CPU has AVX2 and FMA.
            assert!(unsafe { sgemm(product, 1.0, false, threads) });
            let value = |i: usize, j: usize| {
                if transposed {
                    dst[j * m + i]
                } else {
                    dst[i * n + j]
                }
            };
            (0..m * n)
                .map(|x| value(x / n, x % n).to_bits())
                .collect::<Vec<_>>()
        };
        let reference = run(false, 1);
        assert_eq!(run(false, 2), reference);
        assert_eq!(run(true, 1), reference);
        assert_eq!(run(true, 2), reference);
        for dims in [
            (19264, 384, 384),
            (256, 4096, 128),
            (300, 255, 384),
            (512, 512, 385),
        ] {
            let (m, n, k) = dims;
            let product = |dims| RawProduct {
                dims,
                dst: std::ptr::null_mut(),
                dst_rs: 0,
                lhs: std::ptr::null(),
                lhs_strides: (0, 0),
                rhs: std::ptr::null(),
                rhs_strides: (0, 0),
            };
            assert_eq!(worth_it(&product((m, n, k))), worth_it(&product((n, m, k))));
        }
    }
}
