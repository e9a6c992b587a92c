//! The crash-safe writing protocol of checkpoint directories (see the module documentation of
//! [`crate::checkpoint`]), and the inspection that tells a complete checkpoint from a partial
//! one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::{COMPLETE_FILE, CheckpointFile, MAX_SEAL_BYTES, STATE_FILE, TrainState, read_bounded};
use crate::{Error, Result};

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
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::json(&state_path, e))?;
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
    let text = serde_json::to_vec_pretty(&Seal { files }).map_err(|e| Error::json(&path, e))?;
    mmcl_nn::io::write_bytes_atomic(&path, &text)?;
    Ok(())
}

/// What a checkpoint directory that resume may use is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Its seal matches its files.
    Sealed,
    /// Written before seals existed: `state.json` parses, there is no seal.
    Unsealed,
}

/// Whether `dir` is a usable checkpoint: `None` when nothing is there, an error naming the
/// offending file when it is incomplete or damaged.
pub(super) fn inspect(dir: &Path) -> Result<Option<Kind>> {
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
    let seal: Seal = serde_json::from_slice(&bytes).map_err(|e| Error::json(&seal_path, e))?;
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
pub(super) fn previous_of(dir: &Path, name: &str) -> PathBuf {
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
