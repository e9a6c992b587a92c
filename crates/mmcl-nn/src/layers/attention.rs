//! timm's ViT `Attention`: packed `qkv` projection, multi-head scaled dot-product, `proj`.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::{BlockConfig, Dropout, Linear};
use crate::precision;
use crate::rng::SharedRng;

/// Multi-head self-attention with keys `qkv.*` and `proj.*`.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
    attn_drop: Dropout,
    proj_drop: Dropout,
}

impl Attention {
    /// Attention over `cfg.dim` features in `cfg.num_heads` heads (`dim` must be divisible by
    /// it), with `cfg.qkv_bias`, dropouts `cfg.attn_drop` (probabilities) and `cfg.drop` (after
    /// the projection), initialised by `cfg.weight_init`.
    pub fn new(cfg: &BlockConfig, rng: SharedRng, vb: VarBuilder) -> Result<Self> {
        let (dim, num_heads, weight_init) = (cfg.dim, cfg.num_heads, cfg.weight_init);
        if num_heads == 0 || !dim.is_multiple_of(num_heads) {
            candle_core::bail!("attention: dim {dim} is not divisible into {num_heads} heads");
        }
        let qkv = Linear::with_weight_init(dim, 3 * dim, cfg.qkv_bias, weight_init, vb.pp("qkv"))?;
        let proj = Linear::with_weight_init(dim, dim, true, weight_init, vb.pp("proj"))?;
        let head_dim = dim / num_heads;
        Ok(Self {
            qkv,
            proj,
            num_heads,
            scale: (head_dim as f64).powf(-0.5),
            attn_drop: Dropout::new(cfg.attn_drop, rng.clone()),
            proj_drop: Dropout::new(cfg.drop, rng),
        })
    }

    /// The number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The packed q/k/v projection.
    pub fn qkv(&self) -> &Linear {
        &self.qkv
    }

    /// The output projection.
    pub fn proj(&self) -> &Linear {
        &self.proj
    }

    /// The scale of the scores (`head_dim^-0.5`).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The dropout probabilities on the attention probabilities and after the projection.
    pub fn dropout_probs(&self) -> (f64, f64) {
        (self.attn_drop.prob(), self.proj_drop.prob())
    }

    /// The attention and, on request, its probabilities (the reference's `attn_map`, before
    /// attention dropout; detached from the graph: they are for inspection).
    ///
    /// # Shapes
    /// `x`: `[B, N, D]` → `([B, N, D], Some([B, heads, N, N]))`.
    pub fn forward_with_probs(
        &self,
        x: &Tensor,
        train: bool,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let qkv = self.qkv.forward(x)?; // [B, N, 3D]
        let (out, probs) = if train && self.attn_drop.prob() > 0.0 {
            // Dropout on the probabilities needs them materialised: the composed path.
            let (b, n, d3) = qkv.dims3()?;
            let (q, k, v) = crate::ops::attention_split_heads(&qkv, self.num_heads)?; // [B, H, N, hd]
            let scores = (precision::matmul(&q, &k.t()?)? * self.scale)?;
            let probs = crate::ops::softmax_last_dim(&scores)?;
            let dropped = self.attn_drop.forward_t(&probs, train)?;
            let out = precision::matmul(&dropped, &v)?
                .transpose(1, 2)?
                .reshape((b, n, d3 / 3))?; // [B, N, D]
            (out, want_probs.then_some(probs))
        } else {
            let out = crate::ops::attention(&qkv, self.num_heads, self.scale)?; // [B, N, D]
            let probs = if want_probs {
                Some(crate::ops::attention_probs(
                    &qkv.detach(),
                    self.num_heads,
                    self.scale,
                )?)
            } else {
                None
            };
            (out, probs)
        };
        let out = self.proj.forward(&out)?;
        Ok((self.proj_drop.forward_t(&out, train)?, probs))
    }
}

impl ModuleT for Attention {
    /// # Shapes
    /// `[B, N, D]` → `[B, N, D]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward_with_probs(x, train, false)?.0)
    }
}
