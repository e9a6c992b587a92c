//! The f32 matrix products on the system's OpenBLAS (`cblas_sgemm`), behind the `openblas`
//! feature: for CPUs where OpenBLAS's hand-tuned kernels beat the `gemm` crate's (Intel Xeons
//! with two 512-bit FMA units, where PyTorch's MKL products ran at twice the `gemm` crate's
//! GFLOP/s). The default build stays pure cargo; with the feature, [`sgemm`] serves every f32
//! product whose operands BLAS can describe. At run time `MMCL_OPENBLAS=0` turns it off, and it
//! stays off by itself where OpenBLAS picked kernels older than the CPU ([`enabled`]).
//!
//! The declarations are written here rather than taken from `cblas-sys`: two functions and a
//! thread setting, where a binding crate would bring a build script and a second copy of the
//! library search (Debian's `libopenblas-dev` puts `libopenblas.so` on the default path).
//!
//! Threads: OpenBLAS is told to use one thread per call, and large products are split into row
//! (or column) blocks over rayon's pool here, as the `gemm` crate's are; the kernels also call
//! products from inside their own parallel loops, where a second thread pool would oversubscribe
//! the cores.

use std::ffi::{CStr, c_char, c_int};
use std::sync::{Once, OnceLock};

use rayon::prelude::*;

use super::gemm::{RawProduct, SharedProduct};

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

#[link(name = "openblas")]
unsafe extern "C" {
    fn cblas_sgemm(
        layout: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn openblas_set_num_threads(threads: c_int);
    fn openblas_get_corename() -> *const c_char;
}

/// Whether the f32 products run on OpenBLAS; decided once. `MMCL_OPENBLAS=0` turns it off,
/// `MMCL_OPENBLAS=1` (or an `OPENBLAS_CORETYPE` choice) on; otherwise it is on unless OpenBLAS
/// chose kernels older than this CPU's vector units, which is said once on stderr (an OpenBLAS
/// older than the CPU falls back to generic kernels: Debian 12's 0.3.21 runs an Emerald Rapids
/// Xeon on its SSE3 "Prescott" ones, 4-5x slower than the gemm crate).
pub(crate) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        match std::env::var("MMCL_OPENBLAS").as_deref().map(str::trim) {
            Ok("0") => return false,
            Ok("1") => return true,
            _ => {}
        }
        if std::env::var_os("OPENBLAS_CORETYPE").is_some_and(|v| !v.is_empty()) {
            return true; // the user chose OpenBLAS's kernels
        }
        let core = core_name();
        let (avx512, avx2_fma) = vector_units();
        let Some(wanted) = kernels_for_wider_vectors(&core, avx512, avx2_fma) else {
            return true;
        };
        eprintln!(
            "note: OpenBLAS chose its {core} kernels, older than this CPU's vector units; the f32 \
             products stay on the gemm crate (OPENBLAS_CORETYPE={wanted} gives OpenBLAS better \
             ones; MMCL_OPENBLAS=1 uses it as it is, MMCL_OPENBLAS=0 not at all)"
        );
        false
    })
}

/// Whether this CPU has AVX-512F, and AVX2 with FMA.
fn vector_units() -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        (has!("avx512f"), has!("avx2") && has!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (false, false)
    }
}

/// The OpenBLAS kernel family to ask for (`OPENBLAS_CORETYPE`) when `core`, the one the library
/// chose, does not use the CPU's widest vector units: AVX-512 (`SkylakeX` and later) or AVX2 with
/// FMA (`Haswell`, `Zen` and later); `None` when it does.
fn kernels_for_wider_vectors(core: &str, avx512: bool, avx2_fma: bool) -> Option<&'static str> {
    const AVX512_KERNELS: [&str; 3] = ["SkylakeX", "Cooperlake", "SapphireRapids"];
    const AVX2_KERNELS: [&str; 2] = ["Haswell", "Zen"];
    let among = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(core));
    if avx512 && !among(&AVX512_KERNELS) {
        Some("SkylakeX")
    } else if avx2_fma && !among(&AVX512_KERNELS) && !among(&AVX2_KERNELS) {
        Some("Haswell")
    } else {
        None
    }
}

/// The kernel family OpenBLAS chose for this CPU (`"Haswell"`, `"SkylakeX"`, `"Cooperlake"`,
/// `"SapphireRapids"`, …).
pub(crate) fn core_name() -> String {
    // SAFETY: the library returns a pointer to a static NUL-terminated string (or null).
    let name = unsafe { openblas_get_corename() };
    if name.is_null() {
        return "unknown".to_string();
    }
    // SAFETY: non-null, NUL-terminated and static (above).
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// One operand as BLAS takes it: transposed or not, and its leading dimension.
fn operand(strides: (usize, usize), rows: usize, cols: usize) -> Option<(c_int, c_int)> {
    let (rs, cs) = strides;
    // A row-major view ([rows, cols] with unit column stride), or the transpose of one. With a
    // single row or column the other stride is arbitrary; BLAS only asks it to be ≥ the width.
    let (trans, ld) = if cs == 1 && (rs >= cols.max(1) || rows == 1) {
        (CBLAS_NO_TRANS, rs.max(cols).max(1))
    } else if rs == 1 && (cs >= rows.max(1) || cols == 1) {
        (CBLAS_TRANS, cs.max(rows).max(1))
    } else {
        return None;
    };
    Some((trans, c_int::try_from(ld).ok()?))
}

/// Products smaller than this many multiply-adds run on one thread.
const PARALLEL_WORK: usize = 1 << 21;

/// `dst[m, n] = beta · Σ_k lhs[m, k] · rhs[k, n]` (plus `dst` if `accumulate`) on OpenBLAS, split
/// over `threads` rayon tasks when large; `false` (nothing written) when BLAS cannot describe the
/// views (a stride pattern without a unit dimension, or sizes beyond `c_int`).
///
/// # Safety
/// As [`super::gemm::gemm_raw`].
pub(crate) unsafe fn sgemm(
    product: RawProduct,
    beta: f32,
    accumulate: bool,
    threads: usize,
) -> bool {
    static ONE_THREAD_PER_CALL: Once = Once::new();
    // SAFETY: sets a global of the library, once, before its first product.
    ONE_THREAD_PER_CALL.call_once(|| unsafe { openblas_set_num_threads(1) });
    let (m, n, k) = product.dims;
    let fits = |v: usize| c_int::try_from(v).is_ok();
    let (Some(a), Some(b)) = (
        operand(product.lhs_strides, m, k),
        operand(product.rhs_strides, k, n),
    ) else {
        return false;
    };
    // The destination's rows, `ldc` apart, must not overlap (a single row may have any stride).
    let ldc = if m == 1 { n } else { product.dst_rs };
    if ldc < n || !(fits(m) && fits(n) && fits(k) && fits(ldc)) {
        return false;
    }
    let parts = if m.saturating_mul(n).saturating_mul(k) < PARALLEL_WORK {
        1
    } else {
        threads.max(1)
    };
    // Rows when there are enough (each task then packs all of `rhs`, which is small against its
    // share of the work), columns otherwise.
    let by_rows = m >= 16 * parts || m >= n;
    let len = if by_rows { m } else { n };
    let step = len.div_ceil(parts).max(1);
    let shared = SharedProduct(product);
    let call = |block: usize| {
        let start = block * step;
        let size = step.min(len - start);
        let mut part = shared.get();
        // SAFETY: `start` lies inside the product's rows (or columns), so every moved pointer
        // still addresses elements of the caller's views, and the blocks write disjoint rows
        // (columns) of the destination; the rest is the caller's contract.
        unsafe {
            if by_rows {
                part.dims.0 = size;
                part.dst = part.dst.add(start * part.dst_rs);
                part.lhs = part.lhs.add(start * part.lhs_strides.0);
            } else {
                part.dims.1 = size;
                part.dst = part.dst.add(start);
                part.rhs = part.rhs.add(start * part.rhs_strides.1);
            }
            one_call(part, a, b, beta, accumulate);
        }
    };
    match len.div_ceil(step) {
        0 | 1 => call(0),
        blocks => (0..blocks).into_par_iter().for_each(call),
    }
    true
}

/// One `cblas_sgemm` call for `part`, whose operands are laid out as `a` and `b` say.
///
/// # Safety
/// As [`sgemm`]; the sizes fit `c_int` (checked there).
unsafe fn one_call(
    part: RawProduct,
    (trans_a, lda): (c_int, c_int),
    (trans_b, ldb): (c_int, c_int),
    beta: f32,
    accumulate: bool,
) {
    let (m, n, k) = part.dims;
    if m == 0 || n == 0 {
        return;
    }
    // BLAS computes C = α·A·B + β·C, and with β = 0 never reads C (so NaN or garbage in a fresh
    // output does not leak into it); the product's scale is α here.
    let c_beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: forwarded from the caller; the sizes fit c_int.
    unsafe {
        cblas_sgemm(
            CBLAS_ROW_MAJOR,
            trans_a,
            trans_b,
            m as c_int,
            n as c_int,
            k as c_int,
            beta,
            part.lhs,
            lda,
            part.rhs,
            ldb,
            c_beta,
            part.dst,
            if m == 1 { n } else { part.dst_rs } as c_int,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{gemm_raw, threads_of};
    use crate::kernels::test_support::{Layout, check_fresh_output_scaled, check_products, matrix};

    /// Small shapes, edges of one block, and two products large enough to be split over tasks:
    /// by rows (many rows) and by columns (few rows, many columns).
    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (1, 40, 7),
        (33, 17, 31),
        (70, 64, 100),
        (5, 95, 64),
        (300, 40, 200),
        (8, 700, 400),
    ];

    #[test]
    fn openblas_products_equal_their_definition() {
        assert!(!core_name().is_empty());
        let layouts = [Layout::Rows, Layout::Columns];
        check_products("openblas", &SHAPES, &layouts, |p, par, accumulate| {
            // SAFETY: `check_product` hands out views inside its buffers.
            let done = unsafe { sgemm(p, 1.0, accumulate, threads_of(par)) };
            assert!(done, "BLAS describes row- and column-major operands");
        });
    }

    /// Generic kernels on a CPU with wider vectors are refused, naming the family to ask for;
    /// fitting or newer-than-needed families are kept; names compare in any case.
    #[test]
    fn kernels_older_than_the_cpu_are_recognised() {
        let cases = [
            ("Prescott", true, true, Some("SkylakeX")),
            ("Haswell", true, true, Some("SkylakeX")),
            ("SkylakeX", true, true, None),
            ("SAPPHIRERAPIDS", true, true, None),
            ("Prescott", false, true, Some("Haswell")),
            ("Sandybridge", false, true, Some("Haswell")),
            ("Zen", false, true, None),
            ("SkylakeX", false, true, None),
            ("Prescott", false, false, None),
        ];
        for (core, avx512, avx2_fma, wanted) in cases {
            assert_eq!(
                kernels_for_wider_vectors(core, avx512, avx2_fma),
                wanted,
                "{core}, avx512 {avx512}, avx2+fma {avx2_fma}"
            );
        }
    }

    /// Views without a unit stride are declined, untouched, and the `gemm` crate computes them:
    /// through the one f32 entry point every layout gives the product.
    #[test]
    fn views_blas_cannot_describe_fall_back_to_the_gemm_crate() {
        let (m, n, k) = (6, 5, 4);
        let (a, b) = (matrix(2 * m * k, 1), matrix(2 * k * n, 2));
        let mut dst = vec![7.0f32; m * n];
        let product = RawProduct {
            dims: (m, n, k),
            dst: dst.as_mut_ptr(),
            dst_rs: n,
            lhs: a.as_ptr(),
            lhs_strides: Layout::Spread.strides(m, k),
            rhs: b.as_ptr(),
            rhs_strides: (n, 1),
        };
        // SAFETY: the views lie inside `a`, `b` and `dst`.
        assert!(!unsafe { sgemm(product, 1.0, false, 2) });
        assert!(
            dst.iter().all(|&v| v == 7.0),
            "a declined product writes nothing"
        );
        check_products("gemm_raw", &SHAPES, &Layout::ALL, |p, par, accumulate| {
            // SAFETY: as above.
            unsafe { gemm_raw(p, 1.0, accumulate, par) }
        });
    }

    /// A new output is written, never read, and the product's scale is applied.
    #[test]
    fn fresh_outputs_are_overwritten_and_scaled() {
        // SAFETY: the helper hands out views inside its buffers.
        check_fresh_output_scaled((40, 30, 20), |p, scale| unsafe {
            sgemm(p, scale, false, 2)
        });
    }
}
