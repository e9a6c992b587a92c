//! The four model workloads at the paper's shapes that the benchmarks time (`embed_ecg`,
//! `mae_step`, `embed_cmr`, `mmcl_step`) and `examples/gpu_check/` times again on a GPU
//! (it includes this file by its path): each is built on a device at a batch size and run one
//! iteration at a time. Every call returns a small host value, so a GPU's queued work has
//! finished when it returns.

// Each benchmark uses one or two of these; the GPU check uses all.
#![allow(dead_code)]

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use mmcl_suite::cmr::{FoldedResNet, ResNet, ResNetConfig};
use mmcl_suite::ecg::mae::{MaeConfig, MaskedAutoencoder};
use mmcl_suite::ecg::{EcgVit, EcgVitConfig, Pooling};
use mmcl_suite::losses::mae::{MaeLoss, MaeLossConfig};
use mmcl_suite::nn::ParamStore;
use mmcl_suite::nn::optim::{Adam, AdamConfig};
use mmcl_suite::nn::precision::Precision;
use mmcl_suite::nn::rng::{SharedRng, SplitMix64};
use mmcl_suite::train::config::OnlineClassifier;
use mmcl_suite::train::mmcl::MmclBatch;
use mmcl_suite::train::{MmclArchitecture, MmclConfig, MmclModel, MmclStep};

/// The paper's batch of each workload, as the reference PyTorch scripts time it.
pub const ECG_EMBEDDING_BATCH: usize = 64;
/// See [`ECG_EMBEDDING_BATCH`].
pub const MAE_STEP_BATCH: usize = 32;
/// See [`ECG_EMBEDDING_BATCH`].
pub const CMR_EMBEDDING_BATCH: usize = 16;
/// See [`ECG_EMBEDDING_BATCH`].
pub const MMCL_STEP_BATCH: usize = 16;
/// The side of the paper's CMR images.
pub const CMR_SIDE: usize = 210;
/// The ECG encoder's width, heads and tokens (`vit_tiny_patchX` on 1×12×2500 ECGs: 300
/// patches of 1×100 and the class token).
pub const ECG_DIM: usize = 384;
/// See [`ECG_DIM`].
pub const ECG_HEADS: usize = 6;
/// See [`ECG_DIM`].
pub const ECG_TOKENS: usize = 301;

/// A standard-normal tensor drawn on the host from `seed` and copied to `device`: the same
/// inputs on every device, so that a GPU's results can be held against the CPU's.
fn randn(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = SplitMix64::new(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?)
}

/// Embedding ECGs with the paper's encoder: `vit_tiny_patchX` on 1×12×2500 inputs (1×100
/// patches), global pooling, evaluation mode.
pub struct EcgEmbedding {
    model: EcgVit,
    x: Tensor,
}

impl EcgEmbedding {
    /// The encoder from seed 0 and a batch of random ECGs on `device`.
    pub fn new(device: &Device, batch: usize) -> Result<Self> {
        let (model, _store) = EcgVit::from_seed(&EcgVitConfig::paper(), 0, device)?;
        let x = randn(&[batch, 1, 12, 2500], 1, device)?;
        Ok(Self { model, x })
    }

    /// Embeds the batch; returns the embeddings, copied to the host.
    pub fn run(&self) -> Result<Tensor> {
        let y = self.model.embed(&self.x, Pooling::Global)?;
        Ok(y.to_device(&Device::Cpu)?)
    }
}

/// One masked-autoencoder training step: `mae_vit_tiny_patchX` (encoder 384 wide, 3 blocks;
/// decoder 256 wide, 2 blocks) on 1×12×2500 ECGs, mask ratio 0.8, the full reference objective
/// (all-patch normalised-pixel MSE + NCC, SimSiam term on a second view), backward, and an
/// AdamW step (betas 0.9/0.95, weight decay 0.15).
pub struct MaeStep {
    model: MaskedAutoencoder,
    objective: MaeLoss,
    optimiser: Adam,
    rng: SharedRng,
    x: Tensor,
}

impl MaeStep {
    /// The model from seed 0, its optimiser, and a batch of random ECGs on `device`.
    pub fn new(device: &Device, batch: usize) -> Result<Self> {
        let (model, store) = MaskedAutoencoder::from_seed(&MaeConfig::paper(), 0, device)?;
        let optimiser = Adam::new(
            MaskedAutoencoder::param_groups(&store, 0.15),
            AdamConfig::adamw_mae(),
        )?;
        Ok(Self {
            model,
            objective: MaeLoss::new(MaeLossConfig::paper())?,
            optimiser,
            rng: SharedRng::new(1),
            x: randn(&[batch, 1, 12, 2500], 2, device)?,
        })
    }

    /// The objective's forward pass alone; returns the loss.
    pub fn forward(&self) -> Result<f32> {
        let out = self
            .objective
            .forward_random(&self.model, &self.x, &self.rng, true)?;
        Ok(out.total.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
    }

    /// The forward and backward passes; returns the number of gradients.
    pub fn forward_backward(&self) -> Result<usize> {
        // As `MaeStep::train_batch` in one process: the two views side by side.
        let (_, grads) = self
            .objective
            .forward_backward_random(&self.model, &self.x, &self.rng)?;
        Ok(grads.get_ids().count())
    }

    /// A whole training step; returns the loss.
    pub fn run(&mut self) -> Result<f32> {
        // As `MaeStep::train_batch` in one process: the two views side by side.
        let (out, grads) =
            self.objective
                .forward_backward_random(&self.model, &self.x, &self.rng)?;
        self.optimiser.step(&grads, 1e-4)?;
        Ok(out.total.to_device(&Device::Cpu)?.to_scalar::<f32>()?)
    }
}

/// Embedding CMR images with ResNet50 in evaluation mode, 3×210×210, through the three
/// inference paths: BatchNorm folded into the convolutions and run by the device's engine
/// (`folded`: the channels-last kernels on the CPU, candle's operations elsewhere), the folded
/// model as candle operations on any device (`folded_tensor_ops`), and the trainable model
/// (`resnet`: BatchNorm as its own pass).
pub struct CmrEmbedding {
    /// The trainable model in evaluation mode.
    pub resnet: ResNet,
    /// BatchNorm folded, run by the device's engine.
    pub folded: FoldedResNet,
    /// BatchNorm folded, run as candle operations.
    pub folded_tensor_ops: FoldedResNet,
    images: Tensor,
}

impl CmrEmbedding {
    /// ResNet50 from seed 0 and a batch of random images on `device`.
    pub fn new(device: &Device, batch: usize) -> Result<Self> {
        let store = ParamStore::new(0);
        let resnet = ResNet::new(
            &ResNetConfig::resnet50(),
            store.var_builder(DType::F32, device),
        )?;
        Ok(Self {
            folded: resnet.fold()?,
            folded_tensor_ops: resnet.fold_tensor_ops()?,
            resnet,
            images: randn(&[batch, 3, CMR_SIDE, CMR_SIDE], 3, device)?,
        })
    }

    /// Embeds the batch with `model` (one of this workload's); returns the embeddings, copied
    /// to the host.
    pub fn run(&self, model: &FoldedResNet) -> Result<Tensor> {
        Ok(model.embed(&self.images)?.to_device(&Device::Cpu)?)
    }

    /// Embeds the batch with the trainable model; returns the embeddings, copied to the host.
    pub fn run_resnet(&self) -> Result<Tensor> {
        Ok(self.resnet.embed(&self.images)?.to_device(&Device::Cpu)?)
    }
}

/// One multimodal training step: ResNet50 over 3×210×210 images (train mode),
/// `vit_tiny_patchX` over 1×12×2500 ECGs (drop-path 0.1), projection heads 2048–2048–128 and
/// 384–2048–128, CLIP loss (τ 0.1, λ 0.5), backward, and Adam with L2 weight decay over every
/// parameter — `MmclStep::train_batch` without the online classifier.
pub struct MmclTrainingStep {
    step: MmclStep,
    batch: MmclBatch,
    lr: f64,
}

impl MmclTrainingStep {
    /// The paper's configuration at `batch` on `device`, its products in `precision` (the
    /// step enters its configuration's precision itself, so the caller's setting would not
    /// reach it).
    pub fn new(device: &Device, batch: usize, precision: Precision) -> Result<Self> {
        Self::with_config(&Self::paper_config(batch, precision), device)
    }

    /// As [`Self::new`] without drop-path, the step's one random draw per iteration, so that
    /// a comparison of devices holds their arithmetic alone against each other.
    pub fn without_drop_path(device: &Device, batch: usize, precision: Precision) -> Result<Self> {
        let mut cfg = Self::paper_config(batch, precision);
        cfg.ecg.drop_path = 0.0;
        Self::with_config(&cfg, device)
    }

    /// The paper's configuration at `batch`, products in `precision`, no online classifier.
    fn paper_config(batch: usize, precision: Precision) -> MmclConfig {
        let mut cfg = MmclConfig::default();
        cfg.classifier.online_classifier = OnlineClassifier::None;
        cfg.batch_size = batch;
        cfg.precision = precision;
        cfg
    }

    /// The step of `cfg` on a batch of random images and ECGs at its shapes.
    pub fn with_config(cfg: &MmclConfig, device: &Device) -> Result<Self> {
        let (model, images, ecgs) = model_and_batch(cfg, device)?;
        let step = MmclStep::new(model, cfg)?;
        let batch = MmclBatch {
            images,
            ecgs,
            images_orig: None,
            ecgs_orig: None,
            targets: None,
        };
        Ok(Self {
            step,
            batch,
            lr: cfg.lr,
        })
    }

    /// A whole training step; returns the loss.
    pub fn run(&mut self) -> Result<f32> {
        Ok(self.step.train_batch(&self.batch, self.lr)?.loss as f32)
    }
}

/// The model of `cfg` (seeded as configured) and a batch of random images and ECGs at its
/// shapes.
fn model_and_batch(cfg: &MmclConfig, device: &Device) -> Result<(MmclModel, Tensor, Tensor)> {
    let arch = MmclArchitecture::from_config(cfg, 3)?;
    let model = MmclModel::new(&arch, cfg.seed, device)?;
    let (size, [_, leads, samples]) = (cfg.imaging.img_size, cfg.ecg.input_size);
    let images = randn(&[cfg.batch_size, 3, size, size], 4, device)?;
    let ecgs = randn(&[cfg.batch_size, 1, leads, samples], 5, device)?;
    Ok((model, images, ecgs))
}

/// The two encoders of the paper's MMCL step on their own, each a forward pass in train mode
/// over the step's batch, a sum and the backward pass (no heads, loss or optimiser): which part
/// of the step is behind or ahead of the reference.
pub struct MmclEncoderPasses {
    model: MmclModel,
    images: Tensor,
    ecgs: Tensor,
}

impl MmclEncoderPasses {
    /// The paper's model at `batch` on `device`, f32, on random images and ECGs.
    pub fn new(device: &Device, batch: usize) -> Result<Self> {
        let cfg = MmclTrainingStep::paper_config(batch, Precision::F32);
        let (model, images, ecgs) = model_and_batch(&cfg, device)?;
        Ok(Self {
            model,
            images,
            ecgs,
        })
    }

    /// ResNet50's pooled features in train mode, summed, and their backward pass.
    pub fn image_trunk(&self) -> Result<()> {
        let features = self.model.image_features(&self.images, true)?;
        features.sum_all()?.backward()?;
        Ok(())
    }

    /// The ECG encoder's pooled features with drop-path, summed, and their backward pass.
    pub fn ecg_encoder(&self) -> Result<()> {
        let features = self.model.ecg_features(&self.ecgs, true)?;
        features.sum_all()?.backward()?;
        Ok(())
    }
}
