//! Element-wise sum of two tensors of the same shape (residual connections), plain or
//! followed by ReLU, multi-threaded.

use crate::kernels::{CHUNK, fast_path, map_chunks};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `a + b` for tensors of the same shape (candle's element-wise add runs on one thread, which
/// dominates residual connections on large activations).
///
/// # Shapes
/// `a`, `b`: the same shape; output: that shape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if fast_path(a) && fast_path(b) {
        a.contiguous()?.apply_op2(&b.contiguous()?, Add)
    } else {
        a + b
    }
}

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "mmcl-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_chunks([(s1, l1), (s2, l2)], self.name(), CHUNK, |o, [a, b]| {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *o = x + y;
            }
        })
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad_res.clone()), Some(grad_res.clone())))
    }
}

/// `relu(a + b)` for tensors of the same shape (the ResNet residual connection): on the CPU in
/// f32 one pass forward and one masked copy of the gradient backward, shared by both inputs;
/// elsewhere candle's operations.
///
/// # Shapes
/// `a`, `b`: the same shape; output: that shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    if fast_path(a) && fast_path(b) {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "mmcl-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_chunks([(s1, l1), (s2, l2)], self.name(), CHUNK, |o, [a, b]| {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                // `max` maps NaN to 0, as candle's ReLU (the unfused path) does.
                *o = (x + y).max(0.0);
            }
        })
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // PyTorch's ReLU passes the gradient where the output is positive; the sum passes it
        // on unchanged to both inputs.
        let masked = res
            .contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &WherePositive)?;
        Ok((Some(masked.clone()), Some(masked)))
    }
}

/// `grad` where `res > 0`, else 0 (the backward of [`AddRelu`]).
struct WherePositive;

impl CustomOp2 for WherePositive {
    fn name(&self) -> &'static str {
        "mmcl-where-positive"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_chunks(
            [(s1, l1), (s2, l2)],
            self.name(),
            CHUNK,
            |o, [res, grad]| {
                for ((o, &y), &g) in o.iter_mut().zip(res).zip(grad) {
                    *o = if y > 0.0 { g } else { 0.0 };
                }
            },
        )
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
