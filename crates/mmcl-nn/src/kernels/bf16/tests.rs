use super::*;

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

/// A deterministic pseudo-random matrix with a few exact zeros.
fn matrix(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = mmcl_core::rng::SplitMix64::new(seed);
    (0..len)
        .map(|i| {
            if i % 13 == 0 {
                0.0
            } else {
                (rng.next_f64() as f32 - 0.5) * 4.0
            }
        })
        .collect()
}

/// How a test operand `[rows, cols]` is stored.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Row-major.
    Rows,
    /// Column-major (a transposed view).
    Columns,
    /// Every other value of a row-major matrix twice as wide: no dimension is contiguous.
    Spread,
}

impl Layout {
    /// The strides `(row, column)` of a `[rows, cols]` operand.
    fn strides(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            Layout::Rows => (cols, 1),
            Layout::Columns => (1, rows),
            Layout::Spread => (2 * cols, 2),
        }
    }
}

/// Checks one product on `engine` against f64 sums of the bf16-rounded operands.
fn check(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    lhs_layout: Layout,
    rhs_layout: Layout,
    accumulate: bool,
) {
    let a = matrix(2 * m * k, 1 + (m * n * k) as u64);
    let b = matrix(2 * k * n, 2 + (m + n + k) as u64);
    let a_strides = lhs_layout.strides(m, k);
    let b_strides = rhs_layout.strides(k, n);
    let at = |i: usize, p: usize| a[i * a_strides.0 + p * a_strides.1];
    let bt = |p: usize, j: usize| b[p * b_strides.0 + j * b_strides.1];
    let dst_rs = n + 3; // a padded destination, as the attention kernel writes
    let start = matrix(m * dst_rs, 3);
    let mut dst = start.clone();
    for parallelism in [Parallelism::None, Parallelism::Rayon(2)] {
        dst.copy_from_slice(&start);
        // SAFETY: the views address a[..m·k] and b[..k·n]; dst holds m rows of dst_rs ≥ n.
        unsafe {
            let product = RawProduct {
                dims: (m, n, k),
                dst: dst.as_mut_ptr(),
                dst_rs,
                lhs: a.as_ptr(),
                lhs_strides: a_strides,
                rhs: b.as_ptr(),
                rhs_strides: b_strides,
            };
            gemm_bf16(engine, product, accumulate, parallelism)
        };
        for i in 0..m {
            for j in 0..n {
                let mut exact = if accumulate {
                    start[i * dst_rs + j] as f64
                } else {
                    0.0
                };
                let mut scale = exact.abs();
                for p in 0..k {
                    let prod = round_to_bf16(at(i, p)) as f64 * round_to_bf16(bt(p, j)) as f64;
                    exact += prod;
                    scale += prod.abs();
                }
                let got = dst[i * dst_rs + j] as f64;
                assert!(
                    (got - exact).abs() <= 2e-6 * scale + 1e-30,
                    "{engine:?} {m}x{n}x{k} {lhs_layout:?} {rhs_layout:?} acc {accumulate} \
                     at ({i}, {j}): {got} vs {exact}"
                );
            }
            // The padding after each row is left alone.
            for j in n..dst_rs {
                assert_eq!(dst[i * dst_rs + j], start[i * dst_rs + j]);
            }
        }
    }
}

fn check_engine(engine: Engine) {
    let shapes = [
        (1, 1, 1),
        (32, 32, 32),
        (33, 17, 31),
        (70, 64, 100),
        (16, 48, 33),
        (5, 95, 64),
    ];
    for dims in shapes {
        let layouts = [Layout::Rows, Layout::Columns, Layout::Spread];
        for (lhs, rhs) in layouts.into_iter().flat_map(|l| layouts.map(|r| (l, r))) {
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
