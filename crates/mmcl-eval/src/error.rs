//! The error type of this crate.

use std::path::PathBuf;

/// Errors of metrics, probes, plots and reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Arrays handed to a computation do not fit together or hold values it cannot use.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A metric is undefined on the data it was given (for example AUROC with one class only).
    #[error("{metric} is undefined: {reason}")]
    Undefined {
        /// The metric.
        metric: &'static str,
        /// Why, in words.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (metrics, run log) could not be parsed.
    #[error("{}{}: {source}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Json {
        /// The file.
        path: PathBuf,
        /// The 1-based line, for JSON-lines files.
        line: Option<usize>,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A file parsed but its content is not what the format requires.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },

    /// Drawing a figure failed.
    #[error("{}: cannot draw the figure: {source}", path.display())]
    Plot {
        /// The figure being written.
        path: PathBuf,
        /// The plotting library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Writing a file atomically, or reading or matching a checkpoint, failed.
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// The ECG encoder could not be built, loaded or run.
    #[error(transparent)]
    Ecg(Box<mmcl_ecg::Error>),

    /// The CMR encoder or a projection head could not be built, loaded or run.
    #[error(transparent)]
    Cmr(Box<mmcl_cmr::Error>),

    /// The dataset cache or the loader failed.
    #[error(transparent)]
    Data(Box<mmcl_data::Error>),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A run or checkpoint folder named as a model could not be resolved to its file.
    #[error(transparent)]
    Train(Box<mmcl_train::Error>),

    /// A collective of the data-parallel group failed (fine-tuning in a group).
    #[error(transparent)]
    Distributed(#[from] mmcl_nn::distributed::DistributedError),
}

// The errors of the model and data crates are large; boxed, they keep `Result` small.
impl From<mmcl_core::Error> for Error {
    fn from(e: mmcl_core::Error) -> Self {
        match e {
            mmcl_core::Error::Io { path, source } => Error::Io { path, source },
            mmcl_core::Error::Format { path, reason }
            | mmcl_core::Error::Config { path, reason } => Error::Format { path, reason },
            mmcl_core::Error::Json { path, line, source } => Error::Json { path, line, source },
            mmcl_core::Error::InvalidInput(reason) => Error::InvalidInput(reason),
            mmcl_core::Error::Undefined { metric, reason } => Error::Undefined { metric, reason },
        }
    }
}

impl From<mmcl_ecg::Error> for Error {
    fn from(e: mmcl_ecg::Error) -> Self {
        Error::Ecg(Box::new(e))
    }
}

impl From<mmcl_cmr::Error> for Error {
    fn from(e: mmcl_cmr::Error) -> Self {
        Error::Cmr(Box::new(e))
    }
}

impl From<mmcl_data::Error> for Error {
    fn from(e: mmcl_data::Error) -> Self {
        Error::Data(Box::new(e))
    }
}

impl From<mmcl_train::Error> for Error {
    fn from(e: mmcl_train::Error) -> Self {
        Error::Train(Box::new(e))
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
