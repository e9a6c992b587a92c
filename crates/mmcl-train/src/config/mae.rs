//! The configuration of MAE pre-training (`mmcl pretrain-mae`).

use std::path::Path;

use mmcl_data::ecg::augment::EcgAugmentConfig;
use mmcl_nn::precision::Precision;
use serde::{Deserialize, Serialize};

use super::{
    DataConfig, check_betas, check_gradient_clip, check_non_negative, read_trainer_config,
    under_key,
};
use crate::{Error, Result};

/// Everything `mmcl pretrain-mae` needs: the masked-data-modelling stage of the paper (the mae
/// repo's `main_pretrain.py` with the paper's settings).
///
/// Defaults: `mae_vit_tiny_patchX` on 1×12×2500 ECGs with 1×100 patches
/// ([`mmcl_ecg::mae::MaeConfig::paper`]); the reference objective (normalised-pixel squared error
/// over all patches, `ncc_weight` 0.1, SimSiam term `cos_weight` 0.1, mask ratio 0.8,
/// [`mmcl_losses::mae::MaeLossConfig::paper`]); AdamW with betas (0.9, 0.95) and weight decay
/// 0.15 (none on biases and 1-D tensors; the fixed position tables are not trained); the
/// learning rate `lr = blr · batch_size · accumulate_grad_batches / 4` as `main_pretrain.py`
/// computes it unless `lr` is given, per-step linear warm-up then half cosine to `min_lr`;
/// the reference's pre-training augmentations (random crop, FT surrogate 0.075 with
/// probability 0.5, jitter 0.2, rescaling 0.5). Where the paper and the design are silent the
/// reference script's defaults hold: 400 epochs, 40 of warm-up, batch 64, `blr` 1e-3, seed 0.
///
/// ```
/// let cfg: mmcl_train::MaeTrainConfig = toml::from_str(
///     "max_epochs = 10\nbatch_size = 32\n[loss]\nmask_ratio = 0.75\n",
/// ).unwrap();
/// assert_eq!((cfg.max_epochs, cfg.weight_decay, cfg.loss.mask_ratio), (10, 0.15, 0.75));
/// assert_eq!(cfg.effective_lr(), 1e-3 * 32.0 / 4.0);
/// assert!(toml::from_str::<mmcl_train::MaeTrainConfig>("mask_ration = 0.5").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaeTrainConfig {
    /// Seed of the initial weights, shuffling, augmentation and masking.
    pub seed: u64,
    /// Epochs of the run (and the end of the cosine); the reference's `epochs`.
    #[serde(alias = "epochs")]
    pub max_epochs: usize,
    /// Epochs of linear warm-up (from 0), fractional per step.
    pub warmup_epochs: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Batches whose gradients are summed (each loss divided by this) before each optimiser
    /// step; the reference's `accum_iter`. An incomplete group at the end of an epoch is
    /// dropped, as the reference does.
    #[serde(alias = "accum_iter")]
    pub accumulate_grad_batches: usize,
    /// Base learning rate: `lr = blr · batch_size · accumulate_grad_batches / 4`.
    pub blr: f64,
    /// Absolute learning rate; overrides `blr` when given.
    pub lr: Option<f64>,
    /// Rate at the end of the cosine.
    pub min_lr: f64,
    /// AdamW's decoupled weight decay (biases and 1-D tensors excluded).
    pub weight_decay: f64,
    /// AdamW's betas.
    pub betas: (f64, f64),
    /// AdamW's epsilon.
    pub eps: f64,
    /// Clip the global gradient norm to this value (the reference's `clip_grad`, off).
    pub gradient_clip_val: Option<f64>,
    /// Validate every this many epochs (and after the last).
    pub check_val_every_n_epoch: usize,
    /// Also keep `checkpoints/epoch-NNNN/` every this many epochs (0: only `last` and `best`).
    pub save_every_n_epochs: usize,
    /// The masked autoencoder (a `model` preset plus `img_size` and `patch_size`, or every
    /// size); `img_size` `[1, leads, T]` crops the cached recordings to `T` samples.
    pub model: mmcl_ecg::mae::MaeConfig,
    /// The objective: `mask_ratio`, `norm_pix_loss`, `ncc_weight`, `cos_weight`, `target`.
    pub loss: mmcl_losses::mae::MaeLossConfig,
    /// Crop training ECGs at a random start (the reference); validation crops from 0.
    pub random_crop: bool,
    /// ECG augmentation of the training batches.
    pub augment: EcgAugmentConfig,
    /// Arithmetic of the matrix products: `"f32"` (the reference's) or `"bf16"` (bf16
    /// operands, f32 sums, weights and optimiser; fast on CPUs with AMX and on GPUs, where
    /// cuBLAS runs the bf16 products, as PyTorch's autocast).
    pub precision: Precision,
    /// Under a data-parallel launcher, normalise the SimSiam heads' BatchNorm over the global
    /// batch (PyTorch's `SyncBatchNorm`) instead of each replica's share (DDP's default).
    pub sync_batch_norm: bool,
    /// The dataset cache, the splits and the loader.
    pub data: DataConfig,
}

impl Default for MaeTrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            max_epochs: 400,
            warmup_epochs: 40,
            batch_size: 64,
            accumulate_grad_batches: 1,
            blr: 1e-3,
            lr: None,
            min_lr: 0.0,
            weight_decay: 0.15,
            betas: (0.9, 0.95),
            eps: 1e-8,
            gradient_clip_val: None,
            check_val_every_n_epoch: 1,
            save_every_n_epochs: 0,
            precision: Precision::F32,
            sync_batch_norm: false,
            model: mmcl_ecg::mae::MaeConfig::paper(),
            loss: mmcl_losses::mae::MaeLossConfig::paper(),
            random_crop: true,
            augment: EcgAugmentConfig::mae(),
            data: DataConfig::default(),
        }
    }
}

impl MaeTrainConfig {
    /// Reads a `.json` or `.toml` configuration; relative paths inside are taken relative to
    /// the file's folder. The result is validated.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_trainer_config(
            path,
            |cfg: &mut Self| vec![&mut cfg.data.cache],
            Self::validate,
        )
    }

    /// The learning rate the schedule reaches after the warm-up: `lr`, or
    /// `blr · batch_size · accumulate_grad_batches / 4` (`main_pretrain.py`).
    pub fn effective_lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| {
            self.blr * (self.batch_size * self.accumulate_grad_batches) as f64 / 4.0
        })
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::config(reason));
        self.check_loop()?;
        check_non_negative(&[
            ("blr", self.blr),
            ("lr", self.effective_lr()),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("eps", self.eps),
        ])?;
        check_betas(self.betas)?;
        check_gradient_clip(self.gradient_clip_val)?;
        if self.model.img_size[0] != 1 {
            return bad(format!(
                "model.img_size must be [1, leads, samples] for ECGs, got {:?}",
                self.model.img_size
            ));
        }
        under_key("model", self.model.validate())?;
        under_key("loss", self.loss.validate())?;
        let kept = mmcl_ecg::mae::len_keep(self.model.num_patches(), self.loss.mask_ratio);
        if kept == 0 {
            return bad(format!(
                "loss.mask_ratio {} keeps no patch of {}",
                self.loss.mask_ratio,
                self.model.num_patches()
            ));
        }
        Ok(())
    }

    /// The configuration as TOML (every key, defaults included).
    pub fn to_toml(&self) -> String {
        super::to_toml(self)
    }
}
