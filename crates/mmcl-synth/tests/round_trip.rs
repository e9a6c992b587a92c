//! The written cohort reads back with independent readers (the `nifti` crate, quick-xml, csv),
//! phenotypes recomputed from the written segmentation equal the CSV, the heart rate measured
//! from the ECG's R peaks matches the hidden state, and generation is deterministic whatever
//! the thread count.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mmcl_data::phenotypes::{PHENOTYPE_FIELDS, measure_phenotypes, ukb_column};
use mmcl_synth::analysis::detect_qrs;
use mmcl_synth::ecg::LEAD_NAMES;
use mmcl_synth::{Cohort, Error, SynthConfig, WriteOptions};
use nifti::{NiftiObject, ReaderOptions};
use quick_xml::events::Event;

fn config() -> SynthConfig {
    let mut cfg = common::small_cohort(6, 11, 48, 6, 5);
    // Enough AF to see both rhythms in six subjects.
    cfg.prevalence.af = 0.5;
    cfg
}

fn write(cfg: &SynthConfig, dir: &Path, threads: usize) -> mmcl_synth::CohortSummary {
    let cohort = Cohort::new(cfg.clone()).unwrap();
    mmcl_testutil::on_threads(threads, || {
        cohort.write(dir, WriteOptions::default(), &|| {})
    })
    .unwrap()
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            header
                .iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect();
    (header, rows)
}

/// The parts of a CardioSoft file these tests need, by a minimal independent parse.
struct ParsedEcg {
    root: String,
    sample_rate: u32,
    resolution: (String, f64),
    strip: HashMap<String, Vec<i32>>,
    median: HashMap<String, Vec<i32>>,
    ventricular_rate: u32,
    has_p_axis: bool,
}

fn parse_cardiosoft(path: &Path) -> ParsedEcg {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.is_ascii(), "ISO-8859-1 file written as plain ASCII");
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>"));
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut stack: Vec<String> = Vec::new();
    let mut lead = String::new();
    let mut units = String::new();
    let mut parsed = ParsedEcg {
        root: String::new(),
        sample_rate: 0,
        resolution: (String::new(), 0.0),
        strip: HashMap::new(),
        median: HashMap::new(),
        ventricular_rate: 0,
        has_p_axis: false,
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                let name = e.name().as_ref().to_string();
                if stack.is_empty() {
                    parsed.root = name.clone();
                }
                if let Some(a) = e.try_get_attribute("lead").unwrap() {
                    lead = a.value.to_string();
                }
                units = e
                    .try_get_attribute("units")
                    .unwrap()
                    .map(|a| a.value.to_string())
                    .unwrap_or_default();
                if name == "PAxis" {
                    parsed.has_p_axis = true;
                }
                stack.push(name);
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                let path = stack.join("/");
                let ints = || -> Vec<i32> {
                    content
                        .split(',')
                        .map(|v| v.trim().parse::<i32>().unwrap())
                        .collect()
                };
                match path.as_str() {
                    "CardiologyXML/StripData/SampleRate" => {
                        parsed.sample_rate = content.trim().parse().unwrap()
                    }
                    "CardiologyXML/StripData/Resolution" => {
                        parsed.resolution = (units.clone(), content.trim().parse().unwrap())
                    }
                    "CardiologyXML/StripData/WaveformData" => {
                        parsed.strip.insert(lead.clone(), ints());
                    }
                    "CardiologyXML/RestingECGMeasurements/MedianSamples/WaveformData" => {
                        parsed.median.insert(lead.clone(), ints());
                    }
                    "CardiologyXML/RestingECGMeasurements/VentricularRate" => {
                        parsed.ventricular_rate = content.trim().parse().unwrap()
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    parsed
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn files_read_back_and_agree_with_the_hidden_state() {
    let cfg = config();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cohort");
    let summary = write(&cfg, &dir, 2);
    assert_eq!(summary.records.len(), cfg.subjects);
    let cohort = Cohort::new(cfg.clone()).unwrap();

    let (header, phenotypes) = read_csv(&dir.join("phenotypes.csv"));
    let expected: Vec<String> = std::iter::once("eid".to_string())
        .chain(PHENOTYPE_FIELDS.iter().map(|f| ukb_column(f.field)))
        .collect();
    assert_eq!(header, expected);
    assert_eq!(header[1], "24100-2.0");
    let (_, hidden) = read_csv(&dir.join("hidden_state.csv"));
    let (dx_header, diagnoses) = read_csv(&dir.join("diagnoses.csv"));
    assert_eq!(dx_header, ["eid", "icd10_codes"]);
    assert!(dir.join("README.md").is_file());
    assert!(dir.join("synth_config.json").is_file());
    let reread = SynthConfig::from_json_file(&dir.join("synth_config.json")).unwrap();
    assert_eq!(reread, cfg);

    let mut rhythms = (0, 0);
    for (i, ((row, truth), dx)) in phenotypes.iter().zip(&hidden).zip(&diagnoses).enumerate() {
        let eid = cfg.eid(i);
        assert_eq!(row["eid"], eid.to_string());
        assert_eq!(truth["eid"], eid.to_string());
        let subject = cohort.subject(i).unwrap();

        // NIfTI through the nifti crate.
        let cmr = dir.join("cmr").join(eid.to_string());
        let image = ReaderOptions::new()
            .read_file(cmr.join("sa.nii.gz"))
            .unwrap();
        let seg = ReaderOptions::new()
            .read_file(cmr.join("seg_sa.nii.gz"))
            .unwrap();
        for (obj, datatype) in [(&image, 4), (&seg, 2)] {
            let h = obj.header();
            assert_eq!(h.sizeof_hdr, 348);
            assert_eq!(&h.magic, b"n+1\0");
            assert_eq!(h.dim[..5], [4, 48, 48, 6, 5]);
            assert_eq!(h.datatype, datatype);
            assert_eq!(h.vox_offset, 352.0);
            assert_eq!((h.qform_code, h.sform_code), (1, 1));
            assert_eq!(h.pixdim[0], -1.0, "left-handed short-axis stack");
            assert_eq!(h.pixdim[1], (230.0f64 / 48.0) as f32);
            assert_eq!(h.pixdim[3], (100.0f64 / 6.0) as f32);
            for (row, srow) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
                for (got, want) in srow.iter().zip(subject.cine.affine[row]) {
                    assert_eq!(*got, want as f32);
                }
            }
        }
        let h = seg.header().clone();
        let labels: Vec<u8> = seg.into_volume().into_nifti_typed_data().unwrap();
        assert_eq!(labels, subject.cine.labels);
        let intensities: Vec<i16> = image.into_volume().into_nifti_typed_data().unwrap();
        assert_eq!(intensities, subject.cine.image);

        // Phenotypes recomputed from the file's segmentation and pixdim equal the CSV exactly.
        let dims = [48, 48, 6, 5];
        let voxel = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64];
        // Cardiac output at the scanner's heart rate, not the ECG's.
        let hr: f64 = truth["cmr_heart_rate_bpm"].parse().unwrap();
        let p = measure_phenotypes(&labels, dims, voxel, Some(hr)).unwrap();
        for (f, value) in PHENOTYPE_FIELDS.iter().zip(p.values()) {
            let written: f64 = row[&ukb_column(f.field)].parse().unwrap();
            assert_eq!(written, value, "{} of {eid}", f.name);
        }
        // ... and are close to the hidden state.
        let hidden_lvedv: f64 = truth["lvedv"].parse().unwrap();
        assert!((p.lvedv - hidden_lvedv).abs() < 0.05 * hidden_lvedv);

        // ECG through a minimal XML parse.
        let ecg = parse_cardiosoft(&dir.join("ecg").join(format!("{eid}_20205_2_0.xml")));
        assert_eq!(ecg.root, "CardiologyXML");
        assert_eq!(ecg.sample_rate, 500);
        assert_eq!(ecg.resolution, ("uVperLsb".to_string(), 5.0));
        assert_eq!(ecg.strip.len(), 12);
        assert_eq!(ecg.median.len(), 12);
        let strip: Vec<Vec<i32>> = LEAD_NAMES.iter().map(|l| ecg.strip[*l].clone()).collect();
        assert!(strip.iter().all(|l| l.len() == 5000));
        assert!(LEAD_NAMES.iter().all(|l| ecg.median[*l].len() == 600));
        assert_eq!(strip, subject.ecg.strip);

        // Heart rate from the R peaks of the file's strip.
        let peaks = detect_qrs(&strip, 500);
        let rr: Vec<f64> = peaks
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 500.0)
            .collect();
        let detected = 60.0 * rr.len() as f64 / rr.iter().sum::<f64>();
        let recorded: f64 = truth["ecg_heart_rate_bpm"].parse().unwrap();
        assert!(
            (detected - recorded).abs() < 2.0,
            "{eid}: detected {detected} vs recorded {recorded} bpm"
        );
        assert_eq!(ecg.ventricular_rate, recorded.round() as u32);
        let af = truth["af"] == "1";
        let tolerance = if af { 0.15 } else { 0.05 };
        let resting: f64 = truth["heart_rate_bpm"].parse().unwrap();
        assert!(
            (detected - resting).abs() < tolerance * resting,
            "{eid}: detected {detected} vs hidden {resting} bpm"
        );
        // AF: no P axis, irregular rhythm, I48 in the diagnoses.
        assert_eq!(ecg.has_p_axis, !af);
        let mean = rr.iter().sum::<f64>() / rr.len() as f64;
        let cv =
            (rr.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rr.len() as f64).sqrt() / mean;
        if af {
            rhythms.0 += 1;
            assert!(cv > 0.06, "{eid}: AF with RR CV {cv}");
        } else {
            rhythms.1 += 1;
        }
        assert_eq!(
            dx["icd10_codes"].split(';').any(|c| c.starts_with("I48")),
            af
        );
        assert_eq!(dx["icd10_codes"], truth["icd10_codes"]);
    }
    assert!(
        rhythms.0 > 0 && rhythms.1 > 0,
        "both rhythms seen: {rhythms:?}"
    );
}

#[test]
fn output_is_identical_for_any_thread_count() {
    let cfg = config();
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    write(&cfg, &one, 1);
    write(&cfg, &two, 2);
    let files_one = all_files(&one);
    let files_two = all_files(&two);
    assert_eq!(files_one.len(), files_two.len());
    assert_eq!(files_one.len(), 3 * 6 + 5);
    for (a, b) in files_one.iter().zip(&files_two) {
        assert_eq!(a.strip_prefix(&one).unwrap(), b.strip_prefix(&two).unwrap());
        assert!(
            std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
            "{} differs",
            a.display()
        );
    }
    // A different seed gives a different cohort.
    let other = tmp.path().join("other");
    write(&SynthConfig { seed: 12, ..cfg }, &other, 2);
    assert_ne!(
        std::fs::read(other.join("phenotypes.csv")).unwrap(),
        std::fs::read(one.join("phenotypes.csv")).unwrap()
    );
}

#[test]
fn existing_output_is_kept_unless_overwriting_and_nothing_is_left_half_written() {
    let cfg = SynthConfig {
        subjects: 2,
        ..config()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cohort");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), b"mine").unwrap();
    let cohort = Cohort::new(cfg).unwrap();
    let err = cohort
        .write(&dir, WriteOptions::default(), &|| {})
        .unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }));
    assert!(err.to_string().contains("cohort"));
    assert_eq!(std::fs::read(dir.join("keep.txt")).unwrap(), b"mine");

    cohort
        .write(&dir, WriteOptions { overwrite: true }, &|| {})
        .unwrap();
    assert!(!dir.join("keep.txt").exists());
    assert!(dir.join("phenotypes.csv").is_file());
    // Only the cohort folder remains: no staging or old copies.
    let siblings: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(siblings.len(), 1);

    // An output path that cannot be a folder fails cleanly.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(
        cohort
            .write(&file.join("sub"), WriteOptions::default(), &|| {})
            .is_err()
    );
    let bad = SynthConfig {
        subjects: 0,
        ..config()
    };
    assert!(matches!(Cohort::new(bad), Err(Error::InvalidConfig(_))));
}
