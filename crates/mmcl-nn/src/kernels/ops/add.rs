//! Element-wise sum of two tensors of the same shape (residual connections), plain or
//! followed by ReLU, multi-threaded.

use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::{CHUNK, chunked, fast_path, map_chunks};
use candle_core::{Result, Shape, Tensor};

/// `a + b` for tensors of the same shape (candle's element-wise add runs on one thread, which
/// dominates residual connections on large activations).
///
/// # Shapes
/// `a`, `b`: the same shape; output: that shape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, Add, |a, b| a + b)
}

/// `relu(a + b)` for tensors of the same shape (the ResNet residual connection): on the CPU in
/// f32 one pass forward and one masked copy of the gradient backward, shared by both inputs;
/// elsewhere candle's operations.
///
/// # Shapes
/// `a`, `b`: the same shape; output: that shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add_relu", a, b, AddRelu, |a, b| (a + b)?.relu())
}

/// `f` of two tensors of the same shape (`op` names it in the shape error): one fused
/// [`Pointwise`] pass on the CPU fast path, `composed` (candle's operations) elsewhere.
fn binary<B: Binary + 'static>(
    op: &str,
    a: &Tensor,
    b: &Tensor,
    f: B,
    composed: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    same_shape(op, a, b)?;
    if fast_path(a) && fast_path(b) {
        a.contiguous()?
            .apply_op2(&b.contiguous()?, Op(Pointwise(f)))
    } else {
        composed(a, b)
    }
}

fn same_shape(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    Ok(())
}

/// An element-wise function of two same-shape f32 tensors: its value and the gradients of its
/// inputs. [`Pointwise`] runs it as one candle operation, in parallel chunks.
pub(crate) trait Binary: Send + Sync + Copy {
    /// The operation's name (in candle's errors).
    const NAME: &'static str;
    /// The value at one element.
    fn apply(x: f32, y: f32) -> f32;
    /// The gradients of both inputs given the output `res` and its gradient `grad`; `None`
    /// for an operation that is not differentiated.
    fn gradients(res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)>;
}

/// The candle operation of a [`Binary`] function (one implementation of the operation's
/// plumbing for all of them; the function is a type, so the loop is compiled for each).
/// `B` of one chunk of two slices, into `o`.
fn apply_chunk<B: Binary>(o: &mut [f32], [a, b]: [&[f32]; 2]) {
    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
        *o = B::apply(x, y);
    }
}

/// `B` of two slices of the same length, in parallel chunks (the kernels that fuse these
/// element-wise steps into a larger operation).
pub(crate) fn pointwise<B: Binary>(a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    chunked([a, b], B::NAME, CHUNK, apply_chunk::<B>)
}

#[derive(Clone, Copy)]
struct Pointwise<B: Binary>(B);

impl<B: Binary> CpuKernel<2> for Pointwise<B> {
    const NAME: &'static str = B::NAME;

    fn forward(&self, inputs: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        map_chunks(inputs, B::NAME, CHUNK, apply_chunk::<B>)
    }

    fn backward(&self, _: [&Tensor; 2], res: &Tensor, grad: &Tensor) -> Gradients<2> {
        let (ga, gb) = B::gradients(res, grad)?;
        Ok([ga, gb])
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Add;

impl Binary for Add {
    const NAME: &'static str = "mmcl-add";

    fn apply(x: f32, y: f32) -> f32 {
        x + y
    }

    fn gradients(_res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}

#[derive(Clone, Copy)]
pub(crate) struct AddRelu;

impl Binary for AddRelu {
    const NAME: &'static str = "mmcl-add-relu";

    fn apply(x: f32, y: f32) -> f32 {
        // `max` maps NaN to 0, as candle's ReLU (the unfused path) does.
        (x + y).max(0.0)
    }

    fn gradients(res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // PyTorch's ReLU passes the gradient where the output is positive; the sum passes it
        // on unchanged to both inputs.
        let masked = res
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &Op(Pointwise(WherePositive)))?;
        Ok((Some(masked.clone()), Some(masked)))
    }
}

/// `grad` where `res > 0`, else 0: the backward of [`AddRelu`], as `(res, grad)`.
#[derive(Clone, Copy)]
pub(crate) struct WherePositive;

impl Binary for WherePositive {
    const NAME: &'static str = "mmcl-where-positive";

    fn apply(res: f32, grad: f32) -> f32 {
        if res > 0.0 { grad } else { 0.0 }
    }

    fn gradients(_res: &Tensor, _grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, None))
    }
}

/// The mean over dimension 1 of a `[B, L, D]` tensor, as one batched matrix product with a row
/// of `1/L` (candle's reduction over a middle dimension of a strided view is slow).
///
/// # Shapes
/// `x`: `[B, L, D]` → `[B, 1, D]`.
pub fn mean_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    if l == 0 {
        candle_core::bail!("mean_tokens: no tokens to average in {:?}", x.dims());
    }
    let weights = Tensor::full(1.0 / l as f64, (1, 1, l), x.device())?
        .to_dtype(x.dtype())?
        .broadcast_as((b, 1, l))?; // [B, 1, L]
    weights.matmul(x) // [B, 1, D]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::*;

    #[test]
    fn add_and_mean_match_candle_with_gradients() -> Result<()> {
        let a = rand_tensor(&[3, 5, 7], 1, 1.0)?;
        let b = rand_tensor(&[3, 5, 7], 2, 1.0)?;
        assert_eq!(rel_err(&add(&a, &b)?, &(&a + &b)?)?, 0.0);
        assert!(add(&a, &b.narrow(2, 0, 3)?).is_err());
        let w = rand_tensor(&[3, 5, 7], 3, 1.0)?;
        let fast = autograd(&a, &w, &|t| add(t, &b))?;
        assert_eq!(rel_err(&fast, &w)?, 0.0);

        assert_eq!(
            rel_err(&add_relu(&a, &b)?, &(&a + &b)?.relu()?)?,
            0.0,
            "add_relu forward"
        );
        assert!(add_relu(&a, &b.narrow(2, 0, 3)?).is_err());
        for (input, other) in [(&a, &b), (&b, &a)] {
            let fast = autograd(input, &w, &|t| add_relu(t, other))?;
            let plain = autograd(input, &w, &|t| (t + other)?.relu())?;
            assert_eq!(rel_err(&fast, &plain)?, 0.0, "add_relu gradient");
        }

        let x = rand_tensor(&[4, 9, 6], 4, 1.0)?;
        let view = x.narrow(1, 1, 8)?; // strided, as the patch tokens after the class token
        assert!(rel_err(&mean_tokens(&view)?, &view.mean_keepdim(1)?)? < 1e-6);
        let up = rand_tensor(&[4, 1, 6], 5, 1.0)?;
        let g1 = autograd(&x, &up, &|t| mean_tokens(&t.narrow(1, 1, 8)?))?;
        let g2 = autograd(&x, &up, &|t| t.narrow(1, 1, 8)?.mean_keepdim(1))?;
        assert!(rel_err(&g1, &g2)? < 1e-6);
        Ok(())
    }
}
