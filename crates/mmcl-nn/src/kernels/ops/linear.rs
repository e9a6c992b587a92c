//! The affine map of a linear layer, `x·Wᵀ + b`, as one matrix product over all leading dims.

use candle_core::{D, Result, Shape, Tensor};

use crate::kernels::bf16::Start;
use crate::kernels::finished::{FinishInto, product_new_finished};
use crate::kernels::gemm::{self, MatRef, linear_forward};
use crate::kernels::op::{CpuKernel, Gradients, Input, Op};
use crate::kernels::ops::gelu::{bias_gelu_backward, bias_gelu_new};
use crate::kernels::{bias_gradient, fast_path, with_contiguous_f32};
use crate::precision;

/// `x·Wᵀ + b` with the weight in PyTorch's layout `[out, in]`.
///
/// All leading dimensions of `x` are folded into one matrix product (candle's `Linear` runs one
/// product per batch element); on the CPU the bias initialises the output, so it costs no extra
/// pass.
///
/// # Shapes
/// `x`: `[.., in]`, `weight`: `[out, in]`, `bias`: `[out]`; output `[.., out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let x_in = x.dim(D::Minus1)?;
    if x_in != in_dim {
        candle_core::bail!(
            "linear: input of shape {:?} does not fit a weight of shape [{out_dim}, {in_dim}]",
            x.dims()
        );
    }
    if let Some(b) = bias
        && b.dims() != [out_dim]
    {
        candle_core::bail!("linear: bias of shape {:?} for {out_dim} outputs", b.dims());
    }
    let mut out_shape = x.dims().to_vec();
    if let Some(last) = out_shape.last_mut() {
        *last = out_dim;
    }
    let x2 = x.contiguous()?.reshape(((), in_dim))?; // [M, in]
    let fast = fast_path(x) && fast_path(weight) && bias.is_none_or(fast_path);
    let y = if fast {
        let w = weight.contiguous()?;
        match bias {
            Some(b) => x2.apply_op3(&w, &b.contiguous()?, Op(LinearBias))?,
            None => x2.apply_op2(&w, Op(LinearNoBias))?,
        }
    } else {
        let y = precision::matmul(&x2, &weight.t()?)?; // [M, out]
        match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }
    };
    y.reshape(out_shape)
}

/// `gelu(x·Wᵀ + b)` (exact GELU) for inference: the values of
/// [`bias_gelu`](super::bias_gelu)`(`[`linear`]`(x, weight, None), bias)`, bit for bit, without
/// writing the product before the activation where the CPU's AVX2 engine runs it (the GELU is
/// taken in its tiles: at the ECG encoder's `fc1`, batch 64, a pass over 118 MB each way less).
/// Nothing is kept for a backward pass, which computes the product again: in training, where
/// one follows, the composition is the cheaper choice.
///
/// # Shapes
/// `x`: `[.., in]`, `weight`: `[out, in]`, `bias`: `[out]`; output `[.., out]`.
pub fn linear_gelu_inference(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let fast = fast_path(x) && fast_path(weight) && fast_path(bias);
    if !fast || x.dim(D::Minus1)? != in_dim || bias.dims() != [out_dim] {
        // Elsewhere, and for the errors of a mismatch.
        return super::bias_gelu(&linear(x, weight, None)?, bias);
    }
    let mut out_shape = x.dims().to_vec();
    if let Some(last) = out_shape.last_mut() {
        *last = out_dim;
    }
    let x2 = x.contiguous()?.reshape(((), in_dim))?; // [M, in]
    x2.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Op(LinearGelu))?
        .reshape(out_shape)
}

/// The CPU forward of both linear operations: `x·Wᵀ` for `x` `[M, K]` and `W` `[N, K]`, plus
/// `bias` `[N]` (when given) in every row.
fn forward_cpu(
    op: &'static str,
    x: Input<'_>,
    w: Input<'_>,
    bias: Option<Input<'_>>,
) -> Result<(Vec<f32>, Shape)> {
    let (m, k) = x.shape().dims2()?;
    let (n, k2) = w.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("{op}: inner dimensions differ ({k} vs {k2})");
    }
    let out = linear_forward(x.data, w.data, bias.map(|b| b.data), (m, k, n))?;
    Ok((out, Shape::from((m, n))))
}

/// The gradients `(dx, dW, db)` of `x·Wᵀ + b` for the upstream gradient `g` `[M, N]`.
///
/// On the CPU the products are this crate's (`gemm::linear_grads`: the weight gradient summed
/// per thread over its own rows, bf16 operands where configured); elsewhere candle's.
fn linear_grads(x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    if fast_path(x) && fast_path(w) && fast_path(g) {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let (dw, db, dx) = with_contiguous_f32(g, |g| {
            with_contiguous_f32(x, |x| {
                with_contiguous_f32(w, |w| gemm::linear_grads(g, x, w, (m, k, n)))
            })
        })?;
        let device = x.device();
        return Ok((
            Tensor::from_vec(dx, (m, k), device)?,
            Tensor::from_vec(dw, (n, k), device)?,
            Tensor::from_vec(db, n, device)?,
        ));
    }
    let grad_x = g.matmul(w)?; // [M, K]
    let grad_w = g.t()?.matmul(x)?; // [N, K]
    let n = g.dim(1)?;
    Ok((grad_x, grad_w, bias_gradient(g, n)?))
}

struct LinearBias;

impl CpuKernel<3> for LinearBias {
    const NAME: &'static str = "mmcl-linear";

    fn forward(&self, [x, w, b]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        forward_cpu(Self::NAME, x, w, Some(b))
    }

    fn backward(&self, [x, w, _]: [&Tensor; 3], _: &Tensor, grad: &Tensor) -> Gradients<3> {
        let (grad_x, grad_w, grad_b) = linear_grads(x, w, grad)?;
        Ok([Some(grad_x), Some(grad_w), Some(grad_b)])
    }
}

struct LinearNoBias;

impl CpuKernel<2> for LinearNoBias {
    const NAME: &'static str = "mmcl-linear-no-bias";

    fn forward(&self, [x, w]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        forward_cpu(Self::NAME, x, w, None)
    }

    fn backward(&self, [x, w]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Gradients<2> {
        let (grad_x, grad_w, _) = linear_grads(x, w, grad)?;
        Ok([Some(grad_x), Some(grad_w)])
    }
}

struct LinearGelu;

impl CpuKernel<3> for LinearGelu {
    const NAME: &'static str = "mmcl-linear-gelu";

    fn forward(&self, [x, w, b]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let (m, k) = x.shape().dims2()?;
        let n = w.shape().dims2()?.0;
        let (lhs, rhs) = (MatRef::rows(x.data, m, k), MatRef::rows(w.data, n, k).t());
        let finish = FinishInto::BiasGelu { bias: b.data };
        let out = match product_new_finished(lhs, rhs, Start::Zero, finish)? {
            Some(out) => out,
            None => bias_gelu_new(&linear_forward(x.data, w.data, None, (m, k, n))?, b.data)?,
        };
        Ok((out, Shape::from((m, n))))
    }

    fn backward(&self, [x, w, b]: [&Tensor; 3], _: &Tensor, grad: &Tensor) -> Gradients<3> {
        // The composition's backward passes, from the product computed again.
        let ((m, k), n) = (x.dims2()?, w.dim(0)?);
        let pre = with_contiguous_f32(x, |x| {
            with_contiguous_f32(w, |w| linear_forward(x, w, None, (m, k, n)))
        })?;
        let pre = Tensor::from_vec(pre, (m, n), x.device())?;
        let (grad_pre, grad_b) = bias_gelu_backward(&pre, b, grad)?;
        let (grad_x, grad_w, _) = linear_grads(x, w, &grad_pre)?;
        Ok([Some(grad_x), Some(grad_w), Some(grad_b)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::*;
    use candle_core::{DType, Var};

    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = x.broadcast_matmul(&w.t()?)?;
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    #[test]
    fn forward_matches_candle_in_f64() -> Result<()> {
        let x = rand_tensor(&[3, 17, 40], 31, 1.0)?;
        let w = rand_tensor(&[24, 40], 32, 0.3)?;
        let b = rand_tensor(&[24], 33, 1.0)?;
        let f64 = |t: &Tensor| t.to_dtype(DType::F64);
        for bias in [Some(&b), None] {
            let fast = linear(&x, &w, bias)?;
            assert_eq!(fast.dims(), &[3, 17, 24]);
            let b64 = bias.map(f64).transpose()?;
            let exact = reference(&f64(&x)?, &f64(&w)?, b64.as_ref())?.to_dtype(DType::F32)?;
            assert!(rel_err(&fast, &exact)? < 1e-6);
        }
        // A transposed (strided) input gives the same result.
        let xt = rand_tensor(&[40, 5], 34, 1.0)?.t()?;
        let a = linear(&xt, &w, Some(&b))?;
        let c = linear(&xt.contiguous()?, &w, Some(&b))?;
        assert_eq!(rel_err(&a, &c)?, 0.0);
        assert!(linear(&x, &w.t()?, None).is_err());
        // Empty batches give empty outputs.
        let empty = Tensor::zeros((0, 40), DType::F32, x.device())?;
        assert_eq!(linear(&empty, &w, Some(&b))?.dims(), &[0, 24]);
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_of_candle_ops() -> Result<()> {
        let x = rand_tensor(&[2, 9, 12], 35, 1.0)?;
        let w = rand_tensor(&[7, 12], 36, 0.5)?;
        let b = rand_tensor(&[7], 37, 0.5)?;
        let up = rand_tensor(&[2, 9, 7], 38, 1.0)?;
        for with_bias in [true, false] {
            let run = |fast: bool| -> Result<Vec<Tensor>> {
                let vars = [
                    Var::from_tensor(&x)?,
                    Var::from_tensor(&w)?,
                    Var::from_tensor(&b)?,
                ];
                let bias = with_bias.then(|| vars[2].as_tensor());
                let y = if fast {
                    linear(vars[0].as_tensor(), vars[1].as_tensor(), bias)?
                } else {
                    reference(vars[0].as_tensor(), vars[1].as_tensor(), bias)?
                };
                let g = (y * &up)?.sum_all()?.backward()?;
                let n = if with_bias { 3 } else { 2 };
                vars[..n]
                    .iter()
                    .map(|v| {
                        g.get(v.as_tensor())
                            .cloned()
                            .ok_or(candle_core::Error::Msg("no grad".into()))
                    })
                    .collect()
            };
            for (a, c) in run(true)?.iter().zip(&run(false)?) {
                assert!(rel_err(a, c)? < 1e-6);
            }
        }
        Ok(())
    }

    /// The inference form of `fc1` and its GELU is the composition bit for bit, output and
    /// gradients, on products the AVX2 engine takes (whole and edge tiles) and smaller ones.
    #[test]
    fn linear_gelu_inference_is_the_composition_bit_for_bit() -> Result<()> {
        for (m, k, n) in [(300, 200, 304), (301, 200, 290), (9, 12, 7)] {
            let x = rand_tensor(&[m, k], 41, 2.0)?;
            let w = rand_tensor(&[n, k], 42, 0.3)?;
            let b = rand_tensor(&[n], 43, 1.0)?;
            let up = rand_tensor(&[m, n], 44, 1.0)?;
            let run = |fused: bool| -> Result<Vec<Vec<u32>>> {
                let vars = [
                    Var::from_tensor(&x)?,
                    Var::from_tensor(&w)?,
                    Var::from_tensor(&b)?,
                ];
                let [x, w, b] = [0, 1, 2].map(|i| vars[i].as_tensor());
                let y = if fused {
                    linear_gelu_inference(x, w, b)?
                } else {
                    crate::ops::bias_gelu(&linear(x, w, None)?, b)?
                };
                let g = (&y * &up)?.sum_all()?.backward()?;
                let mut out = vec![bits(&y)?];
                for v in &vars {
                    let grad = g
                        .get(v.as_tensor())
                        .ok_or(candle_core::Error::Msg("no grad".into()))?;
                    out.push(bits(grad)?);
                }
                Ok(out)
            };
            assert!(run(true)? == run(false)?, "[{m}, {k}]·[{k}, {n}]");
        }
        let (x, w, b) = (
            rand_tensor(&[4, 6], 45, 1.0)?,
            rand_tensor(&[5, 7], 46, 1.0)?,
            rand_tensor(&[5], 47, 1.0)?,
        );
        assert!(
            linear_gelu_inference(&x, &w, &b).is_err(),
            "mismatched inner dimensions"
        );
        Ok(())
    }
}
