//! AVX-512 packers of the bf16 products' operands into the layouts of [`super::packed`], for
//! every operand with one contiguous dimension (all that the models multiply): 16 lanes
//! converted at once, and where the operand is stored against the layout's grain (a right
//! operand stored column by column, `Pᵀ` in a convolution's weight gradient `dY·Pᵀ`; a left
//! operand contiguous along `m`, `Wᵀ` in its input gradient) 16 × 16 pairs transposed in
//! registers and stored whole, where the scalar packers write one 32-bit pair at a time,
//! 64 bytes apart.
//!
//! Hand-written because no crate packs into the pair-interleaved bf16 layout. Two conversions:
//! where the CPU has AVX-512 BF16 (every CPU with AMX, AMD Zen 4 and later) its
//! `vcvtne2ps2bf16` converts 32 values in one instruction ([`native_conversion`]); elsewhere
//! integer arithmetic gives the values of [`super::to_bf16_bits`] bit for bit (ties to even,
//! NaN quiet, subnormals kept). The instruction rounds the same way but turns subnormal inputs
//! into zeros of their sign, which both engines' products do with them anyway, so every product
//! is the same either way.

use std::arch::asm;

use std::arch::x86_64::{
    __m512, __m512i, __mmask16, _CMP_UNORD_Q, _mm512_add_epi32, _mm512_and_si512,
    _mm512_castps_si512, _mm512_castsi256_si512, _mm512_cmp_ps_mask, _mm512_cvtepi32_epi16,
    _mm512_inserti64x4, _mm512_loadu_si512, _mm512_mask_mov_epi32, _mm512_maskz_loadu_ps,
    _mm512_or_si512, _mm512_permutex2var_epi32, _mm512_permutexvar_epi16, _mm512_set1_epi32,
    _mm512_setzero_ps, _mm512_setzero_si512, _mm512_slli_epi32, _mm512_srli_epi32,
    _mm512_storeu_si512,
};
use std::sync::OnceLock;

use super::packed::{BLOCK, HALF, KSTEP, TILE_PAIRS};
use crate::kernels::simd::first_lanes;

/// Whether the CPU has AVX-512 F and BW (every CPU with either bf16 engine has them); checked
/// once.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    })
}

/// Whether the packers convert with AVX-512 BF16's `vcvtne2ps2bf16` (the CPU has it); checked
/// once. In a bf16 MAE step on an Emerald Rapids Xeon the packers took about a fifth of the
/// time with the integer rounding, nine instructions per 16 values.
pub(super) fn native_conversion() -> bool {
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bf16"))
}

/// `lo` and `hi` rounded to bf16: lo's 16 values in the low 256 bits, hi's in the high ones.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn bf16_halves(lo: __m512, hi: __m512, native: bool) -> __m512i {
    if native {
        let out: __m512i;
        // SAFETY: register-only arithmetic; `native` is only true where the CPU has AVX-512
        // BF16 (`native_conversion`). An `asm!` block rather than the intrinsic because the
        // intrinsic needs that feature enabled on every function it is inlined into, and the
        // integer path below must stay callable without it.
        unsafe {
            asm!(
                "vcvtne2ps2bf16 {out}, {hi}, {lo}",
                out = lateout(zmm_reg) out,
                hi = in(zmm_reg) hi,
                lo = in(zmm_reg) lo,
                options(pure, nomem, nostack),
            )
        };
        out
    } else {
        let lo = _mm512_cvtepi32_epi16(bf16_lanes(lo));
        let hi = _mm512_cvtepi32_epi16(bf16_lanes(hi));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// The mask of the first `count` of 16 lanes (`count` may exceed 16 or be negative: all or
/// none).
#[inline(always)]
fn lanes(count: isize) -> __mmask16 {
    first_lanes(count.max(0) as usize)
}

/// [`super::to_bf16_bits`] of 16 lanes, each result in the low half of its 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn bf16_lanes(v: __m512) -> __m512i {
    let bits = _mm512_castps_si512(v);
    let high = _mm512_srli_epi32::<16>(bits);
    let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    let rounding = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, rounding));
    let quiet_nan = _mm512_or_si512(high, _mm512_set1_epi32(0x40));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_mask_mov_epi32(rounded, nan, quiet_nan)
}

/// The 32 consecutive values at `src`, of which the first `valid` are read (zeros after), as
/// 16 bf16 pairs: lane `j` holds value `2j` in its low half and value `2j + 1` in its high half.
///
/// # Safety
/// The first `valid` (at most 32) values at `src` are readable; `native` as in [`bf16_halves`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn consecutive_pairs(src: *const f32, valid: isize, native: bool) -> __m512i {
    // SAFETY: masked to the readable values (caller's contract); the second half's address is
    // formed without `add` because it may lie past the allocation (then nothing is read).
    let (lo, hi) = unsafe {
        (
            _mm512_maskz_loadu_ps(lanes(valid), src),
            _mm512_maskz_loadu_ps(lanes(valid - HALF as isize), src.wrapping_add(HALF)),
        )
    };
    bf16_halves(lo, hi, native)
}

/// Two vectors of values as 16 bf16 pairs: `lo` in the low halves, `hi` in the high halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn lane_pairs(lo: __m512, hi: __m512, native: bool) -> __m512i {
    if native {
        // Word 2j takes lo's value j (word j of the halves), word 2j + 1 hi's (word 16 + j).
        const INTERLEAVE: [u16; 32] = {
            let mut index = [0u16; 32];
            let mut w = 0;
            while w < 32 {
                index[w] = (w / 2 + (w % 2) * 16) as u16;
                w += 1;
            }
            index
        };
        // SAFETY: 32 `u16` are 64 bytes, read unaligned.
        let index = unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr().cast()) };
        _mm512_permutexvar_epi16(index, bf16_halves(lo, hi, true))
    } else {
        _mm512_or_si512(bf16_lanes(lo), _mm512_slli_epi32::<16>(bf16_lanes(hi)))
    }
}

/// The lane indices of one transpose stage for rows `i` and `i + b` (`i & b == 0`): lanes
/// `0..16` name the first row's lanes, `16..32` the second's.
const fn stage_indices(b: usize) -> ([u32; 16], [u32; 16]) {
    let (mut first, mut second) = ([0u32; 16], [0u32; 16]);
    let mut l = 0;
    while l < 16 {
        if l & b == 0 {
            first[l] = l as u32;
            second[l] = (l + b) as u32;
        } else {
            first[l] = (16 + l - b) as u32;
            second[l] = (16 + l) as u32;
        }
        l += 1;
    }
    (first, second)
}

/// The 16 × 16 matrix of 32-bit values in `rows` transposed in place: four stages, each
/// exchanging the off-diagonal blocks of size 8, 4, 2, 1 between pairs of rows.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(rows: &mut [__m512i; 16]) {
    const STAGES: [([u32; 16], [u32; 16]); 4] = [
        stage_indices(8),
        stage_indices(4),
        stage_indices(2),
        stage_indices(1),
    ];
    for (stage, (first, second)) in STAGES.iter().enumerate() {
        let b = 8 >> stage;
        // SAFETY: 16 `u32` are 64 bytes, read unaligned.
        let (first, second) = unsafe {
            (
                _mm512_loadu_si512(first.as_ptr().cast()),
                _mm512_loadu_si512(second.as_ptr().cast()),
            )
        };
        for i in (0..16).filter(|i| i & b == 0) {
            let (x, y) = (rows[i], rows[i + b]);
            rows[i] = _mm512_permutex2var_epi32(x, first, y);
            rows[i + b] = _mm512_permutex2var_epi32(x, second, y);
        }
    }
}

/// [`super::packed`]'s `pack_rhs` for a right operand whose columns are contiguous (`rs == 1`):
/// column block `nb` of the `[k, n]` view with column stride `cs` as bf16 pairs,
/// `block[kstep][half][pair][col]`, every entry written (zeros past `k` and `n`).
///
/// # Safety
/// The CPU has AVX-512 F and BW ([`available`]), and AVX-512 BF16 if `native`
/// ([`native_conversion`]); `rhs` holds the view's elements; `block` holds `k.div_ceil(32)`
/// steps of `2 · 256` pairs.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_rhs_k_contiguous(
    rhs: &[f32],
    cs: usize,
    (k, n): (usize, usize),
    nb: usize,
    block: &mut [u32],
    native: bool,
) {
    let cols = BLOCK.min(n - nb * BLOCK);
    for ks in 0..k.div_ceil(KSTEP) {
        let (k0, valid) = (ks * KSTEP, (k - ks * KSTEP) as isize);
        for half in 0..BLOCK / HALF {
            let mut rows = [_mm512_setzero_si512(); HALF];
            for (c, row) in rows.iter_mut().enumerate() {
                let col = nb * BLOCK + half * HALF + c;
                if half * HALF + c >= cols {
                    break;
                }
                // SAFETY: the column's values `k0..k` lie inside the caller's view.
                *row = unsafe { consecutive_pairs(rhs.as_ptr().add(col * cs + k0), valid, native) };
            }
            transpose16(&mut rows);
            let out = &mut block[ks * 2 * TILE_PAIRS + half * TILE_PAIRS..][..TILE_PAIRS];
            for (pair, row) in rows.iter().enumerate() {
                // SAFETY: 16 pairs inside the tile.
                unsafe { _mm512_storeu_si512(out[pair * HALF..].as_mut_ptr().cast(), *row) };
            }
        }
    }
}

/// [`super::packed`]'s `pack_lhs` for a left operand whose rows are contiguous along `m`
/// (`rs == 1`): rows `32·mb ..` of the `[m, k]` view with inner stride `cs` as bf16,
/// `a[kstep][row 32][32 values]`, every entry written (zeros past `k` and `m`).
///
/// # Safety
/// As [`pack_rhs_k_contiguous`]; `a` holds `k.div_ceil(32)` steps of `32 · 32` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_lhs_m_contiguous(
    lhs: &[f32],
    cs: usize,
    (m, k): (usize, usize),
    mb: usize,
    a: &mut [u16],
    native: bool,
) {
    let rows = BLOCK.min(m - mb * BLOCK);
    for ks in 0..k.div_ceil(KSTEP) {
        for half in 0..BLOCK / HALF {
            let r0 = half * HALF;
            let mask = lanes(rows as isize - r0 as isize);
            let first = mb * BLOCK + r0;
            let mut pairs = [_mm512_setzero_si512(); HALF];
            for (j, pair) in pairs.iter_mut().enumerate() {
                let kk = ks * KSTEP + 2 * j;
                // SAFETY: rows `first..` of the view at inner indices `kk` and `kk + 1`, where
                // they exist (the caller's view).
                let (lo, hi) = unsafe {
                    (
                        load_lanes(lhs, kk, cs, first, mask, k),
                        load_lanes(lhs, kk + 1, cs, first, mask, k),
                    )
                };
                *pair = lane_pairs(lo, hi, native);
            }
            transpose16(&mut pairs);
            for (r, row) in pairs.iter().enumerate() {
                let at = (ks * BLOCK + r0 + r) * KSTEP;
                // SAFETY: 32 values inside the step's row.
                unsafe { _mm512_storeu_si512(a[at..at + KSTEP].as_mut_ptr().cast(), *row) };
            }
        }
    }
}

/// `pack_rhs` for a right operand whose rows are contiguous (`cs == 1`): column block `nb` of
/// the `[k, n]` view with row stride `rs`, rows `2p` and `2p + 1` interleaved into pairs, every
/// entry written (zeros past `k` and `n`).
///
/// # Safety
/// As [`pack_rhs_k_contiguous`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_rhs_n_contiguous(
    rhs: &[f32],
    rs: usize,
    (k, n): (usize, usize),
    nb: usize,
    block: &mut [u32],
    native: bool,
) {
    let cols = BLOCK.min(n - nb * BLOCK);
    let masks = [lanes(cols as isize), lanes(cols as isize - HALF as isize)];
    for pair_start in (0..k.div_ceil(KSTEP) * KSTEP).step_by(2) {
        let base = (pair_start / KSTEP) * 2 * TILE_PAIRS + ((pair_start % KSTEP) / 2) * HALF;
        for (half, &mask) in masks.iter().enumerate() {
            let first = nb * BLOCK + half * HALF;
            // SAFETY: the valid columns of rows `pair_start` and `pair_start + 1`, where they
            // exist (the caller's view).
            let (lo, hi) = unsafe {
                (
                    load_lanes(rhs, pair_start, rs, first, mask, k),
                    load_lanes(rhs, pair_start + 1, rs, first, mask, k),
                )
            };
            let at = base + half * TILE_PAIRS;
            // SAFETY: 16 pairs inside the block.
            unsafe {
                _mm512_storeu_si512(
                    block[at..at + HALF].as_mut_ptr().cast(),
                    lane_pairs(lo, hi, native),
                )
            };
        }
    }
}

/// `pack_lhs` for a left operand whose rows are contiguous along `k` (`cs == 1`): rows
/// `32·mb ..` of the `[m, k]` view with row stride `rs` as bf16, 32 consecutive values per
/// step and row, every entry written (zeros past `k` and `m`).
///
/// # Safety
/// As [`pack_lhs_m_contiguous`].
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_lhs_k_contiguous(
    lhs: &[f32],
    rs: usize,
    (m, k): (usize, usize),
    mb: usize,
    a: &mut [u16],
    native: bool,
) {
    let rows = BLOCK.min(m - mb * BLOCK);
    for ks in 0..k.div_ceil(KSTEP) {
        let (k0, valid) = (ks * KSTEP, (k - ks * KSTEP) as isize);
        for r in 0..BLOCK {
            let pairs = if r < rows {
                // SAFETY: the row's values `k0..k` lie inside the caller's view.
                unsafe {
                    consecutive_pairs(lhs.as_ptr().add((mb * BLOCK + r) * rs + k0), valid, native)
                }
            } else {
                _mm512_setzero_si512()
            };
            let at = (ks * BLOCK + r) * KSTEP;
            // SAFETY: 32 values inside the step's row.
            unsafe { _mm512_storeu_si512(a[at..at + KSTEP].as_mut_ptr().cast(), pairs) };
        }
    }
}

/// The `mask`ed lanes from `first` of line `line` (stride `stride`) of a view, zeros where the
/// line is past `lines`.
///
/// # Safety
/// Those rows lie inside `lhs`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_lanes(
    view: &[f32],
    line: usize,
    stride: usize,
    first: usize,
    mask: __mmask16,
    lines: usize,
) -> __m512 {
    if line < lines && mask != 0 {
        // SAFETY: masked to the lanes inside the view (caller's contract).
        unsafe { _mm512_maskz_loadu_ps(mask, view.as_ptr().add(line * stride + first)) }
    } else {
        _mm512_setzero_ps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16::to_bf16_bits;

    /// Values that exercise the rounding: ties both ways, NaN, infinities, subnormals, signed
    /// zeros, and plain pseudo-random values.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let special = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            -0.0,
            0.0,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
        ];
        (0..len as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(0x9e37_79b9).rotate_left(13);
                if h.is_multiple_of(7) {
                    special[(h as usize / 7) % special.len()]
                } else {
                    f32::from_bits(0x3000_0000 + (h >> 4)) * if h & 1 == 0 { 1.0 } else { -1.0 }
                }
            })
            .collect()
    }

    /// The conversions this machine runs: the integer one, and the CPU's where it has it.
    fn conversions() -> Vec<bool> {
        let mut all = vec![false];
        if native_conversion() {
            all.push(true);
        }
        all
    }

    /// What a conversion makes of `v`: [`to_bf16_bits`], except that the CPU's turns subnormal
    /// values into zeros of their sign.
    fn expected_bits(v: f32, native: bool) -> u16 {
        if native && v.is_subnormal() {
            ((v.to_bits() >> 16) & 0x8000) as u16
        } else {
            to_bf16_bits(v)
        }
    }

    #[test]
    fn packed_right_operands_match_their_definition() {
        if !available() {
            return;
        }
        for (k, n, nb) in [
            (1, 1, 0),
            (31, 40, 1),
            (64, 32, 0),
            (77, 70, 2),
            (200, 33, 1),
        ] {
            for (k_contiguous, native) in [true, false]
                .into_iter()
                .flat_map(|c| conversions().into_iter().map(move |n| (c, n)))
            {
                // Element (kk, c) at kk·rs + c·cs, padded lines.
                let (rs, cs) = if k_contiguous { (1, k + 3) } else { (n + 3, 1) };
                let rhs = values(k * n * 2 + 3 * (k + n), k as u32 + k_contiguous as u32);
                let ksteps = k.div_ceil(KSTEP);
                let mut block = vec![0xdead_beef_u32; ksteps * 2 * TILE_PAIRS];
                // SAFETY: the CPU has AVX-512 F and BW (and BF16 if `native`); the block holds
                // `ksteps` steps.
                unsafe {
                    if k_contiguous {
                        pack_rhs_k_contiguous(&rhs, cs, (k, n), nb, &mut block, native);
                    } else {
                        pack_rhs_n_contiguous(&rhs, rs, (k, n), nb, &mut block, native);
                    }
                }
                let cols = BLOCK.min(n - nb * BLOCK);
                for kk in 0..ksteps * KSTEP {
                    for c in 0..BLOCK {
                        let at = (kk / KSTEP) * 2 * TILE_PAIRS
                            + (c / HALF) * TILE_PAIRS
                            + ((kk % KSTEP) / 2) * HALF
                            + c % HALF;
                        let expected = if kk < k && c < cols {
                            expected_bits(rhs[kk * rs + (nb * BLOCK + c) * cs], native)
                        } else {
                            0
                        };
                        let got = (block[at] >> (16 * (kk % 2))) as u16;
                        let case = (k, n, nb, k_contiguous, native);
                        assert_eq!(got, expected, "{case:?}: ({kk}, {c})");
                    }
                }
            }
        }
    }

    #[test]
    fn packed_left_operands_match_their_definition() {
        if !available() {
            return;
        }
        for (m, k, mb) in [
            (1, 1, 0),
            (40, 31, 1),
            (32, 64, 0),
            (70, 77, 2),
            (33, 200, 1),
        ] {
            for (k_contiguous, native) in [true, false]
                .into_iter()
                .flat_map(|c| conversions().into_iter().map(move |n| (c, n)))
            {
                // Element (r, kk) at r·rs + kk·cs, padded lines.
                let (rs, cs) = if k_contiguous { (k + 5, 1) } else { (1, m + 5) };
                let lhs = values(m * k * 2 + 5 * (m + k), m as u32 + 7 + k_contiguous as u32);
                let ksteps = k.div_ceil(KSTEP);
                let mut a = vec![0xbeef_u16; ksteps * BLOCK * KSTEP];
                // SAFETY: the CPU has AVX-512 F and BW (and BF16 if `native`); `a` holds
                // `ksteps` steps.
                unsafe {
                    if k_contiguous {
                        pack_lhs_k_contiguous(&lhs, rs, (m, k), mb, &mut a, native);
                    } else {
                        pack_lhs_m_contiguous(&lhs, cs, (m, k), mb, &mut a, native);
                    }
                }
                let rows = BLOCK.min(m - mb * BLOCK);
                for kk in 0..ksteps * KSTEP {
                    for r in 0..BLOCK {
                        let at = (kk / KSTEP) * BLOCK * KSTEP + r * KSTEP + kk % KSTEP;
                        let expected = if kk < k && r < rows {
                            expected_bits(lhs[(mb * BLOCK + r) * rs + kk * cs], native)
                        } else {
                            0
                        };
                        let case = (m, k, mb, k_contiguous, native);
                        assert_eq!(a[at], expected, "{case:?}: ({r}, {kk})");
                    }
                }
            }
        }
    }
}
