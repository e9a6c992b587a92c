//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the pipeline: its configuration, its files and every stage it drives.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent or out of range.
    #[error("{}{reason}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config {
        /// The configuration file, when the configuration came from one.
        path: Option<PathBuf>,
        /// What is wrong, in words.
        reason: String,
    },

    /// A stage's data do not allow the evaluation (a split without subjects, a label with one
    /// class only, …).
    #[error("{stage}: {reason}")]
    Insufficient {
        /// The stage.
        stage: &'static str,
        /// What is missing, in words.
        reason: String,
    },

    /// A file or folder could not be read, written or parsed: the foundation layer's file
    /// errors, carried as they are.
    #[error(transparent)]
    Core(mmcl_core::Error),

    /// Tensor computation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Building blocks and checkpoint I/O.
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// The ECG encoder.
    #[error(transparent)]
    Ecg(#[from] mmcl_ecg::Error),

    /// The synthetic cohort.
    #[error(transparent)]
    Synth(#[from] mmcl_synth::Error),

    /// The dataset cache.
    #[error(transparent)]
    DataLayer(#[from] mmcl_data::Error),

    /// Metrics, probes, plots.
    #[error(transparent)]
    Eval(#[from] mmcl_eval::Error),

    /// The trainers.
    #[error(transparent)]
    Train(#[from] mmcl_train::Error),
}

impl From<mmcl_core::Error> for Error {
    /// A configuration file's error is the pipeline's configuration error; the others are
    /// carried as they are.
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

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Core(mmcl_core::Error::io(path, source))
    }

    /// A JSON file on `path` that could not be parsed or written.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Core(mmcl_core::Error::json(path, source))
    }

    /// A configuration error without a file.
    pub fn config(reason: impl Into<String>) -> Self {
        Self::Config {
            path: None,
            reason: reason.into(),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
