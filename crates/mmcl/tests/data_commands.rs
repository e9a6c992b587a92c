//! `mmcl preprocess-ecg` and `mmcl build-dataset` on fixture files: outputs, exit codes, and
//! nothing written for bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::{data_fixture as fixture, mmcl_command as mmcl};

/// `mmcl preprocess-ecg [extra…] --input input --output output`.
fn preprocess(extra: &[&str], input: &Path, output: &Path) -> Output {
    mmcl()
        .arg("preprocess-ecg")
        .args(extra)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap()
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = mmcl_core::npy::read_array(path).unwrap();
    (a.shape, a.data)
}

#[test]
fn single_file_writes_the_reference_processing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec16.npy");
    let status = preprocess(&[], &fixture("wfdb/rec16.hea"), &out).status;
    assert!(status.success());
    let (shape, data) = read_npy(&out);
    assert_eq!(shape, vec![12, 1000]);
    let (_, reference) = read_npy(&fixture("wfdb/rec16_processed.npy"));
    let worst = data
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-3, "{worst}");
}

#[test]
fn bad_single_file_fails_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npy");
    let output = preprocess(&[], &fixture("xml/missing_lead.xml"), &out);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("missing_lead.xml") && stderr.contains("V3"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn folder_with_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for name in [
        "xml/1000001_20205_2_0.xml",
        "xml/truncated.xml",
        "ecg_batch_2x12x300.npy",
    ] {
        let src = fixture(name);
        std::fs::copy(&src, input.join(src.file_name().unwrap())).unwrap();
    }
    // Without --skip-bad: fails on the bad file and writes nothing.
    let out = dir.path().join("out");
    let output = preprocess(&[], &input, &out);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("truncated.xml"));
    assert!(!out.exists(), "a failed run leaves no output folder");

    // With --skip-bad: the good files, and a report naming the bad one.
    let status = preprocess(&["--skip-bad"], &input, &out).status;
    assert!(status.success());
    assert_eq!(
        read_npy(&out.join("1000001_20205_2_0.npy")).0,
        vec![12, 1000]
    );
    assert_eq!(
        read_npy(&out.join("ecg_batch_2x12x300.npy")).0,
        vec![2, 12, 300]
    );
    let report = std::fs::read_to_string(out.join("preprocess_report.json")).unwrap();
    assert!(report.contains("truncated.xml"), "{report}");
    assert!(!out.join("truncated.npy").exists());
}

#[test]
fn build_dataset_from_config_and_default_config_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let printed = mmcl()
        .args(["build-dataset", "--print-config"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let text = String::from_utf8(printed.stdout).unwrap();
    let parsed: mmcl_data::build::BuildConfig = toml::from_str(&text).unwrap();
    assert_eq!(parsed, mmcl_data::build::BuildConfig::default());

    let root = dir.path().join("ukb");
    std::fs::create_dir_all(root.join("ecg")).unwrap();
    for k in 0..3 {
        std::fs::copy(
            fixture("xml/1000001_20205_2_0.xml"),
            root.join(format!("ecg/{}_20205_2_0.xml", 3000000 + k)),
        )
        .unwrap();
        mmcl_testutil::copy_fixture_cmr_study(&root.join(format!("cmr/{}", 3000000 + k)));
    }
    let cfg = dir.path().join("build.json");
    std::fs::write(
        &cfg,
        r#"{"root": "ukb", "output": "cache", "ecg_samples": 1000, "cmr": {"size": 16}}"#,
    )
    .unwrap();
    let output = mmcl()
        .args(["build-dataset", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cache = mmcl_data::cache::Cache::open(&dir.path().join("cache")).unwrap();
    assert_eq!(cache.len(), 3);
    // A second run refuses to overwrite.
    let again = mmcl()
        .args(["build-dataset", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!again.status.success());
}
