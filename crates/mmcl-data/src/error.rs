//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the data layer. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file's content is not what its format requires.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },

    /// Arrays given to a computation do not fit together.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
