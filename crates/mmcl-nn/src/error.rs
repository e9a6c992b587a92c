//! The error type of this crate.

use std::path::PathBuf;

use crate::checkpoint::LoadReport;

/// Errors of the building blocks, optimisers and checkpoint I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A checkpoint file is not in a format we read, or is damaged.
    #[error("{}: not a readable checkpoint: {reason}", path.display())]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint's tensors do not fit the model (missing, unexpected or mis-shaped keys).
    #[error("{}: checkpoint does not fit the model: {report}", path.display())]
    CheckpointMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// What matched and what did not.
        report: Box<LoadReport>,
    },

    /// A CUDA device could not be opened (no CUDA build, no such device, driver error).
    #[error("cannot open CUDA device {ordinal}")]
    DeviceUnavailable {
        /// The device's ordinal.
        ordinal: usize,
        /// Why candle could not open it.
        #[source]
        source: candle_core::Error,
    },

    /// A CUDA device was asked of a build without the `cuda` feature.
    #[error(
        "this build has no CUDA support: rebuild with `cargo build --release --features cuda` \
         (the CUDA toolkit must be installed; see the README's \"GPU and multi-GPU\"), or use \
         --device cpu"
    )]
    CudaNotBuilt,

    /// An argument is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A file could not be read or written, or another failure of the foundation layer
    /// (`mmcl-core`) than an argument: carried as it is.
    #[error(transparent)]
    Core(mmcl_core::Error),
}

impl Error {
    /// A file that could not be read or written ([`mmcl_core::Error::Io`]).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Core(mmcl_core::Error::io(path, source))
    }
}

impl From<mmcl_core::Error> for Error {
    fn from(e: mmcl_core::Error) -> Self {
        match e {
            mmcl_core::Error::InvalidInput(reason) => Error::InvalidArgument(reason),
            other => Error::Core(other),
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
