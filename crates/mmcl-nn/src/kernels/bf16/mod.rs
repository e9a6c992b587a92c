//! Matrix products with bf16 operands and f32 accumulation ([`crate::precision::Precision::Bf16`]).
//!
//! Three engines compute the same arithmetic: the AMX tile unit where the CPU and the operating
//! system offer it (`amx`), AVX-512 BF16's pair dot products (`avx512`: AMD Zen 4 and later,
//! Intel Cooper Lake) where AMX is missing, and an exact emulation everywhere else (operands
//! rounded to bf16, which f32 holds exactly, then the f32 kernels: a product of two bf16 values
//! is exact in f32, so only the summation order differs). The two hardware engines share one
//! packed driver (`packed`, its operands packed by the AVX-512 code of `pack512`) and treat
//! subnormal values as zero. `MMCL_AMX=0` and
//! `MMCL_AVX512_BF16=0` turn an engine off.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod avx512;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod pack512;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod packed;

use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::RawProduct;

/// `x` rounded to the nearest bf16 (ties to even), as its 16 bits. NaN stays NaN (quiet).
#[inline(always)]
pub(crate) fn to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// `x` rounded to the nearest bf16, as an f32 (exactly representable).
#[inline(always)]
pub(crate) fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16_bits(x) as u32) << 16)
}

/// Whether the AMX engine runs on this machine (CPU support, the kernel's permission to use the
/// tile data, and `MMCL_AMX` not `0`); checked once.
pub(crate) fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        amx::available()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Whether the AVX-512 BF16 engine runs on this machine (CPU support and `MMCL_AVX512_BF16`
/// not `0`); checked once.
pub(crate) fn avx512_bf16_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        avx512::available()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// The engine of a bf16 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The AMX tile unit (only where [`amx_available`]).
    Amx,
    /// AVX-512 BF16 pair dot products (only where [`avx512_bf16_available`]).
    Avx512,
    /// Operands rounded to bf16, then the f32 kernels.
    Emulated,
}

impl Engine {
    /// The fastest engine this machine runs: AMX, else AVX-512 BF16, else the emulation.
    pub(crate) fn best() -> Engine {
        if amx_available() {
            Engine::Amx
        } else if avx512_bf16_available() {
            Engine::Avx512
        } else {
            Engine::Emulated
        }
    }

    /// The engine's name (`amx`, `avx512-bf16`, `emulated`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Engine::Amx => "amx",
            Engine::Avx512 => "avx512-bf16",
            Engine::Emulated => "emulated",
        }
    }
}

/// What the sums of a matrix product are added to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a> {
    /// Nothing: the products replace the destination, which every engine writes without
    /// reading it (so it need not hold initialised values).
    Zero,
    /// The destination's values.
    Dst,
    /// The same row in every row (a linear layer's bias, `n` values); the destination is
    /// written before it is read, so it need not hold initialised values.
    Bias(&'a [f32]),
}

impl Start<'_> {
    /// Writes the bias into every row of `dst` (`m` rows of `n` values, `dst_rs` apart) where
    /// this is [`Start::Bias`], so that an engine can then add its sums onto `dst`; returns
    /// whether the engine must add (`Dst` and `Bias`) rather than replace (`Zero`).
    ///
    /// # Safety
    /// The `m` rows of `n` values at `dst` are valid for writes and no other task uses them;
    /// a bias holds `n` values.
    pub(crate) unsafe fn into_dst(
        self,
        dst: *mut f32,
        (m, n): (usize, usize),
        dst_rs: usize,
    ) -> bool {
        match self {
            Start::Zero => false,
            Start::Dst => true,
            Start::Bias(bias) => {
                let out = crate::kernels::SharedMut(dst);
                let rows = crate::kernels::rows_per_task(n);
                (0..m.div_ceil(rows)).into_par_iter().for_each(|task| {
                    for r in task * rows..((task + 1) * rows).min(m) {
                        // SAFETY: row r's n values are the caller's to write, each by one
                        // task; the bias holds n values.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                bias.as_ptr(),
                                out.get().add(r * dst_rs),
                                n,
                            )
                        };
                    }
                });
                true
            }
        }
    }
}

/// `dst[m, n] = start + Σ_k bf16(lhs[m, k])·bf16(rhs[k, n])` summed in f32 for the strided
/// views of `product`, on `engine` (normally [`Engine::best`]). A hardware engine the machine
/// lacks falls back to the emulation.
///
/// # Safety
/// As [`super::gemm::gemm_raw`]: every element addressed through the pointers and strides must
/// be valid, and `dst` must not alias the inputs or be written concurrently by another task.
/// With [`Start::Bias`] the bias holds `n` values.
pub(crate) unsafe fn gemm_bf16(
    engine: Engine,
    product: RawProduct,
    start: Start<'_>,
    parallelism: Parallelism,
) {
    let (m, n, k) = product.dims;
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let block_row: Option<packed::BlockRow> = match engine {
            Engine::Amx if amx::available() => Some(amx::block_row),
            Engine::Avx512 if avx512::available() => Some(avx512::block_row),
            _ => None,
        };
        if let Some(block_row) = block_row
            && k > 0
        {
            let parallel = !matches!(parallelism, Parallelism::None);
            // SAFETY: forwarded from the caller's contract; the engine's instructions are
            // available.
            unsafe { packed::gemm(block_row, product, start, parallel) };
            return;
        }
    }
    let _ = engine;
    // SAFETY: the destination's rows are the caller's (contract above).
    let accumulate = unsafe { start.into_dst(product.dst, (m, n), product.dst_rs) };
    // The emulation: contiguous bf16-rounded copies, then the f32 product.
    // SAFETY: the caller guarantees every addressed element is valid.
    let a = unsafe { gather_rounded(product.lhs, (m, k), product.lhs_strides) };
    // SAFETY: as above.
    let b = unsafe { gather_rounded(product.rhs, (k, n), product.rhs_strides) };
    let rounded = RawProduct {
        lhs: a.as_ptr(),
        lhs_strides: (k, 1),
        rhs: b.as_ptr(),
        rhs_strides: (n, 1),
        ..product
    };
    // SAFETY: the copies are row-major [m, k] and [k, n]; `dst` is forwarded from the caller.
    unsafe { super::gemm::gemm_raw(rounded, 1.0, accumulate, parallelism) };
}

/// A row-major copy of the `[rows, cols]` view at `src`, each value rounded to bf16.
///
/// # Safety
/// Every element `src[r·rs + c·cs]` of the view must be valid.
unsafe fn gather_rounded(
    src: *const f32,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            // SAFETY: inside the view (caller's contract).
            out.push(round_to_bf16(unsafe { *src.add(r * rs + c * cs) }));
        }
    }
    out
}

#[cfg(test)]
mod tests;
