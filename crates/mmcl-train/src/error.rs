//! The error type of this crate.

use std::path::{Path, PathBuf};

/// Errors of the trainers: configuration, data, models, checkpoints and the training itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A building block, optimiser or checkpoint operation of `mmcl-nn` failed.
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// The ECG encoder could not be built or loaded.
    #[error(transparent)]
    Ecg(#[from] mmcl_ecg::Error),

    /// The image encoder could not be built or loaded.
    #[error(transparent)]
    Cmr(#[from] mmcl_cmr::Error),

    /// A loss could not be computed.
    #[error(transparent)]
    Loss(#[from] mmcl_losses::Error),

    /// The dataset cache or the loader failed.
    #[error(transparent)]
    Data(#[from] mmcl_data::Error),

    /// A file could not be read, written or parsed (JSON: configuration, training state), or the
    /// run log or a validation metric failed: the foundation layer's errors, carried as they are.
    #[error(transparent)]
    Core(mmcl_core::Error),

    /// A configuration value is missing, out of range or inconsistent.
    #[error("invalid configuration{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config {
        /// The configuration file, when the value came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },

    /// A run directory or checkpoint is missing pieces or does not fit the model.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The loss became NaN or infinite; the run stopped and the last good checkpoint was kept.
    #[error(
        "the training loss became non-finite ({value}) at epoch {epoch}, batch {batch} \
         (optimiser step {step}); the run stopped{}",
        last_good.as_ref().map(|p| format!(", the last good checkpoint is {}", p.display()))
            .unwrap_or_else(|| ", no checkpoint had been written yet".to_string())
    )]
    NonFiniteLoss {
        /// The offending value.
        value: f64,
        /// The epoch (0-based).
        epoch: usize,
        /// The batch within the epoch (0-based).
        batch: usize,
        /// Optimiser steps taken before it.
        step: u64,
        /// The checkpoint left in place.
        last_good: Option<PathBuf>,
    },

    /// Invalid input to a function of this crate.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A collective of the data-parallel group failed.
    #[error(transparent)]
    Distributed(#[from] mmcl_nn::distributed::DistributedError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Core(mmcl_core::Error::io(path, source))
    }

    /// A JSON file on `path` that could not be parsed or written.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Core(mmcl_core::Error::json(path, source))
    }

    /// A configuration error, without a file.
    pub fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            path: None,
            reason: reason.into(),
        }
    }

    /// This error with `path` as the configuration file it is about, when it names none yet
    /// (validation errors are raised before the file is known).
    pub fn in_config_file(self, path: &Path) -> Self {
        match self {
            Error::Config { path: None, reason } => Error::Config {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        }
    }

    /// A checkpoint error on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<mmcl_core::Error> for Error {
    fn from(e: mmcl_core::Error) -> Self {
        match e {
            mmcl_core::Error::Config { path, reason } => Error::Config {
                path: Some(path),
                reason,
            },
            other => Error::Core(other),
        }
    }
}
