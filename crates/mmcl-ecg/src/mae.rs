//! The masked autoencoder around the ECG encoder (the mae repo's `MaskedAutoencoderViT`), used
//! for the masked-data-modelling pre-training of the paper.
//!
//! The encoder is an [`EcgVit`] (`patch_embed`, `cls_token`, the **fixed** 2-D sin-cos
//! `pos_embed`, `blocks`, `norm`) that sees only the kept patches; the decoder
//! (`decoder_embed`, `mask_token`, the fixed sin-cos `decoder_pos_embed`, `decoder_blocks`,
//! `decoder_norm`, `decoder_pred`) reconstructs every patch. The reference's SimSiam heads
//! (`projector`, `predictor`, with BatchNorm1d) turn the mean patch token of two differently
//! masked views into the cosine term of the loss (see `mmcl_losses::mae`). Parameter names are
//! the reference's, so its checkpoints (`{"model": state_dict}`) load as they are.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmcl_ecg::mae::{MaeConfig, Masking, MaskedAutoencoder};
//! use mmcl_nn::rng::SharedRng;
//!
//! # fn main() -> mmcl_ecg::Result<()> {
//! let cfg = MaeConfig::preset("mae_vit_pluto_patchX", [1, 12, 500], [1, 100])?;
//! let (mae, store) = MaskedAutoencoder::from_seed(&cfg, 0, &Device::Cpu)?;
//! // The fixed position embeddings are not trained.
//! assert!(store.is_frozen("pos_embed") && store.is_frozen("decoder_pos_embed"));
//! let ecg = Tensor::randn(0f32, 1.0, (2, 1, 12, 500), &Device::Cpu)?;
//! let masking = Masking::random(&SharedRng::new(1), 2, cfg.num_patches(), 0.75)?;
//! let out = mae.forward(&ecg, &masking, true)?;
//! assert_eq!(out.latent.dims(), &[2, 1 + 15, 256]); // class token + int(60 * 0.25) patches
//! assert_eq!(out.pred.dims(), &[2, 60, 100]);
//! assert_eq!(mae.unpatchify(&out.pred)?.dims(), &[2, 1, 12, 500]);
//! # Ok(())
//! # }
//! ```

mod config;
mod masking;

pub use config::{MAE_PRESETS, MaeConfig, MaePreset};
pub use masking::{Masking, len_keep};

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use mmcl_nn::batch_norm::{BatchNorm, BatchNormConfig, batch_norm, batch_norm_no_affine};
use mmcl_nn::checkpoint::{LoadOptions, LoadReport};
use mmcl_nn::init::{self, WeightInit};
use mmcl_nn::layers::{Block, BlockConfig, LayerNorm, Linear};
use mmcl_nn::optim::ParamGroup;
use mmcl_nn::rng::SharedRng;
use mmcl_nn::{ParamStore, StateDict};

use crate::checkpoint::extract_encoder;
use crate::model::{PatchOrder, flatten_patches};
use crate::{EcgVit, Error, Result};

/// The entries that are fixed tables, not parameters (`requires_grad=False` in the reference).
pub const FIXED_EMBEDDINGS: [&str; 2] = ["pos_embed", "decoder_pos_embed"];

/// The key prefix of the mae repo's checkpoints and of the released signal encoders.
pub const MODEL_PREFIX: &str = "model.";

/// What one pass of the autoencoder returns (the reference's `latent, mask, ids_restore, pred`).
#[derive(Debug, Clone)]
pub struct MaeOutput {
    /// The encoded kept patches after `norm`, class token first: `[B, 1 + K, D]`.
    pub latent: Tensor,
    /// 1 where a patch was removed: `[B, L]` f32.
    pub mask: Tensor,
    /// The rank of each patch in the shuffled order: `[B, L]` u32.
    pub ids_restore: Tensor,
    /// The reconstructed patches (normalised-pixel space when trained so): `[B, L, ph·pw·C]`.
    pub pred: Tensor,
}

/// The SimSiam view of one latent: the pooled embedding `z`, its projection `p` and the
/// prediction `h` (the reference's `z1`, `p1`, `h1`).
#[derive(Debug, Clone)]
pub struct SimSiamOutput {
    /// Mean of the patch tokens of the latent: `[B, D]`.
    pub z: Tensor,
    /// `projector(z)`: `[B, D]`.
    pub p: Tensor,
    /// `predictor(p)`: `[B, D]`.
    pub h: Tensor,
}

/// `Linear(no bias) → BatchNorm1d → ReLU → Linear(no bias) [→ BatchNorm1d(affine=False)]`, the
/// SimSiam projector (`projector.{0,1,3,4}`) and predictor (`predictor.{0,1,3}`).
#[derive(Debug, Clone)]
pub struct SimSiamMlp {
    fc1: Linear,
    bn1: BatchNorm,
    fc2: Linear,
    bn2: Option<BatchNorm>,
}

impl SimSiamMlp {
    fn new(
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        final_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bn = BatchNormConfig::default();
        Ok(Self {
            fc1: Linear::with_weight_init(in_dim, hidden, false, WeightInit::Mae, vb.pp("0"))?,
            bn1: batch_norm(hidden, bn, vb.pp("1"))?,
            fc2: Linear::with_weight_init(hidden, out_dim, false, WeightInit::Mae, vb.pp("3"))?,
            bn2: if final_norm {
                Some(batch_norm_no_affine(out_dim, bn, vb.pp("4"))?)
            } else {
                None
            },
        })
    }

    /// Batch statistics (and running-statistics updates) when `train`, running statistics
    /// otherwise.
    ///
    /// # Shapes
    /// `[B, in]` → `[B, out]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.fc1.forward(x)?; // [B, hidden]
        let h = self.bn1.forward_t(&h, train)?.relu()?;
        let y = self.fc2.forward(&h)?; // [B, out]
        match &self.bn2 {
            Some(bn) => Ok(bn.forward_t(&y, train)?),
            None => Ok(y),
        }
    }
}

/// The masked autoencoder with the reference's parameter names.
#[derive(Debug, Clone)]
pub struct MaskedAutoencoder {
    cfg: MaeConfig,
    encoder: EcgVit,
    decoder_embed: Linear,
    mask_token: Tensor,
    decoder_pos_embed: Tensor,
    decoder_blocks: Vec<Block>,
    decoder_norm: LayerNorm,
    decoder_pred: Linear,
    projector: SimSiamMlp,
    predictor: SimSiamMlp,
}

impl MaskedAutoencoder {
    /// Builds the model from `vb` (paths = the reference's keys), initialised as the reference
    /// (xavier-uniform linear weights, zero biases, `normal(0.02)` class and mask tokens, sin-cos
    /// position tables).
    ///
    /// Freeze [`FIXED_EMBEDDINGS`] in the store behind `vb` ([`Self::freeze_fixed_embeddings`];
    /// [`Self::from_seed`] and [`Self::from_checkpoint`] do it): the forward pass never
    /// differentiates them, and a frozen entry stays out of the optimiser's groups.
    pub fn new(cfg: &MaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        // No dropout or drop-path in MAE pre-training: the stream is never drawn from.
        let encoder = EcgVit::new(&cfg.encoder_config(), SharedRng::new(0), vb.clone())?;
        let (d, dd) = (cfg.embed_dim, cfg.decoder_embed_dim);
        let num_patches = cfg.num_patches();
        // Xavier-uniform weights and zero biases, as the reference's `_init_weights`.
        let decoder_embed =
            Linear::with_weight_init(d, dd, true, WeightInit::Mae, vb.pp("decoder_embed"))?;
        let mask_token = vb.get_with_hints((1, 1, dd), "mask_token", init::normal(0.02))?;
        let decoder_pos_embed =
            init::get_with_values(&vb, &[1, num_patches + 1, dd], "decoder_pos_embed", || {
                mmcl_nn::pos_embed::sincos_2d_tensor(dd, cfg.grid_size(), true, &Device::Cpu)
            })?;
        let block = BlockConfig {
            dim: dd,
            num_heads: cfg.decoder_num_heads,
            mlp_ratio: cfg.mlp_ratio,
            qkv_bias: true,
            drop: 0.0,
            attn_drop: 0.0,
            drop_path: 0.0,
            norm_eps: cfg.layer_norm_eps,
            weight_init: WeightInit::Mae,
        };
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| {
                Block::new(
                    &block,
                    SharedRng::new(0),
                    vb.pp(format!("decoder_blocks.{i}")),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let decoder_norm = LayerNorm::new(dd, cfg.layer_norm_eps, vb.pp("decoder_norm"))?;
        let p = cfg.patch_dim();
        let decoder_pred =
            Linear::with_weight_init(dd, p, true, WeightInit::Mae, vb.pp("decoder_pred"))?;
        let projector = SimSiamMlp::new(d, cfg.proj_dim, d, true, vb.pp("projector"))?;
        let predictor = SimSiamMlp::new(d, cfg.pred_dim, d, false, vb.pp("predictor"))?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder_embed,
            mask_token,
            decoder_pos_embed,
            decoder_blocks,
            decoder_norm,
            decoder_pred,
            projector,
            predictor,
        })
    }

    /// A freshly initialised model on `device` (f32) from `seed`, its store with the fixed
    /// position embeddings frozen.
    pub fn from_seed(cfg: &MaeConfig, seed: u64, device: &Device) -> Result<(Self, ParamStore)> {
        let store = ParamStore::new(seed);
        let model = Self::new(cfg, store.var_builder(DType::F32, device))?;
        Self::freeze_fixed_embeddings(&store)?;
        Ok((model, store))
    }

    /// A model on `device` (f32) with the weights of the MAE checkpoint at `path` (see
    /// [`Self::load_checkpoint`]).
    pub fn from_checkpoint(
        cfg: &MaeConfig,
        path: &Path,
        device: &Device,
    ) -> Result<(Self, ParamStore, LoadReport)> {
        let (model, store) = Self::from_seed(cfg, 0, device)?;
        let report = Self::load_checkpoint(&store, path)?;
        Ok((model, store, report))
    }

    /// Freezes [`FIXED_EMBEDDINGS`] in `store`.
    pub fn freeze_fixed_embeddings(store: &ParamStore) -> Result<()> {
        Ok(store.freeze(&FIXED_EMBEDDINGS)?)
    }

    /// Loads a masked-autoencoder checkpoint into `store`: the mae repo's `checkpoint-*.pth`
    /// (`{"model": state_dict, "optimizer": …}`; only `model` is read), or a plain state dict
    /// (safetensors or `.pth`). Every key of the model must be present with its shape and no
    /// other key may be; nothing changes when the check fails.
    pub fn load_checkpoint(store: &ParamStore, path: &Path) -> Result<LoadReport> {
        let raw = StateDict::read(path)?;
        let state = if raw.has_prefix(MODEL_PREFIX) {
            raw.strip_prefix(MODEL_PREFIX)
        } else {
            raw
        };
        if !state.contains("decoder_embed.weight") {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: "no masked autoencoder in it (no decoder_embed.weight, at the top or \
                         under \"model.\"); for an encoder alone use EcgVit::from_checkpoint"
                    .into(),
            });
        }
        Ok(store.load_state_dict(&state, &LoadOptions::strict())?)
    }

    /// The encoder's tensors of `store` in the released signal-encoder layout (`{"model":
    /// ViT state_dict}` without head or `fc_norm`, keys `model.patch_embed.proj.weight`, …), on
    /// the CPU: what `embed-ecg` and the multimodal stage load.
    pub fn encoder_state_dict(store: &ParamStore) -> Result<StateDict> {
        let all = crate::checkpoint::encoder_state_dict(store)?;
        Ok(extract_encoder(&all)?.state.add_prefix(MODEL_PREFIX))
    }

    /// Writes [`Self::encoder_state_dict`] to a safetensors file, atomically.
    pub fn save_encoder(
        store: &ParamStore,
        path: &Path,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<()> {
        Ok(Self::encoder_state_dict(store)?.write_safetensors(path, metadata)?)
    }

    /// The reference's optimiser groups (timm's `add_weight_decay` without a skip list, as
    /// `main_pretrain.py` calls it): no decay on 1-D tensors and biases, `weight_decay` on
    /// every other trainable tensor, the class and mask tokens included; frozen tables and
    /// buffers left out.
    pub fn param_groups(store: &ParamStore, weight_decay: f64) -> Vec<ParamGroup> {
        let (no_decay, decay): (Vec<_>, Vec<_>) = store
            .trainable_vars()
            .into_iter()
            .partition(|(n, v)| v.as_tensor().rank() <= 1 || n.ends_with(".bias"));
        vec![
            ParamGroup {
                name: "decay".into(),
                vars: decay,
                lr_scale: 1.0,
                weight_decay,
            },
            ParamGroup {
                name: "no_decay".into(),
                vars: no_decay,
                lr_scale: 1.0,
                weight_decay: 0.0,
            },
        ]
    }

    /// The configuration.
    pub fn config(&self) -> &MaeConfig {
        &self.cfg
    }

    /// The encoder (its `pos_embed` is the fixed table).
    pub fn encoder(&self) -> &EcgVit {
        &self.encoder
    }

    /// The SimSiam projector.
    pub fn projector(&self) -> &SimSiamMlp {
        &self.projector
    }

    /// The SimSiam predictor.
    pub fn predictor(&self) -> &SimSiamMlp {
        &self.predictor
    }

    /// The decoder's fixed position table `[1, 1 + L, Dd]`.
    pub fn decoder_pos_embed(&self) -> &Tensor {
        &self.decoder_pos_embed
    }

    /// The reference's `patchify`: each patch flattened as (row, column, channel).
    ///
    /// # Shapes
    /// `[B, C, H, W]` (or `[B, H, W]` when `C = 1`) → `[B, L, ph·pw·C]`.
    pub fn patchify(&self, imgs: &Tensor) -> Result<Tensor> {
        let x = self.encoder.check_input(imgs)?; // [B, C, H, W]
        flatten_patches(
            &x,
            self.cfg.patch_size,
            self.cfg.grid_size(),
            PatchOrder::ChannelLast,
        )
    }

    /// The reference's `unpatchify`, the inverse of [`Self::patchify`].
    ///
    /// # Shapes
    /// `[B, L, ph·pw·C]` → `[B, C, gh·ph, gw·pw]`.
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, p) = x.dims3()?;
        let [ph, pw] = self.cfg.patch_size;
        let (gh, gw) = self.cfg.grid_size();
        if l != gh * gw || p != self.cfg.patch_dim() {
            return Err(Error::InputShape {
                expected: format!("[N, {}, {}]", gh * gw, self.cfg.patch_dim()),
                got: x.dims().to_vec(),
            });
        }
        let c = self.cfg.img_size[0];
        let imgs = x
            .reshape((b, gh, gw, ph, pw, c))?
            .permute((0, 5, 1, 3, 2, 4))? // [B, C, gh, ph, gw, pw]
            .reshape((b, c, gh * ph, gw * pw))?; // [B, C, H, W]
        Ok(imgs)
    }

    /// The patch tokens with the position embedding added, before masking (the reference's
    /// first two steps of `forward_encoder`). Two views of a batch can share them.
    ///
    /// # Shapes
    /// `[B, C, H, W]` → `[B, L, D]`.
    pub fn embed_patches(&self, imgs: &Tensor) -> Result<Tensor> {
        let x = self.encoder.check_input(imgs)?;
        let tokens = self.encoder.patch_embed().forward(&x)?; // [B, L, D]
        let l = tokens.dim(1)?;
        let pos = self.encoder.pos_embed().detach().narrow(1, 1, l)?; // [1, L, D]
        Ok(tokens.broadcast_add(&pos)?)
    }

    /// The reference's `random_masking` for a given masking: the kept tokens of each sample in
    /// shuffled order.
    ///
    /// # Shapes
    /// `x`: `[B, L, D]` → `[B, K, D]`.
    pub fn random_masking(&self, x: &Tensor, masking: &Masking) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        check_masking(masking, b, l)?;
        let k = masking.len_keep();
        let idx: Vec<u32> = (0..b)
            .flat_map(|s| masking.ids_keep(s).iter().map(move |&i| (s * l) as u32 + i))
            .collect();
        let idx = Tensor::from_vec(idx, b * k, x.device())?;
        let kept = x.reshape((b * l, d))?.index_select(&idx, 0)?; // [B·K, D]
        Ok(kept.reshape((b, k, d))?)
    }

    /// The encoder on the kept patches of embedded tokens ([`Self::embed_patches`]): class
    /// token (with its position row) in front, blocks, `norm`.
    ///
    /// # Shapes
    /// `tokens`: `[B, L, D]` → latent `[B, 1 + K, D]`.
    pub fn encode_masked(&self, tokens: &Tensor, masking: &Masking, train: bool) -> Result<Tensor> {
        let (b, l, d) = tokens.dims3()?;
        check_masking(masking, b, l)?;
        let cls = self
            .encoder
            .cls_token()
            .broadcast_add(&self.encoder.pos_embed().detach().narrow(1, 0, 1)?)?
            .reshape((1, d))?; // [1, D]
        // One gather builds [cls, kept patches…] per sample from the rows of [tokens; cls],
        // one autograd node (not a table copy, a gather and their gradients' bookkeeping).
        let idx = masking.encoder_gather_index();
        let mut x = mmcl_nn::ops::gather_rows(tokens, &cls, &idx, b)?; // [B, 1 + K, D]
        for block in self.encoder.blocks() {
            x = block.forward_fused(&x, train)?;
        }
        Ok(self.encoder.norm().forward(&x)?)
    }

    /// The reference's `forward_encoder`: embedding, masking, encoder.
    ///
    /// # Shapes
    /// `[B, C, H, W]` → latent `[B, 1 + K, D]`.
    pub fn forward_encoder(&self, imgs: &Tensor, masking: &Masking, train: bool) -> Result<Tensor> {
        self.encode_masked(&self.embed_patches(imgs)?, masking, train)
    }

    /// The reference's `forward_decoder`: embeds the latent, puts the mask token at every
    /// removed patch, unshuffles, adds the decoder's position table, runs the decoder and
    /// predicts each patch (class token dropped).
    ///
    /// # Shapes
    /// `latent`: `[B, 1 + K, D]` → `[B, L, ph·pw·C]`.
    pub fn forward_decoder(
        &self,
        latent: &Tensor,
        masking: &Masking,
        train: bool,
    ) -> Result<Tensor> {
        let (b, n, _) = latent.dims3()?;
        let l = masking.len();
        check_masking(masking, b, l)?;
        if n != 1 + masking.len_keep() {
            return Err(Error::InputShape {
                expected: format!(
                    "a latent [N, {}, D] for this masking",
                    1 + masking.len_keep()
                ),
                got: latent.dims().to_vec(),
            });
        }
        let dd = self.cfg.decoder_embed_dim;
        let x = self.decoder_embed.forward(latent)?; // [B, 1 + K, Dd]
        // One gather builds [cls, patch 0, …, patch L-1] per sample from the rows of
        // [encoded; mask token] (one autograd node).
        let idx = masking.decoder_gather_index();
        let x = mmcl_nn::ops::gather_rows(&x, &self.mask_token.reshape((1, dd))?, &idx, b)?; // [B, 1 + L, Dd]
        let mut x = x.broadcast_add(&self.decoder_pos_embed.detach())?;
        for block in &self.decoder_blocks {
            x = block.forward_fused(&x, train)?;
        }
        // Per-token norm and projection: dropping the class token first saves its row.
        let x = self.decoder_norm.forward(&x.narrow(1, 1, l)?)?; // [B, L, Dd]
        Ok(self.decoder_pred.forward(&x)?) // [B, L, ph·pw·C]
    }

    /// The reference's encoder-decoder pass (without the losses).
    ///
    /// # Shapes
    /// `imgs`: `[B, C, H, W]` → latent `[B, 1 + K, D]`, mask and ids_restore `[B, L]`, pred
    /// `[B, L, ph·pw·C]`.
    pub fn forward(&self, imgs: &Tensor, masking: &Masking, train: bool) -> Result<MaeOutput> {
        let latent = self.forward_encoder(imgs, masking, train)?;
        let pred = self.forward_decoder(&latent, masking, train)?;
        let device = imgs.device();
        Ok(MaeOutput {
            latent,
            mask: masking.mask(device)?,
            ids_restore: masking.ids_restore(device)?,
            pred,
        })
    }

    /// The SimSiam heads on a latent: `z` = mean of its patch tokens, `p = projector(z)`,
    /// `h = predictor(p)`. In train mode the BatchNorm layers use (and update) batch statistics.
    ///
    /// # Shapes
    /// `latent`: `[B, 1 + K, D]` → `z`, `p`, `h`: `[B, D]`.
    pub fn simsiam(&self, latent: &Tensor, train: bool) -> Result<SimSiamOutput> {
        let (_, n, _) = latent.dims3()?;
        if n < 2 {
            return Err(Error::InvalidArgument(
                "the SimSiam heads need at least one kept patch (mask_ratio too high)".into(),
            ));
        }
        let z = mmcl_nn::ops::mean_tokens(&latent.narrow(1, 1, n - 1)?)?.squeeze(1)?; // [B, D]
        let p = self.projector.forward_t(&z, train)?; // [B, D]
        let h = self.predictor.forward_t(&p, train)?; // [B, D]
        Ok(SimSiamOutput { z, p, h })
    }
}

fn check_masking(masking: &Masking, batch: usize, len: usize) -> Result<()> {
    if masking.batch() != batch || masking.len() != len {
        return Err(Error::InvalidArgument(format!(
            "a masking of {} samples x {} patches for {batch} samples x {len} patches",
            masking.batch(),
            masking.len()
        )));
    }
    Ok(())
}
