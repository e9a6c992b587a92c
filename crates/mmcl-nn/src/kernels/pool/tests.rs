//! The pools against hand computations, each other and finite differences.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::Result;
use crate::kernels::nhwc::NhwcTensor;
use crate::kernels::test_support::{max_abs_diff, randn};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
}

#[test]
fn small_example_with_ties_and_padding() -> Result<()> {
    // One 4x4 plane with a tie (two 5s) in the first window.
    let x = Var::new(
        &[[[
            [5f32, 5., 1., 9.],
            [2., 3., 4., 0.],
            [1., 1., 1., 1.],
            [0., 8., 2., 2.],
        ]]],
        &Device::Cpu,
    )?;
    let y = max_pool2d(x.as_tensor(), 3, 2, 1)?;
    assert_eq!(flat(&y), vec![5., 9., 8., 8.]);
    let grads = y.sum_all()?.backward()?;
    let g = flat(grads.get(&x).expect("grad"));
    // The tie goes to the first 5; the 8 wins two windows.
    let mut expected = vec![0f32; 16];
    expected[0] = 1.0;
    expected[3] = 1.0;
    expected[13] = 2.0;
    assert_eq!(g, expected);
    let composed = max_pool2d_composed(
        x.as_tensor(),
        Pool2dParams {
            kernel: 3,
            stride: 2,
            padding: 1,
        },
    )?;
    assert_eq!(flat(&composed), flat(&y));
    let grads = composed.sum_all()?.backward()?;
    assert_eq!(flat(grads.get(&x).expect("grad")), expected);
    Ok(())
}

#[test]
fn nan_propagates_on_cpu() -> Result<()> {
    let x = Tensor::new(&[[[[1f32, f32::NAN], [3., 2.]]]], &Device::Cpu)?;
    let y = max_pool2d(&x, 2, 2, 0)?;
    assert!(flat(&y)[0].is_nan());
    Ok(())
}

#[test]
fn custom_and_composed_agree_in_value_and_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = crate::rng::SplitMix64::new(5);
    for &(h, w, k, s, p) in &[
        (9, 7, 3, 2, 1),
        (8, 8, 2, 2, 0),
        (10, 6, 3, 1, 1),
        (7, 11, 5, 3, 2),
    ] {
        let data: Vec<f32> = (0..2 * 3 * h * w)
            .map(|_| (rng.next_f64() * 8.0).round() as f32) // many ties
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(data, (2, 3, h, w), &dev)?)?;
        let weights: Vec<f32> = (0..2 * 3 * ((h + 2 * p - k) / s + 1) * ((w + 2 * p - k) / s + 1))
            .map(|_| rng.next_f64() as f32 - 0.5)
            .collect();
        let params = Pool2dParams {
            kernel: k,
            stride: s,
            padding: p,
        };
        let a = max_pool2d(x.as_tensor(), k, s, p)?;
        let b = max_pool2d_composed(x.as_tensor(), params)?;
        assert_eq!(flat(&a), flat(&b), "values for {:?}", (h, w, k, s, p));
        let wt = Tensor::from_vec(weights, a.shape(), &dev)?;
        let ga = (&a * &wt)?.sum_all()?.backward()?;
        let gb = (&b * &wt)?.sum_all()?.backward()?;
        let (ga, gb) = (
            flat(ga.get(&x).expect("grad")),
            flat(gb.get(&x).expect("grad")),
        );
        for (u, v) in ga.iter().zip(&gb) {
            assert!((u - v).abs() < 1e-6, "gradients for {:?}", (h, w, k, s, p));
        }
    }
    Ok(())
}

#[test]
fn gradient_matches_finite_differences() -> Result<()> {
    // Distinct values: the max is locally linear, so central differences are exact up to
    // rounding.
    let dev = Device::Cpu;
    let (h, w) = (7, 6);
    let n = 2 * h * w;
    let mut rng = crate::rng::SplitMix64::new(11);
    let mut data: Vec<f64> = (0..n).map(|i| i as f64 * 0.37).collect();
    for i in (1..n).rev() {
        data.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let weights: Vec<f64> = (0..2 * 4 * 3).map(|_| rng.next_f64() - 0.5).collect();
    let wt = Tensor::from_vec(weights, (1, 2, 4, 3), &dev)?;
    let loss = |d: &[f64]| -> Result<f64> {
        let x = Tensor::from_vec(d.to_vec(), (1, 2, h, w), &dev)?;
        Ok((max_pool2d(&x, 3, 2, 1)? * &wt)?
            .sum_all()?
            .to_scalar::<f64>()?)
    };
    let x = Var::from_tensor(&Tensor::from_vec(data.clone(), (1, 2, h, w), &dev)?)?;
    let grads = (max_pool2d(x.as_tensor(), 3, 2, 1)? * &wt)?
        .sum_all()?
        .backward()?;
    let analytic: Vec<f64> = grads.get(&x).expect("grad").flatten_all()?.to_vec1()?;
    let eps = 1e-3;
    for i in 0..n {
        let mut plus = data.clone();
        plus[i] += eps;
        let mut minus = data.clone();
        minus[i] -= eps;
        let numeric = (loss(&plus)? - loss(&minus)?) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-9,
            "element {i}: {numeric} vs {}",
            analytic[i]
        );
    }
    Ok(())
}

#[test]
fn adaptive_and_global_average_pooling() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::arange(0f32, 2.0 * 5.0 * 7.0, &dev)?.reshape((1, 2, 5, 7))?;
    let g = global_avg_pool2d(&x)?;
    assert_eq!(g.dims(), &[1, 2]);
    assert!((flat(&g)[0] - 17.0).abs() < 1e-5);
    let a = adaptive_avg_pool2d(&x, (1, 1))?;
    assert!((flat(&a)[1] - flat(&g)[1]).abs() < 1e-4);
    // 5 -> 3 rows: bins [0, 2), [1, 4), [3, 5); 7 -> 2 columns: [0, 4), [3, 7).
    let a = adaptive_avg_pool2d(&x, (3, 2))?;
    let v = flat(&a);
    let cell = |r0: usize, r1: usize, c0: usize, c1: usize| {
        let mut s = 0.0;
        for r in r0..r1 {
            for c in c0..c1 {
                s += (r * 7 + c) as f32;
            }
        }
        s / ((r1 - r0) * (c1 - c0)) as f32
    };
    assert!((v[0] - cell(0, 2, 0, 4)).abs() < 1e-4);
    assert!((v[3] - cell(1, 4, 3, 7)).abs() < 1e-4);
    assert!((v[5] - cell(3, 5, 3, 7)).abs() < 1e-4);
    Ok(())
}

#[test]
fn bad_geometry_is_an_error() {
    let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).expect("zeros");
    assert!(max_pool2d(&x, 3, 2, 0).is_err());
    assert!(max_pool2d(&x, 3, 2, 2).is_err());
    assert!(max_pool2d(&x, 2, 0, 0).is_err());
}

#[test]
fn pools_match_the_channels_first_versions() -> Result<()> {
    let x = randn(5, &[2, 5, 13, 10])?;
    let nhwc = NhwcTensor::from_nchw(&x)?;
    let pooled = max_pool2d_nhwc(&nhwc, 3, 2, 1)?.to_nchw(&Device::Cpu)?;
    let expected = max_pool2d(&x, 3, 2, 1)?;
    assert_eq!(max_abs_diff(&pooled, &expected)?, 0.0);
    let mean = Tensor::from_vec(global_avg_pool_nhwc(&nhwc), (2, 5), &Device::Cpu)?;
    assert!(max_abs_diff(&mean, &x.mean((2, 3))?)? < 1e-6);
    Ok(())
}
