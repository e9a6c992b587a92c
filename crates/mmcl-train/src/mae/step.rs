//! One optimisation step of the masked autoencoder.

use std::ops::Range;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use mmcl_ecg::mae::{MaskedAutoencoder, Masking};
use mmcl_losses::mae::{MaeLoss, MaeLossOutput, MaeMetrics};
use mmcl_nn::ParamStore;
use mmcl_nn::distributed::{GradSync, batch_shard};
use mmcl_nn::optim::{Adam, AdamConfig, GradAccumulator};
use mmcl_nn::precision::Precision;
use mmcl_nn::rng::SharedRng;

use super::masking_seed;
use crate::Result;
use crate::checkpoint::{self, CheckpointFile, OPTIMIZER_FILE};
use crate::config::MaeTrainConfig;
use crate::engine::{Replicas, accumulate, side_by_side, step_on_group_mean};

/// What one training batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct MaeStepReport {
    /// The objective's values (possibly non-finite: then nothing was updated).
    pub metrics: MaeMetrics,
    /// Whether the optimiser stepped (false while accumulating).
    pub stepped: bool,
    /// The gradient norm before clipping, when clipping is configured and the optimiser stepped.
    pub grad_norm: Option<f64>,
}

/// The optimisation of the masked autoencoder: objective, AdamW, the masking stream, gradient
/// accumulation and clipping, applied batch by batch. Used by [`MaeTrainer`](super::MaeTrainer).
///
/// In a data-parallel group ([`MaeStep::join_group`]) every replica trains on its own rows of
/// the global batch ([`MaeStep::train_rows`] from a sharded loader, or [`MaeStep::train_batch`]
/// cutting them from the global batch) and draws the same maskings for all of it; the
/// gradients are averaged over the group before clipping and the optimiser step. With
/// `cos_weight = 0` this equals one process on the global batch (up to rounding); the SimSiam
/// heads' BatchNorm normalises each replica's share by itself (as PyTorch DDP without
/// SyncBatchNorm does), so with `cos_weight > 0` the replicas stay identical to each other but
/// differ slightly from one process — unless `sync_batch_norm` normalises over the global batch.
#[derive(Debug)]
pub struct MaeStep {
    model: MaskedAutoencoder,
    store: ParamStore,
    objective: MaeLoss,
    optimizer: Adam,
    vars: Vec<(String, Var)>,
    accumulator: GradAccumulator,
    accumulate: usize,
    gradient_clip_val: Option<f64>,
    rng: SharedRng,
    precision: Precision,
    group: Replicas,
    /// Whether the SimSiam heads' BatchNorm normalises over the group's global batch.
    sync_batch_norm: bool,
}

impl MaeStep {
    /// The step of `cfg` around `model` (whose variables live in `store`): AdamW over the
    /// reference's two groups ([`MaskedAutoencoder::param_groups`]), maskings drawn from a
    /// stream seeded by `cfg.seed`.
    pub fn new(model: MaskedAutoencoder, store: ParamStore, cfg: &MaeTrainConfig) -> Result<Self> {
        let groups = MaskedAutoencoder::param_groups(&store, cfg.weight_decay);
        let vars: Vec<(String, Var)> = groups.iter().flat_map(|g| g.vars.clone()).collect();
        let adam = AdamConfig {
            betas: cfg.betas,
            eps: cfg.eps,
            decoupled_weight_decay: true,
        };
        Ok(Self {
            objective: MaeLoss::new(cfg.loss)?,
            optimizer: Adam::new(groups, adam)?,
            model,
            store,
            vars,
            accumulator: GradAccumulator::new(),
            accumulate: cfg.accumulate_grad_batches.max(1),
            gradient_clip_val: cfg.gradient_clip_val,
            rng: SharedRng::new(masking_seed(cfg.seed)),
            precision: cfg.precision,
            group: Replicas::single(),
            sync_batch_norm: cfg.sync_batch_norm,
        })
    }

    /// Trains as one replica of `comm` from now on: every variable and buffer is set to rank
    /// 0's values, and [`Self::train_batch`] then takes the global batch.
    pub fn join_group(&mut self, comm: Box<dyn GradSync>) -> Result<()> {
        comm.broadcast_vars(&self.store.named_vars(), 0)?;
        self.group = Replicas::new(comm);
        Ok(())
    }

    /// The data-parallel group (a group of one unless [`Self::join_group`] was called).
    pub fn group(&self) -> &dyn GradSync {
        self.group.comm()
    }

    /// The model.
    pub fn model(&self) -> &MaskedAutoencoder {
        &self.model
    }

    /// The store holding the model's variables and buffers.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The objective.
    pub fn objective(&self) -> &MaeLoss {
        &self.objective
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &Adam {
        &self.optimizer
    }

    /// The masking stream (its state is part of a checkpoint).
    pub fn rng(&self) -> &SharedRng {
        &self.rng
    }

    /// Whether gradients of earlier batches wait for an optimiser step.
    pub fn has_pending_gradients(&self) -> bool {
        self.accumulator.micro_batches() > 0
    }

    /// Drops the gradients of an incomplete accumulation group.
    pub fn discard_pending(&mut self) {
        self.accumulator = GradAccumulator::new();
    }

    /// Trains on one batch of ECGs with learning rate `lr`. A non-finite loss updates nothing
    /// and is returned for the caller to stop on. In a group of several replicas `ecgs` is the
    /// global batch (the same on every replica), and the metrics are the replicas' means.
    ///
    /// # Shapes
    /// `ecgs`: `[B, 1, leads, T]` as the model's `img_size` (`B ≥ 2` per replica when
    /// `cos_weight > 0`; `B` divisible by the group's size).
    pub fn train_batch(&mut self, ecgs: &Tensor, lr: f64) -> Result<MaeStepReport> {
        let comm = self.group();
        let b = ecgs.dim(0)?;
        let rows = batch_shard(b, comm.rank(), comm.world_size())?;
        let own = ecgs.narrow(0, rows.start, rows.len())?;
        self.train_rows(&own, rows, b, lr)
    }

    /// [`Self::train_batch`] given only this replica's rows of the global batch: `ecgs` are
    /// rows `rows` of a global batch of `global_size` (as a sharded loader yields them).
    ///
    /// # Shapes
    /// `ecgs`: `[rows.len(), 1, leads, T]`.
    pub fn train_rows(
        &mut self,
        ecgs: &Tensor,
        rows: Range<usize>,
        global_size: usize,
        lr: f64,
    ) -> Result<MaeStepReport> {
        let _precision = self.precision.enter();
        let (metrics, grads) = self.group.batch_statistics(self.sync_batch_norm, || {
            if self.group().world_size() == 1 && side_by_side() {
                let (out, grads) =
                    (self.objective).forward_backward_random(&self.model, ecgs, &self.rng)?;
                let metrics = out.metrics()?;
                let grads = metrics.total.is_finite().then_some(grads);
                return Ok((metrics, grads));
            }
            let out = self.forward_rows(ecgs, rows, global_size)?;
            let metrics = self.group_mean(out.metrics()?)?;
            if !metrics.total.is_finite() {
                return Ok::<_, crate::Error>((metrics, None));
            }
            Ok((metrics, Some(out.total.backward()?)))
        })?;
        let mut report = MaeStepReport {
            metrics,
            stepped: false,
            grad_norm: None,
        };
        let Some(grads) = grads else {
            return Ok(report);
        };
        if let Some(grads) = accumulate(&mut self.accumulator, &self.vars, grads, self.accumulate)?
        {
            report.grad_norm = self.apply_gradients(grads, lr)?;
            report.stepped = true;
        }
        Ok(report)
    }

    /// The objective on rows `rows` (`ecgs`) of a global batch of `global_size`, with the
    /// maskings drawn for the whole batch from the masking stream (as one process draws them,
    /// so that the stream and every row's masks are the same whatever the group's size).
    fn forward_rows(
        &self,
        ecgs: &Tensor,
        rows: Range<usize>,
        global_size: usize,
    ) -> Result<MaeLossOutput> {
        if rows.len() == global_size {
            return Ok(self
                .objective
                .forward_random(&self.model, ecgs, &self.rng, true)?);
        }
        let cfg = self.objective.config();
        let l = self.model.config().num_patches();
        let first = Masking::random(&self.rng, global_size, l, cfg.mask_ratio)?;
        let second = if cfg.cos_weight > 0.0 {
            Some(Masking::random(&self.rng, global_size, l, cfg.mask_ratio)?)
        } else {
            None
        };
        let first = first.rows(rows.clone())?;
        let second = second.map(|m| m.rows(rows)).transpose()?;
        Ok(self
            .objective
            .forward(&self.model, ecgs, &first, second.as_ref(), true)?)
    }

    /// The mean of every replica's `local` metrics (`local` itself in a group of one), so that
    /// every replica reports, and stops on, the same values.
    fn group_mean(&self, local: MaeMetrics) -> Result<MaeMetrics> {
        let comm = self.group();
        let world = comm.world_size();
        if world == 1 {
            return Ok(local);
        }
        let nan = f64::NAN;
        let values = [
            local.total,
            local.loss,
            local.mse,
            local.ncc,
            local.loss_cos.unwrap_or(nan),
            local.cos_embed.unwrap_or(nan),
            local.z_std.unwrap_or(nan),
        ];
        let row = Tensor::new(&values, &candle_core::Device::Cpu)?.reshape((1, values.len()))?;
        let all = comm.all_gather(&row)?; // [world, 7]
        let mean = all.to_dtype(DType::F64)?.mean(0)?.to_vec1::<f64>()?;
        let opt = |v: Option<f64>, m: f64| v.map(|_| m);
        Ok(MaeMetrics {
            total: mean[0],
            loss: mean[1],
            mse: mean[2],
            ncc: mean[3],
            loss_cos: opt(local.loss_cos, mean[4]),
            cos_embed: opt(local.cos_embed, mean[5]),
            z_std: opt(local.z_std, mean[6]),
        })
    }

    /// Steps the optimiser with `grads`, averaged over the data-parallel group and then
    /// clipped when configured (after the reduction, so that every replica clips alike).
    /// Returns the norm when clipping.
    pub fn apply_gradients(&mut self, grads: GradStore, lr: f64) -> Result<Option<f64>> {
        step_on_group_mean(
            self.group.comm(),
            &mut self.optimizer,
            &self.vars,
            grads,
            self.gradient_clip_val,
            lr,
        )
    }

    /// The objective in evaluation mode on `ecgs` with maskings drawn from `rng`.
    pub fn evaluate(&self, ecgs: &Tensor, rng: &SharedRng) -> Result<MaeMetrics> {
        let _precision = self.precision.enter();
        let out = self
            .objective
            .forward_random(&self.model, ecgs, rng, false)?;
        Ok(out.metrics()?)
    }

    /// The optimiser state (`exp_avg.<key>`, `exp_avg_sq.<key>` under the mae repo's keys, the
    /// step count as metadata).
    pub fn optimizer_file(&self) -> Result<CheckpointFile> {
        let (tensors, metadata) = self.optimizer.state()?;
        Ok(CheckpointFile { tensors, metadata })
    }

    /// Restores the optimiser state of a checkpoint directory.
    pub fn load_optimizer(&mut self, dir: &Path) -> Result<()> {
        let sd = checkpoint::read_file(dir, OPTIMIZER_FILE)?;
        let steps = checkpoint::optimizer_steps(dir, OPTIMIZER_FILE)?;
        self.optimizer.load_state(&sd, steps)?;
        Ok(())
    }
}
