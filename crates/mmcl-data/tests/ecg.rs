//! ECG readers and preprocessing on files made by other tools, parity with the reference,
//! and bad input.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{assert_names_file, fixture, max_abs_diff};
use mmcl_data::ecg::preprocess::{PreprocessConfig, baseline_als, preprocess, resample};
use mmcl_data::ecg::{self, Ecg, wfdb, xml};
use mmcl_testutil::{Fixture, Tolerance, assert_close};

fn npy_values(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = mmcl_core::npy::read_array(&fixture(name)).unwrap();
    (a.shape, a.data)
}

#[test]
fn parity_with_reference_preprocessing() {
    let Some(io) = Fixture::load("ecg_preprocessing.io") else {
        return;
    };
    let input = io.values("input");
    let ecg = Ecg::new(input, 5000, 500.0).unwrap();
    let processed = preprocess(&ecg, &PreprocessConfig::default()).unwrap();
    let ours = processed.to_tensor(&Device::Cpu).unwrap();
    assert_close(
        "processed",
        &ours,
        &io.tensor("processed"),
        Tolerance::PREPROCESSING,
    );

    // Baseline of lead I, on the clipped input as the reference computes it.
    let mut x: Vec<f64> = ecg
        .data()
        .iter()
        .map(|v| if v.is_finite() { *v as f64 } else { 0.0 })
        .collect();
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let std = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    x.iter_mut()
        .for_each(|v| *v = v.clamp(-4.0 * std, 4.0 * std));
    let z = baseline_als(&x[..5000], &Default::default());
    let z: Vec<f32> = z.iter().map(|v| *v as f32).collect();
    let z = Tensor::from_vec(z, 5000, &Device::Cpu).unwrap();
    assert_close(
        "baseline_lead0",
        &z,
        &io.tensor("baseline_lead0"),
        Tolerance::PREPROCESSING,
    );

    // Normalisation alone.
    let plain = PreprocessConfig {
        clip_std: None,
        baseline: None,
        ..PreprocessConfig::default()
    };
    let normalised = preprocess(&ecg, &plain).unwrap();
    assert_close(
        "groupwise_normalised",
        &normalised.to_tensor(&Device::Cpu).unwrap(),
        &io.tensor("groupwise_normalised"),
        Tolerance::PREPROCESSING,
    );
}

#[test]
fn wfdb_format_16_with_shuffled_leads() {
    let record = wfdb::read_record(&fixture("wfdb/rec16.hea")).unwrap();
    assert_eq!(record.name, "rec16");
    assert_eq!(record.ecg.samples(), 1000);
    assert_eq!(record.ecg.sample_rate(), 500.0);
    let (shape, expected) = npy_values("wfdb/rec16_physical.npy");
    assert_eq!(shape, vec![12, 1000]);
    let d = max_abs_diff(record.ecg.data(), &expected);
    assert!(d < 1e-6, "physical values differ from wfdb's by {d}");

    // The whole pipeline on a record written by wfdb equals the reference code on wfdb's values.
    let processed = preprocess(&record.ecg, &PreprocessConfig::default()).unwrap();
    let (_, reference) = npy_values("wfdb/rec16_processed.npy");
    let d = max_abs_diff(processed.data(), &reference);
    eprintln!("rec16 processed max |diff| = {d:.3e}");
    assert!(d <= 1e-3, "processed differs from the reference by {d}");
}

#[test]
fn wfdb_format_212_with_missing_sample_and_resampling() {
    let record = wfdb::read_record(&fixture("wfdb/rec212.hea")).unwrap();
    assert_eq!(record.ecg.sample_rate(), 250.0);
    let (_, expected) = npy_values("wfdb/rec212_physical.npy");
    let d = max_abs_diff(record.ecg.data(), &expected);
    assert!(d < 1e-6, "physical values differ from wfdb's by {d}");
    assert!(
        record.ecg.lead(5)[100].is_nan(),
        "invalid sample becomes NaN"
    );

    let zeroed: Vec<f32> = record
        .ecg
        .data()
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    let zeroed = Ecg::new(zeroed, record.ecg.samples(), 250.0).unwrap();
    let up = resample(&zeroed, 500.0).unwrap();
    assert_eq!(up.samples(), 1000);
    let (_, scipy) = npy_values("wfdb/rec212_resampled_500.npy");
    let d = max_abs_diff(up.data(), &scipy);
    eprintln!("resample vs scipy max |diff| = {d:.3e}");
    assert!(d < 1e-5, "resampling differs from scipy by {d}");

    // The pipeline resamples to the model's rate before processing.
    let processed = preprocess(&record.ecg, &PreprocessConfig::default()).unwrap();
    assert_eq!(processed.samples(), 1000);
    assert!(processed.data().iter().all(|v| v.is_finite()));
}

#[test]
fn cardiosoft_xml_reordered_lower_case_latin1() {
    let path = fixture("xml/1000001_20205_2_0.xml");
    let rec = xml::read_cardiosoft_xml(&path).unwrap();
    assert_eq!(rec.rhythm.sample_rate(), 500.0);
    assert_eq!(rec.rhythm.samples(), 1000);
    let (_, strip) = npy_values("xml/1000001_strip_mv.npy");
    let d = max_abs_diff(rec.rhythm.data(), &strip);
    assert!(d < 1e-5, "strip differs by {d}");
    let median = rec.median_beats.as_ref().unwrap();
    let (_, expected_median) = npy_values("xml/1000001_median_mv.npy");
    assert!(max_abs_diff(median.data(), &expected_median) < 1e-5);
    assert_eq!(rec.measurement("VentricularRate"), Some(71.0));
    assert_eq!(rec.measurement("qtcinterval"), Some(421.0));
    assert_eq!(rec.measurement("RAxis"), Some(-12.0));
    assert_eq!(rec.measurements.len(), 10);
    assert_eq!(rec.measurements[0].unit.as_deref(), Some("BPM"));

    let all = ecg::read_any(&path, 500.0).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, "1000001_20205_2_0");
}

#[test]
fn cardiosoft_xml_with_character_references_reads_the_same() {
    let path = fixture("xml/1000001_20205_2_0.xml");
    let bytes = std::fs::read(&path).unwrap();
    let plain = xml::parse_cardiosoft_xml(&bytes, &path).unwrap();
    // Another writer escapes the sample lists' separators and line breaks as character
    // references, and puts an undeclared entity into a name field (the Latin-1 name turns into
    // replacement characters here, which only that field sees).
    let escaped = String::from_utf8_lossy(&bytes)
        .replace(",\n", "&#44;&#xA;")
        .replace(',', "&#44;")
        .replace("<Name>", "<Name>&nbsp;");
    assert!(escaped.contains("&#44;") && escaped.contains("&#xA;"));
    let other = xml::parse_cardiosoft_xml(escaped.as_bytes(), &path).unwrap();
    assert_eq!(other.rhythm.data(), plain.rhythm.data());
    assert_eq!(
        other.median_beats.as_ref().map(|m| m.data().to_vec()),
        plain.median_beats.as_ref().map(|m| m.data().to_vec())
    );
}

#[test]
fn npy_arrays_in_any_layout() {
    let one = ecg::read_any(&fixture("wfdb/rec16_physical.npy"), 500.0).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].ecg.samples(), 1000);
    let fortran = ecg::read_any(&fixture("ecg_fortran_f64.npy"), 500.0).unwrap();
    let d = max_abs_diff(fortran[0].ecg.lead(7), &one[0].ecg.lead(7)[..200]);
    assert!(d < 1e-6, "Fortran-order f64 array differs by {d}");
    let batch = ecg::read_any(&fixture("ecg_batch_2x12x300.npy"), 500.0).unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[1].id, "ecg_batch_2x12x300_1");
    assert_eq!(batch[1].ecg.lead(0), &one[0].ecg.lead(0)[300..600]);
}

fn error_of(name: &str) -> String {
    let path = fixture(name);
    let msg = ecg::read_any(&path, 500.0).expect_err(name).to_string();
    assert_names_file(&msg, &path);
    msg
}

#[test]
fn bad_xml_files_are_clear_errors() {
    assert!(error_of("xml/empty.xml").contains("empty"));
    let m = error_of("xml/truncated.xml");
    assert!(m.contains("truncated") || m.contains("XML"), "{m}");
    assert!(error_of("xml/missing_lead.xml").contains("missing lead(s) V3"));
    let m = error_of("xml/non_numeric.xml");
    assert!(m.contains("lead V2") && m.contains("12a"), "{m}");
    let m = error_of("xml/wrong_count.xml");
    assert!(m.contains("ChannelSampleCountTotal"), "{m}");
    assert!(error_of("xml/wrong_root.xml").contains("CardiologyXML"));
}

#[test]
fn bad_wfdb_and_npy_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A header whose signal file is shorter than announced.
    let hea = std::fs::read_to_string(fixture("wfdb/rec16.hea")).unwrap();
    let dat = std::fs::read(fixture("wfdb/rec16.dat")).unwrap();
    std::fs::write(dir.path().join("rec16.hea"), &hea).unwrap();
    std::fs::write(dir.path().join("rec16.dat"), &dat[..dat.len() / 2]).unwrap();
    let err = wfdb::read_record(&dir.path().join("rec16.hea")).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(err.to_string().contains("rec16.dat"), "{err}");
    // A missing signal file.
    std::fs::remove_file(dir.path().join("rec16.dat")).unwrap();
    let err = wfdb::read_record(&dir.path().join("rec16.hea")).unwrap_err();
    assert!(err.to_string().contains("rec16.dat"), "{err}");
    // An empty header.
    std::fs::write(dir.path().join("empty.hea"), "").unwrap();
    let err = wfdb::read_record(&dir.path().join("empty.hea")).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // A header missing a lead.
    let lines: Vec<&str> = hea.lines().collect();
    let mut eleven = vec![lines[0].replace(" 12 ", " 11 ")];
    eleven.extend(lines[1..12].iter().map(|s| s.to_string()));
    std::fs::write(dir.path().join("eleven.hea"), eleven.join("\n")).unwrap();
    std::fs::write(dir.path().join("rec16.dat"), &dat).unwrap();
    let err = wfdb::read_record(&dir.path().join("eleven.hea")).unwrap_err();
    assert!(err.to_string().contains("missing lead"), "{err}");

    assert!(error_of("ecg_bad_shape.npy").contains("(12, T)"));
    std::fs::write(dir.path().join("empty.npy"), b"").unwrap();
    let err = ecg::read_any(&dir.path().join("empty.npy"), 500.0).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let bytes = std::fs::read(fixture("ecg_batch_2x12x300.npy")).unwrap();
    std::fs::write(dir.path().join("cut.npy"), &bytes[..bytes.len() - 100]).unwrap();
    let err = ecg::read_any(&dir.path().join("cut.npy"), 500.0).unwrap_err();
    assert!(err.to_string().contains("cut.npy"), "{err}");
    // A header claiming far more data than the file holds is refused without allocating it.
    let hostile = mmcl_core::npy::npy_f32_bytes(&[12, 1_000_000_000_000], &[]);
    std::fs::write(dir.path().join("huge.npy"), hostile).unwrap();
    let err = ecg::read_any(&dir.path().join("huge.npy"), 500.0).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = ecg::read_any(Path::new("no/such/file.xml"), 500.0).unwrap_err();
    assert!(err.to_string().contains("file.xml"), "{err}");
}
