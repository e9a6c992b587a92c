//! A whole pre-norm transformer block (timm's `Block`) as one differentiable operation.
//!
//! Composed from the per-layer ops, a block is a dozen nodes of candle's autograd graph, and
//! candle's backward pass allocates a zeroed gradient for every node input and adds into it
//! (`zeros_like` + `add`, on large activations), and reduces bias gradients over rows on one
//! thread. In a training step of the masked autoencoder that bookkeeping costs as much as the
//! matrix products. Here the block is a single node on the CPU: the forward pass keeps the
//! activations the backward pass needs, and the backward pass computes the input gradient and
//! every parameter gradient with the same kernels (LayerNorm, GELU, attention, GEMM), in place,
//! with multi-threaded bias reductions. Its parameters reach it through two carrier nodes that
//! take the weight matrices as they are, so that their gradients go to the variables through one
//! level of that bookkeeping and no copy. Other devices and dtypes compose the per-layer ops.
//!
//! The pieces: this module checks the parameters and chooses the path; `op` is the CPU
//! operation (forward, backward) and its carriers; `rows` holds its row-parallel helpers.

mod op;
mod rows;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use candle_core::{Result, Tensor};

use crate::kernels::carrier::carry;
use crate::kernels::fast_path;
use crate::kernels::op::Op;
use op::{BlockWeights, FusedBlock};

/// The parameters of one block, with timm's shapes (`weight` `[out, in]`).
#[derive(Debug, Clone, Copy)]
pub struct BlockParams<'a> {
    /// `norm1.weight`, `norm1.bias`: `[D]`.
    pub norm1: (&'a Tensor, &'a Tensor),
    /// `attn.qkv.weight` `[3D, D]`, `attn.qkv.bias` `[3D]` (optional).
    pub qkv: (&'a Tensor, Option<&'a Tensor>),
    /// `attn.proj.weight` `[D, D]`, `attn.proj.bias` `[D]`.
    pub proj: (&'a Tensor, &'a Tensor),
    /// `norm2.weight`, `norm2.bias`: `[D]`.
    pub norm2: (&'a Tensor, &'a Tensor),
    /// `mlp.fc1.weight` `[H, D]`, `mlp.fc1.bias` `[H]`.
    pub fc1: (&'a Tensor, &'a Tensor),
    /// `mlp.fc2.weight` `[D, H]`, `mlp.fc2.bias` `[D]`.
    pub fc2: (&'a Tensor, &'a Tensor),
    /// Attention heads (dividing `D`).
    pub num_heads: usize,
    /// The attention's scale (timm: `head_dim^-0.5`).
    pub scale: f64,
    /// LayerNorm epsilon.
    pub eps: f64,
}

/// Per-sample factors of the two residual branches (drop-path): `[B]` each, 0 for a dropped
/// branch and `1/(1−p)` for a kept one.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchScales {
    /// Of the attention branch.
    pub attn: Vec<f32>,
    /// Of the MLP branch.
    pub mlp: Vec<f32>,
}

/// `x + s₁·proj(attn(norm1(x)))`, then `+ s₂·fc2(gelu(fc1(norm2(·))))`: timm's pre-norm
/// block without dropout, with optional per-sample branch factors (drop-path).
///
/// On the CPU in f32 this is one autograd node, with two carrying its parameters (see the
/// module documentation); the result equals the composition of [`super::layer_norm`],
/// [`super::linear`], [`super::attention`] and [`super::bias_gelu`] up to float rounding,
/// gradients included.
///
/// `train` says whether a backward pass is expected: the CPU node then keeps the attention
/// probabilities for it (`[B·heads, N, N]`, as PyTorch's autograd does). Candle has no
/// no-gradient mode, so an inference pass over a model whose weights are variables would
/// otherwise keep them too; a backward pass after `train = false` computes them again.
///
/// # Shapes
/// `x`: `[B, N, D]` → `[B, N, D]`.
pub fn transformer_block(
    x: &Tensor,
    p: &BlockParams,
    scales: Option<&BranchScales>,
    train: bool,
) -> Result<Tensor> {
    let (b, _, d) = x.dims3()?;
    let hidden = p.fc1.0.dim(0)?;
    check_shapes(p, d, hidden)?;
    if let Some(s) = scales
        && (s.attn.len() != b || s.mlp.len() != b)
    {
        candle_core::bail!(
            "transformer_block: branch scales for {} and {} samples, the batch has {b}",
            s.attn.len(),
            s.mlp.len()
        );
    }
    let zeros;
    let qkv_bias = match p.qkv.1 {
        Some(bias) => bias,
        None => {
            zeros = Tensor::zeros(3 * d, x.dtype(), x.device())?;
            &zeros
        }
    };
    let tensors = [
        p.norm1.0, p.norm1.1, p.qkv.0, qkv_bias, p.proj.0, p.proj.1, p.norm2.0, p.norm2.1, p.fc1.0,
        p.fc1.1, p.fc2.0, p.fc2.1,
    ];
    if !(fast_path(x) && tensors.iter().all(|t| fast_path(t))) {
        return composed(x, p, qkv_bias, scales);
    }
    // The weight matrices are carried as they are, the vectors packed into one
    // (`kernels::carrier`); the block takes the last carrier as its input.
    let vectors = Tensor::cat(
        &[
            p.norm1.0, p.norm1.1, qkv_bias, p.proj.1, p.norm2.0, p.norm2.1, p.fc1.1, p.fc2.1,
        ],
        0,
    )?;
    let weights: BlockWeights = [
        p.qkv.0.contiguous()?,
        p.proj.0.contiguous()?,
        p.fc1.0.contiguous()?,
        p.fc2.0.contiguous()?,
        vectors,
    ];
    let Some((last, grads)) = carry(&weights)? else {
        candle_core::bail!("transformer_block: no parameters to carry");
    };
    let train = train && (x.track_op() || last.track_op());
    x.contiguous()?.apply_op2(
        &last,
        Op(FusedBlock {
            carried: last.track_op(),
            weights,
            grads,
            heads: p.num_heads,
            scale: p.scale as f32,
            eps: p.eps as f32,
            hidden,
            scales: scales.cloned(),
            train,
            saved: Arc::new(OnceLock::new()),
        }),
    )
}

fn check_shapes(p: &BlockParams, d: usize, hidden: usize) -> Result<()> {
    let expect: [(&str, &Tensor, &[usize]); 11] = [
        ("norm1.weight", p.norm1.0, &[d]),
        ("norm1.bias", p.norm1.1, &[d]),
        ("qkv.weight", p.qkv.0, &[3 * d, d]),
        ("proj.weight", p.proj.0, &[d, d]),
        ("proj.bias", p.proj.1, &[d]),
        ("norm2.weight", p.norm2.0, &[d]),
        ("norm2.bias", p.norm2.1, &[d]),
        ("fc1.weight", p.fc1.0, &[hidden, d]),
        ("fc1.bias", p.fc1.1, &[hidden]),
        ("fc2.weight", p.fc2.0, &[d, hidden]),
        ("fc2.bias", p.fc2.1, &[d]),
    ];
    for (name, t, shape) in expect {
        if t.dims() != shape {
            candle_core::bail!(
                "transformer_block: {name} has shape {:?}, expected {shape:?}",
                t.dims()
            );
        }
    }
    if let Some(bias) = p.qkv.1
        && bias.dims() != [3 * d]
    {
        candle_core::bail!(
            "transformer_block: qkv.bias has shape {:?}, expected [{}]",
            bias.dims(),
            3 * d
        );
    }
    if p.num_heads == 0 || !d.is_multiple_of(p.num_heads) {
        candle_core::bail!(
            "transformer_block: {d} features cannot be split into {} heads",
            p.num_heads
        );
    }
    Ok(())
}

/// The same block from the per-layer ops (any device and dtype; candle differentiates it).
fn composed(
    x: &Tensor,
    p: &BlockParams,
    qkv_bias: &Tensor,
    scales: Option<&BranchScales>,
) -> Result<Tensor> {
    let branch = |h: Tensor, s: Option<&Vec<f32>>| -> Result<Tensor> {
        match s {
            None => Ok(h),
            Some(s) => {
                let s = Tensor::from_slice(s, (s.len(), 1, 1), h.device())?.to_dtype(h.dtype())?;
                h.broadcast_mul(&s)
            }
        }
    };
    let h = super::layer_norm(x, p.norm1.0, p.norm1.1, p.eps)?;
    let qkv = super::linear(&h, p.qkv.0, Some(qkv_bias))?; // [B, N, 3D]
    let a = super::attention(&qkv, p.num_heads, p.scale)?; // [B, N, D]
    let a = super::linear(&a, p.proj.0, Some(p.proj.1))?;
    let x1 = super::add(x, &branch(a, scales.map(|s| &s.attn))?)?;
    let h = super::layer_norm(&x1, p.norm2.0, p.norm2.1, p.eps)?;
    let h = super::bias_gelu(&super::linear(&h, p.fc1.0, None)?, p.fc1.1)?; // [B, N, H]
    let h = super::linear(&h, p.fc2.0, Some(p.fc2.1))?; // [B, N, D]
    super::add(&x1, &branch(h, scales.map(|s| &s.mlp))?)
}
