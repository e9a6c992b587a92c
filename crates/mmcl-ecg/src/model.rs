//! The ECG Vision Transformer (`ECGEncoder` of MMCL on timm's `VisionTransformer`).

use candle_core::{DType, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use mmcl_nn::init::{self, WeightInit};
use mmcl_nn::layers::{Block, BlockConfig, Dropout, LayerNorm, Linear, MultiheadAttention};
use mmcl_nn::rng::SharedRng;

use crate::{EcgVitConfig, Error, Pooling, Result};

/// The patch embedding: a convolution with kernel = stride = patch size, computed as a matrix
/// product of the flattened patches with the weight viewed as `[D, C·ph·pw]` (candle's conv2d
/// takes a single stride for both axes). Keys `proj.weight` `[D, C, ph, pw]`, `proj.bias`.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    in_chans: usize,
    patch_size: [usize; 2],
    embed_dim: usize,
}

impl PatchEmbed {
    /// A patch embedding of `in_chans` channels into `embed_dim`, initialised as `weight_init`
    /// says (timm: PyTorch's conv default; MAE: xavier-uniform over the `[D, C·ph·pw]` view).
    pub fn new(
        in_chans: usize,
        patch_size: [usize; 2],
        embed_dim: usize,
        weight_init: WeightInit,
        vb: VarBuilder,
    ) -> Result<Self> {
        let fan_in = in_chans * patch_size[0] * patch_size[1];
        let w_init = match weight_init {
            WeightInit::Timm => init::torch_default_weight(fan_in),
            WeightInit::Mae => init::xavier_uniform(fan_in, embed_dim),
        };
        let vb = vb.pp("proj");
        let weight = vb.get_with_hints(
            (embed_dim, in_chans, patch_size[0], patch_size[1]),
            "weight",
            w_init,
        )?;
        let bias = vb.get_with_hints(embed_dim, "bias", init::torch_default_bias(fan_in))?;
        Ok(Self {
            weight,
            bias,
            in_chans,
            patch_size,
            embed_dim,
        })
    }

    /// The projection weight `[D, C, ph, pw]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The projection bias `[D]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The patch grid of an input of height `h` and width `w` (remainders are cut off, as the
    /// convolution does).
    pub fn grid_size(&self, h: usize, w: usize) -> (usize, usize) {
        (h / self.patch_size[0], w / self.patch_size[1])
    }

    /// The flattened patches, row-major over the grid (lead rows, then time columns), each
    /// ordered (channel, row, column) as the convolution weight.
    ///
    /// # Shapes
    /// `[B, C, H, W]` → `[B, L, C·ph·pw]` with `L = (H/ph)·(W/pw)`.
    pub fn patchify(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != self.in_chans {
            return Err(Error::InputShape {
                expected: format!("{} channels", self.in_chans),
                got: x.dims().to_vec(),
            });
        }
        let [ph, pw] = self.patch_size;
        let (gh, gw) = self.grid_size(h, w);
        if gh == 0 || gw == 0 {
            return Err(Error::InputShape {
                expected: format!("at least one {ph}x{pw} patch"),
                got: x.dims().to_vec(),
            });
        }
        flatten_patches(x, self.patch_size, (gh, gw), PatchOrder::ChannelFirst)
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, L, D]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let patches = self.patchify(x)?; // [B, L, C·ph·pw]
        let w = self.weight.reshape((self.embed_dim, ()))?; // [D, C·ph·pw]
        Ok(mmcl_nn::ops::linear(&patches, &w, Some(&self.bias))?) // [B, L, D]
    }
}

/// The order of the values inside a flattened patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchOrder {
    /// (channel, row, column), as the patch embedding's convolution weight.
    ChannelFirst,
    /// (row, column, channel), as the masked autoencoder's `patchify`.
    ChannelLast,
}

/// Crops `x` `[B, C, H, W]` to the `grid` `(gh, gw)` of `patch_size` patches and flattens each
/// patch in `order`: `[B, L, C·ph·pw]`, row-major over the grid (lead rows, then time columns).
/// The encoder's embedding and the masked autoencoder's targets cut alike.
pub(crate) fn flatten_patches(
    x: &Tensor,
    patch_size: [usize; 2],
    (gh, gw): (usize, usize),
    order: PatchOrder,
) -> Result<Tensor> {
    let (b, c, _, _) = x.dims4()?;
    let [ph, pw] = patch_size;
    let permutation = match order {
        PatchOrder::ChannelFirst => (0, 2, 4, 1, 3, 5), // [B, gh, gw, C, ph, pw]
        PatchOrder::ChannelLast => (0, 2, 4, 3, 5, 1),  // [B, gh, gw, ph, pw, C]
    };
    let patches = x
        .narrow(2, 0, gh * ph)?
        .narrow(3, 0, gw * pw)?
        .reshape((b, c, gh, ph, gw, pw))?
        .permute(permutation)?
        .reshape((b, gh * gw, c * ph * pw))?;
    Ok(patches)
}

/// What one forward pass of the encoder can return besides the pooled features.
#[derive(Debug, Clone)]
pub struct EcgVitOutput {
    /// Every token after the last block, without norm: `[B, 1 + L, D]` (class token first).
    pub tokens: Tensor,
    /// The attention probabilities of the requested block, `[B, heads, 1 + L, 1 + L]`.
    pub attention: Option<Tensor>,
}

/// The ECG Vision Transformer encoder with the reference's parameter names.
///
/// Structure (MMCL's `ECGEncoder`): patch embedding → class token → `+ pos_embed` → dropout →
/// pre-norm blocks → pooling ([`Pooling`]); `norm` always exists (class-token pooling),
/// `fc_norm` when `global_pool` or `attention_pool` is set, `attention_pool` (an
/// `nn.MultiheadAttention`) when `attention_pool` is set, and `head` when `num_classes > 0`.
#[derive(Debug, Clone)]
pub struct EcgVit {
    cfg: EcgVitConfig,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    pos_drop: Dropout,
    blocks: Vec<Block>,
    norm: LayerNorm,
    fc_norm: Option<LayerNorm>,
    attention_pool: Option<MultiheadAttention>,
    head: Option<Linear>,
    dtype: DType,
}

impl EcgVit {
    /// Builds the encoder from `vb` (paths = PyTorch keys); fresh weights are initialised as
    /// `cfg.weight_init` says, training randomness is drawn from `rng`.
    pub fn new(cfg: &EcgVitConfig, rng: SharedRng, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let num_patches = cfg.num_patches();
        let patch_embed = PatchEmbed::new(
            cfg.img_size[0],
            cfg.patch_size,
            d,
            cfg.weight_init,
            vb.pp("patch_embed"),
        )?;
        let (cls_init, pos_embed) = match cfg.weight_init {
            WeightInit::Timm => (
                init::normal(1e-6),
                vb.get_with_hints(
                    (1, num_patches + 1, d),
                    "pos_embed",
                    init::trunc_normal(0.02),
                )?,
            ),
            WeightInit::Mae => (
                init::normal(0.02),
                init::get_with_values(&vb, &[1, num_patches + 1, d], "pos_embed", || {
                    mmcl_nn::pos_embed::sincos_2d_tensor(
                        d,
                        cfg.grid_size(),
                        true,
                        &candle_core::Device::Cpu,
                    )
                })?,
            ),
        };
        let cls_token = vb.get_with_hints((1, 1, d), "cls_token", cls_init)?;
        let dpr = mmcl_nn::layers::drop_path_rates(cfg.drop_path_rate, cfg.depth);
        let blocks = dpr
            .iter()
            .enumerate()
            .map(|(i, &drop_path)| {
                let bc = BlockConfig {
                    dim: d,
                    num_heads: cfg.num_heads,
                    mlp_ratio: cfg.mlp_ratio,
                    qkv_bias: cfg.qkv_bias,
                    drop: cfg.drop_rate,
                    attn_drop: cfg.attn_drop_rate,
                    drop_path,
                    norm_eps: cfg.layer_norm_eps,
                    weight_init: cfg.weight_init,
                };
                Block::new(&bc, rng.clone(), vb.pp(format!("blocks.{i}")))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm"))?;
        let fc_norm = if cfg.has_fc_norm() {
            Some(LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("fc_norm"))?)
        } else {
            None
        };
        let attention_pool = if cfg.attention_pool {
            Some(MultiheadAttention::new(
                d,
                cfg.num_heads,
                vb.pp("attention_pool"),
            )?)
        } else {
            None
        };
        let head = if cfg.num_classes > 0 {
            Some(Linear::new(
                d,
                cfg.num_classes,
                Some(init::ZEROS),
                cfg.weight_init.linear_weight(d, cfg.num_classes),
                vb.pp("head"),
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed,
            dtype: pos_embed.dtype(),
            cls_token,
            pos_embed,
            pos_drop: Dropout::new(cfg.drop_rate, rng),
            blocks,
            norm,
            fc_norm,
            attention_pool,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EcgVitConfig {
        &self.cfg
    }

    /// The patch embedding.
    pub fn patch_embed(&self) -> &PatchEmbed {
        &self.patch_embed
    }

    /// The class token `[1, 1, D]`.
    pub fn cls_token(&self) -> &Tensor {
        &self.cls_token
    }

    /// The position embedding `[1, 1 + L, D]` (row 0 for the class token).
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// The dropout after the position embedding.
    pub fn pos_drop(&self) -> &Dropout {
        &self.pos_drop
    }

    /// The transformer blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The final norm of the class-token path.
    pub fn norm(&self) -> &LayerNorm {
        &self.norm
    }

    /// The norm after global or attention pooling, if configured.
    pub fn fc_norm(&self) -> Option<&LayerNorm> {
        self.fc_norm.as_ref()
    }

    /// The attention-pooling layer, if configured.
    pub fn attention_pool(&self) -> Option<&MultiheadAttention> {
        self.attention_pool.as_ref()
    }

    /// The classification head, if configured.
    pub fn head(&self) -> Option<&Linear> {
        self.head.as_ref()
    }

    /// Accepts `[B, C, leads, T]`, or `[B, leads, T]` when `C = 1`, of the configured size, and
    /// returns it as `[B, C, leads, T]` in the model's dtype.
    pub fn check_input(&self, x: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.cfg.img_size;
        let x4 = match x.dims() {
            [_, xc, xh, xw] if (*xc, *xh, *xw) == (c, h, w) => x.clone(),
            [_, xh, xw] if c == 1 && (*xh, *xw) == (h, w) => x.unsqueeze(1)?,
            _ => {
                let expected = if c == 1 {
                    format!("[N, {c}, {h}, {w}] or [N, {h}, {w}]")
                } else {
                    format!("[N, {c}, {h}, {w}]")
                };
                return Err(Error::InputShape {
                    expected,
                    got: x.dims().to_vec(),
                });
            }
        };
        Ok(x4.to_dtype(self.dtype)?)
    }

    /// The token sequence entering the first block: patch tokens with the class token in front
    /// and the position embedding added.
    ///
    /// # Shapes
    /// `[B, C, leads, T]` → `[B, 1 + L, D]`.
    pub fn embed_tokens(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.check_input(x)?;
        let patches = self.patch_embed.forward(&x)?; // [B, L, D]
        let (b, _, d) = patches.dims3()?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?; // [B, 1, D]
        let tokens = Tensor::cat(&[&cls, &patches], 1)?; // [B, 1 + L, D]
        let tokens = tokens.broadcast_add(&self.pos_embed)?;
        Ok(self.pos_drop.forward_t(&tokens, train)?)
    }

    /// Every token after the last block, and the attention probabilities of block
    /// `attention_block` if asked (negative indices count from the end: -1 is the last block).
    ///
    /// # Shapes
    /// `x`: `[B, C, leads, T]` → tokens `[B, 1 + L, D]`, attention `[B, heads, 1 + L, 1 + L]`.
    pub fn forward_tokens(
        &self,
        x: &Tensor,
        train: bool,
        attention_block: Option<isize>,
    ) -> Result<EcgVitOutput> {
        let want = match attention_block {
            None => None,
            Some(i) => {
                let depth = self.blocks.len() as isize;
                let idx = if i < 0 { depth + i } else { i };
                if !(0..depth).contains(&idx) {
                    return Err(Error::InvalidArgument(format!(
                        "attention of block {i} requested, but the encoder has {depth} blocks"
                    )));
                }
                Some(idx as usize)
            }
        };
        let mut x = self.embed_tokens(x, train)?;
        let mut attention = None;
        for (i, block) in self.blocks.iter().enumerate() {
            if train && want != Some(i) {
                // One autograd node per block in training (as the MAE's encoder): candle's
                // backward pass would otherwise zero-fill and add a gradient for each of a
                // dozen per-layer nodes (7 % of the reproduction's contrastive step).
                x = block.forward_fused(&x, train)?;
                continue;
            }
            let (y, probs) = block.forward_with_attention(&x, train, want == Some(i))?;
            x = y;
            if probs.is_some() {
                attention = probs;
            }
        }
        Ok(EcgVitOutput {
            tokens: x,
            attention,
        })
    }

    /// Pools the tokens of [`EcgVit::forward_tokens`].
    ///
    /// # Shapes
    /// `tokens`: `[B, 1 + L, D]` → `[B, D]`, or `[B, L, D]` for [`Pooling::Tokens`].
    pub fn pool(&self, tokens: &Tensor, pooling: Pooling) -> Result<Tensor> {
        let n = tokens.dim(1)?;
        let patch_tokens = || tokens.narrow(1, 1, n - 1); // [B, L, D]
        match pooling {
            Pooling::Tokens => Ok(patch_tokens()?),
            Pooling::Cls => {
                // norm is per token, so normalising only the class token gives norm(x)[:, 0].
                let cls = tokens.narrow(1, 0, 1)?.squeeze(1)?; // [B, D]
                Ok(self.norm.forward(&cls)?)
            }
            Pooling::Global => {
                let fc_norm = self.fc_norm_for(pooling)?;
                let mean = mmcl_nn::ops::mean_tokens(&patch_tokens()?)?.squeeze(1)?; // [B, D]
                Ok(fc_norm.forward(&mean)?)
            }
            Pooling::Attention => {
                let fc_norm = self.fc_norm_for(pooling)?;
                let pool = self.attention_pool.as_ref().ok_or_else(|| {
                    Error::InvalidArgument(
                        "attention pooling needs an encoder configured with \"attention_pool\": true"
                            .into(),
                    )
                })?;
                let x = patch_tokens()?; // [B, L, D]
                let q = mmcl_nn::ops::mean_tokens(&x)?; // [B, 1, D]
                let (out, _) = pool.forward(&q, &x, &x)?; // [B, 1, D]
                Ok(fc_norm.forward(&out.squeeze(1)?)?)
            }
        }
    }

    fn fc_norm_for(&self, pooling: Pooling) -> Result<&LayerNorm> {
        self.fc_norm.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{pooling} pooling needs fc_norm: configure the encoder with \"global_pool\" or \
                 \"attention_pool\""
            ))
        })
    }

    /// The pooled features (the reference's `forward_features`).
    ///
    /// # Shapes
    /// `[B, C, leads, T]` → `[B, D]` (or `[B, L, D]` for [`Pooling::Tokens`]).
    pub fn forward_features(&self, x: &Tensor, pooling: Pooling, train: bool) -> Result<Tensor> {
        if pooling == Pooling::Global
            && !train
            && let Some((last, blocks)) = self.blocks.split_last()
        {
            // Only the mean of the patch tokens leaves the last block: it is computed without
            // mapping every token through the block's last linear layer.
            let fc_norm = self.fc_norm_for(pooling)?;
            let mut x = self.embed_tokens(x, false)?;
            for block in blocks {
                x = block.forward_t(&x, false)?;
            }
            let mean = last.forward_token_mean(&x, 1)?.squeeze(1)?; // [B, D]
            return Ok(fc_norm.forward(&mean)?);
        }
        let out = self.forward_tokens(x, train, None)?;
        self.pool(&out.tokens, pooling)
    }

    /// Embeddings in evaluation mode.
    ///
    /// # Shapes
    /// `[B, C, leads, T]` → `[B, D]` (or `[B, L, D]` for [`Pooling::Tokens`]).
    pub fn embed(&self, x: &Tensor, pooling: Pooling) -> Result<Tensor> {
        self.forward_features(x, pooling, false)
    }

    /// The head's logits for pooled features.
    ///
    /// # Shapes
    /// `[B, D]` → `[B, num_classes]`.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        let head = self.head.as_ref().ok_or_else(|| {
            Error::InvalidArgument("the encoder has no head (num_classes is 0)".into())
        })?;
        Ok(head.forward(features)?)
    }
}

impl ModuleT for EcgVit {
    /// The configured pooling's features ([`EcgVitConfig::pooling`]).
    ///
    /// # Shapes
    /// `[B, C, leads, T]` → `[B, D]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_features(x, self.cfg.pooling(), train)
            .map_err(candle_core::Error::wrap)
    }
}
