//! The fused block's CPU operation: a forward pass that keeps what the backward pass needs,
//! and a backward pass that computes every gradient with the shared kernels.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Result, Shape, Tensor};

use super::BranchScales;
use super::rows::{residual, scaled_rows};
use crate::kernels::carrier::ParamGrads;
use crate::kernels::gemm::{linear_forward, linear_grads, linear_param_grads};
use crate::kernels::op::{CpuKernel, Gradients, Input};
use crate::kernels::ops::gelu::{gelu_grad_after_linear, linear_gelu};
use crate::kernels::ops::layer_norm::{layer_norm_backward_rows, layer_norm_rows};
use crate::kernels::ops::sdpa::{Geometry, attention_backward, attention_forward};
use crate::kernels::{simd, with_contiguous_f32, with_contiguous_f32s};
use crate::precision::matmul_precision;

/// Offsets of the block's vectors (norms and biases) in the one vector that carries them.
#[derive(Clone, Copy)]
struct Packing {
    d: usize,
    h: usize,
}

impl Packing {
    /// `(start, len)` of `norm1` weight and bias, the `qkv` and `proj` biases, `norm2` weight
    /// and bias, the `fc1` and `fc2` biases, in that order.
    fn ranges(self) -> [(usize, usize); 8] {
        let (d, h) = (self.d, self.h);
        let lens = [d, d, 3 * d, d, d, d, h, d];
        let mut out = [(0, 0); 8];
        let mut start = 0;
        for (o, len) in out.iter_mut().zip(lens) {
            *o = (start, len);
            start += len;
        }
        out
    }

    fn total(self) -> usize {
        let r = self.ranges();
        r[7].0 + r[7].1
    }

    fn split(self, packed: &[f32]) -> [&[f32]; 8] {
        self.ranges().map(|(s, l)| &packed[s..s + l])
    }
}

/// The parameters' positions in [`BlockWeights`] and in the order they are carried: the four
/// weight matrices, then the packed vectors.
const QKV_W: usize = 0;
const PROJ_W: usize = 1;
const FC1_W: usize = 2;
const FC2_W: usize = 3;
const VECTORS: usize = 4;

/// The parameters the block reads: `qkv`, `proj`, `fc1` and `fc2` weights (`[out, in]`), and
/// the vectors packed as [`Packing`] says.
pub(super) type BlockWeights = [Tensor; 5];

/// What the forward pass keeps for the backward pass (`M = B·N` rows): only a training pass
/// keeps it (see [`FusedBlock::train`]); a backward pass after another computes it again.
pub(super) struct Saved {
    /// `norm1(x)`, `[M, D]`.
    a1: Vec<f32>,
    /// `[M, 3D]`.
    qkv: Vec<f32>,
    /// The attention probabilities, `[B·heads, N, N]` (see `attention_forward`).
    probs: Option<Vec<f32>>,
    /// Attended values before `proj`, `[M, D]`.
    attn: Vec<f32>,
    /// The stream after the attention branch, `[M, D]`.
    x1: Vec<f32>,
    /// `norm2(x1)`, `[M, D]`.
    a2: Vec<f32>,
    /// `fc1(a2)` before the activation, `[M, H]`.
    pre: Vec<f32>,
    /// `gelu(pre)`, `[M, H]`.
    act: Vec<f32>,
    /// Whether the GELU ran with fused multiply-adds (its gradient does the same).
    fused: bool,
}

/// The CPU operation: inputs `x` `[B, N, D]` and the last carrier of its parameters (`[1]`,
/// `kernels::carrier`); it reads the parameters from `weights` and leaves their gradients in
/// `grads`.
pub(super) struct FusedBlock {
    pub(super) weights: BlockWeights,
    pub(super) grads: ParamGrads,
    /// Whether the carriers pass gradients on (some parameter is tracked): if not, the
    /// parameters' gradients are not kept.
    pub(super) carried: bool,
    pub(super) heads: usize,
    pub(super) scale: f32,
    pub(super) eps: f32,
    pub(super) hidden: usize,
    pub(super) scales: Option<BranchScales>,
    /// Whether a backward pass is expected (a training pass whose inputs carry a gradient):
    /// only then does the forward pass keep its intermediate values ([`Saved`]); an inference
    /// pass frees them at once (about 470 MB per block of the ECG encoder at batch 64) and
    /// does not write `fc1`'s output before the GELU where its product's tiles take the GELU.
    pub(super) train: bool,
    pub(super) saved: Arc<OnceLock<Saved>>,
}

impl FusedBlock {
    fn geometry(&self, n: usize, d: usize) -> Geometry {
        Geometry {
            n,
            d,
            heads: self.heads,
            hd: d / self.heads,
        }
    }
}

impl CpuKernel<2> for FusedBlock {
    const NAME: &'static str = "mmcl-transformer-block";

    fn forward(&self, [input, _]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let dims = input.shape().dims3()?;
        let (out, saved) = with_contiguous_f32s(&self.weights, |weights| {
            self.forward_with(input.data, dims, weights, self.train)
        })?;
        if let Some(saved) = saved {
            // A second forward of the same op value cannot happen (candle applies it once).
            let _ = self.saved.set(saved);
        }
        Ok((out, input.shape().clone()))
    }

    fn backward(&self, [x, _]: [&Tensor; 2], _: &Tensor, grad_res: &Tensor) -> Gradients<2> {
        let dx = with_contiguous_f32s(&self.weights, |weights| {
            self.backward_with(x, grad_res, weights)
        })?;
        let dev = x.device();
        Ok([
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::zeros(1, DType::F32, dev)?),
        ])
    }
}

impl FusedBlock {
    /// The parameters' values by name, from the weights' data.
    fn params<'a>(&self, d: usize, weights: &[&'a [f32]; 5]) -> Result<Params<'a>> {
        let pk = Packing { d, h: self.hidden };
        let vectors = weights[VECTORS];
        if vectors.len() != pk.total() {
            candle_core::bail!(
                "{}: {} packed vector values, expected {}",
                Self::NAME,
                vectors.len(),
                pk.total()
            );
        }
        let [n1w, n1b, qkv_b, proj_b, n2w, n2b, fc1_b, fc2_b] = pk.split(vectors);
        Ok(Params {
            n1w,
            n1b,
            qkv_w: weights[QKV_W],
            qkv_b,
            proj_w: weights[PROJ_W],
            proj_b,
            n2w,
            n2b,
            fc1_w: weights[FC1_W],
            fc1_b,
            fc2_w: weights[FC2_W],
            fc2_b,
        })
    }

    /// The block's output, and what the backward pass needs when `keep`.
    fn forward_with(
        &self,
        x: &[f32],
        (b, n, d): (usize, usize, usize),
        weights: [&[f32]; 5],
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Saved>)> {
        let (m, h) = (b * n, self.hidden);
        let Params {
            n1w,
            n1b,
            qkv_w,
            qkv_b,
            proj_w,
            proj_b,
            n2w,
            n2b,
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
        } = self.params(d, &weights)?;
        let scales = self.scales.as_ref();

        let fused = simd::fused_arithmetic(matmul_precision());
        let a1 = layer_norm_rows(x, n1w, n1b, self.eps); // [M, D]
        let qkv = linear_forward(&a1, qkv_w, Some(qkv_b), (m, d, 3 * d))?; // [M, 3D]
        let (attn, probs) = attention_forward(&qkv, b, self.geometry(n, d), self.scale, keep);
        let proj = linear_forward(&attn, proj_w, Some(proj_b), (m, d, d))?; // [M, D]
        let x1 = residual(x, &proj, d, n, scales.map(|s| s.attn.as_slice()));
        drop(proj);
        let a2 = layer_norm_rows(&x1, n2w, n2b, self.eps); // [M, D]
        // [M, H] each; `fc1(a2)` before the activation only when kept.
        let (pre, act) = linear_gelu(&a2, fc1_w, fc1_b, (m, d, h), fused, keep)?;
        let mlp = linear_forward(&act, fc2_w, Some(fc2_b), (m, h, d))?; // [M, D]
        let out = residual(&x1, &mlp, d, n, scales.map(|s| s.mlp.as_slice()));
        let saved = pre.map(|pre| Saved {
            a1,
            qkv,
            probs,
            attn,
            x1,
            a2,
            pre,
            act,
            fused,
        });
        Ok((out, saved))
    }

    /// The input's gradient; the parameters' gradients go to their slots in `self.grads`.
    fn backward_with(
        &self,
        x: &Tensor,
        grad_res: &Tensor,
        weights: [&[f32]; 5],
    ) -> Result<Vec<f32>> {
        let (b, n, d) = x.dims3()?;
        // After a pass that kept nothing (`train` false), the forward pass again, keeping.
        let again;
        let sv = match self.saved.get() {
            Some(saved) => saved,
            None => {
                let (_, saved) =
                    with_contiguous_f32(x, |x| self.forward_with(x, (b, n, d), weights, true))?;
                let Some(saved) = saved else {
                    candle_core::bail!("{}: a forward pass kept nothing", Self::NAME);
                };
                again = saved;
                &again
            }
        };
        let (m, h) = (b * n, self.hidden);
        let pk = Packing { d, h };
        let scales = self.scales.as_ref();
        let Params {
            n1w,
            qkv_w,
            proj_w,
            n2w,
            fc1_w,
            fc2_w,
            ..
        } = self.params(d, &weights)?;
        let mut matrices: [Vec<f32>; 4] = Default::default();
        let mut vectors = vec![0f32; pk.total()];
        let r = pk.ranges();
        let mut put = |i: usize, v: &[f32]| {
            vectors[r[i].0..r[i].0 + r[i].1].copy_from_slice(v);
        };
        let dx = with_contiguous_f32(x, |x| {
            with_contiguous_f32(grad_res, |dy| {
                // MLP branch: out = x1 + s₂·(act·W₂ᵀ + b₂).
                let dm_scaled = scaled_rows(dy, d, n, scales.map(|s| s.mlp.as_slice()));
                let dm = dm_scaled.as_deref().unwrap_or(dy); // [M, D]
                let (g_w, g_b) = linear_param_grads(dm, &sv.act, (m, h, d))?;
                matrices[FC2_W] = g_w;
                put(7, &g_b);
                let d_pre = gelu_grad_after_linear(dm, fc2_w, &sv.pre, (m, h, d), sv.fused)?;
                let (g_w, g_b, d_a2) = linear_grads(&d_pre, &sv.a2, fc1_w, (m, d, h))?;
                matrices[FC1_W] = g_w;
                put(6, &g_b);
                drop(d_pre);
                let (dx1, g_n2w, g_n2b) =
                    layer_norm_backward_rows(&sv.x1, n2w, &d_a2, Some(dy), self.eps);
                put(4, &g_n2w);
                put(5, &g_n2b);
                drop(d_a2);

                // Attention branch: x1 = x + s₁·(attn·Wₚᵀ + bₚ).
                let dp_scaled = scaled_rows(&dx1, d, n, scales.map(|s| s.attn.as_slice()));
                let dp = dp_scaled.as_deref().unwrap_or(&dx1); // [M, D]
                let (g_w, g_b, d_attn) = linear_grads(dp, &sv.attn, proj_w, (m, d, d))?;
                matrices[PROJ_W] = g_w;
                put(3, &g_b);
                let (geometry, probs) = (self.geometry(n, d), sv.probs.as_deref());
                let d_qkv = attention_backward(&sv.qkv, &d_attn, b, geometry, (self.scale, probs))?;
                drop(d_attn);
                let (g_w, g_b, d_a1) = linear_grads(&d_qkv, &sv.a1, qkv_w, (m, d, 3 * d))?;
                matrices[QKV_W] = g_w;
                put(2, &g_b);
                drop(d_qkv);
                let (dx, g_n1w, g_n1b) =
                    layer_norm_backward_rows(x, n1w, &d_a1, Some(&dx1), self.eps);
                put(0, &g_n1w);
                put(1, &g_n1b);
                Ok(dx)
            })
        })?;
        if self.carried {
            let [qkv, proj, fc1, fc2] = matrices;
            self.grads.put(vec![qkv, proj, fc1, fc2, vectors])?;
        }
        Ok(dx)
    }
}

/// The block's parameters, by name.
struct Params<'a> {
    n1w: &'a [f32],
    n1b: &'a [f32],
    qkv_w: &'a [f32],
    qkv_b: &'a [f32],
    proj_w: &'a [f32],
    proj_b: &'a [f32],
    n2w: &'a [f32],
    n2b: &'a [f32],
    fc1_w: &'a [f32],
    fc1_b: &'a [f32],
    fc2_w: &'a [f32],
    fc2_b: &'a [f32],
}
