//! Round trip of the synthetic cohort through the data layer's own readers (issue 6): a tiny
//! cohort is written with `mmcl_synth`, then read back with `mmcl_data`'s CardioSoft XML reader,
//! NIfTI reader and study preprocessing, phenotype and diagnosis tables, and
//! `mmcl_data::build` → cache → loader; everything is compared with the cohort's in-memory
//! truth (`Cohort::subject`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_data::cache::Cache;
use mmcl_data::cmr::{CmrConfig, read_study};
use mmcl_data::ecg::lead_index;
use mmcl_data::ecg::preprocess::{crop, preprocess};
use mmcl_data::ecg::xml::read_cardiosoft_xml;
use mmcl_data::loader::{Loader, LoaderConfig};
use mmcl_data::tables::{DiseaseDefinition, normalise_code, read_diagnoses, read_phenotypes};
use mmcl_synth::ecg::{LEAD_NAMES, UV_PER_LSB};
use mmcl_synth::{Cohort, Subject, SynthConfig, WriteOptions};

const SUBJECTS: usize = 6;

/// A temporary folder removed on drop (also when an assertion fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mmcl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cohort() -> Cohort {
    let mut cfg = SynthConfig {
        subjects: SUBJECTS,
        seed: 23,
        ..SynthConfig::default()
    };
    cfg.cmr.image_size = 48;
    cfg.cmr.slices = 6;
    cfg.cmr.frames = 6;
    // Both rhythms and both CAD states in six subjects.
    cfg.prevalence.af = 0.5;
    cfg.prevalence.cad = 0.5;
    Cohort::new(cfg).unwrap()
}

fn ecg_path(root: &Path, eid: u64) -> PathBuf {
    root.join("ecg").join(format!("{eid}_20205_2_0.xml"))
}

/// The ECG XML: every lead's strip and median beat equal the generated integers within the
/// format's quantisation (half an LSB of 5 µV), in the data layer's canonical lead order.
fn check_ecg(root: &Path, subject: &Subject) {
    let path = ecg_path(root, subject.state.eid);
    let xml = read_cardiosoft_xml(&path).unwrap();
    let truth = &subject.ecg;
    let half_lsb_mv = 0.5 * UV_PER_LSB / 1000.0;
    assert_eq!(xml.rhythm.sample_rate(), truth.sample_rate_hz as f64);
    assert_eq!(xml.rhythm.samples(), truth.strip[0].len());
    let median = xml.median_beats.as_ref().expect("median beats");
    assert_eq!(median.samples(), truth.median[0].len());
    for (name, (strip, beat)) in LEAD_NAMES.iter().zip(truth.strip.iter().zip(&truth.median)) {
        let lead = lead_index(name).unwrap();
        for (read, lsb) in [(xml.rhythm.lead(lead), strip), (median.lead(lead), beat)] {
            let worst = read
                .iter()
                .zip(lsb.iter())
                .map(|(r, q)| (*r as f64 - *q as f64 * UV_PER_LSB / 1000.0).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= half_lsb_mv,
                "{path:?} lead {name}: off by {worst} mV"
            );
        }
    }
    let rate = xml.measurement("VentricularRate").unwrap();
    assert_eq!(rate, truth.measurements.ventricular_rate as f64);
}

/// The NIfTI files: dimensions, voxel size, intensities and labels equal the generated cine;
/// the phenotypes the data layer measures from them equal the in-memory ones.
fn check_cmr(root: &Path, subject: &Subject) {
    let dir = root.join("cmr").join(subject.state.eid.to_string());
    let study = read_study(&dir.join("sa.nii.gz"), Some(&dir.join("seg_sa.nii.gz"))).unwrap();
    let cine = &subject.cine;
    assert_eq!(study.dims, cine.dims);
    for (read, truth) in study.voxel_mm.iter().zip(cine.voxel_mm) {
        assert!((read - truth).abs() < 1e-9, "voxel {read} vs {truth}");
    }
    assert_eq!(study.image.len(), cine.image.len());
    assert!(
        study
            .image
            .iter()
            .zip(&cine.image)
            .all(|(r, t)| *r == *t as f32)
    );
    assert_eq!(study.labels.as_deref(), Some(cine.labels.as_slice()));
    // Cardiac output uses the heart rate during the CMR scan (the hidden state's scanner rate,
    // related to the ECG's only as far as the cohort's couplings say).
    let measured = study
        .phenotypes(Some(subject.state.cmr_heart_rate_bpm))
        .unwrap()
        .unwrap();
    for (m, t) in measured.values().iter().zip(subject.phenotypes.values()) {
        assert!(
            (m - t).abs() <= 1e-9 * t.abs().max(1.0),
            "eid {}: measured {m} vs {t}",
            subject.state.eid
        );
    }
    // The study preprocessing finds the generated end-systolic frame.
    let image = study.preprocess(&CmrConfig::default()).unwrap();
    assert_eq!(image.es_frame, cine.es_frame);
    assert_eq!(
        (image.image.channels, image.image.height, image.image.width),
        (3, 210, 210)
    );
}

#[test]
fn synthetic_cohort_reads_back_through_the_data_layer() {
    let tmp = TempDir::new("synth-roundtrip");
    let root = tmp.0.join("ukb");
    let cohort = cohort();
    let summary = cohort
        .write(&root, WriteOptions::default(), &|| {})
        .unwrap();
    assert_eq!(summary.records.len(), SUBJECTS);
    let subjects: Vec<Subject> = (0..SUBJECTS).map(|i| cohort.subject(i).unwrap()).collect();
    let eids: Vec<u64> = subjects.iter().map(|s| s.state.eid).collect();

    // Files, one subject at a time.
    for s in &subjects {
        check_ecg(&root, s);
        check_cmr(&root, s);
    }

    // Tables: the same subjects, phenotypes equal (shortest round-trip floats), codes equal.
    let phenotypes = read_phenotypes(&root.join("phenotypes.csv")).unwrap();
    assert_eq!(phenotypes.eids(), eids);
    assert!(phenotypes.missing_counts.iter().all(|&m| m == 0));
    let diagnoses = read_diagnoses(&root.join("diagnoses.csv")).unwrap();
    assert_eq!(diagnoses.len(), SUBJECTS);
    for s in &subjects {
        assert_eq!(
            phenotypes.get(s.state.eid).unwrap(),
            s.phenotypes.values().as_slice()
        );
        let mut read: Vec<String> = diagnoses.codes(s.state.eid).unwrap().to_vec();
        let mut truth: Vec<String> = s
            .state
            .icd10_codes()
            .iter()
            .map(|c| normalise_code(c))
            .collect();
        read.sort();
        truth.sort();
        assert_eq!(read, truth, "eid {}", s.state.eid);
    }
    let conditions = |s: &Subject| {
        let c = &s.state.conditions;
        [c.cad, c.af, c.diabetes]
    };
    assert!(
        subjects.iter().any(|s| conditions(s)[1]) && subjects.iter().any(|s| !conditions(s)[1])
    );

    // The dataset cache: every subject, truth phenotypes and labels, the preprocessed ECG and
    // the preprocessed image the readers give.
    let cache_dir = tmp.0.join("cache");
    let build = BuildConfig {
        root: root.clone(),
        output: cache_dir.clone(),
        cmr: CmrConfig {
            size: 64,
            ..CmrConfig::default()
        },
        shard_size: 4,
        ..BuildConfig::default()
    };
    let (index, report) = build_dataset(&build, &|_, _| {}).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let names: Vec<String> = DiseaseDefinition::defaults()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(index.label_names, names);
    let cache = Arc::new(Cache::open(&cache_dir).unwrap());
    assert_eq!(cache.len(), SUBJECTS);
    let mut cached_eids: Vec<u64> = index.subjects.iter().map(|e| e.eid).collect();
    cached_eids.sort_unstable();
    assert_eq!(cached_eids, eids);
    for (i, entry) in index.subjects.iter().enumerate() {
        let s = subjects.iter().find(|s| s.state.eid == entry.eid).unwrap();
        let truth: Vec<Option<f64>> = s.phenotypes.values().iter().map(|v| Some(*v)).collect();
        assert_eq!(entry.phenotypes, truth);
        let labels: Vec<Option<u8>> = conditions(s).iter().map(|c| Some(*c as u8)).collect();
        assert_eq!(entry.labels, labels, "eid {}", entry.eid);

        let xml = read_cardiosoft_xml(&ecg_path(&root, entry.eid)).unwrap();
        let processed = crop(&preprocess(&xml.rhythm, &build.ecg).unwrap(), 0, 5000).unwrap();
        assert_eq!(cache.ecg(i).unwrap(), processed.data());
        let dir = root.join("cmr").join(entry.eid.to_string());
        let study = read_study(&dir.join("sa.nii.gz"), Some(&dir.join("seg_sa.nii.gz"))).unwrap();
        let image = study.preprocess(&build.cmr).unwrap().image;
        assert_eq!(cache.image(i).unwrap(), image);
    }

    // The loader in evaluation order: cached subjects in storage order, ECG crops from 0.
    let loader = Arc::new(
        Loader::new(
            cache.clone(),
            (0..cache.len()).collect(),
            LoaderConfig {
                image: true,
                image_size: None,
                threads: 2,
                ..LoaderConfig::ecg_eval(4)
            },
            Device::Cpu,
        )
        .unwrap(),
    );
    let batches: Vec<_> = loader.epoch(0, 0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 2);
    let mut position = 0;
    for batch in &batches {
        let n = batch.eids.len();
        let ecg = batch.ecg.as_ref().unwrap();
        assert_eq!(ecg.dims(), &[n, 1, 12, 2500]);
        assert_eq!(batch.image.as_ref().unwrap().dims(), &[n, 3, 64, 64]);
        assert_eq!(batch.labels.dims(), &[n, 3]);
        assert_eq!(batch.phenotypes.dims(), &[n, 10]);
        let mask = batch
            .phenotype_mask
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(mask.iter().all(|&m| m == 1.0));
        let ecg = ecg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (k, eid) in batch.eids.iter().enumerate() {
            assert_eq!(*eid, index.subjects[position].eid);
            let cached = cache.ecg(position).unwrap();
            for lead in 0..12 {
                let got = &ecg[(k * 12 + lead) * 2500..(k * 12 + lead + 1) * 2500];
                assert_eq!(got, &cached[lead * 5000..lead * 5000 + 2500]);
            }
            position += 1;
        }
    }
    assert_eq!(position, SUBJECTS);
}
