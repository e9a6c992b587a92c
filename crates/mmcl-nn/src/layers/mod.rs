//! Layers of the reference Vision Transformers, with PyTorch/timm parameter names.
//!
//! Each layer is built from a [`candle_nn::VarBuilder`] whose paths are exactly the PyTorch
//! `state_dict` keys (`qkv.weight`, `mlp.fc1.bias`, …). Layers with training-time behaviour
//! (dropout, drop-path) implement [`candle_core::ModuleT`]: `train = false` is the reference's
//! `model.eval()`. Their randomness comes from a [`SharedRng`](crate::rng::SharedRng), never from
//! candle's global generator.
//!
//! Beside the transformer layers: [`batch_norm`] (PyTorch's `BatchNorm1d`/`2d`, with its
//! running statistics in the store), [`init`] (the reference initialisations) and
//! [`pos_embed`] (sin-cos position embeddings and their interpolation). The layers compute with
//! the kernels of [`crate::ops`], [`crate::conv`] and [`crate::pool`].

mod attention;
pub mod batch_norm;
mod block;
mod dropout;
pub mod init;
mod linear;
mod mha;
mod mlp;
mod norm;
pub mod pos_embed;

pub use attention::Attention;
pub use block::{Block, BlockConfig};
pub use dropout::{DropPath, Dropout};
pub use linear::Linear;
pub use mha::MultiheadAttention;
pub use mlp::Mlp;
pub use norm::LayerNorm;

/// The stochastic-depth rates of `depth` blocks: linearly from 0 to `rate` (timm's rule).
pub fn drop_path_rates(rate: f64, depth: usize) -> Vec<f64> {
    match depth {
        0 => Vec::new(),
        1 => vec![0.0],
        n => (0..n).map(|i| rate * i as f64 / (n - 1) as f64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_depth_rule() {
        assert_eq!(drop_path_rates(0.1, 3), vec![0.0, 0.05, 0.1]);
        assert_eq!(drop_path_rates(0.2, 1), vec![0.0]);
        assert!(drop_path_rates(0.2, 0).is_empty());
    }
}
