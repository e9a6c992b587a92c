//! The static chest around the heart: torso, subcutaneous fat, muscle, lungs, liver, aorta and
//! spine with a faint tissue texture, blurred for partial volume at the edges.

use std::f64::consts::TAU;

use crate::config::CmrConfig;
use crate::rng::{SubjectRng, normal, uniform};
use crate::state::HiddenState;

/// The static chest around the heart, one plane per slice (relative intensities).
pub(super) struct Background {
    /// The planes, `image_size²` values each, x fastest.
    pub(super) slices: Vec<Vec<f64>>,
}

impl Background {
    /// The chest of subject `s` around the LV centre `heart` (mm), drawn from `rng`.
    pub(super) fn new(
        s: &HiddenState,
        cfg: &CmrConfig,
        heart: (f64, f64),
        rng: &mut SubjectRng,
    ) -> Self {
        let n = cfg.image_size;
        let pixel = cfg.pixel_mm();
        let fov = cfg.fov_mm;
        let body = (s.bmi / 26.5).sqrt();
        let torso = (
            fov * 0.5 + 3.0 * normal(rng),
            fov * 0.52 + 3.0 * normal(rng),
        );
        let torso_axes = (165.0 * body, 115.0 * body);
        let subcutaneous = (8.0 + 1.2 * (s.bmi - 20.0)).clamp(5.0, 40.0);
        let lungs = [
            (
                heart.0 + 70.0 + 6.0 * normal(rng),
                heart.1 + 15.0,
                55.0,
                80.0,
            ),
            (
                heart.0 - 95.0 + 6.0 * normal(rng),
                heart.1 + 10.0,
                55.0,
                85.0,
            ),
        ];
        let aorta = (
            heart.0 + 25.0,
            heart.1 + 70.0,
            11.0 + 2.0 * normal(rng).abs(),
        );
        let spine = (heart.0 - 5.0, heart.1 + 100.0, 18.0);
        let liver = (heart.0 - 60.0, heart.1 + 75.0, 85.0, 55.0);
        let texture: Vec<(f64, f64, f64, f64)> = (0..6)
            .map(|_| {
                (
                    uniform(rng, 0.01, 0.05),
                    uniform(rng, 0.01, 0.05),
                    uniform(rng, 0.0, TAU),
                    uniform(rng, 0.01, 0.04),
                )
            })
            .collect();
        // Tissue texture: a few plane waves, computed once with sin(a + b) expanded so that
        // only per-row and per-column sines are needed.
        let mut grain = vec![0.0; n * n];
        for &(fx, fy, p, a) in &texture {
            let col: Vec<(f64, f64)> = (0..n)
                .map(|i| (fx * (i as f64 + 0.5) * pixel).sin_cos())
                .collect();
            for j in 0..n {
                let (sy, cy) = (fy * (j as f64 + 0.5) * pixel + p).sin_cos();
                for (i, &(sx, cx)) in col.iter().enumerate() {
                    grain[j * n + i] += a * (sx * cy + cx * sy);
                }
            }
        }
        let inside = |x: f64, y: f64, c: (f64, f64), a: (f64, f64)| {
            ((x - c.0) / a.0).powi(2) + ((y - c.1) / a.1).powi(2)
        };
        let slices = (0..cfg.slices)
            .map(|k| {
                let depth = (k as f64 + 0.5) / cfg.slices as f64;
                let mut plane = vec![0.0; n * n];
                for j in 0..n {
                    for i in 0..n {
                        let x = (i as f64 + 0.5) * pixel;
                        let y = (j as f64 + 0.5) * pixel;
                        let e = inside(x, y, torso, torso_axes);
                        let val = if e > 1.0 {
                            0.0
                        } else {
                            let inner = inside(
                                x,
                                y,
                                torso,
                                (torso_axes.0 - subcutaneous, torso_axes.1 - subcutaneous),
                            );
                            let muscle = inside(
                                x,
                                y,
                                torso,
                                (
                                    torso_axes.0 - subcutaneous - 12.0,
                                    torso_axes.1 - subcutaneous - 12.0,
                                ),
                            );
                            let mut v = if inner > 1.0 {
                                0.85
                            } else if muscle > 1.0 {
                                0.25
                            } else {
                                0.3
                            };
                            if inner <= 1.0 {
                                for l in &lungs {
                                    if inside(x, y, (l.0, l.1), (l.2, l.3)) < 1.0 {
                                        v = 0.04;
                                    }
                                }
                                if depth > 0.45
                                    && inside(x, y, (liver.0, liver.1), (liver.2, liver.3)) < 1.0
                                {
                                    v = 0.38;
                                }
                                if inside(x, y, (aorta.0, aorta.1), (aorta.2, aorta.2)) < 1.0 {
                                    v = 0.9;
                                }
                                if inside(x, y, (spine.0, spine.1), (spine.2, spine.2)) < 1.0 {
                                    v = 0.3;
                                }
                                v *= 1.0 + grain[j * n + i];
                            }
                            v
                        };
                        plane[j * n + i] = val;
                    }
                }
                box_blur(&plane, n)
            })
            .collect();
        Self { slices }
    }
}

/// A 3 × 3 box blur of an `n × n` plane (edges clamp): tissue boundaries with partial volume.
fn box_blur(plane: &[f64], n: usize) -> Vec<f64> {
    let at = |i: isize, j: isize| {
        let i = i.clamp(0, n as isize - 1) as usize;
        let j = j.clamp(0, n as isize - 1) as usize;
        plane[j * n + i]
    };
    let mut out = vec![0.0; n * n];
    for j in 0..n as isize {
        for i in 0..n as isize {
            let mut sum = 0.0;
            for dj in -1..=1 {
                for di in -1..=1 {
                    sum += at(i + di, j + dj);
                }
            }
            out[j as usize * n + i as usize] = sum / 9.0;
        }
    }
    out
}
