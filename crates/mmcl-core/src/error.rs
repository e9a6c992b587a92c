//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the foundation layer. Every variant that concerns a file names it; the crates
/// above convert each variant into their own variant of the same meaning, so that messages do
/// not depend on which layer noticed the problem.
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
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
