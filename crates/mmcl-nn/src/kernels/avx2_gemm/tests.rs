//! The AVX2 engine against the products' definition, and its finishes.

use super::*;
use crate::kernels::gemm::threads_of;
use crate::kernels::simd::Formula;
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
        let start = if accumulate { Start::Dst } else { Start::Zero };
        let done = unsafe { sgemm(p, 1.0, start, threads_of(par), Finish::Sums) };
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
    check_fresh_output_scaled(dims, |p, scale| unsafe {
        sgemm(p, scale, Start::Zero, 2, Finish::Sums)
    });
    let (m, n, k) = dims;
    let (a, b) = (matrix(m * k, 4), matrix(k * n, 5));
    let mut dst = vec![7f32; m * n];
    let product = row_major_product(&mut dst, &a, &b, dims);
    // SAFETY: as above.
    assert!(!unsafe { sgemm(product, 0.5, Start::Dst, 2, Finish::Sums) });
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
        assert!(unsafe { sgemm(product, 1.0, Start::Zero, threads, Finish::Sums) });
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

/// Each finish gives the bits of the sums stored, then its formula applied value by value:
/// whole and edge tiles, an odd row at the end of a block, a sum over several packed blocks
/// (the kept sums continued in the pre-activation), with and without fused multiply-adds.
#[test]
fn finishes_are_their_formulas_on_the_stored_sums() {
    if !has_avx2_fma() {
        return;
    }
    for (m, n, k) in [(301, 290, 200), (37, 21, 2 * KC + 5), (300, 304, 384)] {
        let (lhs, rhs) = (matrix(m * k, 1), matrix(k * n, 2));
        let (bias, pre) = (matrix(n, 3), matrix(m * n, 4));
        // SAFETY (every call below): the views address their vectors; AVX2 and FMA.
        let run = |start: Start<'_>, finish: Finish<'_>| {
            let mut dst = vec![f32::NAN; m * n];
            let product = row_major_product(&mut dst, &lhs, &rhs, (m, n, k));
            assert!(unsafe { sgemm(product, 1.0, start, 2, finish) });
            dst
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let sums = run(Start::Zero, Finish::Sums);
        let biased = run(Start::Bias(&bias), Finish::Sums);
        let expect = |f: &dyn Fn(usize) -> f32| bits(&(0..m * n).map(f).collect::<Vec<_>>());
        for fused in [false, true] {
            let gelu = |v: f32| match fused {
                true => Gelu::<true>.eval([v]),
                false => Gelu::<false>.eval([v]),
            };
            let mut kept = vec![f32::NAN; m * n];
            let at = SharedMut(kept.as_mut_ptr());
            let finish = Finish::Gelu {
                pre: Some(at),
                fused,
            };
            let out = run(Start::Bias(&bias), finish);
            assert_eq!(
                bits(&kept),
                bits(&biased),
                "kept sums, [{m}, {k}]·[{k}, {n}]"
            );
            assert_eq!(bits(&out), expect(&|i| gelu(biased[i])), "GELU, {fused}");
            let out = run(Start::Bias(&bias), Finish::Gelu { pre: None, fused });
            assert_eq!(
                bits(&out),
                expect(&|i| gelu(biased[i])),
                "GELU alone, {fused}"
            );
            let at = SharedMut(pre.as_ptr().cast_mut());
            let out = run(Start::Zero, Finish::GeluGrad { pre: at, fused });
            let grad = |i: usize| match fused {
                true => GeluGrad::<true>.eval([pre[i], sums[i]]),
                false => GeluGrad::<false>.eval([pre[i], sums[i]]),
            };
            assert_eq!(bits(&out), expect(&grad), "GELU's gradient, {fused}");
        }
        let out = run(Start::Zero, Finish::BiasGelu { bias: &bias });
        let value = |i: usize| BiasGeluValue.eval([sums[i], bias[i % n]]);
        assert_eq!(bits(&out), expect(&value), "bias and GELU");
        let mut dst = vec![0f32; m * n];
        let product = row_major_product(&mut dst, &lhs, &rhs, (m, n, k));
        let finish = Finish::Gelu {
            pre: None,
            fused: false,
        };
        assert!(
            !unsafe { sgemm(product, 1.0, Start::Dst, 2, finish) },
            "declined"
        );
    }
}
