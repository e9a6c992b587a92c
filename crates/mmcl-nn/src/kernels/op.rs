//! One implementation of candle's custom-operation traits for every CPU kernel of this module.
//!
//! candle hands a custom operation its inputs as storages and layouts; every kernel here wants
//! the same thing from them (the contiguous f32 data, or a clear error) and gives back an f32
//! buffer and its shape. [`CpuKernel`] is that narrower interface, and [`Op`] adapts it to
//! candle's `CustomOp1/2/3`, so that a kernel states its arithmetic and its gradients only.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::contiguous_f32;

/// An input of a [`CpuKernel`]: its contiguous f32 data and its layout.
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    /// The values, contiguous, in the layout's order.
    pub(crate) data: &'a [f32],
    /// The shape and strides the tensor had.
    pub(crate) layout: &'a Layout,
}

impl Input<'_> {
    /// The input's dimensions.
    pub(crate) fn dims(&self) -> &[usize] {
        self.layout.dims()
    }

    /// The input's shape.
    pub(crate) fn shape(&self) -> &Shape {
        self.layout.shape()
    }
}

/// What [`CpuKernel::backward`] returns: the gradient of each input (`None` where an input gets
/// none).
pub(crate) type Gradients<const N: usize> = Result<[Option<Tensor>; N]>;

/// A differentiable CPU operation on `N` f32 tensors, run by candle through [`Op`].
pub(crate) trait CpuKernel<const N: usize>: Send + Sync {
    /// The operation's name (in candle's errors).
    const NAME: &'static str;

    /// The output's values and shape.
    fn forward(&self, inputs: [Input<'_>; N]) -> Result<(Vec<f32>, Shape)>;

    /// The gradients of the inputs, given the inputs, the output and the output's gradient.
    /// By default the operation is not differentiated (candle's error). A gradient returned
    /// for an input that is not tracked (`!input.track_op()`: no variable upstream) is
    /// dropped by [`Op`]; a kernel may skip computing it.
    fn backward(&self, inputs: [&Tensor; N], output: &Tensor, grad: &Tensor) -> Gradients<N> {
        let _ = (inputs, output, grad);
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`CpuKernel`] as a candle custom operation (`tensor.apply_op2(&other, Op(kernel))`).
#[derive(Clone, Copy)]
pub(crate) struct Op<K>(pub(crate) K);

impl<K> Op<K> {
    /// The kernel's inputs from candle's storages.
    fn inputs<'a, const N: usize>(
        args: [(&'a CpuStorage, &'a Layout); N],
        name: &'static str,
    ) -> Result<[Input<'a>; N]> {
        let mut data: [&[f32]; N] = [&[]; N];
        for (d, (storage, layout)) in data.iter_mut().zip(args) {
            *d = contiguous_f32(storage, layout, name)?;
        }
        Ok(std::array::from_fn(|i| Input {
            data: data[i],
            layout: args[i].1,
        }))
    }
}

/// `grad`, where `input` is tracked. candle's backward pass zero-fills and adds into a gradient
/// for every gradient an operation returns, also for inputs nothing upstream needs (the
/// images, the ECGs): dropping those saves a buffer and a pass each.
fn tracked(input: &Tensor, grad: Option<Tensor>) -> Option<Tensor> {
    grad.filter(|_| input.track_op())
}

/// The `(CpuStorage, Shape)` candle wants.
fn output((values, shape): (Vec<f32>, Shape)) -> (CpuStorage, Shape) {
    (CpuStorage::F32(values), shape)
}

/// Implements candle's `$trait` for `Op<K>` with `K: CpuKernel<$n>`: one `storage, layout`
/// pair of names per input for the forward, and one `input, gradient` pair of names per input
/// for the backward, which returns `$grads`. The three arities differ only in these lists.
macro_rules! custom_op {
    ($trait:ident, $n:literal, ($($s:ident, $l:ident);+), ($($x:ident, $g:ident);+) => $grads:ty) => {
        impl<K: CpuKernel<$n>> $trait for Op<K> {
            fn name(&self) -> &'static str {
                K::NAME
            }

            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> Result<(CpuStorage, Shape)> {
                self.0
                    .forward(Self::inputs([$(($s, $l)),+], K::NAME)?)
                    .map(output)
            }

            fn bwd(&self, $($x: &Tensor,)+ res: &Tensor, grad: &Tensor) -> Result<$grads> {
                let [$($g),+] = self.0.backward([$($x),+], res, grad)?;
                Ok(($(tracked($x, $g)),+))
            }
        }
    };
}

custom_op!(CustomOp1, 1, (s, l), (arg, g) => Option<Tensor>);
custom_op!(CustomOp2, 2, (s1, l1; s2, l2), (a, ga; b, gb) => (Option<Tensor>, Option<Tensor>));
custom_op!(
    CustomOp3, 3, (s1, l1; s2, l2; s3, l3), (a, ga; b, gb; c, gc)
        => (Option<Tensor>, Option<Tensor>, Option<Tensor>)
);
