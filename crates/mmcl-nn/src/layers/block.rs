//! timm's pre-norm transformer `Block`.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::{Attention, DropPath, LayerNorm, Mlp};
use crate::init::WeightInit;
use crate::rng::SharedRng;

/// The hyper-parameters of one [`Block`] (timm's `Block.__init__` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    /// Feature dimension.
    pub dim: usize,
    /// Number of attention heads.
    pub num_heads: usize,
    /// Hidden width of the MLP relative to `dim` (the hidden width is `int(dim · mlp_ratio)`).
    pub mlp_ratio: f64,
    /// Whether the `qkv` projection has a bias.
    pub qkv_bias: bool,
    /// Dropout after the projections and in the MLP (timm's `drop`).
    pub drop: f64,
    /// Dropout on the attention probabilities.
    pub attn_drop: f64,
    /// Drop-path probability of both residual branches.
    pub drop_path: f64,
    /// LayerNorm epsilon (1e-6 in the ViTs).
    pub norm_eps: f64,
    /// Initialisation of the linear weights.
    pub weight_init: WeightInit,
}

/// `x + drop_path(attn(norm1(x)))`, then `x + drop_path(mlp(norm2(x)))`, with keys `norm1.*`,
/// `attn.*`, `norm2.*`, `mlp.*`.
#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    drop_path: DropPath,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    /// A block drawing its training randomness from `rng`.
    pub fn new(cfg: &BlockConfig, rng: SharedRng, vb: VarBuilder) -> Result<Self> {
        let hidden = (cfg.dim as f64 * cfg.mlp_ratio) as usize;
        Ok(Self {
            norm1: LayerNorm::new(cfg.dim, cfg.norm_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg, rng.clone(), vb.pp("attn"))?,
            drop_path: DropPath::new(cfg.drop_path, rng.clone()),
            norm2: LayerNorm::new(cfg.dim, cfg.norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(
                cfg.dim,
                hidden,
                cfg.drop,
                cfg.weight_init,
                rng,
                vb.pp("mlp"),
            )?,
        })
    }

    /// The attention sub-layer.
    pub fn attn(&self) -> &Attention {
        &self.attn
    }

    /// The MLP sub-layer.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The first norm.
    pub fn norm1(&self) -> &LayerNorm {
        &self.norm1
    }

    /// The second norm.
    pub fn norm2(&self) -> &LayerNorm {
        &self.norm2
    }

    /// The block's output and, on request, the attention probabilities of its attention.
    ///
    /// # Shapes
    /// `x`: `[B, N, D]` → `([B, N, D], Some([B, heads, N, N]))`.
    pub fn forward_with_attention(
        &self,
        x: &Tensor,
        train: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (x, probs) = self.attention_residual(x, train, want_probs)?;
        let h = self.mlp.forward_t(&self.norm2.forward(&x)?, train)?;
        let x = crate::ops::add(&x, &self.drop_path.forward_t(&h, train)?)?;
        Ok((x, probs))
    }
}

impl Block {
    /// `x + drop_path(attn(norm1(x)))`, the first half of the block, with the attention
    /// probabilities on request.
    fn attention_residual(
        &self,
        x: &Tensor,
        train: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (h, probs) =
            self.attn
                .forward_with_probs(&self.norm1.forward(x)?, train, want_probs)?;
        Ok((
            crate::ops::add(x, &self.drop_path.forward_t(&h, train)?)?,
            probs,
        ))
    }

    /// The mean of the block's output over tokens `first..`, in evaluation mode: `[B, N, D]` →
    /// `[B, 1, D]`, the mean of `forward_t(x, false)`'s tokens up to float rounding.
    ///
    /// `fc2` is affine, so it commutes with the mean: it maps the mean hidden activation instead
    /// of every token's, which saves a third of the block's matrix products (a ViT that pools
    /// by the token mean only needs its last block this way).
    ///
    /// # Errors
    /// When `x` has no tokens from `first` on.
    pub fn forward_token_mean(&self, x: &Tensor, first: usize) -> Result<Tensor> {
        let (x, _) = self.attention_residual(x, false, false)?; // [B, N, D]
        let hidden = self.mlp.hidden_t(&self.norm2.forward(&x)?, false)?; // [B, N, H]
        let tokens = x.dim(1)?;
        if first >= tokens {
            candle_core::bail!("the mean over tokens {first}.. of {tokens} tokens is empty");
        }
        let tail_mean =
            |t: &Tensor| crate::ops::mean_tokens(&t.narrow(1, first, tokens - first)?);
        let mlp = self.mlp.fc2().forward(&tail_mean(&hidden)?)?; // [B, 1, D]
        crate::ops::add(&tail_mean(&x)?, &mlp)
    }

    /// The block as one autograd node ([`crate::ops::transformer_block`]): the same result as
    /// [`ModuleT::forward_t`] up to float rounding, with a much cheaper backward pass on the
    /// CPU (for training). Drop-path draws the same per-sample masks, in the same order, from
    /// the block's random stream; with dropout configured (`drop`, `attn_drop` > 0) in train
    /// mode it falls back to [`ModuleT::forward_t`].
    ///
    /// # Shapes
    /// `[B, N, D]` → `[B, N, D]`.
    pub fn forward_fused(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (attn_drop, proj_drop) = self.attn.dropout_probs();
        let dropout = attn_drop > 0.0 || proj_drop > 0.0 || self.mlp.dropout_prob() > 0.0;
        if train && dropout {
            return self.forward_t(x, train);
        }
        let (Some(fc1_bias), Some(fc2_bias), Some(proj_bias)) = (
            self.mlp.fc1().bias(),
            self.mlp.fc2().bias(),
            self.attn.proj().bias(),
        ) else {
            return self.forward_t(x, train);
        };
        let scales = self.drop_path.branch_scales(x.dim(0)?, train);
        let params = crate::ops::BlockParams {
            norm1: (self.norm1.weight(), self.norm1.bias()),
            qkv: (self.attn.qkv().weight(), self.attn.qkv().bias()),
            proj: (self.attn.proj().weight(), proj_bias),
            norm2: (self.norm2.weight(), self.norm2.bias()),
            fc1: (self.mlp.fc1().weight(), fc1_bias),
            fc2: (self.mlp.fc2().weight(), fc2_bias),
            num_heads: self.attn.num_heads(),
            scale: self.attn.scale(),
            eps: self.norm1.eps(),
        };
        crate::ops::transformer_block(x, &params, scales.as_ref(), train)
    }
}

impl ModuleT for Block {
    /// # Shapes
    /// `[B, N, D]` → `[B, N, D]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_with_attention(x, train, false)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamStore;
    use crate::kernels::test_support::{PathValues, assert_paths_agree};
    use candle_core::{DType, Device};

    fn config() -> BlockConfig {
        BlockConfig {
            dim: 16,
            num_heads: 4,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop: 0.0,
            attn_drop: 0.0,
            drop_path: 0.0,
            norm_eps: 1e-6,
            weight_init: WeightInit::Mae,
        }
    }

    #[test]
    fn every_parameter_gets_a_gradient_with_timm_names() -> crate::Result<()> {
        let store = ParamStore::new(3);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let block = Block::new(&config(), SharedRng::new(0), vb.pp("blocks.0"))?;
        let names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
        for key in [
            "blocks.0.attn.qkv.weight",
            "blocks.0.attn.qkv.bias",
            "blocks.0.attn.proj.weight",
            "blocks.0.mlp.fc1.weight",
            "blocks.0.mlp.fc2.bias",
            "blocks.0.norm1.weight",
            "blocks.0.norm2.bias",
        ] {
            assert!(
                names.iter().any(|n| n == key),
                "{key} missing from {names:?}"
            );
        }
        assert_eq!(names.len(), 12);
        let x = crate::kernels::test_support::rand_tensor(&[2, 5, 16], 1, 1.0)?;
        let y = block.forward_t(&x, true)?;
        let loss = y.sqr()?.sum_all()?;
        let failing = store.vars_without_gradient(&loss, &[])?;
        assert!(failing.is_empty(), "{failing:?}");
        Ok(())
    }

    /// `y` and the gradients of `Σ y²` for every trainable parameter of `store`.
    fn values_and_gradients(store: &ParamStore, y: &Tensor) -> crate::Result<PathValues> {
        let grads = y.sqr()?.sum_all()?.backward()?;
        let mut g = Vec::new();
        for (_, var) in store.trainable_vars() {
            let t = grads
                .get(var.as_tensor())
                .cloned()
                .ok_or(crate::Error::InvalidArgument("no gradient".into()))?;
            g.push(t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok((y.flatten_all()?.to_vec1::<f32>()?, g))
    }

    #[test]
    fn the_fused_block_is_the_block() -> crate::Result<()> {
        let mut cfg = config();
        cfg.drop_path = 0.3;
        let x = crate::kernels::test_support::rand_tensor(&[6, 5, 16], 9, 1.0)?;
        let run = |fused: bool, train: bool| -> crate::Result<PathValues> {
            let store = ParamStore::new(3);
            let block = Block::new(
                &cfg,
                SharedRng::new(4),
                store.var_builder(DType::F32, &Device::Cpu),
            )?;
            let y = if fused {
                block.forward_fused(&x, train)?
            } else {
                block.forward_t(&x, train)?
            };
            values_and_gradients(&store, &y)
        };
        for train in [true, false] {
            // Same drop-path draws: the same samples are dropped.
            let what = format!("train {train}");
            assert_paths_agree(&run(true, train)?, &run(false, train)?, 1e-4, &what);
        }
        Ok(())
    }

    #[test]
    fn the_token_mean_is_the_mean_of_the_tokens() -> Result<()> {
        let store = ParamStore::new(7);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let block = Block::new(&config(), SharedRng::new(0), vb)?;
        let x = crate::kernels::test_support::rand_tensor(&[2, 9, 16], 2, 1.0)?;
        let expected = crate::ops::mean_tokens(&block.forward_t(&x, false)?.narrow(1, 1, 8)?)?;
        let mean = block.forward_token_mean(&x, 1)?;
        assert_eq!(mean.dims(), [2, 1, 16]);
        let diff = (mean - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = expected.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-6 * scale.max(1.0), "{diff} against {scale}");
        assert!(block.forward_token_mean(&x, 9).is_err());
        Ok(())
    }

    #[test]
    fn training_randomness_is_seeded_and_inactive_in_eval() -> Result<()> {
        let mut cfg = config();
        cfg.drop = 0.1;
        cfg.attn_drop = 0.1;
        cfg.drop_path = 0.2;
        let x = crate::kernels::test_support::rand_tensor(&[6, 5, 16], 2, 1.0)?;
        let run = |seed: u64, train: bool| -> Result<Vec<f32>> {
            let store = ParamStore::new(3);
            let vb = store.var_builder(DType::F32, &Device::Cpu);
            let block = Block::new(&cfg, SharedRng::new(seed), vb)?;
            block.forward_t(&x, train)?.flatten_all()?.to_vec1()
        };
        assert_eq!(run(1, true)?, run(1, true)?);
        assert_ne!(run(1, true)?, run(2, true)?);
        assert_eq!(run(1, false)?, run(2, false)?);
        Ok(())
    }
}
