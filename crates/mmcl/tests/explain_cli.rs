//! `mmcl explain` end to end on a synthetic subject (CardioSoft XML, `sa.nii.gz` +
//! `seg_sa.nii.gz`) with a randomly initialised multimodal model saved in the reference's key
//! layout; bad inputs end with a non-zero exit, a message naming the file, and no output.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{SMALL_ENCODER_TOML, mmcl, s, stderr};
use mmcl_cmr::{ResNetArch, ResNetConfig};
use mmcl_ecg::EcgVitConfig;
use mmcl_synth::{Cohort, SynthConfig, WriteOptions};
use mmcl_train::{MmclArchitecture, MmclModel};

const ENCODER: &str = r#"{"img_size": [1, 12, 2500], "patch_size": [1, 100], "embed_dim": 32,
    "depth": 2, "num_heads": 4, "global_pool": true}"#;

/// A one-subject cohort and a random model in `dir`.
fn setup(dir: &Path) -> PathBuf {
    setup_with_encoder(dir, ENCODER)
}

/// As [`setup`], with the ECG encoder configured by `encoder` (JSON).
fn setup_with_encoder(dir: &Path, encoder: &str) -> PathBuf {
    let mut config = SynthConfig {
        subjects: 1,
        seed: 11,
        ..SynthConfig::default()
    };
    config.cmr.image_size = 64;
    config.cmr.frames = 6;
    let cohort = Cohort::new(config).expect("cohort");
    let root = dir.join("ukb");
    cohort
        .write(&root, WriteOptions { overwrite: true }, &|| {})
        .expect("cohort written");

    let encoder: EcgVitConfig = serde_json::from_str(encoder).expect("encoder config");
    let imaging = ResNetConfig::new(ResNetArch::ResNet18, 3);
    let arch = MmclArchitecture::without_classifier(&encoder, &imaging, 64, 16);
    let model = MmclModel::new(&arch, 1, &Device::Cpu).expect("model");
    model
        .state_dict()
        .expect("state")
        .write_safetensors(&dir.join("model.safetensors"), None)
        .expect("model written");
    root
}

fn write_config(dir: &Path, name: &str, ecg_file: &str, extra_cmr: &str) -> PathBuf {
    let text = format!(
        r#"model = "model.safetensors"
output = "out"

{SMALL_ENCODER_TOML}global_pool = true

[ecg]
file = "{ecg_file}"

[cmr]
image = "ukb/cmr/1000001/sa.nii.gz"
{extra_cmr}

[cmr.preprocessing]
size = 64
"#
    );
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config written");
    path
}

/// The configuration of [`write_config`] for the subject's XML, with `from` replaced by `to`,
/// written to `dir/name`; returns its path and text.
fn edited_config(dir: &Path, name: &str, from: &str, to: &str) -> (PathBuf, String) {
    let base = write_config(dir, "base.toml", "ukb/ecg/1000001_20205_2_0.xml", "");
    let text = std::fs::read_to_string(base).expect("config");
    assert!(text.contains(from), "{from:?} not in {text}");
    let text = text.replace(from, to);
    let path = dir.join(name);
    std::fs::write(&path, &text).expect("config");
    (path, text)
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is no PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    assert!(
        bytes.len() > 2000,
        "{} is suspiciously small",
        path.display()
    );
    (be(16), be(20))
}

#[test]
fn explains_a_synthetic_subject() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let config = write_config(
        dir.path(),
        "explain.toml",
        "ukb/ecg/1000001_20205_2_0.xml",
        "",
    );
    let out = mmcl(&["explain", "--config", s(&config)]);
    assert!(out.status.success(), "explain failed: {}", stderr(&out));
    let output = dir.path().join("out");
    for name in [
        "ecg_importance.png",
        "ecg_attention.png",
        "cmr_importance.png",
    ] {
        let (w, h) = png_size(&output.join(name));
        assert!(w > 300 && h > 100, "{name} is {w}×{h}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("maps.json")).expect("maps.json"))
            .expect("valid JSON");
    let shape = |key: &str| {
        let rows = json[key].as_array().expect(key);
        (rows.len(), rows[0].as_array().expect("row").len())
    };
    assert_eq!(
        shape("ecg_importance"),
        (12, 50),
        "25 patches per lead, upsampled ×2"
    );
    assert_eq!(shape("attention"), (12, 25));
    assert_eq!(
        shape("image_importance"),
        (4, 4),
        "64 px → 2×2 feature map, upsampled ×2"
    );
    assert_eq!(json["image_shape"], serde_json::json!([3, 64, 64]));
    assert_eq!(json["ecg_window"]["samples"], 2500);
    // The figures draw the recording in mV (10 mm/mV), not the normalised model input.
    assert_eq!(json["ecg_figure_units"], "mV");
    assert!(json["similarity"].as_f64().expect("similarity").abs() <= 1.0 / 0.6 + 1e-6);
    // The segmentation beside sa.nii.gz was found (no note about its absence).
    assert!(
        !stderr(&out).contains("no segmentation"),
        "{}",
        stderr(&out)
    );

    // The output exists now: refused without --overwrite, replaced with it.
    let again = mmcl(&["explain", "--config", s(&config)]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--overwrite"), "{}", stderr(&again));
    let again = mmcl(&["explain", "--config", s(&config), "--overwrite"]);
    assert!(again.status.success(), "{}", stderr(&again));
    // Nothing but the output directory appeared beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");
}

#[test]
fn an_eight_lead_model_is_explained_on_its_leads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup_with_encoder(d, &ENCODER.replace("[1, 12, 2500]", "[1, 8, 2500]"));
    let (config, text) = edited_config(
        d,
        "eight.toml",
        "img_size = [1, 12, 2500]",
        "img_size = [1, 8, 2500]",
    );
    let out = mmcl(&["explain", "--config", s(&config)]);
    assert!(out.status.success(), "explain failed: {}", stderr(&out));
    assert!(stderr(&out).contains("I, II, V1"), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/maps.json")).expect("maps.json"))
            .expect("valid JSON");
    let rows = |key: &str| json[key].as_array().expect(key).len();
    assert_eq!((rows("ecg_importance"), rows("attention")), (8, 8));
    let (w, h) = png_size(&d.join("out/ecg_importance.png"));
    assert!(w > 300 && h > 100, "{w}×{h}");

    // Leads that do not fit the encoder are refused, naming the setting.
    let config = d.join("three.toml");
    let three = text.replace("[ecg]\n", "[ecg]\nleads = [\"I\", \"II\", \"V1\"]\n");
    assert!(three.contains("leads = "), "{three}");
    std::fs::write(&config, three).expect("config");
    assert_fails(d, &config, &["ecg.leads", "3 leads"]);
}

fn assert_fails(dir: &Path, config: &Path, words: &[&str]) {
    let output = dir.join("bad-out");
    let out = mmcl(&["explain", "--config", s(config), "--output", s(&output)]);
    assert!(!out.status.success(), "should fail");
    let err = stderr(&out);
    assert!(err.contains("error: "), "{err}");
    for w in words {
        assert!(err.contains(w), "{err:?} does not mention {w:?}");
    }
    assert!(!output.exists(), "a failed run left {}", output.display());
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let d = dir.path();

    let config = write_config(d, "missing.toml", "ukb/ecg/nobody_20205_2_0.xml", "");
    assert_fails(d, &config, &["nobody_20205_2_0.xml"]);

    let truncated = d.join("truncated_20205_2_0.xml");
    let xml = std::fs::read(d.join("ukb/ecg/1000001_20205_2_0.xml")).expect("xml");
    std::fs::write(&truncated, &xml[..xml.len() / 3]).expect("truncated");
    let config = write_config(d, "truncated.toml", "truncated_20205_2_0.xml", "");
    assert_fails(d, &config, &["truncated_20205_2_0.xml"]);

    // A two-channel image array for a three-channel model.
    let npy = d.join("image.npy");
    let values = vec![0.5f32; 2 * 64 * 64];
    std::fs::write(&npy, mmcl_core::npy::npy_f32_bytes(&[2, 64, 64], &values)).expect("npy");
    let (config, _) = edited_config(d, "channels.toml", "ukb/cmr/1000001/sa.nii.gz", "image.npy");
    assert_fails(d, &config, &["image.npy", "2 channel"]);

    // A model file that is not one.
    std::fs::write(d.join("model.safetensors"), b"not a checkpoint").expect("garbage");
    let config = write_config(d, "model.toml", "ukb/ecg/1000001_20205_2_0.xml", "");
    assert_fails(d, &config, &["model.safetensors"]);

    // A typo in the configuration.
    let config = d.join("typo.toml");
    std::fs::write(&config, "modell = \"x\"\n").expect("config");
    assert_fails(d, &config, &["typo.toml", "modell"]);
}

#[test]
fn the_example_configuration_parses() {
    let out = mmcl(&["explain", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("example.toml");
    std::fs::write(&path, &out.stdout).expect("written");
    // The example points at files that do not exist: the error must be about them, not the
    // configuration's syntax.
    let out = mmcl(&["explain", "--config", s(&path)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("1000001_20205_2_0.xml"),
        "{}",
        stderr(&out)
    );
}
