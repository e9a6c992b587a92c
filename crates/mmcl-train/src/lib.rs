//! Trainers for MAE pre-training, multimodal contrastive (MMCL) training and fine-tuning:
//! one training loop, validation, logging, atomic checkpoints and exact resumption.
//!
//! - [`engine`]: the loop every stage plugs into ([`engine::TrainStep`]: an epoch of training,
//!   validation, what ends an epoch) with its components: the run log, early stopping,
//!   progress ([`Progress`]), and for the pre-training stages [`Trainer`] (run directories,
//!   checkpoints, resumption). Fine-tuning (`mmcl_eval::finetune`) runs in the same loop.
//! - [`MmclConfig`] (JSON or TOML, defaults = the paper) → [`MmclTrainer`]: the multimodal
//!   contrastive stage with its online classifier, validation, run logs and checkpoints;
//!   [`MmclTrainer::resume`] continues a run bit for bit.
//! - [`MaeTrainConfig`] (defaults = the paper's MAE stage) → [`MaeTrainer`]: masked-data
//!   modelling of the ECG encoder; its encoder export
//!   ([`checkpoint::ecg_encoder_path`]) initialises the multimodal stage.
//! - [`MmclModel`]: ResNet + ECG ViT + projection heads (+ classifier) under the reference
//!   Lightning module's key names; [`MmclStep`]: one optimisation step (the benchmarks use it).
//! - [`checkpoint`]: the run-directory layout and atomic checkpoint directories.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmcl_train::{MmclArchitecture, MmclConfig, MmclModel, MmclStep, mmcl::MmclBatch};
//!
//! # fn main() -> mmcl_train::Result<()> {
//! // A small model: ResNet18 over 32x32 images, a one-block ECG ViT over 12x200 ECGs.
//! let mut cfg: MmclConfig = toml::from_str(
//!     r#"
//!     embedding_dim = 64
//!     projection_dim = 16
//!     imaging = { model = "resnet18", img_size = 32, augment = { size = 32 } }
//!     ecg = { model = "vit_pluto_patchX", input_size = [1, 12, 200], patch_size = [1, 50] }
//!     classifier = { online_classifier = "none" }
//!     "#,
//! ).unwrap();
//! cfg.lr = 1e-3;
//! let arch = MmclArchitecture::from_config(&cfg, 3)?;
//! let model = MmclModel::new(&arch, cfg.seed, &Device::Cpu)?;
//! assert!(model.state_dict()?.contains("encoder_imaging.4.0.conv1.weight"));
//! let mut step = MmclStep::new(model, &cfg)?;
//! let batch = MmclBatch {
//!     images: Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu)?,
//!     ecgs: Tensor::randn(0f32, 1.0, (4, 1, 12, 200), &Device::Cpu)?,
//!     images_orig: None,
//!     ecgs_orig: None,
//!     targets: None,
//! };
//! let report = step.train_batch(&batch, cfg.lr)?;
//! assert!(report.loss.is_finite() && report.stepped);
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod config;
pub mod engine;
mod error;
pub mod mae;
pub mod mmcl;
pub mod model;
pub mod progress;
mod run;

pub use config::{MaeTrainConfig, MmclConfig, TrainerConfig};
pub use engine::{EarlyStopping, Stage, TrainStep, Trainer};
pub use error::{Error, Result};
pub use mae::{MaeStep, MaeTrainer};
pub use mmcl::{MmclStep, MmclTrainer};
pub use model::{MmclArchitecture, MmclModel};
pub use progress::{BarProgress, NoProgress, Progress};
