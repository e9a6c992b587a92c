//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the data layer. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written, its content is not what its format requires, or a
    /// JSON file (dataset index, configuration) could not be parsed or written: the foundation
    /// layer's file errors, carried as they are.
    #[error(transparent)]
    Core(#[from] mmcl_core::Error),

    /// An XML file is not well-formed.
    #[error("{}: malformed XML: {source}", path.display())]
    Xml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: quick_xml::Error,
    },

    /// A CSV file could not be parsed.
    #[error("{}: {source}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: csv::Error,
    },

    /// A safetensors shard could not be parsed or written.
    #[error("{}: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// Arrays or settings given to a computation do not fit together.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The batch loader's worker stopped before delivering all batches.
    #[error("the batch loader's worker stopped unexpectedly")]
    LoaderStopped,

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A file whose content is not what its format requires ([`mmcl_core::Error::Format`]).
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Core(mmcl_core::Error::format(path, reason))
    }

    /// A file that could not be read or written ([`mmcl_core::Error::Io`]).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Core(mmcl_core::Error::io(path, source))
    }

    /// A JSON file that could not be parsed or written ([`mmcl_core::Error::Json`]).
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Core(mmcl_core::Error::json(path, source))
    }

    /// The file this error is about, where it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Core(core) => core.path(),
            Error::Xml { path, .. } | Error::Csv { path, .. } | Error::Safetensors { path, .. } => {
                Some(path)
            }
            Error::InvalidInput(_) | Error::LoaderStopped | Error::Candle(_) => None,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
