//! The Winograd kernels against the direct sums in `f64`.

use super::*;

/// The 3×3 padding-1 correlation of `n` images in `f64`, and per output value the sum of
/// `|w·x|` over its terms (the scale of its rounding).
fn reference(
    x: &[f32],
    weight: &[f32],
    (n, cin, cout): (usize, usize, usize),
    (h, w): (usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; n * cout * h * w];
    let mut scale = vec![0f64; y.len()];
    for (img, o, oy, ox) in (0..n).flat_map(|img| {
        (0..cout)
            .flat_map(move |o| (0..h).flat_map(move |oy| (0..w).map(move |ox| (img, o, oy, ox))))
    }) {
        let at = ((img * cout + o) * h + oy) * w + ox;
        for i in 0..cin {
            for tap in 0..TAPS {
                let (iy, ix) = (
                    (oy + tap / 3).wrapping_sub(1),
                    (ox + tap % 3).wrapping_sub(1),
                );
                if iy >= h || ix >= w {
                    continue;
                }
                let term = f64::from(weight[(o * cin + i) * TAPS + tap])
                    * f64::from(x[((img * cin + i) * h + iy) * w + ix]);
                y[at] += term;
                scale[at] += term.abs();
            }
        }
    }
    (y, scale)
}

/// Values from a small linear congruential generator, in [−1, 1).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// Both passes on odd and even sides (tiles cut by the map's edge), single and blocked
/// images, against the f64 sum: within a few units of f32 rounding of `Σ|w·x|`.
#[test]
fn both_passes_match_the_f64_sum_to_rounding() {
    for (n, cin, cout, h, w) in [
        (1, 3, 2, 1, 1),
        (2, 5, 7, 7, 9),
        (3, 4, 6, 8, 8),
        (9, 16, 12, 7, 7),
        (2, 9, 4, 14, 13),
    ] {
        let weight = values(1, cout * cin * TAPS);
        for pass in [Pass::Forward, Pass::InputGradient] {
            let (from, to) = match pass {
                Pass::Forward => (cin, cout),
                Pass::InputGradient => (cout, cin),
            };
            let x = values(2, n * from * h * w);
            let conv = Winograd3x3::new(pass, &weight, (cout, cin), (h, w));
            let y = conv.images(&x, n).expect("convolution");
            // The input gradient's kernel, transposed and flipped, as a forward one.
            let kernel: Vec<f32> = match pass {
                Pass::Forward => weight.clone(),
                Pass::InputGradient => (0..to * from * TAPS)
                    .map(|at| {
                        let (i, o, tap) = (at / (from * TAPS), at / TAPS % from, at % TAPS);
                        weight[(o * cin + i) * TAPS + TAPS - 1 - tap]
                    })
                    .collect(),
            };
            let (expected, scale) = reference(&x, &kernel, (n, from, to), (h, w));
            assert_eq!(y.len(), expected.len());
            for ((&y, &e), &s) in y.iter().zip(&expected).zip(&scale) {
                let bound = 8.0 * f64::from(f32::EPSILON) * s + 1e-30;
                let diff = (f64::from(y) - e).abs();
                assert!(
                    diff <= bound,
                    "{pass:?} {:?}: {diff} > {bound}",
                    (n, cin, cout, h, w)
                );
            }
        }
    }
}

/// The weight gradient on odd and even sides, one block and several per thread, against
/// the f64 sum `Σ dy·x` over images and pixels: within a few units of f32 rounding of
/// `Σ|dy·x|`.
#[test]
fn the_weight_gradient_matches_the_f64_sum_to_rounding() {
    for (n, cin, cout, h, w) in [
        (1, 3, 2, 1, 1),
        (2, 5, 7, 7, 9),
        (9, 16, 12, 7, 7),
        (3, 4, 6, 14, 13),
    ] {
        let x = values(3, n * cin * h * w);
        let dy = values(4, n * cout * h * w);
        let dw = weight_gradient(&x, &dy, n, (cout, cin), (h, w)).expect("gradient");
        assert_eq!(dw.len(), cout * cin * TAPS);
        for (at, &got) in dw.iter().enumerate() {
            let (o, i, tap) = (at / (cin * TAPS), at / TAPS % cin, at % TAPS);
            let (mut sum, mut scale) = (0f64, 0f64);
            for (img, oy, ox) in (0..n)
                .flat_map(|img| (0..h).flat_map(move |oy| (0..w).map(move |ox| (img, oy, ox))))
            {
                let (iy, ix) = (
                    (oy + tap / 3).wrapping_sub(1),
                    (ox + tap % 3).wrapping_sub(1),
                );
                if iy >= h || ix >= w {
                    continue;
                }
                let term = f64::from(dy[((img * cout + o) * h + oy) * w + ox])
                    * f64::from(x[((img * cin + i) * h + iy) * w + ix]);
                sum += term;
                scale += term.abs();
            }
            let bound = 16.0 * f64::from(f32::EPSILON) * scale + 1e-30;
            let diff = (f64::from(got) - sum).abs();
            assert!(
                diff <= bound,
                "{:?} at {at}: {diff} > {bound}",
                (n, cin, cout, h, w)
            );
        }
    }
}

/// A wrong-sized input is an error, not a panic.
#[test]
fn a_wrong_sized_input_is_an_error() {
    let conv = Winograd3x3::new(Pass::Forward, &[0.0; 18], (2, 1), (3, 3));
    assert!(conv.images(&[0.0; 8], 1).is_err());
    assert!(weight_gradient(&[0.0; 9], &[0.0; 8], 1, (2, 1), (3, 3)).is_err());
    // No channels on one side: a zero-sized gradient, not a panic.
    let none = weight_gradient(&[], &[0.0; 18], 1, (2, 0), (3, 3)).expect("no channels");
    assert!(none.is_empty());
}
