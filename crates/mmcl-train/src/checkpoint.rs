//! Run directories and their checkpoints, written atomically.
//!
//! ```text
//! <run>/
//!   config.toml                       the resolved configuration (every key)
//!   metrics.jsonl, metrics.csv        one record per epoch and split (RunLogWriter)
//!   checkpoints/
//!     last/                           after every epoch
//!       model.safetensors             every weight and buffer, reference key names
//!       optimizer.safetensors         Adam moments (exp_avg.<name>, exp_avg_sq.<name>), steps
//!       classifier_optimizer.safetensors   (MMCL with an online classifier)
//!       state.json                    epoch, step, schedule, RNG state, config, data seed
//!       ecg_encoder.safetensors       the ECG encoder alone (timm keys, for embed-ecg)
//!       image_encoder.safetensors     the image trunk alone (released layout, for embed-cmr)
//!                                     (MMCL only)
//!     best/                           the lowest validation loss so far (no optimiser state)
//!     epoch-NNNN/                     every `save_every_n_epochs` epochs (complete)
//! ```
//!
//! A checkpoint directory is written under a temporary sibling name and renamed into place; the
//! previous one is moved aside first and deleted last, so at every moment a complete checkpoint
//! exists under `last` or `last.previous` ([`find_checkpoint`] looks in both).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use mmcl_nn::StateDict;
use mmcl_nn::rng::RngState;
use mmcl_nn::schedule::WarmupCosine;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of the checkpoint layout; readers refuse others.
pub const CHECKPOINT_VERSION: u32 = 1;

/// File name of the full model.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the main optimiser's state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the online classifier optimiser's state.
pub const CLASSIFIER_OPTIMIZER_FILE: &str = "classifier_optimizer.safetensors";
/// File name of the training state.
pub const STATE_FILE: &str = "state.json";
/// File name of the exported ECG encoder.
pub const ECG_ENCODER_FILE: &str = "ecg_encoder.safetensors";
/// File name of the exported image encoder.
pub const IMAGE_ENCODER_FILE: &str = "image_encoder.safetensors";
/// File name of the resolved configuration in the run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Which trainer wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerKind {
    /// `mmcl pretrain-mmcl`.
    Mmcl,
    /// `mmcl pretrain-mae`.
    Mae,
}

/// What `state.json` holds: everything besides tensors that an exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The trainer.
    pub kind: TrainerKind,
    /// Epochs completed (the next epoch to run, 0-based).
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// The learning-rate schedule.
    pub schedule: WarmupCosine,
    /// The learning rate of the last step.
    pub lr: f64,
    /// The model's training-time random stream (drop-path, masking) after the last epoch.
    pub rng: RngState,
    /// Seed of the data order and augmentations.
    pub data_seed: u64,
    /// Lowest validation loss so far, and its epoch.
    pub best_val_loss: Option<(f64, usize)>,
    /// The resolved configuration of the run.
    pub config: serde_json::Value,
    /// Channels of the training images (MMCL), so the model can be rebuilt without the cache.
    pub image_channels: Option<usize>,
}

impl TrainState {
    /// Reads `state.json` of a checkpoint directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let state: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        if state.version != CHECKPOINT_VERSION {
            return Err(Error::checkpoint(
                path,
                format!(
                    "checkpoint layout version {} is not the supported {CHECKPOINT_VERSION}",
                    state.version
                ),
            ));
        }
        Ok(state)
    }
}

/// One safetensors file of a checkpoint: tensors and string metadata.
#[derive(Debug, Clone, Default)]
pub struct CheckpointFile {
    /// The tensors.
    pub tensors: StateDict,
    /// The metadata of the safetensors header.
    pub metadata: HashMap<String, String>,
}

impl CheckpointFile {
    /// A file of `tensors` without metadata.
    pub fn new(tensors: StateDict) -> Self {
        Self {
            tensors,
            metadata: HashMap::new(),
        }
    }
}

/// The checkpoints folder of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The latest checkpoint of a run: `<run>/checkpoints/last`.
pub fn last_dir(run_dir: &Path) -> PathBuf {
    checkpoints_dir(run_dir).join("last")
}

/// The ECG encoder exported by either trainer after its latest epoch,
/// `<run>/checkpoints/last/ecg_encoder.safetensors`: what `embed-ecg`, the fine-tuning stage
/// and the multimodal stage's `ecg.pretrain_checkpoint` load.
pub fn ecg_encoder_path(run_dir: &Path) -> PathBuf {
    last_dir(run_dir).join(ECG_ENCODER_FILE)
}

/// The name of a per-epoch checkpoint (`epoch-0009` after the tenth epoch).
pub fn epoch_dir_name(epochs_done: usize) -> String {
    format!("epoch-{:04}", epochs_done.saturating_sub(1))
}

/// Writes a checkpoint directory at `dir` atomically: every file into a temporary sibling, then
/// the sibling renamed into place (the previous checkpoint is moved to `<dir>.previous` first
/// and removed once the new one is in place).
pub fn write_checkpoint(
    dir: &Path,
    files: &[(&str, CheckpointFile)],
    state: &TrainState,
) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::checkpoint(dir, "a checkpoint directory needs a name"))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| -> Result<()> {
        for (file, content) in files {
            let metadata = (!content.metadata.is_empty()).then(|| content.metadata.clone());
            content
                .tensors
                .write_safetensors(&tmp.join(file), metadata)?;
        }
        let state_path = tmp.join(STATE_FILE);
        let text = serde_json::to_string_pretty(state).map_err(|source| Error::Json {
            path: state_path.clone(),
            source,
        })?;
        fs::write(&state_path, text).map_err(|e| Error::io(&state_path, e))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let previous = parent.join(format!("{name}.previous"));
    if previous.exists() {
        fs::remove_dir_all(&previous).map_err(|e| Error::io(&previous, e))?;
    }
    if dir.exists() {
        fs::rename(dir, &previous).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if previous.exists() {
        fs::remove_dir_all(&previous).map_err(|e| Error::io(&previous, e))?;
    }
    Ok(())
}

/// The checkpoint to resume from, given a run directory or a checkpoint directory: a directory
/// holding `state.json` is taken as is; a run directory gives `checkpoints/last` (or
/// `checkpoints/last.previous` when a crash interrupted the swap).
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let ckpts = checkpoints_dir(path);
    for candidate in [ckpts.join("last"), ckpts.join("last.previous")] {
        if candidate.join(STATE_FILE).is_file() {
            return Ok(candidate);
        }
    }
    if !path.exists() {
        return Err(Error::checkpoint(path, "no such run directory"));
    }
    Err(Error::checkpoint(
        path,
        "no checkpoint found (expected checkpoints/last/state.json in a run directory, or \
         state.json in a checkpoint directory)",
    ))
}

/// The run directory a checkpoint directory belongs to (`<run>/checkpoints/<name>` → `<run>`).
pub fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    let parent = checkpoint.parent()?;
    (parent.file_name()? == "checkpoints").then(|| parent.parent().map(Path::to_path_buf))?
}

/// Reads a safetensors file of a checkpoint, naming the directory when it is missing.
pub fn read_file(dir: &Path, file: &str) -> Result<StateDict> {
    let path = dir.join(file);
    if !path.is_file() {
        return Err(Error::checkpoint(
            dir,
            format!("the checkpoint has no {file}"),
        ));
    }
    Ok(StateDict::read(&path)?)
}

/// The `steps` metadata of an optimiser state file.
pub fn optimizer_steps(dir: &Path, file: &str) -> Result<u64> {
    let path = dir.join(file);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(&path, format!("damaged safetensors header: {e}")))?;
    header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("steps"))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::checkpoint(&path, "the optimiser state has no step count"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn state() -> TrainState {
        TrainState {
            version: CHECKPOINT_VERSION,
            kind: TrainerKind::Mmcl,
            epoch: 1,
            step: 4,
            schedule: WarmupCosine::per_epoch(1e-3, 2, 10),
            lr: 0.0,
            rng: mmcl_nn::rng::SplitMix64::new(3).state(),
            data_seed: 7,
            best_val_loss: None,
            config: serde_json::json!({"a": 1}),
            image_channels: Some(3),
        }
    }

    #[test]
    fn checkpoints_replace_atomically_and_are_found() -> Result<()> {
        let root = std::env::temp_dir().join(format!("mmcl-train-ckpt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = checkpoints_dir(&root).join("last");
        let mut sd = StateDict::default();
        sd.insert("w", Tensor::new(&[1f32, 2.0], &Device::Cpu)?);
        write_checkpoint(
            &dir,
            &[("model.safetensors", CheckpointFile::new(sd.clone()))],
            &state(),
        )?;
        let mut s2 = state();
        s2.epoch = 2;
        write_checkpoint(&dir, &[("model.safetensors", CheckpointFile::new(sd))], &s2)?;
        assert_eq!(find_checkpoint(&root)?, dir);
        assert_eq!(TrainState::read(&dir)?.epoch, 2);
        assert_eq!(run_dir_of(&dir).as_deref(), Some(root.as_path()));
        let leftovers: Vec<_> = fs::read_dir(checkpoints_dir(&root))
            .map_err(|e| Error::io(&root, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("last")]);
        assert!(read_file(&dir, "optimizer.safetensors").is_err());
        assert!(find_checkpoint(&root.join("nothing")).is_err());
        let _ = fs::remove_dir_all(&root);
        Ok(())
    }
}
