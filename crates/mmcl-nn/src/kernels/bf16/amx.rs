//! The AMX engine of the bf16 products (x86-64 Linux).
//!
//! Hand-written because no crate offers AMX from Rust and the Debian oneDNN is too old to be a
//! dependency worth its weight; the tile instructions go through `asm!` (stable Rust has no AMX
//! intrinsics). The scheme is the plain one: the right operand is packed once into the tile
//! unit's pair-interleaved ("VNNI") layout, each task packs a block of 32 rows of the left
//! operand, and a 2×2 block of 16×16 f32 accumulator tiles runs over the whole inner dimension,
//! so each output element is written once.

use std::arch::asm;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::to_bf16_bits;
use crate::kernels::SharedMut;
use crate::kernels::simd::multiversion;

/// bf16 values in one tile row (64 bytes): the inner-dimension step of one tile product.
const KSTEP: usize = 32;
/// Rows of a tile; also the f32 columns of an accumulator tile.
const HALF: usize = 16;
/// Rows and columns of the output block a task computes at once (2×2 accumulator tiles).
const BLOCK: usize = 32;
/// u16 values in one operand tile (16 rows of 64 bytes).
const TILE_U16: usize = HALF * KSTEP;
/// bf16 pairs (u32) in one operand tile.
const TILE_PAIRS: usize = TILE_U16 / 2;
/// Bytes of packed right operand per inner-dimension chunk: well inside the 1–2 MiB L2 cache
/// of the CPUs with AMX.
const RHS_BUDGET_BYTES: usize = 768 * 1024;

/// The tile configuration (palette 1): tiles 0–3 accumulate 16×16 f32, tiles 4–5 hold
/// 16 rows × 32 bf16 of the left operand, tiles 6–7 16 pairs × 16 columns of the right one.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Whether the CPU has AMX-BF16 and Linux grants this process the tile data; checked once.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var("MMCL_AMX").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        // SAFETY: `cpuid` exists on every x86-64 CPU; leaf 7 is read only where leaf 0 says
        // it exists.
        #[allow(unused_unsafe)]
        let (max_leaf, leaf7) = unsafe {
            let max_leaf = std::arch::x86_64::__cpuid(0).eax;
            (max_leaf, std::arch::x86_64::__cpuid_count(7, 0))
        };
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        if max_leaf < 7 || !amx_bf16 || !amx_tile {
            return false;
        }
        // Linux enables the 8 KiB tile state only for processes that ask for it.
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a system call with integer arguments and no memory effects on this process.
        let status = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        status == 0
    })
}

/// `dst[m, n] (+)= bf16(lhs)·bf16(rhs)` in f32 on the tile unit; see [`super::gemm_bf16`].
///
/// # Safety
/// [`available`] returned true; the views and `dst` satisfy [`super::gemm_bf16`]'s contract;
/// `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let n_blocks = n.div_ceil(BLOCK);
    let m_blocks = m.div_ceil(BLOCK);
    // The inner dimension in chunks whose packed right operand stays in a core's L2 cache
    // while every row block passes over it (a long inner dimension, as in a weight gradient
    // summed over all tokens, would otherwise stream the whole operand from L3 once per row
    // block). Later chunks add onto the earlier ones' results.
    let chunk = (RHS_BUDGET_BYTES / (2 * BLOCK * n_blocks) / KSTEP * KSTEP).max(KSTEP);
    let mut packed_rhs = Vec::new();
    for k0 in (0..k).step_by(chunk) {
        let kc = chunk.min(k - k0);
        let ksteps = kc.div_ceil(KSTEP);
        // Pairs of bf16 along the inner dimension, one u32 each: [n block][kstep][half][pair][col].
        let per_n_block = ksteps * 2 * TILE_PAIRS;
        // SAFETY: the chunk's elements lie inside the operand's view (caller's contract).
        let rhs = unsafe { view(rhs.add(k0 * rhs_rs), (kc, n), (rhs_rs, rhs_cs)) };
        packed_rhs.clear();
        packed_rhs.resize(n_blocks * per_n_block, 0u32);
        let pack = |(nb, block): (usize, &mut [u32])| {
            pack_rhs(rhs, (rhs_rs, rhs_cs), (kc, n), nb, block);
        };
        if parallel {
            packed_rhs
                .par_chunks_mut(per_n_block)
                .enumerate()
                .for_each(pack);
        } else {
            packed_rhs
                .chunks_mut(per_n_block)
                .enumerate()
                .for_each(pack);
        }

        // SAFETY: as above.
        let lhs = unsafe { view(lhs.add(k0 * lhs_strides.1), (m, kc), lhs_strides) };
        let out = SharedMut(dst);
        let packed_rhs = &packed_rhs;
        let accumulate = accumulate || k0 > 0;
        let task = |mb: usize| {
            let a = pack_lhs(lhs, lhs_strides, (m, kc), mb, ksteps);
            // SAFETY: the blocks of row block `mb` are written by this task only; the caller's
            // contract covers the rest.
            unsafe { block_row(&a, packed_rhs, out, dst_rs, (m, n), mb, ksteps, accumulate) };
        };
        if parallel && m_blocks > 1 {
            (0..m_blocks).into_par_iter().for_each(task);
        } else {
            (0..m_blocks).for_each(task);
        }
    }
}

/// The slice holding every element of the `[rows, cols]` view at `ptr` with strides `(rs, cs)`.
///
/// # Safety
/// Those elements must be valid for reads while the slice lives; `rows, cols > 0`.
unsafe fn view<'a>(
    ptr: *const f32,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
) -> &'a [f32] {
    // SAFETY: the extent ends at the view's last element (caller's contract).
    unsafe { std::slice::from_raw_parts(ptr, (rows - 1) * rs + (cols - 1) * cs + 1) }
}

/// Column block `nb` of the right operand (`[k, n]` with strides `(rs, cs)` in `rhs`) as bf16
/// pairs: `block[kstep][half][pair][col]`, zero-padded.
fn pack_rhs(
    rhs: &[f32],
    (rs, cs): (usize, usize),
    (k, n): (usize, usize),
    nb: usize,
    block: &mut [u32],
) {
    let cols = BLOCK.min(n - nb * BLOCK);
    let at = |kk: usize, c: usize| {
        (kk / KSTEP) * 2 * TILE_PAIRS
            + (c / HALF) * TILE_PAIRS
            + ((kk % KSTEP) / 2) * HALF
            + c % HALF
    };
    if cs == 1 {
        // Rows are contiguous: interleave rows 2p and 2p+1 column by column.
        for pair_start in (0..k).step_by(2) {
            let lo = &rhs[pair_start * rs + nb * BLOCK..][..cols];
            let hi =
                (pair_start + 1 < k).then(|| &rhs[(pair_start + 1) * rs + nb * BLOCK..][..cols]);
            for half in 0..cols.div_ceil(HALF) {
                let c0 = half * HALF;
                let width = HALF.min(cols - c0);
                let out = &mut block[at(pair_start, c0)..][..width];
                interleave(&lo[c0..c0 + width], hi.map(|h| &h[c0..c0 + width]), out);
            }
        }
    } else if rs == 1 {
        // Columns are contiguous: consecutive values of a column form the pairs.
        for c in 0..cols {
            let col = &rhs[(nb * BLOCK + c) * cs..][..k];
            for (ks, chunk) in col.chunks(KSTEP).enumerate() {
                let base = at(ks * KSTEP, c);
                pairs_strided(chunk, &mut block[base..], HALF);
            }
        }
    } else {
        for kk in 0..k {
            for c in 0..cols {
                let v = to_bf16_bits(rhs[kk * rs + (nb * BLOCK + c) * cs]) as u32;
                block[at(kk, c)] |= v << (16 * (kk % 2));
            }
        }
    }
}

multiversion! {
    /// `out[c] = bf16(hi[c]) << 16 | bf16(lo[c])` (`hi` absent: zero).
    fn interleave(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) => interleave_kernel
}

#[inline(always)]
fn interleave_kernel(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    match hi {
        Some(hi) => {
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                *o = (to_bf16_bits(h) as u32) << 16 | to_bf16_bits(l) as u32;
            }
        }
        None => {
            for (o, &l) in out.iter_mut().zip(lo) {
                *o = to_bf16_bits(l) as u32;
            }
        }
    }
}

multiversion! {
    /// Consecutive pairs of `values` as bf16 pairs, written `stride` apart in `out`.
    fn pairs_strided(values: &[f32], out: &mut [u32], stride: usize) => pairs_strided_kernel
}

#[inline(always)]
fn pairs_strided_kernel(values: &[f32], out: &mut [u32], stride: usize) {
    for (p, pair) in values.chunks(2).enumerate() {
        let lo = to_bf16_bits(pair[0]) as u32;
        let hi = pair.get(1).map_or(0, |&h| to_bf16_bits(h) as u32);
        out[p * stride] = hi << 16 | lo;
    }
}

multiversion! {
    /// `values` as bf16 into `out` (equal lengths).
    fn convert(values: &[f32], out: &mut [u16]) => convert_kernel
}

#[inline(always)]
fn convert_kernel(values: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o = to_bf16_bits(v);
    }
}

/// Rows `32·mb ..` of the left operand (`[m, k]` with strides `(rs, cs)` in `lhs`) as bf16:
/// `[kstep][row 32][32 values]`, zero-padded.
fn pack_lhs(
    lhs: &[f32],
    (rs, cs): (usize, usize),
    (m, k): (usize, usize),
    mb: usize,
    ksteps: usize,
) -> Vec<u16> {
    let mut a = vec![0u16; ksteps * BLOCK * KSTEP];
    let rows = BLOCK.min(m - mb * BLOCK);
    let at = |r: usize, kk: usize| (kk / KSTEP) * BLOCK * KSTEP + r * KSTEP + kk % KSTEP;
    if cs == 1 {
        for r in 0..rows {
            let row = &lhs[(mb * BLOCK + r) * rs..][..k];
            for (ks, chunk) in row.chunks(KSTEP).enumerate() {
                let start = at(r, ks * KSTEP);
                convert(chunk, &mut a[start..start + chunk.len()]);
            }
        }
    } else {
        // A transposed view: read along its contiguous columns, 32 rows at a time.
        let mut column = [0u16; BLOCK];
        for kk in 0..k {
            if rs == 1 {
                convert(&lhs[kk * cs + mb * BLOCK..][..rows], &mut column[..rows]);
            } else {
                for (r, c) in column[..rows].iter_mut().enumerate() {
                    *c = to_bf16_bits(lhs[(mb * BLOCK + r) * rs + kk * cs]);
                }
            }
            for (r, &c) in column[..rows].iter().enumerate() {
                a[at(r, kk)] = c;
            }
        }
    }
    a
}

/// The output blocks of row block `mb`, one 2×2 group of accumulator tiles at a time.
///
/// # Safety
/// `out` addresses `m` rows of stride `dst_rs` with `n` valid columns, rows `32·mb ..` written
/// by no other task; [`available`] returned true.
#[allow(clippy::too_many_arguments)]
unsafe fn block_row(
    a: &[u16],
    packed_rhs: &[u32],
    out: SharedMut,
    dst_rs: usize,
    (m, n): (usize, usize),
    mb: usize,
    ksteps: usize,
    accumulate: bool,
) {
    let rows = BLOCK.min(m - mb * BLOCK);
    let mut edge = [0f32; BLOCK * BLOCK];
    // SAFETY: the configuration is a valid palette-1 layout; AMX is available.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
    for nb in 0..n.div_ceil(BLOCK) {
        let cols = BLOCK.min(n - nb * BLOCK);
        // SAFETY: row 32·mb, column 32·nb lies inside the output.
        let corner = unsafe { out.get().add(mb * BLOCK * dst_rs + nb * BLOCK) };
        let full = rows == BLOCK && cols == BLOCK;
        // Full blocks are loaded and stored in place; edge blocks through a 32×32 buffer.
        let (c, c_rs) = if full {
            (corner, dst_rs)
        } else {
            edge.fill(0.0);
            if accumulate {
                for r in 0..rows {
                    // SAFETY: r < rows, cols valid columns.
                    let src = unsafe { std::slice::from_raw_parts(corner.add(r * dst_rs), cols) };
                    edge[r * BLOCK..r * BLOCK + cols].copy_from_slice(src);
                }
            }
            (edge.as_mut_ptr(), BLOCK)
        };
        let stride = c_rs * 4;
        // SAFETY: c addresses 32 rows of stride c_rs with 32 columns (in place: a full block of
        // the output; otherwise the edge buffer); the operand tiles read 1 KiB each from the
        // packed buffers, whose sizes are ksteps·1 KiB per row half / column half.
        unsafe {
            let (c00, c01) = (c, c.add(HALF));
            let (c10, c11) = (c.add(HALF * c_rs), c.add(HALF * c_rs + HALF));
            if accumulate || !full {
                asm!(
                    "tileloadd tmm0, [{c00} + {s}*1]",
                    "tileloadd tmm1, [{c01} + {s}*1]",
                    "tileloadd tmm2, [{c10} + {s}*1]",
                    "tileloadd tmm3, [{c11} + {s}*1]",
                    c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                    s = in(reg) stride,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            let b_block = packed_rhs
                .as_ptr()
                .add(nb * ksteps * 2 * TILE_PAIRS)
                .cast::<u16>();
            for ks in 0..ksteps {
                let a0 = a.as_ptr().add(ks * BLOCK * KSTEP);
                let a1 = a0.add(HALF * KSTEP);
                let b0 = b_block.add(ks * 2 * TILE_U16);
                let b1 = b0.add(TILE_U16);
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c00} + {s}*1], tmm0",
                "tilestored [{c01} + {s}*1], tmm1",
                "tilestored [{c10} + {s}*1], tmm2",
                "tilestored [{c11} + {s}*1], tmm3",
                c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                s = in(reg) stride,
                options(nostack),
            );
        }
        if !full {
            for r in 0..rows {
                // SAFETY: r < rows, cols valid columns of the output row.
                let dst = unsafe { std::slice::from_raw_parts_mut(corner.add(r * dst_rs), cols) };
                dst.copy_from_slice(&edge[r * BLOCK..r * BLOCK + cols]);
            }
        }
    }
    // SAFETY: releases this thread's tile state (configured above).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
