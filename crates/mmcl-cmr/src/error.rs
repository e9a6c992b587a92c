//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the CMR encoder: building, running, and loading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A building block or checkpoint operation of `mmcl-nn` failed (this includes checkpoints
    /// that do not fit the model, with the offending keys named).
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// A configuration value is out of range or unknown.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// An input tensor has the wrong shape or type for the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A checkpoint holds no ResNet image encoder we recognise, or several.
    #[error("{}: {reason}", path.display())]
    UnrecognisedCheckpoint {
        /// The checkpoint file (empty for in-memory state dicts).
        path: PathBuf,
        /// What was looked for and what was found.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
