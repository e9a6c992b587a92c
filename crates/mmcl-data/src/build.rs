//! Building a dataset cache from a UK-Biobank-style folder.
//!
//! ```text
//! root/
//!   ecg/<eid>_20205_2_0.xml        resting ECG (CardioSoft XML; GE MUSE and HL7 aECG .xml,
//!                                  WFDB .hea, DICOM waveform .dcm and .npy work too, named
//!                                  <eid>….xml / .hea / .dcm / .npy)
//!   cmr/<eid>/sa.nii.gz            short-axis cine
//!   cmr/<eid>/<eid>_20209_2_0.zip  or UK Biobank's DICOM zip of it (field 20209), read when
//!                                  there is no sa.nii.gz (see `cmr::dicom`)
//!   cmr/<eid>/seg_sa.nii.gz        its segmentation (optional)
//!   phenotypes.csv                 eid + UK Biobank columns (see `tables`)
//!   diagnoses.csv                  eid,icd10 (see `tables`)
//! ```
//!
//! Subjects are joined by `eid`; those lacking a required modality are listed in the report.
//! Each subject's ECG is preprocessed (the reference pipeline) and its CMR turned into the
//! configured image; missing phenotypes are measured from the segmentation when asked. Splits
//! are assigned by `eid` before any file is read, so skipping a bad file never moves another
//! subject to another split.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheIndex, CacheWriter, EcgLayout, ImageLayout, SubjectMeta};
use crate::cmr::{self, CmrConfig};
use crate::ecg::preprocess::{PreprocessConfig, preprocess};
use crate::ecg::{self, EcgFormat, NUM_LEADS};
use crate::phenotypes::PHENOTYPE_FIELDS;
use crate::tables::{self, DiseaseDefinition, Eid, JoinReport, Split, SplitConfig, disease_labels};
use crate::{Error, Result};

/// The configuration of `mmcl build-dataset` (JSON or TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildConfig {
    /// The UK-Biobank-style folder.
    pub root: PathBuf,
    /// The cache directory to write.
    pub output: PathBuf,
    /// ECG folder, relative to `root`; `None` for a CMR-only cache.
    pub ecg_dir: Option<PathBuf>,
    /// CMR folder (one sub-folder per eid), relative to `root`; `None` for an ECG-only cache.
    pub cmr_dir: Option<PathBuf>,
    /// Phenotypes CSV, relative to `root` (skipped with a note when absent).
    pub phenotypes: Option<PathBuf>,
    /// Diagnoses CSV, relative to `root` (skipped with a note when absent).
    pub diagnoses: Option<PathBuf>,
    /// ECG preprocessing.
    pub ecg: PreprocessConfig,
    /// Samples kept per ECG (from the start, after resampling).
    pub ecg_samples: usize,
    /// Leads kept, by name, in the order given; `None` keeps all 12. Chosen after the
    /// preprocessing, so that the reference's group-wise normalisation still sees every lead.
    /// III, aVR, aVL and aVF are linear combinations of I and II (Einthoven, Goldberger), so
    /// `["I", "II", "V1", …, "V6"]` keeps what a recording holds in two thirds of the tokens.
    pub ecg_leads: Option<Vec<String>>,
    /// Sampling rate assumed for `.npy` ECGs.
    pub npy_sample_rate: f64,
    /// CMR image construction.
    pub cmr: CmrConfig,
    /// Disease labels.
    pub diseases: Vec<DiseaseDefinition>,
    /// A subject missing from the diagnoses table has no disease (else its labels are unknown).
    pub absent_diagnosis_is_negative: bool,
    /// Train/val/test split.
    pub split: SplitConfig,
    /// Keep only subjects that have both an ECG and a CMR (the contrastive stage needs pairs);
    /// when false, the cache holds the ECG of every subject and the CMRs only supply
    /// phenotypes.
    pub require_pairs: bool,
    /// Fill phenotypes missing from the table by measuring the segmentation.
    pub phenotypes_from_segmentation: bool,
    /// Subjects per shard.
    pub shard_size: usize,
    /// Skip (and report) subjects whose files are bad instead of stopping.
    pub skip_bad: bool,
    /// Replace an existing cache.
    pub overwrite: bool,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("."),
            output: PathBuf::from("cache"),
            ecg_dir: Some(PathBuf::from("ecg")),
            cmr_dir: Some(PathBuf::from("cmr")),
            phenotypes: Some(PathBuf::from("phenotypes.csv")),
            diagnoses: Some(PathBuf::from("diagnoses.csv")),
            ecg: PreprocessConfig::default(),
            ecg_samples: 5000,
            ecg_leads: None,
            npy_sample_rate: 500.0,
            cmr: CmrConfig::default(),
            diseases: DiseaseDefinition::defaults(),
            absent_diagnosis_is_negative: true,
            split: SplitConfig::default(),
            require_pairs: true,
            phenotypes_from_segmentation: true,
            shard_size: 64,
            skip_bad: false,
            overwrite: false,
        }
    }
}

impl BuildConfig {
    /// Reads a `.json` or `.toml` configuration; relative `root` and `output` are taken
    /// relative to the configuration file's folder.
    ///
    /// # Errors
    /// Unreadable file, unknown extension, parse errors (naming the file).
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut cfg: BuildConfig = mmcl_core::config::read_config_file(path)?;
        // Sizes that become allocations per subject are bounded before any file is read.
        let limits = [
            (
                format!("ecg_samples {}", cfg.ecg_samples),
                "ECG values per subject",
                (cfg.ecg_samples as u64).checked_mul(NUM_LEADS as u64),
            ),
            (
                format!(
                    "cmr.size {} with {} cmr.channels",
                    cfg.cmr.size,
                    cfg.cmr.channels.len()
                ),
                "image values per subject",
                mmcl_core::config::checked_product(&[
                    cfg.cmr.size as u64,
                    cfg.cmr.size as u64,
                    cfg.cmr.channels.len() as u64,
                ]),
            ),
        ];
        for (keys, quantity, value) in limits {
            mmcl_core::config::check_limit(
                &keys,
                quantity,
                value,
                mmcl_core::config::MAX_ACTIVATIONS,
            )
            .map_err(|reason| Error::format(path, reason))?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        mmcl_core::config::rebase_path(&mut cfg.root, base);
        mmcl_core::config::rebase_path(&mut cfg.output, base);
        Ok(cfg)
    }
}

/// A file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// The subject.
    pub eid: Eid,
    /// The error, naming the file.
    pub error: String,
}

/// What a build did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BuildReport {
    /// Subjects written, per split.
    pub written: BTreeMap<String, usize>,
    /// Who lacks which modality.
    pub join: JoinReport,
    /// Subjects skipped for bad files.
    pub skipped: Vec<SkippedFile>,
    /// ECG files ignored because the subject already had one.
    pub duplicate_ecgs: Vec<PathBuf>,
    /// Phenotype values measured from segmentations to fill gaps in the table.
    pub phenotypes_measured: usize,
    /// Per disease label, over the subjects written: positives, negatives, unknown (so a label
    /// silently lost to a broken table shows as zero positives).
    #[serde(default)]
    pub labels: Vec<LabelCounts>,
    /// Per phenotype, over the subjects written: where it came from and how many are missing.
    #[serde(default)]
    pub phenotypes: Vec<PhenotypeCounts>,
    /// Problems that did not stop the build (non-finite table values read as missing, a label
    /// without any positive subject), each naming the file or label.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Remarks (absent tables, …).
    pub notes: Vec<String>,
}

/// The label counts of one disease over the subjects written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LabelCounts {
    /// The disease label.
    pub name: String,
    /// Subjects with the disease.
    pub positive: usize,
    /// Subjects without it.
    pub negative: usize,
    /// Subjects whose label is unknown (no diagnoses table, or absent from it).
    pub unknown: usize,
}

/// The value counts of one phenotype over the subjects written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PhenotypeCounts {
    /// The phenotype (`lvedv`, …).
    pub name: String,
    /// The table column it was read from (`None` without a table or without such a column).
    pub column: Option<String>,
    /// Values measured from segmentations where the table had none.
    pub measured: usize,
    /// Subjects still without a value (masked in training).
    pub missing: usize,
}

/// The leading digits of a file stem: `1000001_20205_2_0` → 1000001.
fn eid_of(name: &str) -> Option<Eid> {
    let digits: String = name.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn discover_ecgs(dir: &Path, report: &mut BuildReport) -> Result<HashMap<Eid, PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                EcgFormat::from_path(p),
                Some(
                    EcgFormat::CardioSoftXml
                        | EcgFormat::Wfdb
                        | EcgFormat::Npy
                        | EcgFormat::DicomWaveform
                )
            )
        })
        .collect();
    files.sort();
    let mut out = HashMap::new();
    for path in files {
        let Some(eid) = path.file_stem().and_then(|s| s.to_str()).and_then(eid_of) else {
            report.notes.push(format!(
                "{}: no eid at the start of the file name; ignored",
                path.display()
            ));
            continue;
        };
        match out.entry(eid) {
            std::collections::hash_map::Entry::Occupied(_) => report.duplicate_ecgs.push(path),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(path);
            }
        }
    }
    Ok(out)
}

/// `(sa, optional seg)` per subject folder.
type CmrFiles = (PathBuf, Option<PathBuf>);

/// The CMR of each subject folder: `sa.nii.gz` (or `.nii`), else a DICOM zip; NIfTI is
/// preferred when both exist (noted in the report).
fn discover_cmrs(dir: &Path, report: &mut BuildReport) -> Result<HashMap<Eid, CmrFiles>> {
    let mut out = HashMap::new();
    let mut both = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if !path.is_dir() {
            continue;
        }
        let Some(eid) = path.file_name().and_then(|s| s.to_str()).and_then(eid_of) else {
            continue;
        };
        let find = |stem: &str| {
            [format!("{stem}.nii.gz"), format!("{stem}.nii")]
                .into_iter()
                .map(|n| path.join(n))
                // Present, not necessarily a regular file: the reader refuses a device or
                // FIFO by name rather than the subject being dropped as imageless.
                .find(|p| p.exists())
        };
        // UK Biobank's DICOM zips; in name order, so visit 2 (`_20209_2_0`) comes first.
        let mut zips: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| Error::io(&path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| cmr::dicom::is_zip(p) && p.exists())
            .collect();
        zips.sort();
        let sa = match (find("sa"), zips.first()) {
            (Some(nifti), Some(_)) => {
                both.push(path.clone());
                nifti
            }
            (Some(nifti), None) => nifti,
            (None, Some(zip)) => {
                if zips.len() > 1 {
                    report.notes.push(format!(
                        "{}: {} DICOM zips; {} is used",
                        path.display(),
                        zips.len(),
                        zip.display()
                    ));
                }
                zip.clone()
            }
            (None, None) => {
                report.notes.push(format!(
                    "{}: no sa.nii.gz and no DICOM zip; ignored",
                    path.display()
                ));
                continue;
            }
        };
        out.insert(eid, (sa, find("seg_sa")));
    }
    both.sort();
    if let Some(first) = both.first() {
        report.notes.push(format!(
            "{} CMR folder(s) hold both sa.nii.gz and a DICOM zip; the NIfTI is used (e.g. {})",
            both.len(),
            first.display()
        ));
    }
    Ok(out)
}

/// A prepared subject.
struct Prepared {
    ecg: Option<Vec<f32>>,
    image: Option<Vec<f32>>,
    phenotypes: Vec<f64>,
    /// Which phenotypes were measured from the segmentation.
    measured: Vec<bool>,
}

/// Builds the cache described by `cfg`. `progress` is called with (done, total) as subjects
/// are processed.
///
/// # Errors
/// Missing folders, bad tables, a bad subject file (unless `skip_bad`), an existing output
/// (unless `overwrite`), write errors. Nothing is left at the output on error.
pub fn build_dataset(
    cfg: &BuildConfig,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(CacheIndex, BuildReport)> {
    let leads = ecg::lead_selection(cfg.ecg_leads.as_deref())
        .map_err(|reason| Error::InvalidInput(format!("ecg_leads: {reason}")))?;
    // All 12 in canonical order is the cache built without a selection: nothing to cut.
    let selection = (!leads.iter().copied().eq(0..NUM_LEADS)).then_some(leads.as_slice());
    let mut report = BuildReport::default();
    let ecg_files = match &cfg.ecg_dir {
        Some(d) => Some(discover_ecgs(&cfg.root.join(d), &mut report)?),
        None => None,
    };
    let cmr_files = match &cfg.cmr_dir {
        Some(d) => Some(discover_cmrs(&cfg.root.join(d), &mut report)?),
        None => None,
    };
    let table = |name: &Option<PathBuf>, what: &str, report: &mut BuildReport| {
        let path = name.as_ref().map(|n| cfg.root.join(n))?;
        // Present, not necessarily a regular file: a device, FIFO or folder in its place is
        // the reader's error (naming it), not a missing table.
        if path.exists() {
            Some(path)
        } else {
            report
                .notes
                .push(format!("{}: not found, no {what}", path.display()));
            None
        }
    };
    let phenotypes = match table(&cfg.phenotypes, "phenotypes", &mut report) {
        Some(p) => {
            let t = tables::read_phenotypes(&p)?;
            report.warnings.extend(t.warnings.iter().cloned());
            Some(t)
        }
        None => None,
    };
    let diagnoses = match table(&cfg.diagnoses, "diagnoses", &mut report) {
        Some(p) => Some(tables::read_diagnoses(&p)?),
        None => None,
    };

    let ecg_set: HashSet<Eid> = ecg_files.iter().flat_map(|m| m.keys().copied()).collect();
    let cmr_set: HashSet<Eid> = cmr_files.iter().flat_map(|m| m.keys().copied()).collect();
    let mut modalities: Vec<(&str, &HashSet<Eid>)> = Vec::new();
    let mut required = Vec::new();
    if ecg_files.is_some() {
        modalities.push(("ecg", &ecg_set));
        if cfg.require_pairs || cmr_files.is_none() {
            required.push("ecg");
        }
    }
    if cmr_files.is_some() {
        modalities.push(("cmr", &cmr_set));
        if cfg.require_pairs || ecg_files.is_none() {
            required.push("cmr");
        }
    }
    if modalities.is_empty() {
        return Err(Error::InvalidInput(
            "the configuration names neither an ECG nor a CMR folder".into(),
        ));
    }
    let joined = tables::join_by_eid(&modalities, &required);
    let mut eids = joined.complete.clone();
    // A subject needs at least one modality that this cache stores.
    eids.retain(|e| ecg_set.contains(e) || cmr_set.contains(e));
    report.join = joined;

    // Labels and splits are decided before reading any file.
    let empty = tables::DiagnosisTable::default();
    let diag = diagnoses.as_ref().unwrap_or(&empty);
    let labels: Vec<Vec<Option<u8>>> = eids
        .iter()
        .map(|&e| {
            if diagnoses.is_some() {
                disease_labels(diag, &cfg.diseases, e, cfg.absent_diagnosis_is_negative)
            } else {
                Ok(vec![None; cfg.diseases.len()])
            }
        })
        .collect::<Result<_>>()?;
    let strata: Option<Vec<i64>> = match &cfg.split.stratify_by {
        None => None,
        Some(name) => {
            let k = cfg
                .diseases
                .iter()
                .position(|d| &d.name == name)
                .ok_or_else(|| {
                    Error::InvalidInput(format!("stratify_by names no disease label: {name}"))
                })?;
            Some(labels.iter().map(|l| l[k].map_or(-1, i64::from)).collect())
        }
    };
    let splits = tables::split_by_eid(&eids, strata.as_deref(), &cfg.split)?;

    let store_ecg = ecg_files.is_some();
    // Images are stored for pairs (or a CMR-only cache); without pairs, CMRs only feed the
    // phenotypes of an ECG cache.
    let store_image = cmr_files.is_some() && (cfg.require_pairs || ecg_files.is_none());
    let ecg_layout = store_ecg.then_some(EcgLayout {
        leads: leads.len(),
        samples: cfg.ecg_samples,
        sample_rate: cfg.ecg.sample_rate,
    });
    let image_layout = store_image.then_some(ImageLayout {
        channels: cfg.cmr.channels.len(),
        height: cfg.cmr.size,
        width: cfg.cmr.size,
    });
    let mut writer = CacheWriter::create(
        &cfg.output,
        ecg_layout,
        image_layout,
        cfg.shard_size,
        cfg.overwrite,
    )?
    .with_lead_names(
        selection.map(|leads| leads.iter().map(|&l| ecg::LEADS[l].to_string()).collect()),
    );
    let total = eids.len();
    let mut written: BTreeMap<String, usize> = BTreeMap::new();
    let mut label_counts: Vec<LabelCounts> = cfg
        .diseases
        .iter()
        .map(|d| LabelCounts {
            name: d.name.clone(),
            ..LabelCounts::default()
        })
        .collect();
    let mut phenotype_counts: Vec<PhenotypeCounts> = PHENOTYPE_FIELDS
        .iter()
        .enumerate()
        .map(|(k, f)| PhenotypeCounts {
            name: f.name.to_string(),
            column: phenotypes
                .as_ref()
                .and_then(|t| t.columns.get(k).cloned().flatten()),
            ..PhenotypeCounts::default()
        })
        .collect();
    let chunk = cfg.shard_size.max(1);
    for start in (0..total).step_by(chunk) {
        let end = (start + chunk).min(total);
        let prepared: Vec<Result<Prepared>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let eid = eids[i];
                prepare_subject(
                    cfg,
                    eid,
                    ecg_files
                        .as_ref()
                        .and_then(|m| m.get(&eid))
                        .filter(|_| store_ecg),
                    cmr_files.as_ref().and_then(|m| m.get(&eid)),
                    store_image,
                    phenotypes.as_ref().and_then(|t| t.get(eid)),
                    selection,
                )
            })
            .collect();
        for (i, result) in (start..end).zip(prepared) {
            match result {
                Ok(p) => {
                    for (k, counts) in phenotype_counts.iter_mut().enumerate() {
                        counts.measured += usize::from(p.measured.get(k).copied().unwrap_or(false));
                        counts.missing +=
                            usize::from(p.phenotypes.get(k).is_none_or(|v| v.is_nan()));
                    }
                    for (counts, label) in label_counts.iter_mut().zip(&labels[i]) {
                        match label {
                            Some(0) => counts.negative += 1,
                            Some(_) => counts.positive += 1,
                            None => counts.unknown += 1,
                        }
                    }
                    let split = splits[i];
                    *written.entry(split_name(split).into()).or_default() += 1;
                    writer.push(
                        SubjectMeta {
                            eid: eids[i],
                            split,
                            labels: labels[i].clone(),
                            phenotypes: p.phenotypes,
                        },
                        p.ecg.as_deref(),
                        p.image.as_deref(),
                    )?;
                }
                Err(e) if cfg.skip_bad => report.skipped.push(SkippedFile {
                    eid: eids[i],
                    error: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        progress(end, total);
    }
    report.written = written;
    report.phenotypes_measured = phenotype_counts.iter().map(|c| c.measured).sum();
    for c in &label_counts {
        if c.positive == 0 && c.negative > 0 {
            report.warnings.push(format!(
                "label {}: no positive subject among the {} with a known label",
                c.name, c.negative
            ));
        }
    }
    report.labels = label_counts;
    report.phenotypes = phenotype_counts;
    let config = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    let report_json = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
    let index = writer.finish(
        cfg.diseases.iter().map(|d| d.name.clone()).collect(),
        PHENOTYPE_FIELDS
            .iter()
            .map(|f| f.name.to_string())
            .collect(),
        config,
        report_json,
    )?;
    Ok((index, report))
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "train",
        Split::Val => "val",
        Split::Test => "test",
    }
}

fn prepare_subject(
    cfg: &BuildConfig,
    eid: Eid,
    ecg_path: Option<&PathBuf>,
    cmr_paths: Option<&CmrFiles>,
    store_image: bool,
    table_phenotypes: Option<&[f64]>,
    selection: Option<&[usize]>,
) -> Result<Prepared> {
    let mut heart_rate = None;
    let ecg = match ecg_path {
        None => None,
        Some(path) => {
            // The vendor of an `.xml` is in its root element; CardioSoft and GE MUSE files carry
            // the heart rate read here (for cardiac output), the others go through `read_any`
            // as every other format.
            let record = match EcgFormat::detect(path)? {
                EcgFormat::CardioSoftXml => {
                    let x = ecg::xml::read_cardiosoft_xml(path)?;
                    heart_rate = x.heart_rate();
                    x.rhythm
                }
                EcgFormat::MuseXml => {
                    let x = ecg::muse::read_muse_xml(path)?;
                    heart_rate = x.heart_rate();
                    x.rhythm
                }
                _ => {
                    let mut all = ecg::read_any(path, cfg.npy_sample_rate)?;
                    if all.len() != 1 {
                        return Err(Error::format(
                            path,
                            format!("holds {} recordings, expected one", all.len()),
                        ));
                    }
                    all.remove(0).ecg
                }
            };
            let processed = preprocess(&record, &cfg.ecg)?;
            if processed.samples() < cfg.ecg_samples {
                return Err(Error::format(
                    path,
                    format!(
                        "the recording has {} samples at {} Hz, the cache needs {}",
                        processed.samples(),
                        cfg.ecg.sample_rate,
                        cfg.ecg_samples
                    ),
                ));
            }
            let cropped = ecg::preprocess::crop(&processed, 0, cfg.ecg_samples)?;
            Some(match selection {
                None => cropped.into_data(),
                Some(leads) => ecg::select_leads(cropped.data(), cfg.ecg_samples, leads),
            })
        }
    };
    let mut phenotypes: Vec<f64> = table_phenotypes
        .map(<[f64]>::to_vec)
        .unwrap_or_else(|| vec![f64::NAN; PHENOTYPE_FIELDS.len()]);
    let mut measured = vec![false; phenotypes.len()];
    let image = match cmr_paths {
        None => None,
        Some((sa, seg)) => {
            let needs_study = store_image
                || (cfg.phenotypes_from_segmentation
                    && seg.is_some()
                    && phenotypes.iter().any(|v| v.is_nan()));
            if !needs_study {
                None
            } else {
                let study = cmr::read_study(sa, seg.as_deref())?;
                if cfg.phenotypes_from_segmentation
                    && let Some(p) = study.phenotypes(heart_rate)?
                {
                    for ((v, m), flag) in phenotypes.iter_mut().zip(p.values()).zip(&mut measured) {
                        // A non-finite measurement (an empty ventricle's 0/0) stays missing.
                        if v.is_nan() && m.is_finite() {
                            *v = m;
                            *flag = true;
                        }
                    }
                }
                if store_image {
                    let img = study
                        .preprocess(&cfg.cmr)
                        .map_err(|e| Error::format(sa, e.to_string()))?;
                    Some(img.image.data)
                } else {
                    None
                }
            }
        }
    };
    let _ = eid;
    Ok(Prepared {
        ecg,
        image,
        phenotypes,
        measured,
    })
}
