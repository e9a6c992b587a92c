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

/// The inputs of a [`CudaKernel`]: each one's storage and layout.
type Inputs<'a, const N: usize> = [(&'a CudaStorage, &'a Layout); N];

/// A CUDA-only operation on `N` tensors, run by candle through [`Cuda`]: the kernels state their
/// launch and their gradients only.
trait CudaKernel<const N: usize>: Send + Sync {
    /// The operation's name (in candle's errors).
    const NAME: &'static str;

    /// The output's storage and shape.
    fn forward(&self, inputs: Inputs<'_, N>) -> Result<(CudaStorage, Shape)>;

    /// The gradients of the inputs, given the inputs, the output and the output's gradient; by
    /// default the operation is not differentiated (candle's error).
    fn backward(
        &self,
        inputs: [&Tensor; N],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; N]> {
        let _ = (inputs, output, grad);
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`CudaKernel`] as a candle custom operation (`tensor.apply_op1(Cuda(Softmax))`).
struct Cuda<K>(K);

/// Implements candle's `$trait` for `Cuda<K>` with `K: CudaKernel<$n>`: one `storage, layout`
/// pair of names per input for the forwards, one `input, gradient` pair per input for the
/// backward, which returns `$grads`. The CPU forward is an error: the operations are only
/// applied to CUDA tensors.
macro_rules! cuda_op {
    ($trait:ident, $n:literal, ($($s:ident, $l:ident);+), ($($x:ident, $g:ident);+) => $grads:ty) => {
        impl<K: CudaKernel<$n>> $trait for Cuda<K> {
            fn name(&self) -> &'static str {
                K::NAME
            }

            #[allow(unused_variables)] // the CPU forward refuses whatever it is given
            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> Result<(CpuStorage, Shape)> {
                Err(cuda_only(K::NAME))
            }

            fn cuda_fwd(&self, $($s: &CudaStorage, $l: &Layout),+) -> Result<(CudaStorage, Shape)> {
                self.0.forward([$(($s, $l)),+])
            }

            fn bwd(&self, $($x: &Tensor,)+ res: &Tensor, grad: &Tensor) -> Result<$grads> {
                let [$($g),+] = self.0.backward([$($x),+], res, grad)?;
                Ok(($($g),+))
            }
        }
    };
}

cuda_op!(CustomOp1, 1, (s, l), (arg, g) => Option<Tensor>);
cuda_op!(CustomOp2, 2, (s1, l1; s2, l2), (a, ga; b, gb) => (Option<Tensor>, Option<Tensor>));
cuda_op!(
    CustomOp3, 3, (s1, l1; s2, l2; s3, l3), (a, ga; b, gb; c, gc)
        => (Option<Tensor>, Option<Tensor>, Option<Tensor>)
);

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

/// An uninitialised device buffer of `len` f32 that the caller's kernel fills entirely.
fn output(device: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every element is written by the kernel launched next, before any read.
    unsafe { device.alloc::<f32>(len.max(1)) }
}

/// A mutable view of `len` elements of `buffer` from `start`.
fn part(buffer: &mut CudaSlice<f32>, start: usize, len: usize) -> Result<CudaViewMut<'_, f32>> {
    buffer
        .try_slice_mut(start..start + len)
        .ok_or_else(|| candle_core::Error::Msg("mmcl-nn CUDA kernels: buffer too small".into()))
}

/// `buffer` as candle storage of `shape`.
fn storage(device: &CudaDevice, buffer: CudaSlice<f32>, shape: Shape) -> (CudaStorage, Shape) {
    (CudaStorage::wrap_cuda_slice(buffer, device.clone()), shape)
}

/// `(rows, width)` of `x` seen as rows of its last dimension, as the kernels' `int`s, after
/// checking the other inputs: each of `per_column` is `[width]`, each of `per_element` has
/// `x`'s shape.
fn rows_and_width(
    op: &str,
    x: &Layout,
    per_column: &[&Layout],
    per_element: &[&Layout],
) -> Result<(i32, i32)> {
    let width = x.dims().last().copied().unwrap_or(1);
    if let Some(l) = per_column.iter().find(|l| l.dims() != [width]) {
        candle_core::bail!("{op}: an input of shape {:?}, expected [{width}]", l.dims());
    }
    if let Some(l) = per_element.iter().find(|l| l.dims() != x.dims()) {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", x.dims(), l.dims());
    }
    let rows = x.shape().elem_count() / width.max(1);
    match (i32::try_from(rows), i32::try_from(width)) {
        (Ok(r), Ok(w)) => Ok((r, w)),
        _ => candle_core::bail!("{op}: {rows} rows of {width} exceed the kernels' 32-bit indices"),
    }
}

/// A kernel argument: an input, a buffer or view the kernel writes, or a scalar.
enum Arg<'a> {
    In(CudaView<'a, f32>),
    Buffer(&'a CudaSlice<f32>),
    Out(CudaViewMut<'a, f32>),
    Int(i32),
    Long(i64),
    Float(f32),
}

/// Launches the kernel `name` of this module on `device`'s stream (candle's, so it is ordered
/// with the operations around it) with `args` in the kernel's order.
///
/// The callers' SAFETY argument: each kernel reads and writes only inside the buffers it is
/// given, whose sizes the caller derives from the same `rows`, `width` and `total` it passes.
fn launch(
    device: &CudaDevice,
    name: &str,
    config: LaunchConfig,
    args: &mut [Arg<'_>],
) -> Result<()> {
    let ptx = ptx().ok_or_else(|| cuda_only("mmcl-nn CUDA kernels (not compiled)"))?;
    let function: CudaFunction = device
        .get_or_load_custom_func(name, MODULE, ptx)?
        .into_cuda_function();
    let stream = device.cuda_stream();
    let mut builder = stream.launch_builder(&function);
    for arg in args.iter_mut() {
        match arg {
            Arg::In(view) => builder.arg(&*view),
            Arg::Buffer(buffer) => builder.arg(*buffer),
            Arg::Out(view) => builder.arg(view),
            Arg::Int(v) => builder.arg(&*v),
            Arg::Long(v) => builder.arg(&*v),
            Arg::Float(v) => builder.arg(&*v),
        };
    }
    // SAFETY: see above; the arguments match the kernel's parameters in kernels.cu.
    unsafe { builder.launch(config) }.w()?;
    Ok(())
}

/// Launches `kernel` with the contiguous views of `inputs`, then a new buffer of the first
/// input's elements (which the kernel fills entirely), then `scalars` — the argument order of
/// every kernel that writes one output the shape of its first input — and returns that buffer
/// as storage of that shape.
fn launch_new_output(
    op: &str,
    kernel: &str,
    config: LaunchConfig,
    inputs: &[(&CudaStorage, &Layout)],
    scalars: Vec<Arg<'_>>,
) -> Result<(CudaStorage, Shape)> {
    let Some(&(first, first_layout)) = inputs.first() else {
        candle_core::bail!("{op}: a kernel launched without inputs");
    };
    let device = first.device();
    let shape = first_layout.shape();
    let mut args = inputs
        .iter()
        .map(|&(s, l)| view(s, l, op).map(Arg::In))
        .collect::<Result<Vec<_>>>()?;
    let out = output(device, shape.elem_count())?;
    args.push(Arg::Buffer(&out));
    args.extend(scalars);
    launch(device, kernel, config, &mut args)?;
    Ok(storage(device, out, shape.clone()))
}

/// A bias + GELU kernel (forward, or backward): `inputs` are `x`, the bias over its last
/// dimension and, for the backward, the upstream gradient; one thread per element.
fn launch_bias_gelu(
    op: &str,
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
) -> Result<(CudaStorage, Shape)> {
    let layouts: Vec<&Layout> = inputs.iter().map(|&(_, l)| l).collect();
    let [x, bias, per_element @ ..] = layouts.as_slice() else {
        candle_core::bail!("{op}: expected x and a bias");
    };
    let (_, h) = rows_and_width(op, x, &[bias], per_element)?;
    let total = x.shape().elem_count();
    let scalars = vec![Arg::Long(total as i64), Arg::Int(h)];
    launch_new_output(op, kernel, flat_launch(total), inputs, scalars)
}

/// One warp per row, [`ROWS_PER_BLOCK`] rows per block.
fn row_launch(rows: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK).max(1), 1, 1),
        block_dim: (32, ROWS_PER_BLOCK, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride loop over `total` elements (or `width` columns, one thread each).
fn flat_launch(total: usize) -> LaunchConfig {
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
    out: CudaViewMut<'_, f32>,
) -> Result<()> {
    if out.len() < width as usize || partials.len() < chunks * width as usize {
        candle_core::bail!("mmcl_sum_chunks: buffers smaller than {chunks} × {width}");
    }
    let args = &mut [
        Arg::Buffer(partials),
        Arg::Out(out),
        Arg::Int(chunks as i32),
        Arg::Int(width),
    ];
    launch(device, "mmcl_sum_chunks", flat_launch(width as usize), args)
}

/// Softmax over the last dimension of `x` (f32 on a CUDA device), differentiable.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Cuda(Softmax))
}

/// LayerNorm over the last dimension (f32 on a CUDA device), gradients to all three inputs.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Cuda(LayerNorm { eps: eps as f32 }),
    )
}

/// `gelu_erf(x + bias)`, bias over the last dimension (f32 on a CUDA device), differentiable.
pub(crate) fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&bias.contiguous()?, Cuda(BiasGelu))
}

/// The column sums of `g` seen as `[rows, width]` (f32 on a CUDA device), deterministic: the
/// CUDA branch of [`crate::kernels::bias_gradient`].
pub(crate) fn column_sums(g: &Tensor, width: usize) -> Result<Tensor> {
    g.contiguous()?
        .reshape(((), width))?
        .apply_op1_no_bwd(&Cuda(ColumnSums))
}

struct Softmax;

impl CudaKernel<1> for Softmax {
    const NAME: &'static str = "mmcl-softmax-cuda";

    fn forward(&self, inputs: Inputs<'_, 1>) -> Result<(CudaStorage, Shape)> {
        let [(_, l)] = inputs;
        let (rows, n) = rows_and_width(Self::NAME, l, &[], &[])?;
        let scalars = vec![Arg::Int(rows), Arg::Int(n)];
        launch_new_output(
            Self::NAME,
            "mmcl_softmax_fwd",
            row_launch(rows),
            &inputs,
            scalars,
        )
    }

    fn backward(&self, _: [&Tensor; 1], y: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 1]> {
        Ok([Some(y.apply_op2_no_bwd(
            &grad.contiguous()?,
            &Cuda(SoftmaxGrad),
        )?)])
    }
}

struct SoftmaxGrad;

impl CudaKernel<2> for SoftmaxGrad {
    const NAME: &'static str = "mmcl-softmax-grad-cuda";

    fn forward(&self, inputs: Inputs<'_, 2>) -> Result<(CudaStorage, Shape)> {
        let [(_, yl), (_, gl)] = inputs;
        let (rows, n) = rows_and_width(Self::NAME, yl, &[], &[gl])?;
        let scalars = vec![Arg::Int(rows), Arg::Int(n)];
        launch_new_output(
            Self::NAME,
            "mmcl_softmax_bwd",
            row_launch(rows),
            &inputs,
            scalars,
        )
    }
}

struct LayerNorm {
    eps: f32,
}

impl CudaKernel<3> for LayerNorm {
    const NAME: &'static str = "mmcl-layer-norm-cuda";

    fn forward(&self, inputs: Inputs<'_, 3>) -> Result<(CudaStorage, Shape)> {
        let [(_, xl), (_, wl), (_, bl)] = inputs;
        let (rows, n) = rows_and_width(Self::NAME, xl, &[wl, bl], &[])?;
        let scalars = vec![Arg::Int(rows), Arg::Int(n), Arg::Float(self.eps)];
        let config = row_launch(rows);
        launch_new_output(Self::NAME, "mmcl_layer_norm_fwd", config, &inputs, scalars)
    }

    fn backward(
        &self,
        [x, weight, _bias]: [&Tensor; 3],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let n = weight.elem_count();
        // [dx (x's elements) | dw (n) | db (n)] in one buffer.
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &Cuda(LayerNormGrad { eps: self.eps }),
        )?;
        let count = x.elem_count();
        Ok([
            Some(packed.narrow(0, 0, count)?.reshape(x.shape())?),
            Some(packed.narrow(0, count, n)?.reshape(weight.shape())?),
            Some(packed.narrow(0, count + n, n)?.reshape(weight.shape())?),
        ])
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CudaKernel<3> for LayerNormGrad {
    const NAME: &'static str = "mmcl-layer-norm-grad-cuda";

    fn forward(
        &self,
        [(xs, xl), (ws, wl), (gs, gl)]: Inputs<'_, 3>,
    ) -> Result<(CudaStorage, Shape)> {
        let device = xs.device();
        let (rows, n) = rows_and_width(Self::NAME, xl, &[wl], &[gl])?;
        let count = xl.shape().elem_count();
        let width = n as usize;
        let mut packed = output(device, count + 2 * width)?;
        // Each row's mean and 1/std, for the weight and bias gradients.
        let stats = output(device, 2 * rows as usize)?;
        {
            let args = &mut [
                Arg::In(view(xs, xl, Self::NAME)?),
                Arg::In(view(ws, wl, Self::NAME)?),
                Arg::In(view(gs, gl, Self::NAME)?),
                Arg::Out(part(&mut packed, 0, count)?),
                Arg::Buffer(&stats),
                Arg::Int(rows),
                Arg::Int(n),
                Arg::Float(self.eps),
            ];
            launch(device, "mmcl_layer_norm_bwd", row_launch(rows), args)?;
        }
        let (config, chunks, chunk_rows) = column_launch(rows, n);
        let partials = output(device, chunks * 2 * width)?;
        let args = &mut [
            Arg::In(view(xs, xl, Self::NAME)?),
            Arg::In(view(gs, gl, Self::NAME)?),
            Arg::Buffer(&stats),
            Arg::Buffer(&partials),
            Arg::Int(rows),
            Arg::Int(n),
            Arg::Int(chunk_rows),
        ];
        launch(device, "mmcl_layer_norm_param_partials", config, args)?;
        let tail = part(&mut packed, count, 2 * width)?;
        sum_chunks(device, &partials, chunks, 2 * n, tail)?;
        Ok(storage(device, packed, Shape::from(count + 2 * width)))
    }
}

struct BiasGelu;

impl CudaKernel<2> for BiasGelu {
    const NAME: &'static str = "mmcl-bias-gelu-cuda";

    fn forward(&self, inputs: Inputs<'_, 2>) -> Result<(CudaStorage, Shape)> {
        launch_bias_gelu(Self::NAME, "mmcl_bias_gelu_fwd", &inputs)
    }

    fn backward(
        &self,
        [x, bias]: [&Tensor; 2],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let dx = x.apply_op3_no_bwd(bias, &grad.contiguous()?, &Cuda(BiasGeluGrad))?;
        let db = crate::kernels::bias_gradient(&dx, bias.elem_count())?;
        Ok([Some(dx), Some(db)])
    }
}

struct BiasGeluGrad;

impl CudaKernel<3> for BiasGeluGrad {
    const NAME: &'static str = "mmcl-bias-gelu-grad-cuda";

    fn forward(&self, inputs: Inputs<'_, 3>) -> Result<(CudaStorage, Shape)> {
        launch_bias_gelu(Self::NAME, "mmcl_bias_gelu_bwd", &inputs)
    }
}

struct ColumnSums;

impl CudaKernel<1> for ColumnSums {
    const NAME: &'static str = "mmcl-column-sums-cuda";

    fn forward(&self, [(s, l)]: Inputs<'_, 1>) -> Result<(CudaStorage, Shape)> {
        let device = s.device();
        let (rows, n) = rows_and_width(Self::NAME, l, &[], &[])?;
        let (config, chunks, chunk_rows) = column_launch(rows, n);
        let partials = output(device, chunks * n as usize)?;
        let args = &mut [
            Arg::In(view(s, l, Self::NAME)?),
            Arg::Buffer(&partials),
            Arg::Int(rows),
            Arg::Int(n),
            Arg::Int(chunk_rows),
        ];
        launch(device, "mmcl_column_partials", config, args)?;
        let mut sums = output(device, n as usize)?;
        sum_chunks(
            device,
            &partials,
            chunks,
            n,
            part(&mut sums, 0, n as usize)?,
        )?;
        Ok(storage(device, sums, Shape::from(n as usize)))
    }
}
