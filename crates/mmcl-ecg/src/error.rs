//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the ECG encoder: configuration, input shapes, checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A building block or checkpoint operation of `mmcl-nn` failed.
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// The configuration is inconsistent.
    #[error("invalid ECG encoder configuration: {0}")]
    Config(String),

    /// A configuration file could not be read.
    #[error("{}: {source}", path.display())]
    ConfigIo {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A configuration file is not valid JSON for [`EcgVitConfig`](crate::EcgVitConfig).
    #[error("{}: not a valid ECG encoder configuration: {source}", path.display())]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// A configuration file is not valid: a value is mistyped, unknown or out of range.
    #[error("{}: {}{reason}", path.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    ConfigValue {
        /// The file.
        path: PathBuf,
        /// The key path of the value (`patch_size[1]`, `encoder.depth`), when the error is
        /// about one value.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },

    /// An input tensor does not have the shape the configuration expects.
    #[error("input of shape {got:?} does not match the configured input {expected}")]
    InputShape {
        /// What the configuration expects, in words.
        expected: String,
        /// The shape received.
        got: Vec<usize>,
    },

    /// A checkpoint does not hold an ECG encoder we can load.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An argument is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
