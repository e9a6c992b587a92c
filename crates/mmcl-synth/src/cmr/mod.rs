//! The short-axis cine CMR and its segmentation.
//!
//! The heart is described in a polar frame around the LV long axis (in-plane coordinates are
//! scaled so that the slightly elliptical LV becomes circular; areas scale back by the
//! ellipticity). Per slice and frame:
//!
//! - the LV cavity has radius `g(u)·ρ(θ)`, where `g` is a truncated half-ellipsoid profile over
//!   the relative depth `u` from base to apex, and `ρ(θ)` is uniform except in a hypokinetic
//!   territory, which keeps close to its end-diastolic position;
//! - the myocardium is a band of thickness `τ(θ)` outside it (thinner over a scar, not
//!   thickening where hypokinetic), closed by an apical cap;
//! - the RV cavity is a crescent of thickness `t(θ)` hugging the septal side of the LV.
//!
//! The scale of each part is solved in closed form (quadratic equations) so that the volumes
//! summed over the slices equal the hidden state at every frame: the LV cavity follows the
//! volume curve ED → ES → ED (ejection, rapid filling, diastasis, atrial kick — absent in atrial
//! fibrillation), the myocardium keeps its volume (so walls thicken in systole), the base
//! descends towards the apex in systole. The segmentation is the pixel-centre classification,
//! the image the same anatomy with partial-volume edges, papillary muscles, epicardial fat, a
//! static chest (lungs, liver, aorta, spine), a smooth coil-sensitivity bias and Rician noise.

mod chest;
mod heart;
mod orientation;

use std::f64::consts::{PI, TAU};

use crate::config::CmrConfig;
use rand_distr::{Distribution, StandardNormal};

use crate::rng::{SubjectRng, noise_stream, normal, uniform};
use crate::state::{HiddenState, Territory};

use chest::Background;
use heart::{BINS, DTHETA, bin_angle, solve_quadratic, volume_curve};
use orientation::affine;

/// Myocardial density, g/mL (the same as the data layer's).
const DENSITY: f64 = mmcl_data::phenotypes::MYOCARDIAL_DENSITY_G_PER_ML;

/// One subject's short-axis cine: image, segmentation and geometry, in NIfTI order
/// (x fastest, then y, slice, frame).
#[derive(Debug, Clone, PartialEq)]
pub struct Cine {
    /// `[x, y, slices, frames]`.
    pub dims: [usize; 4],
    /// Voxel size in mm `[x, y, slice spacing]`, rounded to `f32` as NIfTI stores it.
    pub voxel_mm: [f64; 3],
    /// Time between frames, ms.
    pub frame_ms: f64,
    /// Image intensities.
    pub image: Vec<i16>,
    /// Labels: 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool.
    pub labels: Vec<u8>,
    /// Voxel-to-world matrix (RAS+, mm): `world = affine · [i, j, k, 1]`. Its rotation part
    /// is left-handed (columns: towards the lateral wall, towards the inferior wall, towards
    /// the apex), as short-axis stacks viewed with the RV on the left are.
    pub affine: [[f64; 4]; 3],
    /// The frame of end-systole the volume curve was sampled at.
    pub es_frame: usize,
}

/// The subject-specific anatomy and acquisition, fixed over the cycle.
struct Heart {
    eps: f64,
    dz: f64,
    nz: usize,
    z_base_ed: f64,
    z_apex: f64,
    descent: f64,
    cap: f64,
    rv_extent: f64,
    /// Hypokinetic territory: angular centre, half-width, depth range, severity, wall left.
    territory: Option<(f64, f64, f64, f64)>,
    kappa: f64,
    wall_left: f64,
    rv_centre: f64,
    rv_half_width: f64,
    lv_myo_mm3: f64,
    r_ed: f64,
    omega_ed: f64,
    papillary_size: f64,
}

/// Polar tables of one slice at one frame (all radii in normalised mm).
#[derive(Clone)]
enum SliceShape {
    /// Above the base: an atrium (image only).
    Atrium { radius: f64 },
    /// Below the apex cap: no heart.
    Empty,
    /// LV cavity (possibly of zero size near the apex), myocardium and RV.
    Ventricles {
        endo: Vec<f64>,
        epi: Vec<f64>,
        rv: Vec<f64>,
        /// Papillary muscles: (u, v, radius).
        papillary: Vec<(f64, f64, f64)>,
    },
}

/// Precomputed polar coordinates of the pixels near the heart in one slice.
struct PolarPixels {
    index: Vec<u32>,
    rho: Vec<f32>,
    /// Normalised Cartesian coordinates (for the papillary muscles).
    uv: Vec<(f32, f32)>,
    bin: Vec<u16>,
}

/// Generates the cine and segmentation of a subject from its `"cmr"` stream.
#[allow(clippy::needless_range_loop)] // slice-indexed geometry reads best with indices
pub fn generate_cmr(s: &HiddenState, cfg: &CmrConfig, rng: &mut SubjectRng) -> Cine {
    let n = cfg.image_size;
    let nz = cfg.slices;
    let nt = cfg.frames;
    let pixel = cfg.pixel_mm();
    let dz = cfg.slice_mm();
    let fov = cfg.fov_mm;

    // Acquisition and anatomy that do not change over the cycle.
    let eps = uniform(rng, 0.85, 1.0);
    let phi = 0.2 * normal(rng);
    // The LV sits 20 mm right of the image centre so that LV and RV together are centred.
    let centre = (
        fov * 0.5 + 20.0 + 4.0 * normal(rng),
        fov * 0.5 + 4.0 * normal(rng),
    );
    let tilt = (1.2 * normal(rng), 1.2 * normal(rng));
    let length = (70.0 * (s.lvedv / 145.0).cbrt() * uniform(rng, 0.95, 1.05))
        .clamp(50.0, 0.78 * cfg.stack_mm);
    let z_base_ed = uniform(rng, 2.0, 6.0);
    let cap = (7.0 * (s.lvm / 80.0).cbrt()).clamp(5.0, 10.0);
    let territory = s.conditions.territory.map(|t| match t {
        Territory::Anterior => (1.4 * PI, 0.3 * PI, 0.35, 1.0),
        Territory::Inferior => (0.55 * PI, 0.25 * PI, 0.0, 0.65),
        Territory::Lateral => (1.95 * PI, 0.25 * PI, 0.0, 0.7),
    });
    let mut heart = Heart {
        eps,
        dz,
        nz,
        z_base_ed,
        z_apex: z_base_ed + length,
        descent: uniform(rng, 0.10, 0.16) * length,
        cap,
        rv_extent: uniform(rng, 0.75, 0.9),
        territory,
        kappa: s.hypokinesis,
        wall_left: s.territory_wall,
        rv_centre: (200.0 + 8.0 * normal(rng)).to_radians(),
        rv_half_width: (80.0 + 8.0 * normal(rng)).to_radians(),
        lv_myo_mm3: s.lvm / DENSITY * 1000.0,
        r_ed: 0.0,
        omega_ed: 0.0,
        papillary_size: uniform(rng, 0.12, 0.2),
    };
    // End-diastole: ρ = R_ed everywhere, τ = h·ω_ed.
    let g_ed: Vec<f64> = (0..nz)
        .map(|k| Heart::profile((heart.slice_z(k) - z_base_ed) / length))
        .collect();
    let sum_g2: f64 = g_ed.iter().map(|g| g * g).sum();
    heart.r_ed = (s.lvedv * 1000.0 / (eps * PI * dz * sum_g2)).sqrt();
    {
        let (mut qa, mut qb) = (0.0, 0.0);
        for k in 0..nz {
            let z = heart.slice_z(k);
            let cap_q = if z >= heart.z_apex && z < heart.z_apex + cap {
                (1.0 - ((z - heart.z_apex) / cap).powi(2)).sqrt()
            } else {
                0.0
            };
            let u = (z - z_base_ed) / length;
            for i in 0..BINS {
                let m = heart.territory_mask(bin_angle(i), u);
                let h = 1.0 - (1.0 - heart.wall_left) * m;
                if g_ed[k] > 0.0 {
                    qa += dz * eps * DTHETA * 0.5 * h * h;
                    qb += dz * eps * DTHETA * g_ed[k] * heart.r_ed * h;
                } else {
                    qa += dz * eps * DTHETA * 0.5 * cap_q * cap_q * h * h;
                }
            }
        }
        heart.omega_ed = solve_quadratic(qa, qb, -heart.lv_myo_mm3);
    }

    // Timing: end-systole on a frame, the cycle resolved in `nt` frames.
    let rr_ms = 60_000.0 / s.cmr_heart_rate_bpm;
    let t_es = 100.0 + 230.0 * (rr_ms / 1000.0).sqrt();
    let es_frame = ((t_es / rr_ms * nt as f64).round() as usize).clamp(1, nt - 1);
    let phi_es = es_frame as f64 / nt as f64;
    let atrial_kick = !s.conditions.af;

    // Chest, coil bias and scanner gain.
    let background = Background::new(s, cfg, centre, rng);
    let bias = {
        let bx = 0.12 * normal(rng);
        let by = -0.25 + 0.1 * normal(rng);
        let br = -0.1 + 0.05 * normal(rng);
        let mut field = vec![0f32; n * n];
        for j in 0..n {
            for i in 0..n {
                let x = 2.0 * (i as f64 + 0.5) / n as f64 - 1.0;
                let y = 2.0 * (j as f64 + 0.5) / n as f64 - 1.0;
                field[j * n + i] = (bx * x + by * y + br * (x * x + y * y)).exp() as f32;
            }
        }
        field
    };
    let gain = 320.0 * (0.25 * normal(rng)).exp();
    let noise_sd = gain * uniform(rng, 0.025, 0.06);
    let blood = 1.0;
    let myo = uniform(rng, 0.22, 0.32);
    let fat = uniform(rng, 0.8, 0.95);
    let fat_thickness: Vec<f64> = {
        // Patchy epicardial fat, thicker along the grooves.
        let phases: [f64; 3] = std::array::from_fn(|_| uniform(rng, 0.0, TAU));
        (0..BINS)
            .map(|i| {
                let a = bin_angle(i);
                (2.0 + 1.5 * (2.0 * a + phases[0]).sin()
                    + 1.0 * (3.0 * a + phases[1]).sin()
                    + 0.5 * (5.0 * a + phases[2]).sin())
                .max(0.3)
            })
            .collect()
    };

    // All frames' shapes first: their extent bounds the pixels to visit.
    let shapes: Vec<Vec<SliceShape>> = (0..nt)
        .map(|j| {
            let c = volume_curve(j as f64 / nt as f64, phi_es, atrial_kick);
            let v_lv = s.lvesv + (s.lvedv - s.lvesv) * c;
            let v_rv = s.rvesv + (s.rvedv - s.rvesv) * c;
            heart.shapes(v_lv, v_rv, 1.0 - c)
        })
        .collect();
    let mut reach: f64 = 0.0;
    for frame in &shapes {
        for shape in frame {
            match shape {
                SliceShape::Ventricles { epi, rv, .. } => {
                    for i in 0..BINS {
                        reach = reach.max(epi[i] + rv[i] + 3.0 + fat_thickness[i]);
                    }
                }
                SliceShape::Atrium { radius } => reach = reach.max(radius + 3.0),
                SliceShape::Empty => {}
            }
        }
    }
    reach += 2.0 * pixel;

    let (cos_phi, sin_phi) = (phi.cos(), phi.sin());
    let polar: Vec<PolarPixels> = (0..nz)
        .map(|k| {
            let off = k as f64 - (nz as f64 - 1.0) / 2.0;
            let (cx, cy) = (centre.0 + tilt.0 * off, centre.1 + tilt.1 * off);
            let mut p = PolarPixels {
                index: Vec::new(),
                rho: Vec::new(),
                uv: Vec::new(),
                bin: Vec::new(),
            };
            for j in 0..n {
                for i in 0..n {
                    let dx = (i as f64 + 0.5) * pixel - cx;
                    let dy = (j as f64 + 0.5) * pixel - cy;
                    let u = dx * cos_phi + dy * sin_phi;
                    let v = (-dx * sin_phi + dy * cos_phi) / eps;
                    let rho = (u * u + v * v).sqrt();
                    if rho > reach {
                        continue;
                    }
                    let theta = v.atan2(u).rem_euclid(TAU);
                    p.index.push((j * n + i) as u32);
                    p.rho.push(rho as f32);
                    p.uv.push((u as f32, v as f32));
                    p.bin
                        .push((((theta / DTHETA) + 0.5) as usize % BINS) as u16);
                }
            }
            p
        })
        .collect();

    let mut noise_rng = noise_stream(rng);
    let frame_len = n * n * nz;
    let mut image = vec![0i16; frame_len * nt];
    let mut labels = vec![0u8; frame_len * nt];
    let mut plane = vec![0f64; n * n];
    // Partial-volume ramp one pixel wide (in normalised mm).
    let ramp = pixel;
    let cover = |d: f64| (0.5 - d / ramp).clamp(0.0, 1.0);
    for (t, frame) in shapes.iter().enumerate() {
        for (k, shape) in frame.iter().enumerate() {
            plane.copy_from_slice(&background.slices[k]);
            let base = (t * nz + k) * n * n;
            let lab = &mut labels[base..base + n * n];
            let px = &polar[k];
            match shape {
                SliceShape::Empty => {}
                SliceShape::Atrium { radius } => {
                    for p in 0..px.index.len() {
                        let rho = px.rho[p] as f64;
                        let idx = px.index[p] as usize;
                        let mut val = plane[idx];
                        val += (myo - val) * cover(rho - radius - 2.5);
                        val += (blood - val) * cover(rho - radius);
                        plane[idx] = val;
                    }
                }
                SliceShape::Ventricles {
                    endo,
                    epi,
                    rv,
                    papillary,
                } => {
                    for p in 0..px.index.len() {
                        let rho = px.rho[p] as f64;
                        let b = px.bin[p] as usize;
                        let idx = px.index[p] as usize;
                        let (r_endo, r_epi, t_rv) = (endo[b], epi[b], rv[b]);
                        let rv_wall = if t_rv > 0.5 { 3.0 } else { 0.0 };
                        let outer = r_epi + t_rv + rv_wall;
                        let mut val = plane[idx];
                        val += (fat - val) * cover(rho - outer - fat_thickness[b]);
                        if t_rv > 0.0 {
                            val += (myo - val) * cover(rho - outer);
                            val += (blood - val) * cover(rho - r_epi - t_rv);
                        }
                        val += (myo - val) * cover(rho - r_epi);
                        val += (blood - val) * cover(rho - r_endo);
                        for &(pu, pv, pr) in papillary {
                            let (u, v) = px.uv[p];
                            let d = ((u as f64 - pu).powi(2) + (v as f64 - pv).powi(2)).sqrt();
                            val += (myo - val) * cover(d - pr);
                        }
                        plane[idx] = val;
                        lab[idx] = if rho < r_endo {
                            1
                        } else if rho < r_epi {
                            2
                        } else if rho < r_epi + t_rv {
                            3
                        } else {
                            0
                        };
                    }
                }
            }
            let img = &mut image[base..base + n * n];
            for (idx, out) in img.iter_mut().enumerate() {
                let signal = gain * bias[idx] as f64 * plane[idx];
                let (n1, n2): (f64, f64) = (
                    StandardNormal.sample(&mut noise_rng),
                    StandardNormal.sample(&mut noise_rng),
                );
                let re = signal + noise_sd * n1;
                let im = noise_sd * n2;
                // Round half up (a magnitude is never negative); `as` saturates at i16::MAX.
                *out = ((re * re + im * im).sqrt() + 0.5) as i16;
            }
        }
    }

    Cine {
        dims: [n, n, nz, nt],
        // As the NIfTI header stores them (f32), so that phenotypes measured from the file's
        // pixdim equal those measured here exactly.
        voxel_mm: [pixel as f32 as f64, pixel as f32 as f64, dz as f32 as f64],
        frame_ms: rr_ms / nt as f64,
        image,
        labels,
        affine: affine(cfg, rng),
        es_frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Prevalences;
    use crate::rng::subject_stream;
    use crate::state::PopulationModel;
    use mmcl_data::phenotypes::measure_phenotypes;

    fn small() -> CmrConfig {
        CmrConfig {
            image_size: 96,
            slices: 10,
            frames: 12,
            ..CmrConfig::default()
        }
    }

    #[test]
    fn volume_curve_has_ed_at_zero_and_es_at_its_phase() {
        for kick in [true, false] {
            assert!((volume_curve(0.0, 0.35, kick) - 1.0).abs() < 1e-12);
            assert!(volume_curve(0.35, 0.35, kick).abs() < 1e-12);
            assert!((volume_curve(0.999_999, 0.35, kick) - 1.0).abs() < 1e-3);
            for i in 1..100 {
                let phi = i as f64 / 100.0;
                assert!(volume_curve(phi, 0.35, kick) > -1e-12);
            }
        }
    }

    #[test]
    fn segmentation_measures_the_hidden_volumes() {
        let model = PopulationModel::new(&Prevalences::default());
        let cfg = small();
        for eid in 0..12u64 {
            let s = model.draw(eid, &mut subject_stream(5, eid, "state"));
            let cine = generate_cmr(&s, &cfg, &mut subject_stream(5, eid, "cmr"));
            let p = measure_phenotypes(&cine.labels, cine.dims, cine.voxel_mm, None).unwrap();
            assert_eq!(p.es_frame, cine.es_frame, "eid {eid}");
            // Measured vs hidden volume, and the relative error each may have.
            for (name, measured, hidden, tolerance) in [
                ("LVEDV", p.lvedv, s.lvedv, 0.03),
                ("LVESV", p.lvesv, s.lvesv, 0.05),
                ("LVM", p.lvm, s.lvm, 0.06),
                ("RVEDV", p.rvedv, s.rvedv, 0.04),
                ("RVESV", p.rvesv, s.rvesv, 0.06),
            ] {
                assert!(
                    (measured - hidden).abs() / hidden < tolerance,
                    "{name} {measured} vs {hidden}"
                );
            }
            // Bright blood, dark myocardium.
            let frame = cine.dims[0] * cine.dims[1] * cine.dims[2];
            let mean = |label: u8| {
                let v: Vec<f64> = cine.labels[..frame]
                    .iter()
                    .zip(&cine.image[..frame])
                    .filter(|(l, _)| **l == label)
                    .map(|(_, &x)| x as f64)
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            assert!(mean(1) > 2.0 * mean(2));
        }
    }

    #[test]
    fn extreme_acquisition_settings_still_measure_the_volumes() {
        let model = PopulationModel::new(&Prevalences {
            cad: 0.6,
            prior_mi_given_cad: 0.8,
            ..Prevalences::default()
        });
        let configs = [
            (16, 1, 2, 140.0, 95.0),
            (32, 1, 2, 140.0, 100.0),
            (48, 3, 3, 500.0, 200.0),
            (64, 40, 4, 200.0, 120.0),
        ];
        for (image_size, slices, frames, fov_mm, stack_mm) in configs {
            let cfg = CmrConfig {
                image_size,
                slices,
                frames,
                fov_mm,
                stack_mm,
                compression: 1,
            };
            for eid in 0..6u64 {
                let s = model.draw(eid, &mut subject_stream(2, eid, "state"));
                let cine = generate_cmr(&s, &cfg, &mut subject_stream(2, eid, "cmr"));
                assert_eq!(cine.labels.len(), cfg.voxels());
                let p = measure_phenotypes(&cine.labels, cine.dims, cine.voxel_mm, None).unwrap();
                if image_size >= 32 && fov_mm <= 200.0 {
                    let rel = (p.lvedv - s.lvedv).abs() / s.lvedv;
                    assert!(rel < 0.1, "{cfg:?}: LVEDV {} vs {}", p.lvedv, s.lvedv);
                } else {
                    assert!(p.lvedv > 0.0, "{cfg:?}: no LV");
                }
            }
        }
    }

    #[test]
    fn affine_is_a_scaled_left_handed_rotation() {
        let cfg = small();
        let a = affine(&cfg, &mut subject_stream(0, 0, "cmr"));
        let col = |c: usize| [a[0][c], a[1][c], a[2][c]];
        let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        assert!((norm(col(0)) - cfg.pixel_mm()).abs() < 1e-9);
        assert!((norm(col(2)) - cfg.slice_mm()).abs() < 1e-9);
        let (x, y, z) = (col(0), col(1), col(2));
        let det = x[0] * (y[1] * z[2] - y[2] * z[1]) - x[1] * (y[0] * z[2] - y[2] * z[0])
            + x[2] * (y[0] * z[1] - y[1] * z[0]);
        assert!(det < 0.0);
    }
}
