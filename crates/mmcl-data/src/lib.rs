//! UK-Biobank-style data layer: ECG and CMR files as they come, the reference preprocessing,
//! augmentations, phenotype and diagnosis tables, a dataset cache and a parallel batch loader.
//!
//! - [`ecg`]: 12-lead recordings from CardioSoft XML (UK Biobank field 20205), WFDB (formats
//!   16/212/80) and NPY/NPZ; the reference preprocessing (clipping, asymmetric-least-squares
//!   baseline as a banded solve, group-wise normalisation), resampling, and the reference
//!   augmentations.
//! - [`cmr`]: NIfTI-1 short-axis cines and segmentations → `[C, H, W]` images (ED/ES frames of
//!   the mid-ventricular slice, LV-centred crop), torchvision-equivalent image augmentation.
//! - [`tables`]: phenotypes (UK Biobank columns), ICD-10 disease labels, standardisation with
//!   masks, joining by `eid`, deterministic stratified splits.
//! - [`build`] → [`cache`] → [`loader`]: a UK-Biobank-style folder becomes a sharded
//!   safetensors cache once; every epoch reads tensors from it in deterministic, prefetched,
//!   parallel batches.
//!
//! ```
//! use mmcl_data::ecg::Ecg;
//! use mmcl_data::ecg::preprocess::{PreprocessConfig, preprocess};
//!
//! # fn main() -> mmcl_data::Result<()> {
//! let samples = 5000; // 10 s at 500 Hz
//! let data: Vec<f32> = (0..12 * samples)
//!     .map(|i| ((i % samples) as f32 * 0.05).sin() + 0.3)
//!     .collect();
//! let ecg = Ecg::new(data, samples, 500.0)?;
//! let x = preprocess(&ecg, &PreprocessConfig::default())?; // the reference pipeline
//! assert_eq!((x.samples(), x.sample_rate()), (5000, 500.0));
//! # Ok(())
//! # }
//! ```
//!
//! Training reads batches from a cache built by `mmcl build-dataset`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use mmcl_data::cache::Cache;
//! use mmcl_data::loader::{Loader, LoaderConfig};
//! use mmcl_data::tables::Split;
//!
//! # fn main() -> mmcl_data::Result<()> {
//! let cache = Arc::new(Cache::open("cache".as_ref())?);
//! let train = Arc::new(Loader::new(
//!     cache.clone(),
//!     cache.split_indices(Split::Train),
//!     LoaderConfig::mmcl_train(),
//!     candle_core::Device::Cpu,
//! )?);
//! for epoch in 0..300 {
//!     for batch in train.epoch(epoch, 0) {
//!         let batch = batch?;
//!         // batch.ecg: [256, 1, 12, 2500], batch.image: [256, 3, 210, 210]
//!         let _ = (batch.ecg, batch.image, batch.labels, batch.label_mask);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod build;
pub mod cache;
pub mod cmr;
mod dicom_scan;
pub mod ecg;
mod error;
pub mod loader;
pub mod phenotypes;
pub mod rng;
pub mod tables;

pub use error::{Error, Result};
