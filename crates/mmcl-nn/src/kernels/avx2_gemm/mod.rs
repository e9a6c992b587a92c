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
use super::avx2_lanes::{VECTORS, eval_vectors};
use super::bf16::Start;
use super::finished::Finish;
use super::gemm::{RawProduct, SharedProduct};
use super::ops::gelu::{BiasGeluValue, Gelu, GeluGrad};
use super::simd::Formula;

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

/// `dst[m, n] = start + beta · Σ_k lhs[m, k]·rhs[k, n]`, finished as `finish` says, split
/// over `threads` rayon tasks when large; `false` (nothing written) for a scaled sum that does
/// not start from zero, which no caller asks for.
///
/// A bias ([`Start::Bias`]) starts the tiles' sums from registers: the destination is written
/// once, not filled with the bias first and read back (a pass over memory each way, the size
/// of the output: 118 MB for the encoder's `fc1` at batch 64).
///
/// # Safety
/// As [`super::gemm::gemm_raw_in`]; the CPU has AVX2 and FMA ([`enabled`]); `m, n, k > 0`; the
/// matrices of `finish` have the destination's shape and row stride, are the caller's to
/// write ([`Finish::Gelu`]) or valid to read ([`Finish::GeluGrad`]), and alias nothing else.
pub(crate) unsafe fn sgemm(
    product: RawProduct,
    beta: f32,
    start: Start<'_>,
    threads: usize,
    finish: Finish<'_>,
) -> bool {
    let continued = matches!(start, Start::Dst);
    if (!matches!(start, Start::Zero) && beta != 1.0) || (continued && !finish.is_sums()) {
        return false;
    }
    // Where the tiles keep their sums: the destination, or the pre-activation that a GELU
    // keeps beside it (which the finish then reads).
    let sums_into = match finish {
        Finish::Gelu { pre: Some(pre), .. } => pre,
        _ => SharedMut(product.dst),
    };
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
            let last = p0 + kc == k;
            let block = Block {
                j0,
                nc,
                p0,
                kc,
                start: if p0 == 0 { start } else { Start::Dst },
                sums_into,
                scale: (last && beta != 1.0).then_some(beta),
                finish: if last { finish } else { Finish::Sums },
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
struct Block<'a> {
    /// First column and columns.
    j0: usize,
    nc: usize,
    /// First inner step and steps.
    p0: usize,
    kc: usize,
    /// Where the tiles' sums start: the product's start in the first inner block, the sums
    /// so far after it.
    start: Start<'a>,
    /// Where the tiles keep their sums (rows of the destination's stride): the destination,
    /// or the pre-activation of a [`Finish::Gelu`] that keeps it.
    sums_into: SharedMut,
    /// The scale of the finished sums, in the last inner block of a scaled product.
    scale: Option<f32>,
    /// What the last inner block does with the finished sums ([`Finish::Sums`] before it).
    finish: Finish<'a>,
}

/// Packs the block's right operand into `right`: panel `q` holds columns `j0 + NR·q ..` as
/// `kc` rows of [`NR`] values, columns past the block zero.
///
/// # Safety
/// The operand's elements are valid.
unsafe fn pack_right(shared: &SharedProduct, block: &Block<'_>, right: &mut [f32], threads: usize) {
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
unsafe fn pack_left(
    p: &RawProduct,
    block: &Block<'_>,
    (i0, rows): (usize, usize),
    left: &mut [f32],
) {
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
unsafe fn multiply_block(shared: &SharedProduct, block: &Block<'_>, right: &[f32], threads: usize) {
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

/// The tiles of rows `i0 .. i0 + rows` and column panels `columns` of the block, and in the
/// last inner block their finish, a column panel at a time while its values are in L1.
///
/// # Safety
/// The destination's tiles (and those of the block's sums and [`Finish`]) are valid and
/// written by no other task; `left` and `right` hold the packed rows and the block's packed
/// panels; the CPU has AVX2 and FMA.
unsafe fn tiles(
    p: &RawProduct,
    block: &Block<'_>,
    (i0, rows): (usize, usize),
    columns: std::ops::Range<usize>,
    left: &[f32],
    right: &[f32],
) {
    let sums = block.sums_into;
    // The matrix the finish reads beside the sums, or writes (the destination, when the sums
    // are kept apart from it).
    let beside = match block.finish {
        Finish::GeluGrad { pre, .. } => Some(pre),
        Finish::Gelu { pre: Some(_), .. } => Some(SharedMut(p.dst)),
        Finish::Gelu { pre: None, .. } | Finish::BiasGelu { .. } | Finish::Sums => None,
    };
    for q in columns {
        let b = &right[q * block.kc * NR..(q + 1) * block.kc * NR];
        let j = block.j0 + q * NR;
        let cols = NR.min(block.j0 + block.nc - j);
        let row_panels = rows.div_ceil(MR);
        for (r, a) in left.chunks_exact(block.kc * MR).enumerate() {
            let i = i0 + r * MR;
            let tile_rows = MR.min(i0 + rows - i);
            let at = i * p.dst_rs + j;
            // SAFETY: element (i, j) of the sums' matrix, inside it (caller's contract).
            let c = unsafe { sums.get().add(at) };
            if r + 1 < row_panels {
                // The next tile's rows, fetched while this one computes: a tile that continues
                // its sums (or stores them) would otherwise wait on their lines; so would the
                // finish on the values it reads or writes beside them, once each.
                let next_rows = MR.min(i0 + rows - i - MR);
                for rr in 0..next_rows {
                    let next = at + (MR + rr) * p.dst_rs;
                    for matrix in [Some(sums), beside].into_iter().flatten() {
                        let row = matrix.get().wrapping_add(next);
                        prefetch(row);
                        prefetch(row.wrapping_add(NR - 1));
                    }
                }
            }
            if tile_rows == MR && cols == NR {
                let start = match block.start {
                    Start::Zero => TileStart::Zero,
                    Start::Dst => TileStart::Dst,
                    Start::Bias(bias) => TileStart::Row(bias[j..j + NR].as_ptr()),
                };
                // SAFETY: a whole tile of the sums' matrix; the CPU has AVX2 and FMA.
                unsafe { tile(block, start, (a, b), (c, p.dst_rs)) };
            } else {
                // SAFETY: the valid rows and columns of the tile (caller's contract).
                unsafe { edge_tile(block, (tile_rows, cols, j), (a, b), (c, p.dst_rs)) };
            }
        }
        if !block.finish.is_sums() {
            let strip = Strip {
                rows: i0..i0 + rows,
                j,
                cols,
                ld: p.dst_rs,
            };
            // SAFETY: the strip's sums were just written; the strip of the destination and of
            // the finish's matrix are this task's (caller's contract).
            unsafe { finish_strip(block.finish, sums, SharedMut(p.dst), &strip) };
        }
    }
}

/// An edge tile (`rows × cols` valid values, its first column `j`): through a whole tile of
/// scratch, its missing rows and columns zero (they multiply the packed operands' zero
/// padding and are not copied back).
///
/// # Safety
/// As [`tile`] for the valid rows and columns.
unsafe fn edge_tile(
    block: &Block<'_>,
    (rows, cols, j): (usize, usize, usize),
    panels: (&[f32], &[f32]),
    (c, ldc): (*mut f32, usize),
) {
    let mut scratch = [0f32; MR * NR];
    let mut row = [0f32; NR];
    let start = match block.start {
        Start::Zero => TileStart::Zero,
        Start::Dst => {
            for rr in 0..rows {
                // SAFETY: valid rows and columns of the tile (caller's contract).
                let from = unsafe { std::slice::from_raw_parts(c.add(rr * ldc), cols) };
                scratch[rr * NR..rr * NR + cols].copy_from_slice(from);
            }
            TileStart::Dst
        }
        Start::Bias(bias) => {
            row[..cols].copy_from_slice(&bias[j..j + cols]);
            TileStart::Row(row.as_ptr())
        }
    };
    // SAFETY: a whole scratch tile of NR columns; the CPU has AVX2 and FMA (caller's contract).
    unsafe { tile(block, start, panels, (scratch.as_mut_ptr(), NR)) };
    for rr in 0..rows {
        // SAFETY: valid rows and columns of the tile, this task's (caller's contract).
        let to = unsafe { std::slice::from_raw_parts_mut(c.add(rr * ldc), cols) };
        to.copy_from_slice(&scratch[rr * NR..rr * NR + cols]);
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

/// Where one tile's sums start.
#[derive(Clone, Copy)]
enum TileStart {
    /// Zero.
    Zero,
    /// The tile's values in the destination.
    Dst,
    /// The same [`NR`] values in every row (the bias of the tile's columns).
    Row(*const f32),
}

/// One `MR × NR` tile: `c` (`MR` rows `ldc` apart) gets the block's `kc` steps of the packed
/// panels `a` and `b` summed from `start`.
///
/// # Safety
/// `c` addresses `MR` rows of `NR` valid values; `a` and `b` hold `kc` steps; a
/// [`TileStart::Row`] holds `NR` values; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(
    block: &Block<'_>,
    start: TileStart,
    (a, b): (&[f32], &[f32]),
    (c, ldc): (*mut f32, usize),
) {
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let kc = block.kc;
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    let mut acc: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
    match start {
        TileStart::Zero => {}
        TileStart::Dst => {
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r of the tile (caller's contract).
                unsafe {
                    *row = [
                        _mm256_loadu_ps(c.add(r * ldc)),
                        _mm256_loadu_ps(c.add(r * ldc + 8)),
                    ]
                };
            }
        }
        TileStart::Row(values) => {
            // SAFETY: NR values (caller's contract).
            let v = unsafe { [_mm256_loadu_ps(values), _mm256_loadu_ps(values.add(8))] };
            acc = [v; MR];
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

/// Rows `rows` of one column panel (first column `j`, `cols` of them) of matrices whose rows
/// lie `ld` values apart.
struct Strip {
    rows: std::ops::Range<usize>,
    j: usize,
    cols: usize,
    ld: usize,
}

// Two rows of a whole panel are one group of the four-vector formulas.
const _: () = assert!(NR == 16 && VECTORS == 4);

/// The finish of one strip of finished sums (`sums`) into the destination (`dst`; the same
/// matrix unless the sums are kept apart): two rows of a whole panel at a time on the
/// four-vector formulas, whose chains overlap from one pair to the next as in a pass over
/// memory, but on values still in L1; the rest one value at a time (the same bits).
///
/// # Safety
/// The strip's values of `sums` (and of the finish's matrix) are valid to read, those of
/// `dst` to write, by this task alone; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_strip(finish: Finish<'_>, sums: SharedMut, dst: SharedMut, strip: &Strip) {
    use std::arch::x86_64::{__m256, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    let Strip { rows, j, cols, ld } = strip;
    let (j, cols, ld) = (*j, *cols, *ld);
    // The four vectors of rows r and r + 1 of `m` at the strip's columns.
    let load = |m: *const f32, r: usize| -> [__m256; VECTORS] {
        let at = r * ld + j;
        // SAFETY: two rows of a whole panel (caller's contract); AVX (this function's features).
        unsafe {
            [
                _mm256_loadu_ps(m.add(at)),
                _mm256_loadu_ps(m.add(at + 8)),
                _mm256_loadu_ps(m.add(at + ld)),
                _mm256_loadu_ps(m.add(at + ld + 8)),
            ]
        }
    };
    let pairs = if cols == NR { rows.len() / 2 } else { 0 };
    // The bias of a whole panel's columns, for both rows of a pair.
    let bias = match finish {
        Finish::BiasGelu { bias } if pairs > 0 => {
            // SAFETY: NR values of the bias (the panel is whole); AVX (this function's
            // features).
            let [b0, b1] = unsafe { [0, 8].map(|o| _mm256_loadu_ps(bias[j + o..].as_ptr())) };
            [b0, b1, b0, b1]
        }
        _ => [_mm256_setzero_ps(); VECTORS],
    };
    let out = dst.get();
    for r in (0..pairs).map(|pair| rows.start + 2 * pair) {
        let v = load(sums.get(), r);
        // SAFETY: AVX2 and FMA (this function's features).
        let value = unsafe {
            match finish {
                Finish::Sums => v,
                Finish::Gelu { fused: true, .. } => eval_vectors([v], &Gelu::<true>),
                Finish::Gelu { fused: false, .. } => eval_vectors([v], &Gelu::<false>),
                Finish::BiasGelu { .. } => eval_vectors([v, bias], &BiasGeluValue),
                Finish::GeluGrad { pre, fused } => {
                    let args = [load(pre.get(), r), v];
                    match fused {
                        true => eval_vectors(args, &GeluGrad::<true>),
                        false => eval_vectors(args, &GeluGrad::<false>),
                    }
                }
            }
        };
        let at = r * ld + j;
        // SAFETY: as for `load`, in the destination.
        unsafe {
            _mm256_storeu_ps(out.add(at), value[0]);
            _mm256_storeu_ps(out.add(at + 8), value[1]);
            _mm256_storeu_ps(out.add(at + ld), value[2]);
            _mm256_storeu_ps(out.add(at + ld + 8), value[3]);
        }
    }
    // The rows past the pairs, or every row of a narrower panel.
    for r in rows.start + 2 * pairs..rows.end {
        for col in j..j + cols {
            let at = r * ld + col;
            // SAFETY: a value of the strip (caller's contract).
            let v = unsafe { *sums.get().add(at) };
            let value = match finish {
                Finish::Sums => v,
                Finish::Gelu { fused: true, .. } => Gelu::<true>.eval([v]),
                Finish::Gelu { fused: false, .. } => Gelu::<false>.eval([v]),
                Finish::BiasGelu { bias } => BiasGeluValue.eval([v, bias[col]]),
                Finish::GeluGrad { pre, fused } => {
                    // SAFETY: as above, in the finish's matrix.
                    let p = unsafe { *pre.get().add(at) };
                    match fused {
                        true => GeluGrad::<true>.eval([p, v]),
                        false => GeluGrad::<false>.eval([p, v]),
                    }
                }
            };
            // SAFETY: as above, in the destination.
            unsafe { *out.add(at) = value };
        }
    }
}

#[cfg(test)]
mod tests;
