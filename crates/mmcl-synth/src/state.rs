//! The hidden cardiac state of a virtual subject, and the population model it is drawn from.
//!
//! One state drives both modalities. The CMR shows the anatomy directly (volumes, ejection
//! fraction, mass, regional wall motion). The ECG shows the electrical side strongly (rate and
//! rhythm, QRS width, axis, voltage) and the anatomy through the effect sizes of
//! [`Couplings`]: QRS voltage follows LV mass (blurred by chest-wall attenuation and an
//! individual factor), QRS width LV volume, QTc and T waves EF, the horizontal axis RV size;
//! infarcts leave Q waves in some subjects. RV ejection fraction stays invisible to the ECG
//! (the negative control), and the CMR is acquired at its own heart rate.

use serde::{Deserialize, Serialize};

use crate::config::Prevalences;
use crate::couplings::Couplings;
use crate::rng::{SubjectRng, bernoulli, normal, uniform};

/// Coronary territory of an ischaemic or infarcted LV segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Territory {
    /// Left anterior descending artery: anterior and anteroseptal wall, mid to apex.
    Anterior,
    /// Right coronary artery: inferior (and inferoseptal) wall, base to mid.
    Inferior,
    /// Left circumflex artery: lateral wall, base to mid.
    Lateral,
}

impl Territory {
    /// Lower-case name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anterior => "anterior",
            Self::Inferior => "inferior",
            Self::Lateral => "lateral",
        }
    }
}

/// The conditions of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Conditions {
    /// Hypertension.
    pub hypertension: bool,
    /// Diabetes mellitus.
    pub diabetes: bool,
    /// Type 1 (else type 2) when diabetic.
    pub diabetes_type1: bool,
    /// Coronary artery disease.
    pub cad: bool,
    /// A prior myocardial infarction (CAD patients only).
    pub prior_mi: bool,
    /// The territory of the hypokinetic segment, when there is one.
    pub territory: Option<Territory>,
    /// Atrial fibrillation (present during the ECG and the CMR).
    pub af: bool,
    /// LV hypertrophy.
    pub lvh: bool,
}

/// The hidden state of one subject: the ground truth both modalities are generated from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiddenState {
    /// UK Biobank-style participant id.
    pub eid: u64,
    /// Age at the imaging visit, years.
    pub age: f64,
    /// Male (else female).
    pub male: bool,
    /// Height, cm.
    pub height_cm: f64,
    /// Weight, kg.
    pub weight_kg: f64,
    /// Body-mass index, kg/m².
    pub bmi: f64,
    /// Body-surface area (Mosteller), m².
    pub bsa: f64,
    /// Conditions.
    pub conditions: Conditions,
    /// LV end-diastolic volume, mL.
    pub lvedv: f64,
    /// LV end-systolic volume, mL.
    pub lvesv: f64,
    /// LV ejection fraction, %.
    pub lvef: f64,
    /// LV myocardial mass, g.
    pub lvm: f64,
    /// RV end-diastolic volume, mL.
    pub rvedv: f64,
    /// RV end-systolic volume, mL.
    pub rvesv: f64,
    /// RV ejection fraction, %.
    pub rvef: f64,
    /// Severity of regional hypokinesis in the territory, 0 (none) to 1 (akinetic).
    pub hypokinesis: f64,
    /// Relative wall thickness left in the territory (1 = not thinned; scars are thinner).
    pub territory_wall: f64,
    /// Mean heart rate at rest, beats per minute (the intrinsic rate of the ECG; the recorded
    /// rate of the strip is in the ECG).
    pub heart_rate_bpm: f64,
    /// Heart rate during the CMR scan, beats per minute: the cine's cycle and the cardiac
    /// output's rate (related to the resting rate by `Couplings::cmr_heart_rate_correlation`).
    pub cmr_heart_rate_bpm: f64,
    /// Beat-to-beat variability of the RR interval (standard deviation / mean).
    pub rr_variability: f64,
    /// PR interval (P onset to QRS onset), ms; sinus rhythm only.
    pub pr_ms: f64,
    /// P-wave duration, ms.
    pub p_ms: f64,
    /// QRS duration, ms.
    pub qrs_ms: f64,
    /// Heart-rate-corrected QT (Bazett), ms.
    pub qtc_ms: f64,
    /// Frontal-plane direction of the main QRS force, degrees (0 = lead I, +90 = aVF).
    pub frontal_axis_deg: f64,
    /// Rotation of the QRS forces in the horizontal plane, degrees (positive = anterior shift,
    /// an earlier precordial transition).
    pub horizontal_rotation_deg: f64,
    /// Magnitude of the main QRS dipole, mV.
    pub qrs_amplitude_mv: f64,
    /// Magnitude of the T-wave dipole relative to the QRS dipole.
    pub t_ratio: f64,
    /// Pathological Q waves in the leads facing the infarct.
    pub q_waves: bool,
    /// T-wave inversion in the leads facing the ischaemic territory.
    pub ischaemic_t_inversion: bool,
    /// LVH strain pattern (ST depression and inverted T waves in the lateral leads).
    pub strain: bool,
}

/// The population model: calibrated risk models of the conditions.
#[derive(Debug, Clone)]
pub struct PopulationModel {
    prevalence: Prevalences,
    couplings: Couplings,
    intercepts: Intercepts,
}

#[derive(Debug, Clone, Copy, Default)]
struct Intercepts {
    hypertension: f64,
    diabetes: f64,
    cad: f64,
    lvh: f64,
    af: f64,
}

/// Demographics before the conditions are drawn.
#[derive(Debug, Clone, Copy)]
struct Demographics {
    age: f64,
    male: bool,
    height_cm: f64,
    bmi: f64,
}

fn draw_demographics(rng: &mut SubjectRng) -> Demographics {
    // UK Biobank imaging visit: ages 45-82, mean about 64.
    let age = (64.0 + 8.0 * normal(rng)).clamp(45.0, 82.0);
    let male = bernoulli(rng, 0.48);
    let height_cm = if male {
        176.0 + 7.0 * normal(rng)
    } else {
        163.0 + 6.5 * normal(rng)
    }
    .clamp(140.0, 205.0);
    let bmi = (26.5 * (0.15 * normal(rng)).exp()).clamp(17.0, 50.0);
    Demographics {
        age,
        male,
        height_cm,
        bmi,
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn b(x: bool) -> f64 {
    if x { 1.0 } else { 0.0 }
}

/// Centred covariates of the risk models.
fn covariates(d: &Demographics) -> (f64, f64, f64) {
    (
        (d.age - 64.0) / 10.0,
        (d.bmi - 26.5) / 4.5,
        b(d.male) - 0.48,
    )
}

fn lp_hypertension(d: &Demographics) -> f64 {
    let (a, m, s) = covariates(d);
    0.8 * a + 0.6 * m + 0.2 * s
}

fn lp_diabetes(d: &Demographics, htn: bool) -> f64 {
    let (a, m, s) = covariates(d);
    0.4 * a + 0.9 * m + 0.4 * s + 0.4 * b(htn)
}

fn lp_cad(d: &Demographics, htn: bool, dm: bool) -> f64 {
    let (a, m, s) = covariates(d);
    0.9 * a + 0.15 * m + 0.9 * s + 0.5 * b(htn) + 0.7 * b(dm)
}

fn lp_lvh(d: &Demographics, htn: bool, dm: bool) -> f64 {
    let (a, m, s) = covariates(d);
    0.5 * a + 0.3 * m + 0.2 * s + 1.2 * b(htn) + 0.3 * b(dm)
}

fn lp_af(d: &Demographics, htn: bool, cad: bool, lvh: bool) -> f64 {
    let (a, m, s) = covariates(d);
    1.0 * a + 0.3 * m + 0.5 * s + 0.5 * b(htn) + 0.4 * b(cad) + 0.7 * b(lvh)
}

/// The intercept that makes the mean of `sigmoid(intercept + lp)` over `lps` equal `target`.
fn calibrate(lps: &[f64], target: f64) -> f64 {
    if target <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let mean = |c: f64| lps.iter().map(|&x| sigmoid(c + x)).sum::<f64>() / lps.len() as f64;
    let (mut lo, mut hi) = (-30.0, 30.0);
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if mean(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Calibrates the intercept of the linear predictors `lps` to `target` (see [`calibrate`]) and
/// draws the reference population's indicators with column `column` of `uniforms`: the
/// indicators are the covariates of the models calibrated after it.
fn calibrate_and_draw(
    lps: &[f64],
    target: f64,
    uniforms: &[[f64; 4]],
    column: usize,
) -> (f64, Vec<bool>) {
    let intercept = calibrate(lps, target);
    let drawn = lps
        .iter()
        .zip(uniforms)
        .map(|(lp, u)| u[column] < sigmoid(intercept + lp))
        .collect();
    (intercept, drawn)
}

impl PopulationModel {
    /// Calibrates the risk models so that the expected prevalences equal `prevalence`.
    ///
    /// The calibration uses a fixed reference population (independent of the cohort seed), so
    /// it is deterministic and the same for every cohort with these prevalences. The ECG's
    /// couplings to the anatomy are the defaults ([`PopulationModel::with_couplings`]).
    pub fn new(prevalence: &Prevalences) -> Self {
        Self::with_couplings(prevalence, &Couplings::default())
    }

    /// [`PopulationModel::new`] with the ECG–anatomy effect sizes of `couplings`.
    pub fn with_couplings(prevalence: &Prevalences, couplings: &Couplings) -> Self {
        const REFERENCE: usize = 20_000;
        let mut rng = crate::rng::subject_stream(0x5EED, 0, "population-calibration");
        let demo: Vec<Demographics> = (0..REFERENCE)
            .map(|_| draw_demographics(&mut rng))
            .collect();
        let uniforms: Vec<[f64; 4]> = (0..REFERENCE)
            .map(|_| std::array::from_fn(|_| uniform(&mut rng, 0.0, 1.0)))
            .collect();
        let lps: Vec<f64> = demo.iter().map(lp_hypertension).collect();
        let (hypertension_intercept, htn) =
            calibrate_and_draw(&lps, prevalence.hypertension, &uniforms, 0);
        let lps: Vec<f64> = demo
            .iter()
            .zip(&htn)
            .map(|(d, &h)| lp_diabetes(d, h))
            .collect();
        let (diabetes_intercept, dm) = calibrate_and_draw(&lps, prevalence.diabetes, &uniforms, 1);
        let lps: Vec<f64> = (0..REFERENCE)
            .map(|i| lp_cad(&demo[i], htn[i], dm[i]))
            .collect();
        let (cad_intercept, cad) = calibrate_and_draw(&lps, prevalence.cad, &uniforms, 2);
        let lps: Vec<f64> = (0..REFERENCE)
            .map(|i| lp_lvh(&demo[i], htn[i], dm[i]))
            .collect();
        let (lvh_intercept, lvh) = calibrate_and_draw(&lps, prevalence.lvh, &uniforms, 3);
        let lps: Vec<f64> = (0..REFERENCE)
            .map(|i| lp_af(&demo[i], htn[i], cad[i], lvh[i]))
            .collect();
        let intercepts = Intercepts {
            hypertension: hypertension_intercept,
            diabetes: diabetes_intercept,
            cad: cad_intercept,
            lvh: lvh_intercept,
            af: calibrate(&lps, prevalence.af),
        };
        Self {
            prevalence: prevalence.clone(),
            couplings: couplings.clone(),
            intercepts,
        }
    }

    /// Draws the hidden state of subject `eid` from its `"state"` stream.
    pub fn draw(&self, eid: u64, rng: &mut SubjectRng) -> HiddenState {
        let d = draw_demographics(rng);
        let ic = &self.intercepts;
        let hypertension = bernoulli(rng, sigmoid(ic.hypertension + lp_hypertension(&d)));
        let diabetes = bernoulli(rng, sigmoid(ic.diabetes + lp_diabetes(&d, hypertension)));
        let cad = bernoulli(rng, sigmoid(ic.cad + lp_cad(&d, hypertension, diabetes)));
        let lvh = bernoulli(rng, sigmoid(ic.lvh + lp_lvh(&d, hypertension, diabetes)));
        let af = bernoulli(rng, sigmoid(ic.af + lp_af(&d, hypertension, cad, lvh)));
        let diabetes_type1 = diabetes && bernoulli(rng, 0.1);
        let prior_mi = cad && bernoulli(rng, self.prevalence.prior_mi_given_cad);
        // Stable CAD shows inducible ischaemia as a mild hypokinesis in some patients.
        let ischaemic_segment = cad && !prior_mi && bernoulli(rng, 0.4);
        let territory = (prior_mi || ischaemic_segment).then(|| {
            let u = uniform(rng, 0.0, 1.0);
            if u < 0.45 {
                Territory::Anterior
            } else if u < 0.8 {
                Territory::Inferior
            } else {
                Territory::Lateral
            }
        });
        let conditions = Conditions {
            hypertension,
            diabetes,
            diabetes_type1,
            cad,
            prior_mi,
            territory,
            af,
            lvh,
        };

        let weight_kg = d.bmi * (d.height_cm / 100.0).powi(2);
        let bsa = (d.height_cm * weight_kg / 3600.0).sqrt();
        let age_c = (d.age - 64.0) / 10.0;

        // Anatomy (what the CMR shows), centred on UK Biobank's reference ranges (Petersen et
        // al. 2017: LVEDV 82/71 mL/m², LV mass 47/39 g/m², EF 59/62 % in men/women).
        let z_size = normal(rng);
        let z_mass = normal(rng);
        let z_ef = normal(rng);
        let z_rv = normal(rng);
        let z_rvef = normal(rng);
        let mut edv_index =
            if d.male { 82.0 } else { 71.0 } * (0.13 * z_size).exp() * (1.0 - 0.04 * age_c);
        if prior_mi {
            edv_index *= 1.0 + uniform(rng, 0.05, 0.3); // remodelling after infarction
        } else if cad {
            edv_index *= 1.0 + uniform(rng, 0.0, 0.08);
        }
        if af {
            edv_index *= 1.05;
        }
        if lvh {
            edv_index *= 0.96;
        }
        let lvedv = edv_index * bsa;
        let mut lvef = 59.0 + if d.male { 0.0 } else { 3.0 } + 0.8 * age_c + 5.0 * z_ef;
        let (hypokinesis, territory_wall) = if prior_mi {
            lvef -= uniform(rng, 8.0, 22.0);
            (uniform(rng, 0.65, 1.0), uniform(rng, 0.45, 0.7))
        } else if ischaemic_segment {
            lvef -= uniform(rng, 2.0, 7.0);
            (uniform(rng, 0.3, 0.6), 1.0)
        } else {
            if cad {
                lvef -= uniform(rng, 0.0, 3.0);
            }
            (0.0, 1.0)
        };
        if af {
            lvef -= 3.0;
        }
        if lvh {
            lvef += 1.5;
        }
        if diabetes {
            lvef -= 1.0;
        }
        let lvef = lvef.clamp(18.0, 80.0);
        let lvesv = lvedv * (1.0 - lvef / 100.0);
        let mut lvm_index = if d.male { 47.0 } else { 39.0 }
            * (0.12 * z_mass + 0.05 * z_size).exp()
            * (1.0 + 0.04 * age_c);
        if lvh {
            lvm_index *= uniform(rng, 1.25, 1.6);
        }
        if hypertension {
            lvm_index *= 1.06;
        }
        if diabetes {
            lvm_index *= 1.04;
        }
        let lvm = lvm_index * bsa;
        let rvedv = lvedv * if d.male { 1.10 } else { 1.06 } * (0.08 * z_rv).exp();
        let k = &self.couplings;
        let mut rvef = 57.0 + 4.0 * z_rvef;
        if !k.rvef_uncoupled {
            rvef += 0.3 * (lvef - 60.0);
            if af {
                rvef -= 3.0;
            }
        }
        let rvef = rvef.clamp(25.0, 80.0);
        let rvesv = rvedv * (1.0 - rvef / 100.0);

        // Electrophysiology (what the ECG shows).
        let ef_deficit = (60.0 - lvef).max(0.0);
        let heart_rate_bpm = if af {
            (84.0 + 14.0 * normal(rng)).clamp(50.0, 150.0)
        } else {
            (67.0 - 1.5 * age_c
                + 0.3 * (d.bmi - 26.5)
                + 4.0 * b(diabetes)
                + 0.25 * ef_deficit
                + 9.0 * normal(rng))
            .clamp(42.0, 120.0)
        };
        let rr_variability = if af {
            0.17 * (0.25 * normal(rng)).exp()
        } else {
            (0.035 * (0.4 * normal(rng)).exp() * (1.0 - 0.12 * age_c)).max(0.005)
        };
        let pr_ms = (158.0 + 6.0 * age_c + 18.0 * normal(rng)).clamp(110.0, 260.0);
        let p_ms = (100.0 + 10.0 * normal(rng)).clamp(70.0, 130.0);
        let qrs_ms = (88.0
            + 6.0 * b(d.male)
            + 10.0 * b(lvh)
            + 4.0 * b(cad)
            + 0.2 * ef_deficit
            + k.qrs_ms_per_ml_lvedv * (lvedv - 145.0)
            + k.qrs_noise_ms * normal(rng))
        .clamp(68.0, 160.0);
        let qtc_ms = (412.0
            + 10.0 * b(!d.male)
            + 8.0 * b(lvh)
            + 6.0 * b(cad)
            + k.qtc_ms_per_ef_percent * (60.0 - lvef)
            + k.qtc_noise_ms * normal(rng))
        .clamp(360.0, 500.0);
        let frontal_axis_deg = (45.0 - 6.0 * age_c - 0.9 * (d.bmi - 26.5) - 18.0 * b(lvh)
            + 24.0 * normal(rng))
        .clamp(-75.0, 120.0);
        // A larger right ventricle shifts the QRS forces anteriorly.
        let horizontal_rotation_deg = (k.rotation_deg_per_rv_lv_ratio * (rvedv / lvedv - 1.05)
            + k.rotation_noise_deg * normal(rng))
        .clamp(-40.0, 40.0);
        // QRS voltage: LV mass, blood-volume (Brody) effect, chest-wall attenuation, an
        // individual factor (heart position, conductivity) that blurs the rest.
        let qrs_amplitude_mv = 1.55
            * (lvm / 80.0).powf(k.voltage_mass_exponent)
            * (lvedv / 145.0).powf(0.15)
            * (d.bmi / 26.5).powf(-0.5)
            * (-0.05 * age_c + k.voltage_noise * normal(rng)).exp();
        let t_ratio =
            (0.3 * (1.0 - k.t_ratio_per_ef_percent * (60.0 - lvef)) * (0.2 * normal(rng)).exp())
                .max(0.05);
        let q_waves = prior_mi && bernoulli(rng, 0.7);
        let ischaemic_t_inversion = cad && bernoulli(rng, 0.35);
        let strain = lvh && bernoulli(rng, 0.6);
        // The scanner's rate: the resting rate's deviation, shrunk by the correlation, plus an
        // independent part of the same spread (in AF, the rate stays irregular and high).
        let rho = k.cmr_heart_rate_correlation;
        let mean_rate = if af { 84.0 } else { 67.0 };
        let cmr_heart_rate_bpm = (mean_rate
            + rho * (heart_rate_bpm - mean_rate)
            + (1.0 - rho * rho).sqrt() * 9.0 * normal(rng))
        .clamp(40.0, 150.0);

        HiddenState {
            eid,
            age: d.age,
            male: d.male,
            height_cm: d.height_cm,
            weight_kg,
            bmi: d.bmi,
            bsa,
            conditions,
            lvedv,
            lvesv,
            lvef,
            lvm,
            rvedv,
            rvesv,
            rvef,
            hypokinesis,
            territory_wall,
            heart_rate_bpm,
            cmr_heart_rate_bpm,
            rr_variability,
            pr_ms,
            p_ms,
            qrs_ms,
            qtc_ms,
            frontal_axis_deg,
            horizontal_rotation_deg,
            qrs_amplitude_mv,
            t_ratio,
            q_waves,
            ischaemic_t_inversion,
            strain,
        }
    }
}

impl HiddenState {
    /// ICD-10 codes of the subject's conditions (dotted WHO form, e.g. `I25.1`).
    pub fn icd10_codes(&self) -> Vec<&'static str> {
        let c = &self.conditions;
        let mut codes = Vec::new();
        if c.hypertension {
            codes.push("I10");
        }
        if c.diabetes {
            codes.push(if c.diabetes_type1 { "E10.9" } else { "E11.9" });
        }
        if c.cad {
            if c.prior_mi {
                codes.push("I25.2"); // old myocardial infarction
            }
            codes.push("I25.1");
            if !c.prior_mi && c.territory.is_some() {
                codes.push("I20.8"); // angina with inducible ischaemia
            }
        }
        if c.af {
            codes.push("I48.9");
        }
        if c.lvh {
            codes.push(if c.hypertension { "I11.9" } else { "I51.7" });
        }
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::subject_stream;

    #[test]
    fn prevalences_match_targets_and_effects_point_the_right_way() {
        let prevalence = Prevalences::default();
        let model = PopulationModel::new(&prevalence);
        let n = 6000;
        let states: Vec<HiddenState> = (0..n)
            .map(|i| model.draw(i as u64, &mut subject_stream(3, i as u64, "state")))
            .collect();
        let frac = |f: &dyn Fn(&HiddenState) -> bool| {
            states.iter().filter(|s| f(s)).count() as f64 / n as f64
        };
        for (name, got, want) in [
            ("cad", frac(&|s| s.conditions.cad), prevalence.cad),
            ("af", frac(&|s| s.conditions.af), prevalence.af),
            ("lvh", frac(&|s| s.conditions.lvh), prevalence.lvh),
            ("dm", frac(&|s| s.conditions.diabetes), prevalence.diabetes),
        ] {
            assert!((got - want).abs() < 0.02, "{name}: {got} vs {want}");
        }
        let mean = |f: &dyn Fn(&HiddenState) -> bool, g: &dyn Fn(&HiddenState) -> f64| {
            let v: Vec<f64> = states.iter().filter(|s| f(s)).map(g).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(
            mean(&|s| s.conditions.prior_mi, &|s| s.lvef) + 8.0
                < mean(&|s| !s.conditions.cad, &|s| s.lvef)
        );
        assert!(
            mean(&|s| s.conditions.lvh, &|s| s.lvm)
                > 1.2 * mean(&|s| !s.conditions.lvh, &|s| s.lvm)
        );
        assert!(mean(&|s| s.conditions.af, &|s| s.rr_variability) > 0.12);
        let lvedv = mean(&|s| s.male, &|s| s.lvedv);
        assert!((120.0..190.0).contains(&lvedv), "male LVEDV {lvedv}");
        for s in &states {
            assert!(
                s.lvesv < s.lvedv && s.rvesv < s.rvedv && s.lvm > 25.0,
                "{s:?}"
            );
        }
    }

    #[test]
    fn icd10_codes_follow_conditions() {
        let model = PopulationModel::new(&Prevalences::default());
        let mut s = model.draw(1, &mut subject_stream(0, 1, "state"));
        s.conditions = Conditions {
            cad: true,
            prior_mi: true,
            af: true,
            ..Conditions::default()
        };
        assert_eq!(s.icd10_codes(), vec!["I25.2", "I25.1", "I48.9"]);
    }
}
