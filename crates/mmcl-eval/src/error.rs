//! The error type of this crate.

use std::path::PathBuf;

/// Errors of metrics, probes, plots and reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Arrays handed to a computation do not fit together or hold values it cannot use.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A file could not be read, written or parsed (JSON, its format), or a metric is undefined
    /// on the data it was given (AUROC with one class only): the foundation layer's errors,
    /// carried as they are.
    #[error(transparent)]
    Core(#[from] mmcl_core::Error),

    /// Drawing a figure failed.
    #[error("{}: cannot draw the figure: {source}", path.display())]
    Plot {
        /// The figure being written.
        path: PathBuf,
        /// The plotting library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Writing a file atomically, or reading or matching a checkpoint, failed.
    #[error(transparent)]
    Nn(#[from] mmcl_nn::Error),

    /// The ECG encoder could not be built, loaded or run.
    #[error(transparent)]
    Ecg(Box<mmcl_ecg::Error>),

    /// The CMR encoder or a projection head could not be built, loaded or run.
    #[error(transparent)]
    Cmr(Box<mmcl_cmr::Error>),

    /// The dataset cache or the loader failed.
    #[error(transparent)]
    Data(Box<mmcl_data::Error>),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A run or checkpoint folder named as a model could not be resolved to its file.
    #[error(transparent)]
    Train(Box<mmcl_train::Error>),

    /// A collective of the data-parallel group failed (fine-tuning in a group).
    #[error(transparent)]
    Distributed(#[from] mmcl_nn::distributed::DistributedError),
}

impl Error {
    /// A file whose content is not what its format requires ([`mmcl_core::Error::Format`]).
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Core(mmcl_core::Error::format(path, reason))
    }

    /// A metric that is undefined on the data given ([`mmcl_core::Error::Undefined`]).
    pub fn undefined(metric: &'static str, reason: impl Into<String>) -> Self {
        Error::Core(mmcl_core::Error::Undefined {
            metric,
            reason: reason.into(),
        })
    }
}

/// `From` impls for the errors of the model and data crates, which are large: boxed in their
/// variants, they keep `Result` small.
macro_rules! from_boxed {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(
            impl From<$source> for Error {
                fn from(e: $source) -> Self {
                    Error::$variant(Box::new(e))
                }
            }
        )*
    };
}

from_boxed!(
    mmcl_ecg::Error => Ecg,
    mmcl_cmr::Error => Cmr,
    mmcl_data::Error => Data,
    mmcl_train::Error => Train,
);

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
