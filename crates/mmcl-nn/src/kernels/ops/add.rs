//! Element-wise sum of two tensors of the same shape (residual connections), multi-threaded.

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
