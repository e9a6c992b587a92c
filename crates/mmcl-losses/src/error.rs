//! The error type of this crate.

/// Errors of the losses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The model around a loss (the masked autoencoder) failed.
    #[error(transparent)]
    Model(#[from] mmcl_ecg::Error),

    /// A hyper-parameter or input is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Tensors or labels that do not fit together (shapes, class indices).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
