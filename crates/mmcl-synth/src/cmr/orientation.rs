//! The scanner's orientation of the short-axis stack: its voxel-to-world matrix.

use crate::config::CmrConfig;
use crate::rng::{SubjectRng, normal};

/// A short-axis orientation in RAS+ world coordinates with the voxel size folded in.
pub(super) fn affine(cfg: &CmrConfig, rng: &mut SubjectRng) -> [[f64; 4]; 3] {
    // Typical short-axis plane: the long axis points to the apex (left, anterior, inferior).
    let jitter = |rng: &mut SubjectRng, v: [f64; 3]| {
        let w = [
            v[0] + 0.08 * normal(rng),
            v[1] + 0.08 * normal(rng),
            v[2] + 0.08 * normal(rng),
        ];
        let n = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
        [w[0] / n, w[1] / n, w[2] / n]
    };
    let apex = jitter(rng, [-0.6, 0.5, -0.6]);
    // Towards the lateral wall: the subject's left and back, orthogonal to the long axis.
    let lateral0 = [-0.7, -0.6, 0.0];
    let dot = lateral0[0] * apex[0] + lateral0[1] * apex[1] + lateral0[2] * apex[2];
    let lateral = {
        let w = [
            lateral0[0] - dot * apex[0],
            lateral0[1] - dot * apex[1],
            lateral0[2] - dot * apex[2],
        ];
        let n = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
        [w[0] / n, w[1] / n, w[2] / n]
    };
    // Towards the inferior wall completes a left-handed frame (lateral, inferior, apex).
    let inferior = [
        lateral[1] * apex[2] - lateral[2] * apex[1],
        lateral[2] * apex[0] - lateral[0] * apex[2],
        lateral[0] * apex[1] - lateral[1] * apex[0],
    ];
    let n = cfg.image_size as f64;
    let pixel = cfg.pixel_mm();
    let dz = cfg.slice_mm();
    let half = [
        (n - 1.0) / 2.0 * pixel,
        (n - 1.0) / 2.0 * pixel,
        (cfg.slices as f64 - 1.0) / 2.0 * dz,
    ];
    let iso = [10.0 * normal(rng), 10.0 * normal(rng), 10.0 * normal(rng)];
    let cols = [lateral, inferior, apex];
    let sizes = [pixel, pixel, dz];
    let mut a = [[0.0; 4]; 3];
    for row in 0..3 {
        for col in 0..3 {
            a[row][col] = cols[col][row] * sizes[col];
        }
        a[row][3] = iso[row] - (0..3).map(|c| cols[c][row] * half[c]).sum::<f64>();
    }
    a
}
