//! The convolutions against candle's, in values and gradients.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::kernels::test_support::{max_abs_diff, randn};
use crate::{Error, Result};

/// `(C_in, C_out, k, stride, padding, H, W)`: stems, 3×3 and 1×1 layers, strided and not,
/// images smaller than the kernel's reach, sides of different parity, small maps multiplied
/// several to a block (their patches looked up in tap tables, or copied by runs from rows of 12
/// pixels), and images large enough for the training convolution to work in bands of output
/// rows (strided, padded, pointwise); 3×3 stride-1 maps whose pixel tiles the direct kernel
/// fills (on AVX-512 CPUs), with a partial block of output channels and rows that end inside a
/// vector.
const CASES: [(usize, usize, usize, usize, usize, usize, usize); 15] = [
    (3, 8, 7, 2, 3, 21, 18),
    (16, 8, 3, 1, 1, 9, 11),
    (16, 24, 3, 2, 1, 10, 7),
    (8, 16, 1, 1, 0, 6, 5),
    (8, 16, 1, 2, 0, 7, 6),
    (4, 4, 3, 2, 1, 8, 8),
    (2, 3, 7, 2, 3, 1, 1),
    (2, 3, 3, 1, 1, 1, 2),
    (2, 3, 3, 2, 1, 2, 1),
    (2, 3, 5, 1, 2, 3, 1),
    (5, 4, 3, 1, 1, 12, 14),
    (3, 4, 7, 2, 3, 60, 50),
    (5, 6, 3, 1, 1, 40, 30),
    (6, 5, 1, 1, 0, 30, 25),
    (7, 13, 3, 1, 1, 29, 31),
];

#[test]
fn matches_candle_convolution_with_bias_residual_and_relu() -> Result<()> {
    for &(cin, cout, k, s, p, h, w) in &CASES {
        let x = randn(1, &[2, cin, h, w])?;
        let weight = randn(2, &[cout, cin, k, k])?;
        let bias = randn(3, &[cout])?;
        let conv = PackedConv2d::new(&weight, Some(&bias), s, p)?;
        let expected = x
            .conv2d(&weight, p, s, 1, 1)?
            .broadcast_add(&bias.reshape((1, cout, 1, 1))?)?;
        let residual = randn(4, expected.dims())?;
        let expected = (expected + &residual)?.relu()?;
        let out = conv.forward(
            &NhwcTensor::from_nchw(&x)?,
            Some(&NhwcTensor::from_nchw(&residual)?),
            true,
        )?;
        let diff = max_abs_diff(&out.to_nchw(&Device::Cpu)?, &expected)?;
        assert!(diff < 1e-4, "{:?}: {diff}", (cin, cout, k, s, p, h, w));
    }
    Ok(())
}

/// A convolution's output, its gradients and its two variables (input, weight).
type Run<'a> = (&'a Tensor, &'a GradStore, [&'a Var; 2]);

/// Asserts the output and both gradients of `ours` within `tolerance` × the larger of 1 and
/// the largest magnitude of the f64 `reference`'s; returns the output's scale.
fn assert_conv_close(
    (y, grads, vars): Run,
    (y64, g64, vars64): Run,
    tolerance: f32,
    case: impl std::fmt::Debug,
) -> Result<f32> {
    let gradient = |g: &GradStore, v: &Var| {
        g.get(v.as_tensor())
            .cloned()
            .ok_or(Error::InvalidArgument("no grad".into()))
    };
    let mut scales = Vec::new();
    let pairs = [
        ("output", y.clone(), y64.clone()),
        (
            "input gradient",
            gradient(grads, vars[0])?,
            gradient(g64, vars64[0])?,
        ),
        (
            "weight gradient",
            gradient(grads, vars[1])?,
            gradient(g64, vars64[1])?,
        ),
    ];
    for (what, a, b) in pairs {
        let b = b.to_dtype(DType::F32)?;
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        let diff = max_abs_diff(&a, &b)?;
        assert!(diff <= tolerance * scale, "{what} {case:?}: {diff}");
        scales.push(scale);
    }
    Ok(scales[0])
}

#[test]
fn differentiable_convolution_matches_candle_in_values_and_gradients() -> Result<()> {
    // Nine images: small feature maps are multiplied several images to a block, with a
    // shorter last block.
    for (&(cin, cout, k, s, p, h, w), n) in CASES.iter().flat_map(|c| [(c, 2), (c, 9)]) {
        check_against_candle(n, (cin, cout, k, s, p, h, w))?;
    }
    Ok(())
}

/// 3×3 stride-1 layers with 256 channels entering the forward pass, the input gradient or both,
/// on maps whose tiles of 2×2 pixels the Winograd kernel fills and the direct kernel's tiles of
/// 64 do not (odd sides: tiles cut by the edge), one block of images and several.
#[test]
fn winograd_layers_match_candle_in_values_and_gradients() -> Result<()> {
    for (n, cin, cout, h, w) in [
        (2, 256, 256, 14, 15),
        (9, 256, 8, 14, 14),
        (3, 8, 256, 13, 13),
    ] {
        check_against_candle(n, (cin, cout, 3, 1, 1, h, w))?;
    }
    Ok(())
}

/// `conv2d` of `n` random images against candle's convolution in f64, in values and both
/// gradients.
fn check_against_candle(
    n: usize,
    (cin, cout, k, s, p, h, w): (usize, usize, usize, usize, usize, usize, usize),
) -> Result<()> {
    let case = (n, cin, cout, k, s, p, h, w);
    let x = Var::from_tensor(&randn(1, &[n, cin, h, w])?)?;
    let weight = Var::from_tensor(&randn(2, &[cout, cin, k, k])?)?;
    let y = conv2d(x.as_tensor(), weight.as_tensor(), s, p)?;
    let r = randn(3, y.dims())?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    // The reference: candle's convolution in f64 (its backward works for these shapes once the
    // parity workaround applies, which `conv2d` does for non-f32 inputs).
    let x64 = Var::from_tensor(&x.as_tensor().to_dtype(DType::F64)?)?;
    let w64 = Var::from_tensor(&weight.as_tensor().to_dtype(DType::F64)?)?;
    let y64 = conv2d(x64.as_tensor(), w64.as_tensor(), s, p)?;
    let g64 = (&y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
    let ours = (&y, &grads, [&x, &weight]);
    assert_conv_close(ours, (&y64, &g64, [&x64, &w64]), 1e-4, case)?;
    Ok(())
}

/// An input nothing upstream needs (the images of a first layer) gets no gradient, and the
/// weight's gradient is the same, bit for bit, as when the input is a variable.
#[test]
fn an_untracked_input_gets_no_gradient_and_the_same_weight_gradient() -> Result<()> {
    for (&(cin, cout, k, s, p, h, w), n) in CASES.iter().flat_map(|c| [(c, 2), (c, 9)]) {
        let images = randn(1, &[n, cin, h, w])?;
        let weight = Var::from_tensor(&randn(2, &[cout, cin, k, k])?)?;
        let tracked = Var::from_tensor(&images)?;
        let weight_grad = |x: &Tensor| -> Result<_> {
            let y = conv2d(x, weight.as_tensor(), s, p)?;
            let r = randn(3, y.dims())?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let dw = grads.get(weight.as_tensor()).cloned();
            Ok((grads.get(x).is_some(), dw))
        };
        let (untracked_has_grad, dw_untracked) = weight_grad(&images)?;
        let (tracked_has_grad, dw_tracked) = weight_grad(tracked.as_tensor())?;
        assert!(!untracked_has_grad && tracked_has_grad);
        let (a, b) = dw_untracked
            .zip(dw_tracked)
            .ok_or(Error::InvalidArgument("no grad".into()))?;
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?
        );
    }
    Ok(())
}

/// Stride-2 convolutions over inputs whose sides differ in parity: same values as candle's
/// convolution, and gradients equal to central differences.
#[test]
fn strided_conv_on_mixed_parity_inputs_has_correct_gradients() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = crate::rng::SplitMix64::new(4);
    for &(h, w, k, p) in &[(5, 4, 3, 1), (4, 7, 3, 1), (6, 5, 1, 0), (7, 8, 7, 3)] {
        let xs: Vec<f64> = (0..2 * h * w).map(|_| rng.next_normal()).collect();
        let ws: Vec<f64> = (0..3 * 2 * k * k).map(|_| rng.next_normal()).collect();
        let weight = Tensor::from_vec(ws, (3, 2, k, k), &dev)?;
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(xs.clone(), (1, 2, h, w), &dev)?)?;
        let y = conv2d(x.as_tensor(), &weight, 2, p)?;
        let plain = x.as_tensor().conv2d(&weight, p, 2, 1, 1)?;
        assert_eq!(y.dims(), plain.dims());
        let diff = (&y - &plain)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12);
        let r = Tensor::from_vec(
            (0..y.elem_count())
                .map(|_| rng.next_normal())
                .collect::<Vec<f64>>(),
            y.shape(),
            &dev,
        )?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let analytic: Vec<f64> = grads
            .get(x.as_tensor())
            .ok_or_else(|| Error::InvalidArgument("no gradient".into()))?
            .flatten_all()?
            .to_vec1()?;
        let loss = |d: &[f64]| -> Result<f64> {
            let x = Tensor::from_vec(d.to_vec(), (1, 2, h, w), &dev)?;
            Ok((conv2d(&x, &weight, 2, p)? * &r)?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        for i in 0..xs.len() {
            let (mut plus, mut minus) = (xs.clone(), xs.clone());
            plus[i] += 1e-4;
            minus[i] -= 1e-4;
            let numeric = (loss(&plus)? - loss(&minus)?) / 2e-4;
            assert!(
                (numeric - analytic[i]).abs() < 1e-8,
                "{:?} element {i}: {numeric} vs {}",
                (h, w, k, p),
                analytic[i]
            );
        }
    }
    Ok(())
}

#[test]
fn wrong_shapes_are_errors() -> Result<()> {
    let conv = PackedConv2d::new(&randn(0, &[4, 3, 3, 3])?, None, 1, 1)?;
    let x = NhwcTensor::from_nchw(&randn(1, &[1, 2, 5, 5])?)?;
    assert!(conv.forward(&x, None, false).is_err());
    let x = NhwcTensor::from_nchw(&randn(1, &[1, 3, 5, 5])?)?;
    let bad_residual = NhwcTensor::from_nchw(&randn(1, &[1, 4, 4, 5])?)?;
    assert!(conv.forward(&x, Some(&bad_residual), false).is_err());
    Ok(())
}

#[test]
fn an_input_without_channels_gives_zeros() -> Result<()> {
    let x = Tensor::zeros((3, 0, 5, 5), DType::F32, &Device::Cpu)?;
    let weight = Tensor::zeros((4, 0, 3, 3), DType::F32, &Device::Cpu)?;
    let y = conv2d(&x, &weight, 1, 1)?;
    assert_eq!(y.dims(), &[3, 4, 5, 5]);
    assert_eq!(y.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}

/// Under bf16 the training convolution multiplies bf16-rounded operands with f32 sums, in
/// every product (bands and blocks of images, several row blocks and chunks of the inner
/// dimension among them): its output and both gradients equal candle's f64 convolution of the
/// rounded operands up to the order of the sums, and differ from the f32 convolution.
#[test]
fn bf16_convolution_rounds_its_operands() -> Result<()> {
    use crate::precision::Precision;
    let cases = [
        (5, 6, 3, 1, 1, 40, 30),
        (8, 40, 3, 1, 1, 24, 30),
        (96, 8, 3, 1, 1, 24, 24),
        (16, 24, 3, 2, 1, 10, 7),
        (8, 16, 1, 1, 0, 6, 5),
        (40, 36, 1, 1, 0, 30, 25),
    ];
    let rounded = |t: &Tensor| -> Result<Tensor> {
        // candle's bf16 conversion rounds to nearest even, as the kernels do.
        Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F64)?)
    };
    for (&(cin, cout, k, s, p, h, w), n) in cases.iter().flat_map(|c| [(c, 2), (c, 9)]) {
        let case = (n, cin, cout, k, s, p, h, w);
        let x = Var::from_tensor(&randn(1, &[n, cin, h, w])?)?;
        let weight = Var::from_tensor(&randn(2, &[cout, cin, k, k])?)?;
        let f32_y = conv2d(x.as_tensor(), weight.as_tensor(), s, p)?;
        let r = randn(3, f32_y.dims())?;
        let (y, grads) = {
            let _bf16 = Precision::Bf16.enter();
            let y = conv2d(x.as_tensor(), weight.as_tensor(), s, p)?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            (y, grads)
        };
        let x64 = Var::from_tensor(&rounded(x.as_tensor())?)?;
        let w64 = Var::from_tensor(&rounded(weight.as_tensor())?)?;
        let y64 = conv2d(x64.as_tensor(), w64.as_tensor(), s, p)?;
        let g64 = (&y64 * rounded(&r)?)?.sum_all()?.backward()?;
        let ours = (&y, &grads, [&x, &weight]);
        let scale = assert_conv_close(ours, (&y64, &g64, [&x64, &w64]), 1e-5, case)?;
        assert!(
            max_abs_diff(&y, &f32_y)? > 1e-4 * scale,
            "{case:?}: the bf16 output is the f32 one"
        );
    }
    Ok(())
}

#[test]
fn weight_gradients_have_the_same_bits_in_either_orientation() -> Result<()> {
    use crate::kernels::gemm::{MatRef, f32_products_on_gemm_crate};
    use crate::precision::Precision;
    use weight_gradient::{WeightGradient, transposed_weight_gradient};
    if !f32_products_on_gemm_crate() {
        // On OpenBLAS the orientation changes the bits, so it is never switched.
        assert!(!transposed_weight_gradient(64, 576, Precision::F32));
        return Ok(());
    }
    assert!(transposed_weight_gradient(64, 576, Precision::F32));
    assert!(!transposed_weight_gradient(256, 64, Precision::F32));
    assert!(!transposed_weight_gradient(64, 576, Precision::Bf16));
    // (C_out, C_in·k·k, pixel blocks): layer1's 3×3 layer, a stem, a pointwise layer, a
    // gradient just over 256 values, sums over more than the crate's chunk of 512, and blocks
    // of one and two pixels (the crate's own kernel for such short sums).
    let cases: [(usize, usize, &[usize]); 6] = [
        (64, 576, &[1024, 517]),
        (16, 147, &[2809]),
        (24, 64, &[300, 300, 7]),
        (3, 90, &[40, 33]),
        (8, 40, &[600, 1500, 5]),
        (4, 300, &[1, 2, 1]),
    ];
    for (seed, &(cout, depth, blocks)) in cases.iter().enumerate() {
        let mut plain = WeightGradient::oriented(cout, depth, Precision::F32, false);
        let mut transposed = WeightGradient::oriented(cout, depth, Precision::F32, true);
        for (b, &cols) in blocks.iter().enumerate() {
            let salt = (seed * 10 + b) as u64;
            let dy = randn(100 + salt, &[cout, cols])?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let p = randn(200 + salt, &[depth, cols])?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let (dy, p) = (MatRef::rows(&dy, cout, cols), MatRef::rows(&p, depth, cols));
            plain.add(dy, p)?;
            transposed.add(dy, p)?;
        }
        let (plain, transposed) = (plain.into_rows(), transposed.into_rows());
        let differing = plain
            .iter()
            .zip(&transposed)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differing, 0, "[{cout}, {depth}]: {differing} values differ");
    }
    Ok(())
}
