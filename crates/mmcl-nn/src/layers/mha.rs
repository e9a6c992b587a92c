//! PyTorch's `nn.MultiheadAttention` (batch first, no masks), as used for attention pooling.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::Linear;
use crate::init;
use crate::precision;

/// `nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)` with its keys
/// `in_proj_weight` `[3D, D]`, `in_proj_bias` `[3D]`, `out_proj.weight`, `out_proj.bias`, and
/// PyTorch's initialisation (xavier-uniform packed input projection, zero biases).
#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    num_heads: usize,
    dim: usize,
}

impl MultiheadAttention {
    /// Attention over `dim` features in `num_heads` heads.
    pub fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        if num_heads == 0 || !dim.is_multiple_of(num_heads) {
            candle_core::bail!(
                "multi-head attention: dim {dim} is not divisible into {num_heads} heads"
            );
        }
        let in_proj_weight = vb.get_with_hints(
            (3 * dim, dim),
            "in_proj_weight",
            init::xavier_uniform(dim, 3 * dim),
        )?;
        let in_proj_bias = vb.get_with_hints(3 * dim, "in_proj_bias", init::ZEROS)?;
        let out_proj = Linear::new(
            dim,
            dim,
            Some(init::ZEROS),
            init::torch_default_weight(dim),
            vb.pp("out_proj"),
        )?;
        Ok(Self {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            num_heads,
            dim,
        })
    }

    /// The attended values and the attention weights averaged over the heads (PyTorch's
    /// default `average_attn_weights=True`).
    ///
    /// # Shapes
    /// `query`: `[B, Lq, D]`, `key`, `value`: `[B, Lk, D]` → `([B, Lq, D], [B, Lq, Lk])`.
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let d = self.dim;
        let project = |x: &Tensor, part: usize| -> Result<Tensor> {
            let w = self.in_proj_weight.narrow(0, part * d, d)?;
            let b = self.in_proj_bias.narrow(0, part * d, d)?;
            crate::ops::linear(x, &w, Some(&b))
        };
        let (b, lq, _) = query.dims3()?;
        let lk = key.dim(1)?;
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let heads = |x: Tensor, l: usize| -> Result<Tensor> {
            x.reshape((b, l, h, hd))?.transpose(1, 2)?.contiguous() // [B, H, L, hd]
        };
        let q = heads(project(query, 0)?, lq)?;
        let k = heads(project(key, 1)?, lk)?;
        let v = heads(project(value, 2)?, lk)?;
        let scores = (precision::matmul(&q, &k.t()?)? * (hd as f64).powf(-0.5))?; // [B, H, Lq, Lk]
        let probs = crate::ops::softmax_last_dim(&scores)?;
        let out = precision::matmul(&probs, &v)?; // [B, H, Lq, hd]
        let out = out.transpose(1, 2)?.reshape((b, lq, d))?; // [B, Lq, D]
        let out = self.out_proj.forward(&out)?;
        let weights = probs.mean(1)?; // [B, Lq, Lk]
        Ok((out, weights))
    }

    /// The number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The output projection.
    pub fn out_proj(&self) -> &Linear {
        &self.out_proj
    }
}

impl Module for MultiheadAttention {
    /// Self-attention of `x` with itself.
    ///
    /// # Shapes
    /// `[B, L, D]` → `[B, L, D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(MultiheadAttention::forward(self, x, x, x)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamStore;
    use candle_core::{D, DType, Device};

    #[test]
    fn weights_sum_to_one_and_gradients_flow() -> crate::Result<()> {
        let store = ParamStore::new(4);
        let mha = MultiheadAttention::new(8, 2, store.var_builder(DType::F32, &Device::Cpu))?;
        let x = crate::kernels::test_support::rand_tensor(&[3, 5, 8], 9, 1.0)?;
        let q = x.mean_keepdim(1)?;
        let (out, w) = mha.forward(&q, &x, &x)?;
        assert_eq!(out.dims(), &[3, 1, 8]);
        assert_eq!(w.dims(), &[3, 1, 5]);
        let sums = w.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let failing = store.vars_without_gradient(&out.sqr()?.sum_all()?, &[])?;
        assert!(failing.is_empty(), "{failing:?}");
        Ok(())
    }
}
