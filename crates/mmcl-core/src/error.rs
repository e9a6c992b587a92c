//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the foundation layer. Every variant that concerns a file names it. The crates
/// above carry these errors as they are (a `Core` variant of their own error type) rather than
/// re-declaring the file variants, so that a file error reads the same whichever layer noticed
/// it, and [`Error::path`] finds its file.
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

    /// A JSON file or JSON line could not be parsed or written.
    #[error("{}{}: {source}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Json {
        /// The file.
        path: PathBuf,
        /// The 1-based line of a JSON-lines file, where the error is in one line.
        line: Option<usize>,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A configuration file does not parse into its settings.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key where one is at fault.
        reason: String,
    },

    /// Arrays or settings given to a computation do not fit together.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A metric is undefined on the data given (one class only, constant targets, no samples).
    #[error("{metric} is undefined: {reason}")]
    Undefined {
        /// The metric.
        metric: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Format`] for `path`.
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

    /// An [`Error::Json`] for the whole of `path` (not one line of it).
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Json {
            path: path.into(),
            line: None,
            source,
        }
    }

    /// The file this error is about, where it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Format { path, .. }
            | Error::Json { path, .. }
            | Error::Config { path, .. } => Some(path),
            Error::InvalidInput(_) | Error::Undefined { .. } => None,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
