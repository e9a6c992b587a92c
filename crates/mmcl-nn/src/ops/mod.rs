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
//! | [`attention`] | multi-head scaled dot-product self-attention from a packed `qkv` |
//! | [`attention_probs`] | the attention probabilities of the same (for maps) |
//! | [`add`] | element-wise sum (residual connections) |
//! | [`mean_tokens`] | mean over the token dimension |
//! | [`transformer_block`] | a whole pre-norm transformer block as one autograd node (training) |

mod add;
mod attention;
mod block;
mod gelu;
mod layer_norm;
mod linear;
mod softmax;

pub use add::{add, mean_tokens};
pub use attention::{attention, attention_probs, split_heads as attention_split_heads};
pub use block::{BlockParams, BranchScales, transformer_block};
pub use gelu::{bias_gelu, gelu_erf};
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use softmax::softmax_last_dim;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, backend::BackendStorage};

/// Whether the fast CPU kernels apply to a tensor: f32 on the CPU.
pub(crate) fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The contiguous f32 data of a CPU storage seen through `layout`.
///
/// The wrappers make their inputs contiguous before applying a custom op, so this only fails on
/// misuse; it then returns an error instead of reading out of bounds.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data,
        other => {
            return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), op));
        }
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::RequiresContiguous { op }),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copying it first if it is strided).
pub(crate) fn with_contiguous_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => f(contiguous_f32(cpu, layout, "mmcl-cpu-kernel")?),
        _ => Err(candle_core::Error::Msg(
            "internal error: a CPU kernel received a tensor on another device".into(),
        )),
    }
}

/// A raw pointer that may be shared between the tasks of a parallel loop that write disjoint
/// parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: used only to write disjoint regions from parallel tasks; see each use.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

/// Threads to give one large matrix product (rayon's pool size).
pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// Elements per task when splitting element-wise work over threads (large enough to amortise
/// scheduling, small enough to balance).
pub(crate) const CHUNK: usize = 1 << 14;

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the gradient tests of the kernels.

    use candle_core::{D, Device, Result, Tensor, Var};

    /// A deterministic pseudo-random tensor in [-scale, scale].
    pub fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// Max |a-b| / max(1, max|b|).
    pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        let diff = (a - b)?
            .abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_scalar::<f32>()?;
        let scale = b.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?;
        Ok(diff / scale.max(1.0))
    }

    /// Central finite differences of `f(x)·w` summed, in f64 accumulation, at a sample of
    /// coordinates; returns (coordinate, numeric gradient) pairs.
    pub fn finite_difference(
        x: &Tensor,
        w: &Tensor,
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
        coords: &[usize],
        eps: f32,
    ) -> Result<Vec<(usize, f64)>> {
        let base = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let loss = |v: &[f32]| -> Result<f64> {
            let t = Tensor::from_slice(v, x.dims(), x.device())?;
            let y = f(&t)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(y.iter().zip(&wv).map(|(&a, &b)| a as f64 * b as f64).sum())
        };
        let mut out = Vec::new();
        for &i in coords {
            let mut plus = base.clone();
            plus[i] += eps;
            let mut minus = base.clone();
            minus[i] -= eps;
            let h = (plus[i] - minus[i]) as f64;
            out.push((i, (loss(&plus)? - loss(&minus)?) / h));
        }
        Ok(out)
    }

    /// The gradient of `sum(f(x)·w)` with respect to `x`, by candle's autograd.
    pub fn autograd(
        x: &Tensor,
        w: &Tensor,
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let var = Var::from_tensor(x)?;
        let loss = (f(var.as_tensor())? * w)?.sum_all()?;
        let grads = loss.backward()?;
        grads
            .get(var.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
    }
}
