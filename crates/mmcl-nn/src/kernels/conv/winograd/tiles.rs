//! The transforms of F(2×2, 3×3) over one channel plane at a time: input tiles `Bᵀ·d·B`,
//! output-gradient tiles `A·dy·Aᵀ` and output tiles `Aᵀ·M·A`, each element-wise over all the
//! plane's tiles at once and compiled for the CPU's vector width ([`multiversion!`]).

use crate::kernels::simd::multiversion;

/// The tiles of one `[H, W]` plane: `th × tw` tiles of 2×2 output pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlaneTiles {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) th: usize,
    pub(super) tw: usize,
}

impl PlaneTiles {
    /// Tiles in the plane.
    pub(super) fn count(self) -> usize {
        self.th * self.tw
    }

    /// Scratch values that [`input_tiles`] and [`output_tiles`] need.
    pub(super) fn scratch(self) -> usize {
        PHASES * (self.th + 1) * self.tw + 4 * self.count()
    }
}

/// The eight phase planes of [`input_tiles`]: row parity × column parity × column shift.
const PHASES: usize = 8;

multiversion!(
    pub(super) fn input_tiles(
        plane: &[f32],
        tiles: PlaneTiles,
        v: &mut [f32],
        stride: usize,
        scratch: &mut [f32]
    ) => input_tiles_kernel
);

/// `V = Bᵀ·d·B` of every tile of one channel's `plane`: position `ξ`'s values of the plane's
/// tiles (row-major) into `v[ξ·stride..ξ·stride + th·tw]`.
///
/// Tile `(ty, tx)` reads padded pixels `(2·ty + a, 2·tx + b)`, `a, b ∈ 0..4` (padded index
/// = input index + 1). Split by the parity of the padded row and column, and by whether the
/// column is the tile's first or second of that parity, the plane becomes eight `[th + 1, tw]`
/// phase planes in which input `(a, b)` of tile `t = ty·tw + tx` sits at `t + (a / 2)·tw`:
/// every step of the transform is then element-wise over all the plane's tiles at once, long
/// runs that vectorise, rather than one short run per row of tiles.
#[inline(always)]
fn input_tiles_kernel(
    plane: &[f32],
    tiles: PlaneTiles,
    v: &mut [f32],
    stride: usize,
    scratch: &mut [f32],
) {
    let PlaneTiles { h, w, th, tw } = tiles;
    let (n, phase_len) = (tiles.count(), (th + 1) * tw);
    let (phases, columns) = scratch.split_at_mut(PHASES * phase_len);
    for (index, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
        // Row parity, column parity, column shift.
        let (pr, pc, shift) = (index / 4, index / 2 % 2, index % 2);
        // Padded column 2·(tx + shift) + pc is input column 2·tx + offset.
        let offset = 2 * shift + pc; // + (−1), applied below
        for (ty, row) in phase.chunks_exact_mut(tw).enumerate() {
            // Padded row 2·ty + pr is input row 2·ty + pr − 1.
            let Some(src) = (2 * ty + pr).checked_sub(1).filter(|&y| y < h) else {
                row.fill(0.0);
                continue;
            };
            let src = &plane[src * w..(src + 1) * w];
            // Tile columns whose input column 2·tx + offset − 1 lies in 0..w.
            let first = usize::from(offset == 0);
            let end = (w + 1 - offset.min(w + 1)).div_ceil(2).min(tw).max(first);
            row[..first].fill(0.0);
            row[end..].fill(0.0);
            let from = (2 * first + offset - 1).min(w);
            for (d, &value) in row[first..end]
                .iter_mut()
                .zip(src[from..].iter().step_by(2))
            {
                *d = value;
            }
        }
    }
    // Input (a, b) of every tile: phase (a % 2, b % 2, b / 2) from row a / 2 on.
    let input = |a: usize, b: usize| {
        let start = ((a % 2) * 4 + (b % 2) * 2 + b / 2) * phase_len + (a / 2) * tw;
        &phases[start..start + n]
    };
    let (c0, rest) = columns.split_at_mut(n);
    let (c1, rest) = rest.split_at_mut(n);
    let (c2, c3) = rest.split_at_mut(n);
    for k in 0..4 {
        // Bᵀ·d, row k: d0 − d2, d1 + d2, d2 − d1, d1 − d3 over the tile's rows a.
        for (b, column) in [&mut *c0, &mut *c1, &mut *c2, &mut *c3]
            .into_iter()
            .enumerate()
        {
            let (p, q) = match k {
                0 => (input(0, b), input(2, b)),
                1 | 2 => (input(1, b), input(2, b)),
                _ => (input(1, b), input(3, b)),
            };
            for ((c, &p), &q) in column[..n].iter_mut().zip(p).zip(q) {
                *c = match k {
                    0 | 3 => p - q,
                    1 => p + q,
                    _ => q - p,
                };
            }
        }
        // ·B, column l: x0 − x2, x1 + x2, x2 − x1, x1 − x3.
        let (x0, x1, x2, x3) = (&c0[..n], &c1[..n], &c2[..n], &c3[..n]);
        let row = (k * 4) * stride;
        let (v0, rest) = v[row..].split_at_mut(stride);
        let (v1, rest) = rest.split_at_mut(stride);
        let (v2, v3) = rest.split_at_mut(stride);
        for ((o, &p), &q) in v0[..n].iter_mut().zip(x0).zip(x2) {
            *o = p - q;
        }
        for ((o, &p), &q) in v1[..n].iter_mut().zip(x1).zip(x2) {
            *o = p + q;
        }
        for ((o, &p), &q) in v2[..n].iter_mut().zip(x2).zip(x1) {
            *o = p - q;
        }
        for ((o, &p), &q) in v3[..n].iter_mut().zip(x1).zip(x3) {
            *o = p - q;
        }
    }
}

multiversion!(
    pub(super) fn gradient_tiles(
        dy: &[f32],
        tiles: PlaneTiles,
        out: &mut [f32],
        stride: usize,
        scratch: &mut [f32]
    ) => gradient_tiles_kernel
);

/// `Ŷ = A·dy·Aᵀ` of every tile of one output-gradient `plane` (the 2×2 pixels of tile
/// `(ty, tx)` at `(2·ty + p, 2·tx + q)`, zero past the map's edge): position `ξ`'s values of the
/// plane's tiles (row-major) into `out[ξ·stride..ξ·stride + th·tw]`.
#[inline(always)]
fn gradient_tiles_kernel(
    dy: &[f32],
    tiles: PlaneTiles,
    out: &mut [f32],
    stride: usize,
    scratch: &mut [f32],
) {
    let PlaneTiles { h, w, tw, .. } = tiles;
    let n = tiles.count();
    // The tiles' pixel (p, q) in plane p·2 + q.
    let (pixels, _) = scratch.split_at_mut(4 * n);
    for (index, plane) in pixels.chunks_exact_mut(n).enumerate() {
        let (p, q) = (index / 2, index % 2);
        for (ty, row) in plane.chunks_exact_mut(tw).enumerate() {
            let y = 2 * ty + p;
            if y >= h {
                row.fill(0.0);
                continue;
            }
            let src = &dy[y * w + q.min(w)..(y + 1) * w];
            let end = src.len().div_ceil(2).min(tw);
            for (d, &value) in row[..end].iter_mut().zip(src.iter().step_by(2)) {
                *d = value;
            }
            row[end..].fill(0.0);
        }
    }
    let pixel = |p: usize, q: usize| &pixels[(p * 2 + q) * n..(p * 2 + q + 1) * n];
    for a in 0..4 {
        // A·dy, row a: y0, y0 + y1, y0 − y1, −y1 over the tile's rows p, for columns q = 0, 1.
        let row = |q: usize, t: usize| {
            let (y0, y1) = (pixel(0, q)[t], pixel(1, q)[t]);
            match a {
                0 => y0,
                1 => y0 + y1,
                2 => y0 - y1,
                _ => -y1,
            }
        };
        // ·Aᵀ, column b: r0, r0 + r1, r0 − r1, −r1.
        let start = a * 4 * stride;
        let (o0, rest) = out[start..].split_at_mut(stride);
        let (o1, rest) = rest.split_at_mut(stride);
        let (o2, o3) = rest.split_at_mut(stride);
        for t in 0..n {
            let (r0, r1) = (row(0, t), row(1, t));
            o0[t] = r0;
            o1[t] = r0 + r1;
            o2[t] = r0 - r1;
            o3[t] = -r1;
        }
    }
}

multiversion!(
    pub(super) fn output_tiles(
        m: &[f32],
        stride: usize,
        tiles: PlaneTiles,
        plane: &mut [f32],
        scratch: &mut [f32]
    ) => output_tiles_kernel
);

/// `Aᵀ·M·A` of every tile of one output channel, position `ξ`'s values of the plane's tiles
/// (row-major) read from `m[ξ·stride..ξ·stride + th·tw]`, into its `plane`; the pixels of
/// tiles that overhang the map are dropped.
#[inline(always)]
fn output_tiles_kernel(
    m: &[f32],
    stride: usize,
    tiles: PlaneTiles,
    plane: &mut [f32],
    scratch: &mut [f32],
) {
    let PlaneTiles { h, w, th, tw } = tiles;
    let n = tiles.count();
    let position = |xi: usize| &m[xi * stride..xi * stride + n];
    let (z, _) = scratch.split_at_mut(4 * n);
    let (z0, rest) = z.split_at_mut(n);
    let (z1, rest) = rest.split_at_mut(n);
    let (z2, z3) = rest.split_at_mut(n);
    for p in 0..2 {
        // Aᵀ·M, row p: m0 + m1 + m2, m1 − m2 − m3 over the rows a, for each column b.
        for (b, z) in [&mut *z0, &mut *z1, &mut *z2, &mut *z3]
            .into_iter()
            .enumerate()
        {
            let (m0, m1, m2, m3) = (
                position(b),
                position(4 + b),
                position(8 + b),
                position(12 + b),
            );
            for ((((z, &m0), &m1), &m2), &m3) in z[..n].iter_mut().zip(m0).zip(m1).zip(m2).zip(m3) {
                *z = if p == 0 { m0 + m1 + m2 } else { m1 - m2 - m3 };
            }
        }
        // ·A, column q: z0 + z1 + z2, z1 − z2 − z3, into output row 2·ty + p.
        for ty in 0..th {
            let y = 2 * ty + p;
            if y >= h {
                break;
            }
            let row = &mut plane[y * w..(y + 1) * w];
            let at = ty * tw;
            let (z0, z1, z2, z3) = (
                &z0[at..at + tw],
                &z1[at..at + tw],
                &z2[at..at + tw],
                &z3[at..at + tw],
            );
            for (tx, pair) in row.chunks_mut(2).enumerate() {
                pair[0] = z0[tx] + z1[tx] + z2[tx];
                if let Some(second) = pair.get_mut(1) {
                    *second = z1[tx] - z2[tx] - z3[tx];
                }
            }
        }
    }
}
