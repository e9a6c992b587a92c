//! Why a checkpoint could not be read: [`ArchiveError`] says what went wrong, [`Error`] adds the
//! file.

use std::path::PathBuf;

use crate::pickle::PickleError;
use crate::tensors::{MAX_FLATTENED_ENTRIES, MAX_KEY_PATH_BYTES};

/// Why a PyTorch archive could not be read (the file name comes with [`Error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The file could not be read.
    #[error("{0}")]
    Io(std::io::Error),
    /// The file holds no bytes.
    #[error("the file is empty")]
    Empty,
    /// Not a zip archive, or a damaged one.
    #[error("not a readable PyTorch zip archive ({0}); is it truncated?")]
    Zip(zip::result::ZipError),
    /// The legacy (pre-1.6) `torch.save` format: a bare pickle stream, not a zip archive.
    #[error(
        "a legacy (pre-1.6) PyTorch file; re-save it with torch.save(..., \
         _use_new_zipfile_serialization=True) or convert it to safetensors"
    )]
    LegacyFormat,
    /// No `data.pkl` entry.
    #[error("the zip archive has no data.pkl: not a torch.save file")]
    NoPickle,
    /// An entry could not be read.
    #[error("cannot read archive entry {0}: {1}")]
    Entry(String, std::io::Error),
    /// An entry declares more bytes than it may hold.
    #[error("archive entry {entry} declares {declared} bytes, more than {bound} ({limit} bytes)")]
    EntryTooLarge {
        /// The entry's name.
        entry: String,
        /// The size its header declares.
        declared: u64,
        /// The most it may hold.
        limit: u64,
        /// Where the limit comes from.
        bound: &'static str,
    },
    /// An entry inflates past the bytes it may hold (a zip bomb, or a lying header).
    #[error("archive entry {entry} inflates past {limit} bytes, {bound} (a zip bomb?)")]
    EntryInflates {
        /// The entry's name.
        entry: String,
        /// The most it may hold.
        limit: u64,
        /// Where the limit comes from.
        bound: &'static str,
    },
    /// A storage's declared size in bytes does not fit in a machine word.
    #[error("storage data/{key} declares {numel} elements, more bytes than any file holds")]
    StorageSize {
        /// The storage's entry name under `data/`.
        key: String,
        /// The element count the pickle declares.
        numel: usize,
    },
    /// The pickle could not be executed, or was refused.
    #[error("{0}")]
    Pickle(PickleError),
    /// The pickle is not a dictionary of tensors.
    #[error("the saved object is not a dictionary of tensors")]
    NotADict,
    /// No tensor is reachable through string-keyed dictionaries.
    #[error("the archive holds no tensors under string keys")]
    NoTensors,
    /// Collecting tensors visits too many dictionary entries or builds too many key bytes.
    #[error(
        "the saved dictionaries expand to more than {MAX_FLATTENED_ENTRIES} entries or \
         {MAX_KEY_PATH_BYTES} bytes of key names (one dictionary shared and nested over and over?)"
    )]
    TooManyEntries,
    /// A tensor refers to a storage entry that is absent.
    #[error("tensor {0} refers to storage data/{1}, which is missing (truncated archive?)")]
    MissingStorage(String, String),
    /// A tensor's element count or byte size overflows.
    #[error("tensor {tensor} has shape {size:?}, whose size in bytes overflows")]
    ShapeOverflow {
        /// The tensor's name.
        tensor: String,
        /// Its shape as the pickle states it.
        size: Vec<usize>,
    },
    /// A tensor's view reaches beyond its storage.
    #[error(
        "tensor {tensor} needs {needed} bytes of its storage but the archive holds {have} \
         (truncated?)"
    )]
    StorageTooSmall {
        /// The tensor's name.
        tensor: String,
        /// The bytes its view reaches.
        needed: usize,
        /// The bytes its storage holds.
        have: usize,
    },
    /// The tensors built would repeat storage bytes far more than real checkpoints do.
    #[error(
        "tensor {tensor} would bring the tensors built from the archive past {limit} bytes: \
         their views repeat the storages' bytes far more than checkpoints do"
    )]
    TooMuchRepetition {
        /// The tensor that crossed the limit.
        tensor: String,
        /// The most bytes the tensors built may take.
        limit: usize,
    },
    /// The archive declares a byte order we do not know.
    #[error("unknown byte order {0:?}")]
    ByteOrder(String),
    /// Building a tensor failed.
    #[error("cannot build tensor {0}: {1}")]
    Candle(String, candle_core::Error),
}

/// A checkpoint file that could not be read: the file and the reason.
///
/// The message is that of a file error (`mmcl_core::Error::Io`) for [`ArchiveError::Io`] and of
/// `mmcl_nn::Error::BadCheckpoint` otherwise; `mmcl-nn` converts this error into those.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{reason}", path.display(), reason.preamble())]
pub struct Error {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: Box<ArchiveError>,
}

impl ArchiveError {
    /// What the file's message says before the reason: nothing for a failed read, that the file
    /// is not a readable checkpoint otherwise.
    fn preamble(&self) -> &'static str {
        match self {
            ArchiveError::Io(_) => "",
            _ => "not a readable checkpoint: ",
        }
    }
}
