//! Position embeddings: the fixed 2-D sin-cos table of the masked autoencoder and the bicubic
//! resizing of a position grid (`interpolate_pos_embed` of the reference).

use candle_core::{Device, Result, Tensor};

/// The fixed 2-D sin-cos position embedding of the MAE (`get_2d_sincos_pos_embed`), as
/// `[grid_h·grid_w (+1), embed_dim]` row-major over the grid (row = lead, column = time).
///
/// Channel layout, as the reference computes it: the first half of the channels encodes the
/// grid **column** (its `meshgrid` puts the width coordinate first), the second half the row;
/// within each half the first quarter holds sines, the second cosines, of `pos · ω_k` with
/// `ω_k = 1 / 10000^(k / (D/4))`. Frequencies, products and sines are computed in f32, as the
/// reference's float32 numpy arrays. With `cls_token`, a zero row comes first.
///
/// # Errors
/// When `embed_dim` is not divisible by 4.
pub fn sincos_2d(embed_dim: usize, grid: (usize, usize), cls_token: bool) -> Result<Vec<f32>> {
    if !embed_dim.is_multiple_of(4) {
        candle_core::bail!(
            "sin-cos position embedding: embed_dim {embed_dim} is not a multiple of 4"
        );
    }
    let (gh, gw) = grid;
    let quarter = embed_dim / 4;
    let omega: Vec<f32> = (0..quarter)
        .map(|k| {
            let e = k as f32 / (embed_dim as f32 / 4.0);
            1.0 / 10000f32.powf(e)
        })
        .collect();
    let extra = usize::from(cls_token);
    let mut out = vec![0f32; (gh * gw + extra) * embed_dim];
    for r in 0..gh {
        for c in 0..gw {
            let row = &mut out[(extra + r * gw + c) * embed_dim..][..embed_dim];
            for (half, pos) in [(0, c as f32), (1, r as f32)] {
                let base = half * 2 * quarter;
                for (k, &w) in omega.iter().enumerate() {
                    let angle = pos * w;
                    row[base + k] = angle.sin();
                    row[base + quarter + k] = angle.cos();
                }
            }
        }
    }
    Ok(out)
}

/// [`sincos_2d`] as a tensor `[1, grid_h·grid_w (+1), embed_dim]` on `device`.
pub fn sincos_2d_tensor(
    embed_dim: usize,
    grid: (usize, usize),
    cls_token: bool,
    device: &Device,
) -> Result<Tensor> {
    let rows = grid.0 * grid.1 + usize::from(cls_token);
    Tensor::from_vec(
        sincos_2d(embed_dim, grid, cls_token)?,
        (1, rows, embed_dim),
        device,
    )
}

/// PyTorch's cubic convolution coefficient (`A` of `upsample_bicubic2d`).
const CUBIC_A: f64 = -0.75;

/// The four weights of cubic convolution at fractional offset `t` in [0, 1).
fn cubic_weights(t: f64) -> [f64; 4] {
    let a = CUBIC_A;
    // Kernel for |x| <= 1 and for 1 < |x| < 2.
    let near = |x: f64| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// For each output index: the four clamped source indices and their weights, as
/// `F.interpolate(mode='bicubic', align_corners=False)` computes them (no antialiasing).
fn cubic_taps(in_len: usize, out_len: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = in_len as f64 / out_len as f64;
    (0..out_len)
        .map(|i| {
            let src = (i as f64 + 0.5) * scale - 0.5;
            let base = src.floor();
            let t = src - base;
            let idx = |o: i64| (base as i64 + o).clamp(0, in_len as i64 - 1) as usize;
            ([idx(-1), idx(0), idx(1), idx(2)], cubic_weights(t))
        })
        .collect()
}

/// Bicubic resize of a `[h, w, C]` grid (channels last) to `[new_h, new_w, C]`, with PyTorch's
/// `F.interpolate(mode='bicubic', align_corners=False)` semantics (border indices clamped).
pub fn bicubic_resize(
    grid: &[f32],
    (h, w): (usize, usize),
    channels: usize,
    (new_h, new_w): (usize, usize),
) -> Result<Vec<f32>> {
    if grid.len() != h * w * channels || h == 0 || w == 0 {
        candle_core::bail!(
            "bicubic resize: {} values do not form a {h}x{w} grid of {channels} channels",
            grid.len()
        );
    }
    let rows = cubic_taps(h, new_h);
    let cols = cubic_taps(w, new_w);
    // Along the width first, then the height (the order does not change the result beyond
    // rounding; both are computed in f64).
    let mut tmp = vec![0f64; h * new_w * channels];
    for r in 0..h {
        for (j, (idx, wt)) in cols.iter().enumerate() {
            let dst = &mut tmp[(r * new_w + j) * channels..][..channels];
            for (&src_c, &weight) in idx.iter().zip(wt) {
                let src = &grid[(r * w + src_c) * channels..][..channels];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d += weight * s as f64;
                }
            }
        }
    }
    let mut out = vec![0f32; new_h * new_w * channels];
    for (i, (idx, wt)) in rows.iter().enumerate() {
        for j in 0..new_w {
            let dst = &mut out[(i * new_w + j) * channels..][..channels];
            for (c, d) in dst.iter_mut().enumerate() {
                let v: f64 = idx
                    .iter()
                    .zip(wt)
                    .map(|(&r, &weight)| weight * tmp[(r * new_w + j) * channels + c])
                    .sum();
                *d = v as f32;
            }
        }
    }
    Ok(out)
}

/// Resizes a position embedding `[1, extra + h·old_w, D]` to `[1, extra + h·new_w, D]`, as the
/// reference's `interpolate_pos_embed`: the first `extra` rows (class token) are kept, the grid of
/// `h` rows (leads) by `old_w` columns (time patches) is resized bicubically to `h` by `new_w`.
///
/// The result is a new tensor on the device of `pos_embed`, in its dtype.
pub fn interpolate_pos_embed(
    pos_embed: &Tensor,
    extra: usize,
    grid_h: usize,
    new_w: usize,
) -> Result<Tensor> {
    let (one, len, dim) = pos_embed.dims3()?;
    if one != 1 || len < extra || grid_h == 0 || !(len - extra).is_multiple_of(grid_h) {
        candle_core::bail!(
            "position embedding of shape {:?} does not hold {extra} extra tokens and a grid of \
             {grid_h} rows",
            pos_embed.dims()
        );
    }
    let old_w = (len - extra) / grid_h;
    let values = pos_embed
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (head, grid) = values.split_at(extra * dim);
    let resized = bicubic_resize(grid, (grid_h, old_w), dim, (grid_h, new_w))?;
    let mut all = head.to_vec();
    all.extend_from_slice(&resized);
    Tensor::from_vec(all, (1, extra + grid_h * new_w, dim), pos_embed.device())?
        .to_dtype(pos_embed.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_at_same_size() -> Result<()> {
        for t in [0.0, 0.25, 0.5, 0.9] {
            let s: f64 = cubic_weights(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-12);
        }
        let grid: Vec<f32> = (0..3 * 5 * 2).map(|v| v as f32 * 0.37).collect();
        let same = bicubic_resize(&grid, (3, 5), 2, (3, 5))?;
        assert_eq!(same, grid);
        Ok(())
    }

    #[test]
    fn sincos_layout() -> Result<()> {
        let e = sincos_2d(8, (2, 3), true)?;
        assert!(e[..8].iter().all(|&v| v == 0.0));
        // Token (row 1, column 2): first half encodes the column, second the row.
        let tok = &e[(1 + 3 + 2) * 8..][..8];
        assert!((tok[0] - 2f32.sin()).abs() < 1e-7 && (tok[2] - 2f32.cos()).abs() < 1e-7);
        assert!((tok[4] - 1f32.sin()).abs() < 1e-7 && (tok[6] - 1f32.cos()).abs() < 1e-7);
        assert!(sincos_2d(6, (2, 2), false).is_err());
        Ok(())
    }
}
