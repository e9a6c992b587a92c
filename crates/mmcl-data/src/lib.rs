//! UK-Biobank-style data layer: ECG and CMR files as they come, the reference preprocessing,
//! augmentations, phenotype and diagnosis tables, a dataset cache and a parallel batch loader.

pub mod build;
pub mod cache;
pub mod cmr;
pub mod ecg;
mod error;
pub mod loader;
pub mod phenotypes;
pub mod rng;
pub mod tables;

pub use error::{Error, Result};
