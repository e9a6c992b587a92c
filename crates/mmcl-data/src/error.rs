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

    /// A JSON file (dataset index, configuration) could not be parsed or written.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
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

impl From<mmcl_core::Error> for Error {
    fn from(e: mmcl_core::Error) -> Self {
        match e {
            mmcl_core::Error::Io { path, source } => Error::Io { path, source },
            mmcl_core::Error::Format { path, reason }
            | mmcl_core::Error::Config { path, reason } => Error::Format { path, reason },
            mmcl_core::Error::Json { path, source, .. } => Error::Json { path, source },
            mmcl_core::Error::InvalidInput(reason) => Error::InvalidInput(reason),
            // Metrics are not computed by the data layer.
            undefined @ mmcl_core::Error::Undefined { .. } => {
                Error::InvalidInput(undefined.to_string())
            }
        }
    }
}

impl Error {
    /// A [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The file this error is about, where it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Format { path, .. }
            | Error::Xml { path, .. }
            | Error::Csv { path, .. }
            | Error::Json { path, .. }
            | Error::Safetensors { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
