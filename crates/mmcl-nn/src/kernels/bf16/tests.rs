use super::*;
use crate::kernels::test_support::{Layout, check_product};

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
            // SAFETY: forwarded from `check_product`, which hands out checked views.
            unsafe { gemm_bf16(engine, product, accumulate, parallelism) }
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
