//! The AVX-512 BF16 block kernel of the bf16 products (x86-64 Linux; AMD Zen 4 and later,
//! Intel Cooper Lake and Sapphire Rapids): `vdpbf16ps` over the packed operands of
//! [`super::packed`], whose pair-interleaved layout is the one this instruction reads too.
//!
//! Hand-written because the `gemm` crate has no bf16 product with f32 sums on these CPUs;
//! `vdpbf16ps` adds two products of bf16 pairs into each f32 lane (16 lanes), so a product runs
//! at up to twice the f32 rate on the same vector units.
//!
//! A 32×32 output block is computed as four groups of 8 rows × 32 columns: 16 accumulators
//! (8 rows × 2 vectors of 16 columns) stay in registers over the whole inner dimension, each
//! step loading the two column vectors of one inner-dimension pair and broadcasting each row's
//! pair. Like the tile unit, `vdpbf16ps` treats subnormal inputs and results as zero.

use std::arch::x86_64::{
    __m512bh, __m512i, _mm512_dpbf16_ps, _mm512_loadu_si512, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
};
use std::sync::OnceLock;

use super::Start;
use super::packed::{BLOCK, HALF, KSTEP, RowBlock, TILE_PAIRS};
use crate::kernels::simd::first_lanes;

/// Rows of one register block.
const ROWS: usize = 8;
/// Inner-dimension pairs in one packed step.
const PAIRS: usize = KSTEP / 2;

/// Whether the CPU has AVX-512 BF16 (and AVX-512 F) and `MMCL_AVX512_BF16` is not `0`; checked
/// once.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("MMCL_AVX512_BF16").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    })
}

/// The output blocks of `block`, 8 rows of one column block at a time.
///
/// # Safety
/// As [`super::packed::BlockRow`]; [`available`] returned true; `block.a` and
/// `block.packed_rhs` are packed for `block.ksteps` inner-dimension steps.
pub(super) unsafe fn block_row(block: RowBlock<'_>) {
    let rows = block.rows();
    let per_column_block = block.ksteps * 2 * TILE_PAIRS;
    for (nb, cols) in block.column_blocks() {
        let b_block = &block.packed_rhs[nb * per_column_block..][..per_column_block];
        for r0 in (0..rows).step_by(ROWS) {
            let valid_rows = ROWS.min(rows - r0);
            // SAFETY: rows 32·mb + r0 .. + valid_rows and columns 32·nb .. + cols lie inside
            // the output (caller's contract); the CPU has the instructions.
            unsafe {
                register_block(
                    block.a,
                    b_block,
                    r0,
                    block.ksteps,
                    block.corner(r0, nb),
                    block.dst_rs,
                    (valid_rows, cols),
                    match block.start {
                        Start::Bias(bias) => Start::Bias(&bias[nb * BLOCK..]),
                        other => other,
                    },
                );
            }
        }
    }
}

/// Rows `r0 .. r0 + 8` of the row block times one packed column block (`b_block`), added to
/// `start` in the `valid_rows × cols` corner of the output at `corner` (a bias from this
/// column block's first value).
///
/// # Safety
/// `corner` addresses `valid_rows` rows of stride `dst_rs` with `cols` valid columns; `a` holds
/// `ksteps` packed steps of 32 rows, `b_block` `ksteps` steps of two column halves; a bias
/// holds `cols` values.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn register_block(
    a: &[u16],
    b_block: &[u32],
    r0: usize,
    ksteps: usize,
    corner: *mut f32,
    dst_rs: usize,
    (valid_rows, cols): (usize, usize),
    start: Start<'_>,
) {
    let masks = [first_lanes(cols), first_lanes(cols.saturating_sub(HALF))];
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    for (r, row) in acc.iter_mut().enumerate().take(valid_rows) {
        for (h, v) in row.iter_mut().enumerate() {
            // SAFETY: masked to the row's valid columns (caller's contract); a bias holds the
            // output's n values, of which this column block's `cols` are read.
            *v = unsafe {
                match start {
                    Start::Zero => break,
                    Start::Dst => {
                        _mm512_maskz_loadu_ps(masks[h], corner.add(r * dst_rs + h * HALF))
                    }
                    Start::Bias(bias) => {
                        _mm512_maskz_loadu_ps(masks[h], bias.as_ptr().add(h * HALF))
                    }
                }
            };
        }
    }
    let a_pairs = a.as_ptr().cast::<u32>();
    let b_pairs = b_block.as_ptr();
    for ks in 0..ksteps {
        // The step's pairs of rows r0.. (16 pairs a row) and of both column halves.
        // SAFETY: inside the packed buffers (ksteps steps of 32 rows × 16 pairs, and of
        // 2 halves × 16 pairs × 16 columns).
        let a_step = unsafe { a_pairs.add((ks * BLOCK + r0) * PAIRS) };
        let b_step = unsafe { b_pairs.add(ks * 2 * TILE_PAIRS) };
        for p in 0..PAIRS {
            // SAFETY: as above; unaligned loads.
            let (b0, b1) = unsafe {
                (
                    bf16x32(_mm512_loadu_si512(b_step.add(p * HALF).cast())),
                    bf16x32(_mm512_loadu_si512(b_step.add(TILE_PAIRS + p * HALF).cast())),
                )
            };
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r0 + r < 32 of the packed step.
                let pair = unsafe { a_step.add(r * PAIRS + p).read_unaligned() };
                let a_pair = bf16x32(_mm512_set1_epi32(pair as i32));
                row[0] = _mm512_dpbf16_ps(row[0], a_pair, b0);
                row[1] = _mm512_dpbf16_ps(row[1], a_pair, b1);
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(valid_rows) {
        for (h, &v) in row.iter().enumerate() {
            if masks[h] != 0 {
                // SAFETY: masked to the row's valid columns (caller's contract).
                unsafe { _mm512_mask_storeu_ps(corner.add(r * dst_rs + h * HALF), masks[h], v) };
            }
        }
    }
}

/// 512 bits of packed bf16 pairs as the instruction's operand type (the same bits).
#[inline(always)]
fn bf16x32(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain-data vector types.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
