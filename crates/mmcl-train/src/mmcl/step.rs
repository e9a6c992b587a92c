//! One optimisation step of the multimodal model: the contrastive update and the online
//! classifier's.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use mmcl_losses::classification::weighted_cross_entropy;
use mmcl_losses::clip::{ClipLoss, ClipOutput};
use mmcl_nn::StateDict;
use mmcl_nn::optim::{Adam, AdamConfig, GradAccumulator, ParamGroup, clip_grad_norm};
use mmcl_nn::precision::Precision;

use crate::checkpoint::{self, CLASSIFIER_OPTIMIZER_FILE, CheckpointFile, OPTIMIZER_FILE};
use crate::config::{MmclConfig, OnlineClassifier};
use crate::model::{
    ECG_HEAD_PREFIX, ECG_PREFIX, IMAGING_HEAD_PREFIX, IMAGING_PREFIX, MmclModel,
    from_reference_name, to_reference_name,
};
use crate::{Error, Result};

/// The labels of the online classifier for one batch: `Some(class)` where known.
pub type ClassifierTargets = Vec<Option<u32>>;

/// The tensors of one training batch.
#[derive(Debug, Clone)]
pub struct MmclBatch {
    /// Augmented images `[B, C, H, W]`.
    pub images: Tensor,
    /// Augmented ECGs `[B, 1, leads, T]`.
    pub ecgs: Tensor,
    /// Original images (for an image classifier).
    pub images_orig: Option<Tensor>,
    /// Original ECGs (for an ECG classifier).
    pub ecgs_orig: Option<Tensor>,
    /// Labels of the classifier's target.
    pub targets: Option<ClassifierTargets>,
}

/// What one training batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The contrastive loss (possibly non-finite: then nothing was updated).
    pub loss: f64,
    /// Retrieval top-1 accuracy within the batch.
    pub top1: f64,
    /// Retrieval top-5 accuracy (batches of more than 5 only, as the reference).
    pub top5: Option<f64>,
    /// Whether the contrastive optimiser stepped (false while accumulating).
    pub stepped: bool,
    /// The gradient norm before clipping, when clipping is configured and the optimiser stepped.
    pub grad_norm: Option<f64>,
    /// The classifier's loss, when it trained on this batch.
    pub classifier_loss: Option<f64>,
}

/// The CLIP loss of paired images and ECGs.
///
/// `frozen_imaging` detaches the image features (no gradient through the trunk) and runs the
/// trunk in evaluation mode: a frozen tower keeps its BatchNorm running statistics instead of
/// normalising with (and updating from) each batch's.
///
/// # Shapes
/// `images` `[B, C, H, W]`, `ecgs` `[B, 1, leads, T]` → loss, logits `[B, B]`, labels `[B]`.
pub fn contrastive_loss(
    model: &MmclModel,
    clip: &ClipLoss,
    images: &Tensor,
    ecgs: &Tensor,
    train: bool,
    frozen_imaging: bool,
) -> Result<ClipOutput> {
    let mut image_features = model.image_features(images, train && !frozen_imaging)?; // [B, D_img]
    if frozen_imaging {
        image_features = image_features.detach();
    }
    let z_imaging = model.project_imaging(&image_features)?; // [B, P]
    let z_ecg = model.forward_ecg(ecgs, train)?; // [B, P]
    Ok(clip.forward(&z_imaging, &z_ecg)?)
}

/// The optimisation of the multimodal model: the two optimisers, gradient accumulation and
/// clipping, applied batch by batch. Used by [`MmclTrainer`](super::MmclTrainer) and the benchmarks.
#[derive(Debug)]
pub struct MmclStep {
    model: MmclModel,
    clip: ClipLoss,
    optimizer: Adam,
    classifier_optimizer: Option<Adam>,
    contrastive_vars: Vec<(String, Var)>,
    classifier_vars: Vec<(String, Var)>,
    accumulator: GradAccumulator,
    classifier_accumulator: GradAccumulator,
    accumulate: usize,
    gradient_clip_val: Option<f64>,
    frozen_imaging: bool,
    class_weights: [f64; 2],
    lr_classifier: f64,
    precision: Precision,
}

impl MmclStep {
    /// The step of `cfg` around `model`: Adam (L2) over the four groups `encoder_imaging`,
    /// `projection_head_imaging`, `encoder_ecg`, `projection_head_ecg`, and the classifier's
    /// own Adam.
    pub fn new(model: MmclModel, cfg: &MmclConfig) -> Result<Self> {
        let frozen_imaging = cfg.imaging.frozen;
        let contrastive_vars = model.contrastive_vars(!frozen_imaging);
        let group = |name: &str, prefix: &str| ParamGroup {
            name: name.to_string(),
            vars: contrastive_vars
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .cloned()
                .collect(),
            lr_scale: 1.0,
            weight_decay: cfg.weight_decay,
        };
        let groups = vec![
            group("encoder_imaging", IMAGING_PREFIX),
            group("projection_head_imaging", IMAGING_HEAD_PREFIX),
            group("encoder_ecg", ECG_PREFIX),
            group("projection_head_ecg", ECG_HEAD_PREFIX),
        ];
        let grouped: usize = groups.iter().map(|g| g.vars.len()).sum();
        if grouped != contrastive_vars.len() {
            return Err(Error::InvalidInput(
                "a contrastive parameter belongs to no optimiser group".into(),
            ));
        }
        let adam = AdamConfig {
            betas: cfg.betas,
            eps: cfg.eps,
            decoupled_weight_decay: false,
        };
        let optimizer = Adam::new(groups, adam)?;
        let classifier_vars = model.classifier_vars();
        let classifier_optimizer = if classifier_vars.is_empty() {
            None
        } else {
            Some(Adam::new(
                vec![ParamGroup {
                    name: "classifier".into(),
                    vars: classifier_vars.clone(),
                    lr_scale: 1.0,
                    weight_decay: cfg.classifier.weight_decay_classifier,
                }],
                AdamConfig::adam_l2(),
            )?)
        };
        Ok(Self {
            clip: ClipLoss::new(cfg.temperature, cfg.lambda_0)?,
            model,
            optimizer,
            classifier_optimizer,
            contrastive_vars,
            classifier_vars,
            accumulator: GradAccumulator::new(),
            classifier_accumulator: GradAccumulator::new(),
            accumulate: cfg.accumulate_grad_batches.max(1),
            gradient_clip_val: cfg.gradient_clip_val,
            frozen_imaging,
            class_weights: cfg.classifier.weights,
            lr_classifier: cfg.classifier.lr_classifier,
            precision: cfg.precision,
        })
    }

    /// The arithmetic of the CPU matrix products (the configuration's `precision`).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The model.
    pub fn model(&self) -> &MmclModel {
        &self.model
    }

    /// The CLIP loss.
    pub fn clip(&self) -> &ClipLoss {
        &self.clip
    }

    /// The contrastive optimiser.
    pub fn optimizer(&self) -> &Adam {
        &self.optimizer
    }

    /// The classifier's optimiser, if any.
    pub fn classifier_optimizer(&self) -> Option<&Adam> {
        self.classifier_optimizer.as_ref()
    }

    /// Whether gradients of earlier batches wait for an optimiser step.
    pub fn has_pending_gradients(&self) -> bool {
        self.accumulator.micro_batches() > 0
    }

    /// Trains on one batch with contrastive learning rate `lr`. A non-finite loss updates
    /// nothing and is returned for the caller to stop on.
    pub fn train_batch(&mut self, batch: &MmclBatch, lr: f64) -> Result<StepReport> {
        let _precision = self.precision.enter();
        let out = contrastive_loss(
            &self.model,
            &self.clip,
            &batch.images,
            &batch.ecgs,
            true,
            self.frozen_imaging,
        )?;
        let loss = out.loss.to_scalar::<f32>()? as f64;
        let b = out.logits.dim(0)?;
        let mut report = StepReport {
            loss,
            top1: 0.0,
            top5: None,
            stepped: false,
            grad_norm: None,
            classifier_loss: None,
        };
        if !loss.is_finite() {
            return Ok(report);
        }
        let grads = out.loss.backward()?;
        report.top1 = mmcl_losses::retrieval::top_k_accuracy(&out.logits, &out.labels, 1)?;
        if b > 5 {
            report.top5 = Some(mmcl_losses::retrieval::top_k_accuracy(
                &out.logits,
                &out.labels,
                5,
            )?);
        }
        drop(out);
        if self.accumulate == 1 {
            report.grad_norm = self.apply_gradients(grads, lr)?;
            report.stepped = true;
        } else {
            self.accumulator.add(&self.contrastive_vars, &grads)?;
            drop(grads);
            if self.accumulator.micro_batches() >= self.accumulate {
                report.grad_norm = self.flush(lr)?;
                report.stepped = true;
            }
        }
        report.classifier_loss = self.train_classifier(batch)?;
        Ok(report)
    }

    /// Steps the contrastive optimiser with the gradients accumulated so far (divided by the
    /// accumulation factor, as Lightning does at the end of an epoch). Returns the gradient
    /// norm when clipping.
    pub fn flush(&mut self, lr: f64) -> Result<Option<f64>> {
        if self.accumulator.micro_batches() == 0 {
            return Ok(None);
        }
        let grads = self
            .accumulator
            .take(&self.contrastive_vars, self.accumulate as f64)?;
        let norm = self.apply_gradients(grads, lr)?;
        if self.classifier_accumulator.micro_batches() > 0
            && let Some(opt) = self.classifier_optimizer.as_mut()
        {
            let grads = self
                .classifier_accumulator
                .take(&self.classifier_vars, self.accumulate as f64)?;
            opt.step(&grads, self.lr_classifier)?;
        }
        Ok(norm)
    }

    /// Steps the contrastive optimiser with `grads` (clipped first when configured), e.g.
    /// gradients of [`contrastive_loss`] computed by the caller. Returns the norm when clipping.
    pub fn apply_gradients(&mut self, mut grads: GradStore, lr: f64) -> Result<Option<f64>> {
        let norm = match self.gradient_clip_val {
            Some(max) => Some(clip_grad_norm(&self.contrastive_vars, &mut grads, max)?),
            None => None,
        };
        self.optimizer.step(&grads, lr)?;
        Ok(norm)
    }

    /// One step of the online classifier on the detached features of the original views.
    fn train_classifier(&mut self, batch: &MmclBatch) -> Result<Option<f64>> {
        let Some(opt) = self.classifier_optimizer.as_mut() else {
            return Ok(None);
        };
        let Some(targets) = &batch.targets else {
            return Ok(None);
        };
        let features = match self.model.architecture().classifier {
            OnlineClassifier::Image => {
                let images = batch.images_orig.as_ref().unwrap_or(&batch.images);
                self.model.image_features(images, true)?
            }
            _ => {
                let ecgs = batch.ecgs_orig.as_ref().unwrap_or(&batch.ecgs);
                self.model.ecg_features(ecgs, true)?
            }
        }
        .detach();
        let logits = self.model.classifier_logits(&features)?;
        let Some(loss) = weighted_cross_entropy(&logits, targets, self.class_weights)? else {
            return Ok(None);
        };
        let value = loss.to_scalar::<f32>()? as f64;
        let grads = loss.backward()?;
        if self.accumulate == 1 {
            opt.step(&grads, self.lr_classifier)?;
        } else {
            self.classifier_accumulator
                .add(&self.classifier_vars, &grads)?;
            if self.classifier_accumulator.micro_batches() >= self.accumulate {
                let grads = self
                    .classifier_accumulator
                    .take(&self.classifier_vars, self.accumulate as f64)?;
                opt.step(&grads, self.lr_classifier)?;
            }
        }
        Ok(Some(value))
    }

    /// The optimiser states under reference names: (contrastive, classifier).
    pub fn optimizer_files(&self) -> Result<(CheckpointFile, Option<CheckpointFile>)> {
        let file = |opt: &Adam| -> Result<CheckpointFile> {
            let (sd, metadata) = opt.state()?;
            Ok(CheckpointFile {
                tensors: rename_optimizer_state(&sd, to_reference_name),
                metadata,
            })
        };
        let classifier = match &self.classifier_optimizer {
            Some(opt) => Some(file(opt)?),
            None => None,
        };
        Ok((file(&self.optimizer)?, classifier))
    }

    /// Restores the optimiser states of a checkpoint directory.
    pub fn load_optimizers(&mut self, dir: &Path) -> Result<()> {
        let load = |opt: &mut Adam, file: &str| -> Result<()> {
            let sd = checkpoint::read_file(dir, file)?;
            let steps = checkpoint::optimizer_steps(dir, file)?;
            let sd = rename_optimizer_state(&sd, |k| {
                from_reference_name(k).unwrap_or_else(|| k.to_string())
            });
            opt.load_state(&sd, steps)?;
            Ok(())
        };
        load(&mut self.optimizer, OPTIMIZER_FILE)?;
        if let Some(opt) = self.classifier_optimizer.as_mut() {
            load(opt, CLASSIFIER_OPTIMIZER_FILE)?;
        }
        Ok(())
    }
}

/// Renames the parameter part of `exp_avg.<name>` / `exp_avg_sq.<name>` keys.
fn rename_optimizer_state(sd: &StateDict, rename: impl Fn(&str) -> String) -> StateDict {
    let mut out = StateDict::with_source(sd.source());
    for (key, t) in sd.iter() {
        let renamed = ["exp_avg_sq.", "exp_avg."]
            .iter()
            .find_map(|p| key.strip_prefix(p).map(|n| format!("{p}{}", rename(n))))
            .unwrap_or_else(|| key.to_string());
        out.insert(renamed, t.clone());
    }
    out
}
