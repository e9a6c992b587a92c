//! Differentiable building blocks, optimisers and checkpoint I/O for the ECG–CMR models of the
//! workspace, on [candle](https://github.com/huggingface/candle).
//!
//! candle lacks a few things the reference models need, or has them without a backward pass
//! (see the workspace's `docs/architecture.md`); this crate provides them, plus the
//! parameter store and checkpoint I/O every model crate shares:
//!
//! - [`ops`]: exact GELU, softmax, LayerNorm, linear and multi-head attention with fast,
//!   multi-threaded CPU kernels (forward and backward) and a device-generic fallback;
//! - [`layers`]: timm/PyTorch layers with the reference's parameter names (`Linear`,
//!   `LayerNorm`, `Mlp`, `Attention`, pre-norm `Block`, `MultiheadAttention`, `Dropout`,
//!   `DropPath`);
//! - [`init`], [`pos_embed`], [`rng`]: reference initialisations, sin-cos position embeddings
//!   and their interpolation, a seedable training RNG whose state can be saved;
//! - [`ParamStore`], [`StateDict`]: seeded parameters, safetensors and PyTorch `.pth`/`.ckpt`
//!   reading (the latter through the `mmcl-pth` crate's pickle reader), key renaming with
//!   [`checkpoint::KeyRemap`] tables, key matching with a report;
//! - [`census`]: with `MMCL_PRODUCT_CENSUS=1`, the CPU kernels' matrix products of a real run
//!   counted and timed by shape (GFLOP/s per thread), to see where a workload's time goes.
//!
//! ```
//! use candle_core::{DType, Device, ModuleT, Tensor};
//! use mmcl_nn::layers::{Block, BlockConfig};
//! use mmcl_nn::{ParamStore, checkpoint::LoadOptions, init::WeightInit, rng::SharedRng};
//!
//! # fn main() -> mmcl_nn::Result<()> {
//! let store = ParamStore::new(42);
//! let vb = store.var_builder(DType::F32, &Device::Cpu);
//! let cfg = BlockConfig {
//!     dim: 64, num_heads: 4, mlp_ratio: 4.0, qkv_bias: true, drop: 0.0, attn_drop: 0.0,
//!     drop_path: 0.1, norm_eps: 1e-6, weight_init: WeightInit::Timm,
//! };
//! let block = Block::new(&cfg, SharedRng::new(7), vb.pp("blocks.0"))?;
//! // Weights are named exactly as the PyTorch state_dict names them.
//! assert!(store.get("blocks.0.attn.qkv.weight").is_some());
//! let x = Tensor::randn(0f32, 1.0, (2, 10, 64), &Device::Cpu)?;
//! let y = block.forward_t(&x, false)?; // evaluation: no drop-path
//! assert_eq!(y.dims(), &[2, 10, 64]);
//! // Gradients reach every parameter, through the fast CPU kernels too.
//! let loss = block.forward_t(&x, true)?.sqr()?.mean_all()?;
//! assert!(store.vars_without_gradient(&loss, &[])?.is_empty());
//! let state = store.state_dict()?;
//! let report = store.load_state_dict(&state, &LoadOptions::strict())?;
//! assert_eq!(report.loaded.len(), 12);
//! # Ok(())
//! # }
//! ```

pub mod census;
pub mod checkpoint;
pub mod device;
pub mod distributed;
mod error;
mod gradient_check;
mod kernels;
pub mod layers;
pub mod memory;
pub mod optim;
pub mod params;
pub mod precision;
pub mod schedule;
pub mod threads;

// The foundation modules the layers, optimisers and checkpoints are built on, under the paths
// this crate has always offered them.
pub use mmcl_core::{config, io, rng};
// The kernel layer (`src/kernels/`) and the layers beside the transformer ones, at their
// established paths.
pub use kernels::{conv, ops, pool};
pub use layers::{batch_norm, init, pos_embed};

pub use checkpoint::{LoadOptions, LoadReport, StateDict};
pub use error::{Error, Result};
pub use params::ParamStore;
