//! Differentiable building blocks, optimisers and checkpoint I/O for the ECG–CMR models of the
//! workspace, on [candle](https://github.com/huggingface/candle).
//!
//! candle lacks a few things the reference models need, or has them without a backward pass
//! (see the workspace's `docs/architecture.md`); this crate provides them, plus the
//! parameter store and checkpoint I/O every model crate shares.
//!
//! ```
//! use candle_core::{DType, Device};
//! use mmcl_nn::{ParamStore, checkpoint::LoadOptions};
//!
//! # fn main() -> mmcl_nn::Result<()> {
//! let store = ParamStore::new(42);
//! let vb = store.var_builder(DType::F32, &Device::Cpu);
//! let linear = candle_nn::linear(4, 2, vb.pp("head"))?;
//! // Weights are named exactly as the PyTorch state_dict names them.
//! assert!(store.get("head.weight").is_some());
//! let state = store.state_dict()?;
//! let report = store.load_state_dict(&state, &LoadOptions::strict())?;
//! assert_eq!(report.loaded.len(), 2);
//! # let _ = linear;
//! # Ok(())
//! # }
//! ```

pub mod batch_norm;
pub mod checkpoint;
pub mod conv;
mod error;
pub mod io;
pub mod params;
pub mod pool;
mod pth;
pub mod rng;
pub mod testing;

pub use checkpoint::{LoadOptions, LoadReport, StateDict};
pub use error::{Error, Result};
pub use params::ParamStore;
