//! The multimodal contrastive model: ResNet image trunk + projection head, ECG ViT + projection
//! head, and the optional online linear classifier, with the reference Lightning module's key
//! names.
//!
//! | reference key | part |
//! |---|---|
//! | `encoder_imaging.<i>.*` | ResNet trunk as `nn.Sequential(children[:-1])`: 0 conv1, 1 bn1, 4–7 layer1–4 (BatchNorm buffers included) |
//! | `projection_head_imaging.layers.{0,2}.*` | `Linear(D_img, 2048) → ReLU → Linear(2048, 128)` |
//! | `encoder_ecg.*` | timm ViT keys (`patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, …) |
//! | `projection_head_ecg.layers.{0,2}.*` | `Linear(D_ecg, 2048) → ReLU → Linear(2048, 128)` |
//! | `classifier.model.*` | the online classifier's `nn.Linear(D, 2)` |
//!
//! Internally the ResNet keeps torchvision names (`encoder_imaging.layer1.0.conv1.weight`);
//! [`to_reference_name`] and [`from_reference_name`] translate, and every file this crate writes
//! or reads uses the reference names.
//!
//! Two constructors read a checkpoint: [`MmclModel::from_checkpoint`] rebuilds a model of our
//! trainer from the `architecture` metadata of its `model.safetensors`;
//! [`MmclModel::from_reference_checkpoint`] reads any file in the reference's key layout (the
//! reference's own checkpoints included) and infers the architecture from the tensors.

use std::sync::LazyLock;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Init;
use mmcl_cmr::checkpoint::{EncoderLayout, rename_rules};
use mmcl_cmr::{ProjectionHead, ResNet, ResNetConfig};
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};
use mmcl_nn::checkpoint::KeyRemap;
use mmcl_nn::layers::Linear;
use mmcl_nn::rng::SharedRng;
use mmcl_nn::{LoadOptions, LoadReport, ParamStore, StateDict};

use crate::config::{ClassifierInit, MmclConfig, OnlineClassifier};
use crate::{Error, Result};

mod reference;

pub use reference::MultimodalLoadSummary;

/// Key prefix of the image trunk.
pub const IMAGING_PREFIX: &str = "encoder_imaging.";
/// Key prefix of the image projection head.
pub const IMAGING_HEAD_PREFIX: &str = "projection_head_imaging.";
/// Key prefix of the ECG encoder.
pub const ECG_PREFIX: &str = "encoder_ecg.";
/// Key prefix of the ECG projection head.
pub const ECG_HEAD_PREFIX: &str = "projection_head_ecg.";
/// Key prefix of the online classifier.
pub const CLASSIFIER_PREFIX: &str = "classifier.";

/// Classes of the online classifier (a binary disease label, as in the reference).
pub const CLASSIFIER_CLASSES: usize = 2;

/// Internal → reference names: the image trunk's torchvision children become Sequential
/// indices under [`IMAGING_PREFIX`]; every other key is kept.
static TO_REFERENCE: LazyLock<KeyRemap> = LazyLock::new(|| {
    KeyRemap::new().with_rules(rename_rules(
        EncoderLayout::Torchvision,
        IMAGING_PREFIX,
        IMAGING_PREFIX,
    ))
});

/// Reference → internal names: the reverse of [`TO_REFERENCE`]; an image-trunk key of no known
/// child is dropped.
static FROM_REFERENCE: LazyLock<KeyRemap> = LazyLock::new(|| {
    KeyRemap::new()
        .with_rules(rename_rules(
            EncoderLayout::Sequential,
            IMAGING_PREFIX,
            IMAGING_PREFIX,
        ))
        .drop_prefix(IMAGING_PREFIX)
});

/// The reference (Lightning) name of an internal variable name: the image trunk's torchvision
/// names become Sequential indices; everything else is unchanged.
pub fn to_reference_name(name: &str) -> String {
    // The table drops nothing: every name comes back.
    TO_REFERENCE.apply(name).unwrap_or_else(|| name.to_string())
}

/// The internal name of a reference key (`None` for an image-trunk key that names no ResNet
/// parameter, such as `encoder_imaging.8.…`).
pub fn from_reference_name(key: &str) -> Option<String> {
    FROM_REFERENCE.apply(key)
}

/// The shapes of the multimodal model (saved as the `architecture` metadata of
/// `model.safetensors`, so that a checkpoint rebuilds its model without the configuration).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MmclArchitecture {
    /// The image trunk.
    pub imaging: ResNetConfig,
    /// The ECG encoder.
    pub ecg: EcgVitConfig,
    /// Hidden width of both projection heads.
    pub embedding_dim: usize,
    /// Output width of both projection heads.
    pub projection_dim: usize,
    /// Which features the online classifier reads.
    pub classifier: OnlineClassifier,
    /// How its weight is initialised.
    pub classifier_init: ClassifierInit,
}

impl MmclArchitecture {
    /// The architecture of `cfg` for images of `image_channels` channels (the cache's).
    pub fn from_config(cfg: &MmclConfig, image_channels: usize) -> Result<Self> {
        Ok(Self {
            imaging: ResNetConfig::new(cfg.imaging.model, image_channels),
            ecg: cfg.ecg.vit_config()?,
            embedding_dim: cfg.embedding_dim,
            projection_dim: cfg.projection_dim,
            classifier: cfg.classifier.online_classifier,
            classifier_init: cfg.classifier.init_strat,
        })
    }
}

/// The multimodal contrastive model (the reference's `MultimodalSimCLR`).
#[derive(Debug, Clone)]
pub struct MmclModel {
    arch: MmclArchitecture,
    store: ParamStore,
    rng: SharedRng,
    encoder_imaging: ResNet,
    projection_head_imaging: ProjectionHead,
    encoder_ecg: EcgVit,
    projection_head_ecg: ProjectionHead,
    classifier: Option<Linear>,
}

impl MmclModel {
    /// A freshly initialised model on `device` (f32): weights from `seed` (per name, see
    /// [`ParamStore`]), drop-path draws from a stream derived from `seed`.
    pub fn new(arch: &MmclArchitecture, seed: u64, device: &Device) -> Result<Self> {
        Self::with_dtype(arch, seed, device, DType::F32)
    }

    /// As [`Self::new`] with weights of `dtype` (f64 for reference checks; training uses f32).
    pub fn with_dtype(
        arch: &MmclArchitecture,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let store = ParamStore::new(seed);
        let rng = SharedRng::new(seed ^ 0xD509_9A7E_5EED_0001);
        let vb = store.var_builder(dtype, device);
        let encoder_imaging = ResNet::new(&arch.imaging, vb.pp("encoder_imaging"))?;
        let image_dim = encoder_imaging.feature_dim();
        let projection_head_imaging = ProjectionHead::new(
            image_dim,
            arch.embedding_dim,
            arch.projection_dim,
            vb.pp("projection_head_imaging"),
        )?;
        let encoder_ecg = EcgVit::new(&arch.ecg, rng.clone(), vb.pp("encoder_ecg"))?;
        let projection_head_ecg = ProjectionHead::new(
            arch.ecg.embed_dim,
            arch.embedding_dim,
            arch.projection_dim,
            vb.pp("projection_head_ecg"),
        )?;
        let classifier = match arch.classifier {
            OnlineClassifier::None => None,
            which => {
                let in_dim = match which {
                    OnlineClassifier::Image => image_dim,
                    _ => arch.ecg.embed_dim,
                };
                let weight_init = match arch.classifier_init {
                    ClassifierInit::Kaiming => Init::Randn {
                        mean: 0.0,
                        stdev: (2.0 / in_dim as f64).sqrt(),
                    },
                    ClassifierInit::Normal => Init::Randn {
                        mean: 0.0,
                        stdev: 0.001,
                    },
                    ClassifierInit::Xavier => Init::Randn {
                        mean: 0.0,
                        stdev: 0.02 * (2.0 / (in_dim + CLASSIFIER_CLASSES) as f64).sqrt(),
                    },
                };
                Some(Linear::new(
                    in_dim,
                    CLASSIFIER_CLASSES,
                    Some(Init::Const(0.0)),
                    weight_init,
                    vb.pp("classifier").pp("model"),
                )?)
            }
        };
        Ok(Self {
            arch: arch.clone(),
            store,
            rng,
            encoder_imaging,
            projection_head_imaging,
            encoder_ecg,
            projection_head_ecg,
            classifier,
        })
    }

    /// Rebuilds a trained model from a `model.safetensors` written by the trainer (its
    /// `architecture` metadata gives the shapes). `path` may be the file, a checkpoint directory
    /// holding it, or a run directory (its `checkpoints/last`).
    pub fn from_checkpoint(path: &std::path::Path, device: &Device) -> Result<Self> {
        let file = crate::checkpoint::find_model_file(path)?;
        let metadata = mmcl_nn::checkpoint::read_safetensors_metadata(&file)?;
        let arch_json = metadata.get("architecture").ok_or_else(|| {
            Error::checkpoint(
                &file,
                "no \"architecture\" metadata: not a model.safetensors of the MMCL trainer",
            )
        })?;
        let arch: MmclArchitecture =
            serde_json::from_str(arch_json).map_err(|e| Error::json(&file, e))?;
        let model = Self::new(&arch, 0, device)?;
        let state = StateDict::read(&file)?;
        model.load_state_dict(&state, &LoadOptions::strict())?;
        Ok(model)
    }

    /// The architecture.
    pub fn architecture(&self) -> &MmclArchitecture {
        &self.arch
    }

    /// The variables (internal names; see [`to_reference_name`]).
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The stream of the training-time randomness (drop-path), whose state checkpoints save.
    pub fn rng(&self) -> &SharedRng {
        &self.rng
    }

    /// The image trunk.
    pub fn encoder_imaging(&self) -> &ResNet {
        &self.encoder_imaging
    }

    /// The ECG encoder.
    pub fn encoder_ecg(&self) -> &EcgVit {
        &self.encoder_ecg
    }

    /// The image projection head.
    pub fn projection_head_imaging(&self) -> &ProjectionHead {
        &self.projection_head_imaging
    }

    /// The ECG projection head.
    pub fn projection_head_ecg(&self) -> &ProjectionHead {
        &self.projection_head_ecg
    }

    /// The online classifier, if configured.
    pub fn classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }

    /// Pooled image features; batch statistics (and running-statistics updates) when `train`.
    ///
    /// # Shapes
    /// `[B, C, H, W]` → `[B, D_img]`.
    pub fn image_features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.encoder_imaging.forward_t(images, train)?.pooled)
    }

    /// Pooled ECG features (the configured pooling); drop-path active when `train`.
    ///
    /// # Shapes
    /// `[B, 1, leads, T]` → `[B, D_ecg]`.
    pub fn ecg_features(&self, ecgs: &Tensor, train: bool) -> Result<Tensor> {
        let pooling = self.arch.ecg.pooling();
        if pooling == Pooling::Tokens {
            return Err(Error::InvalidInput(
                "the contrastive model needs a pooled ECG embedding".into(),
            ));
        }
        Ok(self.encoder_ecg.forward_features(ecgs, pooling, train)?)
    }

    /// Image projections (`forward_imaging`).
    ///
    /// # Shapes
    /// `[B, C, H, W]` → `[B, projection_dim]`.
    pub fn forward_imaging(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.image_features(images, train)?; // [B, D_img]
        Ok(self.projection_head_imaging.forward(&features)?) // [B, P]
    }

    /// ECG projections (`forward_ecg`).
    ///
    /// # Shapes
    /// `[B, 1, leads, T]` → `[B, projection_dim]`.
    pub fn forward_ecg(&self, ecgs: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.ecg_features(ecgs, train)?; // [B, D_ecg]
        Ok(self.projection_head_ecg.forward(&features)?) // [B, P]
    }

    /// Image projections from features computed elsewhere (e.g. detached ones).
    ///
    /// # Shapes
    /// `[B, D_img]` → `[B, projection_dim]`.
    pub fn project_imaging(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.projection_head_imaging.forward(features)?)
    }

    /// ECG projections from features computed elsewhere.
    ///
    /// # Shapes
    /// `[B, D_ecg]` → `[B, projection_dim]`.
    pub fn project_ecg(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.projection_head_ecg.forward(features)?)
    }

    /// The online classifier's logits for features of the configured modality.
    ///
    /// # Shapes
    /// `[B, D]` → `[B, 2]`.
    pub fn classifier_logits(&self, features: &Tensor) -> Result<Tensor> {
        let classifier = self
            .classifier
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("the model has no online classifier".into()))?;
        Ok(classifier.forward(features)?)
    }

    /// The trainable variables of the contrastive model (both encoders and heads), by internal
    /// name, sorted; `include_imaging_encoder = false` leaves the image trunk out (frozen).
    pub fn contrastive_vars(&self, include_imaging_encoder: bool) -> Vec<(String, Var)> {
        self.store
            .trainable_vars()
            .into_iter()
            .filter(|(n, _)| !n.starts_with(CLASSIFIER_PREFIX))
            .filter(|(n, _)| include_imaging_encoder || !n.starts_with(IMAGING_PREFIX))
            .collect()
    }

    /// The trainable variables of the online classifier.
    pub fn classifier_vars(&self) -> Vec<(String, Var)> {
        self.store
            .trainable_vars()
            .into_iter()
            .filter(|(n, _)| n.starts_with(CLASSIFIER_PREFIX))
            .collect()
    }

    /// Every tensor (parameters and BatchNorm buffers) under the reference names, on the CPU.
    pub fn state_dict(&self) -> Result<StateDict> {
        let mut out = StateDict::default();
        for (name, var) in self.store.named_vars() {
            out.insert(
                to_reference_name(&name),
                var.as_tensor().to_device(&Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Loads a state dict under reference names (e.g. [`Self::state_dict`] of an earlier run, or
    /// a reference Lightning `state_dict`), checking names and shapes against `options`
    /// (patterns over reference names). Nothing changes when the check fails.
    pub fn load_state_dict(&self, state: &StateDict, options: &LoadOptions) -> Result<LoadReport> {
        let mut internal = StateDict::with_source(state.source());
        for (key, tensor) in state.iter() {
            // Keys outside the trunk's parameters keep their spelling and are reported as
            // unexpected.
            let name = from_reference_name(key).unwrap_or_else(|| key.to_string());
            internal.insert(name, tensor.clone());
        }
        let mut internal_options = LoadOptions::strict();
        internal_options.allow_missing = options
            .allow_missing
            .iter()
            .map(|p| from_reference_name(p).unwrap_or_else(|| p.clone()))
            .collect();
        internal_options.allow_unexpected = options.allow_unexpected.clone();
        let mut report = self
            .store
            .load_state_dict(&internal, &internal_options)
            .map_err(|e| rename_report_error(e, state))?;
        for list in [&mut report.loaded, &mut report.missing] {
            for k in list.iter_mut() {
                *k = to_reference_name(k);
            }
        }
        Ok(report)
    }

    /// The ECG encoder alone under timm keys (loadable by `embed-ecg`, the fine-tuning stage and
    /// [`mmcl_ecg::checkpoint::load_encoder`]), on the CPU.
    pub fn ecg_encoder_state_dict(&self) -> Result<StateDict> {
        Ok(self.state_dict()?.strip_prefix(ECG_PREFIX))
    }

    /// The image trunk alone in the released layout (`encoder_imaging.<i>.*`, loadable by
    /// `embed-cmr`), on the CPU.
    pub fn image_encoder_state_dict(&self) -> Result<StateDict> {
        let mut out = StateDict::default();
        for (key, tensor) in self.state_dict()?.iter() {
            if key.starts_with(IMAGING_PREFIX) {
                out.insert(key.to_string(), tensor.clone());
            }
        }
        Ok(out)
    }

    /// Loads a pre-trained ECG encoder (MAE run, released `signal_encoder*.pth`, a Lightning
    /// checkpoint or our exports) into `encoder_ecg.*`, resizing the position embedding when
    /// needed, as the reference's non-strict loading. Returns a one-line summary.
    pub fn load_pretrained_ecg(&self, path: &std::path::Path) -> Result<String> {
        // Load into a scratch store of the encoder alone, then copy in.
        let scratch = ParamStore::new(0);
        let _shape_model = EcgVit::new(
            &self.arch.ecg,
            SharedRng::new(0),
            scratch.var_builder(DType::F32, &Device::Cpu),
        )?;
        let own = self.state_dict()?.strip_prefix(ECG_PREFIX);
        // Start the scratch copy from our current weights so that tensors the checkpoint lacks
        // (head, fc_norm) keep the model's own initialisation.
        scratch.load_state_dict(&own, &LoadOptions::strict())?;
        let summary = mmcl_ecg::checkpoint::load_encoder(
            &scratch,
            &self.arch.ecg,
            path,
            self.arch.ecg.pooling(),
        )?;
        let loaded = scratch.state_dict()?.add_prefix(ECG_PREFIX);
        self.load_state_dict(&loaded, &LoadOptions::strict().allow_missing(["*"]))?;
        Ok(summary.to_string())
    }

    /// Loads a pre-trained image trunk (released `image_encoder*.pth`, torchvision, or ours)
    /// into `encoder_imaging.*` (strict, as the reference). Returns the number of tensors.
    pub fn load_pretrained_imaging(&self, path: &std::path::Path) -> Result<usize> {
        let raw = StateDict::read(path)?;
        let encoder = mmcl_cmr::checkpoint::extract_encoder(&raw, None)?;
        let report = mmcl_cmr::checkpoint::load_encoder(&self.store, IMAGING_PREFIX, &encoder)?;
        Ok(report.loaded.len())
    }
}

/// Re-expresses a key-mismatch error of the internal store in reference names.
fn rename_report_error(e: mmcl_nn::Error, state: &StateDict) -> Error {
    match e {
        mmcl_nn::Error::CheckpointMismatch { path, mut report } => {
            for list in [
                &mut report.loaded,
                &mut report.missing,
                &mut report.unexpected,
            ] {
                for k in list.iter_mut() {
                    *k = to_reference_name(k);
                }
            }
            for m in report.shape_mismatches.iter_mut() {
                m.name = to_reference_name(&m.name);
            }
            for m in report.dtype_mismatches.iter_mut() {
                m.name = to_reference_name(&m.name);
            }
            let path = if path.as_os_str().is_empty() {
                state.source().to_path_buf()
            } else {
                path
            };
            Error::Nn(mmcl_nn::Error::CheckpointMismatch { path, report })
        }
        other => Error::Nn(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_translate_both_ways() {
        for (internal, reference) in [
            ("encoder_imaging.conv1.weight", "encoder_imaging.0.weight"),
            (
                "encoder_imaging.bn1.running_var",
                "encoder_imaging.1.running_var",
            ),
            (
                "encoder_imaging.layer4.1.bn2.weight",
                "encoder_imaging.7.1.bn2.weight",
            ),
            (
                "encoder_ecg.blocks.0.attn.qkv.weight",
                "encoder_ecg.blocks.0.attn.qkv.weight",
            ),
            ("classifier.model.weight", "classifier.model.weight"),
        ] {
            assert_eq!(to_reference_name(internal), reference);
            assert_eq!(from_reference_name(reference).as_deref(), Some(internal));
        }
        assert_eq!(from_reference_name("encoder_imaging.8.weight"), None);
    }
}
