//! How strongly the ECG reflects the anatomy the CMR shows: the generator's effect sizes, as
//! settings.
//!
//! Each coupling is an established electrophysiological consequence of the anatomy, set
//! stronger and less noisy than in a real population so that a cohort of a few thousand
//! subjects carries enough shared information between the two modalities for contrastive
//! learning to find (UK Biobank's 40 000 pairs make up for weaker effects). The individual
//! noise beside each effect is a setting too: the signal-to-noise ratio is what decides
//! learnability. RV ejection fraction is kept free of every ECG effect by default: a
//! **negative control** that the CMR shows and the ECG cannot, on which every ECG encoder's
//! probe must stay near R² 0.
//!
//! | setting | effect | rationale |
//! |---|---|---|
//! | `qrs_ms_per_ml_lvedv` | QRS duration + k × (LVEDV − 145 mL) | a dilated LV lengthens the activation path (QRS widening in dilated cardiomyopathy) |
//! | `voltage_mass_exponent` | QRS voltage ∝ LVM^k | more myocardium, larger dipole (Sokolow–Lyon and Cornell voltage criteria of LVH) |
//! | `qtc_ms_per_ef_percent` | QTc + k × (60 − LVEF) over the whole range | repolarisation lengthens as systolic function falls (QT prolongation in heart failure) |
//! | `t_ratio_per_ef_percent` | T/QRS × (1 − k × (60 − LVEF)) | flattened T waves with reduced systolic function |
//! | `rotation_deg_per_rv_lv_ratio` | horizontal rotation + k × (RVEDV/LVEDV − 1.05) | a larger RV shifts the QRS forces anteriorly (earlier precordial transition in RV dilatation) |
//! | `cmr_heart_rate_correlation` | correlation of the rate during the CMR scan with the ECG's | the cine's rate (and so cardiac output) is measured in the scanner, at another moment; at 1 the ECG shows it exactly |
//! | `rvef_uncoupled` | RVEF independent of LVEF and AF | the negative control |

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::config::check_range;

/// The ECG–anatomy couplings of the synthetic cohort (see the [module](self) documentation).
///
/// ```
/// use mmcl_synth::Couplings;
/// let c = Couplings::default();
/// assert_eq!(c.negative_control(), Some("rvef"));
/// assert!(c.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Couplings {
    /// QRS prolongation per mL of LV end-diastolic volume (around 145 mL), ms/mL.
    pub qrs_ms_per_ml_lvedv: f64,
    /// Individual QRS-duration scatter (standard deviation), ms.
    pub qrs_noise_ms: f64,
    /// Exponent of LV mass (relative to 80 g) in the QRS voltage.
    pub voltage_mass_exponent: f64,
    /// Individual voltage factor (heart position, conductivity): standard deviation of its
    /// logarithm.
    pub voltage_noise: f64,
    /// QTc change per percentage point of LVEF below 60 % (negative above), ms.
    pub qtc_ms_per_ef_percent: f64,
    /// Individual QTc scatter (standard deviation), ms.
    pub qtc_noise_ms: f64,
    /// Relative T-wave flattening per percentage point of LVEF below 60 % (negative above).
    pub t_ratio_per_ef_percent: f64,
    /// Horizontal rotation of the QRS forces per unit of RVEDV/LVEDV above 1.05, degrees.
    pub rotation_deg_per_rv_lv_ratio: f64,
    /// Individual scatter of the horizontal rotation (standard deviation), degrees.
    pub rotation_noise_deg: f64,
    /// Correlation between the heart rate during the CMR scan and the resting ECG's, in
    /// [0, 1]: 1 makes cardiac output (stroke volume × the cine's rate) readable from the ECG's
    /// rate alone.
    pub cmr_heart_rate_correlation: f64,
    /// Draw RV ejection fraction independently of everything the ECG shows (the negative
    /// control); else it follows LVEF and drops in AF.
    pub rvef_uncoupled: bool,
}

impl Default for Couplings {
    fn default() -> Self {
        // The timing and shape effects are the strong ones: the reference's group-wise
        // z-scoring of the ECG removes most of the voltage effect before an encoder sees it,
        // and at the reproduction's 100 Hz one sample is 10 ms of QRS. With QRS 0.12 ms/mL
        // against 5 ms, QTc 1 ms per EF point against 10 ms and T flattening 1.2 % per point,
        // hand-made features of the encoders' input reached mean R² 0.28 and the contrastive
        // stage had too little to transfer (docs/reproduce.md).
        Self {
            qrs_ms_per_ml_lvedv: 0.25,
            qrs_noise_ms: 4.0,
            voltage_mass_exponent: 1.0,
            voltage_noise: 0.1,
            qtc_ms_per_ef_percent: 2.0,
            qtc_noise_ms: 8.0,
            t_ratio_per_ef_percent: 0.02,
            rotation_deg_per_rv_lv_ratio: 150.0,
            rotation_noise_deg: 4.0,
            cmr_heart_rate_correlation: 0.3,
            rvef_uncoupled: true,
        }
    }
}

impl Couplings {
    /// Couplings close to those of earlier versions of the generator (QRS 0.04 ms/mL against
    /// 7 ms of scatter, voltage ∝ LVM^0.6 with a 20 % individual factor, 0.3 ms of QTc per
    /// point of EF against 16 ms, 30° of rotation per unit RV/LV ratio against 12°, the CMR at
    /// the ECG's rate, RVEF following LVEF; those versions let EF act only below 60 %): a
    /// cohort in which the ECG shares little with the CMR, for comparison.
    pub fn weak() -> Self {
        Self {
            qrs_ms_per_ml_lvedv: 0.04,
            qrs_noise_ms: 7.0,
            voltage_mass_exponent: 0.6,
            voltage_noise: 0.2,
            qtc_ms_per_ef_percent: 0.3,
            qtc_noise_ms: 16.0,
            t_ratio_per_ef_percent: 0.012,
            rotation_deg_per_rv_lv_ratio: 30.0,
            rotation_noise_deg: 12.0,
            cmr_heart_rate_correlation: 1.0,
            rvef_uncoupled: false,
        }
    }

    /// The phenotype left without ECG coupling, if any (`rvef`).
    pub fn negative_control(&self) -> Option<&'static str> {
        self.rvef_uncoupled.then_some("rvef")
    }

    /// Checks every value against its meaningful range.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the setting.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, f64, f64, f64); 10] = [
            ("qrs_ms_per_ml_lvedv", self.qrs_ms_per_ml_lvedv, -1.0, 1.0),
            ("qrs_noise_ms", self.qrs_noise_ms, 0.0, 30.0),
            (
                "voltage_mass_exponent",
                self.voltage_mass_exponent,
                -3.0,
                3.0,
            ),
            ("voltage_noise", self.voltage_noise, 0.0, 1.0),
            (
                "qtc_ms_per_ef_percent",
                self.qtc_ms_per_ef_percent,
                -5.0,
                5.0,
            ),
            ("qtc_noise_ms", self.qtc_noise_ms, 0.0, 60.0),
            (
                "t_ratio_per_ef_percent",
                self.t_ratio_per_ef_percent,
                -0.03,
                0.03,
            ),
            (
                "rotation_deg_per_rv_lv_ratio",
                self.rotation_deg_per_rv_lv_ratio,
                -500.0,
                500.0,
            ),
            ("rotation_noise_deg", self.rotation_noise_deg, 0.0, 60.0),
            (
                "cmr_heart_rate_correlation",
                self.cmr_heart_rate_correlation,
                0.0,
                1.0,
            ),
        ];
        for (name, v, lo, hi) in checks {
            check_range(&format!("couplings.{name}"), v, lo..=hi, "")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Prevalences;
    use crate::rng::subject_stream;
    use crate::state::{HiddenState, PopulationModel};

    /// A quantity of the hidden state.
    type Feature = fn(&HiddenState) -> f64;

    fn states(couplings: &Couplings) -> Vec<HiddenState> {
        let model = PopulationModel::with_couplings(&Prevalences::default(), couplings);
        (0..4000)
            .map(|i| model.draw(i, &mut subject_stream(11, i, "state")))
            .collect()
    }

    fn corr(
        s: &[HiddenState],
        x: impl Fn(&HiddenState) -> f64,
        y: impl Fn(&HiddenState) -> f64,
    ) -> f64 {
        let n = s.len() as f64;
        let (mx, my) = (
            s.iter().map(&x).sum::<f64>() / n,
            s.iter().map(&y).sum::<f64>() / n,
        );
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for v in s {
            let (a, b) = (x(v) - mx, y(v) - my);
            sxy += a * b;
            sxx += a * a;
            syy += b * b;
        }
        sxy / (sxx * syy).sqrt()
    }

    #[test]
    fn the_settings_set_the_strength_of_each_coupling() {
        let strong = states(&Couplings::default());
        let weak = states(&Couplings::weak());
        let voltage = |s: &HiddenState| s.qrs_amplitude_mv;
        let lvm = |s: &HiddenState| s.lvm;
        assert!(corr(&strong, voltage, lvm) > corr(&weak, voltage, lvm) + 0.1);
        let rotation = |s: &HiddenState| s.horizontal_rotation_deg;
        let ratio = |s: &HiddenState| s.rvedv / s.lvedv;
        assert!(
            corr(&strong, rotation, ratio) > 0.7,
            "{}",
            corr(&strong, rotation, ratio)
        );
        assert!(corr(&weak, rotation, ratio) < 0.4);
        let qtc = |s: &HiddenState| s.qtc_ms;
        let lvef = |s: &HiddenState| s.lvef;
        assert!(
            corr(&strong, qtc, lvef) < -0.4,
            "{}",
            corr(&strong, qtc, lvef)
        );

        // The scanner's heart rate follows the ECG's only as far as the setting says.
        let hr = |s: &HiddenState| s.heart_rate_bpm;
        let cmr_hr = |s: &HiddenState| s.cmr_heart_rate_bpm;
        let r = corr(&strong, hr, cmr_hr);
        assert!((0.2..0.45).contains(&r), "{r}");
        assert!(corr(&weak, hr, cmr_hr) > 0.99);
    }

    #[test]
    fn the_negative_control_owes_nothing_to_what_the_ecg_shows() {
        let strong = states(&Couplings::default());
        let rvef = |s: &HiddenState| s.rvef;
        let ecg_side: [(&str, Feature); 6] = [
            ("lvef", |s| s.lvef),
            ("qrs", |s| s.qrs_ms),
            ("qtc", |s| s.qtc_ms),
            ("voltage", |s| s.qrs_amplitude_mv),
            ("rate", |s| s.heart_rate_bpm),
            ("af", |s| f64::from(u8::from(s.conditions.af))),
        ];
        for (name, f) in ecg_side {
            let r = corr(&strong, rvef, f);
            assert!(r.abs() < 0.05, "rvef vs {name}: {r}");
        }
        // Coupled, it follows LVEF: the control is what the setting makes it.
        assert!(corr(&states(&Couplings::weak()), rvef, |s| s.lvef) > 0.2);
        assert_eq!(Couplings::weak().negative_control(), None);
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let bad = Couplings {
            cmr_heart_rate_correlation: 1.5,
            ..Couplings::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("couplings.cmr_heart_rate_correlation"),
            "{err}"
        );
        let nan = Couplings {
            qrs_noise_ms: f64::NAN,
            ..Couplings::default()
        };
        assert!(nan.validate().is_err());
    }
}
