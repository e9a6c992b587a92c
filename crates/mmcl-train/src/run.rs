//! Plumbing shared by the trainers: starting and resuming run directories, and stopping on a
//! non-finite loss.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use mmcl_data::cache::Cache;
use mmcl_data::loader::{Loader, LoaderConfig};

use crate::checkpoint::{self, CONFIG_FILE, TrainState, TrainerKind};
use crate::config::DataConfig;
use crate::{Error, Result};

/// The training loader over `data`'s training split of `cache` (with `train`'s settings) and,
/// when the validation split holds subjects, the validation loader (with `val`'s).
///
/// # Errors
/// An empty training split (naming the cache and the split), or a loader that cannot start.
pub(crate) fn split_loaders(
    cache: &Arc<Cache>,
    data: &DataConfig,
    train: LoaderConfig,
    val: LoaderConfig,
    device: &Device,
) -> Result<(Arc<Loader>, Option<Arc<Loader>>)> {
    let train_idx = cache.split_indices(data.train_split);
    if train_idx.is_empty() {
        return Err(Error::config(format!(
            "the cache {} has no subjects in the {:?} split",
            data.cache.display(),
            data.train_split
        )));
    }
    let val_idx = cache.split_indices(data.val_split);
    let train_loader = Arc::new(Loader::new(
        Arc::clone(cache),
        train_idx,
        train,
        device.clone(),
    )?);
    let val_loader = if val_idx.is_empty() {
        None
    } else {
        Some(Arc::new(Loader::new(
            Arc::clone(cache),
            val_idx,
            val,
            device.clone(),
        )?))
    };
    Ok((train_loader, val_loader))
}

/// Refuses a run directory that already holds a checkpoint (a new run never overwrites one).
pub(crate) fn ensure_fresh(run_dir: &Path) -> Result<()> {
    if checkpoint::find_checkpoint(run_dir).is_ok() {
        return Err(Error::checkpoint(
            run_dir,
            "this run directory already holds a checkpoint; resume it or choose another \
             output directory",
        ));
    }
    Ok(())
}

/// Creates the run directory and writes the resolved configuration into it, atomically.
pub(crate) fn write_config(run_dir: &Path, toml: &str) -> Result<()> {
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    mmcl_nn::io::write_bytes_atomic(&run_dir.join(CONFIG_FILE), toml.as_bytes())?;
    Ok(())
}

/// The checkpoint to resume, its state (written by `kind`) and the run directory to continue
/// in (`run_dir`, or the checkpoint's own run).
pub(crate) fn open_resume(
    path: &Path,
    kind: TrainerKind,
    run_dir: Option<&Path>,
) -> Result<(PathBuf, TrainState, PathBuf)> {
    let dir = checkpoint::find_checkpoint(path)?;
    let state = TrainState::read(&dir)?;
    if state.kind != kind {
        let name = |k: TrainerKind| match k {
            TrainerKind::Mae => "MAE",
            TrainerKind::Mmcl => "MMCL",
        };
        return Err(Error::checkpoint(
            &dir,
            format!(
                "this checkpoint was written by the {} trainer, not the {} trainer",
                name(state.kind),
                name(kind)
            ),
        ));
    }
    let run_dir = match run_dir {
        Some(r) => r.to_path_buf(),
        None => checkpoint::run_dir_of(&dir).unwrap_or_else(|| dir.clone()),
    };
    Ok((dir, state, run_dir))
}

/// The configuration saved in a checkpoint's state.
pub(crate) fn saved_config<T: serde::de::DeserializeOwned>(
    dir: &Path,
    state: &TrainState,
) -> Result<T> {
    serde_json::from_value(state.config.clone())
        .map_err(|e| Error::json(dir.join(checkpoint::STATE_FILE), e))
}

/// The error that stops a run on a non-finite loss, naming the checkpoint left in place.
pub(crate) fn non_finite(
    value: f64,
    epoch: usize,
    batch: usize,
    step: u64,
    run_dir: &Path,
) -> Error {
    Error::NonFiniteLoss {
        value,
        epoch,
        batch,
        step,
        last_good: checkpoint::find_checkpoint(run_dir).ok(),
    }
}
