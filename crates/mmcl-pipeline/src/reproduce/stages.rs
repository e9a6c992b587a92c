//! Stage directories: their marker file (`pipeline-stage.json`, the settings a stage was made
//! with and whether it finished), and the training stages, reused, resumed or rebuilt from it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use mmcl_train::checkpoint::find_checkpoint;
use mmcl_train::{MaeTrainConfig, MaeTrainer, MmclConfig, MmclTrainer, Progress};
use serde_json::json;

use crate::config::ReproduceConfig;
use crate::progress::PipelineProgress;
use crate::{Error, Result};

/// The marker file of a stage directory.
pub const STAGE_FILE: &str = "pipeline-stage.json";

/// The marker of a stage directory (`None` when absent or unreadable: the stage runs again).
fn read_marker(dir: &Path) -> Option<serde_json::Value> {
    let path = dir.join(STAGE_FILE);
    mmcl_core::files::read_json_bounded(
        &path,
        mmcl_core::config::MAX_CONFIG_BYTES,
        "the stage marker",
    )
    .ok()
}

/// Writes the marker of `dir`: made for the settings `key`, finished or not.
pub(super) fn write_marker(dir: &Path, key: &serde_json::Value, complete: bool) -> Result<()> {
    let value = json!({"key": key, "complete": complete});
    let path = dir.join(STAGE_FILE);
    let text = serde_json::to_string_pretty(&value).map_err(|e| Error::json(&path, e))?;
    mmcl_nn::io::write_bytes_atomic(&path, text.as_bytes())?;
    Ok(())
}

/// What to do with a stage directory given its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StageState {
    /// Complete for these settings.
    Done,
    /// Started for these settings, not finished.
    Partial,
    /// Absent, or made with other settings.
    Stale,
}

/// The state of `dir` for the settings `key`.
pub(super) fn stage_state(dir: &Path, key: &serde_json::Value) -> StageState {
    match read_marker(dir) {
        Some(m) if m.get("key") == Some(key) => {
            if m.get("complete") == Some(&json!(true)) {
                StageState::Done
            } else {
                StageState::Partial
            }
        }
        _ => StageState::Stale,
    }
}

/// Removes `dir` and its contents; an absent `dir` is no error.
pub(super) fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// A trainer with the notes it has for the user, as the trainers' constructors return them.
type Started<T> = mmcl_train::Result<(T, Vec<String>)>;

/// How the pipeline drives one kind of trainer: a new run of a configuration in a directory,
/// the resumption of a run from its last checkpoint, the training.
pub(super) struct Trainer<T, C> {
    start: fn(C, &Path, &Device) -> Started<T>,
    resume: fn(&Path, Option<C>, Option<&Path>, &Device) -> Started<T>,
    fit: fn(&mut T, &mut dyn Progress) -> mmcl_train::Result<()>,
}

/// The MAE pre-training of the ECG encoder.
pub(super) const MAE: Trainer<MaeTrainer, MaeTrainConfig> = Trainer {
    start: MaeTrainer::new,
    resume: MaeTrainer::resume,
    fit: MaeTrainer::fit,
};

/// The multimodal contrastive pre-training.
pub(super) const MMCL: Trainer<MmclTrainer, MmclConfig> = Trainer {
    start: MmclTrainer::new,
    resume: MmclTrainer::resume,
    fit: MmclTrainer::fit,
};

/// Reuses, resumes or starts the training run of `cfg` in `dir` for the settings `key`: a run
/// started with the same settings resumes from its last checkpoint, anything else starts
/// afresh in an emptied directory. Returns whether a finished run was reused.
pub(super) fn train_stage<T, C>(
    trainer: &Trainer<T, C>,
    cfg: C,
    dir: &Path,
    key: &serde_json::Value,
    device: &Device,
    progress: &mut dyn PipelineProgress,
) -> Result<bool> {
    let state = stage_state(dir, key);
    if state == StageState::Done {
        progress.message(&format!("reusing {}", dir.display()));
        return Ok(true);
    }
    let (mut run, notes) = if state == StageState::Partial && find_checkpoint(dir).is_ok() {
        (trainer.resume)(dir, Some(cfg), None, device)?
    } else {
        remove_dir(dir)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_marker(dir, key, false)?;
        (trainer.start)(cfg, dir, device)?
    };
    for n in notes {
        progress.message(&n);
    }
    (trainer.fit)(&mut run, progress)?;
    write_marker(dir, key, true)?;
    Ok(false)
}

/// The MAE stage's configuration: the run's, reading the pipeline's `cache`.
pub(super) fn mae_config(cfg: &ReproduceConfig, cache: &Path) -> MaeTrainConfig {
    let mut mae = cfg.mae.clone();
    mae.data.cache = cache.to_path_buf();
    mae
}

/// An MMCL stage's configuration: the run's, reading the pipeline's `cache`, its ECG encoder
/// initialised from `ecg_init` when given.
pub(super) fn mmcl_config(
    cfg: &ReproduceConfig,
    cache: &Path,
    ecg_init: Option<&Path>,
) -> MmclConfig {
    let mut mmcl = cfg.mmcl.clone();
    mmcl.data.cache = cache.to_path_buf();
    mmcl.ecg.pretrain_checkpoint = ecg_init.map(Path::to_path_buf);
    mmcl
}

/// The three training runs.
#[derive(Debug, Clone)]
pub(super) struct Runs {
    /// MAE pre-training.
    pub(super) mae: PathBuf,
    /// MMCL from random initialisation.
    pub(super) mmcl: PathBuf,
    /// MMCL initialised from the MAE encoder.
    pub(super) mae_mmcl: PathBuf,
}
