//! One optimisation step of the multimodal model: the contrastive update and the online
//! classifier's.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use mmcl_losses::classification::weighted_cross_entropy;
use mmcl_losses::clip::{ClipLoss, ClipOutput};
use mmcl_nn::StateDict;
use mmcl_nn::distributed::{GradSync, SingleProcess, batch_shard, gather_with_grad};
use mmcl_nn::optim::{Adam, AdamConfig, GradAccumulator, ParamGroup};
use mmcl_nn::params::is_buffer;
use mmcl_nn::precision::Precision;

use crate::checkpoint::{self, CLASSIFIER_OPTIMIZER_FILE, CheckpointFile, OPTIMIZER_FILE};
use crate::config::{MmclConfig, OnlineClassifier};
use crate::engine::{Replicas, accumulate, side_by_side, step_on_group_mean};
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

/// Retrieval top-1 accuracy within the batch of `out`, and top-5 for batches of more than 5
/// (as the reference): the training step and validation report the same measures.
pub(super) fn retrieval_accuracy(out: &ClipOutput) -> Result<(f64, Option<f64>)> {
    let accuracy = |k| mmcl_losses::retrieval::top_k_accuracy(&out.logits, &out.labels, k);
    let top1 = accuracy(1)?;
    let top5 = if out.logits.dim(0)? > 5 {
        Some(accuracy(5)?)
    } else {
        None
    };
    Ok((top1, top5))
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
    contrastive_loss_in_group(
        model,
        clip,
        images,
        ecgs,
        train,
        frozen_imaging,
        &SingleProcess,
    )
}

/// [`contrastive_loss`] over the global batch of a data-parallel group: `images` and `ecgs` are
/// this replica's rows; their projections are gathered from every replica
/// ([`gather_with_grad`]), so that each pair is contrasted against every other pair of the global
/// batch, as one process contrasts them. The loss and logits are the global batch's (the same
/// on every replica); the gradient flows through this replica's rows only (see
/// [`gather_with_grad`] for how the replicas' gradients make the whole).
///
/// # Shapes
/// `images` `[b, C, H, W]`, `ecgs` `[b, 1, leads, T]` → loss, logits `[world·b, world·b]`,
/// labels `[world·b]`.
pub fn contrastive_loss_in_group(
    model: &MmclModel,
    clip: &ClipLoss,
    images: &Tensor,
    ecgs: &Tensor,
    train: bool,
    frozen_imaging: bool,
    comm: &dyn GradSync,
) -> Result<ClipOutput> {
    let mut image_features = model.image_features(images, train && !frozen_imaging)?; // [b, D_img]
    if frozen_imaging {
        image_features = image_features.detach();
    }
    let z_imaging = model.project_imaging(&image_features)?; // [b, P]
    let z_ecg = model.forward_ecg(ecgs, train)?; // [b, P]
    let z_imaging = gather_with_grad(comm, &z_imaging)?; // [world·b, P]
    let z_ecg = gather_with_grad(comm, &z_ecg)?; // [world·b, P]
    Ok(clip.forward(&z_imaging, &z_ecg)?)
}

/// [`contrastive_loss`] in training mode with the gradients of every trainable variable, the
/// two towers run side by side: the image tower's forward and backward pass on one of rayon's
/// threads while the ECG tower's run on another, each thread taking work from the other's
/// products when its own tower waits (at the joins of its parallel products, or while candle's
/// backward pass bookkeeps on one thread). The gradients are the same, bit for bit, as those of
/// `contrastive_loss(..).loss.backward()`: the loss is differentiated first down to copies of
/// the two projections, and each tower then from its projection's gradient, in the same order.
///
/// Returns the loss output and, when the loss is finite, the gradients. One process only: the
/// towers run on rayon's threads, which see neither the calling thread's data-parallel group
/// nor its SyncBatchNorm; the [`Precision`] the calling thread entered is carried over. Off
/// the CPU the towers run one after the other (a GPU queues their work on its stream).
///
/// # Shapes
/// `images` `[B, C, H, W]`, `ecgs` `[B, 1, leads, T]` → loss, logits `[B, B]`, labels `[B]`.
pub fn contrastive_gradients(
    model: &MmclModel,
    clip: &ClipLoss,
    images: &Tensor,
    ecgs: &Tensor,
    frozen_imaging: bool,
) -> Result<(ClipOutput, Option<GradStore>)> {
    if !images.device().is_cpu() {
        // A GPU queues both towers' work on its stream from one thread.
        let out = contrastive_loss(model, clip, images, ecgs, true, frozen_imaging)?;
        if !out.loss.to_scalar::<f32>()?.is_finite() {
            return Ok((out, None));
        }
        let grads = out.loss.backward()?;
        return Ok((out, Some(grads)));
    }
    let precision = mmcl_nn::precision::matmul_precision();
    let (z_imaging, z_ecg) = rayon::join(
        || -> Result<Tensor> {
            let _precision = precision.enter();
            let mut features = model.image_features(images, !frozen_imaging)?; // [B, D_img]
            if frozen_imaging {
                features = features.detach();
            }
            model.project_imaging(&features) // [B, P]
        },
        || -> Result<Tensor> {
            let _precision = precision.enter();
            model.forward_ecg(ecgs, true) // [B, P]
        },
    );
    let (z_imaging, z_ecg) = (z_imaging?, z_ecg?);
    // The loss over copies of the projections, so that its backward pass stops there.
    let end_imaging = Var::from_tensor(&z_imaging.detach())?;
    let end_ecg = Var::from_tensor(&z_ecg.detach())?;
    let out = clip.forward(end_imaging.as_tensor(), end_ecg.as_tensor())?;
    if !out.loss.to_scalar::<f32>()?.is_finite() {
        return Ok((out, None));
    }
    let upstream = out.loss.backward()?;
    // The backward pass of `Σ z·g` hands each tower `g` itself (a product with ones), then runs
    // on as the whole graph's backward pass would below the projection.
    let tower = |z: &Tensor, end: &Var| -> Result<GradStore> {
        let _precision = precision.enter();
        let g = upstream.get(end.as_tensor()).ok_or_else(|| {
            Error::InvalidInput("the contrastive loss does not depend on a projection".into())
        })?;
        Ok((z * g)?.sum_all()?.backward()?)
    };
    let (grads, grads_ecg) = rayon::join(
        || tower(&z_imaging, &end_imaging),
        || tower(&z_ecg, &end_ecg),
    );
    let mut grads = grads?;
    // The towers share no variable: this inserts the ECG tower's gradients.
    grads.extend(grads_ecg?)?;
    Ok((out, Some(grads)))
}

/// The optimisation of the multimodal model: the two optimisers, gradient accumulation and
/// clipping, applied batch by batch. Used by [`MmclTrainer`](super::MmclTrainer) and the benchmarks.
///
/// In a data-parallel group ([`MmclStep::join_group`]) every replica encodes its own rows of
/// the global batch (given them by a sharded loader, [`MmclStep::train_rows`], or cutting them
/// from the global batch, [`MmclStep::train_batch`]); the CLIP loss contrasts the gathered projections
/// of the whole global batch ([`contrastive_loss_in_group`]), the gradients are summed over the
/// replicas before clipping and the optimiser step, and the online classifier trains on the
/// gathered (detached) features, the same step on every replica. With a frozen image tower (or
/// none in training mode) and no drop-path this equals one process on the global batch up to
/// rounding. A trainable image tower normalises each replica's share with that share's
/// BatchNorm statistics, as PyTorch DDP without SyncBatchNorm does, and its running statistics
/// are rank 0's after every step (DDP's `broadcast_buffers`), so the replicas stay identical;
/// with `sync_batch_norm` it normalises over the global batch, as one process does.
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
    group: Replicas,
    /// Whether BatchNorm normalises over the group's global batch (`SyncBatchNorm`).
    sync_batch_norm: bool,
    /// The BatchNorm buffers set to rank 0's after every step (none in a group of one).
    shared_buffers: Vec<(String, Var)>,
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
            group: Replicas::single(),
            sync_batch_norm: cfg.sync_batch_norm,
            shared_buffers: Vec::new(),
        })
    }

    /// Trains as one replica of `comm` from now on: every variable and buffer is set to rank
    /// 0's values, and [`Self::train_batch`] then takes the global batch.
    pub fn join_group(&mut self, comm: Box<dyn GradSync>) -> Result<()> {
        let vars = self.model.store().named_vars();
        comm.broadcast_vars(&vars, 0)?;
        if comm.world_size() > 1 {
            self.shared_buffers = vars.into_iter().filter(|(n, _)| is_buffer(n)).collect();
        }
        self.group = Replicas::new(comm);
        Ok(())
    }

    /// The data-parallel group (a group of one unless [`Self::join_group`] was called).
    pub fn group(&self) -> &dyn GradSync {
        self.group.comm()
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
    /// nothing and is returned for the caller to stop on. In a group of several replicas
    /// `batch` is the global batch (the same on every replica; its size divisible by the
    /// group's), and the report is the global batch's, the same on every replica.
    pub fn train_batch(&mut self, batch: &MmclBatch, lr: f64) -> Result<StepReport> {
        let local = self.own_rows(batch)?;
        self.train_rows(&local, lr)
    }

    /// [`Self::train_batch`] given only this replica's rows of the global batch (as a sharded
    /// loader yields them; every replica's share of the same size), targets included.
    pub fn train_rows(&mut self, local: &MmclBatch, lr: f64) -> Result<StepReport> {
        let _precision = self.precision.enter();
        let world = self.group.comm().world_size();
        let (out, grads) = self.group.batch_statistics(self.sync_batch_norm, || {
            if world == 1 && side_by_side() {
                let (images, ecgs) = (&local.images, &local.ecgs);
                return contrastive_gradients(
                    &self.model,
                    &self.clip,
                    images,
                    ecgs,
                    self.frozen_imaging,
                );
            }
            let out = contrastive_loss_in_group(
                &self.model,
                &self.clip,
                &local.images,
                &local.ecgs,
                true,
                self.frozen_imaging,
                self.group.comm(),
            )?;
            if !out.loss.to_scalar::<f32>()?.is_finite() {
                return Ok::<_, Error>((out, None));
            }
            // Each replica's backward covers the gradient through its own rows; the whole is
            // their sum, which the group's mean of `world`× the loss gives.
            let grads = if world > 1 {
                (&out.loss * world as f64)?.backward()?
            } else {
                out.loss.backward()?
            };
            Ok((out, Some(grads)))
        })?;
        let loss = out.loss.to_scalar::<f32>()? as f64;
        let mut report = StepReport {
            loss,
            top1: 0.0,
            top5: None,
            stepped: false,
            grad_norm: None,
            classifier_loss: None,
        };
        let Some(grads) = grads else {
            return Ok(report);
        };
        (report.top1, report.top5) = retrieval_accuracy(&out)?;
        drop(out);
        // The classifier's group completes in `train_classifier` below, on this same batch
        // (stepping it with the contrastive group would cut its group one batch short).
        if let Some(grads) = accumulate(
            &mut self.accumulator,
            &self.contrastive_vars,
            grads,
            self.accumulate,
        )? {
            report.grad_norm = self.apply_gradients(grads, lr)?;
            report.stepped = true;
        }
        report.classifier_loss = self.train_classifier(local)?;
        self.share_buffers()?;
        Ok(report)
    }

    /// This replica's rows of the global `batch` (the batch itself in a group of one).
    fn own_rows(&self, batch: &MmclBatch) -> Result<MmclBatch> {
        let comm = self.group.comm();
        if comm.world_size() == 1 {
            return Ok(batch.clone());
        }
        let rows = batch_shard(batch.images.dim(0)?, comm.rank(), comm.world_size())?;
        let take = |t: &Tensor| t.narrow(0, rows.start, rows.len());
        Ok(MmclBatch {
            images: take(&batch.images)?,
            ecgs: take(&batch.ecgs)?,
            images_orig: batch.images_orig.as_ref().map(take).transpose()?,
            ecgs_orig: batch.ecgs_orig.as_ref().map(take).transpose()?,
            targets: batch.targets.as_ref().map(|t| t[rows.clone()].to_vec()),
        })
    }

    /// The global batch's classifier targets from every replica's `local` ones (rank order).
    fn gather_targets(&self, local: &ClassifierTargets) -> Result<ClassifierTargets> {
        let comm = self.group.comm();
        if comm.world_size() == 1 {
            return Ok(local.clone());
        }
        // Unknown targets travel as -1.
        let codes: Vec<f32> = local.iter().map(|t| t.map_or(-1.0, |c| c as f32)).collect();
        let codes = Tensor::from_vec(codes, (local.len(), 1), &candle_core::Device::Cpu)?;
        let all = comm.all_gather(&codes)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(all
            .into_iter()
            .map(|v| (v >= 0.0).then_some(v as u32))
            .collect())
    }

    /// Sets every BatchNorm running statistic to rank 0's (each replica updated its own from its
    /// share of the batch), so that the replicas validate and checkpoint alike.
    fn share_buffers(&self) -> Result<()> {
        if !self.shared_buffers.is_empty() {
            self.group.comm().broadcast_vars(&self.shared_buffers, 0)?;
        }
        Ok(())
    }

    /// Steps the contrastive optimiser and the online classifier's with the gradients each has
    /// accumulated so far (divided by the accumulation factor, as Lightning does at the end of
    /// an epoch). Returns the contrastive gradient norm when clipping.
    pub fn flush(&mut self, lr: f64) -> Result<Option<f64>> {
        let mut norm = None;
        if self.accumulator.micro_batches() > 0 {
            let grads = self
                .accumulator
                .take(&self.contrastive_vars, self.accumulate as f64)?;
            norm = self.apply_gradients(grads, lr)?;
        }
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

    /// Steps the contrastive optimiser with `grads`, averaged over the data-parallel group and
    /// then clipped when configured, e.g. gradients of [`contrastive_loss`] computed by the
    /// caller. Returns the norm when clipping.
    pub fn apply_gradients(&mut self, grads: GradStore, lr: f64) -> Result<Option<f64>> {
        step_on_group_mean(
            self.group.comm(),
            &mut self.optimizer,
            &self.contrastive_vars,
            grads,
            self.gradient_clip_val,
            lr,
        )
    }

    /// One step of the online classifier on the detached features of the original views of
    /// this replica's rows (`local`) and their targets, both gathered over the group: every
    /// replica takes the same step, as one process on the global batch.
    fn train_classifier(&mut self, local: &MmclBatch) -> Result<Option<f64>> {
        if self.classifier_optimizer.is_none() {
            return Ok(None);
        }
        let Some(targets) = &local.targets else {
            return Ok(None);
        };
        let targets = &self.gather_targets(targets)?;
        let features =
            self.group
                .batch_statistics(self.sync_batch_norm, || -> Result<Tensor> {
                    Ok(match self.model.architecture().classifier {
                        OnlineClassifier::Image => {
                            let images = local.images_orig.as_ref().unwrap_or(&local.images);
                            self.model.image_features(images, true)?
                        }
                        _ => {
                            let ecgs = local.ecgs_orig.as_ref().unwrap_or(&local.ecgs);
                            self.model.ecg_features(ecgs, true)?
                        }
                    })
                })?;
        let features = self.group.comm().all_gather(&features)?; // [world·b, D], detached
        let logits = self.model.classifier_logits(&features)?;
        let Some(loss) = weighted_cross_entropy(&logits, targets, self.class_weights)? else {
            return Ok(None);
        };
        let value = loss.to_scalar::<f32>()? as f64;
        let grads = loss.backward()?;
        let Some(opt) = self.classifier_optimizer.as_mut() else {
            return Ok(None);
        };
        if let Some(grads) = accumulate(
            &mut self.classifier_accumulator,
            &self.classifier_vars,
            grads,
            self.accumulate,
        )? {
            opt.step(&grads, self.lr_classifier)?;
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
