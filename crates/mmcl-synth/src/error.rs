//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the cohort generator. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be created, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A configuration value is out of its range, or the configuration file is malformed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The configuration file could not be parsed.
    #[error("{}: {source}", path.display())]
    ConfigFile {
        /// The configuration file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The output folder exists and is not empty, and overwriting was not asked for.
    #[error(
        "{}: the output folder exists and is not empty (choose another folder or allow overwriting)",
        path.display()
    )]
    OutputExists {
        /// The output folder.
        path: PathBuf,
    },

    /// Measuring the phenotypes of a generated segmentation failed.
    #[error("subject {eid}: {source}")]
    Phenotypes {
        /// The subject.
        eid: u64,
        /// The data layer's error.
        #[source]
        source: mmcl_data::Error,
    },

    /// Serialising the configuration failed.
    #[error("cannot serialise the configuration: {0}")]
    Serialise(#[source] serde_json::Error),
}

impl From<mmcl_core::Error> for Error {
    /// The foundation layer is only used here to write files and draw random numbers, so its
    /// errors are file errors; any other is reported in words.
    fn from(e: mmcl_core::Error) -> Self {
        match e {
            mmcl_core::Error::Io { path, source } => Error::Io { path, source },
            other => Error::InvalidConfig(other.to_string()),
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
