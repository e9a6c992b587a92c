//! The packed driver of the bf16 products on x86-64 Linux, shared by the two engines that
//! multiply bf16 pairs in hardware: the AMX tile unit (`amx`) and AVX-512 BF16 (`avx512`).
//!
//! The right operand is packed once into the pair-interleaved ("VNNI") layout both instruction
//! sets read (two consecutive inner-dimension values of one column side by side in 32 bits),
//! each task packs a block of 32 rows of the left operand, and the engine's block kernel runs
//! a 32×32 output block over the whole inner dimension, so each output element is written once.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Start, pack512, to_bf16_bits};
use crate::kernels::gemm::RawProduct;
use crate::kernels::{SharedMut, transpose};

/// bf16 values in one tile row (64 bytes): the inner-dimension step of the packed operands.
pub(super) const KSTEP: usize = 32;
/// Rows of a tile; also the f32 columns of a half block.
pub(super) const HALF: usize = 16;
/// Rows and columns of the output block a block kernel computes at once.
pub(super) const BLOCK: usize = 32;
/// u16 values in one operand tile (16 rows of 64 bytes).
pub(super) const TILE_U16: usize = HALF * KSTEP;
/// bf16 pairs (u32) in one operand tile.
pub(super) const TILE_PAIRS: usize = TILE_U16 / 2;
/// Bytes of packed right operand per inner-dimension chunk: three quarters of a core's L2
/// cache (1 MiB on AMD Zen 4, 2 MiB on Sapphire and Emerald Rapids), read once from the
/// operating system. A chunk that is too small splits the inner dimension of the encoder's
/// `[384 → 1152]` and `[384 → 1536]` products on the 2 MiB parts, and every extra chunk reads
/// and writes the whole output once more; one that is too large streams the operand from L3
/// once per row block.
fn rhs_budget_bytes() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        // glibc reads the cache sizes from `cpuid`; elsewhere, or when it does not know, 1 MiB.
        #[cfg(target_env = "gnu")]
        // SAFETY: `sysconf` only reads system information.
        let l2 = unsafe { libc::sysconf(libc::_SC_LEVEL2_CACHE_SIZE) };
        #[cfg(not(target_env = "gnu"))]
        let l2 = 0;
        let l2 = usize::try_from(l2)
            .ok()
            .filter(|&b| b > 0)
            .unwrap_or(1 << 20);
        (l2 / 4 * 3).clamp(256 * 1024, 3 << 20)
    })
}

/// One task of a block kernel: the output blocks of row block `mb`.
#[derive(Clone, Copy)]
pub(super) struct RowBlock<'a> {
    /// The row block of the left operand, packed by [`pack_lhs`].
    pub(super) a: &'a [u16],
    /// Every column block of the right operand, packed by [`pack_rhs`].
    pub(super) packed_rhs: &'a [u32],
    /// The output: `m` rows of stride `dst_rs` with `n` valid columns.
    pub(super) out: SharedMut,
    /// The output's row stride.
    pub(super) dst_rs: usize,
    /// `(m, n)`: the output's rows and columns.
    pub(super) dims: (usize, usize),
    /// The row block: output rows `32·mb ..`.
    pub(super) mb: usize,
    /// The inner-dimension steps the packed operands hold.
    pub(super) ksteps: usize,
    /// What the output blocks start from (the output itself, zeros, or the bias row).
    pub(super) start: Start<'a>,
}

impl RowBlock<'_> {
    /// The valid rows of this row block (32, fewer in the last one).
    pub(super) fn rows(&self) -> usize {
        BLOCK.min(self.dims.0 - self.mb * BLOCK)
    }

    /// The column blocks of the output: each one's index `nb` and valid columns (32, fewer in
    /// the last one).
    pub(super) fn column_blocks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let n = self.dims.1;
        (0..n.div_ceil(BLOCK)).map(move |nb| (nb, BLOCK.min(n - nb * BLOCK)))
    }

    /// The output element in row `r` of this row block and the first column of column block
    /// `nb`.
    ///
    /// # Safety
    /// That element lies inside the output (`r` below [`Self::rows`], `nb` a column block).
    pub(super) unsafe fn corner(&self, r: usize, nb: usize) -> *mut f32 {
        // SAFETY: inside the output (caller's contract).
        unsafe {
            self.out
                .get()
                .add((self.mb * BLOCK + r) * self.dst_rs + nb * BLOCK)
        }
    }
}

/// A block kernel: computes the output blocks of one [`RowBlock`].
///
/// # Safety
/// The row block's output rows are written by no other task, and the CPU has the engine's
/// instructions.
pub(super) type BlockRow = unsafe fn(RowBlock<'_>);

/// `dst[m, n] = start + bf16(lhs)·bf16(rhs)` in f32 with `block_row` computing the output
/// blocks; see [`super::gemm_bf16`].
///
/// # Safety
/// The CPU has `block_row`'s instructions; `product` satisfies [`super::gemm_bf16`]'s
/// contract; `m, n, k > 0`.
pub(super) unsafe fn gemm(
    block_row: BlockRow,
    product: RawProduct,
    start: Start<'_>,
    parallel: bool,
) {
    if transpose_is_cheaper(&product, start) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { gemm_transposed(block_row, product, start, parallel) };
    } else {
        // SAFETY: as above.
        unsafe { gemm_oriented(block_row, product, start, parallel) };
    }
}

/// Whether `product` costs less computed as its transpose, `Cᵀ = Bᵀ·Aᵀ`, then transposed
/// into place: where the left operand runs along `m` (`Aᵀ` of a row-major `A`: `dSᵀ·Q` and
/// `Pᵀ·dO` in an attention's backward pass, `dYᵀ·X` in a linear layer's weight gradient)
/// and the right one along `n`. Such a left operand is packed with a register transpose per
/// 16 × 16 values; transposed, it becomes a right operand whose rows are merely interleaved in
/// pairs, and the transposition moves onto the smaller `Bᵀ` and the output. Measured per value
/// in an attention's backward pass on an Emerald Rapids Xeon: 0.8 ns for the first packer,
/// 0.5 ns for the second, 1–2 ns to move an output value through the buffer; hence roughly
/// `m·k > n·k + 3·m·n` (every product of the MAE step that passes it ran faster transposed,
/// `docs/performance.md`). A bias start stays in its orientation (its row would become a
/// column).
fn transpose_is_cheaper(product: &RawProduct, start: Start<'_>) -> bool {
    let (m, n, k) = product.dims;
    let (lhs_rs, lhs_cs) = product.lhs_strides;
    let lhs_along_m = lhs_rs == 1 && lhs_cs != 1;
    let rhs_along_n = product.rhs_strides.1 == 1;
    !matches!(start, Start::Bias(_))
        && lhs_along_m
        && rhs_along_n
        && m.saturating_mul(k)
            > n.saturating_mul(k)
                .saturating_add(m.saturating_mul(n).saturating_mul(3))
}

/// [`gemm`] as `Cᵀ = Bᵀ·Aᵀ` into a buffer, then transposed into `dst`. Every output value is
/// the same chain of pair products in the same order along `k` either way (both engines'
/// pair products are symmetric in their two factors, and the chunking along `k` only stores
/// and reloads f32 sums), so the bits are those of [`gemm_oriented`].
///
/// # Safety
/// As [`gemm`].
unsafe fn gemm_transposed(
    block_row: BlockRow,
    product: RawProduct,
    start: Start<'_>,
    parallel: bool,
) {
    let (m, n, _) = product.dims;
    let (dst, dst_rs) = (product.dst, product.dst_rs);
    let mut transposed = vec![0f32; n * m];
    if matches!(start, Start::Dst) {
        // SAFETY: the destination's m rows of n values are the caller's.
        unsafe { transpose(dst, dst_rs, (m, n), transposed.as_mut_ptr(), m) };
    }
    // `Bᵀ` and `Aᵀ` are the same elements with their strides swapped.
    let swapped = RawProduct {
        dims: (n, m, product.dims.2),
        dst: transposed.as_mut_ptr(),
        dst_rs: m,
        lhs: product.rhs,
        lhs_strides: (product.rhs_strides.1, product.rhs_strides.0),
        rhs: product.lhs,
        rhs_strides: (product.lhs_strides.1, product.lhs_strides.0),
    };
    // SAFETY: the operands are the caller's views read transposed; the buffer holds n rows of
    // m values and aliases nothing.
    unsafe { gemm_oriented(block_row, swapped, start, parallel) };
    // SAFETY: the buffer holds n rows of m values; the destination is the caller's.
    unsafe { transpose(transposed.as_ptr(), m, (n, m), dst, dst_rs) };
}

/// [`gemm`] in the product's own orientation.
///
/// # Safety
/// As [`gemm`].
unsafe fn gemm_oriented(
    block_row: BlockRow,
    product: RawProduct,
    start: Start<'_>,
    parallel: bool,
) {
    let RawProduct {
        dims: (m, n, k),
        dst,
        dst_rs,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides: (rhs_rs, rhs_cs),
    } = product;
    let n_blocks = n.div_ceil(BLOCK);
    let m_blocks = m.div_ceil(BLOCK);
    // The inner dimension in chunks whose packed right operand stays in a core's L2 cache
    // while every row block passes over it (a long inner dimension, as in a weight gradient
    // summed over all tokens, would otherwise stream the whole operand from L3 once per row
    // block). Later chunks add onto the earlier ones' results.
    let chunk = (rhs_budget_bytes() / (2 * BLOCK * n_blocks) / KSTEP * KSTEP).max(KSTEP);
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
        let start = if k0 > 0 { Start::Dst } else { start };
        let task = |mb: usize| {
            PACKED_LHS.with_borrow_mut(|buffer| {
                let a = pack_lhs(lhs, lhs_strides, (m, kc), mb, ksteps, buffer);
                // SAFETY: the blocks of row block `mb` are written by this task only; the
                // caller's contract covers the rest.
                unsafe {
                    block_row(RowBlock {
                        a,
                        packed_rhs,
                        out,
                        dst_rs,
                        dims: (m, n),
                        mb,
                        ksteps,
                        start,
                    })
                };
            });
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
/// pairs: `block[kstep][half][pair][col]`, zero-padded (`block` arrives zeroed).
fn pack_rhs(
    rhs: &[f32],
    (rs, cs): (usize, usize),
    (k, n): (usize, usize),
    nb: usize,
    block: &mut [u32],
) {
    if pack512::available() && (rs == 1 || cs == 1) {
        let native = pack512::native_conversion();
        // SAFETY: the CPU has AVX-512 F and BW, and BF16 where `native`; the view and the
        // block are the caller's.
        unsafe {
            if rs == 1 {
                pack512::pack_rhs_k_contiguous(rhs, cs, (k, n), nb, block, native);
            } else {
                pack512::pack_rhs_n_contiguous(rhs, rs, (k, n), nb, block, native);
            }
        }
        return;
    }
    // Any other view (no contiguous dimension), one value at a time.
    let cols = BLOCK.min(n - nb * BLOCK);
    for kk in 0..k {
        for c in 0..cols {
            let at = (kk / KSTEP) * 2 * TILE_PAIRS
                + (c / HALF) * TILE_PAIRS
                + ((kk % KSTEP) / 2) * HALF
                + c % HALF;
            let v = to_bf16_bits(rhs[kk * rs + (nb * BLOCK + c) * cs]) as u32;
            block[at] |= v << (16 * (kk % 2));
        }
    }
}

thread_local! {
    /// Each thread's packed left operand, reused from task to task: a fresh buffer per row
    /// block cost an allocation, its zero-fill and its release (about 4 % of a bf16 MAE step,
    /// most of it in the allocator's `free`).
    static PACKED_LHS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Rows `32·mb ..` of the left operand (`[m, k]` with strides `(rs, cs)` in `lhs`) as bf16:
/// `[kstep][row 32][32 values]`, zero-padded, in the front of `buffer` (grown as needed).
fn pack_lhs<'b>(
    lhs: &[f32],
    (rs, cs): (usize, usize),
    (m, k): (usize, usize),
    mb: usize,
    ksteps: usize,
    buffer: &'b mut Vec<u16>,
) -> &'b [u16] {
    let len = ksteps * BLOCK * KSTEP;
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    let a = &mut buffer[..len];
    if pack512::available() && (rs == 1 || cs == 1) {
        let native = pack512::native_conversion();
        // SAFETY: the CPU has AVX-512 F and BW, and BF16 where `native`; `a` holds `ksteps`
        // steps of the row block.
        unsafe {
            if cs == 1 {
                pack512::pack_lhs_k_contiguous(lhs, rs, (m, k), mb, a, native);
            } else {
                pack512::pack_lhs_m_contiguous(lhs, cs, (m, k), mb, a, native);
            }
        }
        return a;
    }
    // Any other view, one value at a time, over zeros (the buffer holds an earlier block).
    a.fill(0);
    for r in 0..BLOCK.min(m - mb * BLOCK) {
        for kk in 0..k {
            let at = (kk / KSTEP) * BLOCK * KSTEP + r * KSTEP + kk % KSTEP;
            a[at] = to_bf16_bits(lhs[(mb * BLOCK + r) * rs + kk * cs]);
        }
    }
    a
}
