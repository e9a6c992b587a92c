//! Downstream evaluation: metrics with bootstrap confidence intervals, linear probes,
//! fine-tuning, localisation maps, plots and reports.

mod error;
mod matrix;
pub mod metrics;

pub use error::{Error, Result};
pub use matrix::Matrix;
mod linalg;
pub mod probe;
