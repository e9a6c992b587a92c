//! CUDA kernels (crate feature `cuda`) for the operations that candle's kernels compose slowly
//! on a GPU: softmax over the last dimension, LayerNorm, bias + exact GELU, and column sums
//! (bias gradients), each forward and backward.
//!
//! Why: composed from candle's operations, a softmax over `[256, 6, 301, 301]` attention
//! scores took five kernels and 12 ms on an H200 (max, broadcast subtract, exp, sum,
//! broadcast divide, the broadcasts through candle's strided index path at ~300 GB/s), and a
//! LayerNorm nine; together they were half of an ECG-encoder forward pass (Nsight Compute,
//! docs/performance.md). Here each is one pass per row with one warp per row (rows are a few
//! hundred wide), reductions by warp shuffles, statistics in f32 as on the CPU.
//!
//! The source is compiled once per process by NVRTC (which candle's CUDA build links anyway)
//! and loaded once per device. Where NVRTC cannot compile it, a note goes to stderr once and
//! the operations fall back to their composed forms ([`applies`] is false).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor,
};

const MODULE: &str = "mmcl_nn_kernels";

/// Rows (warps) per block of the row kernels, and threads per block of the others.
const ROWS_PER_BLOCK: u32 = 8;
const THREADS: u32 = 256;
/// Rows per partial sum of the column sums (a deterministic two-stage reduction: partial sums
/// of fixed chunks of rows, then the chunks summed in order).
const CHUNK_ROWS: usize = 64;

/// The kernels' CUDA C source.
const SOURCE: &str = include_str!("kernels.cu");

/// The kernels' PTX, compiled on first use; `None` when NVRTC failed (said once on stderr).
fn ptx() -> Option<&'static str> {
    static PTX: OnceLock<Option<String>> = OnceLock::new();
    PTX.get_or_init(
        || match candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE) {
            Ok(ptx) => Some(ptx.to_src()),
            Err(e) => {
                eprintln!(
                    "note: NVRTC could not compile mmcl-nn's CUDA kernels ({e:?}); softmax, \
                     LayerNorm and GELU run as composed candle operations instead"
                );
                None
            }
        },
    )
    .as_deref()
}

/// Whether these kernels take `t`: f32 on a CUDA device, with the kernels compiled.
pub(crate) fn applies(t: &Tensor) -> bool {
    t.device().is_cuda() && t.dtype() == DType::F32 && ptx().is_some()
}

fn cuda_only(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op}: a CUDA kernel, called with tensors on the CPU"
    ))
}

/// The f32 elements of a contiguous `layout` of `storage`.
fn view<'a>(storage: &'a CudaStorage, layout: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    storage
        .as_cuda_slice::<f32>()?
        .try_slice(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout outside its storage")))
}

/// A kernel of this module on `device`.
fn function(device: &CudaDevice, name: &str) -> Result<CudaFunction> {
    let ptx = ptx().ok_or_else(|| cuda_only("mmcl-nn CUDA kernels (not compiled)"))?;
    Ok(device
        .get_or_load_custom_func(name, MODULE, ptx)?
        .into_cuda_function())
}

/// An uninitialised device buffer of `len` f32 that the caller's kernel fills entirely.
fn output(device: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every element is written by the kernel launched next, before any read.
    unsafe { device.alloc::<f32>(len.max(1)) }
}

/// `(rows, width)` of a tensor seen as rows of its last dimension, as the kernels' `int`s.
fn rows_and_width(layout: &Layout, op: &str) -> Result<(i32, i32)> {
    let width = layout.dims().last().copied().unwrap_or(1);
    let rows = layout.shape().elem_count() / width.max(1);
    let fits = |v: usize| i32::try_from(v).ok();
    match (fits(rows), fits(width), fits(rows.saturating_mul(2))) {
        (Some(r), Some(w), Some(_)) => Ok((r, w)),
        _ => candle_core::bail!("{op}: {rows} rows of {width} exceed the kernels' 32-bit indices"),
    }
}

/// One warp per row, [`ROWS_PER_BLOCK`] rows per block.
fn row_launch(rows: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK).max(1), 1, 1),
        block_dim: (32, ROWS_PER_BLOCK, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride loop over `total` elements.
fn elementwise_launch(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per column, one block row per chunk of rows: the launch, the number of chunks
/// and the rows per chunk ([`CHUNK_ROWS`], or more where a grid's 65 535 block rows would not
/// cover the rows).
fn column_launch(rows: i32, width: i32) -> (LaunchConfig, usize, i32) {
    let rows = rows.max(1) as usize;
    let chunk_rows = CHUNK_ROWS.max(rows.div_ceil(65_535));
    let chunks = rows.div_ceil(chunk_rows);
    let config = LaunchConfig {
        grid_dim: ((width as u32).div_ceil(THREADS).max(1), chunks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    (config, chunks, chunk_rows as i32)
}

/// Sums `partials` (`[chunks, width]`) over the chunks, in order, into `out` (`width` f32).
fn sum_chunks(
    device: &CudaDevice,
    partials: &CudaSlice<f32>,
    chunks: usize,
    width: i32,
    out: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    if out.len() < width as usize || partials.len() < chunks * width as usize {
        candle_core::bail!("mmcl_sum_chunks: buffers smaller than {chunks} × {width}");
    }
    let f = function(device, "mmcl_sum_chunks")?;
    let stream = device.cuda_stream();
    let mut b = stream.launch_builder(&f);
    let chunks = chunks as i32;
    b.arg(partials);
    b.arg(out);
    b.arg(&chunks);
    b.arg(&width);
    let config = LaunchConfig {
        grid_dim: ((width as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: checked above: partials holds chunks·width f32 and out width.
    unsafe { b.launch(config) }.w()?;
    Ok(())
}

/// A mutable view of `len` elements of `buffer` from `start`.
fn part<'a>(
    buffer: &'a mut CudaSlice<f32>,
    start: usize,
    len: usize,
) -> Result<CudaViewMut<'a, f32>> {
    buffer
        .try_slice_mut(start..start + len)
        .ok_or_else(|| candle_core::Error::Msg("mmcl-nn CUDA kernels: buffer too small".into()))
}

/// Softmax over the last dimension of `x` (f32 on a CUDA device), differentiable.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// LayerNorm over the last dimension (f32 on a CUDA device), gradients to all three inputs.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// `gelu_erf(x + bias)`, bias over the last dimension (f32 on a CUDA device), differentiable.
pub(crate) fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasGelu)
}

/// The column sums of `g` seen as `[rows, width]` (f32 on a CUDA device), deterministic.
pub(crate) fn column_sums(g: &Tensor, width: usize) -> Result<Tensor> {
    g.contiguous()?
        .reshape(((), width))?
        .apply_op1_no_bwd(&ColumnSums)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "mmcl-softmax-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let device = s.device();
        let x = view(s, l, self.name())?;
        let (rows, n) = rows_and_width(l, self.name())?;
        let y = output(device, l.shape().elem_count())?;
        let f = function(device, "mmcl_softmax_fwd")?;
        let stream = device.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x);
        b.arg(&y);
        b.arg(&rows);
        b.arg(&n);
        // SAFETY: x and y hold rows·n f32; each warp reads and writes its own row.
        unsafe { b.launch(row_launch(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, device.clone()),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "mmcl-softmax-grad-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        ys: &CudaStorage,
        yl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if yl.dims() != gl.dims() {
            candle_core::bail!(
                "{}: shapes {:?} and {:?}",
                self.name(),
                yl.dims(),
                gl.dims()
            );
        }
        let device = ys.device();
        let (y, g) = (view(ys, yl, self.name())?, view(gs, gl, self.name())?);
        let (rows, n) = rows_and_width(yl, self.name())?;
        let dx = output(device, yl.shape().elem_count())?;
        let f = function(device, "mmcl_softmax_bwd")?;
        let stream = device.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&y);
        b.arg(&g);
        b.arg(&dx);
        b.arg(&rows);
        b.arg(&n);
        // SAFETY: y, g and dx hold rows·n f32; each warp reads and writes its own row.
        unsafe { b.launch(row_launch(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(dx, device.clone()),
            yl.shape().clone(),
        ))
    }
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "mmcl-layer-norm-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let (rows, n) = rows_and_width(xl, self.name())?;
        if wl.dims() != [n as usize] || bl.dims() != [n as usize] {
            candle_core::bail!("{}: weight and bias must be [{n}]", self.name());
        }
        let (x, w, bias) = (
            view(xs, xl, self.name())?,
            view(ws, wl, self.name())?,
            view(bs, bl, self.name())?,
        );
        let y = output(device, xl.shape().elem_count())?;
        let f = function(device, "mmcl_layer_norm_fwd")?;
        let stream = device.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x);
        b.arg(&w);
        b.arg(&bias);
        b.arg(&y);
        b.arg(&rows);
        b.arg(&n);
        b.arg(&self.eps);
        // SAFETY: x and y hold rows·n f32, w and bias n; each warp writes its own row.
        unsafe { b.launch(row_launch(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, device.clone()),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = weight.elem_count();
        // [dx (x's elements) | dw (n) | db (n)] in one buffer.
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let count = x.elem_count();
        Ok((
            Some(packed.narrow(0, 0, count)?.reshape(x.shape())?),
            Some(packed.narrow(0, count, n)?.reshape(weight.shape())?),
            Some(packed.narrow(0, count + n, n)?.reshape(weight.shape())?),
        ))
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "mmcl-layer-norm-grad-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let (rows, n) = rows_and_width(xl, self.name())?;
        if wl.dims() != [n as usize] || gl.dims() != xl.dims() {
            candle_core::bail!("{}: shapes do not match", self.name());
        }
        let (x, w, g) = (
            view(xs, xl, self.name())?,
            view(ws, wl, self.name())?,
            view(gs, gl, self.name())?,
        );
        let count = xl.shape().elem_count();
        let mut packed = output(device, count + 2 * n as usize)?;
        let stats = output(device, 2 * rows as usize)?;
        {
            let f = function(device, "mmcl_layer_norm_bwd")?;
            let mut dx = part(&mut packed, 0, count)?;
            let stream = device.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&x);
            b.arg(&w);
            b.arg(&g);
            b.arg(&mut dx);
            b.arg(&stats);
            b.arg(&rows);
            b.arg(&n);
            b.arg(&self.eps);
            // SAFETY: x, g, dx hold rows·n f32, w n, stats 2·rows; each warp its own row.
            unsafe { b.launch(row_launch(rows)) }.w()?;
        }
        let (config, chunks, chunk_rows) = column_launch(rows, n);
        let partials = output(device, chunks * 2 * n as usize)?;
        {
            let f = function(device, "mmcl_layer_norm_param_partials")?;
            let stream = device.cuda_stream();
            let mut b = stream.launch_builder(&f);
            b.arg(&x);
            b.arg(&g);
            b.arg(&stats);
            b.arg(&partials);
            b.arg(&rows);
            b.arg(&n);
            b.arg(&chunk_rows);
            // SAFETY: partials holds chunks·2n f32; thread (j, chunk) writes its two columns.
            unsafe { b.launch(config) }.w()?;
        }
        let mut tail = part(&mut packed, count, 2 * n as usize)?;
        sum_chunks(device, &partials, chunks, 2 * n, &mut tail)?;
        let len = count + 2 * n as usize;
        Ok((
            CudaStorage::wrap_cuda_slice(packed, device.clone()),
            Shape::from(len),
        ))
    }
}

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "mmcl-bias-gelu-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let (_, h) = rows_and_width(xl, self.name())?;
        if bl.dims() != [h as usize] {
            candle_core::bail!("{}: bias must be [{h}]", self.name());
        }
        let (x, bias) = (view(xs, xl, self.name())?, view(bs, bl, self.name())?);
        let total = xl.shape().elem_count();
        let y = output(device, total)?;
        let f = function(device, "mmcl_bias_gelu_fwd")?;
        let count = total as i64;
        let stream = device.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x);
        b.arg(&bias);
        b.arg(&y);
        b.arg(&count);
        b.arg(&h);
        // SAFETY: x and y hold `total` f32, bias h; a grid-stride loop stays inside.
        unsafe { b.launch(elementwise_launch(total)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, device.clone()),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(bias, &grad.contiguous()?, &BiasGeluGrad)?;
        let db = column_sums(&dx, bias.elem_count())?;
        Ok((Some(dx), Some(db)))
    }
}

struct BiasGeluGrad;

impl CustomOp3 for BiasGeluGrad {
    fn name(&self) -> &'static str {
        "mmcl-bias-gelu-grad-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let (_, h) = rows_and_width(xl, self.name())?;
        if bl.dims() != [h as usize] || gl.dims() != xl.dims() {
            candle_core::bail!("{}: shapes do not match", self.name());
        }
        let (x, bias, g) = (
            view(xs, xl, self.name())?,
            view(bs, bl, self.name())?,
            view(gs, gl, self.name())?,
        );
        let total = xl.shape().elem_count();
        let dx = output(device, total)?;
        let f = function(device, "mmcl_bias_gelu_bwd")?;
        let count = total as i64;
        let stream = device.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&x);
        b.arg(&bias);
        b.arg(&g);
        b.arg(&dx);
        b.arg(&count);
        b.arg(&h);
        // SAFETY: x, g and dx hold `total` f32, bias h; a grid-stride loop stays inside.
        unsafe { b.launch(elementwise_launch(total)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(dx, device.clone()),
            xl.shape().clone(),
        ))
    }
}

struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "mmcl-column-sums-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(cuda_only(self.name()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let device = s.device();
        let g = view(s, l, self.name())?;
        let (rows, n) = rows_and_width(l, self.name())?;
        let (config, chunks, chunk_rows) = column_launch(rows, n);
        let partials = output(device, chunks * n as usize)?;
        let f = function(device, "mmcl_column_partials")?;
        let stream = device.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&g);
        b.arg(&partials);
        b.arg(&rows);
        b.arg(&n);
        b.arg(&chunk_rows);
        // SAFETY: partials holds chunks·n f32; thread (j, chunk) writes its own column.
        unsafe { b.launch(config) }.w()?;
        let mut sums = output(device, n as usize)?;
        sum_chunks(
            device,
            &partials,
            chunks,
            n,
            &mut part(&mut sums, 0, n as usize)?,
        )?;
        Ok((
            CudaStorage::wrap_cuda_slice(sums, device.clone()),
            Shape::from(n as usize),
        ))
    }
}
