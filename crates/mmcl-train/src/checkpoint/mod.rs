//! Run directories and their checkpoints, written crash-safely.
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
//!       ecg_encoder.safetensors       the ECG encoder alone (timm keys, for embed-ecg), its
//!                                     configuration in the metadata (`ecg_config`)
//!       image_encoder.safetensors     the image trunk alone (released layout, for embed-cmr)
//!                                     (MMCL only)
//!       COMPLETE                      written last: the byte length of every file above
//!     best/                           the lowest validation loss so far (no optimiser state)
//!     epoch-NNNN/                     every `save_every_n_epochs` epochs (complete)
//!     last.previous/                  the checkpoint before `last`, only while `last` is being
//!                                     replaced (or after a crash in between)
//!     .last.tmp-<pid>/, .last.trash-<pid>/   a checkpoint being written or deleted (left
//!                                     behind only by a killed process; removed by the next
//!                                     write once that process is gone)
//! ```
//!
//! **Crash safety.** [`write_checkpoint`] fills `.<name>.tmp-<pid>`, syncs every file, writes the
//! `COMPLETE` seal last and renames the directory into place. Directories under a name that
//! resume looks at (`<name>`, `<name>.previous`) only ever appear and disappear by a rename, so
//! they are never partial: an older checkpoint is renamed to a `.trash` name before it is
//! deleted, and the only complete checkpoint is never moved aside before its successor is
//! complete. At every instant `last` or `last.previous` is a complete checkpoint;
//! [`find_checkpoint`] takes the first of them whose seal matches its files and whose
//! `state.json` parses, and never one whose seal is missing (a directory half deleted by an
//! older version) or does not match. `crates/mmcl-train/tests/checkpoint_faults.rs` stops the
//! writer after each of its steps, twice in a row, and checks this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mmcl_nn::StateDict;
use mmcl_nn::rng::RngState;
use mmcl_nn::schedule::WarmupCosine;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod protocol;

use protocol::{Kind, inspect, previous_of};
pub use protocol::{write_checkpoint, write_checkpoint_with_faults};

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
/// File name of the seal written last into a checkpoint directory: the byte length of every
/// other file, so a directory missing or truncating any of them is recognisably incomplete.
pub const COMPLETE_FILE: &str = "COMPLETE";

/// The largest `state.json` read: it holds a configuration and counters (kilobytes), so anything
/// near this is not a training state, and is refused before it is read into memory.
const MAX_STATE_BYTES: u64 = 16 << 20;
/// The largest `COMPLETE` seal read (a few lines of JSON).
const MAX_SEAL_BYTES: u64 = 1 << 20;

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
    /// The number of data-parallel replicas that trained the run (1 in checkpoints written
    /// before data-parallel training existed).
    #[serde(default = "one_replica")]
    pub world_size: usize,
}

fn one_replica() -> usize {
    1
}

impl TrainState {
    /// Reads `state.json` of a checkpoint directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = read_bounded(&path, MAX_STATE_BYTES, "a training state")?;
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| Error::json(&path, e))?;
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

/// The ECG encoder file named by `path`, however the user names a model: the file itself
/// (`ecg_encoder.safetensors`, a converted or released checkpoint), a checkpoint directory
/// holding `ecg_encoder.safetensors` (`<run>/checkpoints/best`), or a run directory (its latest
/// complete checkpoint, [`find_checkpoint`], so a crash between two checkpoints is survived).
pub fn find_ecg_encoder(path: &Path) -> Result<PathBuf> {
    find_checkpoint_file(path, ECG_ENCODER_FILE)
}

/// The image encoder file named by `path`, as [`find_ecg_encoder`] (`image_encoder.safetensors`
/// of the multimodal stage's checkpoints).
pub fn find_image_encoder(path: &Path) -> Result<PathBuf> {
    find_checkpoint_file(path, IMAGE_ENCODER_FILE)
}

/// The full model file named by `path`, as [`find_ecg_encoder`] (`model.safetensors`).
pub fn find_model_file(path: &Path) -> Result<PathBuf> {
    find_checkpoint_file(path, MODEL_FILE)
}

/// The file `name` of a checkpoint named by `path`: `path` itself when it is a file, else
/// `path/name`, else `name` in the run directory's latest complete checkpoint.
fn find_checkpoint_file(path: &Path, name: &str) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let direct = path.join(name);
    if direct.is_file() {
        return Ok(direct);
    }
    let checkpoint = find_checkpoint(path).map_err(|e| {
        Error::checkpoint(
            path,
            format!(
                "neither a file, nor a checkpoint directory holding {name}, nor a run \
                 directory with a complete checkpoint ({e})"
            ),
        )
    })?;
    let file = checkpoint.join(name);
    if file.is_file() {
        Ok(file)
    } else {
        Err(Error::checkpoint(
            &checkpoint,
            format!("the checkpoint has no {name}"),
        ))
    }
}

/// The name of a per-epoch checkpoint (`epoch-0009` after the tenth epoch).
pub fn epoch_dir_name(epochs_done: usize) -> String {
    format!("epoch-{:04}", epochs_done.saturating_sub(1))
}

/// The checkpoint to resume from, given a run directory or a checkpoint directory: a directory
/// holding `state.json` is taken as is, unless its seal shows it incomplete; a run directory
/// gives `checkpoints/last`, or `checkpoints/last.previous` when a crash interrupted the swap.
/// A directory whose seal does not match its files is never chosen, nor an unsealed
/// `last.previous` (an older version may have left it half deleted).
pub fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() || path.join(COMPLETE_FILE).is_file() {
        inspect(path)?;
        return Ok(path.to_path_buf());
    }
    let last = last_dir(path);
    let previous = previous_of(&last, "last");
    let mut problems = Vec::new();
    match inspect(&last) {
        Ok(Some(_)) => return Ok(last),
        Ok(None) => {}
        Err(e) => problems.push(e.to_string()),
    }
    match inspect(&previous) {
        Ok(Some(Kind::Sealed)) => return Ok(previous),
        Ok(Some(Kind::Unsealed)) => problems.push(format!(
            "{}: has no {COMPLETE_FILE} seal, so it may be half deleted (pass it to --resume \
             explicitly if you know it is whole)",
            previous.display()
        )),
        Ok(None) => {}
        Err(e) => problems.push(e.to_string()),
    }
    if !path.exists() {
        return Err(Error::checkpoint(path, "no such run directory"));
    }
    if !problems.is_empty() {
        return Err(Error::checkpoint(
            path,
            format!("no complete checkpoint: {}", problems.join("; ")),
        ));
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

/// The `steps` metadata of an optimiser state file, read from its header alone (the header's
/// claimed length is checked against the file before anything is allocated from it).
pub fn optimizer_steps(dir: &Path, file: &str) -> Result<u64> {
    let path = dir.join(file);
    // A damaged header is a damaged checkpoint (what resume looks for to skip it).
    let metadata = mmcl_nn::checkpoint::read_safetensors_metadata(&path).map_err(|e| match e {
        mmcl_nn::Error::BadCheckpoint { reason, .. } => Error::checkpoint(&path, reason),
        other => other.into(),
    })?;
    metadata
        .get("steps")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::checkpoint(&path, "the optimiser state has no step count"))
}

/// Reads a small file of a checkpoint whole ([`mmcl_core::files::read_regular_bounded`]):
/// a regular file of at most `limit` bytes (`what` names its role in the error), so that a
/// hostile or damaged file cannot exhaust memory or block.
fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    Ok(mmcl_core::files::read_regular_bounded(path, limit, what)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use std::fs;

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
            world_size: 1,
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
