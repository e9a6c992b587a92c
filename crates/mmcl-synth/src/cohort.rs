//! Generating subjects and writing a whole cohort folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mmcl_data::phenotypes::{CardiacPhenotypes, measure_phenotypes};
use rayon::prelude::*;

use crate::cardiosoft::{ecg_file_name, write_cardiosoft_xml};
use crate::cmr::{Cine, generate_cmr};
use crate::config::{CmrFormat, SynthConfig};
use crate::dicom::{cmr_zip_name, write_cine_zip};
use crate::ecg::{Ecg, EcgMeasurements, generate_ecg};
use crate::nifti::{Volume, Voxels, write_nifti_gz};
use crate::rng::subject_stream;
use crate::state::{HiddenState, PopulationModel};
use crate::{Error, Result, readme, tables};

/// Name of the configuration file written into the cohort folder.
pub const CONFIG_JSON: &str = "synth_config.json";
/// Name of the cohort description.
pub const README_MD: &str = "README.md";

/// One generated subject, in memory.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The hidden state.
    pub state: HiddenState,
    /// The resting ECG.
    pub ecg: Ecg,
    /// The short-axis cine and segmentation.
    pub cine: Cine,
    /// The phenotypes measured from the segmentation (as written to `phenotypes.csv`).
    pub phenotypes: CardiacPhenotypes,
}

/// What the tables and the README need of a subject once its files are written.
#[derive(Debug, Clone)]
pub struct SubjectRecord {
    /// The hidden state.
    pub state: HiddenState,
    /// The phenotypes measured from the segmentation.
    pub phenotypes: CardiacPhenotypes,
    /// The heart rate of the ECG strip.
    pub ecg_heart_rate_bpm: f64,
    /// The ECG device measurements.
    pub ecg: EcgMeasurements,
}

/// A cohort: the configuration and the calibrated population model.
#[derive(Debug, Clone)]
pub struct Cohort {
    config: SynthConfig,
    model: PopulationModel,
}

/// How [`Cohort::write`] treats an existing output folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replace an existing non-empty output folder (only once the new cohort is complete).
    pub overwrite: bool,
}

/// The result of writing a cohort.
#[derive(Debug, Clone)]
pub struct CohortSummary {
    /// The folder written.
    pub out: PathBuf,
    /// One record per subject, in eid order.
    pub records: Vec<SubjectRecord>,
    /// Wall-clock seconds spent.
    pub seconds: f64,
}

impl Cohort {
    /// A cohort for `config`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a value is out of range.
    pub fn new(config: SynthConfig) -> Result<Self> {
        config.validate()?;
        let model = PopulationModel::with_couplings(&config.prevalence, &config.couplings);
        Ok(Self { config, model })
    }

    /// The configuration.
    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    /// The hidden state of subject `index` (0-based).
    pub fn hidden_state(&self, index: usize) -> HiddenState {
        let eid = self.config.eid(index);
        self.model
            .draw(eid, &mut subject_stream(self.config.seed, eid, "state"))
    }

    /// The resting ECG of a subject.
    pub fn ecg(&self, state: &HiddenState) -> Ecg {
        generate_ecg(
            state,
            &self.config.ecg,
            &mut subject_stream(self.config.seed, state.eid, "ecg"),
        )
    }

    /// The cine CMR and segmentation of a subject.
    pub fn cine(&self, state: &HiddenState) -> Cine {
        generate_cmr(
            state,
            &self.config.cmr,
            &mut subject_stream(self.config.seed, state.eid, "cmr"),
        )
    }

    /// Subject `index` with both modalities and its measured phenotypes.
    ///
    /// # Errors
    /// [`Error::Phenotypes`] if the segmentation cannot be measured (not expected).
    pub fn subject(&self, index: usize) -> Result<Subject> {
        let state = self.hidden_state(index);
        let ecg = self.ecg(&state);
        let cine = self.cine(&state);
        let phenotypes = measure_phenotypes(
            &cine.labels,
            cine.dims,
            cine.voxel_mm,
            Some(state.cmr_heart_rate_bpm),
        )
        .map_err(|source| Error::Phenotypes {
            eid: state.eid,
            source,
        })?;
        Ok(Subject {
            state,
            ecg,
            cine,
            phenotypes,
        })
    }

    /// Generates subject `index` and writes its ECG and CMR files under `dir`.
    fn write_subject(&self, dir: &Path, index: usize) -> Result<SubjectRecord> {
        let subject = self.subject(index)?;
        let eid = subject.state.eid;
        write_cardiosoft_xml(
            &dir.join("ecg").join(ecg_file_name(eid)),
            &subject.state,
            &subject.ecg,
        )?;
        let cmr_dir = dir.join("cmr").join(eid.to_string());
        std::fs::create_dir_all(&cmr_dir).map_err(|e| Error::io(&cmr_dir, e))?;
        let cine = &subject.cine;
        let level = self.config.cmr.compression;
        match self.config.cmr_format {
            CmrFormat::Nifti => write_nifti_gz(
                &cmr_dir.join("sa.nii.gz"),
                &Volume {
                    dims: cine.dims,
                    voxel_mm: cine.voxel_mm,
                    frame_ms: cine.frame_ms,
                    affine: &cine.affine,
                    voxels: Voxels::I16(&cine.image),
                    description: "mmcl-synth short-axis cine",
                },
                level,
            )?,
            CmrFormat::Dicom => {
                write_cine_zip(&cmr_dir.join(cmr_zip_name(eid)), cine, eid, level)?;
            }
        }
        write_nifti_gz(
            &cmr_dir.join("seg_sa.nii.gz"),
            &Volume {
                dims: cine.dims,
                voxel_mm: cine.voxel_mm,
                frame_ms: cine.frame_ms,
                affine: &cine.affine,
                voxels: Voxels::U8(&cine.labels),
                description: "mmcl-synth segmentation 1=LV 2=Myo 3=RV",
            },
            level,
        )?;
        Ok(SubjectRecord {
            ecg_heart_rate_bpm: subject.ecg.heart_rate_bpm,
            ecg: subject.ecg.measurements,
            state: subject.state,
            phenotypes: subject.phenotypes,
        })
    }

    /// Writes the whole cohort into `out`, in parallel over subjects on the current rayon
    /// pool, calling `progress` once per finished subject.
    ///
    /// The cohort is assembled in a hidden sibling folder and renamed to `out` only when
    /// complete, so `out` never holds a partial cohort; an existing non-empty `out` is an
    /// error unless `options.overwrite` is set.
    ///
    /// # Errors
    /// [`Error::OutputExists`], or the first error of any subject or table (naming the file).
    pub fn write(
        &self,
        out: &Path,
        options: WriteOptions,
        progress: &(dyn Fn() + Sync),
    ) -> Result<CohortSummary> {
        let start = Instant::now();
        let existing = match std::fs::read_dir(out) {
            Ok(mut entries) => Some(entries.next().is_some()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(out, e)),
        };
        if existing == Some(true) && !options.overwrite {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cohort".to_string());
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        let result = self.write_into(&staging, progress);
        let records = match result {
            Ok(records) => records,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // Swap the complete cohort into place.
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if existing.is_some() {
            std::fs::rename(out, &old).map_err(|e| {
                let _ = std::fs::remove_dir_all(&staging);
                Error::io(out, e)
            })?;
        }
        if let Err(e) = std::fs::rename(&staging, out) {
            if existing.is_some() {
                let _ = std::fs::rename(&old, out);
            }
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::io(out, e));
        }
        if existing.is_some() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(CohortSummary {
            out: out.to_path_buf(),
            records,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn write_into(&self, dir: &Path, progress: &(dyn Fn() + Sync)) -> Result<Vec<SubjectRecord>> {
        for sub in ["", "ecg", "cmr"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let records = (0..self.config.subjects)
            .into_par_iter()
            .map(|index| {
                let record = self.write_subject(dir, index);
                progress();
                record
            })
            .collect::<Result<Vec<SubjectRecord>>>()?;
        tables::write_phenotypes(dir, &records)?;
        tables::write_diagnoses(dir, &records)?;
        tables::write_hidden_state(dir, &records)?;
        let json = serde_json::to_string_pretty(&self.config).map_err(Error::Serialise)?;
        crate::io::write_file_atomic(&dir.join(CONFIG_JSON), |w| {
            use std::io::Write;
            w.write_all(json.as_bytes())?;
            w.write_all(b"\n")
        })?;
        let text = readme::cohort_readme(&self.config, &records);
        crate::io::write_file_atomic(&dir.join(README_MD), |w| {
            use std::io::Write;
            w.write_all(text.as_bytes())
        })?;
        Ok(records)
    }
}
