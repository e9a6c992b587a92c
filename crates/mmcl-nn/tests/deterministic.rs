//! Gradients that sum over rows or images are the same bits on every run: partial sums are
//! added in a fixed order, never in the order rayon's work stealing happens to pair them.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use mmcl_nn::conv::conv2d;
use mmcl_nn::ops::layer_norm;
use mmcl_testutil::{on_threads, tensor_bits};

/// A value for position `i` that is not a round number (so that addition order shows).
fn wiggle(i: usize) -> f32 {
    ((i as f32 * 0.618_034).fract() - 0.5) * (1.0 + (i % 7) as f32 * 0.37)
}

fn tensor(shape: &[usize], offset: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| wiggle(i + offset)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// The gradients of `sum(y * upstream)`: back-propagation of the gradient `upstream` arriving
/// at `y`.
fn backward_from(y: Tensor, upstream: Tensor) -> GradStore {
    (y * upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// LayerNorm weight and bias gradients over 4096 rows (many row chunks).
fn layer_norm_grads() -> (Vec<u8>, Vec<u8>) {
    let x = tensor(&[4096, 192], 0);
    let w = Var::from_tensor(&tensor(&[192], 11)).unwrap();
    let b = Var::from_tensor(&tensor(&[192], 23)).unwrap();
    let upstream = tensor(&[4096, 192], 37);
    let y = layer_norm(&x, w.as_tensor(), b.as_tensor(), 1e-6).unwrap();
    let grads = backward_from(y, upstream);
    (
        tensor_bits(grads.get(w.as_tensor()).unwrap()),
        tensor_bits(grads.get(b.as_tensor()).unwrap()),
    )
}

#[test]
fn layer_norm_parameter_gradients_are_the_same_bits_on_any_number_of_threads() {
    let one = on_threads(1, layer_norm_grads);
    for threads in [2, 3, 4] {
        for run in 0..3 {
            assert!(
                on_threads(threads, layer_norm_grads) == one,
                "LayerNorm gradients on {threads} threads (run {run}) differ from one thread's"
            );
        }
    }
}

/// Convolution weight gradient over a batch split into per-thread groups.
fn conv_weight_grad() -> Vec<u8> {
    let x = tensor(&[12, 8, 14, 14], 3);
    let w = Var::from_tensor(&tensor(&[16, 8, 3, 3], 5)).unwrap();
    let upstream = tensor(&[12, 16, 14, 14], 7);
    let y = conv2d(&x, w.as_tensor(), 1, 1).unwrap();
    let grads = backward_from(y, upstream);
    tensor_bits(grads.get(w.as_tensor()).unwrap())
}

#[test]
fn convolution_weight_gradients_repeat_bit_for_bit_on_a_given_number_of_threads() {
    for threads in [3, 4] {
        let first = on_threads(threads, conv_weight_grad);
        for run in 1..6 {
            assert!(
                on_threads(threads, conv_weight_grad) == first,
                "conv2d weight gradient on {threads} threads, run {run}, differs from run 0"
            );
        }
    }
}
