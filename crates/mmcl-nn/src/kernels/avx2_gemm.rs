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

    fn has_avx2_fma() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Deterministic values in about [−1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// An operand's values and (row, column) strides.
    type Operand = (Vec<f32>, (usize, usize));

    /// One product case: `[m, k]·[k, n]`, either operand stored transposed, the destination's
    /// rows `pad` values wider than `n`.
    struct Case {
        dims: (usize, usize, usize),
        lhs_t: bool,
        rhs_t: bool,
        pad: usize,
    }

    impl Case {
        /// The two operands' values and (row, column) strides.
        fn operands(&self, seed: u64) -> (Operand, Operand) {
            let (m, n, k) = self.dims;
            let lhs = values(m * k, seed);
            let rhs = values(k * n, seed + 1);
            let lhs_strides = if self.lhs_t { (1, m) } else { (k, 1) };
            let rhs_strides = if self.rhs_t { (1, k) } else { (n, 1) };
            ((lhs, lhs_strides), (rhs, rhs_strides))
        }

        /// The product by `sgemm` into `dst` (rows `n + pad` apart).
        fn run(&self, dst: &mut [f32], beta: f32, accumulate: bool, threads: usize) {
            let (m, n, k) = self.dims;
            let ((lhs, lhs_strides), (rhs, rhs_strides)) = self.operands(7);
            let product = RawProduct {
                dims: (m, n, k),
                dst: dst.as_mut_ptr(),
                dst_rs: n + self.pad,
                lhs: lhs.as_ptr(),
                lhs_strides,
                rhs: rhs.as_ptr(),
                rhs_strides,
            };
            assert!(dst.len() >= (m - 1) * (n + self.pad) + n);
            // SAFETY: the views address their vectors; `dst` holds the rows; AVX2 and FMA.
            assert!(unsafe { sgemm(product, beta, accumulate, threads) });
        }

        /// The product's values in f64, and the sums of their terms' magnitudes.
        fn exact(&self) -> (Vec<f64>, Vec<f64>) {
            let (m, n, k) = self.dims;
            let ((lhs, (lr, lc)), (rhs, (rr, rc))) = self.operands(7);
            let mut sums = vec![0f64; m * n];
            let mut magnitudes = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    for p in 0..k {
                        let t = lhs[i * lr + p * lc] as f64 * rhs[p * rr + j * rc] as f64;
                        sums[i * n + j] += t;
                        magnitudes[i * n + j] += t.abs();
                    }
                }
            }
            (sums, magnitudes)
        }
    }

    const CASES: [Case; 6] = [
        // Whole tiles; edges in both dimensions; more inner steps than a block.
        Case {
            dims: (12, 32, 40),
            lhs_t: false,
            rhs_t: false,
            pad: 0,
        },
        Case {
            dims: (37, 21, 300),
            lhs_t: false,
            rhs_t: true,
            pad: 3,
        },
        Case {
            dims: (150, 45, 600),
            lhs_t: true,
            rhs_t: false,
            pad: 0,
        },
        Case {
            dims: (5, 70, 513),
            lhs_t: true,
            rhs_t: true,
            pad: 1,
        },
        Case {
            dims: (301, 64, 301),
            lhs_t: false,
            rhs_t: false,
            pad: 1088,
        },
        Case {
            dims: (1, 4200, 9),
            lhs_t: false,
            rhs_t: false,
            pad: 0,
        },
    ];

    #[test]
    fn products_match_f64_sums_in_every_layout() {
        if !has_avx2_fma() {
            return;
        }
        for case in &CASES {
            let (m, n, _) = case.dims;
            let width = n + case.pad;
            let (exact, magnitudes) = case.exact();
            for (beta, accumulate) in [(1.0, false), (0.125, false), (1.0, true)] {
                // A fresh destination full of NaN is overwritten; an accumulated one starts
                // from 2 (and the padding between rows is left alone either way).
                let start = if accumulate { 2.0 } else { f32::NAN };
                let mut dst = vec![start; (m - 1) * width + n];
                case.run(&mut dst, beta, accumulate, 2);
                for i in 0..m {
                    for j in 0..n {
                        let want =
                            f64::from(beta) * exact[i * n + j] + if accumulate { 2.0 } else { 0.0 };
                        let got = f64::from(dst[i * width + j]);
                        let bound = 1e-6 * (magnitudes[i * n + j] + 2.0);
                        assert!(
                            (got - want).abs() <= bound,
                            "{:?} ({i}, {j}): {got} vs {want}",
                            case.dims
                        );
                    }
                    if i + 1 < m {
                        let gap = &dst[i * width + n..(i + 1) * width];
                        assert!(
                            gap.iter().all(|v| v.to_bits() == start.to_bits()),
                            "padding written"
                        );
                    }
                }
            }
        }
    }

    /// Each value is one chain along the inner dimension: the transposed product, and any
    /// thread count, give the same bits.
    #[test]
    fn bits_do_not_depend_on_orientation_or_threads() {
        if !has_avx2_fma() {
            return;
        }
        let (m, n, k) = (130, 75, 700);
        let lhs = values(m * k, 3);
        let rhs = values(k * n, 4);
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
                RawProduct {
                    dims: (m, n, k),
                    dst: dst.as_mut_ptr(),
                    dst_rs: n,
                    lhs: lhs.as_ptr(),
                    lhs_strides: (k, 1),
                    rhs: rhs.as_ptr(),
                    rhs_strides: (n, 1),
                }
            };
            // SAFETY: the views address their vectors; AVX2 and FMA.
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
    }
}
