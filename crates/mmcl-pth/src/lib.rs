//! PyTorch checkpoint import for the mmcl workspace: the tensors of `torch.save` zip archives
//! (`.pth`, `.pt`, `.ckpt`, `.bin`), and declarative tables that rename their keys.
//!
//! - [`read_file`] / [`read_bytes`] run the archive's `data.pkl` on our own pickle machine (it
//!   never imports or calls anything; globals follow an allow-list modelled on PyTorch's
//!   `weights_only` loading) and return every tensor reachable through string-keyed
//!   dictionaries, named by their `.`-joined keys (`state_dict.encoder_ecg.cls_token`), on the
//!   CPU in their stored dtype. Optimizer states, hyper-parameter objects and other values are
//!   skipped without reading their storages.
//! - Every size the file states is checked before memory is taken for it, the pickle's work is
//!   bounded, and tensor views must stay inside their storages: a damaged or hostile file gives
//!   an [`Error`] naming the file (limits in the workspace's `docs/security.md`).
//! - [`KeyRemap`] states how a checkpoint's keys map onto a model's (strip or replace a prefix,
//!   rename a key, drop keys), applied to every key.
//!
//! `mmcl-nn`'s `StateDict::read` reads PyTorch archives through this crate and turns [`Error`]
//! into its own `BadCheckpoint` error, with the same message.
//!
//! ```
//! use std::path::Path;
//!
//! use mmcl_pth::{KeyRemap, read_file};
//!
//! # fn main() -> Result<(), mmcl_pth::Error> {
//! // A PyTorch Lightning checkpoint: weights under `state_dict.`, optimizer states and
//! // hyper-parameters beside them.
//! let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lightning.ckpt");
//! let tensors = read_file(&path)?;
//! assert!(tensors.iter().any(|(name, _)| name == "state_dict.encoder_ecg.cls_token"));
//!
//! // The ECG encoder under its own names; everything else left aside.
//! let encoder = KeyRemap::new()
//!     .strip_prefix("state_dict.encoder_ecg.")
//!     .drop_unmatched()
//!     .apply_to(tensors);
//! let names: Vec<&str> = encoder.kept.iter().map(|(name, _)| name.as_str()).collect();
//! assert_eq!(names, ["cls_token", "blocks.0.attn.qkv.weight"]);
//! assert_eq!(encoder.kept[1].1.dims(), &[12, 4]);
//! assert!(encoder.dropped.contains(&"state_dict.encoder_imaging.0.weight".to_string()));
//! # Ok(())
//! # }
//! ```

mod archive;
mod error;
mod pickle;
mod remap;
mod tensors;

use std::path::Path;

use candle_core::Tensor;

pub use error::{ArchiveError, Error};
pub use pickle::PickleError;
pub use remap::{KeyRemap, KeyRule, Remapped, glob_match};

/// The first byte of a legacy (pre-1.6) `torch.save` file: a bare pickle's PROTO opcode, where
/// the zip format starts with `PK`.
pub const LEGACY_MAGIC: u8 = 0x80;

/// Reads every tensor of the PyTorch zip archive at `path`, on the CPU, in its stored dtype
/// (`int8` is widened to `i16` and `bool` stored as `u8`, which candle has), in the order the
/// pickle lists them.
///
/// # Errors
/// [`ArchiveError::Io`] when the file cannot be read; another reason when it is not a
/// `torch.save` zip archive (empty, the legacy format, another format), is damaged, or asks for
/// more than its sizes allow.
pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>, Error> {
    let unreadable = |reason| Error {
        path: path.to_path_buf(),
        reason: Box::new(reason),
    };
    // A regular file only: a device would be read without end, a FIFO would block.
    let meta = std::fs::metadata(path).map_err(|e| unreadable(ArchiveError::Io(e)))?;
    if !meta.is_file() {
        let not_regular = std::io::Error::other("not a regular file");
        return Err(unreadable(ArchiveError::Io(not_regular)));
    }
    let bytes = std::fs::read(path).map_err(|e| unreadable(ArchiveError::Io(e)))?;
    read_bytes(&bytes).map_err(unreadable)
}

/// [`read_file`] for an archive held in memory.
///
/// # Errors
/// What is wrong with the bytes; the caller adds the file name.
pub fn read_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, ArchiveError> {
    match bytes.first() {
        None => Err(ArchiveError::Empty),
        Some(&LEGACY_MAGIC) => Err(ArchiveError::LegacyFormat),
        Some(_) => archive::read_torch_zip(bytes),
    }
}
