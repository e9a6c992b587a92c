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

use std::f64::consts::{PI, TAU};

use crate::config::CmrConfig;
use rand_distr::{Distribution, StandardNormal};

use crate::rng::{NoiseRng, SubjectRng, normal, uniform};
use crate::state::{HiddenState, Territory};

/// Angular bins of the polar shape tables.
const BINS: usize = 512;
const DTHETA: f64 = TAU / BINS as f64;
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

/// The fraction `c(φ)` of the stroke volume in the LV at cycle phase `φ ∈ [0, 1)` (1 at
/// end-diastole, 0 at end-systole `phi_es`).
fn volume_curve(phi: f64, phi_es: f64, atrial_kick: bool) -> f64 {
    if phi <= phi_es {
        return 0.5 * (1.0 + (PI * phi / phi_es).cos());
    }
    let x = (phi - phi_es) / (1.0 - phi_es);
    let early = if atrial_kick { 0.75 } else { 0.97 };
    let kick = if x < 0.8 {
        0.0
    } else {
        0.5 * (1.0 - (PI * (x - 0.8) / 0.2).cos())
    };
    early * (1.0 - (-x / 0.12).exp()) + (1.0 - early) * kick
}

/// Smooth 0–1 window: 1 inside `[lo, hi]`, tapering to 0 over `taper` outside.
fn window(x: f64, lo: f64, hi: f64, taper: f64) -> f64 {
    let d = if x < lo {
        lo - x
    } else if x > hi {
        x - hi
    } else {
        0.0
    };
    if d >= taper {
        0.0
    } else {
        0.5 * (1.0 + (PI * d / taper).cos())
    }
}

/// Signed angular difference `a − b` wrapped to (−π, π].
fn angle_diff(a: f64, b: f64) -> f64 {
    let mut d = (a - b) % TAU;
    if d > PI {
        d -= TAU;
    } else if d <= -PI {
        d += TAU;
    }
    d
}

fn bin_angle(i: usize) -> f64 {
    i as f64 * DTHETA
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

impl Heart {
    fn slice_z(&self, k: usize) -> f64 {
        (k as f64 + 0.5) * self.dz
    }

    /// Cavity profile at relative depth `u` ∈ [0, 1): widest a little below the base.
    fn profile(u: f64) -> f64 {
        if !(0.0..1.0).contains(&u) {
            return 0.0;
        }
        (1.0 - u * u).sqrt() * (1.0 - 0.15 * (1.0 - u).powi(3))
    }

    /// Territory mask m(θ) at relative depth u.
    fn territory_mask(&self, theta: f64, u: f64) -> f64 {
        match self.territory {
            None => 0.0,
            Some((centre, half, u_lo, u_hi)) => {
                window(angle_diff(theta, centre).abs(), 0.0, half, 0.5)
                    * window(u, u_lo, u_hi, 0.12)
            }
        }
    }

    /// RV angular profile ψ(θ).
    fn rv_profile(&self, theta: f64) -> f64 {
        let d = angle_diff(theta, self.rv_centre).abs();
        if d >= self.rv_half_width {
            0.0
        } else {
            (0.5 * PI * d / self.rv_half_width).cos().powf(0.8)
        }
    }

    /// The shapes of all slices when the LV cavity holds `v_lv` mL and the RV `v_rv` mL, with
    /// systolic fraction `systole` (0 at ED, 1 at ES) moving the base.
    fn shapes(&self, v_lv: f64, v_rv: f64, systole: f64) -> Vec<SliceShape> {
        let z_base = self.z_base_ed + self.descent * systole;
        let length = self.z_apex - z_base;
        let eps = self.eps;
        let dz = self.dz;
        let kappa = self.kappa;

        // Depth, cavity profile and territory mask of every slice.
        let depth: Vec<f64> = (0..self.nz)
            .map(|k| (self.slice_z(k) - z_base) / length)
            .collect();
        let g: Vec<f64> = depth.iter().map(|&u| Self::profile(u)).collect();
        let mask: Vec<Vec<f64>> = depth
            .iter()
            .map(|&u| {
                (0..BINS)
                    .map(|i| self.territory_mask(bin_angle(i), u))
                    .collect()
            })
            .collect();

        // LV cavity: ρ(θ) = (1 − κm)R + κm·R_ed, V = dz·ε·Σ_k g_k²·½Σ_θ ρ² dθ = aR² + bR + c.
        let (mut qa, mut qb, mut qc) = (0.0, 0.0, 0.0);
        for k in 0..self.nz {
            if g[k] == 0.0 {
                continue;
            }
            let w = dz * eps * g[k] * g[k] * 0.5 * DTHETA;
            for &m in &mask[k] {
                let moving = 1.0 - kappa * m;
                let fixed = kappa * m * self.r_ed;
                qa += w * moving * moving;
                qb += w * 2.0 * moving * fixed;
                qc += w * fixed * fixed;
            }
        }
        let r = solve_quadratic(qa, qb, qc - v_lv * 1000.0).max(0.2 * self.r_ed);
        let endo: Vec<Vec<f64>> = (0..self.nz)
            .map(|k| {
                mask[k]
                    .iter()
                    .map(|&m| g[k] * ((1.0 - kappa * m) * r + kappa * m * self.r_ed))
                    .collect()
            })
            .collect();

        // Myocardium: τ(θ) = h(θ)[(1 − κm)ω + κm·ω_ed], constant volume; apical cap slices are
        // discs of radius q·τ.
        let (mut qa, mut qb, mut qc) = (0.0, 0.0, 0.0);
        for k in 0..self.nz {
            let z = self.slice_z(k);
            let cap_q = if z >= self.z_apex && z < self.z_apex + self.cap {
                (1.0 - ((z - self.z_apex) / self.cap).powi(2)).sqrt()
            } else {
                0.0
            };
            if g[k] == 0.0 && cap_q == 0.0 {
                continue;
            }
            for (i, &m) in mask[k].iter().enumerate() {
                let h = 1.0 - (1.0 - self.wall_left) * m;
                let p = h * (1.0 - kappa * m);
                let q0 = h * kappa * m * self.omega_ed;
                let w = dz * eps * DTHETA;
                if g[k] > 0.0 {
                    let rr = endo[k][i];
                    // ∫ r τ + ½ τ²
                    qa += w * 0.5 * p * p;
                    qb += w * (rr * p + p * q0);
                    qc += w * (rr * q0 + 0.5 * q0 * q0);
                } else {
                    qa += w * 0.5 * cap_q * cap_q * p * p;
                    qb += w * cap_q * cap_q * p * q0;
                    qc += w * 0.5 * cap_q * cap_q * q0 * q0;
                }
            }
        }
        let omega = solve_quadratic(qa, qb, qc - self.lv_myo_mm3).max(0.5);
        let thickness = |k: usize, i: usize| {
            let m = mask[k][i];
            let h = 1.0 - (1.0 - self.wall_left) * m;
            h * ((1.0 - kappa * m) * omega + kappa * m * self.omega_ed)
        };

        // RV crescent: t(θ) = T·ψ(θ)·s_k outside the LV epicardium, V = dz·ε·Σ∫ e t + ½ t².
        let psi: Vec<f64> = (0..BINS).map(|i| self.rv_profile(bin_angle(i))).collect();
        let rv_depth: Vec<f64> = (0..self.nz)
            .map(|k| {
                let u = (self.slice_z(k) - z_base) / (self.rv_extent * length);
                if (0.0..1.0).contains(&u) && g[k] > 0.0 {
                    (1.0 - u * u).sqrt()
                } else {
                    0.0
                }
            })
            .collect();
        let (mut qa, mut qb) = (0.0, 0.0);
        for k in 0..self.nz {
            if rv_depth[k] == 0.0 {
                continue;
            }
            for i in 0..BINS {
                let e = endo[k][i] + thickness(k, i);
                let t = psi[i] * rv_depth[k];
                qa += dz * eps * DTHETA * 0.5 * t * t;
                qb += dz * eps * DTHETA * e * t;
            }
        }
        let rv_scale = solve_quadratic(qa, qb, -v_rv * 1000.0).max(0.0);

        (0..self.nz)
            .map(|k| {
                let z = self.slice_z(k);
                if z < z_base {
                    return SliceShape::Atrium {
                        radius: 0.8 * self.r_ed,
                    };
                }
                if g[k] == 0.0 {
                    if z >= self.z_apex && z < self.z_apex + self.cap {
                        let q = (1.0 - ((z - self.z_apex) / self.cap).powi(2)).sqrt();
                        return SliceShape::Ventricles {
                            endo: vec![0.0; BINS],
                            epi: (0..BINS).map(|i| q * thickness(k, i)).collect(),
                            rv: vec![0.0; BINS],
                            papillary: Vec::new(),
                        };
                    }
                    return SliceShape::Empty;
                }
                let epi: Vec<f64> = (0..BINS).map(|i| endo[k][i] + thickness(k, i)).collect();
                let rv: Vec<f64> = (0..BINS).map(|i| rv_scale * psi[i] * rv_depth[k]).collect();
                // Papillary muscles in the mid-ventricle (image only: the blood-pool label
                // includes them, as in UK Biobank's segmentations).
                let u = depth[k];
                let papillary = if (0.25..0.8).contains(&u) {
                    [0.35 * PI, 1.75 * PI]
                        .iter()
                        .map(|&a: &f64| {
                            let i = ((a / DTHETA) as usize) % BINS;
                            let d = 0.62 * endo[k][i];
                            (
                                d * a.cos(),
                                d * a.sin(),
                                self.papillary_size * g[k] * r / self.r_ed,
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                SliceShape::Ventricles {
                    endo: endo[k].clone(),
                    epi,
                    rv,
                    papillary,
                }
            })
            .collect()
    }
}

/// The positive root of `a x² + b x + c = 0` (0 when there is none).
fn solve_quadratic(a: f64, b: f64, c: f64) -> f64 {
    if a <= 0.0 {
        return if b > 0.0 { -c / b } else { 0.0 };
    }
    let disc = b * b - 4.0 * a * c;
    if disc <= 0.0 {
        return 0.0;
    }
    (-b + disc.sqrt()) / (2.0 * a)
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
    let rr_ms = 60_000.0 / s.heart_rate_bpm;
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

    let mut noise_rng = NoiseRng::from_stream(rng);
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

/// The static chest around the heart, one plane per slice (relative intensities).
struct Background {
    slices: Vec<Vec<f64>>,
}

impl Background {
    fn new(s: &HiddenState, cfg: &CmrConfig, heart: (f64, f64), rng: &mut SubjectRng) -> Self {
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

/// A short-axis orientation in RAS+ world coordinates with the voxel size folded in.
fn affine(cfg: &CmrConfig, rng: &mut SubjectRng) -> [[f64; 4]; 3] {
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
            let rel = |a: f64, b: f64| (a - b).abs() / b;
            assert_eq!(p.es_frame, cine.es_frame, "eid {eid}");
            assert!(
                rel(p.lvedv, s.lvedv) < 0.03,
                "LVEDV {} vs {}",
                p.lvedv,
                s.lvedv
            );
            assert!(
                rel(p.lvesv, s.lvesv) < 0.05,
                "LVESV {} vs {}",
                p.lvesv,
                s.lvesv
            );
            assert!(rel(p.lvm, s.lvm) < 0.06, "LVM {} vs {}", p.lvm, s.lvm);
            assert!(
                rel(p.rvedv, s.rvedv) < 0.04,
                "RVEDV {} vs {}",
                p.rvedv,
                s.rvedv
            );
            assert!(
                rel(p.rvesv, s.rvesv) < 0.06,
                "RVESV {} vs {}",
                p.rvesv,
                s.rvesv
            );
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
