//! The CPU max-pool: a forward pass that keeps each window's first maximum, and a backward
//! pass that scatters the gradient onto it (PyTorch's rule), for every float dtype.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::Pool2dParams;
use crate::kernels::simd::multiversion;

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
/// (NaN wins, as in PyTorch), written through `visit(output_index, input_index)` in output order.
///
/// Each output row is searched a window position at a time: one branch-free pass per position
/// over the row's interior columns (those whose window lies inside the plane horizontally),
/// which vectorises; the one or two border columns are searched element by element. A window
/// scanned element by element in data-dependent branches mispredicted about every other
/// comparison (43 ms for the ResNet50 stem's pool at batch 16 on a Zen 4).
fn for_each_argmax<T: PoolValue>(
    plane: &[T],
    (h, w): (usize, usize),
    params: Pool2dParams,
    mut visit: impl FnMut(usize, usize),
) {
    let (k, s, p) = (params.kernel, params.stride, params.padding);
    let (ho, wo) = (params.output_size(h), params.output_size(w));
    // Per interior column: the best value so far and its offset `dy·w + kx` from the window's
    // first element, which fits in `u32` for any plane whose windows span fewer than 2³²
    // values (larger ones are searched element by element).
    let offsets_fit = u32::try_from(k.saturating_mul(w)).is_ok();
    let inner = if offsets_fit {
        interior_columns(w, wo, params)
    } else {
        0..0
    };
    let mut best = vec![T::zero(); inner.len()];
    let mut position = vec![0u32; inner.len()];
    let mut found = vec![0usize; wo];
    for oy in 0..ho {
        let y0 = (oy * s).saturating_sub(p);
        let y1 = (oy * s + k - p).min(h);
        for ox in (0..inner.start).chain(inner.end..wo) {
            found[ox] = scalar_argmax(plane, w, (y0..y1, ox), params);
        }
        if !inner.is_empty() {
            // Interior column `ox` reads row `y`'s element `ox·s − p + kx` at position
            // (y − y0, kx). From −∞ at the first position, each position replaces the best
            // when strictly larger or NaN, in the window's row-major order: the first
            // element wins unless a later one beats it, even when it is −∞ itself.
            best.fill(T::from_f64(f64::NEG_INFINITY));
            position.fill(0);
            let first = inner.start * s - p;
            for y in y0..y1 {
                let row = &plane[y * w + first..(y + 1) * w];
                for kx in 0..k {
                    // `(y − y0)·w + kx < k·w`, which fits (see `offsets_fit`).
                    let at = ((y - y0) * w + kx) as u32;
                    T::take_larger(&row[kx..], s, at, (&mut best, &mut position));
                }
            }
            for (ox, &at) in inner.clone().zip(&position) {
                found[ox] = y0 * w + ox * s - p + at as usize;
            }
        }
        for (ox, &i) in found.iter().enumerate() {
            visit(oy * wo + ox, i);
        }
    }
}

/// The output columns whose windows lie inside `0..w` horizontally.
fn interior_columns(w: usize, wo: usize, params: Pool2dParams) -> std::ops::Range<usize> {
    let (k, s, p) = (params.kernel, params.stride, params.padding);
    // ox·s ≥ p and ox·s − p + k ≤ w
    let start = p.div_ceil(s).min(wo);
    let end = if w + p >= k {
        ((w + p - k) / s + 1).min(wo)
    } else {
        0
    };
    start..end.max(start)
}

/// The first maximum (or last NaN) of the window of rows `rows` at output column `ox`, element
/// by element in row-major order.
fn scalar_argmax<T: WithDType>(
    plane: &[T],
    w: usize,
    (rows, ox): (std::ops::Range<usize>, usize),
    params: Pool2dParams,
) -> usize {
    let x0 = (ox * params.stride).saturating_sub(params.padding);
    let x1 = (ox * params.stride + params.kernel - params.padding).min(w);
    let mut best = rows.start * w + x0;
    let mut best_value = plane[best];
    // The first in-bounds element starts as the candidate; later ones replace it only when
    // strictly larger, or NaN (PyTorch's rule), so ties keep the first.
    for y in rows {
        for x in x0..x1 {
            let v = plane[y * w + x];
            // Selects rather than a branch: which element wins is data, and mispredicts.
            #[allow(clippy::eq_op)] // `v != v` is the NaN test for any float type.
            let take = v > best_value || v != v;
            best_value = if take { v } else { best_value };
            best = if take { y * w + x } else { best };
        }
    }
    best
}

/// The element types of the max-pool: the branch-free passes of [`for_each_argmax`], with an
/// AVX-512/AVX2 copy for `f32`.
pub(super) trait PoolValue: WithDType {
    /// Where `from[j·stride]` is strictly larger than `best[j]` or NaN, it replaces it and
    /// `position[j]` becomes `at`.
    fn take_larger(from: &[Self], stride: usize, at: u32, best: (&mut [Self], &mut [u32])) {
        take_larger_kernel(from, stride, at, best);
    }
}

impl PoolValue for f64 {}
impl PoolValue for half::f16 {}
impl PoolValue for half::bf16 {}
impl PoolValue for f32 {
    fn take_larger(from: &[f32], stride: usize, at: u32, best: (&mut [f32], &mut [u32])) {
        take_larger_f32(from, stride, at, best);
    }
}

multiversion!(
    fn take_larger_f32(from: &[f32], stride: usize, at: u32, best: (&mut [f32], &mut [u32]))
        => take_larger_kernel
);

/// [`PoolValue::take_larger`]; the common strides are constants, so that their loads vectorise.
#[inline(always)]
fn take_larger_kernel<T: WithDType>(
    from: &[T],
    stride: usize,
    at: u32,
    (best, position): (&mut [T], &mut [u32]),
) {
    #[inline(always)]
    fn pass<T: WithDType, const S: usize>(
        from: &[T],
        stride: usize,
        at: u32,
        (best, position): (&mut [T], &mut [u32]),
    ) {
        let stride = if S == 0 { stride } else { S };
        let n = best.len().min(position.len());
        // Callers pass rows that hold every column read (the bound also lets the compiler
        // drop the per-element checks).
        debug_assert!(n == 0 || from.len() > (n - 1) * stride);
        if n == 0 || from.len() <= (n - 1) * stride {
            return;
        }
        for j in 0..n {
            let v = from[j * stride];
            let b = best[j];
            #[allow(clippy::eq_op)] // `v != v` is the NaN test for any float type.
            let take = v > b || v != v;
            best[j] = if take { v } else { b };
            position[j] = if take { at } else { position[j] };
        }
    }
    match stride {
        1 => pass::<T, 1>(from, stride, at, (best, position)),
        2 => pass::<T, 2>(from, stride, at, (best, position)),
        _ => pass::<T, 0>(from, stride, at, (best, position)),
    }
}

impl MaxPool2d {
    fn forward<T: PoolValue>(&self, src: &[T], shape: &[usize]) -> Vec<T> {
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
    fn backward<T: PoolValue>(&self, src: &[T], grad: &[T], shape: &[usize]) -> Vec<T> {
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
    fn run<T: PoolValue>(&self, x: &[T], l1: &Layout, g: &[T], l2: &Layout) -> Vec<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's rule written out: each window's elements in row-major order, the candidate
    /// replaced by a strictly larger element or a NaN.
    fn brute_force(plane: &[f32], (h, w): (usize, usize), params: Pool2dParams) -> Vec<usize> {
        let (k, s, p) = (params.kernel, params.stride, params.padding);
        let (ho, wo) = (params.output_size(h), params.output_size(w));
        let mut found = Vec::new();
        for (oy, ox) in (0..ho).flat_map(|oy| (0..wo).map(move |ox| (oy, ox))) {
            let mut best: Option<usize> = None;
            for (ky, kx) in (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx))) {
                let (Some(y), Some(x)) =
                    ((oy * s + ky).checked_sub(p), (ox * s + kx).checked_sub(p))
                else {
                    continue;
                };
                if y >= h || x >= w {
                    continue;
                }
                let v = plane[y * w + x];
                if best.is_none_or(|b| v > plane[b] || v.is_nan()) {
                    best = Some(y * w + x);
                }
            }
            found.push(best.expect("every window holds an element"));
        }
        found
    }

    #[test]
    fn the_row_passes_find_what_the_scan_finds_with_ties_nans_and_infinities() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let geometries = [
            (9, 11, 3, 2, 1),
            (10, 10, 3, 1, 1),
            (7, 13, 5, 3, 2),
            (6, 6, 2, 2, 0),
            (5, 17, 4, 1, 2),
            (3, 2, 3, 2, 1),
        ];
        for (h, w, k, s, p) in geometries {
            let params = Pool2dParams {
                kernel: k,
                stride: s,
                padding: p,
            };
            for trial in 0..20 {
                let plane: Vec<f32> = (0..h * w)
                    .map(|_| match (rng.next_f64() * 40.0) as u32 {
                        0 if trial % 2 == 0 => f32::NAN,
                        1 | 2 => f32::NEG_INFINITY,
                        v => (v % 4) as f32, // many ties
                    })
                    .collect();
                let mut found = vec![usize::MAX; params.output_size(h) * params.output_size(w)];
                for_each_argmax(&plane, (h, w), params, |o, i| found[o] = i);
                let expected = brute_force(&plane, (h, w), params);
                assert_eq!(found, expected, "{:?}", (h, w, k, s, p, trial));
                let as_f64: Vec<f64> = plane.iter().map(|&v| v as f64).collect();
                let mut found = vec![usize::MAX; expected.len()];
                for_each_argmax(&as_f64, (h, w), params, |o, i| found[o] = i);
                assert_eq!(found, expected, "f64 {:?}", (h, w, k, s, p, trial));
            }
        }
    }
}
