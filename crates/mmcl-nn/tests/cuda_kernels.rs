//! The CUDA kernels of softmax, LayerNorm, bias + GELU and the bias gradient (crate feature
//! `cuda`) against the CPU kernels, forward and backward, at the ECG encoder's widths and at
//! awkward ones (rows narrower and wider than a warp, a width not a multiple of 32, more rows
//! than one chunk of the column sums). Without a CUDA device the test says so and passes (CI
//! machines have none); the prepared GPU check runs it where one is present.
#![cfg(feature = "cuda")]

use candle_core::{D, DType, Device, Tensor, Var};
use mmcl_nn::ops;
use mmcl_testutil::devices;

/// Uniform values in [-scale, scale) from a fixed seed, on the CPU.
fn values(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("values")
}

/// The largest |a − b| over |b|'s largest element (or 1).
fn relative(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_device(&Device::Cpu)
        .expect("host")
        .flatten_all()
        .expect("flat");
    let b = b
        .to_device(&Device::Cpu)
        .expect("host")
        .flatten_all()
        .expect("flat");
    let diff = (&a - &b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference");
    let scale = b
        .abs()
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("scale");
    diff / scale.max(1.0)
}

/// The output of `f` on `inputs` and the gradients of a weighted sum of it, on `device`.
fn run(
    device: &Device,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device).expect("to device")).expect("var"))
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors).expect("forward");
    // A weighted sum, so that each output element has its own upstream gradient.
    let weights = values(out.dims(), 99, 1.0)
        .to_device(device)
        .expect("weights");
    let grads = (&out * &weights)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward");
    let grads = tensors
        .iter()
        .map(|t| grads.get(t).expect("a gradient for every input").clone())
        .collect();
    (out, grads)
}

/// `f` on the CUDA device agrees with the CPU within `tolerance`, output and gradients.
fn check(
    name: &str,
    inputs: &[Tensor],
    tolerance: f32,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) {
    let Some(cuda) = devices().into_iter().find(|d| d.is_cuda()) else {
        eprintln!("skipped {name}: no CUDA device");
        return;
    };
    let (expected, expected_grads) = run(&Device::Cpu, inputs, f);
    let (actual, actual_grads) = run(&cuda, inputs, f);
    assert!(
        actual.device().is_cuda(),
        "{name}: the result stays on the GPU"
    );
    let mut worst = relative(&actual, &expected);
    for (a, e) in actual_grads.iter().zip(&expected_grads) {
        assert!(a.device().is_cuda(), "{name}: gradients stay on the GPU");
        worst = worst.max(relative(a, e));
    }
    eprintln!("{name} on cuda: largest relative difference {worst:.2e} (output and gradients)");
    assert!(worst <= tolerance, "{name}: {worst:e} > {tolerance:e}");
}

#[test]
fn softmax_matches_the_cpu() {
    for (shape, seed) in [
        (vec![3, 6, 301, 301], 1),
        (vec![5, 7], 2),
        (vec![2, 1000], 3),
    ] {
        let x = values(&shape, seed, 8.0);
        check(&format!("softmax {shape:?}"), &[x], 1e-5, &|t| {
            ops::softmax_last_dim(&t[0])
        });
    }
}

#[test]
fn layer_norm_matches_the_cpu() {
    // 4·301 rows of 384 (the encoder), 9000 rows of 45 (more than one chunk of the column
    // sums, a width not a multiple of 32), 3 rows of 7.
    for (shape, width, seed) in [
        (vec![4, 301, 384], 384, 10),
        (vec![9000, 45], 45, 11),
        (vec![3, 7], 7, 12),
    ] {
        let x = (values(&shape, seed, 3.0) + 0.5).expect("shift");
        let w = (values(&[width], seed + 1, 1.0) + 1.0).expect("weight");
        let b = values(&[width], seed + 2, 0.5);
        check(&format!("layer_norm {shape:?}"), &[x, w, b], 1e-4, &|t| {
            ops::layer_norm(&t[0], &t[1], &t[2], 1e-6)
        });
    }
}

#[test]
fn bias_gelu_matches_the_cpu() {
    for (shape, width, seed) in [(vec![2, 301, 1536], 1536, 20), (vec![9000, 45], 45, 21)] {
        let x = values(&shape, seed, 4.0);
        let b = values(&[width], seed + 1, 1.0);
        check(&format!("bias_gelu {shape:?}"), &[x, b], 1e-5, &|t| {
            ops::bias_gelu(&t[0], &t[1])
        });
    }
}

#[test]
fn attention_and_linear_match_the_cpu() {
    let qkv = values(&[2, 301, 1152], 30, 2.0);
    check("attention [2, 301, 1152]", &[qkv], 1e-4, &|t| {
        ops::attention(&t[0], 6, 0.125)
    });
    let (x, w, b) = (
        values(&[3, 50, 384], 31, 1.0),
        values(&[96, 384], 32, 0.1),
        values(&[96], 33, 0.1),
    );
    check("linear [3, 50, 384] x [96, 384]", &[x, w, b], 1e-4, &|t| {
        ops::linear(&t[0], &t[1], Some(&t[2]))
    });
}

#[test]
fn a_composed_softmax_of_another_dtype_still_works_on_the_gpu() {
    let Some(cuda) = devices().into_iter().find(|d| d.is_cuda()) else {
        eprintln!("skipped: no CUDA device");
        return;
    };
    let x = values(&[4, 9], 40, 3.0)
        .to_dtype(DType::F64)
        .and_then(|t| t.to_device(&cuda))
        .expect("f64 on the GPU");
    let y = ops::softmax_last_dim(&x).expect("softmax");
    let sums = y
        .sum(D::Minus1)
        .and_then(|t| t.to_vec1::<f64>())
        .expect("sums");
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12), "{sums:?}");
}
