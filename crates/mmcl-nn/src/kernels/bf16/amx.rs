//! The AMX block kernel of the bf16 products (x86-64 Linux): a 2×2 block of 16×16 f32
//! accumulator tiles over the packed operands of [`super::packed`].
//!
//! Hand-written because no crate offers AMX from Rust and the Debian oneDNN is too old to be a
//! dependency worth its weight; the tile instructions go through `asm!` (stable Rust has no AMX
//! intrinsics).

use std::arch::asm;
use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
use std::sync::OnceLock;

use super::Start;
use super::packed::{BLOCK, HALF, KSTEP, RowBlock, TILE_PAIRS, TILE_U16};

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

/// The output blocks of `block`, one 2×2 group of accumulator tiles at a time.
///
/// # Safety
/// As [`super::packed::BlockRow`]; [`available`] returned true.
pub(super) unsafe fn block_row(block: RowBlock<'_>) {
    let RowBlock {
        a,
        packed_rhs,
        ksteps,
        start,
        dst_rs,
        ..
    } = block;
    let rows = block.rows();
    let mut edge = [0f32; BLOCK * BLOCK];
    // SAFETY: the configuration is a valid palette-1 layout; AMX is available.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
    for (nb, cols) in block.column_blocks() {
        // SAFETY: row 32·mb, column 32·nb lies inside the output.
        let corner = unsafe { block.corner(0, nb) };
        let full = rows == BLOCK && cols == BLOCK;
        // Full blocks are loaded and stored in place; edge blocks through a 32×32 buffer.
        let (c, c_rs) = if full {
            (corner, dst_rs)
        } else {
            edge.fill(0.0);
            for r in 0..rows {
                let src = match start {
                    Start::Zero => break,
                    // SAFETY: r < rows, cols valid columns.
                    Start::Dst => unsafe {
                        std::slice::from_raw_parts(corner.add(r * dst_rs), cols)
                    },
                    Start::Bias(bias) => &bias[nb * BLOCK..nb * BLOCK + cols],
                };
                edge[r * BLOCK..r * BLOCK + cols].copy_from_slice(src);
            }
            (edge.as_mut_ptr(), BLOCK)
        };
        let stride = c_rs * 4;
        // SAFETY: c addresses 32 rows of stride c_rs with 32 columns (in place: a full block of
        // the output; otherwise the edge buffer); the operand tiles read 1 KiB each from the
        // packed buffers, whose sizes are ksteps·1 KiB per row half / column half; a full
        // block's bias tiles read the bias's 32 values of this column block.
        unsafe {
            let (c00, c01) = (c, c.add(HALF));
            let (c10, c11) = (c.add(HALF * c_rs), c.add(HALF * c_rs + HALF));
            if let (Start::Bias(bias), true) = (start, full) {
                // Every row of the block starts from the bias: a row stride of 0 loads the same
                // 16 values into all 16 rows of a tile, so the output is written once and
                // never read.
                let b0 = bias.as_ptr().add(nb * BLOCK);
                let b1 = b0.add(HALF);
                asm!(
                    "tileloadd tmm0, [{b0} + {s}*1]",
                    "tileloadd tmm1, [{b1} + {s}*1]",
                    "tileloadd tmm2, [{b0} + {s}*1]",
                    "tileloadd tmm3, [{b1} + {s}*1]",
                    b0 = in(reg) b0, b1 = in(reg) b1,
                    s = in(reg) 0usize,
                    options(nostack, readonly),
                );
            } else if matches!(start, Start::Dst) || !full {
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
                // The right operand streams from L2 (the left one stays in L1): its next two
                // tiles (2 KiB, contiguous, the next column block's first after the last
                // step) are fetched into L1 while these products run. A prefetch of an
                // address past the buffer is harmless, hence `wrapping_add`.
                let next = b0.wrapping_add(2 * TILE_U16).cast::<i8>();
                for line in 0..2 * TILE_U16 * 2 / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line * 64));
                }
                // Each product starts as soon as its two tiles are in: the tile registers are
                // not renamed, so loading all four first makes the first product wait for the
                // last load (10–15 % slower on an Emerald Rapids core, data in L1).
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm6, [{b0} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {s}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {s}*1]",
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
