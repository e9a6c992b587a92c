//! What the pre-training stages share about their data: the cache they open, the training and
//! validation loaders, the group's share of the training batches, the notes on what a run
//! trains on, and the stop on a non-finite loss. One place, so that the MAE and multimodal
//! stages cannot drift apart in how they load, shard or report their data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig, Shard};
use mmcl_data::tables::Split;
use mmcl_nn::distributed::GradSync;

use super::check_even_batches;
use crate::config::DataConfig;
use crate::progress::Progress;
use crate::run::split_loaders;
use crate::{Error, Result};

/// Opens the cache at `path` after making `path` canonical, so that the configuration saved
/// with the run names the cache wherever the run is resumed from.
pub(crate) fn open_canonical_cache(path: &mut PathBuf) -> Result<Arc<Cache>> {
    *path = std::fs::canonicalize(&*path).map_err(|e| Error::io(&*path, e))?;
    Ok(Arc::new(Cache::open(path)?))
}

/// A stage's loaders: the training split's and, when the validation split holds subjects, the
/// validation split's.
pub(crate) struct StageData {
    /// The training loader (this replica's share once the stage joins a group).
    pub(crate) train: Arc<Loader>,
    /// The validation loader; `None` for an empty validation split.
    pub(crate) val: Option<Arc<Loader>>,
}

impl StageData {
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
        let (train, val) = split_loaders(cache, data, train, val, device)?;
        Ok(Self { train, val })
    }

    /// Checks that every global batch of `batch_size` splits evenly over the group `comm`, then
    /// keeps this replica's share of the training batches.
    pub(crate) fn join_group(
        &mut self,
        comm: &dyn GradSync,
        batch_size: usize,
        drop_last: bool,
    ) -> Result<()> {
        let world = comm.world_size();
        check_even_batches(batch_size, self.train.len(), drop_last, world)?;
        if world > 1 {
            let shard = Shard::new(comm.rank(), world)?;
            self.train = Arc::new(self.train.sharded(shard));
        }
        Ok(())
    }

    /// Notes for the user: what the run trains and validates on (batches of `batch_size`, the
    /// validation split `val_split`), and the warning on a warm-up as long as the run.
    pub(crate) fn describe(
        &self,
        batch_size: usize,
        val_split: Split,
        warmup_epochs: usize,
        max_epochs: usize,
    ) -> Vec<String> {
        let mut notes = vec![format!(
            "training on {} subjects ({} batches of {} per epoch)",
            self.train.len(),
            self.train.num_batches(),
            batch_size
        )];
        match &self.val {
            Some(v) => notes.push(format!("validating on {} subjects", v.len())),
            None => notes.push(format!("the {val_split:?} split is empty: no validation")),
        }
        notes.extend(crate::config::schedule_warning(warmup_epochs, max_epochs));
        notes
    }
}

/// Ends the training phase and returns the error that stops the run when the loss of batch
/// `batch` of epoch `epoch` (after `step` optimiser steps) is not finite.
pub(crate) fn check_finite(
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
