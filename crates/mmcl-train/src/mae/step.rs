//! One optimisation step of the masked autoencoder.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use mmcl_ecg::mae::MaskedAutoencoder;
use mmcl_losses::mae::{MaeLoss, MaeMetrics};
use mmcl_nn::ParamStore;
use mmcl_nn::optim::{Adam, AdamConfig, GradAccumulator, clip_grad_norm};
use mmcl_nn::precision::Precision;
use mmcl_nn::rng::SharedRng;

use super::masking_seed;
use crate::Result;
use crate::checkpoint::{self, CheckpointFile, OPTIMIZER_FILE};
use crate::config::MaeTrainConfig;

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
        })
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
    /// and is returned for the caller to stop on.
    ///
    /// # Shapes
    /// `ecgs`: `[B, 1, leads, T]` as the model's `img_size` (`B ≥ 2` when `cos_weight > 0`).
    pub fn train_batch(&mut self, ecgs: &Tensor, lr: f64) -> Result<MaeStepReport> {
        let _precision = self.precision.enter();
        let out = self
            .objective
            .forward_random(&self.model, ecgs, &self.rng, true)?;
        let metrics = out.metrics()?;
        let mut report = MaeStepReport {
            metrics,
            stepped: false,
            grad_norm: None,
        };
        if !metrics.total.is_finite() {
            return Ok(report);
        }
        let grads = out.total.backward()?;
        drop(out);
        if self.accumulate == 1 {
            report.grad_norm = self.apply_gradients(grads, lr)?;
            report.stepped = true;
        } else {
            self.accumulator.add(&self.vars, &grads)?;
            drop(grads);
            if self.accumulator.micro_batches() >= self.accumulate {
                let grads = self.accumulator.take(&self.vars, self.accumulate as f64)?;
                report.grad_norm = self.apply_gradients(grads, lr)?;
                report.stepped = true;
            }
        }
        Ok(report)
    }

    /// Steps the optimiser with `grads` (clipped first when configured). Returns the norm when
    /// clipping.
    pub fn apply_gradients(&mut self, mut grads: GradStore, lr: f64) -> Result<Option<f64>> {
        let norm = match self.gradient_clip_val {
            Some(max) => Some(clip_grad_norm(&self.vars, &mut grads, max)?),
            None => None,
        };
        self.optimizer.step(&grads, lr)?;
        Ok(norm)
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
