//! What the two pre-training stages share around the loop: starting and resuming a run
//! directory, the training state, crash-safe checkpoints after every epoch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use mmcl_core::runlog::RunLogWriter;
use mmcl_nn::StateDict;
use mmcl_nn::distributed::{GradSync, SingleProcess};
use mmcl_nn::rng::RngState;
use mmcl_nn::schedule::WarmupCosine;
use serde::Serialize;

use super::{EpochLoop, LoopState, TrainStep};
use crate::checkpoint::{
    self, CLASSIFIER_OPTIMIZER_FILE, CONFIG_FILE, CheckpointFile, MODEL_FILE, OPTIMIZER_FILE,
    TrainState, TrainerKind,
};
use crate::config::TrainerConfig;
use crate::progress::Progress;
use crate::{Error, Result};

/// The files of one checkpoint, by name.
pub type CheckpointFiles = Vec<(&'static str, CheckpointFile)>;

/// How many epochs a stage trains, and when it validates and keeps checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPlan {
    /// Epochs at most.
    pub max_epochs: usize,
    /// Validate after every this many epochs.
    pub val_every: usize,
    /// Keep a checkpoint `epoch-NNNN` every this many epochs (0: never).
    pub save_every: usize,
}

/// A pre-training stage: a [`TrainStep`] with a configuration, a run directory, a training
/// state and checkpoints. [`Trainer`] runs it.
pub trait Stage: TrainStep<Error = Error> + Sized {
    /// The configuration (JSON or TOML; defaults are the paper's).
    type Config: TrainerConfig;
    /// The metrics of [`Self::validate`].
    type Metrics;
    /// The trainer recorded in `state.json`.
    const KIND: TrainerKind;
    /// The trainer's name, for debug output.
    const NAME: &'static str;

    /// Reads a configuration file (relative paths relative to it).
    fn load_config(path: &Path) -> Result<Self::Config> {
        Self::Config::from_file(path)
    }

    /// The configuration as TOML, every key.
    fn config_toml(cfg: &Self::Config) -> String {
        crate::config::to_toml(cfg)
    }

    /// A new stage of `cfg` writing into `run_dir`, on `device`, and notes for the user (what
    /// was loaded).
    fn start(cfg: Self::Config, run_dir: &Path, device: &Device) -> Result<(Self, Vec<String>)>;

    /// The stage of `cfg` as the checkpoint directory `dir` (whose state is `state`) left it:
    /// weights, optimiser states, random streams.
    fn restore(
        cfg: Self::Config,
        dir: &Path,
        state: &TrainState,
        run_dir: &Path,
        device: &Device,
    ) -> Result<Self>;

    /// The configuration.
    fn config(&self) -> &Self::Config;

    /// The metrics on the validation split after epoch `epoch` (evaluation mode); `None`
    /// without a validation split.
    fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<Self::Metrics>>;

    /// The run directory.
    fn run_dir(&self) -> &Path;

    /// How many epochs, and when to validate and keep checkpoints.
    fn epochs(&self) -> EpochPlan {
        self.config().epoch_plan()
    }

    /// What the run trains on, for the user.
    fn describe(&self) -> Vec<String>;

    /// The learning-rate schedule.
    fn schedule(&self) -> WarmupCosine;

    /// The training-time random stream's state (drop-path, masking).
    fn rng_state(&self) -> RngState;

    /// The seed of the data order and augmentations.
    fn data_seed(&self) -> u64 {
        self.config().seed()
    }

    /// Channels of the training images, when the model reads images.
    fn image_channels(&self) -> Option<usize> {
        None
    }

    /// The files of a full checkpoint (`last`, `epoch-NNNN`) after the epochs of `state`; a
    /// `best` one holds the same files less the optimiser states.
    fn checkpoint_files(&self, state: &TrainState) -> Result<CheckpointFiles>;

    /// Trains as one replica of the data-parallel group `comm` (called once, before training,
    /// by every replica). By default only a group of one is accepted.
    fn join_group(&mut self, comm: Box<dyn GradSync>) -> Result<()> {
        if comm.world_size() > 1 {
            return Err(Error::config(format!(
                "{} does not train data-parallel yet: start a single process (this one is \
                 rank {} of {})",
                Self::NAME,
                comm.rank(),
                comm.world_size()
            )));
        }
        Ok(())
    }
}

/// A pre-training run: a [`Stage`] in the [`EpochLoop`], its run log, and a checkpoint after
/// every epoch (`last`, `best` when validation improved, `epoch-NNNN` when due).
///
/// In a data-parallel group every replica trains and validates alike (so that all take the
/// same decisions), but only the main replica (rank 0) writes the run directory.
pub struct Trainer<S: Stage> {
    stage: S,
    epochs: EpochLoop,
    /// The run log; `None` on replicas other than the main one.
    log: Option<RunLogWriter>,
    world_size: usize,
}

impl<S: Stage> std::fmt::Debug for Trainer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(S::NAME)
            .field("run_dir", &self.stage.run_dir())
            .field("epoch", &self.epochs.state.epoch)
            .field("steps", &self.epochs.state.steps)
            .finish()
    }
}

impl<S: Stage> Trainer<S> {
    /// A new run of `cfg` writing into `run_dir` (which must not hold a run yet), on `device`.
    /// The resolved configuration is saved as `config.toml`. Returns the trainer and notes for
    /// the user.
    pub fn new(cfg: S::Config, run_dir: &Path, device: &Device) -> Result<(Self, Vec<String>)> {
        Self::new_in_group(cfg, run_dir, device, Box::new(SingleProcess))
    }

    /// [`Self::new`] as one replica of the data-parallel group `comm`: every replica calls it
    /// with the same configuration; only the main one checks and writes `run_dir`.
    pub fn new_in_group(
        cfg: S::Config,
        run_dir: &Path,
        device: &Device,
        comm: Box<dyn GradSync>,
    ) -> Result<(Self, Vec<String>)> {
        let main = comm.is_main();
        let world_size = comm.world_size();
        if main {
            crate::run::ensure_fresh(run_dir)?;
        }
        let (mut stage, mut notes) = S::start(cfg, run_dir, device)?;
        stage.join_group(comm)?;
        let mut trainer = Self::assemble(stage, LoopState::default(), main, world_size)?;
        notes.extend(trainer.describe());
        if let Some(log) = trainer.log.as_mut() {
            crate::run::write_config(run_dir, &S::config_toml(trainer.stage.config()))?;
            // A new run: no record of an earlier one survives (logs number epochs from 1).
            log.truncate_after(1)?;
        }
        Ok((trainer, notes))
    }

    /// Continues the run whose checkpoint is at `path` (a run directory or a checkpoint
    /// directory) exactly where it stopped. `cfg` replaces the saved configuration when given
    /// (e.g. more epochs); the model must stay the same. `run_dir` defaults to the checkpoint's
    /// run directory.
    pub fn resume(
        path: &Path,
        cfg: Option<S::Config>,
        run_dir: Option<&Path>,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        Self::resume_in_group(path, cfg, run_dir, device, Box::new(SingleProcess))
    }

    /// The configuration that the run or checkpoint directory `path` was saved with: what
    /// [`Self::resume`] continues with when given none (to change a setting, such as the
    /// precision, and resume with the rest unchanged).
    ///
    /// # Errors
    /// No checkpoint at `path`, one of the other trainer, an unreadable state.
    pub fn saved_config(path: &Path) -> Result<S::Config> {
        let (dir, state, _) = crate::run::open_resume(path, S::KIND, None)?;
        crate::run::saved_config(&dir, &state)
    }

    /// [`Self::resume`] as one replica of the data-parallel group `comm`, which must have as
    /// many replicas as the group that wrote the checkpoint. Every replica reads the
    /// checkpoint; only the main one writes the run directory.
    pub fn resume_in_group(
        path: &Path,
        cfg: Option<S::Config>,
        run_dir: Option<&Path>,
        device: &Device,
        comm: Box<dyn GradSync>,
    ) -> Result<(Self, Vec<String>)> {
        let (dir, state, run_dir) = crate::run::open_resume(path, S::KIND, run_dir)?;
        let world_size = comm.world_size();
        if state.world_size != world_size {
            return Err(Error::checkpoint(
                &dir,
                format!(
                    "this checkpoint was written by {} data-parallel replica(s), but this run \
                     has {world_size}: resume it with {} processes",
                    state.world_size, state.world_size
                ),
            ));
        }
        let cfg = match cfg {
            Some(cfg) => cfg,
            None => crate::run::saved_config(&dir, &state)?,
        };
        let main = comm.is_main();
        let mut stage = S::restore(cfg, &dir, &state, &run_dir, device)?;
        stage.join_group(comm)?;
        let counters = LoopState {
            epoch: state.epoch,
            steps: state.step,
            best: state.best_val_loss,
            lr: state.lr,
        };
        let mut trainer = Self::assemble(stage, counters, main, world_size)?;
        if let Some(log) = trainer.log.as_mut() {
            // The epochs about to be re-run (numbered from 1 in the log) lose their records.
            log.truncate_after(state.epoch + 1)?;
        }
        let mut notes = vec![format!(
            "resumed from {} after epoch {} ({} optimiser steps)",
            dir.display(),
            state.epoch,
            state.step
        )];
        notes.extend(trainer.describe());
        Ok((trainer, notes))
    }

    fn assemble(stage: S, state: LoopState, main: bool, world_size: usize) -> Result<Self> {
        let log = if main {
            Some(RunLogWriter::open(stage.run_dir())?)
        } else {
            None
        };
        let plan = stage.epochs();
        let epochs = EpochLoop::new(state, plan.max_epochs, plan.val_every);
        Ok(Self {
            stage,
            epochs,
            log,
            world_size,
        })
    }

    /// Notes for the user: what the stage trains on ([`Stage::describe`]), and the warning on a
    /// warm-up as long as the run.
    fn describe(&self) -> Vec<String> {
        let mut notes = self.stage.describe();
        let schedule = self.stage.schedule();
        notes.extend(crate::config::schedule_warning(
            schedule.warmup_epochs,
            schedule.max_epochs,
        ));
        notes
    }

    /// The stage (model, optimisers, data).
    pub fn stage(&self) -> &S {
        &self.stage
    }

    /// The metrics on the validation split after epoch `epoch` ([`Stage::validate`]).
    pub fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Result<Option<S::Metrics>> {
        self.stage.validate(epoch, progress)
    }

    /// The configuration.
    pub fn config(&self) -> &S::Config {
        self.stage.config()
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        self.stage.run_dir()
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.epochs.state.epoch
    }

    /// Epochs at most.
    pub fn max_epochs(&self) -> usize {
        self.epochs.max_epochs
    }

    /// Optimiser steps taken.
    pub fn steps_taken(&self) -> u64 {
        self.epochs.state.steps
    }

    /// Trains until `max_epochs`, validating and checkpointing after each epoch.
    ///
    /// # Errors
    /// Data, model and I/O errors; [`Error::NonFiniteLoss`] when the loss becomes NaN or
    /// infinite (the last checkpoint on disk is left as it was).
    pub fn fit(&mut self, progress: &mut dyn Progress) -> Result<()> {
        self.fit_until(self.epochs.max_epochs, progress)
    }

    /// Trains until `epochs` epochs are done (at most `max_epochs`), e.g. to stop early and
    /// resume later.
    pub fn fit_until(&mut self, epochs: usize, progress: &mut dyn Progress) -> Result<()> {
        // Only the main replica writes the run directory.
        let write = self.log.is_some();
        let world_size = self.world_size;
        self.epochs.run_until_with(
            &mut self.stage,
            epochs,
            self.log.as_mut(),
            progress,
            |stage, counters, improved| {
                if write {
                    write_checkpoints(stage, counters, improved, world_size)?;
                }
                stage.end_epoch(counters, improved)
            },
        )?;
        Ok(())
    }

    /// The training state after the epochs done so far.
    pub fn state(&self) -> Result<TrainState> {
        train_state(&self.stage, &self.epochs.state, self.world_size)
    }

    /// The number of data-parallel replicas training the run (1 for a single process).
    pub fn world_size(&self) -> usize {
        self.world_size
    }
}

/// The training state of `stage`, trained by `world_size` replicas, after the epochs of
/// `counters`.
fn train_state<S: Stage>(stage: &S, counters: &LoopState, world_size: usize) -> Result<TrainState> {
    Ok(TrainState {
        version: checkpoint::CHECKPOINT_VERSION,
        kind: S::KIND,
        epoch: counters.epoch,
        step: counters.steps,
        schedule: stage.schedule(),
        lr: counters.lr,
        rng: stage.rng_state(),
        data_seed: stage.data_seed(),
        best_val_loss: counters.best,
        config: serde_json::to_value(stage.config())
            .map_err(|e| Error::json(stage.run_dir().join(CONFIG_FILE), e))?,
        image_channels: stage.image_channels(),
        world_size,
    })
}

/// Writes the checkpoints of `stage` after the epochs of `counters`: `checkpoints/last`, and
/// `best` when `improved`, and `epoch-NNNN` when due.
fn write_checkpoints<S: Stage>(
    stage: &S,
    counters: &LoopState,
    improved: bool,
    world_size: usize,
) -> Result<()> {
    let state = train_state(stage, counters, world_size)?;
    let full = stage.checkpoint_files(&state)?;
    let ckpts = checkpoint::checkpoints_dir(stage.run_dir());
    checkpoint::write_checkpoint(&ckpts.join("last"), &full, &state)?;
    let every = stage.epochs().save_every;
    if every > 0 && counters.epoch.is_multiple_of(every) {
        checkpoint::write_checkpoint(
            &ckpts.join(checkpoint::epoch_dir_name(counters.epoch)),
            &full,
            &state,
        )?;
    }
    if improved {
        // `best` keeps the best epoch's weights for evaluation: no optimiser states.
        let optimizers = [OPTIMIZER_FILE, CLASSIFIER_OPTIMIZER_FILE];
        let light: CheckpointFiles = full
            .into_iter()
            .filter(|(name, _)| !optimizers.contains(name))
            .collect();
        checkpoint::write_checkpoint(&ckpts.join("best"), &light, &state)?;
    }
    Ok(())
}

/// `model.safetensors`: every tensor, with the architecture (as JSON), the epoch and the
/// `format` as metadata.
pub(crate) fn model_file(
    tensors: StateDict,
    architecture: &impl Serialize,
    state: &TrainState,
    format: &str,
) -> Result<CheckpointFile> {
    let mut metadata = HashMap::new();
    let arch = serde_json::to_string(architecture)
        .map_err(|e| Error::json(PathBuf::from(MODEL_FILE), e))?;
    metadata.insert("architecture".to_string(), arch);
    metadata.insert("epoch".to_string(), state.epoch.to_string());
    metadata.insert("format".to_string(), format.to_string());
    Ok(CheckpointFile { tensors, metadata })
}
