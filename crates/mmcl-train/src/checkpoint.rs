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
//!       ecg_encoder.safetensors       the ECG encoder alone (timm keys, for embed-ecg)
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

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
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
/// File name of the seal written last into a checkpoint directory: the byte length of every
/// other file, so a directory missing or truncating any of them is recognisably incomplete.
pub const COMPLETE_FILE: &str = "COMPLETE";

/// The largest `state.json` read: it holds a configuration and counters (kilobytes), so anything
/// near this is not a training state, and is refused before it is read into memory.
const MAX_STATE_BYTES: u64 = 16 << 20;
/// The largest `COMPLETE` seal read (a few lines of JSON).
const MAX_SEAL_BYTES: u64 = 1 << 20;
/// The largest safetensors header read for an optimiser's step count (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

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
        let bytes = read_bounded(&path, MAX_STATE_BYTES, "a training state")?;
        let state: Self = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
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

/// Writes a checkpoint directory at `dir` crash-safely: every file into `.<name>.tmp-<pid>`,
/// synced, then the `COMPLETE` seal, then the directory renamed into place. A complete
/// checkpoint already at `dir` is moved to `<dir>.previous` first and deleted once the new one is
/// in place; an incomplete one is deleted. Temporaries of killed writers are removed first.
pub fn write_checkpoint(
    dir: &Path,
    files: &[(&str, CheckpointFile)],
    state: &TrainState,
) -> Result<()> {
    write_checkpoint_with_faults(dir, files, state, &mut |_| false)
}

/// [`write_checkpoint`] with a fault-injection hook, for tests: `stop_after` is called with the
/// name of each filesystem step of the protocol once it is done, and returning `true` makes the
/// writer return at once as if the process had been killed there (nothing is cleaned up), with
/// an [`Error::Checkpoint`] naming `dir` and the step.
#[doc(hidden)]
pub fn write_checkpoint_with_faults(
    dir: &Path,
    files: &[(&str, CheckpointFile)],
    state: &TrainState,
    stop_after: &mut dyn FnMut(&str) -> bool,
) -> Result<()> {
    let mut steps = Steps { stop_after };
    match rotate(dir, files, state, &mut steps) {
        Ok(()) => Ok(()),
        Err(Halt::Failed(e)) => Err(e),
        Err(Halt::Stopped(step)) => Err(Error::checkpoint(
            dir,
            format!("the checkpoint writer was stopped after the step \"{step}\""),
        )),
    }
}

/// Why the protocol did not finish.
enum Halt {
    /// A filesystem operation failed.
    Failed(Error),
    /// The fault-injection hook stopped it after this step.
    Stopped(String),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Failed(e)
    }
}

impl From<mmcl_nn::Error> for Halt {
    fn from(e: mmcl_nn::Error) -> Self {
        Halt::Failed(e.into())
    }
}

/// Reports each finished step to the hook.
struct Steps<'a> {
    stop_after: &'a mut dyn FnMut(&str) -> bool,
}

impl Steps<'_> {
    fn done(&mut self, step: impl FnOnce() -> String) -> std::result::Result<(), Halt> {
        let step = step();
        if (self.stop_after)(&step) {
            return Err(Halt::Stopped(step));
        }
        Ok(())
    }
}

/// The whole protocol; see the module documentation.
fn rotate(
    dir: &Path,
    files: &[(&str, CheckpointFile)],
    state: &TrainState,
    steps: &mut Steps,
) -> std::result::Result<(), Halt> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .ok_or_else(|| Error::checkpoint(dir, "a checkpoint directory needs a plain UTF-8 name"))?
        .to_string();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    remove_stale(parent, &name, steps)?;

    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let trash = parent.join(format!(".{name}.trash-{pid}"));
    let previous = previous_of(dir, &name);
    match fill(&tmp, files, state, steps) {
        Ok(()) => {}
        Err(Halt::Failed(e)) => {
            // A real failure (disk full, say): nothing refers to the temporary, remove it now.
            let _ = fs::remove_dir_all(&tmp);
            return Err(Halt::Failed(e));
        }
        Err(stopped) => return Err(stopped),
    }

    match inspect(dir) {
        Ok(Some(kind)) => {
            if kind == Kind::Unsealed {
                // Written by an older version (whole, by a rename): sealed before it moves, so
                // that as `<name>.previous` it is still found.
                seal(dir)?;
                steps.done(|| format!("seal the older {name}"))?;
            }
            // `dir` is complete, so the previous one can go.
            discard(&previous, &trash, steps)?;
            fs::rename(dir, &previous).map_err(|e| Error::io(dir, e))?;
            steps.done(|| format!("rename {name} to {name}.previous"))?;
        }
        Ok(None) => {}
        // Incomplete: never chosen, and in the way of the rename.
        Err(_) => discard(dir, &trash, steps)?,
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    steps.done(|| format!("rename the temporary to {name}"))?;
    sync_dir(parent);
    steps.done(|| "sync the checkpoints directory".to_string())?;
    discard(&previous, &trash, steps)?;
    Ok(())
}

/// Writes every file of a checkpoint into the new directory `tmp`, synced, and seals it.
fn fill(
    tmp: &Path,
    files: &[(&str, CheckpointFile)],
    state: &TrainState,
    steps: &mut Steps,
) -> std::result::Result<(), Halt> {
    fs::create_dir(tmp).map_err(|e| Error::io(tmp, e))?;
    steps.done(|| "create the temporary directory".to_string())?;
    for (file, content) in files {
        if !is_plain_name(file) || *file == STATE_FILE || *file == COMPLETE_FILE {
            return Err(Error::checkpoint(
                tmp,
                format!("\"{file}\" cannot be the name of a checkpoint file"),
            )
            .into());
        }
        let path = tmp.join(file);
        let metadata = (!content.metadata.is_empty()).then(|| content.metadata.clone());
        content.tensors.write_safetensors(&path, metadata)?;
        sync_file(&path)?;
        steps.done(|| format!("write {file}"))?;
    }
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|source| Error::Json {
        path: state_path.clone(),
        source,
    })?;
    fs::File::create(&state_path)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| Error::io(&state_path, e))?;
    steps.done(|| format!("write {STATE_FILE}"))?;
    seal(tmp)?;
    steps.done(|| format!("write {COMPLETE_FILE}"))?;
    sync_dir(tmp);
    steps.done(|| "sync the temporary directory".to_string())?;
    Ok(())
}

/// The `COMPLETE` seal: the byte length of every file of the directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seal {
    /// File name → byte length.
    files: BTreeMap<String, u64>,
}

/// Writes the seal of `dir` (atomically and synced: a torn seal would hide a whole checkpoint).
fn seal(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Dot files are temporaries of the file writers, not part of the checkpoint.
        if meta.is_file() && name != COMPLETE_FILE && !name.starts_with('.') {
            files.insert(name, meta.len());
        }
    }
    let path = dir.join(COMPLETE_FILE);
    let text = serde_json::to_vec_pretty(&Seal { files }).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    mmcl_nn::io::write_bytes_atomic(&path, &text)?;
    Ok(())
}

/// What a checkpoint directory that resume may use is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Its seal matches its files.
    Sealed,
    /// Written before seals existed: `state.json` parses, there is no seal.
    Unsealed,
}

/// Whether `dir` is a usable checkpoint: `None` when nothing is there, an error naming the
/// offending file when it is incomplete or damaged.
fn inspect(dir: &Path) -> Result<Option<Kind>> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(dir, e)),
        Ok(_) if !dir.is_dir() => return Err(Error::checkpoint(dir, "is not a directory")),
        Ok(_) => {}
    }
    let seal_path = dir.join(COMPLETE_FILE);
    if !seal_path.exists() {
        TrainState::read(dir)?;
        return Ok(Some(Kind::Unsealed));
    }
    let bytes = read_bounded(&seal_path, MAX_SEAL_BYTES, "a checkpoint seal")?;
    let seal: Seal = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: seal_path.clone(),
        source,
    })?;
    if !seal.files.contains_key(STATE_FILE) {
        return Err(Error::checkpoint(
            &seal_path,
            format!("the seal does not list {STATE_FILE}"),
        ));
    }
    for (name, expected) in &seal.files {
        if !is_plain_name(name) {
            return Err(Error::checkpoint(
                &seal_path,
                format!("the seal lists \"{name}\", which is not a file name"),
            ));
        }
        let path = dir.join(name);
        let len = match fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(Error::checkpoint(&path, "is not a file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::checkpoint(
                    &path,
                    "is missing, the checkpoint is incomplete",
                ));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if len != *expected {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "is {len} bytes, the seal {} says {expected}: the checkpoint is incomplete \
                     or damaged",
                    seal_path.display()
                ),
            ));
        }
    }
    TrainState::read(dir)?;
    Ok(Some(Kind::Sealed))
}

/// Whether `name` is a single path component (not `.`, `..`, nothing or a path).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

/// `<dir>.previous`.
fn previous_of(dir: &Path, name: &str) -> PathBuf {
    dir.with_file_name(format!("{name}.previous"))
}

/// Removes whatever is at `path` without ever leaving it partial under its name: it is renamed
/// to `trash` first, then deleted.
fn discard(path: &Path, trash: &Path, steps: &mut Steps) -> std::result::Result<(), Halt> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    fs::rename(path, trash).map_err(|e| Error::io(path, e))?;
    steps.done(|| format!("rename {} to {}", file_name(path), file_name(trash)))?;
    remove_any(trash).map_err(|e| Error::io(trash, e))?;
    steps.done(|| format!("delete {}", file_name(trash)))?;
    Ok(())
}

/// The last component of `path`, for step names.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Deletes a file, symbolic link or directory tree.
fn remove_any(path: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Removes the temporaries of killed writers in `parent`: this process's own ones for `name`
/// (left by an earlier failed or interrupted write), and any of a process that is gone.
fn remove_stale(parent: &Path, name: &str, steps: &mut Steps) -> std::result::Result<(), Halt> {
    let own = std::process::id();
    let entries = fs::read_dir(parent).map_err(|e| Error::io(parent, e))?;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some((owner, pid)) = file.to_str().and_then(parse_temporary) else {
            continue;
        };
        let stale = if pid == own {
            owner == name
        } else {
            !process_alive(pid)
        };
        if stale {
            // Best effort: one that cannot be removed now (another user's, say) is retried next
            // time, and a name this write needs gives its own clear error below.
            let _ = remove_any(&entry.path());
            steps.done(|| format!("remove the stale {}", file.to_string_lossy()))?;
        }
    }
    Ok(())
}

/// `.<name>.tmp-<pid>` or `.<name>.trash-<pid>` → (name, pid).
fn parse_temporary(file: &str) -> Option<(&str, u32)> {
    let (stem, pid) = file.strip_prefix('.')?.rsplit_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid = pid.parse().ok()?;
    let name = stem
        .strip_suffix(".tmp")
        .or_else(|| stem.strip_suffix(".trash"))?;
    Some((name, pid))
}

/// Whether process `pid` may still be running. Without `/proc` this cannot be told, and the
/// answer is yes: keeping a stale temporary only costs disk space, deleting a live one would
/// break its writer.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Flushes a written file to the disk, so that a seal written after it never outlives it.
fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Flushes a directory's entries to the disk. Best effort: some filesystems refuse to sync a
/// directory, and the files themselves are synced already.
fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
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
    let damaged =
        |reason: String| Error::checkpoint(&path, format!("damaged safetensors header: {reason}"));
    let mut f = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
    let mut prefix = [0u8; 8];
    f.read_exact(&mut prefix).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => damaged(format!("the file is only {len} bytes")),
        _ => Error::io(&path, e),
    })?;
    let n = u64::from_le_bytes(prefix);
    let room = len.saturating_sub(8);
    if n > room || n > MAX_HEADER_BYTES {
        return Err(damaged(format!(
            "it claims {n} bytes of header, the file holds {room} after the length"
        )));
    }
    let mut header = Vec::new();
    f.take(n)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(&path, e))?;
    if header.len() as u64 != n {
        return Err(damaged("the file ended inside the header".into()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| damaged(e.to_string()))?;
    value
        .get("__metadata__")
        .and_then(|m| m.get("steps"))
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::checkpoint(&path, "the optimiser state has no step count"))
}

/// Reads a small file whole, refusing one larger than `limit` bytes (`what` names its role in
/// the error) before reading it, so a hostile or damaged file cannot exhaust memory.
fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(Error::checkpoint(
            path,
            format!("{len} bytes is far too large for {what} (at most {limit})"),
        ));
    }
    let mut bytes = Vec::new();
    // `take` also bounds a file that grows while it is read.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::checkpoint(
            path,
            format!("grew past {limit} bytes while it was read as {what}"),
        ));
    }
    Ok(bytes)
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
