//! Differentiable tensor operations with fast CPU kernels.
//!
//! candle's versions of these either approximate (GELU), have no backward pass (the fast
//! `softmax_last_dim` and `layer_norm`), or run on one thread. Each function here takes the
//! CPU/f32 fast path (a candle custom op with a multi-threaded forward and backward kernel) when
//! its inputs are f32 on the CPU, and otherwise composes ordinary candle operations, so that
//! every device and dtype works and candle's autograd provides the gradient.
//!
//! | function | what |
//! |---|---|
//! | [`gelu_erf`] | exact GELU `x·Φ(x)` |
//! | [`bias_gelu`] | `gelu_erf(x + bias)` in one pass (the MLP's hidden layer) |
//! | [`softmax_last_dim`] | softmax over the last dimension |
//! | [`layer_norm`] | LayerNorm over the last dimension with affine weight and bias |
//! | [`linear`] | `x·Wᵀ + b` with PyTorch's weight layout `[out, in]` |
//! | [`linear_gelu_inference`] | `gelu(x·Wᵀ + b)`, the activation taken in the product (inference) |
//! | [`attention`] | multi-head scaled dot-product self-attention from a packed `qkv` |
//! | [`attention_probs`] | the attention probabilities of the same (for maps) |
//! | [`add`] | element-wise sum (residual connections) |
//! | [`add_relu`] | `relu(a + b)` (the ResNet residual connection) |
//! | [`mean_tokens`] | mean over the token dimension |
//! | [`transformer_block`] | a whole pre-norm transformer block as one autograd node (training) |
//! | [`gather_rows`] | rows of a tensor and one extra row picked by an index (token selection) |

pub(crate) mod add;
mod fused_block;
mod gather;
pub(crate) mod gelu;
mod layer_norm;
mod linear;
mod sdpa;
mod softmax;

pub use add::{add, add_relu, mean_tokens};
pub use fused_block::{BlockParams, BranchScales, transformer_block};
pub use gather::gather_rows;
pub use gelu::{bias_gelu, gelu_erf};
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_gelu_inference};
pub use sdpa::{attention, attention_probs, split_heads as attention_split_heads};
pub use softmax::softmax_last_dim;
