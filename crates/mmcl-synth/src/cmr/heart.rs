//! The heart's geometry in its polar frame: the volume curve over the cycle, the polar shape
//! tables of every slice, and their scales solved so that the volumes match the hidden state
//! (the methods of [`Heart`], whose fields `generate_cmr` draws).

use std::f64::consts::{PI, TAU};

use super::{Heart, SliceShape};

/// Angular bins of the polar shape tables.
pub(super) const BINS: usize = 512;
/// Width of an angular bin, radians.
pub(super) const DTHETA: f64 = TAU / BINS as f64;

/// The fraction `c(φ)` of the stroke volume in the LV at cycle phase `φ ∈ [0, 1)` (1 at
/// end-diastole, 0 at end-systole `phi_es`).
pub(super) fn volume_curve(phi: f64, phi_es: f64, atrial_kick: bool) -> f64 {
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

/// The angle of bin `i`, radians.
pub(super) fn bin_angle(i: usize) -> f64 {
    i as f64 * DTHETA
}

impl Heart {
    pub(super) fn slice_z(&self, k: usize) -> f64 {
        (k as f64 + 0.5) * self.dz
    }

    /// Cavity profile at relative depth `u` ∈ [0, 1): widest a little below the base.
    pub(super) fn profile(u: f64) -> f64 {
        if !(0.0..1.0).contains(&u) {
            return 0.0;
        }
        (1.0 - u * u).sqrt() * (1.0 - 0.15 * (1.0 - u).powi(3))
    }

    /// Territory mask m(θ) at relative depth u.
    pub(super) fn territory_mask(&self, theta: f64, u: f64) -> f64 {
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
    pub(super) fn shapes(&self, v_lv: f64, v_rv: f64, systole: f64) -> Vec<SliceShape> {
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
pub(super) fn solve_quadratic(a: f64, b: f64, c: f64) -> f64 {
    if a <= 0.0 {
        return if b > 0.0 { -c / b } else { 0.0 };
    }
    let disc = b * b - 4.0 * a * c;
    if disc <= 0.0 {
        return 0.0;
    }
    (-b + disc.sqrt()) / (2.0 * a)
}
