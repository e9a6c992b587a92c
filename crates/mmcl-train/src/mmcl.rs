//! The multimodal contrastive stage (`mmcl pretrain-mmcl`): the training step and the epoch loop.
//!
//! One training batch, as the reference's Lightning module with two optimisers does it:
//! 1. contrastive: augmented images → ResNet (train mode) → head; augmented ECGs → ViT
//!    (drop-path) → head; CLIP loss; backward; Adam with L2 weight decay over the four parameter
//!    groups (every parameter decayed, biases and norms included), learning rate from the
//!    per-epoch warm-up cosine;
//! 2. online classifier (optional): the *updated* encoder's pooled features of the original
//!    (un-augmented) ECGs (or images), detached, → `nn.Linear(D, 2)` → class-weighted cross-entropy
//!    over the subjects whose label is known; its own Adam at a constant rate.
//!
//! Each epoch ends with validation on the original views (loss, retrieval top-1/top-5 within
//! each batch, the classifier's loss, AUROC and accuracy), one record per split in
//! `metrics.jsonl`/`metrics.csv`, and a checkpoint (see [`crate::checkpoint`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use mmcl_core::runlog::RunLogWriter;
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Batch, Loader, LoaderConfig};
use mmcl_losses::clip::{ClipLoss, ClipOutput};
use mmcl_nn::optim::{Adam, AdamConfig, GradAccumulator, ParamGroup, clip_grad_norm};
use mmcl_nn::schedule::WarmupCosine;
use mmcl_nn::{LoadOptions, StateDict};

use crate::checkpoint::{
    self, CLASSIFIER_OPTIMIZER_FILE, CONFIG_FILE, CheckpointFile, ECG_ENCODER_FILE,
    IMAGE_ENCODER_FILE, MODEL_FILE, OPTIMIZER_FILE, TrainState, TrainerKind,
};
use crate::config::{MmclConfig, OnlineClassifier};
use crate::model::{
    ECG_HEAD_PREFIX, ECG_PREFIX, IMAGING_HEAD_PREFIX, IMAGING_PREFIX, MmclArchitecture, MmclModel,
    from_reference_name, to_reference_name,
};
use crate::progress::Progress;
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
/// `frozen_imaging` detaches the image features (no gradient through the trunk).
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
    let mut image_features = model.image_features(images, train)?; // [B, D_img]
    if frozen_imaging {
        image_features = image_features.detach();
    }
    let z_imaging = model.project_imaging(&image_features)?; // [B, P]
    let z_ecg = model.forward_ecg(ecgs, train)?; // [B, P]
    Ok(clip.forward(&z_imaging, &z_ecg)?)
}

/// Class-weighted cross-entropy over the rows whose target is known, as
/// `nn.CrossEntropyLoss(weight=…)`: `Σ w[y_i]·(−log p_i[y_i]) / Σ w[y_i]`. `None` when no row
/// counts.
///
/// # Shapes
/// `logits` `[B, 2]`, `targets` `B` entries → scalar.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &[Option<u32>],
    weights: [f64; 2],
) -> Result<Option<Tensor>> {
    let (b, classes) = logits.dims2()?;
    if targets.len() != b {
        return Err(Error::InvalidInput(format!(
            "{} targets for {b} rows of logits",
            targets.len()
        )));
    }
    let mut w = vec![0f32; b * classes];
    let mut total = 0f64;
    for (i, t) in targets.iter().enumerate() {
        if let Some(c) = t {
            let c = *c as usize;
            if c >= classes || c >= weights.len() {
                return Err(Error::InvalidInput(format!(
                    "class {c} out of range for {classes} classes"
                )));
            }
            w[i * classes + c] = weights[c] as f32;
            total += weights[c];
        }
    }
    if total <= 0.0 {
        return Ok(None);
    }
    let w = Tensor::from_vec(w, (b, classes), logits.device())?.affine(1.0 / total, 0.0)?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?; // [B, 2]
    Ok(Some((log_p * w)?.sum_all()?.neg()?))
}

/// The optimisation of the multimodal model: the two optimisers, gradient accumulation and
/// clipping, applied batch by batch. Used by [`MmclTrainer`] and the benchmarks.
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
        })
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
    pub fn optimizer_files(&self) -> (CheckpointFile, Option<CheckpointFile>) {
        let file = |opt: &Adam| {
            let (sd, metadata) = opt.state();
            CheckpointFile {
                tensors: rename_optimizer_state(&sd, to_reference_name),
                metadata,
            }
        };
        (
            file(&self.optimizer),
            self.classifier_optimizer.as_ref().map(file),
        )
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

/// Metrics of one validation pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValMetrics {
    /// Mean CLIP loss (weighted by batch size).
    pub loss: f64,
    /// Retrieval top-1 within each batch, over all samples.
    pub top1: f64,
    /// Retrieval top-5 (batches of more than 5 samples).
    pub top5: Option<f64>,
    /// The classifier's mean loss.
    pub classifier_loss: Option<f64>,
    /// The classifier's AUROC over the validation set.
    pub classifier_auc: Option<f64>,
    /// The classifier's accuracy (argmax).
    pub classifier_accuracy: Option<f64>,
    /// Samples seen.
    pub samples: usize,
}

/// Running sums for a phase's metrics.
#[derive(Debug, Default)]
struct Sums {
    loss: f64,
    top1: f64,
    top5: f64,
    top5_samples: usize,
    samples: usize,
    classifier_loss: f64,
    classifier_batches: usize,
}

impl Sums {
    fn add(&mut self, b: usize, loss: f64, top1: f64, top5: Option<f64>) {
        self.loss += loss * b as f64;
        self.top1 += top1 * b as f64;
        if let Some(t5) = top5 {
            self.top5 += t5 * b as f64;
            self.top5_samples += b;
        }
        self.samples += b;
    }

    fn top5(&self) -> Option<f64> {
        (self.top5_samples > 0).then(|| self.top5 / self.top5_samples as f64)
    }
}

/// The multimodal contrastive trainer: data, model, optimisers, schedule, run directory.
pub struct MmclTrainer {
    cfg: MmclConfig,
    step: MmclStep,
    schedule: WarmupCosine,
    train_loader: Arc<Loader>,
    val_loader: Option<Arc<Loader>>,
    target_label: Option<usize>,
    run_dir: PathBuf,
    log: RunLogWriter,
    epoch: usize,
    steps_taken: u64,
    best_val_loss: Option<(f64, usize)>,
    last_lr: f64,
}

impl std::fmt::Debug for MmclTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmclTrainer")
            .field("run_dir", &self.run_dir)
            .field("epoch", &self.epoch)
            .field("steps", &self.steps_taken)
            .finish()
    }
}

impl MmclTrainer {
    /// A new run of `cfg` writing into `run_dir` (which must not hold a run yet), on `device`.
    /// Pre-trained encoders named in the configuration are loaded; the resolved configuration
    /// is saved as `config.toml`. Returns the trainer and notes for the user.
    pub fn new(cfg: MmclConfig, run_dir: &Path, device: &Device) -> Result<(Self, Vec<String>)> {
        crate::run::ensure_fresh(run_dir)?;
        let mut cfg = cfg;
        cfg.validate()?;
        cfg.data.cache =
            std::fs::canonicalize(&cfg.data.cache).map_err(|e| Error::io(&cfg.data.cache, e))?;
        let cache = Arc::new(Cache::open(&cfg.data.cache)?);
        let channels = image_channels(&cache, &cfg.data.cache)?;
        let arch = MmclArchitecture::from_config(&cfg, channels)?;
        let model = MmclModel::new(&arch, cfg.seed, device)?;
        let mut notes = Vec::new();
        if let Some(p) = &cfg.imaging.pretrain_checkpoint {
            let n = model.load_pretrained_imaging(p)?;
            notes.push(format!(
                "image encoder: {n} tensors loaded from {}",
                p.display()
            ));
        }
        if let Some(p) = &cfg.ecg.pretrain_checkpoint {
            notes.push(format!("ECG encoder: {}", model.load_pretrained_ecg(p)?));
        }
        let mut trainer = Self::assemble(cfg, model, cache, run_dir, device)?;
        notes.extend(trainer.describe_data());
        crate::run::write_config(run_dir, &trainer.cfg.to_toml())?;
        trainer.log.truncate_after(0)?;
        Ok((trainer, notes))
    }

    /// Continues the run whose checkpoint is at `path` (a run directory or a checkpoint
    /// directory) exactly where it stopped. `cfg` replaces the saved configuration when given
    /// (e.g. more epochs); the architecture must stay the same. `run_dir` defaults to the
    /// checkpoint's run directory.
    pub fn resume(
        path: &Path,
        cfg: Option<MmclConfig>,
        run_dir: Option<&Path>,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        let (dir, state, run_dir) = crate::run::open_resume(path, TrainerKind::Mmcl, run_dir)?;
        let cfg = match cfg {
            Some(cfg) => cfg,
            None => crate::run::saved_config(&dir, &state)?,
        };
        cfg.validate()?;
        let cache = Arc::new(Cache::open(&cfg.data.cache)?);
        let channels = image_channels(&cache, &cfg.data.cache)?;
        let arch = MmclArchitecture::from_config(&cfg, channels)?;
        let model = MmclModel::new(&arch, cfg.seed, device)?;
        let weights = checkpoint::read_file(&dir, MODEL_FILE)?;
        model.load_state_dict(&weights, &LoadOptions::strict())?;
        model.rng().set_state(state.rng);
        let mut trainer = Self::assemble(cfg, model, cache, &run_dir, device)?;
        trainer.step.load_optimizers(&dir)?;
        trainer.epoch = state.epoch;
        trainer.steps_taken = state.step;
        trainer.best_val_loss = state.best_val_loss;
        trainer.last_lr = state.lr;
        trainer.log.truncate_after(state.epoch)?;
        let mut notes = vec![format!(
            "resumed from {} after epoch {} ({} optimiser steps)",
            dir.display(),
            state.epoch,
            state.step
        )];
        notes.extend(trainer.describe_data());
        Ok((trainer, notes))
    }

    fn assemble(
        cfg: MmclConfig,
        model: MmclModel,
        cache: Arc<Cache>,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let target_label = match cfg.classifier.online_classifier {
            OnlineClassifier::None => None,
            _ => {
                let names = &cache.index().label_names;
                let want = &cfg.classifier.target;
                Some(
                    names
                        .iter()
                        .position(|n| n == want)
                        .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(want)))
                        .ok_or_else(|| {
                            Error::config(format!(
                                "the classifier target {want:?} is not a label of the cache \
                                 (labels: {})",
                                names.join(", ")
                            ))
                        })?,
                )
            }
        };
        let train_idx = cache.split_indices(cfg.data.train_split);
        if train_idx.is_empty() {
            return Err(Error::config(format!(
                "the cache {} has no subjects in the {:?} split",
                cfg.data.cache.display(),
                cfg.data.train_split
            )));
        }
        let val_idx = cache.split_indices(cfg.data.val_split);
        let classifier = cfg.classifier.online_classifier != OnlineClassifier::None;
        let base = LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            drop_last: cfg.data.drop_last,
            seed: cfg.seed,
            ecg: true,
            ecg_crop: Some(cfg.ecg.input_size[2]),
            ecg_random_crop: cfg.ecg.random_crop,
            ecg_augment: Some(cfg.ecg.augment.clone()),
            image: true,
            image_augment: Some(cfg.imaging.augment.clone()),
            image_size: Some(cfg.imaging.img_size),
            originals: classifier,
            prefetch: cfg.data.prefetch,
            threads: cfg.data.threads,
        };
        let val_cfg = LoaderConfig {
            shuffle: false,
            drop_last: false,
            ecg_random_crop: false,
            ecg_augment: None,
            image_augment: None,
            originals: false,
            ..base.clone()
        };
        let train_loader = Arc::new(Loader::new(
            Arc::clone(&cache),
            train_idx,
            base,
            device.clone(),
        )?);
        let val_loader = if val_idx.is_empty() {
            None
        } else {
            Some(Arc::new(Loader::new(
                Arc::clone(&cache),
                val_idx,
                val_cfg,
                device.clone(),
            )?))
        };
        let schedule = WarmupCosine::per_epoch(cfg.lr, cfg.warmup_epochs, cfg.max_epochs);
        let step = MmclStep::new(model, &cfg)?;
        let log = RunLogWriter::open(run_dir)?;
        Ok(Self {
            cfg,
            step,
            schedule,
            train_loader,
            val_loader,
            target_label,
            run_dir: run_dir.to_path_buf(),
            log,
            epoch: 0,
            steps_taken: 0,
            best_val_loss: None,
            last_lr: 0.0,
        })
    }

    fn describe_data(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "training on {} subjects ({} batches of {} per epoch)",
            self.train_loader.len(),
            self.train_loader.num_batches(),
            self.cfg.batch_size
        )];
        match &self.val_loader {
            Some(v) => notes.push(format!("validating on {} subjects", v.len())),
            None => notes.push(format!(
                "the {:?} split is empty: no validation",
                self.cfg.data.val_split
            )),
        }
        notes
    }

    /// The configuration.
    pub fn config(&self) -> &MmclConfig {
        &self.cfg
    }

    /// The model.
    pub fn model(&self) -> &MmclModel {
        self.step.model()
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.epoch
    }

    /// Optimiser steps taken.
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// Trains until `max_epochs`, validating and checkpointing after each epoch.
    ///
    /// # Errors
    /// Data, model and I/O errors; [`Error::NonFiniteLoss`] when the loss becomes NaN or
    /// infinite (the last checkpoint on disk is left as it was).
    pub fn fit(&mut self, progress: &mut dyn Progress) -> Result<()> {
        self.fit_until(self.cfg.max_epochs, progress)
    }

    /// Trains until `epochs` epochs are done (at most `max_epochs`), e.g. to stop early and
    /// resume later.
    pub fn fit_until(&mut self, epochs: usize, progress: &mut dyn Progress) -> Result<()> {
        let end = epochs.min(self.cfg.max_epochs);
        while self.epoch < end {
            self.train_epoch(progress)?;
        }
        Ok(())
    }

    fn batch_of(&self, batch: Batch) -> Result<MmclBatch> {
        let missing = |what: &str| Error::InvalidInput(format!("the loader returned no {what}"));
        let targets = match self.target_label {
            Some(col) => {
                let labels = batch.labels.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                let mask = batch.label_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Some(
                    labels
                        .iter()
                        .zip(&mask)
                        .map(|(l, m)| (m[col] > 0.5).then_some((l[col] > 0.5) as u32))
                        .collect(),
                )
            }
            None => None,
        };
        Ok(MmclBatch {
            images: batch.image.ok_or_else(|| missing("images"))?,
            ecgs: batch.ecg.ok_or_else(|| missing("ECGs"))?,
            images_orig: batch.image_orig,
            ecgs_orig: batch.ecg_orig,
            targets,
        })
    }

    fn train_epoch(&mut self, progress: &mut dyn Progress) -> Result<()> {
        let epoch = self.epoch;
        let lr = self.schedule.lr_at_epoch(epoch);
        let started = Instant::now();
        let batches = self.train_loader.num_batches();
        progress.start_phase(epoch, "train", batches);
        let mut sums = Sums::default();
        for (b, batch) in self.train_loader.epoch(epoch as u64, 0).enumerate() {
            let batch = self.batch_of(batch?)?;
            let n = batch.images.dim(0)?;
            let report = self.step.train_batch(&batch, lr)?;
            if !report.loss.is_finite() {
                progress.finish_phase();
                return Err(crate::run::non_finite(
                    report.loss,
                    epoch,
                    b,
                    self.steps_taken,
                    &self.run_dir,
                ));
            }
            if report.stepped {
                self.steps_taken += 1;
            }
            sums.add(n, report.loss, report.top1, report.top5);
            if let Some(c) = report.classifier_loss {
                sums.classifier_loss += c;
                sums.classifier_batches += 1;
            }
            progress.batch(report.loss, n);
        }
        if self.step.has_pending_gradients() {
            self.step.flush(lr)?;
            self.steps_taken += 1;
        }
        progress.finish_phase();
        self.last_lr = lr;
        let seconds = started.elapsed().as_secs_f64();
        let samples = sums.samples.max(1) as f64;
        let mut values = vec![
            ("loss", sums.loss / samples),
            ("top1", sums.top1 / samples),
            ("lr", lr),
            ("samples_per_s", sums.samples as f64 / seconds.max(1e-9)),
        ];
        if let Some(t5) = sums.top5() {
            values.push(("top5", t5));
        }
        if sums.classifier_batches > 0 {
            values.push((
                "classifier_loss",
                sums.classifier_loss / sums.classifier_batches as f64,
            ));
        }
        self.log
            .append("train", epoch, self.steps_taken as usize, &values)?;
        let mut summary = format!(
            "epoch {epoch}: train loss {:.4}, top-1 {:.3}, lr {lr:.3e}, {:.1} samples/s",
            sums.loss / samples,
            sums.top1 / samples,
            sums.samples as f64 / seconds.max(1e-9)
        );

        let last = epoch + 1 == self.cfg.max_epochs;
        let improved = if (epoch + 1).is_multiple_of(self.cfg.check_val_every_n_epoch) || last {
            self.validate_and_log(epoch, progress, &mut summary)?
        } else {
            false
        };
        self.epoch = epoch + 1;
        self.save_checkpoints(improved)?;
        progress.message(&summary);
        Ok(())
    }

    /// Validates, logs the `val` record, extends the epoch summary; whether the validation loss
    /// improved on the best so far.
    fn validate_and_log(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
        summary: &mut String,
    ) -> Result<bool> {
        let Some(val) = self.validate(epoch, progress)? else {
            return Ok(false);
        };
        let mut values = vec![("loss", val.loss), ("top1", val.top1)];
        if let Some(t5) = val.top5 {
            values.push(("top5", t5));
        }
        for (k, v) in [
            ("classifier_loss", val.classifier_loss),
            ("classifier_auc", val.classifier_auc),
            ("classifier_accuracy", val.classifier_accuracy),
        ] {
            if let Some(v) = v {
                values.push((k, v));
            }
        }
        self.log
            .append("val", epoch, self.steps_taken as usize, &values)?;
        summary.push_str(&format!(
            "; val loss {:.4}, top-1 {:.3}",
            val.loss, val.top1
        ));
        if let Some(auc) = val.classifier_auc {
            summary.push_str(&format!(", classifier AUROC {auc:.3}"));
        }
        let improved = val.loss.is_finite() && self.best_val_loss.is_none_or(|(b, _)| val.loss < b);
        if improved {
            self.best_val_loss = Some((val.loss, epoch));
        }
        Ok(improved)
    }

    /// Validates on the original views of the validation split (evaluation mode).
    pub fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<ValMetrics>> {
        let Some(loader) = self.val_loader.clone() else {
            return Ok(None);
        };
        progress.start_phase(epoch, "val", loader.num_batches());
        let model = self.step.model();
        let clip = *self.step.clip();
        let which = model.architecture().classifier;
        let mut sums = Sums::default();
        let (mut scores, mut truth) = (Vec::new(), Vec::new());
        let mut correct = 0usize;
        let mut ce_weighted = (0f64, 0f64);
        for batch in loader.epoch(0, 0) {
            let batch = self.batch_of(batch?)?;
            let n = batch.images.dim(0)?;
            let image_features = model.image_features(&batch.images, false)?.detach();
            let ecg_features = model.ecg_features(&batch.ecgs, false)?.detach();
            let out = clip.forward(
                &model.project_imaging(&image_features)?,
                &model.project_ecg(&ecg_features)?,
            )?;
            let loss = out.loss.to_scalar::<f32>()? as f64;
            let top1 = mmcl_losses::retrieval::top_k_accuracy(&out.logits, &out.labels, 1)?;
            let top5 = if n > 5 {
                Some(mmcl_losses::retrieval::top_k_accuracy(
                    &out.logits,
                    &out.labels,
                    5,
                )?)
            } else {
                None
            };
            sums.add(n, loss, top1, top5);
            if let (Some(targets), true) = (&batch.targets, which != OnlineClassifier::None) {
                let features = if which == OnlineClassifier::Image {
                    &image_features
                } else {
                    &ecg_features
                };
                let logits = model.classifier_logits(features)?;
                let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
                for (p, t) in probs.iter().zip(targets) {
                    if let Some(c) = t {
                        scores.push(p[1] as f64);
                        truth.push(*c as f64);
                        correct += usize::from((p[1] > p[0]) == (*c == 1));
                    }
                }
                let w: f64 = targets
                    .iter()
                    .flatten()
                    .map(|&c| self.cfg.classifier.weights[c as usize])
                    .sum();
                if let Some(ce) =
                    weighted_cross_entropy(&logits, targets, self.cfg.classifier.weights)?
                {
                    ce_weighted.0 += ce.to_scalar::<f32>()? as f64 * w;
                    ce_weighted.1 += w;
                }
            }
            progress.batch(loss, n);
        }
        progress.finish_phase();
        let samples = sums.samples.max(1) as f64;
        let classifier_auc = if truth.is_empty() {
            None
        } else {
            mmcl_core::metrics::auroc(&truth, &scores).ok()
        };
        Ok(Some(ValMetrics {
            loss: sums.loss / samples,
            top1: sums.top1 / samples,
            top5: sums.top5(),
            classifier_loss: (ce_weighted.1 > 0.0).then(|| ce_weighted.0 / ce_weighted.1),
            classifier_auc,
            classifier_accuracy: (!truth.is_empty()).then(|| correct as f64 / truth.len() as f64),
            samples: sums.samples,
        }))
    }

    /// The training state after the epochs done so far.
    pub fn state(&self) -> Result<TrainState> {
        Ok(TrainState {
            version: checkpoint::CHECKPOINT_VERSION,
            kind: TrainerKind::Mmcl,
            epoch: self.epoch,
            step: self.steps_taken,
            schedule: self.schedule,
            lr: self.last_lr,
            rng: self.step.model().rng().state(),
            data_seed: self.cfg.seed,
            best_val_loss: self.best_val_loss,
            config: serde_json::to_value(&self.cfg).map_err(|source| Error::Json {
                path: self.run_dir.join(CONFIG_FILE),
                source,
            })?,
            image_channels: Some(self.step.model().architecture().imaging.in_channels),
        })
    }

    /// Writes `checkpoints/last` (and `best` when `improved`, and `epoch-NNNN` when due).
    fn save_checkpoints(&self, improved: bool) -> Result<()> {
        let state = self.state()?;
        let model = self.step.model();
        let weights = model_file(model, &state)?;
        let ecg = CheckpointFile::new(model.ecg_encoder_state_dict()?);
        let image = CheckpointFile::new(model.image_encoder_state_dict()?);
        let (opt, classifier_opt) = self.step.optimizer_files();
        let mut full = vec![
            (MODEL_FILE, weights.clone()),
            (OPTIMIZER_FILE, opt),
            (ECG_ENCODER_FILE, ecg.clone()),
            (IMAGE_ENCODER_FILE, image.clone()),
        ];
        if let Some(c) = classifier_opt {
            full.push((CLASSIFIER_OPTIMIZER_FILE, c));
        }
        let ckpts = checkpoint::checkpoints_dir(&self.run_dir);
        checkpoint::write_checkpoint(&ckpts.join("last"), &full, &state)?;
        let every = self.cfg.save_every_n_epochs;
        if every > 0 && self.epoch.is_multiple_of(every) {
            checkpoint::write_checkpoint(
                &ckpts.join(checkpoint::epoch_dir_name(self.epoch)),
                &full,
                &state,
            )?;
        }
        if improved {
            let light = [
                (MODEL_FILE, weights),
                (ECG_ENCODER_FILE, ecg),
                (IMAGE_ENCODER_FILE, image),
            ];
            checkpoint::write_checkpoint(&ckpts.join("best"), &light, &state)?;
        }
        Ok(())
    }
}

/// `model.safetensors`: every tensor under reference names, with the architecture and the epoch
/// as metadata.
fn model_file(model: &MmclModel, state: &TrainState) -> Result<CheckpointFile> {
    let mut metadata = HashMap::new();
    let arch = serde_json::to_string(model.architecture()).map_err(|source| Error::Json {
        path: PathBuf::from(MODEL_FILE),
        source,
    })?;
    metadata.insert("architecture".to_string(), arch);
    metadata.insert("epoch".to_string(), state.epoch.to_string());
    metadata.insert("format".to_string(), "mmcl-multimodal".to_string());
    Ok(CheckpointFile {
        tensors: model.state_dict()?,
        metadata,
    })
}

fn image_channels(cache: &Cache, path: &Path) -> Result<usize> {
    let index = cache.index();
    if index.ecg.is_none() {
        return Err(Error::config(format!(
            "the cache {} holds no ECGs; the multimodal stage needs ECG-image pairs",
            path.display()
        )));
    }
    index.image.map(|l| l.channels).ok_or_else(|| {
        Error::config(format!(
            "the cache {} holds no images; the multimodal stage needs ECG-image pairs",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_cross_entropy_matches_pytorch() -> Result<()> {
        // torch.nn.CrossEntropyLoss(weight=torch.tensor([0.55, 10.]))(logits, y) with the
        // third row ignored (unknown label): 2.2880775928497314
        let logits = Tensor::new(
            &[[0.2f32, -1.0], [1.5, 0.5], [3.0, 3.0], [-0.3, 0.8]],
            &Device::Cpu,
        )?;
        let targets = vec![Some(1), Some(0), None, Some(1)];
        let loss = weighted_cross_entropy(&logits, &targets, [0.55, 10.0])?
            .ok_or(Error::InvalidInput("no loss".into()))?
            .to_scalar::<f32>()?;
        let expected = {
            let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
            let rows = [(0.2, -1.0, 1usize), (1.5, 0.5, 0), (-0.3, 0.8, 1)];
            let w = [0.55, 10.0];
            let (mut num, mut den) = (0.0, 0.0);
            for (a, b, y) in rows {
                let nll = lse(a, b) - if y == 0 { a } else { b };
                num += w[y] * nll;
                den += w[y];
            }
            num / den
        };
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "{loss} vs {expected}"
        );
        assert!(weighted_cross_entropy(&logits, &[None; 4], [1.0, 1.0])?.is_none());
        Ok(())
    }
}
