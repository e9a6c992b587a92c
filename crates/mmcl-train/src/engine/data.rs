//! What the pre-training stages share about their data: the cache they open, the training and
//! validation loaders, the group's share of the training batches, the notes on what a run
//! trains on, and the stop on a non-finite loss. One place, so that the MAE and multimodal
//! stages cannot drift apart in how they load, shard or report their data.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig, Shard};
use mmcl_data::tables::Split;
use mmcl_nn::distributed::GradSync;

use super::check_even_batches;
use crate::config::{DataConfig, TrainerConfig};
use crate::progress::Progress;
use crate::run::split_loaders;
use crate::{Error, Result};

/// Validates the configuration of a new run and opens its cache after making the cache's path
/// canonical, so that the configuration saved with the run names the cache wherever the run is
/// resumed from.
pub(crate) fn open_new_run_cache(cfg: &mut impl TrainerConfig) -> Result<Arc<Cache>> {
    cfg.validate()?;
    let path = &mut cfg.data_mut().cache;
    *path = std::fs::canonicalize(&*path).map_err(|e| Error::io(&*path, e))?;
    Ok(Arc::new(Cache::open(path)?))
}

/// Validates the configuration of a resumed run and opens its cache where the configuration
/// names it.
pub(crate) fn open_resumed_cache(cfg: &impl TrainerConfig) -> Result<Arc<Cache>> {
    cfg.validate()?;
    Ok(Arc::new(Cache::open(&cfg.data().cache)?))
}

/// A stage's loaders: the training split's and, when the validation split holds subjects, the
/// validation split's.
pub(crate) struct StageData {
    /// The training loader (this replica's share once the stage joins a group).
    pub(crate) train: Arc<Loader>,
    /// The validation loader; `None` for an empty validation split.
    pub(crate) val: Option<Arc<Loader>>,
    /// Samples per global training batch.
    batch_size: usize,
    /// Whether the last incomplete training batch is dropped.
    drop_last: bool,
    /// The split validated on (named when it is empty).
    val_split: Split,
}

impl StageData {
    /// The settings of a training loader that every stage takes from its configuration alike:
    /// batches of `batch_size` in an order shuffled by `seed`, and `data`'s `drop_last`,
    /// `prefetch` and `threads`. The stage sets what it reads (ECGs, images, their crops and
    /// augmentations, original views) over the rest.
    pub(crate) fn shuffled_batches(
        batch_size: usize,
        seed: u64,
        data: &DataConfig,
    ) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: data.drop_last,
            seed,
            prefetch: data.prefetch,
            threads: data.threads,
            ..LoaderConfig::default()
        }
    }

    /// The loaders over `data`'s splits of `cache`: training with `train`'s settings,
    /// validation with the same made deterministic (in order, every batch, ECGs cropped from
    /// sample 0, no augmentation, no original views).
    pub(crate) fn new(
        cache: &Arc<Cache>,
        data: &DataConfig,
        train: LoaderConfig,
        device: &Device,
    ) -> Result<Self> {
        let val = LoaderConfig {
            shuffle: false,
            drop_last: false,
            ecg_random_crop: false,
            ecg_augment: None,
            image_augment: None,
            originals: false,
            ..train.clone()
        };
        let (batch_size, drop_last) = (train.batch_size, train.drop_last);
        let (train, val) = split_loaders(cache, data, train, val, device)?;
        Ok(Self {
            train,
            val,
            batch_size,
            drop_last,
            val_split: data.val_split,
        })
    }

    /// Checks that every global training batch splits evenly over the group `comm`, then keeps
    /// this replica's share of the training batches.
    pub(crate) fn join_group(&mut self, comm: &dyn GradSync) -> Result<()> {
        let world = comm.world_size();
        check_even_batches(self.batch_size, self.train.len(), self.drop_last, world)?;
        if world > 1 {
            let shard = Shard::new(comm.rank(), world)?;
            self.train = Arc::new(self.train.sharded(shard));
        }
        Ok(())
    }

    /// The validation loader with its phase started in `progress` for epoch `epoch`; `None`
    /// (and no phase) without a validation split.
    pub(crate) fn start_validation(
        &self,
        epoch: usize,
        progress: &mut dyn Progress,
    ) -> Option<Arc<Loader>> {
        let loader = self.val.clone()?;
        progress.start_phase(epoch, "val", loader.num_batches());
        Some(loader)
    }

    /// Notes for the user: what the run trains and validates on.
    pub(crate) fn describe(&self) -> Vec<String> {
        let training = format!(
            "training on {} subjects ({} batches of {} per epoch)",
            self.train.len(),
            self.train.num_batches(),
            self.batch_size
        );
        let validation = match &self.val {
            Some(v) => format!("validating on {} subjects", v.len()),
            None => format!("the {:?} split is empty: no validation", self.val_split),
        };
        vec![training, validation]
    }
}

/// An epoch's optimiser steps, counted as its batches report them; a non-finite loss stops the
/// run ([`check_finite`]).
pub(crate) struct EpochSteps<'a> {
    /// The epoch (0-based).
    epoch: usize,
    /// Steps taken in the epochs before it.
    before: u64,
    /// Steps taken in the epoch so far.
    pub(crate) taken: u64,
    /// The run directory, named by the error.
    run_dir: &'a Path,
}

impl<'a> EpochSteps<'a> {
    /// No steps yet in epoch `epoch`, after `before` steps in the earlier ones.
    pub(crate) fn new(epoch: usize, before: u64, run_dir: &'a Path) -> Self {
        Self {
            epoch,
            before,
            taken: 0,
            run_dir,
        }
    }

    /// Batch `batch` trained with `loss`: the error that stops the run when the loss is not
    /// finite, else one more step when the batch `stepped` (gradients accumulate over batches).
    pub(crate) fn batch(
        &mut self,
        batch: usize,
        loss: f64,
        stepped: bool,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let step = self.before + self.taken;
        check_finite(loss, self.epoch, batch, step, self.run_dir, progress)?;
        self.taken += u64::from(stepped);
        Ok(())
    }
}

/// Ends the training phase and returns the error that stops the run when the loss of batch
/// `batch` of epoch `epoch` (after `step` optimiser steps) is not finite.
fn check_finite(
    loss: f64,
    epoch: usize,
    batch: usize,
    step: u64,
    run_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    progress.finish_phase();
    Err(crate::run::non_finite(loss, epoch, batch, step, run_dir))
}
