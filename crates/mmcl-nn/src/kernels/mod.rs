//! The kernel layer: differentiable tensor operations with fast, multi-threaded CPU kernels,
//! below the layers ([`crate::layers`]) and optimisers that call them.
//!
//! Each operation takes a CPU/f32 fast path (a candle custom op with a multi-threaded forward
//! and backward kernel) where it applies; with the `cuda` feature, softmax, LayerNorm and
//! bias + GELU take CUDA kernels on CUDA f32 tensors (`cuda`); otherwise each composes ordinary
//! candle operations, so that every device and dtype works.
//!
//! - [`ops`]: the transformer operations (GELU, softmax, LayerNorm, linear, attention, a fused
//!   pre-norm block);
//! - [`conv`]: 2-D convolutions, differentiable (channels-first) and packed for inference
//!   (channels-last);
//! - [`pool`]: max and average pooling, channels-first and channels-last;
//! - `batch_norm`: the fused train-mode batch normalisation behind
//!   [`crate::layers::batch_norm`];
//! - `gemm`, `nhwc`, `simd`: the matrix product, the channels-last activations and the vector
//!   instruction dispatch the kernels share;
//! - `carrier`: how a fused node's parameters reach it, so that their gradients pass candle's
//!   bookkeeping once;
//! - `cuda` (feature `cuda`): the GPU kernels, compiled by NVRTC at first use.
//!
//! This module holds the helpers every kernel uses to read candle's CPU storage.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_lanes;
pub(crate) mod batch_norm;
pub(crate) mod bf16;
#[cfg(feature = "openblas")]
pub(crate) mod blas;
pub(crate) mod carrier;
pub mod conv;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod finished;
pub(crate) mod gemm;
pub(crate) mod nhwc;
pub(crate) mod op;
pub mod ops;
pub mod pool;
pub(crate) mod simd;
#[cfg(test)]
pub(crate) mod test_support;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, backend::BackendStorage};
use rayon::prelude::*;

/// Whether the fast CPU kernels apply to a tensor: f32 on the CPU.
pub(crate) fn fast_path(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The gradient of a bias added along the last dimension: the column sums of `g` seen as
/// `[rows, width]`. On the CPU in f32 a deterministic blocked sum over rows in parallel
/// (candle's `sum(0)` walks the matrix column by column with strided reads, which took 6 % of
/// a training step); elsewhere candle's.
pub(crate) fn bias_gradient(g: &Tensor, width: usize) -> Result<Tensor> {
    if fast_path(g) && width > 0 {
        let sums = with_contiguous_f32(g, |data| Ok(gemm::column_sums(data, width)))?;
        return Tensor::from_vec(sums, width, g.device());
    }
    #[cfg(feature = "cuda")]
    if cuda::applies(g) && width > 0 {
        return cuda::column_sums(g, width);
    }
    g.reshape(((), width))?.sum(0)
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
    with_contiguous_f32s(std::slice::from_ref(t), |[data]| f(data))
}

/// Runs `f` on the contiguous f32 data of `N` CPU tensors (copying those that are strided); an
/// error unless `tensors` holds `N`.
pub(crate) fn with_contiguous_f32s<const N: usize, R>(
    tensors: &[Tensor],
    f: impl FnOnce([&[f32]; N]) -> Result<R>,
) -> Result<R> {
    if tensors.len() != N {
        candle_core::bail!(
            "internal error: {} tensors for a kernel of {N}",
            tensors.len()
        );
    }
    let tensors = tensors
        .iter()
        .map(Tensor::contiguous)
        .collect::<Result<Vec<_>>>()?;
    let held: Vec<_> = tensors.iter().map(Tensor::storage_and_layout).collect();
    let mut data: [&[f32]; N] = [&[]; N];
    for (d, (storage, layout)) in data.iter_mut().zip(&held) {
        *d = match &**storage {
            candle_core::Storage::Cpu(cpu) => contiguous_f32(cpu, layout, "mmcl-cpu-kernel")?,
            _ => candle_core::bail!(
                "internal error: a CPU kernel received a tensor on another device"
            ),
        };
    }
    f(data)
}

/// Runs `f` on the f32 data of a contiguous CPU tensor, mutably, in place (through candle's
/// in-place operation, which holds the storage's write lock meanwhile). Every tensor sharing
/// the storage sees the change, as with [`candle_core::Var::set`].
pub(crate) fn with_f32_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    /// Carries the one-shot closure into candle's `&self` callback.
    struct InPlace<F>(std::cell::RefCell<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> Result<()>> candle_core::InplaceOp1 for InPlace<F> {
        fn name(&self) -> &'static str {
            "mmcl-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let data = match storage {
                CpuStorage::F32(data) => data,
                other => {
                    return Err(candle_core::Error::UnsupportedDTypeForOp(
                        other.dtype(),
                        "mmcl-in-place",
                    ));
                }
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                return Err(candle_core::Error::RequiresContiguous {
                    op: "mmcl-in-place",
                });
            };
            match self.0.borrow_mut().take() {
                Some(f) => f(&mut data[start..end]),
                None => candle_core::bail!("internal error: an in-place kernel ran twice"),
            }
        }
    }
    t.inplace_op1(&InPlace(std::cell::RefCell::new(Some(f))))
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

/// Elements per task when splitting element-wise work over threads (large enough to amortise
/// scheduling, small enough to balance).
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows of width `width` per parallel task, so that a task holds about [`CHUNK`] elements.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// Elements per parallel task for kernels that work on whole rows of `width` values: about
/// [`CHUNK`], rounded to whole rows.
pub(crate) fn row_step(width: usize) -> usize {
    rows_per_task(width) * width.max(1)
}

/// Runs a chunked CPU kernel: `kernel(out, inputs)` on parallel chunks of `step` values of the
/// inputs (contiguous f32 of equal length) and of an output of the first input's shape.
///
/// The element-wise and row-wise operations are all this loop around their kernels.
pub(crate) fn map_chunks<const N: usize>(
    inputs: [op::Input<'_>; N],
    op: &'static str,
    step: usize,
    kernel: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
) -> Result<(Vec<f32>, Shape)> {
    let out = chunked(inputs.map(|i| i.data), op, step, kernel)?;
    let shape = inputs
        .first()
        .map_or_else(|| Shape::from(()), |i| i.shape().clone());
    Ok((out, shape))
}

/// [`map_chunks`] over CPU tensors (copied first where strided), for the backward passes: a new
/// tensor of the first input's shape.
pub(crate) fn map_tensors<const N: usize>(
    inputs: [&Tensor; N],
    op: &'static str,
    step: usize,
    kernel: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
) -> Result<Tensor> {
    let tensors = inputs
        .iter()
        .map(|t| t.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut data: [&[f32]; N] = [&[]; N];
    for (d, (storage, layout)) in data.iter_mut().zip(&guards) {
        *d = match &**storage {
            candle_core::Storage::Cpu(cpu) => contiguous_f32(cpu, layout, op)?,
            _ => candle_core::bail!("internal error: {op} received a tensor on another device"),
        };
    }
    let out = chunked(data, op, step, kernel)?;
    match inputs.first() {
        Some(first) => Tensor::from_vec(out, first.shape(), first.device()),
        None => Tensor::from_vec(out, (), &candle_core::Device::Cpu),
    }
}

/// Values below which [`zeros`] lets the allocator zero-fill on the calling thread.
const PARALLEL_ZEROS: usize = 1 << 18;

/// `len` zeros, filled by rayon's threads when there are many: the allocator zero-fills a
/// recycled block (see [`crate::memory`]) on the calling thread while the other cores wait,
/// which for a 30 MB output took 1.1 ms of a 2.4 ms LayerNorm on two Zen 4 cores. For the
/// outputs of parallel kernels.
pub(crate) fn zeros(len: usize) -> Vec<f32> {
    if len < PARALLEL_ZEROS {
        return vec![0f32; len];
    }
    let mut out = Vec::with_capacity(len);
    // An indexed iterator: rayon writes each thread's part in place, no intermediate lists.
    out.par_extend(rayon::iter::repeat_n(0f32, len));
    out
}

/// A new buffer of `len` values written by `fill(i, chunk)` for its chunks of `step` values
/// (the last may be shorter), in parallel; `fill` must write every value of its chunk.
///
/// Each task zeroes its own chunk just before `fill` writes it (so `fill` gets initialised
/// memory), while the chunk's lines are in the core's cache: a separate zero-fill of the
/// whole buffer first ([`zeros`]) is one more pass over main memory, which was 8 % of a bf16
/// MMCL step on an Emerald Rapids Xeon.
pub(crate) fn par_filled(
    len: usize,
    step: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    // SAFETY: each chunk is initialised whole (zeros) before `fill` sees it.
    unsafe {
        par_written(len, step, |i, chunk| {
            chunk.fill(std::mem::MaybeUninit::new(0.0));
            fill(i, assume_written(chunk));
        })
    }
}

/// `dst[c, r] = src[r, c]` for the `[rows, cols]` matrix at `src` (row stride `src_rs`) into
/// `dst` (row stride `dst_rs`), in square blocks that stay in L1, each written a row of `dst`
/// at a time (contiguous stores; the strided loads hit L1).
///
/// # Safety
/// Both matrices' elements are valid (reads at `src`, writes at `dst`) and do not overlap.
pub(crate) unsafe fn transpose(
    src: *const f32,
    src_rs: usize,
    (rows, cols): (usize, usize),
    dst: *mut f32,
    dst_rs: usize,
) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                for r in r0..(r0 + TILE).min(rows) {
                    // SAFETY: inside both matrices (caller's contract).
                    unsafe { *dst.add(c * dst_rs + r) = *src.add(r * src_rs + c) };
                }
            }
        }
    }
}

/// A slice whose every value has been written, seen as the `f32`s it now holds.
///
/// # Safety
/// Every value of `values` is initialised.
pub(crate) unsafe fn assume_written(values: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the values are initialised (the
    // caller's contract).
    unsafe { &mut *(values as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// A new buffer of `len` values written by `fill(i, chunk)` for its chunks of `step` values
/// (the last may be shorter), in parallel, without the zero-fill of [`par_filled`]: for
/// kernels that store their outputs with `MaybeUninit::write` (GELU, LayerNorm, batch norm)
/// or through a raw pointer (a matrix product that starts from zero) before reading them.
///
/// # Safety
/// `fill` must write every value of its chunk (a panic in `fill` propagates and leaves
/// nothing behind).
pub(crate) unsafe fn par_written(
    len: usize,
    step: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(step.max(1))
        .enumerate()
        .for_each(|(i, chunk)| fill(i, chunk));
    // SAFETY: the chunks cover the first `len` values, each written by its task (the
    // caller's contract).
    unsafe { out.set_len(len) };
    out
}

/// An initialised slice seen as one that a kernel writing `MaybeUninit` values can fill.
///
/// # Safety
/// Only initialised values may be stored through the view (`MaybeUninit::write`, as every
/// kernel of this crate that takes such a slice does): a value made uninitialised would be read
/// as an `f32` once the view ends.
pub(crate) unsafe fn as_uninit(values: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller keeps every value
    // initialised (contract above).
    unsafe { &mut *(values as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// The loop of [`map_chunks`] and [`map_tensors`].
pub(crate) fn chunked<const N: usize>(
    data: [&[f32]; N],
    op: &'static str,
    step: usize,
    kernel: impl Fn(&mut [f32], [&[f32]; N]) + Sync,
) -> Result<Vec<f32>> {
    let len = data.first().map_or(0, |d| d.len());
    if data.iter().any(|d| d.len() != len) {
        candle_core::bail!("{op}: inputs of different sizes");
    }
    Ok(par_filled(len, step, |i, o| {
        let start = i * step;
        kernel(o, data.map(|d| &d[start..start + o.len()]));
    }))
}
