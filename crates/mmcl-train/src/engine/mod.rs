//! The training loop of every stage (MAE and multimodal pre-training, fine-tuning) and its
//! components.
//!
//! A stage implements [`TrainStep`]: it trains one epoch over its data (batches, learning-rate
//! schedule, optimiser), validates, and says what happens when an epoch is over (checkpoints,
//! keeping the best weights). [`EpochLoop`] owns what is common: the epoch and step counters,
//! the validation schedule, the best epoch so far, the run log ([`RunLogWriter`]: one `train`
//! and one `val` record per epoch), early stopping ([`EarlyStopping`]) and progress reports
//! ([`Progress`]). [`Trainer`] adds what the two pre-training stages share: run directories,
//! crash-safe checkpoints ([`crate::checkpoint`]) and exact resumption.

mod data;
mod early_stopping;
mod gradients;
mod replicas;
mod trainer;

pub(crate) use data::{EpochSteps, StageData, open_new_run_cache, open_resumed_cache};
pub use early_stopping::EarlyStopping;
pub(crate) use gradients::{accumulate, step_on_group_mean};
pub(crate) use replicas::{Replicas, check_even_batches};
pub(crate) use trainer::model_file;

/// Whether a single process's training steps run their independent parts side by side on
/// rayon's threads (the MMCL step's two towers, the MAE step's two views; the same gradients,
/// bit for bit): unless `MMCL_SIDE_BY_SIDE` is `0`; read once.
pub(crate) fn side_by_side() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| !std::env::var("MMCL_SIDE_BY_SIDE").is_ok_and(|v| v.trim() == "0"))
}
pub use trainer::{CheckpointFiles, EpochPlan, Stage, Trainer};

use mmcl_core::runlog::RunLogWriter;

use crate::progress::Progress;

/// What a training epoch reports to the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Optimiser steps taken in the epoch.
    pub steps: u64,
    /// The learning rate the epoch ended with (before per-group scaling).
    pub lr: f64,
    /// The epoch's `train` record for the run log.
    pub record: Vec<(String, f64)>,
    /// The epoch's summary line for the user (the validation's part is appended).
    pub summary: String,
}

/// What a validation reports to the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct ValReport {
    /// The value that selects the best epoch and drives early stopping (the validation loss,
    /// or fine-tuning's monitored metric).
    pub monitored: f64,
    /// The `val` record for the run log.
    pub record: Vec<(String, f64)>,
    /// The validation's part of the epoch's summary line.
    pub summary: String,
}

/// The counters of a run: what a checkpoint records and a resumed run starts from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoopState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// The best monitored validation value so far and its epoch.
    pub best: Option<(f64, usize)>,
    /// The learning rate of the last epoch.
    pub lr: f64,
}

/// The model side of a stage: one epoch of training, validation, and what follows an epoch.
pub trait TrainStep {
    /// The stage's error; the run log's errors convert into it.
    type Error: From<mmcl_core::Error>;

    /// Trains epoch `epoch`; `steps_before` optimiser steps were taken before it (for error
    /// messages). A non-finite loss is an error.
    fn train_epoch(
        &mut self,
        epoch: usize,
        steps_before: u64,
        progress: &mut dyn Progress,
    ) -> Result<EpochReport, Self::Error>;

    /// Validates after epoch `epoch`; `None` without validation data.
    fn validate_epoch(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<ValReport>, Self::Error>;

    /// Whether the monitored `value` improves on `best`. By default: a finite value lower than
    /// the best so far (a validation loss).
    fn improves(&self, value: f64, best: Option<f64>) -> bool {
        value.is_finite() && best.is_none_or(|b| value < b)
    }

    /// Called once an epoch is counted in `state`, `improved` when its validation was the best
    /// so far: checkpoints, keeping the best weights. Nothing by default.
    fn end_epoch(&mut self, state: &LoopState, improved: bool) -> Result<(), Self::Error> {
        let _ = (state, improved);
        Ok(())
    }

    /// The line reported for an epoch: by default the training summary, then the validation's.
    fn epoch_summary(
        &self,
        epoch: usize,
        train: &EpochReport,
        val: Option<(&ValReport, bool)>,
    ) -> String {
        let _ = epoch;
        match val {
            Some((v, _)) => format!("{}{}", train.summary, v.summary),
            None => train.summary.clone(),
        }
    }
}

/// How an epoch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochEnd {
    /// Training goes on.
    Continue,
    /// Early stopping ended the run.
    Stop,
}

/// The epoch loop: counters, validation schedule, best epoch, run log, early stopping.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochLoop {
    /// The counters.
    pub state: LoopState,
    /// Epochs at most.
    pub max_epochs: usize,
    /// Validate after every this many epochs (and after the last).
    pub val_every: usize,
    /// Stops the run when the monitored value stalls (never when `None`).
    pub early_stopping: Option<EarlyStopping>,
}

impl EpochLoop {
    /// A loop of `max_epochs` epochs validating every `val_every`, starting from `state`.
    pub fn new(state: LoopState, max_epochs: usize, val_every: usize) -> Self {
        Self {
            state,
            max_epochs,
            val_every: val_every.max(1),
            early_stopping: None,
        }
    }

    /// Runs epochs until `epochs` are done (at most `max_epochs`) or early stopping ends the
    /// run, appending the records to `log` when given.
    pub fn run_until<S: TrainStep + ?Sized>(
        &mut self,
        step: &mut S,
        epochs: usize,
        log: Option<&mut RunLogWriter>,
        progress: &mut dyn Progress,
    ) -> Result<EpochEnd, S::Error> {
        self.run_until_with(step, epochs, log, progress, S::end_epoch)
    }

    /// [`Self::run_until`] with `end_epoch` called where [`TrainStep::end_epoch`] would be: what
    /// the caller adds to the end of every epoch (the pre-training checkpoints), without a
    /// wrapper around the step that forwards everything else.
    pub(crate) fn run_until_with<S: TrainStep + ?Sized>(
        &mut self,
        step: &mut S,
        epochs: usize,
        mut log: Option<&mut RunLogWriter>,
        progress: &mut dyn Progress,
        mut end_epoch: impl FnMut(&mut S, &LoopState, bool) -> Result<(), S::Error>,
    ) -> Result<EpochEnd, S::Error> {
        let end = epochs.min(self.max_epochs);
        while self.state.epoch < end {
            let ended = self.run_epoch_with(step, log.as_deref_mut(), progress, &mut end_epoch)?;
            if ended == EpochEnd::Stop {
                return Ok(EpochEnd::Stop);
            }
        }
        Ok(EpochEnd::Continue)
    }

    /// One epoch: training, its `train` record, validation when due, its `val` record, the
    /// best epoch, [`TrainStep::end_epoch`], the summary line, early stopping.
    pub fn run_epoch<S: TrainStep + ?Sized>(
        &mut self,
        step: &mut S,
        log: Option<&mut RunLogWriter>,
        progress: &mut dyn Progress,
    ) -> Result<EpochEnd, S::Error> {
        self.run_epoch_with(step, log, progress, S::end_epoch)
    }

    /// [`Self::run_epoch`] with `end_epoch` in place of [`TrainStep::end_epoch`].
    fn run_epoch_with<S: TrainStep + ?Sized>(
        &mut self,
        step: &mut S,
        mut log: Option<&mut RunLogWriter>,
        progress: &mut dyn Progress,
        mut end_epoch: impl FnMut(&mut S, &LoopState, bool) -> Result<(), S::Error>,
    ) -> Result<EpochEnd, S::Error> {
        let epoch = self.state.epoch;
        let train = step.train_epoch(epoch, self.state.steps, progress)?;
        self.state.steps += train.steps;
        self.state.lr = train.lr;
        let steps = self.state.steps as usize;
        // Logs number epochs from 1, as the terminal, the reports and the curves do.
        if let Some(log) = log.as_deref_mut() {
            log.append("train", epoch + 1, steps, &pairs(&train.record))?;
        }
        let last = epoch + 1 == self.max_epochs;
        let due = (epoch + 1).is_multiple_of(self.val_every) || last;
        let val = if due {
            step.validate_epoch(epoch, progress)?
        } else {
            None
        };
        let mut improved = false;
        if let Some(val) = &val {
            if let Some(log) = log {
                log.append("val", epoch + 1, steps, &pairs(&val.record))?;
            }
            improved = step.improves(val.monitored, self.state.best.map(|(b, _)| b));
            if improved {
                self.state.best = Some((val.monitored, epoch));
            }
        }
        self.state.epoch = epoch + 1;
        end_epoch(step, &self.state, improved)?;
        let summary = step.epoch_summary(epoch, &train, val.as_ref().map(|v| (v, improved)));
        progress.message(&summary);
        let stop = match (&mut self.early_stopping, &val) {
            (Some(stopper), Some(val)) => stopper.update(val.monitored),
            _ => false,
        };
        Ok(if stop {
            EpochEnd::Stop
        } else {
            EpochEnd::Continue
        })
    }
}

/// A record as the run log takes it.
fn pairs(record: &[(String, f64)]) -> Vec<(&str, f64)> {
    record.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// A record of static names, as the stages build them.
pub fn record(values: &[(&str, f64)]) -> Vec<(String, f64)> {
    values.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}
