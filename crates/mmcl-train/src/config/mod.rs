//! Configuration files of the trainers (JSON or TOML), whose defaults are the paper's
//! hyper-parameters.
//!
//! Every key is optional: a file names only what differs from the defaults, and unknown keys
//! are errors (a typo never silently trains with a default). Paths inside a file are relative
//! to the file's folder. The resolved configuration is printed at the start of a run and saved
//! in its directory.

use std::path::{Path, PathBuf};

use mmcl_cmr::ResNetArch;
use mmcl_data::cmr::ImageAugmentConfig;
use mmcl_data::ecg::augment::EcgAugmentConfig;
use mmcl_data::tables::Split;
use mmcl_ecg::EcgVitConfig;
use mmcl_nn::precision::Precision;
use mmcl_nn::schedule::Granularity;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use mmcl_core::config::{read_config_file, rebase_path as rebase};

use crate::engine::EpochPlan;
use crate::{Error, Result};

mod mae;

pub use mae::MaeTrainConfig;

/// Which frozen features the online classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnlineClassifier {
    /// The pooled ECG features (the paper).
    Ecg,
    /// The pooled image features.
    Image,
    /// No online classifier.
    None,
}

/// Initialisation of the online classifier's weight (the reference's `init_strat`); the bias
/// starts at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierInit {
    /// `kaiming_normal_(mode="fan_in", a=0)`: normal with std `√(2 / in)` (the paper).
    Kaiming,
    /// Normal with std 0.001.
    Normal,
    /// `xavier_normal_(gain=0.02)`.
    Xavier,
}

/// The dataset cache and how batches are made from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset cache built by `mmcl build-dataset`.
    pub cache: PathBuf,
    /// The split trained on.
    pub train_split: Split,
    /// The split validated on.
    pub val_split: Split,
    /// Loader worker threads (0: half the cores).
    pub threads: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// Drop the last incomplete training batch (the reference keeps it).
    pub drop_last: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            cache: PathBuf::from("cache"),
            train_split: Split::Train,
            val_split: Split::Val,
            threads: 0,
            prefetch: 2,
            drop_last: false,
        }
    }
}

/// The image encoder of the multimodal stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagingConfig {
    /// The ResNet variant (`resnet50` in the paper).
    pub model: ResNetArch,
    /// Side of the square training images (210 in the paper).
    pub img_size: usize,
    /// Start from this image encoder: an MMCL run folder (its latest complete checkpoint's
    /// export), a checkpoint folder, or a file (released `image_encoder*.pth`, torchvision, or
    /// ours).
    pub pretrain_checkpoint: Option<PathBuf>,
    /// Keep the image encoder frozen (the reference's `pretrained_imaging_strategy: frozen`).
    pub frozen: bool,
    /// Image augmentation of the training view (`apply_prob` is the reference's
    /// `augmentation_rate`); its `size` must equal `img_size`.
    pub augment: ImageAugmentConfig,
}

impl Default for ImagingConfig {
    fn default() -> Self {
        Self {
            model: ResNetArch::ResNet50,
            img_size: 210,
            pretrain_checkpoint: None,
            frozen: false,
            augment: ImageAugmentConfig::default(),
        }
    }
}

/// The ECG encoder of the multimodal stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EcgConfig {
    /// The ViT preset (`vit_tiny_patchX` in the paper).
    pub model: String,
    /// Input size `[C, leads, T]`.
    pub input_size: [usize; 3],
    /// Patch size `[leads, samples]`.
    pub patch_size: [usize; 2],
    /// Stochastic depth rate.
    pub drop_path: f64,
    /// Global average pooling + `fc_norm` (else the class token).
    pub global_pool: bool,
    /// Attention pooling (takes precedence over `global_pool`).
    pub attention_pool: bool,
    /// Classes of the encoder's own linear head (the reference builds one it never trains;
    /// 0 leaves it out).
    pub num_classes: usize,
    /// Start from this encoder: an MAE run folder (its latest checkpoint's export), a
    /// checkpoint folder, or a file (a released `signal_encoder*.pth`, or an export of ours).
    pub pretrain_checkpoint: Option<PathBuf>,
    /// Crop training ECGs at a random start (the reference); validation crops from 0.
    pub random_crop: bool,
    /// ECG augmentation of the training view (`apply_prob` is `augmentation_rate`).
    pub augment: EcgAugmentConfig,
}

impl Default for EcgConfig {
    fn default() -> Self {
        Self {
            model: "vit_tiny_patchX".into(),
            input_size: [1, 12, 2500],
            patch_size: [1, 100],
            drop_path: 0.1,
            global_pool: true,
            attention_pool: false,
            num_classes: 0,
            pretrain_checkpoint: None,
            random_crop: true,
            augment: EcgAugmentConfig::mmcl(),
        }
    }
}

impl EcgConfig {
    /// The encoder configuration these settings describe.
    pub fn vit_config(&self) -> Result<EcgVitConfig> {
        let mut cfg = EcgVitConfig::preset(&self.model, self.input_size, self.patch_size)?;
        cfg.drop_path_rate = self.drop_path;
        cfg.global_pool = self.global_pool;
        cfg.attention_pool = self.attention_pool;
        cfg.num_classes = self.num_classes;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The online linear classifier trained beside the contrastive model on detached features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Which features it reads (`ecg` in the paper), or `none`.
    pub online_classifier: OnlineClassifier,
    /// The disease label of the cache it predicts (`CAD` in the paper).
    pub target: String,
    /// The online classifier's Adam learning rate (constant).
    pub lr_classifier: f64,
    /// The online classifier's L2 weight decay.
    pub weight_decay_classifier: f64,
    /// Cross-entropy class weights `[negative, positive]` (the reference's `weights`).
    pub weights: [f64; 2],
    /// Weight initialisation.
    pub init_strat: ClassifierInit,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            online_classifier: OnlineClassifier::Ecg,
            target: "CAD".into(),
            lr_classifier: 3e-4,
            weight_decay_classifier: 1e-4,
            weights: [0.55, 10.0],
            init_strat: ClassifierInit::Kaiming,
        }
    }
}

/// Everything `mmcl pretrain-mmcl` needs: the multimodal contrastive stage of the paper.
///
/// Defaults (MMCL's `config.yaml`, `models/resnet50.yaml`, `augmentations/default.yaml`):
/// ResNet50 at 210² and `vit_tiny_patchX` on 1×12×2500 (drop-path 0.1), projection heads
/// 2048–2048–128, CLIP τ 0.1 λ 0.5, `torch.optim.Adam` lr 3e-3 with L2 weight decay 1e-4,
/// linear warm-up 30 epochs then cosine to 300, batch 256, seed 2022, an online linear classifier
/// of CAD on the ECG features (Adam 3e-4, weights [0.55, 10]).
///
/// ```
/// let cfg: mmcl_train::MmclConfig = toml::from_str(
///     "max_epochs = 10\n[ecg]\ndrop_path = 0.2\n",
/// ).unwrap();
/// assert_eq!((cfg.max_epochs, cfg.batch_size, cfg.lr), (10, 256, 3e-3));
/// assert_eq!(cfg.ecg.drop_path, 0.2);
/// assert!(toml::from_str::<mmcl_train::MmclConfig>("learning_rate = 1.0").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmclConfig {
    /// Seed of the initial weights, shuffling, augmentation and drop-path.
    pub seed: u64,
    /// Epochs of the run (and the end of the cosine).
    pub max_epochs: usize,
    /// Epochs of linear warm-up (from 0).
    pub warmup_epochs: usize,
    /// When the rate changes: `"epoch"` (the reference's; a first warm-up epoch trains at rate
    /// 0) or `"step"` (warm-up and cosine advance every optimisation step, as MAE's).
    pub schedule: Granularity,
    /// Samples per batch.
    pub batch_size: usize,
    /// Base learning rate of the contrastive model.
    pub lr: f64,
    /// L2 weight decay of the contrastive model (added to the gradient, every parameter).
    pub weight_decay: f64,
    /// Adam's betas.
    pub betas: (f64, f64),
    /// Adam's epsilon.
    pub eps: f64,
    /// CLIP temperature τ.
    pub temperature: f64,
    /// CLIP weight λ of the image→ECG direction.
    pub lambda_0: f64,
    /// Hidden width of the projection heads.
    pub embedding_dim: usize,
    /// Output width of the projection heads.
    pub projection_dim: usize,
    /// Batches whose gradients are summed (then averaged) before each optimiser step.
    pub accumulate_grad_batches: usize,
    /// Clip the global gradient norm of the contrastive model to this value.
    pub gradient_clip_val: Option<f64>,
    /// Validate every this many epochs (and after the last).
    pub check_val_every_n_epoch: usize,
    /// Also keep `checkpoints/epoch-NNNN/` every this many epochs (0: only `last` and `best`).
    pub save_every_n_epochs: usize,
    /// Arithmetic of the matrix products: `"f32"` (the reference's) or `"bf16"` (bf16
    /// operands, f32 sums, weights and optimiser; fast on CPUs with AMX and on GPUs, where
    /// cuBLAS runs the bf16 products, as PyTorch's autocast).
    pub precision: Precision,
    /// Under a data-parallel launcher, normalise every BatchNorm over the global batch
    /// (PyTorch's `SyncBatchNorm`) instead of each replica's share (DDP's default).
    pub sync_batch_norm: bool,
    /// The dataset cache, the splits and the loader.
    pub data: DataConfig,
    /// Image encoder.
    pub imaging: ImagingConfig,
    /// ECG encoder.
    pub ecg: EcgConfig,
    /// Online classifier.
    pub classifier: ClassifierConfig,
}

impl Default for MmclConfig {
    fn default() -> Self {
        Self {
            seed: 2022,
            max_epochs: 300,
            warmup_epochs: 30,
            schedule: Granularity::Epoch,
            batch_size: 256,
            lr: 3e-3,
            weight_decay: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            temperature: 0.1,
            lambda_0: 0.5,
            embedding_dim: 2048,
            projection_dim: 128,
            accumulate_grad_batches: 1,
            gradient_clip_val: None,
            check_val_every_n_epoch: 1,
            save_every_n_epochs: 0,
            precision: Precision::F32,
            sync_batch_norm: false,
            data: DataConfig::default(),
            imaging: ImagingConfig::default(),
            ecg: EcgConfig::default(),
            classifier: ClassifierConfig::default(),
        }
    }
}

impl MmclConfig {
    /// Reads a `.json` or `.toml` configuration; relative paths inside are taken relative to
    /// the file's folder. The result is validated.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_trainer_config(
            path,
            |cfg: &mut Self| {
                let mut paths = vec![&mut cfg.data.cache];
                paths.extend(cfg.imaging.pretrain_checkpoint.as_mut());
                paths.extend(cfg.ecg.pretrain_checkpoint.as_mut());
                paths
            },
            Self::validate,
        )
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::config(reason));
        self.check_loop()?;
        check_non_negative(&[
            ("lr", self.lr),
            ("weight_decay", self.weight_decay),
            ("eps", self.eps),
            ("lr_classifier", self.classifier.lr_classifier),
            (
                "weight_decay_classifier",
                self.classifier.weight_decay_classifier,
            ),
        ])?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "temperature must be positive, got {}",
                self.temperature
            ));
        }
        if !(0.0..=1.0).contains(&self.lambda_0) {
            return bad(format!(
                "lambda_0 must lie in [0, 1], got {}",
                self.lambda_0
            ));
        }
        check_betas(self.betas)?;
        if self.embedding_dim == 0 || self.projection_dim == 0 {
            return bad("embedding_dim and projection_dim must be positive".into());
        }
        check_gradient_clip(self.gradient_clip_val)?;
        if self.imaging.img_size == 0 {
            return bad("imaging.img_size must be positive".into());
        }
        if self.imaging.augment.size != self.imaging.img_size {
            return bad(format!(
                "imaging.augment.size ({}) differs from imaging.img_size ({})",
                self.imaging.augment.size, self.imaging.img_size
            ));
        }
        if self
            .classifier
            .weights
            .iter()
            .any(|w| !(w.is_finite() && *w >= 0.0))
            || self.classifier.weights.iter().sum::<f64>() <= 0.0
        {
            return bad(format!(
                "classifier.weights must be non-negative with a positive sum, got {:?}",
                self.classifier.weights
            ));
        }
        let vit = under_key("ecg", self.ecg.vit_config())?;
        let imaging = mmcl_cmr::ResNetConfig::new(self.imaging.model, 1);
        imaging
            .check_image_size(
                "imaging.img_size",
                self.imaging.img_size,
                self.imaging.img_size,
            )
            .map_err(|e| match e {
                mmcl_cmr::Error::InvalidConfig(why) => Error::config(why),
                other => Error::config(other.to_string()),
            })?;
        // Two projection heads: features → embedding_dim → projection_dim.
        let (e, p) = (self.embedding_dim as u64, self.projection_dim as u64);
        let heads = [imaging.feature_dim() as u64, vit.embed_dim as u64].map(|features| {
            mmcl_nn::config::checked_sum(&[
                mmcl_nn::config::checked_product(&[features.checked_add(p)?, e]),
                mmcl_nn::config::checked_product(&[4, e]),
            ])
        });
        mmcl_nn::config::check_limit(
            &format!(
                "embedding_dim {} and projection_dim {}",
                self.embedding_dim, self.projection_dim
            ),
            "projection head parameters",
            mmcl_nn::config::checked_sum(&heads),
            mmcl_nn::config::MAX_PARAMETERS,
        )
        .map_err(Error::config)?;
        Ok(())
    }

    /// The configuration as TOML (every key, defaults included).
    pub fn to_toml(&self) -> String {
        to_toml(self)
    }
}

/// What the shared training loop ([`crate::Trainer`]) needs of a trainer's configuration
/// ([`crate::Stage::Config`]): reading and checking it, and the settings that both trainers'
/// configurations have under the same keys.
pub trait TrainerConfig: Serialize + DeserializeOwned + Default {
    /// Reads a `.json` or `.toml` configuration; relative paths inside are taken relative to
    /// the file's folder. The result is validated.
    fn from_file(path: &Path) -> Result<Self>;

    /// Checks ranges and consistency.
    fn validate(&self) -> Result<()>;

    /// The seed of the initial weights, the data order and the augmentations (`seed`).
    fn seed(&self) -> u64;

    /// How many epochs, and when to validate and keep checkpoints (`max_epochs`,
    /// `check_val_every_n_epoch`, `save_every_n_epochs`).
    fn epoch_plan(&self) -> EpochPlan;

    /// The dataset cache, the splits and the loader (`data`).
    fn data(&self) -> &DataConfig;

    /// The same, to change (the cache's path is made canonical when a run starts).
    fn data_mut(&mut self) -> &mut DataConfig;
}

/// Implements [`TrainerConfig`] for trainer configurations from their own `from_file` and
/// `validate` and the keys they share, which have the same names in every one; and their
/// `check_loop`, the check of those keys that their `validate` starts with.
macro_rules! trainer_config {
    ($($cfg:ty),+) => {$(
        impl $cfg {
            /// Checks the loop settings ([`check_loop`]).
            fn check_loop(&self) -> Result<()> {
                check_loop(
                    self.max_epochs,
                    self.batch_size,
                    self.accumulate_grad_batches,
                    self.check_val_every_n_epoch,
                )
            }
        }

        impl TrainerConfig for $cfg {
            fn from_file(path: &Path) -> Result<Self> {
                <$cfg>::from_file(path)
            }

            fn validate(&self) -> Result<()> {
                <$cfg>::validate(self)
            }

            fn seed(&self) -> u64 {
                self.seed
            }

            fn epoch_plan(&self) -> EpochPlan {
                EpochPlan {
                    max_epochs: self.max_epochs,
                    val_every: self.check_val_every_n_epoch,
                    save_every: self.save_every_n_epochs,
                }
            }

            fn data(&self) -> &DataConfig {
                &self.data
            }

            fn data_mut(&mut self) -> &mut DataConfig {
                &mut self.data
            }
        }
    )+};
}

trainer_config!(MmclConfig, MaeTrainConfig);

/// Reads a trainer's `.json` or `.toml` configuration, takes the relative paths inside (those
/// `relative_paths` returns) relative to the file's folder and validates the result; errors
/// name the file. The trainers' files are read alike, so this is their one reader.
fn read_trainer_config<T: DeserializeOwned>(
    path: &Path,
    relative_paths: impl FnOnce(&mut T) -> Vec<&mut PathBuf>,
    validate: impl FnOnce(&T) -> Result<()>,
) -> Result<T> {
    let mut cfg: T = read_config_file(path)?;
    let base = path.parent().unwrap_or(Path::new(""));
    for p in relative_paths(&mut cfg) {
        rebase(p, base);
    }
    validate(&cfg).map_err(|e| e.in_config_file(path))?;
    Ok(cfg)
}

/// A trainer's configuration as TOML, every key (or a comment saying why it cannot be).
pub(crate) fn to_toml<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).unwrap_or_else(|e| format!("# cannot render as TOML: {e}"))
}

/// Checks the loop settings every trainer has: at least one epoch, one sample per batch, one
/// batch per step and one epoch between validations.
fn check_loop(
    max_epochs: usize,
    batch_size: usize,
    accumulate_grad_batches: usize,
    check_val_every_n_epoch: usize,
) -> Result<()> {
    let bad = |reason: &str| Err(Error::config(reason.to_string()));
    if max_epochs == 0 {
        return bad("max_epochs must be at least 1");
    }
    if batch_size == 0 || accumulate_grad_batches == 0 {
        return bad("batch_size and accumulate_grad_batches must be at least 1");
    }
    if check_val_every_n_epoch == 0 {
        return bad("check_val_every_n_epoch must be at least 1");
    }
    Ok(())
}

/// Checks that every named value (rates, decays, epsilons) is finite and non-negative; the
/// first that is not is the error.
fn check_non_negative(values: &[(&str, f64)]) -> Result<()> {
    match values.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
        Some((name, v)) => Err(Error::config(format!(
            "{name} must be finite and non-negative, got {v}"
        ))),
        None => Ok(()),
    }
}

/// The outcome of checking (or resolving) the nested settings under `key`, its error a
/// configuration error that names the key (`model: …`).
fn under_key<T, E: std::fmt::Display>(key: &str, result: std::result::Result<T, E>) -> Result<T> {
    result.map_err(|e| Error::config(format!("{key}: {e}")))
}

/// Checks the Adam(W) betas: each in `[0, 1)`.
fn check_betas(betas: (f64, f64)) -> Result<()> {
    let (b1, b2) = betas;
    if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
        return Err(Error::config(format!(
            "betas must lie in [0, 1), got {betas:?}"
        )));
    }
    Ok(())
}

/// Checks the gradient-norm clip, when set: finite and positive.
fn check_gradient_clip(gradient_clip_val: Option<f64>) -> Result<()> {
    if let Some(c) = gradient_clip_val
        && !(c.is_finite() && c > 0.0)
    {
        return Err(Error::config(format!(
            "gradient_clip_val must be positive, got {c}"
        )));
    }
    Ok(())
}

/// A warning when the learning-rate warm-up is not shorter than the run (the rate never reaches
/// its peak and the cosine decay never starts): a contradictory pair of settings, usually a
/// shortened `max_epochs` with the paper's `warmup_epochs` left in place.
pub fn schedule_warning(warmup_epochs: usize, max_epochs: usize) -> Option<String> {
    (warmup_epochs > 0 && warmup_epochs >= max_epochs).then(|| {
        format!(
            "warning: warmup_epochs = {warmup_epochs} is not shorter than max_epochs = \
             {max_epochs}: the learning rate never reaches its peak; lower warmup_epochs"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_with_bad_values_name_the_file_and_the_key() -> std::result::Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        for (name, text, key) in [
            (
                "a.toml",
                "[loss]\nmask_ratio = \"high\"\n",
                "loss.mask_ratio",
            ),
            (
                "b.json",
                r#"{"model": {"img_size": [1, 12, "x"]}}"#,
                "model.img_size[2]",
            ),
            ("c.toml", "batch_size = 0\n", "batch_size"),
            ("d.toml", "[data]\nthreds = 2\n", "data.threds"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            let err = MaeTrainConfig::from_file(&path)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let ok = err
                .as_ref()
                .is_err_and(|e| e.contains(&path.display().to_string()) && e.contains(key));
            assert!(ok, "{name}: {err:?}");
        }
        Ok(())
    }

    #[test]
    fn absurd_model_sizes_are_refused_naming_the_key() {
        let mut huge_images = MmclConfig::default();
        huge_images.imaging.img_size = 1 << 20;
        huge_images.imaging.augment.size = 1 << 20;
        let huge_heads = MmclConfig {
            embedding_dim: usize::MAX,
            ..MmclConfig::default()
        };
        let mut huge_ecg = MmclConfig::default();
        huge_ecg.ecg.input_size = [1, 12, 1 << 40];
        for (cfg, key) in [
            (huge_images, "imaging.img_size"),
            (huge_heads, "embedding_dim"),
            (huge_ecg, "ecg: "),
        ] {
            let err = cfg.validate().map_err(|e| e.to_string());
            assert!(
                err.as_ref().is_err_and(|e| e.contains(key)),
                "{key}: {err:?}"
            );
        }
        assert!(MmclConfig::default().validate().is_ok());
        assert!(MaeTrainConfig::default().validate().is_ok());
    }

    #[test]
    fn a_warm_up_as_long_as_the_run_is_reported() {
        assert!(schedule_warning(40, 2).is_some_and(|w| w.contains("warmup_epochs = 40")));
        assert!(schedule_warning(2, 2).is_some());
        assert!(schedule_warning(1, 2).is_none() && schedule_warning(0, 0).is_none());
    }
}
