//! The foundation every other crate of the workspace builds on, with no tensor library
//! underneath: what a data reader, a synthetic-data generator, a trainer and an evaluator all
//! need, in one place.
//!
//! - [`io`]: output files written through a temporary sibling and renamed into place (never
//!   half-written), with the permissions of a new file;
//! - [`files`]: bounded reads of input files (regular files only, sizes checked before any
//!   allocation);
//! - [`rng`]: the seedable SplitMix64 stream whose state checkpoints save;
//! - [`config`]: JSON/TOML configuration parsing whose errors name the key, and the size limits
//!   a model configuration must respect;
//! - [`npy`]: NumPy `.npy` arrays, read through a header check and written atomically;
//! - [`runlog`]: the JSON-lines run log trainers write and figures read;
//! - [`metrics`]: single-target classification and regression metrics (AUROC, AP, F1, R², …);
//! - [`simd`]: kernels compiled for AVX-512, AVX2 and the baseline, chosen at run time
//!   ([`multiversion!`]).
//!
//! ```
//! use mmcl_core::{io, metrics, npy};
//!
//! # fn main() -> mmcl_core::Result<()> {
//! let dir = tempfile::tempdir().expect("temporary directory");
//! let path = dir.path().join("scores.npy");
//! // Written atomically: readers never see a partial file.
//! npy::write_npy_f32(&path, &[4], &[0.1, 0.4, 0.35, 0.8])?;
//! let scores = npy::read_array(&path)?;
//! assert_eq!(scores.shape, vec![4]);
//! let scores: Vec<f64> = scores.data.iter().map(|&v| f64::from(v)).collect();
//! assert_eq!(metrics::auroc(&[0.0, 0.0, 1.0, 1.0], &scores)?, 0.75);
//! io::write_bytes_atomic(&dir.path().join("note.txt"), b"done")?;
//! # Ok(())
//! # }
//! ```

pub mod config;
mod error;
pub mod files;
pub mod io;
pub mod metrics;
pub mod npy;
pub mod rng;
pub mod runlog;
pub mod simd;

pub use error::{Error, Result};
