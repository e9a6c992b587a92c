use super::*;
use crate::kernels::test_support::{Layout, check_product, row_major_product};

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(to_bf16_bits(1.0), 0x3f80);
    assert_eq!(to_bf16_bits(-2.0), 0xc000);
    // 1 + 2⁻⁸ lies halfway between 1 and the next bf16 (1 + 2⁻⁷): ties go to the even one.
    assert_eq!(to_bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
    // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶ (even).
    assert_eq!(to_bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    // Just above the halfway point rounds up.
    assert_eq!(to_bf16_bits(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
    assert_eq!(to_bf16_bits(f32::INFINITY), 0x7f80);
    assert_eq!(
        to_bf16_bits(f32::MAX),
        0x7f80,
        "overflow rounds to infinity"
    );
    assert!(round_to_bf16(f32::NAN).is_nan());
    assert_eq!(round_to_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(
        round_to_bf16(3.140625),
        3.140625,
        "bf16 values are fixed points"
    );
}

/// Checks one product on `engine` against f64 sums of the bf16-rounded operands.
fn check(
    engine: Engine,
    dims: (usize, usize, usize),
    lhs_layout: Layout,
    rhs_layout: Layout,
    accumulate: bool,
) {
    let label = format!("{engine:?}");
    check_product(
        &label,
        dims,
        (lhs_layout, rhs_layout),
        accumulate,
        round_to_bf16,
        |product, parallelism| {
            let start = if accumulate { Start::Dst } else { Start::Zero };
            // SAFETY: forwarded from `check_product`, which hands out checked views.
            unsafe { gemm_bf16(engine, product, start, parallelism) }
        },
    );
}

fn check_engine(engine: Engine) {
    let shapes = [
        (1, 1, 1),
        (32, 32, 32),
        (33, 17, 31),
        (70, 64, 100),
        (16, 48, 33),
        (5, 95, 64),
        // Tall and deep against few columns: a left operand along `m` is multiplied
        // transposed (`packed::transpose_is_cheaper`).
        (100, 8, 90),
    ];
    for dims in shapes {
        for (lhs, rhs) in Layout::ALL
            .into_iter()
            .flat_map(|l| Layout::ALL.map(|r| (l, r)))
        {
            for accumulate in [false, true] {
                check(engine, dims, lhs, rhs, accumulate);
            }
        }
    }
}

#[test]
fn emulated_products_sum_bf16_operands_in_f32() {
    check_engine(Engine::Emulated);
}

/// The tile engine, where this machine has it (elsewhere the test has nothing to run and says so).
#[test]
fn amx_products_sum_bf16_operands_in_f32() {
    if !amx_available() {
        eprintln!("no AMX on this machine (or MMCL_AMX=0): the tile engine is not exercised");
        return;
    }
    check_engine(Engine::Amx);
    // A long inner dimension against a wide output: several inner-dimension chunks.
    for (lhs, accumulate) in [(Layout::Rows, false), (Layout::Columns, true)] {
        check(Engine::Amx, (33, 1540, 600), lhs, Layout::Rows, accumulate);
    }
}

/// The AVX-512 BF16 engine, where this machine has it.
#[test]
fn avx512_bf16_products_sum_bf16_operands_in_f32() {
    if !avx512_bf16_available() {
        eprintln!(
            "no AVX-512 BF16 on this machine (or MMCL_AVX512_BF16=0): the engine is not exercised"
        );
        return;
    }
    check_engine(Engine::Avx512);
    for (lhs, accumulate) in [(Layout::Rows, false), (Layout::Columns, true)] {
        check(
            Engine::Avx512,
            (33, 1540, 600),
            lhs,
            Layout::Rows,
            accumulate,
        );
    }
}

/// A bias start gives the same values as the bias written into the rows and added onto, and
/// never reads the destination (NaN there would show), on every engine this machine has.
#[test]
fn bias_start_equals_adding_onto_bias_rows() {
    let engines = [
        (Engine::Emulated, true),
        (Engine::Amx, amx_available()),
        (Engine::Avx512, avx512_bf16_available()),
    ];
    for (engine, present) in engines {
        if !present {
            continue;
        }
        for (m, n, k) in [(1, 1, 1), (64, 64, 64), (33, 70, 31), (70, 1540, 600)] {
            let values = |len: usize, seed: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * 37 + seed) % 101) as f32 / 50.0 - 1.0)
                    .collect()
            };
            let (lhs, rhs, bias) = (values(m * k, 3), values(k * n, 4), values(n, 5));
            let product = |dst: &mut [f32], start: Start<'_>| {
                let product = row_major_product(dst, &lhs, &rhs, (m, n, k));
                // SAFETY: row-major operands and destination of the product's shapes.
                unsafe { gemm_bf16(engine, product, start, Parallelism::Rayon(2)) };
            };
            let mut added: Vec<f32> = bias.iter().copied().cycle().take(m * n).collect();
            product(&mut added, Start::Dst);
            let mut started = vec![f32::NAN; m * n];
            product(&mut started, Start::Bias(&bias));
            assert_eq!(started, added, "{engine:?} {m}x{n}x{k}");
        }
    }
}

/// The weight gradient `gᵀ·a` of a linear layer under bf16 (a transposed left operand), as
/// one product and as per-thread row sums, against f64 sums of the bf16-rounded operands.
#[test]
fn bf16_weight_gradients_match_rounded_sums() {
    use crate::kernels::gemm::linear_grads;
    let value = |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 - 0.5;
    for (m, k, n) in [(40, 8, 33), (40, 33, 8), (2100, 24, 80), (2100, 70, 20)] {
        let g: Vec<f32> = (0..m * n).map(|i| value(i, 1)).collect();
        let a: Vec<f32> = (0..m * k).map(|i| value(i, 2)).collect();
        let w: Vec<f32> = (0..n * k).map(|i| value(i, 3)).collect();
        let (dw, _, _) = {
            let _bf16 = crate::precision::Precision::Bf16.enter();
            linear_grads(&g, &a, &w, (m, k, n)).expect("gradients")
        };
        assert_eq!(dw.len(), n * k);
        for r in 0..n {
            for c in 0..k {
                let expected: f64 = (0..m)
                    .map(|i| {
                        round_to_bf16(g[i * n + r]) as f64 * round_to_bf16(a[i * k + c]) as f64
                    })
                    .sum();
                let got = dw[r * k + c] as f64;
                assert!(
                    (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()) * (m as f64).sqrt(),
                    "[{m}, {k}, {n}] dW[{r}, {c}] = {got}, expected {expected}"
                );
            }
        }
    }
}

/// A left operand that runs along `m` is multiplied transposed where that is cheaper; the
/// values must be bit for bit those of the same product with the operand stored along `k`
/// (which stays in its orientation), from zeros and onto a destination, on every hardware
/// engine this machine has.
#[test]
fn transposed_products_have_the_bits_of_the_direct_ones() {
    let engines = [
        (Engine::Amx, amx_available()),
        (Engine::Avx512, avx512_bf16_available()),
    ];
    let value = |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 1013) as f32 / 97.0 - 5.0;
    for (engine, present) in engines {
        if !present {
            eprintln!("{engine:?} is not on this machine: not exercised");
            continue;
        }
        // Attention's `dSᵀ·Q` for one head, a weight gradient over many rows (several chunks
        // along `k`), edge blocks both ways.
        for (m, n, k) in [(301, 32, 301), (1024, 64, 2500), (70, 5, 45)] {
            // `along_m` holds Aᵀ row-major ([k, m]), so A's view has strides (1, m).
            let along_m: Vec<f32> = (0..k * m).map(|i| value(i, 1)).collect();
            let mut along_k = vec![0f32; m * k];
            for (kk, row) in along_m.chunks_exact(m).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    along_k[i * k + kk] = v;
                }
            }
            let rhs: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
            let initial: Vec<f32> = (0..m * n).map(|i| value(i, 3)).collect();
            for accumulate in [false, true] {
                let run = |lhs: &[f32], lhs_strides: (usize, usize)| {
                    let mut dst = if accumulate {
                        initial.clone()
                    } else {
                        vec![f32::NAN; m * n]
                    };
                    let product = RawProduct {
                        dims: (m, n, k),
                        dst: dst.as_mut_ptr(),
                        dst_rs: n,
                        lhs: lhs.as_ptr(),
                        lhs_strides,
                        rhs: rhs.as_ptr(),
                        rhs_strides: (n, 1),
                    };
                    let start = if accumulate { Start::Dst } else { Start::Zero };
                    // SAFETY: both views address [m, k] values of their buffers; the
                    // destination is [m, n] row-major.
                    unsafe { gemm_bf16(engine, product, start, Parallelism::Rayon(2)) };
                    dst
                };
                let transposed = run(&along_m, (1, m));
                let direct = run(&along_k, (k, 1));
                let same = transposed
                    .iter()
                    .zip(&direct)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{engine:?} {m}x{n}x{k}, accumulate {accumulate}");
            }
        }
    }
}
