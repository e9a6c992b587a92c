//! What the trainer tests share (`mod common;` in each): checkpoints compared to the bit, the
//! run directory's documented layout, and the checks of a run stopped by a non-finite loss.

// Each test binary compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use std::path::Path;

use candle_core::Device;
use mmcl_core::runlog::RunLog;
use mmcl_nn::StateDict;
use mmcl_testutil::tensor_bits;
use mmcl_train::checkpoint::{self, TrainState};
use mmcl_train::{Error, MaeTrainConfig, MaeTrainer, MmclConfig, MmclTrainer, NoProgress, Result};

/// What the MAE and the multimodal trainers share, on the CPU and without progress output,
/// for the checks both must pass.
pub trait Trainer: Sized {
    /// The trainer's configuration.
    type Config: Clone;
    /// A fresh run of `cfg` in `run`, and its notes.
    fn create(cfg: Self::Config, run: &Path) -> Result<(Self, Vec<String>)>;
    /// The run in `run` resumed from its last checkpoint (with `cfg` when given), and its notes.
    fn resume_from(run: &Path, cfg: Option<Self::Config>) -> Result<(Self, Vec<String>)>;
    /// Trains until the configuration's last epoch.
    fn fit_all(&mut self) -> Result<()>;
    /// Trains until `epochs` epochs are done.
    fn fit_epochs(&mut self, epochs: usize) -> Result<()>;
    /// Optimiser steps taken.
    fn steps(&self) -> u64;
}

macro_rules! impl_trainer {
    ($trainer:ty, $config:ty) => {
        impl Trainer for $trainer {
            type Config = $config;
            fn create(cfg: $config, run: &Path) -> Result<(Self, Vec<String>)> {
                <$trainer>::new(cfg, run, &Device::Cpu)
            }
            fn resume_from(run: &Path, cfg: Option<$config>) -> Result<(Self, Vec<String>)> {
                <$trainer>::resume(run, cfg, None, &Device::Cpu)
            }
            fn fit_all(&mut self) -> Result<()> {
                self.fit(&mut NoProgress)
            }
            fn fit_epochs(&mut self, epochs: usize) -> Result<()> {
                self.fit_until(epochs, &mut NoProgress)
            }
            fn steps(&self) -> u64 {
                self.steps_taken()
            }
        }
    };
}

impl_trainer!(MaeTrainer, MaeTrainConfig);
impl_trainer!(MmclTrainer, MmclConfig);

/// Trains `cfg` in `run` for one epoch, then, in a fresh trainer resumed from that checkpoint,
/// for the rest; returns the resumed trainer.
pub fn one_epoch_then_resume<T: Trainer>(cfg: T::Config, run: &Path) -> T {
    let (mut first, _) = T::create(cfg, run).expect("new");
    first.fit_epochs(1).expect("first epoch");
    drop(first);
    let (mut second, notes) = T::resume_from(run, None).expect("resume");
    assert!(notes[0].contains("after epoch 1"), "{notes:?}");
    second.fit_all().expect("second epoch");
    second
}

/// A run of `cfg` in `run` trained one epoch, then resumed with the configuration `explode`
/// makes of it (a learning rate that blows the weights up), stops at the first non-finite
/// loss and keeps the first epoch's checkpoint.
pub fn assert_non_finite_loss_stops<T: Trainer>(
    cfg: T::Config,
    run: &Path,
    explode: impl FnOnce(&mut T::Config),
) {
    let (mut trainer, _) = T::create(cfg.clone(), run).expect("new");
    trainer.fit_epochs(1).expect("first epoch");
    drop(trainer);
    let last = checkpoint::last_dir(run);
    let before = file_bytes(&last.join(checkpoint::MODEL_FILE));

    let mut exploding = cfg;
    explode(&mut exploding);
    let (mut trainer, _) = T::resume_from(run, Some(exploding)).expect("resume");
    let err = trainer.fit_all().expect_err("must stop");
    assert_stopped_at_non_finite_loss(&err, &last, &before);
}

/// The bytes of a file, panicking with its path.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tensor by tensor: names and bits.
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let (sa, sb) = (
        StateDict::read(a).expect("a"),
        StateDict::read(b).expect("b"),
    );
    let ka: Vec<&str> = sa.keys().collect();
    let kb: Vec<&str> = sb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    for (k, t) in sa.iter() {
        let u = sb.get(k).expect("present");
        assert!(
            tensor_bits(t) == tensor_bits(u),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The last checkpoints of two runs hold the same `files`, to the bit, and the same epoch,
/// step and random state; returns both states.
pub fn assert_same_last_checkpoints(
    straight: &Path,
    resumed: &Path,
    files: &[&str],
) -> (TrainState, TrainState) {
    let last = checkpoint::last_dir;
    for file in files {
        assert_same_tensors(&last(straight).join(file), &last(resumed).join(file));
    }
    let (s1, s2) = (
        TrainState::read(&last(straight)).expect("state"),
        TrainState::read(&last(resumed)).expect("state"),
    );
    assert_eq!((s1.epoch, s1.step, s1.rng), (s2.epoch, s2.step, s2.rng));
    (s1, s2)
}

/// The documented layout of a two-epoch run `straight` (configuration, logs, the best
/// checkpoint) and four log records (train and val of two epochs) in it and in `resumed`;
/// returns the log of `straight`.
pub fn assert_two_epoch_layout(straight: &Path, resumed: &Path) -> RunLog {
    for f in ["config.toml", "metrics.jsonl", "metrics.csv"] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }
    assert!(
        checkpoint::checkpoints_dir(straight)
            .join("best")
            .join("model.safetensors")
            .is_file()
    );
    let log = RunLog::read(&straight.join("metrics.jsonl")).expect("log");
    assert_eq!(log.records.len(), 4);
    let resumed_log = RunLog::read(&resumed.join("metrics.jsonl")).expect("log");
    assert_eq!(resumed_log.records.len(), 4);
    log
}

/// `err` is the stop of a run at a non-finite loss in its second epoch, naming the last good
/// checkpoint `last`, which still holds the model `model_before` of the first epoch.
pub fn assert_stopped_at_non_finite_loss(err: &Error, last: &Path, model_before: &[u8]) {
    match err {
        Error::NonFiniteLoss {
            epoch, last_good, ..
        } => {
            assert_eq!(*epoch, 1);
            assert_eq!(last_good.as_deref(), Some(last));
        }
        other => panic!("expected a non-finite loss, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("non-finite") && message.contains("last good checkpoint"),
        "{message}"
    );
    assert_eq!(file_bytes(&last.join(checkpoint::MODEL_FILE)), model_before);
    assert_eq!(TrainState::read(last).expect("state").epoch, 1);
}
