//! A whole pre-norm transformer block (timm's `Block`) as one differentiable operation.
//!
//! Composed from the per-layer ops, a block is a dozen nodes of candle's autograd graph, and
//! candle's backward pass allocates a zeroed gradient for every node input and adds into it
//! (`zeros_like` + `add`, on large activations), and reduces bias gradients over rows on one
//! thread. In a training step of the masked autoencoder that bookkeeping costs as much as the
//! matrix products. Here the block is a single node on the CPU: the forward pass keeps the
//! activations the backward pass needs, and the backward pass computes the input gradient and
//! every parameter gradient with the same kernels (LayerNorm, GELU, attention, GEMM), in place,
//! with multi-threaded bias reductions. Other devices and dtypes compose the per-layer ops.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{Geometry, attention_backward, attention_forward};
use super::gelu::{gelu_grad_simd, gelu_simd};
use super::layer_norm::{backward_simd as ln_backward, forward_simd as ln_forward};
use super::linear::gemm_xwt;
use super::{CHUNK, contiguous_f32, fast_path, gemm_parallelism, with_contiguous_f32};

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
/// On the CPU in f32 this is one autograd node (see the module documentation); the
/// result equals the composition of [`super::layer_norm`], [`super::linear`],
/// [`super::attention`] and [`super::bias_gelu`] up to float rounding, gradients included.
///
/// # Shapes
/// `x`: `[B, N, D]` → `[B, N, D]`.
pub fn transformer_block(
    x: &Tensor,
    p: &BlockParams,
    scales: Option<&BranchScales>,
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
    // One parameter vector, so that the block is a two-input node; its backward splits the
    // gradient back onto the parameters.
    let flat = tensors
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    let packed = Tensor::cat(&flat, 0)?; // [P]
    x.contiguous()?.apply_op2(
        &packed,
        FusedBlock {
            heads: p.num_heads,
            scale: p.scale as f32,
            eps: p.eps as f32,
            hidden,
            scales: scales.cloned(),
            saved: Arc::new(OnceLock::new()),
        },
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

/// Offsets of the parameters in the packed vector.
#[derive(Clone, Copy)]
struct Packing {
    d: usize,
    h: usize,
}

impl Packing {
    /// `(start, len)` of the 12 tensors, in packing order.
    fn ranges(self) -> [(usize, usize); 12] {
        let (d, h) = (self.d, self.h);
        let lens = [d, d, 3 * d * d, 3 * d, d * d, d, d, d, h * d, h, d * h, d];
        let mut out = [(0, 0); 12];
        let mut start = 0;
        for (o, len) in out.iter_mut().zip(lens) {
            *o = (start, len);
            start += len;
        }
        out
    }

    fn total(self) -> usize {
        let r = self.ranges();
        r[11].0 + r[11].1
    }

    fn split(self, packed: &[f32]) -> [&[f32]; 12] {
        self.ranges().map(|(s, l)| &packed[s..s + l])
    }
}

/// What the forward pass keeps for the backward pass (`M = B·N` rows).
struct Saved {
    /// `norm1(x)`, `[M, D]`.
    a1: Vec<f32>,
    /// `[M, 3D]`.
    qkv: Vec<f32>,
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
}

struct FusedBlock {
    heads: usize,
    scale: f32,
    eps: f32,
    hidden: usize,
    scales: Option<BranchScales>,
    saved: Arc<OnceLock<Saved>>,
}

/// Rows per parallel task so that a task holds about [`CHUNK`] elements.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// `m` copies of `row`, written in parallel.
fn repeat_rows(row: &[f32], m: usize) -> Vec<f32> {
    let w = row.len();
    let mut out = vec![0f32; m * w];
    if w > 0 {
        out.par_chunks_mut(rows_per_task(w) * w).for_each(|chunk| {
            for r in chunk.chunks_exact_mut(w) {
                r.copy_from_slice(row);
            }
        });
    }
    out
}

/// LayerNorm of every row of `x` (width `w.len()`), in parallel.
fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let step = rows_per_task(w.len()) * w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(step)
        .zip(x.par_chunks(step))
        .for_each(|(o, x)| ln_forward(x, w, b, o, eps));
    out
}

/// The LayerNorm backward of every row: returns `dx + residual` and the weight and bias
/// gradients (the input gradient of the block's residual stream is added in the same pass).
fn layer_norm_backward_rows(
    x: &[f32],
    w: &[f32],
    grad: &[f32],
    residual: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = w.len();
    let step = rows_per_task(d) * d;
    let mut dx = vec![0f32; x.len()];
    let zero = || (vec![0f32; d], vec![0f32; d]);
    let (dw, db) = dx
        .par_chunks_mut(step)
        .zip(x.par_chunks(step).zip(grad.par_chunks(step)))
        .zip(residual.par_chunks(step))
        .fold(zero, |(mut dw, mut db), ((dx, (x, g)), res)| {
            ln_backward(x, w, g, dx, &mut dw, &mut db, eps);
            for (o, &r) in dx.iter_mut().zip(res) {
                *o += r;
            }
            (dw, db)
        })
        .reduce(zero, add_pair);
    (dx, dw, db)
}

fn add_pair(
    (mut a, mut b): (Vec<f32>, Vec<f32>),
    (c, e): (Vec<f32>, Vec<f32>),
) -> (Vec<f32>, Vec<f32>) {
    a.iter_mut().zip(&c).for_each(|(x, y)| *x += y);
    b.iter_mut().zip(&e).for_each(|(x, y)| *x += y);
    (a, b)
}

/// Column sums of a row-major matrix of width `w` (bias gradients), in parallel.
fn column_sums(x: &[f32], w: usize) -> Vec<f32> {
    let step = rows_per_task(w) * w;
    x.par_chunks(step)
        .fold(
            || vec![0f32; w],
            |mut acc, chunk| {
                for row in chunk.chunks_exact(w) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
                acc
            },
        )
        .reduce(
            || vec![0f32; w],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// `y[r] = base[r] + s[r / rows_per_sample] · branch[r]` per row of width `w` (a residual add
/// with per-sample branch factors; `s = None` means 1).
fn residual(base: &[f32], branch: &[f32], w: usize, n: usize, s: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; base.len()];
    let step = rows_per_task(w) * w;
    out.par_chunks_mut(step)
        .zip(base.par_chunks(step).zip(branch.par_chunks(step)))
        .enumerate()
        .for_each(|(t, (o, (a, b)))| {
            let first_row = t * (step / w);
            for (i, ((o, a), b)) in o
                .chunks_exact_mut(w)
                .zip(a.chunks_exact(w))
                .zip(b.chunks_exact(w))
                .enumerate()
            {
                let f = s.map_or(1.0, |s| s[(first_row + i) / n]);
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = a + f * b;
                }
            }
        });
    out
}

/// `g` scaled per sample (`None` when every factor is 1: the caller uses `g` itself).
fn scaled_rows(g: &[f32], w: usize, n: usize, s: Option<&[f32]>) -> Option<Vec<f32>> {
    let s = s?;
    let mut out = g.to_vec();
    let step = rows_per_task(w) * w;
    out.par_chunks_mut(step).enumerate().for_each(|(t, o)| {
        let first_row = t * (step / w);
        for (i, row) in o.chunks_exact_mut(w).enumerate() {
            let f = s[(first_row + i) / n];
            row.iter_mut().for_each(|v| *v *= f);
        }
    });
    Some(out)
}

/// A row-major matrix view: data, rows, columns, and (row, column) strides.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Whether every addressed element lies in `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, multi-threaded; `dst` is row-major `[m, n]`.
fn matmul(dst: &mut [f32], lhs: View, rhs: View, accumulate: bool) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || dst.len() != m * n || !lhs.in_bounds() || !rhs.in_bounds() {
        candle_core::bail!(
            "transformer_block: inconsistent product [{m}, {k}]·[{}, {n}] into {} values",
            rhs.rows,
            dst.len()
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: the views were checked to address only elements of their slices, `dst` holds
    // exactly m·n elements and, being a unique borrow, aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(),
        );
    }
    Ok(())
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

impl CustomOp2 for FusedBlock {
    fn name(&self) -> &'static str {
        "mmcl-transformer-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let packed = contiguous_f32(s2, l2, self.name())?;
        let (b, n, d) = l1.shape().dims3()?;
        let (m, h) = (b * n, self.hidden);
        let pk = Packing { d, h };
        if packed.len() != pk.total() {
            candle_core::bail!(
                "{}: {} packed parameters, expected {}",
                self.name(),
                packed.len(),
                pk.total()
            );
        }
        let [
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
        ] = pk.split(packed);
        let scales = self.scales.as_ref();

        let a1 = layer_norm_rows(x, n1w, n1b, self.eps); // [M, D]
        let mut qkv = repeat_rows(qkv_b, m); // [M, 3D]
        gemm_xwt(&a1, qkv_w, &mut qkv, m, d, 3 * d, true);
        let attn = attention_forward(&qkv, b, self.geometry(n, d), self.scale); // [M, D]
        let mut proj = repeat_rows(proj_b, m); // [M, D]
        gemm_xwt(&attn, proj_w, &mut proj, m, d, d, true);
        let x1 = residual(x, &proj, d, n, scales.map(|s| s.attn.as_slice()));
        drop(proj);
        let a2 = layer_norm_rows(&x1, n2w, n2b, self.eps); // [M, D]
        let mut pre = repeat_rows(fc1_b, m); // [M, H]
        gemm_xwt(&a2, fc1_w, &mut pre, m, d, h, true);
        let mut act = vec![0f32; m * h];
        act.par_chunks_mut(CHUNK)
            .zip(pre.par_chunks(CHUNK))
            .for_each(|(o, x)| gelu_simd(x, o));
        let mut mlp = repeat_rows(fc2_b, m); // [M, D]
        gemm_xwt(&act, fc2_w, &mut mlp, m, h, d, true);
        let out = residual(&x1, &mlp, d, n, scales.map(|s| s.mlp.as_slice()));
        // A second forward of the same op value cannot happen (candle applies it once).
        let _ = self.saved.set(Saved {
            a1,
            qkv,
            attn,
            x1,
            a2,
            pre,
            act,
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(sv) = self.saved.get() else {
            candle_core::bail!("{}: backward before forward", self.name());
        };
        let (b, n, d) = x.dims3()?;
        let (m, h) = (b * n, self.hidden);
        let pk = Packing { d, h };
        let scales = self.scales.as_ref();
        let grads = with_contiguous_f32(x, |x| {
            with_contiguous_f32(packed, |packed| {
                with_contiguous_f32(grad_res, |dy| {
                    let [n1w, _, qkv_w, _, proj_w, _, n2w, _, fc1_w, _, fc2_w, _] =
                        pk.split(packed);
                    let mut grad_p = vec![0f32; pk.total()];
                    let r = pk.ranges();
                    let mut put = |i: usize, v: &[f32]| {
                        grad_p[r[i].0..r[i].0 + r[i].1].copy_from_slice(v);
                    };

                    // MLP branch: out = x1 + s₂·(act·W₂ᵀ + b₂).
                    let dm_scaled = scaled_rows(dy, d, n, scales.map(|s| s.mlp.as_slice()));
                    let dm = dm_scaled.as_deref().unwrap_or(dy); // [M, D]
                    put(11, &column_sums(dm, d));
                    let mut g_w = vec![0f32; d * h];
                    matmul(
                        &mut g_w,
                        View::new(dm, m, d).t(),
                        View::new(&sv.act, m, h),
                        false,
                    )?;
                    put(10, &g_w);
                    let mut d_act = vec![0f32; m * h];
                    matmul(
                        &mut d_act,
                        View::new(dm, m, d),
                        View::new(fc2_w, d, h),
                        false,
                    )?;
                    let mut d_pre = vec![0f32; m * h];
                    d_pre
                        .par_chunks_mut(CHUNK)
                        .zip(sv.pre.par_chunks(CHUNK).zip(d_act.par_chunks(CHUNK)))
                        .for_each(|(o, (x, g))| gelu_grad_simd(x, g, o));
                    drop(d_act);
                    put(9, &column_sums(&d_pre, h));
                    let mut g_w = vec![0f32; h * d];
                    matmul(
                        &mut g_w,
                        View::new(&d_pre, m, h).t(),
                        View::new(&sv.a2, m, d),
                        false,
                    )?;
                    put(8, &g_w);
                    let mut d_a2 = vec![0f32; m * d];
                    matmul(
                        &mut d_a2,
                        View::new(&d_pre, m, h),
                        View::new(fc1_w, h, d),
                        false,
                    )?;
                    drop(d_pre);
                    let (dx1, g_n2w, g_n2b) =
                        layer_norm_backward_rows(&sv.x1, n2w, &d_a2, dy, self.eps);
                    put(6, &g_n2w);
                    put(7, &g_n2b);
                    drop(d_a2);

                    // Attention branch: x1 = x + s₁·(attn·Wₚᵀ + bₚ).
                    let dp_scaled = scaled_rows(&dx1, d, n, scales.map(|s| s.attn.as_slice()));
                    let dp = dp_scaled.as_deref().unwrap_or(&dx1); // [M, D]
                    put(5, &column_sums(dp, d));
                    let mut g_w = vec![0f32; d * d];
                    matmul(
                        &mut g_w,
                        View::new(dp, m, d).t(),
                        View::new(&sv.attn, m, d),
                        false,
                    )?;
                    put(4, &g_w);
                    let mut d_attn = vec![0f32; m * d];
                    matmul(
                        &mut d_attn,
                        View::new(dp, m, d),
                        View::new(proj_w, d, d),
                        false,
                    )?;
                    let d_qkv =
                        attention_backward(&sv.qkv, &d_attn, b, self.geometry(n, d), self.scale);
                    drop(d_attn);
                    put(3, &column_sums(&d_qkv, 3 * d));
                    let mut g_w = vec![0f32; 3 * d * d];
                    matmul(
                        &mut g_w,
                        View::new(&d_qkv, m, 3 * d).t(),
                        View::new(&sv.a1, m, d),
                        false,
                    )?;
                    put(2, &g_w);
                    let mut d_a1 = vec![0f32; m * d];
                    matmul(
                        &mut d_a1,
                        View::new(&d_qkv, m, 3 * d),
                        View::new(qkv_w, 3 * d, d),
                        false,
                    )?;
                    drop(d_qkv);
                    let (dx, g_n1w, g_n1b) =
                        layer_norm_backward_rows(x, n1w, &d_a1, &dx1, self.eps);
                    put(0, &g_n1w);
                    put(1, &g_n1b);
                    Ok((dx, grad_p))
                })
            })
        })?;
        let (dx, grad_p) = grads;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(grad_p, packed.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use candle_core::{DType, Var};

    struct Weights {
        vars: Vec<Var>,
    }

    impl Weights {
        fn new(d: usize, h: usize, seed: u64, qkv_bias: bool) -> Result<Self> {
            let shapes: Vec<Vec<usize>> = vec![
                vec![d],
                vec![d],
                vec![3 * d, d],
                vec![3 * d],
                vec![d, d],
                vec![d],
                vec![d],
                vec![d],
                vec![h, d],
                vec![h],
                vec![d, h],
                vec![d],
            ];
            let mut vars = Vec::new();
            for (i, s) in shapes.iter().enumerate() {
                if i == 3 && !qkv_bias {
                    continue;
                }
                let scale = if s.len() == 2 { 0.3 } else { 0.5 };
                let mut t = rand_tensor(s, seed + i as u64, scale)?;
                if i == 0 || i == 6 {
                    t = (t + 1.0)?; // norm weights around 1
                }
                vars.push(Var::from_tensor(&t)?);
            }
            Ok(Self { vars })
        }

        fn params(&self, heads: usize, d: usize) -> BlockParams<'_> {
            let v = |i: usize| self.vars[i].as_tensor();
            let with_bias = self.vars.len() == 12;
            let o = usize::from(!with_bias);
            BlockParams {
                norm1: (v(0), v(1)),
                qkv: (v(2), with_bias.then(|| v(3))),
                proj: (v(4 - o), v(5 - o)),
                norm2: (v(6 - o), v(7 - o)),
                fc1: (v(8 - o), v(9 - o)),
                fc2: (v(10 - o), v(11 - o)),
                num_heads: heads,
                scale: ((d / heads) as f64).powf(-0.5),
                eps: 1e-6,
            }
        }
    }

    fn check(qkv_bias: bool, scales: Option<BranchScales>) -> Result<()> {
        let (b, n, d, h, heads) = (3, 7, 16, 40, 4);
        let w = Weights::new(d, h, 10, qkv_bias)?;
        let x = Var::from_tensor(&rand_tensor(&[b, n, d], 1, 2.0)?)?;
        let up = rand_tensor(&[b, n, d], 2, 1.0)?;
        let p = w.params(heads, d);
        let zeros = Tensor::zeros(3 * d, DType::F32, &candle_core::Device::Cpu)?;
        let run = |fused: bool| -> Result<(Tensor, Vec<Tensor>)> {
            let y = if fused {
                transformer_block(x.as_tensor(), &p, scales.as_ref())?
            } else {
                composed(
                    x.as_tensor(),
                    &p,
                    p.qkv.1.unwrap_or(&zeros),
                    scales.as_ref(),
                )?
            };
            let g = (&y * &up)?.sum_all()?.backward()?;
            let mut out = vec![g.get(x.as_tensor()).cloned().expect("dx")];
            for v in &w.vars {
                out.push(g.get(v.as_tensor()).cloned().expect("parameter gradient"));
            }
            Ok((y, out))
        };
        let (yf, gf) = run(true)?;
        let (yc, gc) = run(false)?;
        assert!(rel_err(&yf, &yc)? < 1e-5, "forward {}", rel_err(&yf, &yc)?);
        for (i, (a, c)) in gf.iter().zip(&gc).enumerate() {
            let e = rel_err(a, c)?;
            assert!(e < 1e-4, "gradient {i}: {e}");
        }
        Ok(())
    }

    #[test]
    fn fused_block_matches_the_composition_forward_and_backward() -> Result<()> {
        check(true, None)?;
        check(false, None)?;
        check(
            true,
            Some(BranchScales {
                attn: vec![0.0, 1.25, 1.25],
                mlp: vec![1.25, 0.0, 1.25],
            }),
        )
    }

    #[test]
    fn gradients_agree_with_finite_differences() -> Result<()> {
        let (b, n, d, h, heads) = (2, 5, 8, 16, 2);
        let w = Weights::new(d, h, 30, true)?;
        let p = w.params(heads, d);
        let x = rand_tensor(&[b, n, d], 3, 1.5)?;
        let up = rand_tensor(&[b, n, d], 4, 1.0)?;
        let f = |t: &Tensor| transformer_block(t, &p, None);
        let dx = autograd(&x, &up, &f)?.flatten_all()?.to_vec1::<f32>()?;
        for (i, numeric) in finite_difference(&x, &up, &f, &[0, 9, 33, 61, 79], 1e-2)? {
            assert!(
                (dx[i] as f64 - numeric).abs() < 5e-3,
                "{i}: {} vs {numeric}",
                dx[i]
            );
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() -> Result<()> {
        let (d, h) = (8, 16);
        let w = Weights::new(d, h, 50, true)?;
        let p = w.params(3, d); // 8 features in 3 heads
        let x = rand_tensor(&[1, 2, d], 5, 1.0)?;
        assert!(transformer_block(&x, &p, None).is_err());
        let p = w.params(2, d);
        let s = BranchScales {
            attn: vec![1.0; 2],
            mlp: vec![1.0; 2],
        };
        assert!(transformer_block(&x, &p, Some(&s)).is_err());
        assert!(transformer_block(&rand_tensor(&[1, 2, 6], 5, 1.0)?, &p, None).is_err());
        Ok(())
    }
}
