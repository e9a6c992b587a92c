//! A generator of virtual subjects whose 12-lead ECG and short-axis cine CMR are driven by one
//! hidden cardiac state, written in UK Biobank layout: the built-in default data of the
//! workspace.
//!
//! A cohort folder holds `ecg/<eid>_20205_2_0.xml` (GE CardioSoft XML), `cmr/<eid>/sa.nii.gz`
//! and `cmr/<eid>/seg_sa.nii.gz` (NIfTI-1), `phenotypes.csv` (UK Biobank columns
//! `24100-2.0` …, measured from the segmentation exactly as the data layer measures them),
//! `diagnoses.csv` (ICD-10 codes), `hidden_state.csv` (the ground truth) and a `README.md`
//! describing the cohort. With `cmr_format = "dicom"` the cine is written instead as UK
//! Biobank ships it, `cmr/<eid>/<eid>_20209_2_0.zip` of DICOM files ([`dicom`]). Generation is deterministic for a seed, whatever the thread count,
//! and parallel over subjects.
//!
//! The ECG carries rate, rhythm, QRS width, axis and voltage strongly, and the anatomy through
//! effect sizes set in [`Couplings`] (QRS width and voltage with LV volume and mass, QTc and
//! T waves with EF, the axis with RV size; RV ejection fraction left uncoupled as a negative
//! control); the CMR carries the anatomy exactly. See [`state`] for the model and [`analysis`]
//! for the figures that show how learnable each target is.
//!
//! ```
//! use mmcl_synth::{Cohort, SynthConfig, WriteOptions};
//!
//! # fn main() -> mmcl_synth::Result<()> {
//! let mut config = SynthConfig { subjects: 2, seed: 7, ..SynthConfig::default() };
//! config.cmr.image_size = 48;
//! config.cmr.frames = 4;
//! let cohort = Cohort::new(config)?;
//!
//! // In memory: one subject, both modalities and its measured phenotypes.
//! let subject = cohort.subject(0)?;
//! assert_eq!(subject.ecg.strip.len(), 12);
//! assert_eq!(subject.cine.dims, [48, 48, 10, 4]);
//! assert!((subject.phenotypes.lvedv - subject.state.lvedv).abs() < 0.05 * subject.state.lvedv);
//!
//! // On disk, in UK Biobank layout.
//! let dir = std::env::temp_dir().join(format!("mmcl-synth-doc-{}", std::process::id()));
//! let summary = cohort.write(&dir, WriteOptions { overwrite: true }, &|| {})?;
//! assert!(dir.join("ecg/1000001_20205_2_0.xml").is_file());
//! assert!(dir.join("cmr/1000002/seg_sa.nii.gz").is_file());
//! assert_eq!(summary.records.len(), 2);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod analysis;
pub mod cardiosoft;
pub mod cmr;
pub mod cohort;
pub mod config;
pub mod couplings;
pub mod dicom;
pub mod ecg;
mod error;
pub mod io;
pub mod nifti;
pub mod readme;
pub mod rng;
pub mod state;
pub mod tables;

pub use cohort::{Cohort, CohortSummary, Subject, SubjectRecord, WriteOptions};
pub use config::{CmrConfig, CmrFormat, EcgConfig, Prevalences, SynthConfig};
pub use couplings::Couplings;
pub use error::{Error, Result};
