//! Row-parallel helpers of the fused block: each splits a row-major `[M, width]` matrix into
//! tasks of whole rows (about [`CHUNK`](crate::kernels::CHUNK) values each).

use rayon::prelude::*;

use crate::kernels::rows_per_task;

/// `y[r] = base[r] + s[r / rows_per_sample] · branch[r]` per row of width `w` (a residual add
/// with per-sample branch factors; `s = None` means 1).
pub(super) fn residual(
    base: &[f32],
    branch: &[f32],
    w: usize,
    n: usize,
    s: Option<&[f32]>,
) -> Vec<f32> {
    let step = rows_per_task(w) * w;
    crate::kernels::par_filled(base.len(), step, |t, o| {
        let (a, b) = (
            &base[t * step..t * step + o.len()],
            &branch[t * step..t * step + o.len()],
        );
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
    })
}

/// `g` scaled per sample (`None` when every factor is 1: the caller uses `g` itself).
pub(super) fn scaled_rows(g: &[f32], w: usize, n: usize, s: Option<&[f32]>) -> Option<Vec<f32>> {
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
