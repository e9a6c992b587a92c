//! Multi-head scaled dot-product self-attention from a packed `qkv` projection.
//!
//! The layout is timm's: `qkv` is `[B, N, 3·D]` with the channels ordered (q|k|v, head,
//! head_dim), and the heads of the output are concatenated back into `[B, N, D]`. On the CPU one
//! task per (batch element, head) reads q, k and v where they lie in `qkv` (no permute copies),
//! keeps the `N×N` scores in cache, and writes its head's columns of the output directly. When
//! a gradient can follow, the forward pass keeps every head's probabilities for the backward
//! pass.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use gemm::Parallelism;

use super::softmax::{softmax_last_dim, softmax_rows};
use crate::kernels::bf16::Start;
use crate::kernels::gemm::{RawProduct, gemm_raw_in};
use crate::kernels::{SharedMut, contiguous_f32, fast_path, simd, with_contiguous_f32};
use crate::precision::{self, Precision, matmul_precision};

/// `softmax(q·kᵀ·scale)·v` for every head, with the heads concatenated.
///
/// # Shapes
/// `qkv`: `[B, N, 3·D]` (`D` divisible by `num_heads`); output `[B, N, D]`.
pub fn attention(qkv: &Tensor, num_heads: usize, scale: f64) -> Result<Tensor> {
    let (_, _, d) = split_dims(qkv, num_heads)?;
    if fast_path(qkv) {
        Attention::apply(qkv, num_heads, scale, false)
    } else {
        let (q, k, v) = split_heads(qkv, num_heads)?;
        let probs = softmax_last_dim(&scores(&q, &k, scale)?)?;
        merge_heads(&precision::matmul(&probs, &v)?, d)
    }
}

/// The attention probabilities `softmax(q·kᵀ·scale)` of every head (for attention maps).
///
/// On the CPU fast path the result carries no gradient back to `qkv` (an attempt to
/// back-propagate through it is an error, not a silent zero); elsewhere it is differentiable.
///
/// # Shapes
/// `qkv`: `[B, N, 3·D]`; output `[B, heads, N, N]`.
pub fn attention_probs(qkv: &Tensor, num_heads: usize, scale: f64) -> Result<Tensor> {
    split_dims(qkv, num_heads)?;
    if fast_path(qkv) {
        Attention::apply(qkv, num_heads, scale, true)
    } else {
        let (q, k, _) = split_heads(qkv, num_heads)?;
        softmax_last_dim(&scores(&q, &k, scale)?)
    }
}

/// `(B, N, D)` of a packed `qkv`, checking the head split.
fn split_dims(qkv: &Tensor, num_heads: usize) -> Result<(usize, usize, usize)> {
    let (b, n, d3) = qkv.dims3()?;
    if d3 % 3 != 0 || num_heads == 0 || (d3 / 3) % num_heads != 0 {
        candle_core::bail!(
            "attention: qkv of shape {:?} cannot be split into q, k, v of {num_heads} heads",
            qkv.dims()
        );
    }
    Ok((b, n, d3 / 3))
}

/// Splits a packed `qkv` into q, k and v with the heads separated (contiguous copies).
///
/// # Shapes
/// `qkv`: `[B, N, 3·D]` → three `[B, heads, N, D/heads]`.
pub fn split_heads(qkv: &Tensor, num_heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n, d) = split_dims(qkv, num_heads)?;
    let hd = d / num_heads;
    let qkv = qkv
        .reshape((b, n, 3, num_heads, hd))?
        .permute((2, 0, 3, 1, 4))?; // [3, B, H, N, hd]
    let part = |i: usize| qkv.get(i)?.contiguous();
    Ok((part(0)?, part(1)?, part(2)?))
}

/// `q·kᵀ·scale`, `[B, H, N, N]`.
fn scores(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    precision::matmul(q, &k.t()?)? * scale
}

/// `[B, H, N, hd]` → `[B, N, H·hd]`.
fn merge_heads(x: &Tensor, d: usize) -> Result<Tensor> {
    let (b, _, n, _) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, d))
}

/// Geometry of one packed `qkv` tensor.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) n: usize,
    pub(crate) d: usize,
    pub(crate) heads: usize,
    pub(crate) hd: usize,
}

impl Geometry {
    fn of(layout: &Layout, heads: usize) -> Result<(usize, Self)> {
        let (b, n, d3) = layout.shape().dims3()?;
        let d = d3 / 3;
        Ok((
            b,
            Self {
                n,
                d,
                heads,
                hd: d / heads,
            },
        ))
    }

    /// Whether the heads split `D` exactly, so that their products' columns tile every row
    /// and write each value of an output or a gradient.
    fn heads_tile_rows(&self) -> bool {
        self.heads * self.hd == self.d
    }

    /// Offset of q (part 0), k (1) or v (2) of head `h` of batch element `b` in `qkv`.
    fn offset(&self, b: usize, part: usize, h: usize) -> usize {
        b * self.n * 3 * self.d + part * self.d + h * self.hd
    }
}

/// `dst = beta·lhs·rhs` for one attention task in `precision` (that of the thread that started
/// the operation): single-threaded (the tasks are the parallelism) and without accumulating;
/// `dims = (m, n, k)`, `dst` as its first element and row stride, each operand as its first
/// element and (row, column) strides.
///
/// # Safety
/// As [`gemm_raw_in`].
#[inline(always)]
unsafe fn head_product(
    dims: (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_strides): (*const f32, (usize, usize)),
    (rhs, rhs_strides): (*const f32, (usize, usize)),
    (beta, precision): (f32, Precision),
) {
    let product = RawProduct {
        dims,
        dst,
        dst_rs,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    };
    // SAFETY: forwarded from the caller's contract.
    unsafe { gemm_raw_in(product, (beta, Start::Zero), Parallelism::None, precision) };
}

/// Writes the probabilities `softmax(q·kᵀ·scale)` of head `h` of element `b` into `p` (`N×N`
/// values, which need not be initialised: the scores' product writes every one before the
/// softmax reads them), the scores' product in `precision`; returns them.
fn head_probs<'p>(
    qkv: &[f32],
    g: Geometry,
    (b, h): (usize, usize),
    (scale, precision): (f32, Precision),
    p: &'p mut [MaybeUninit<f32>],
) -> &'p mut [f32] {
    let nn = g.n * g.n;
    let p = &mut p[..nn];
    let q = qkv[g.offset(b, 0, h)..].as_ptr();
    let k = qkv[g.offset(b, 1, h)..].as_ptr();
    // SAFETY: q and k of this head are N rows of hd elements with row stride 3D inside qkv (the
    // layout was checked by the caller); p holds N×N elements and is this task's own buffer.
    unsafe {
        head_product(
            (g.n, g.n, g.hd),
            (p.as_mut_ptr().cast::<f32>(), g.n),
            (q, (3 * g.d, 1)),
            (k, (1, 3 * g.d)),
            (scale, precision),
        );
    }
    // SAFETY: a product that starts from zero writes each of its N×N values (`gemm_raw_in`'s
    // contract).
    let p = unsafe { crate::kernels::assume_written(p) };
    softmax_rows(p, g.n, simd::fused_arithmetic(precision));
    p
}

/// A buffer of `len` values for a kernel that writes them all before reading any.
fn scratch(len: usize) -> Vec<MaybeUninit<f32>> {
    std::iter::repeat_with(MaybeUninit::uninit)
        .take(len)
        .collect()
}

struct Attention {
    num_heads: usize,
    scale: f32,
    /// Return the probabilities `[B, H, N, N]` instead of the attended values.
    probs: bool,
    /// Keep the probabilities for the backward pass (when `qkv` carries a gradient).
    keep_probs: bool,
    /// The probabilities the forward pass kept.
    kept: OnceLock<Vec<f32>>,
}

impl Attention {
    /// The CPU operation on `qkv`: the attended values, or the probabilities if `probs`.
    fn apply(qkv: &Tensor, num_heads: usize, scale: f64, probs: bool) -> Result<Tensor> {
        let op = Self {
            num_heads,
            scale: scale as f32,
            probs,
            keep_probs: !probs && qkv.track_op(),
            kept: OnceLock::new(),
        };
        qkv.contiguous()?.apply_op1(op)
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        if self.probs {
            "mmcl-attention-probs"
        } else {
            "mmcl-attention"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(s, l, self.name())?;
        let (batch, g) = Geometry::of(l, self.num_heads)?;
        if self.probs {
            let tasks = batch * g.heads;
            let nn = g.n * g.n;
            let precision = matmul_precision();
            // SAFETY: each task's `head_probs` writes every value of its chunk.
            let out = unsafe {
                crate::kernels::par_written(tasks * nn, nn, |t, p| {
                    let task = (t / g.heads, t % g.heads);
                    head_probs(qkv, g, task, (self.scale, precision), p);
                })
            };
            return Ok((
                CpuStorage::F32(out),
                Shape::from((batch, g.heads, g.n, g.n)),
            ));
        }
        let (out, kept) = attention_forward(qkv, batch, g, self.scale, self.keep_probs);
        if let Some(kept) = kept {
            // A second forward of the same op value cannot happen (candle applies it once).
            let _ = self.kept.set(kept);
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, g.n, g.d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        if self.probs {
            return Err(candle_core::Error::BackwardNotSupported { op: self.name() });
        }
        let (b, n, d3) = arg.dims3()?;
        let g = Geometry {
            n,
            d: d3 / 3,
            heads: self.num_heads,
            hd: d3 / 3 / self.num_heads,
        };
        let scale = self.scale;
        let grad = with_contiguous_f32(arg, |qkv| {
            with_contiguous_f32(grad_res, |dout| {
                let kept = self.kept.get().map(Vec::as_slice);
                attention_backward(qkv, dout, b, g, (scale, kept))
            })
        })?;
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// The attended values `[B, N, D]` of a packed `qkv` `[B, N, 3·D]` (one task per element and
/// head), the products in the calling thread's [`matmul_precision`].
///
/// With `keep_probs` the probabilities of every head are returned too (`[B·heads, N, N]`, the
/// memory PyTorch's autograd keeps for the same layer), so that [`attention_backward`] need
/// not compute them again; otherwise each task's probabilities stay in a per-thread buffer.
pub(crate) fn attention_forward(
    qkv: &[f32],
    batch: usize,
    g: Geometry,
    scale: f32,
    keep_probs: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let precision = matmul_precision();
    let tasks = batch * g.heads;
    let nn = g.n * g.n;
    let len = batch * g.n * g.d;
    // The heads' products write every value of the output (their columns tile each row) when
    // the heads split D exactly; the buffer is zero-filled only otherwise.
    let mut out = if g.heads_tile_rows() {
        Vec::with_capacity(len)
    } else {
        vec![0f32; len]
    };
    let dst = SharedMut(out.as_mut_ptr());
    let attend = |t: usize, p: &mut [MaybeUninit<f32>]| {
        let (b, h) = (t / g.heads, t % g.heads);
        let p = head_probs(qkv, g, (b, h), (scale, precision), p);
        let v = qkv[g.offset(b, 2, h)..].as_ptr();
        // SAFETY: v is N rows of hd with stride 3D inside qkv; the destination is the hd
        // columns of head h in the N rows of element b of `out`, which no other task writes;
        // `out` outlives the loop.
        unsafe {
            head_product(
                (g.n, g.hd, g.n),
                (dst.get().add(b * g.n * g.d + h * g.hd), g.d),
                (p.as_ptr(), (g.n, 1)),
                (v, (3 * g.d, 1)),
                (1.0, precision),
            );
        }
    };
    let probs = if keep_probs {
        // SAFETY: each task's `head_probs` writes every value of its chunk.
        Some(unsafe { crate::kernels::par_written(tasks * nn, nn, attend) })
    } else {
        (0..tasks)
            .into_par_iter()
            .for_each_init(|| scratch(nn), |p, t| attend(t, p));
        None
    };
    // SAFETY: every value was written by the tasks above (see the allocation).
    unsafe { out.set_len(len) };
    (out, probs)
}

/// The gradient with respect to `qkv` given the gradient `dout` `[B, N, D]` of the output,
/// the products in the calling thread's [`matmul_precision`]. `probs` are the probabilities
/// (`[B·heads, N, N]`) that [`attention_forward`] kept, read back rather than computed again (a
/// product and a softmax per head); without them (a forward pass that expected no backward
/// pass) each head computes them again, with the same bits.
pub(crate) fn attention_backward(
    qkv: &[f32],
    dout: &[f32],
    batch: usize,
    g: Geometry,
    (scale, probs): (f32, Option<&[f32]>),
) -> Result<Vec<f32>> {
    let nn = g.n * g.n;
    if let Some(probs) = probs
        && probs.len() != batch * g.heads * nn
    {
        candle_core::bail!(
            "attention backward: {} kept probabilities, expected {}",
            probs.len(),
            batch * g.heads * nn
        );
    }
    let precision = matmul_precision();
    // The heads' three products write every value of the gradient when the heads split D
    // exactly (their columns tile each row of q, k and v); it is zero-filled only otherwise.
    let len = qkv.len();
    let mut grad = if g.heads_tile_rows() && len == batch * g.n * 3 * g.d {
        Vec::with_capacity(len)
    } else {
        crate::kernels::zeros(len)
    };
    let dst = SharedMut(grad.as_mut_ptr());
    let recompute = if probs.is_some() { 0 } else { nn };
    (0..batch * g.heads).into_par_iter().for_each_init(
        || (scratch(recompute), vec![0f32; nn]),
        |(buffer, dp), t| {
            let (b, h) = (t / g.heads, t % g.heads);
            let p: &[f32] = match probs {
                Some(all) => &all[t * nn..(t + 1) * nn],
                None => head_probs(qkv, g, (b, h), (scale, precision), buffer),
            };
            let q = qkv[g.offset(b, 0, h)..].as_ptr();
            let k = qkv[g.offset(b, 1, h)..].as_ptr();
            let v = qkv[g.offset(b, 2, h)..].as_ptr();
            let d_o = dout[b * g.n * g.d + h * g.hd..].as_ptr();
            let row3 = 3 * g.d;
            // SAFETY: all views are N×hd blocks with row stride 3D (qkv, grad) or D (dout) of
            // element b and head h, or N×N probabilities (this task's own, or its head's kept
            // ones); the three written blocks of `grad` (dq, dk, dv of head h in element b)
            // are written by this task only.
            unsafe {
                let dv = dst.get().add(g.offset(b, 2, h));
                // dV = Pᵀ·dO
                head_product(
                    (g.n, g.hd, g.n),
                    (dv, row3),
                    (p.as_ptr(), (1, g.n)),
                    (d_o, (g.d, 1)),
                    (1.0, precision),
                );
                // dP = dO·Vᵀ
                head_product(
                    (g.n, g.n, g.hd),
                    (dp.as_mut_ptr(), g.n),
                    (d_o, (g.d, 1)),
                    (v, (1, row3)),
                    (1.0, precision),
                );
            }
            // dS = P ⊙ (dP − Σ dP⊙P), per row.
            for (dp_row, p_row) in dp.chunks_exact_mut(g.n).zip(p.chunks_exact(g.n)) {
                let dot = simd::dot(dp_row, p_row);
                for (x, &pv) in dp_row.iter_mut().zip(p_row) {
                    *x = pv * (*x - dot);
                }
            }
            // SAFETY: as above.
            unsafe {
                let dq = dst.get().add(g.offset(b, 0, h));
                let dk = dst.get().add(g.offset(b, 1, h));
                // dQ = scale·dS·K, dK = scale·dSᵀ·Q
                head_product(
                    (g.n, g.hd, g.n),
                    (dq, row3),
                    (dp.as_ptr(), (g.n, 1)),
                    (k, (row3, 1)),
                    (scale, precision),
                );
                head_product(
                    (g.n, g.hd, g.n),
                    (dk, row3),
                    (dp.as_ptr(), (1, g.n)),
                    (q, (row3, 1)),
                    (scale, precision),
                );
            }
        },
    );
    // SAFETY: every value was written by the tasks above (see the allocation).
    unsafe { grad.set_len(len) };
    Ok(grad)
}

/// The composed (device-generic) attention, used to check the kernels.
#[cfg(test)]
pub(crate) fn attention_composed(qkv: &Tensor, num_heads: usize, scale: f64) -> Result<Tensor> {
    let (q, k, v) = split_heads(qkv, num_heads)?;
    let probs = super::softmax::softmax_composed(&scores(&q, &k, scale)?)?;
    merge_heads(&probs.matmul(&v)?, qkv.dim(candle_core::D::Minus1)? / 3)
}

#[cfg(test)]
mod tests {
    use super::super::softmax::softmax_composed;
    use super::*;
    use crate::kernels::test_support::*;
    use candle_core::DType;

    #[test]
    fn forward_and_probabilities_match_the_composition() -> Result<()> {
        let qkv = rand_tensor(&[2, 13, 3 * 24], 41, 2.0)?;
        let scale = (6f64).powf(-0.5);
        let fast = attention(&qkv, 4, scale)?;
        let f64 = qkv.to_dtype(DType::F64)?;
        let exact = attention_composed(&f64, 4, scale)?.to_dtype(DType::F32)?;
        assert_eq!(fast.dims(), &[2, 13, 24]);
        assert!(rel_err(&fast, &exact)? < 1e-6);
        let probs = attention_probs(&qkv, 4, scale)?;
        let (q, k, _) = split_heads(&f64, 4)?;
        let exact_p = softmax_composed(&scores(&q, &k, scale)?)?.to_dtype(DType::F32)?;
        assert!(rel_err(&probs, &exact_p)? < 1e-6);
        Ok(())
    }

    #[test]
    fn backward_matches_autograd_and_finite_differences() -> Result<()> {
        let qkv = rand_tensor(&[2, 9, 3 * 12], 42, 1.5)?;
        let up = rand_tensor(&[2, 9, 12], 43, 1.0)?;
        let scale = (4f64).powf(-0.5);
        let fast = |t: &Tensor| attention(t, 3, scale);
        let composed = |t: &Tensor| attention_composed(t, 3, scale);
        let coords = [0, 13, 30, 100, 400, 647];
        assert_backward_matches((&qkv, &up), &fast, &composed, &coords, (1e-2, 2e-3))
    }

    /// Under bf16 both products round their operands (q, k, then the probabilities and v) and
    /// sum in f32, as the composed path and PyTorch's autocast do.
    #[test]
    fn bf16_products_round_their_operands() -> Result<()> {
        let qkv = rand_tensor(&[2, 13, 3 * 24], 45, 2.0)?;
        let scale = (6f64).powf(-0.5);
        let bf16 = Precision::Bf16.enter();
        let (probs, out) = (attention_probs(&qkv, 4, scale)?, attention(&qkv, 4, scale)?);
        drop(bf16);
        let rounded = |t: &Tensor| -> Result<Tensor> {
            let values: Vec<f32> = t.flatten_all()?.to_vec1::<f32>()?;
            let values: Vec<f64> = values
                .into_iter()
                .map(|x| crate::kernels::bf16::round_to_bf16(x) as f64)
                .collect();
            Tensor::from_vec(values, t.dims(), t.device())
        };
        let (q, k, v) = split_heads(&rounded(&qkv)?, 4)?;
        let exact_p = softmax_composed(&scores(&q, &k, scale)?)?.to_dtype(DType::F32)?;
        assert!(rel_err(&probs, &exact_p)? < 1e-6);
        let f32_probs = attention_probs(&qkv, 4, scale)?;
        assert!(
            rel_err(&f32_probs, &exact_p)? > 1e-4,
            "f32 is not what bf16 gives"
        );
        let exact_out = merge_heads(&rounded(&probs)?.matmul(&v)?, 24)?.to_dtype(DType::F32)?;
        assert!(rel_err(&out, &exact_out)? < 1e-6);
        Ok(())
    }

    #[test]
    fn bad_geometry_is_an_error() -> Result<()> {
        let qkv = rand_tensor(&[1, 4, 10], 44, 1.0)?;
        assert!(attention(&qkv, 2, 1.0).is_err());
        let qkv = rand_tensor(&[1, 4, 12], 44, 1.0)?;
        assert!(attention(&qkv, 3, 1.0).is_err());
        Ok(())
    }
}
