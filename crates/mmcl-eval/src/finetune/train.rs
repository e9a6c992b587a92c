//! Fine-tuning in the shared training loop ([`mmcl_train::engine`]): one epoch of AdamW steps,
//! validation on the monitored metric, the best weights kept in memory.

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use mmcl_data::loader::Loader;
use mmcl_nn::StateDict;
use mmcl_nn::distributed::GradSync;
use mmcl_nn::optim::Adam;
use mmcl_nn::schedule::WarmupCosine;
use mmcl_train::Progress;
use mmcl_train::engine::{EpochReport, LoopState, TrainStep, ValReport, record};

use super::data::{Data, Objective, batch_targets, loss_of, monitored_value, run_split};
use super::{EpochRecord, FinetuneConfig, FinetuneModel};
use crate::{Error, Result};

/// The model side of a fine-tuning run.
pub(super) struct FinetuneStep<'a> {
    pub(super) cfg: &'a FinetuneConfig,
    pub(super) data: &'a Data,
    pub(super) model: &'a FinetuneModel,
    /// The data-parallel group (each replica's training loader yields its rows of every global
    /// batch).
    pub(super) comm: &'a dyn GradSync,
    pub(super) objective: Objective,
    pub(super) columns: &'a Tensor,
    pub(super) adam: Adam,
    pub(super) trainable: Vec<(String, Var)>,
    pub(super) schedule: WarmupCosine,
    pub(super) monitor: String,
    pub(super) higher_is_better: bool,
    /// The best epoch, its metric and its weights.
    pub(super) best: Option<(usize, f64, StateDict)>,
    pub(super) history: Vec<EpochRecord>,
    /// The last epoch's mean training loss and learning rate.
    pub(super) train: (f64, f64),
    /// The last validation's loss and monitored metric.
    pub(super) val: (f64, f64),
}

impl FinetuneStep<'_> {
    /// The loss of the global batch and this replica's part of its gradient, given this
    /// replica's rows of it (`ecg`, `targets`, `mask`; the sharded loader's shares may differ
    /// by one, or be empty). Each replica weights its masked mean by its share of the global
    /// batch's known targets, times the group's size `N`: the mean of the replicas' gradients
    /// is then the gradient of the global masked mean, as one process computes it. The loss is
    /// the replicas' weighted sum, the same on every replica, so that all of them stop together
    /// on a non-finite one.
    fn own_share(&self, ecg: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<(f64, GradStore)> {
        let smoothing = self.cfg.smoothing;
        let world = self.comm.world_size();
        if world == 1 {
            let logits = self.model.forward_t(ecg, true)?;
            let loss = loss_of(self.objective, &logits, targets, mask, smoothing)?;
            return Ok((loss.to_scalar::<f32>()? as f64, loss.backward()?));
        }
        let known = mask.sum_all()?.to_scalar::<f32>()? as f64;
        let loss = if ecg.dim(0)? == 0 {
            None
        } else {
            let logits = self.model.forward_t(ecg, true)?;
            Some(loss_of(self.objective, &logits, targets, mask, smoothing)?)
        };
        let mean = match &loss {
            Some(l) => l.to_scalar::<f32>()? as f64,
            None => 0.0,
        };
        // Every replica's count of known targets and its sum of losses over them.
        let parts = Tensor::new(&[[known as f32, (known * mean) as f32]], &Device::Cpu)?;
        let sums = self.comm.all_gather(&parts)?.sum(0)?.to_vec1::<f32>()?;
        let known_global = f64::from(sums[0]).max(1.0);
        let grads = match loss {
            Some(loss) if known > 0.0 => {
                (loss * (known / known_global * world as f64))?.backward()?
            }
            _ => GradStore::default(),
        };
        Ok((f64::from(sums[1]) / known_global, grads))
    }

    /// The validation loss and monitored metric of the current weights.
    pub(super) fn validate(&self, loader: &Arc<Loader>) -> Result<(f64, f64)> {
        let val = run_split(
            self.model,
            loader,
            self.data,
            self.cfg,
            self.objective,
            self.columns,
        )?;
        let metric = monitored_value(&val, self.cfg, &self.data.names, &self.monitor)?;
        Ok((val.loss, metric))
    }
}

impl TrainStep for FinetuneStep<'_> {
    type Error = Error;

    fn train_epoch(
        &mut self,
        epoch: usize,
        _steps_before: u64,
        progress: &mut dyn Progress,
    ) -> Result<EpochReport> {
        let cfg = self.cfg;
        let steps = self.data.train.num_batches();
        progress.start_phase(epoch, "train", steps);
        let (mut loss_sum, mut lr_now) = (0.0, 0.0);
        for (step, batch) in self.data.train.epoch(epoch as u64, 0).enumerate() {
            let batch = batch?;
            let ecg = batch
                .ecg
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
            lr_now = self.schedule.lr(epoch, step, steps);
            let (targets, mask) = batch_targets(&batch, cfg.task, self.columns)?;
            let (value, mut grads) = self.own_share(ecg, &targets, &mask)?;
            if !value.is_finite() {
                progress.finish_phase();
                return Err(Error::InvalidInput(format!(
                    "the training loss became {value} at epoch {epoch}, step {step}; lower the \
                     learning rate or enable clip_grad"
                )));
            }
            self.comm.all_reduce_mean(&self.trainable, &mut grads)?;
            if let Some(max_norm) = cfg.clip_grad {
                mmcl_nn::optim::clip_grad_norm(&self.trainable, &mut grads, max_norm)?;
            }
            self.adam.step(&grads, lr_now)?;
            loss_sum += value;
            progress.batch(value, batch.global_size);
        }
        progress.finish_phase();
        let train_loss = loss_sum / steps.max(1) as f64;
        self.train = (train_loss, lr_now);
        Ok(EpochReport {
            steps: steps as u64,
            lr: lr_now,
            record: record(&[("loss", train_loss), ("lr", lr_now)]),
            summary: String::new(),
        })
    }

    fn validate_epoch(
        &mut self,
        _epoch: usize,
        _progress: &mut dyn Progress,
    ) -> Result<Option<ValReport>> {
        let (loss, metric) = self.validate(&self.data.val)?;
        self.val = (loss, metric);
        Ok(Some(ValReport {
            monitored: metric,
            record: vec![("loss".into(), loss), (self.monitor.clone(), metric)],
            summary: String::new(),
        }))
    }

    /// A NaN metric is never best; the first epoch stands in when no epoch had a number.
    fn improves(&self, value: f64, best: Option<f64>) -> bool {
        let better = |a: f64, b: f64| {
            if self.higher_is_better { a > b } else { a < b }
        };
        match best {
            None => true,
            Some(b) => !value.is_nan() && (b.is_nan() || better(value, b)),
        }
    }

    /// Keeps the weights of a best epoch and records the epoch in the history.
    fn end_epoch(&mut self, state: &LoopState, improved: bool) -> Result<()> {
        let epoch = state.epoch - 1;
        let (val_loss, val_metric) = self.val;
        if improved {
            self.best = Some((epoch, val_metric, self.model.state_dict()?));
        }
        let (train_loss, lr) = self.train;
        self.history.push(EpochRecord {
            epoch,
            train_loss,
            lr,
            val_loss,
            val_metric,
        });
        Ok(())
    }

    fn epoch_summary(
        &self,
        epoch: usize,
        _train: &EpochReport,
        val: Option<(&ValReport, bool)>,
    ) -> String {
        let best = val.is_some_and(|(_, improved)| improved);
        let (loss, metric) = self.val;
        format!(
            "epoch {}/{}: val {} {metric:.4}, loss {loss:.4}{}",
            epoch + 1,
            self.cfg.epochs,
            self.monitor,
            if best { " (best)" } else { "" }
        )
    }
}
