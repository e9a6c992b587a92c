//! What to generate: cohort size, seed, acquisition sizes and disease prevalences.

use std::ops::RangeInclusive;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::couplings::Couplings;
use crate::{Error, Result};

/// The whole description of a synthetic cohort. The same configuration (and crate version)
/// always produces the same files, whatever the number of threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Number of subjects.
    pub subjects: usize,
    /// Seed of the cohort; each subject draws from its own stream derived from it and its eid.
    pub seed: u64,
    /// The eid of the first subject; the others follow consecutively.
    pub first_eid: u64,
    /// The resting ECG.
    pub ecg: EcgConfig,
    /// The short-axis cine CMR.
    pub cmr: CmrConfig,
    /// Target prevalences of the conditions.
    pub prevalence: Prevalences,
    /// How strongly the ECG reflects the anatomy (effect sizes; the negative control).
    pub couplings: Couplings,
    /// How the short-axis cine is written: `nifti` (`sa.nii.gz`) or `dicom` (UK Biobank's
    /// `<eid>_20209_2_0.zip` of DICOM files); the segmentation is NIfTI either way.
    pub cmr_format: CmrFormat,
}

/// The file format of the short-axis cine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CmrFormat {
    /// `cmr/<eid>/sa.nii.gz`, NIfTI-1 (as converted UK Biobank data).
    #[default]
    Nifti,
    /// `cmr/<eid>/<eid>_20209_2_0.zip`: one DICOM series per slice, as UK Biobank ships field
    /// 20209 (see [`crate::dicom`]).
    Dicom,
}

impl CmrFormat {
    /// The configuration spelling: `nifti` or `dicom`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nifti => "nifti",
            Self::Dicom => "dicom",
        }
    }
}

impl std::str::FromStr for CmrFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nifti" => Ok(Self::Nifti),
            "dicom" => Ok(Self::Dicom),
            other => Err(Error::InvalidConfig(format!(
                "cmr_format must be nifti or dicom, got {other:?}"
            ))),
        }
    }
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            subjects: 1000,
            seed: 0,
            first_eid: 1_000_001,
            ecg: EcgConfig::default(),
            cmr: CmrConfig::default(),
            prevalence: Prevalences::default(),
            couplings: Couplings::default(),
            cmr_format: CmrFormat::Nifti,
        }
    }
}

/// Resting 12-lead ECG acquisition (UK Biobank field 20205: 10 s at 500 Hz).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EcgConfig {
    /// Sampling rate in Hz.
    pub sample_rate_hz: u32,
    /// Length of the rhythm strip in seconds.
    pub duration_s: f64,
    /// Length of the median beats in milliseconds.
    pub median_ms: u32,
    /// Mains frequency of the interference (50 Hz in the UK).
    pub mains_hz: f64,
}

impl Default for EcgConfig {
    fn default() -> Self {
        Self {
            sample_rate_hz: 500,
            duration_s: 10.0,
            median_ms: 1200,
            mains_hz: 50.0,
        }
    }
}

impl EcgConfig {
    /// Samples per lead of the rhythm strip.
    pub fn strip_samples(&self) -> usize {
        (self.duration_s * self.sample_rate_hz as f64).round() as usize
    }

    /// Samples per lead of the median beats.
    pub fn median_samples(&self) -> usize {
        (self.median_ms as u64 * self.sample_rate_hz as u64 / 1000) as usize
    }
}

/// Short-axis cine acquisition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CmrConfig {
    /// In-plane matrix size (square), pixels.
    pub image_size: usize,
    /// Short-axis slices, base to apex.
    pub slices: usize,
    /// Frames over one cardiac cycle (frame 0 is end-diastole).
    pub frames: usize,
    /// In-plane field of view in mm (pixel size = field of view / image size).
    pub fov_mm: f64,
    /// Extent of the slice stack along the long axis in mm (slice spacing = extent / slices).
    pub stack_mm: f64,
    /// gzip level of the NIfTI files, 0–9.
    pub compression: u32,
}

impl Default for CmrConfig {
    fn default() -> Self {
        Self {
            image_size: 128,
            slices: 10,
            frames: 25,
            fov_mm: 230.0,
            stack_mm: 100.0,
            compression: 1,
        }
    }
}

impl CmrConfig {
    /// In-plane pixel size in mm.
    pub fn pixel_mm(&self) -> f64 {
        self.fov_mm / self.image_size as f64
    }

    /// Slice spacing (= thickness: the stack is contiguous) in mm.
    pub fn slice_mm(&self) -> f64 {
        self.stack_mm / self.slices as f64
    }

    /// Voxels of one subject's cine (x · y · slices · frames).
    pub fn voxels(&self) -> usize {
        self.image_size * self.image_size * self.slices * self.frames
    }
}

/// Target prevalences (fractions) of the conditions. Each is reached on average through a
/// logistic risk model whose intercept is set from the target, so risk factors (age, sex, body
/// size, diabetes, hypertension) shift individual risks while the cohort prevalence stays close
/// to the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prevalences {
    /// Hypertension (I10), a risk factor of LV hypertrophy and atrial fibrillation.
    pub hypertension: f64,
    /// Diabetes mellitus (E10–E14).
    pub diabetes: f64,
    /// Coronary artery disease (I20–I25).
    pub cad: f64,
    /// Fraction of CAD patients with a prior myocardial infarction (scar: thinned akinetic
    /// segment, often pathological Q waves).
    pub prior_mi_given_cad: f64,
    /// Atrial fibrillation (I48).
    pub af: f64,
    /// Left ventricular hypertrophy (I51.7 / I11.9).
    pub lvh: f64,
}

impl Default for Prevalences {
    fn default() -> Self {
        // Enriched above UK Biobank's imaging cohort so that a few hundred subjects hold enough
        // cases to estimate an AUROC.
        Self {
            hypertension: 0.30,
            diabetes: 0.08,
            cad: 0.12,
            prior_mi_given_cad: 0.5,
            af: 0.07,
            lvh: 0.10,
        }
    }
}

impl SynthConfig {
    /// The reduced cohort for quick CPU reproductions: 1000 subjects with a 64-pixel cine of
    /// 8 slices × 8 frames over a 160 mm field of view (2.5 mm pixels, heart-filling). The
    /// hidden states and ECGs are those of the default cohort with the same seed.
    pub fn reproduce() -> Self {
        let mut cfg = Self::default();
        cfg.cmr.image_size = 64;
        cfg.cmr.slices = 8;
        cfg.cmr.frames = 8;
        cfg.cmr.fov_mm = 160.0;
        cfg
    }

    /// Reads a configuration from a JSON file; fields it does not name keep their defaults.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or the configuration is invalid.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = mmcl_core::config::read_config_text(path)?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| mmcl_core::Error::json(path, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value against its meaningful range.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first offending value.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        self.couplings.validate()?;
        if self.subjects == 0 {
            return bad("subjects must be at least 1".into());
        }
        let last = self.first_eid.checked_add(self.subjects as u64 - 1);
        if last.is_none_or(|e| e > 99_999_999) {
            return bad(format!(
                "eids {}.. for {} subjects exceed 8 digits",
                self.first_eid, self.subjects
            ));
        }
        let e = &self.ecg;
        check_range("ecg.sample_rate_hz", e.sample_rate_hz, 100..=2000, "")?;
        check_range("ecg.duration_s", e.duration_s, 4.0..=60.0, " s")?;
        check_range("ecg.median_ms", e.median_ms, 600..=2000, "")?;
        check_range("ecg.mains_hz", e.mains_hz, 40.0..=70.0, "")?;
        let c = &self.cmr;
        check_range("cmr.image_size", c.image_size, 16..=512, " pixels")?;
        check_range("cmr.slices", c.slices, 1..=40, "")?;
        check_range(
            "cmr.frames",
            c.frames,
            2..=100,
            " (end-diastole and end-systole at least)",
        )?;
        check_range(
            "cmr.fov_mm",
            c.fov_mm,
            140.0..=500.0,
            " mm (the heart must fit)",
        )?;
        check_range(
            "cmr.stack_mm",
            c.stack_mm,
            95.0..=200.0,
            " mm (base to apex must fit)",
        )?;
        if c.compression > 9 {
            return bad(format!(
                "cmr.compression must be a gzip level 0..=9, got {}",
                c.compression
            ));
        }
        let p = &self.prevalence;
        for (name, v) in [
            ("hypertension", p.hypertension),
            ("diabetes", p.diabetes),
            ("cad", p.cad),
            ("prior_mi_given_cad", p.prior_mi_given_cad),
            ("af", p.af),
            ("lvh", p.lvh),
        ] {
            check_range(&format!("prevalence.{name}"), v, 0.0..=0.9, "")?;
        }
        Ok(())
    }

    /// The eid of subject `index` (0-based).
    pub fn eid(&self, index: usize) -> u64 {
        self.first_eid + index as u64
    }
}

/// Checks that `value`, the configuration's `key`, lies in `range` (NaN never does); the error
/// names the key, the range followed by `note` (a unit, or why the range), and the value.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    note: &str,
) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{key} must be in {}..={}{note}, got {value}",
            range.start(),
            range.end()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_checked() {
        let cfg = SynthConfig::default();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.ecg.strip_samples(), 5000);
        assert_eq!(cfg.ecg.median_samples(), 600);
        let mut bad = cfg.clone();
        bad.cmr.frames = 1;
        assert!(matches!(bad.validate(), Err(Error::InvalidConfig(m)) if m.contains("frames")));
        let mut bad = cfg.clone();
        bad.prevalence.af = f64::NAN;
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.subjects = 0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn reproduce_preset_is_valid_and_small() {
        let cfg = SynthConfig::reproduce();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.cmr.pixel_mm(), 2.5);
        assert!(cfg.cmr.voxels() * 12 < SynthConfig::default().cmr.voxels());
        assert_eq!(cfg.ecg, EcgConfig::default());
    }

    #[test]
    fn partial_json_keeps_defaults_and_unknown_fields_are_errors() {
        let cfg: SynthConfig =
            serde_json::from_str(r#"{"subjects": 7, "cmr": {"image_size": 64}}"#).unwrap();
        assert_eq!(cfg.subjects, 7);
        assert_eq!(cfg.cmr.image_size, 64);
        assert_eq!(cfg.cmr.slices, CmrConfig::default().slices);
        assert!(serde_json::from_str::<SynthConfig>(r#"{"subjekts": 7}"#).is_err());
        assert_eq!(cfg.cmr_format, CmrFormat::Nifti);
        let cfg: SynthConfig = serde_json::from_str(r#"{"cmr_format": "dicom"}"#).unwrap();
        assert_eq!(cfg.cmr_format, CmrFormat::Dicom);
        assert!(serde_json::from_str::<SynthConfig>(r#"{"cmr_format": "dcm"}"#).is_err());
        assert_eq!("DICOM".parse::<CmrFormat>().unwrap(), CmrFormat::Dicom);
        assert!("png".parse::<CmrFormat>().is_err());
    }
}
