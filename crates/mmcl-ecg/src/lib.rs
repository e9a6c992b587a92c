//! The ECG Vision Transformer encoder of Turgut et al. (masked data modelling and multimodal
//! contrastive learning), compatible with the reference checkpoints.
//!
//! A 12-lead ECG `[1, 12, T]` is cut into patches of one lead by `pw` samples (1×100 in the
//! paper: one token per lead per 200 ms), embedded, given a class token and position
//! embeddings, and run through pre-norm transformer blocks. The embedding is the mean of the
//! patch tokens after `fc_norm` (the paper's), the class token after `norm`, an attention
//! pooling, or all patch tokens (for localisation maps).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};
//!
//! # fn main() -> mmcl_ecg::Result<()> {
//! // The paper's architecture on a short input, randomly initialised from a seed.
//! let mut cfg = EcgVitConfig::preset("vit_tiny_patchX", [1, 12, 500], [1, 100])?;
//! cfg.global_pool = true;
//! let (model, _store) = EcgVit::from_seed(&cfg, 42, &Device::Cpu)?;
//! let ecg = Tensor::randn(0f32, 1.0, (2, 1, 12, 500), &Device::Cpu)?;
//! let embedding = model.embed(&ecg, Pooling::Global)?;
//! assert_eq!(embedding.dims(), &[2, 384]);
//! // Tokens and the attention map of the last block, for localisation.
//! let out = model.forward_tokens(&ecg, false, Some(-1))?;
//! assert_eq!(out.tokens.dims(), &[2, 1 + 12 * 5, 384]);
//! assert_eq!(out.attention.map(|a| a.dims().to_vec()), Some(vec![2, 6, 61, 61]));
//! # Ok(())
//! # }
//! ```
//!
//! Checkpoints of every released layout load with [`EcgVit::from_checkpoint`] or
//! [`load_encoder`] (see [`checkpoint`]).

pub mod checkpoint;
mod config;
mod error;
pub mod mae;
mod model;

pub use checkpoint::{
    CheckpointLayout, EXPORT_CONFIG_KEY, LoadSummary, extract_encoder, load_encoder,
};
pub use config::{EcgVitConfig, PRESETS, Pooling, Preset};
pub use error::{Error, Result};
pub use model::{EcgVit, EcgVitOutput, PatchEmbed};
