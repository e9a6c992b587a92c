//! `mmcl synth` end to end: a small cohort, and clear failures that leave nothing behind.

mod common;

use common::{mmcl, s, stderr, synth_small_cohort};

#[test]
fn synth_writes_a_small_cohort() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cohort");
    let status = synth_small_cohort(&out, 3, 4);
    assert!(stderr(&status).contains("wrote 3 subjects"));
    for f in [
        "phenotypes.csv",
        "diagnoses.csv",
        "hidden_state.csv",
        "README.md",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(out.join("ecg/1000003_20205_2_0.xml").is_file());
    assert!(out.join("cmr/1000003/sa.nii.gz").is_file());
    let config = std::fs::read_to_string(out.join("synth_config.json")).unwrap();
    assert!(config.contains("\"image_size\": 32"));

    // A second run into the same folder refuses, naming it, and keeps the cohort.
    let again = mmcl(&["synth", "--subjects", "1", "--out", s(&out)]);
    assert!(!again.status.success());
    let err = stderr(&again);
    assert!(
        err.contains("error:") && err.contains("cohort") && err.contains("not empty"),
        "{err}"
    );
    assert!(out.join("cmr/1000003/sa.nii.gz").is_file());

    // The reproduce preset, with a flag on top.
    let small = tmp.path().join("small");
    let run = mmcl(&[
        "synth",
        "--preset",
        "reproduce",
        "--subjects",
        "2",
        "--quiet",
        "--out",
        s(&small),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let config = std::fs::read_to_string(small.join("synth_config.json")).unwrap();
    assert!(config.contains("\"image_size\": 64") && config.contains("\"subjects\": 2"));
}

#[test]
fn bad_settings_fail_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cohort");
    let run = mmcl(&["synth", "--frames", "1", "--out", s(&out)]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("frames"));
    let bad_config = tmp.path().join("bad.json");
    std::fs::write(&bad_config, "{\"subjekts\": 3}").unwrap();
    let run = mmcl(&["synth", "--config", s(&bad_config), "--out", s(&out)]);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("bad.json") && err.contains("subjekts"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}
