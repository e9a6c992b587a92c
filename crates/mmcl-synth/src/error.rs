//! The error type of this crate.

use std::path::PathBuf;

/// Errors of the cohort generator. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be created, written or renamed, or the configuration file
    /// could not be read or parsed: the foundation layer's file errors, carried as they are.
    #[error(transparent)]
    Core(#[from] mmcl_core::Error),

    /// A configuration value is out of its range, or the configuration file is malformed.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

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

impl Error {
    /// A file error ([`mmcl_core::Error::Io`]) for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Core(mmcl_core::Error::io(path, source))
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
