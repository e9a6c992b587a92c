//! The CPU max-pool: a forward pass that keeps each window's first maximum, and a backward
//! pass that scatters the gradient onto it (PyTorch's rule), for every float dtype.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::Pool2dParams;

/// For every output element, the index within its input plane of its window's first maximum,
/// as the forward pass found it.
type Argmax = Arc<OnceLock<Vec<u32>>>;

/// The values of a contiguous storage that `layout` covers.
fn window<'a, T>(data: &'a [T], layout: &Layout) -> &'a [T] {
    let start = layout.start_offset();
    &data[start..start + layout.shape().elem_count()]
}

/// The CPU max-pool forward, with its scatter backward.
pub(super) struct MaxPool2d {
    params: Pool2dParams,
    /// Filled by the forward pass when the backward pass will need it (the input takes part in
    /// a gradient and each plane's indices fit in `u32`): the backward pass then scatters
    /// without searching every window again.
    argmax: Option<Argmax>,
}

impl MaxPool2d {
    /// The max-pool of `params` over inputs of `[H, W]` planes; `keep_argmax` when a backward
    /// pass will follow.
    pub(super) fn new(params: Pool2dParams, (h, w): (usize, usize), keep_argmax: bool) -> Self {
        let fits = u32::try_from(h.saturating_mul(w)).is_ok();
        Self {
            params,
            argmax: (keep_argmax && fits).then(Argmax::default),
        }
    }
}

/// For each output element of one `[H, W]` plane, the input index of its window's first maximum
/// (NaN wins, as in PyTorch), written through `visit(output_index, input_index)`.
fn for_each_argmax<T: WithDType>(
    plane: &[T],
    (h, w): (usize, usize),
    params: Pool2dParams,
    mut visit: impl FnMut(usize, usize),
) {
    let (k, s, p) = (params.kernel, params.stride, params.padding);
    let (ho, wo) = (params.output_size(h), params.output_size(w));
    for oy in 0..ho {
        let y0 = (oy * s).saturating_sub(p);
        let y1 = (oy * s + k - p).min(h);
        for ox in 0..wo {
            let x0 = (ox * s).saturating_sub(p);
            let x1 = (ox * s + k - p).min(w);
            let mut best = y0 * w + x0;
            let mut best_value = plane[best];
            // The first in-bounds element starts as the candidate; later ones replace it only
            // when strictly larger, or NaN (PyTorch's rule), so ties keep the first.
            for y in y0..y1 {
                for x in x0..x1 {
                    let v = plane[y * w + x];
                    #[allow(clippy::eq_op)] // `v != v` is the NaN test for any float type.
                    if v > best_value || v != v {
                        best_value = v;
                        best = y * w + x;
                    }
                }
            }
            visit(oy * wo + ox, best);
        }
    }
}

impl MaxPool2d {
    fn forward<T: WithDType>(&self, src: &[T], shape: &[usize]) -> Vec<T> {
        let (h, w) = (shape[2], shape[3]);
        let (ho, wo) = (self.params.output_size(h), self.params.output_size(w));
        let len = shape[0] * shape[1] * ho * wo;
        let mut out = vec![T::zero(); len];
        let Some(argmax) = &self.argmax else {
            out.par_chunks_mut(ho * wo)
                .zip(src.par_chunks(h * w))
                .for_each(|(dst, plane)| {
                    for_each_argmax(plane, (h, w), self.params, |o, i| dst[o] = plane[i]);
                });
            return out;
        };
        let mut indices = vec![0u32; len];
        out.par_chunks_mut(ho * wo)
            .zip(indices.par_chunks_mut(ho * wo))
            .zip(src.par_chunks(h * w))
            .for_each(|((dst, at), plane)| {
                for_each_argmax(plane, (h, w), self.params, |o, i| {
                    dst[o] = plane[i];
                    // `i < h·w`, which `MaxPool2d::new` checked to fit.
                    at[o] = i as u32;
                });
            });
        // A repeated forward of the same op (not done by candle) would keep the first indices.
        let _ = argmax.set(indices);
        out
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !layout.is_contiguous() {
            candle_core::bail!("max-pool2d: the input must be contiguous");
        }
        let (n, c, h, w) = layout.shape().dims4()?;
        let dims = [n, c, h, w];
        let out = match storage {
            CpuStorage::F32(d) => CpuStorage::F32(self.forward(window(d, layout), &dims)),
            CpuStorage::F64(d) => CpuStorage::F64(self.forward(window(d, layout), &dims)),
            CpuStorage::F16(d) => CpuStorage::F16(self.forward(window(d, layout), &dims)),
            CpuStorage::BF16(d) => CpuStorage::BF16(self.forward(window(d, layout), &dims)),
            other => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        };
        let shape = Shape::from((n, c, self.params.output_size(h), self.params.output_size(w)));
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let backward = MaxPool2dBackward {
            params: self.params,
            argmax: self.argmax.clone(),
        };
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &backward)?;
        Ok(Some(grad))
    }
}

/// Scatters each output gradient onto its window's first maximum.
struct MaxPool2dBackward {
    params: Pool2dParams,
    /// The forward pass's indices (shared, not copied), when it kept them; otherwise each
    /// window is searched again.
    argmax: Option<Argmax>,
}

impl MaxPool2dBackward {
    fn backward<T: WithDType>(&self, src: &[T], grad: &[T], shape: &[usize]) -> Vec<T> {
        let (h, w) = (shape[2], shape[3]);
        let (ho, wo) = (self.params.output_size(h), self.params.output_size(w));
        let mut out = vec![T::zero(); src.len()];
        let planes = out.par_chunks_mut(h * w).zip(grad.par_chunks(ho * wo));
        match self.argmax.as_ref().and_then(|a| a.get()) {
            // The same additions in the same order as the search below: the same bits.
            Some(argmax) if argmax.len() == grad.len() => planes
                .zip(argmax.par_chunks(ho * wo))
                .for_each(|((dst, g), at)| {
                    for (&g, &i) in g.iter().zip(at) {
                        dst[i as usize] += g;
                    }
                }),
            _ => planes
                .zip(src.par_chunks(h * w))
                .for_each(|((dst, g), plane)| {
                    for_each_argmax(plane, (h, w), self.params, |o, i| dst[i] += g[o]);
                }),
        }
        out
    }

    /// [`Self::backward`] on the data of the input (`x`, `l1`) and gradient (`g`, `l2`).
    fn run<T: WithDType>(&self, x: &[T], l1: &Layout, g: &[T], l2: &Layout) -> Vec<T> {
        self.backward(window(x, l1), window(g, l2), l1.dims())
    }
}

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("max-pool2d backward: inputs must be contiguous");
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(self.run(x, l1, g, l2)),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(self.run(x, l1, g, l2)),
            (CpuStorage::F16(x), CpuStorage::F16(g)) => CpuStorage::F16(self.run(x, l1, g, l2)),
            (CpuStorage::BF16(x), CpuStorage::BF16(g)) => CpuStorage::BF16(self.run(x, l1, g, l2)),
            (a, b) => candle_core::bail!(
                "max-pool2d backward: unsupported dtypes {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}
