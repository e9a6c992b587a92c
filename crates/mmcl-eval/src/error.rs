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

    /// Writing a file atomically failed.
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
