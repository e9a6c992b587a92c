//! `mmcl pretrain-mmcl` end to end: synthetic cohort → dataset cache → one epoch → the exported
//! encoders embed through `embed-ecg` / `embed-cmr` → resume for a second epoch; bad
//! configurations fail clearly and leave nothing behind.

use std::path::Path;
use std::process::{Command, Output};

fn mmcl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmcl"))
        .args(args)
        .output()
        .expect("run mmcl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write_npy_f32(path: &Path, dims: &[u64], values: &[f32]) {
    use npyz::WriterBuilder;
    let mut out = npyz::WriteOptions::new()
        .default_dtype()
        .shape(dims)
        .writer(std::fs::File::create(path).expect("create"))
        .begin_nd()
        .expect("npy");
    out.extend(values.iter().copied()).expect("write");
    out.finish().expect("finish");
}

fn read_npy_shape(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("read");
    npyz::NpyFile::new(&bytes[..])
        .expect("npy")
        .shape()
        .to_vec()
}

const TRAIN_CONFIG: &str = r#"
max_epochs = 1
warmup_epochs = 0
batch_size = 4
embedding_dim = 32
projection_dim = 16

[data]
cache = "cache"
threads = 2

[imaging]
model = "resnet18"
img_size = 32
augment = { size = 32 }

[ecg]
model = "vit_pluto_patchX"
input_size = [1, 12, 500]
patch_size = [1, 100]
"#;

#[test]
fn pretrain_mmcl_trains_exports_and_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let cohort = root.join("cohort");
    let out = mmcl(&[
        "synth",
        "--out",
        s(&cohort),
        "--subjects",
        "12",
        "--seed",
        "3",
        "--image-size",
        "32",
        "--slices",
        "4",
        "--frames",
        "3",
        "--threads",
        "2",
    ]);
    assert!(out.status.success(), "synth: {}", stderr(&out));
    std::fs::write(
        root.join("build.toml"),
        "root = \"cohort\"\noutput = \"cache\"\necg_samples = 1000\n\
         [cmr]\nsize = 40\n[split]\ntrain = 0.7\nval = 0.3\ntest = 0.0\n",
    )
    .expect("write");
    let out = mmcl(&["build-dataset", "--config", s(&root.join("build.toml"))]);
    assert!(out.status.success(), "build-dataset: {}", stderr(&out));

    let config = root.join("train.toml");
    std::fs::write(&config, TRAIN_CONFIG).expect("write");
    let run = root.join("run");
    let out = mmcl(&["pretrain-mmcl", "--config", s(&config), "--output", s(&run)]);
    assert!(out.status.success(), "pretrain-mmcl: {}", stderr(&out));
    assert!(stderr(&out).contains("configuration:"), "{}", stderr(&out));
    let last = run.join("checkpoints/last");
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "classifier_optimizer.safetensors",
        "state.json",
        "ecg_encoder.safetensors",
        "image_encoder.safetensors",
    ] {
        assert!(last.join(f).is_file(), "{f} missing");
    }
    assert!(run.join("config.toml").is_file() && run.join("metrics.csv").is_file());

    // The exported ECG encoder embeds through embed-ecg.
    let ecg_config = root.join("ecg.json");
    std::fs::write(
        &ecg_config,
        r#"{"model": "vit_pluto_patchX", "img_size": [1, 12, 500], "patch_size": [1, 100],
            "global_pool": true}"#,
    )
    .expect("write");
    let ecgs = root.join("ecgs.npy");
    let values: Vec<f32> = (0..2 * 12 * 500).map(|i| (i as f32 * 0.01).sin()).collect();
    write_npy_f32(&ecgs, &[2, 12, 500], &values);
    let z = root.join("z_ecg.npy");
    let out = mmcl(&[
        "embed-ecg",
        "--checkpoint",
        s(&last.join("ecg_encoder.safetensors")),
        "--config",
        s(&ecg_config),
        "--input",
        s(&ecgs),
        "--output",
        s(&z),
        "--pooling",
        "global",
    ]);
    assert!(out.status.success(), "embed-ecg: {}", stderr(&out));
    assert_eq!(read_npy_shape(&z), vec![2, 256]);

    // The exported image encoder embeds through embed-cmr.
    let images = root.join("images.npy");
    let values: Vec<f32> = (0..2 * 3 * 32 * 32).map(|i| (i % 7) as f32 / 7.0).collect();
    write_npy_f32(&images, &[2, 3, 32, 32], &values);
    let zc = root.join("z_cmr.npy");
    let out = mmcl(&[
        "embed-cmr",
        "--checkpoint",
        s(&last.join("image_encoder.safetensors")),
        "--arch",
        "resnet18",
        "--input",
        s(&images),
        "--output",
        s(&zc),
    ]);
    assert!(out.status.success(), "embed-cmr: {}", stderr(&out));
    assert_eq!(read_npy_shape(&zc), vec![2, 512]);

    // Resume with a longer schedule: one more epoch.
    let longer = root.join("train2.toml");
    std::fs::write(
        &longer,
        TRAIN_CONFIG.replace("max_epochs = 1", "max_epochs = 2"),
    )
    .expect("write");
    let out = mmcl(&["pretrain-mmcl", "--resume", s(&run), "--config", s(&longer)]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert!(stderr(&out).contains("resumed from"), "{}", stderr(&out));
    let state = std::fs::read_to_string(last.join("state.json")).expect("state");
    assert!(state.contains("\"epoch\": 2"), "{state}");

    // A new run into the same directory is refused.
    let out = mmcl(&["pretrain-mmcl", "--config", s(&config), "--output", s(&run)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a checkpoint"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_configurations_fail_naming_the_problem() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let run = root.join("run");
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "typo.toml",
            "learning_rate = 0.1\n",
            &["typo.toml", "learning_rate"],
        ),
        (
            "range.toml",
            "temperature = -1.0\n",
            &["range.toml", "temperature"],
        ),
        (
            "nocache.toml",
            "[data]\ncache = \"missing\"\n",
            &["missing"],
        ),
        ("bad.yaml", "lr: 1\n", &["bad.yaml", ".json or .toml"]),
    ];
    for (name, text, needles) in cases {
        let path = root.join(name);
        std::fs::write(&path, text).expect("write");
        let out = mmcl(&["pretrain-mmcl", "--config", s(&path), "--output", s(&run)]);
        assert!(!out.status.success(), "{name} should fail");
        let err = stderr(&out);
        for needle in needles {
            assert!(err.contains(needle), "{name}: {needle:?} not in {err}");
        }
        assert!(
            !run.join("checkpoints").exists(),
            "{name} left a checkpoint"
        );
    }
    let out = mmcl(&["pretrain-mmcl", "--resume", s(&root.join("nothing"))]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nothing"), "{}", stderr(&out));
}

#[test]
fn printed_defaults_are_the_paper_and_read_back() {
    let out = mmcl(&["pretrain-mmcl", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cfg: mmcl_train::MmclConfig = toml::from_str(&text).expect("the printout parses");
    assert_eq!(cfg, mmcl_train::MmclConfig::default());
    for needle in [
        "lr = 0.003",
        "temperature = 0.1",
        "batch_size = 256",
        "max_epochs = 300",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}

const MAE_CONFIG: &str = r#"
max_epochs = 1
warmup_epochs = 0
batch_size = 4
lr = 1e-3

[model]
model = "mae_vit_pluto_patchX"
img_size = [1, 12, 500]
patch_size = [1, 100]

[data]
cache = "cache"
threads = 2
"#;

#[test]
fn pretrain_mae_trains_exports_and_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let cohort = root.join("cohort");
    let out = mmcl(&[
        "synth",
        "--out",
        s(&cohort),
        "--subjects",
        "10",
        "--seed",
        "5",
        "--image-size",
        "32",
        "--slices",
        "4",
        "--frames",
        "3",
        "--threads",
        "2",
    ]);
    assert!(out.status.success(), "synth: {}", stderr(&out));
    std::fs::write(
        root.join("build.toml"),
        "root = \"cohort\"\noutput = \"cache\"\necg_samples = 1000\n\
         [cmr]\nsize = 40\n[split]\ntrain = 0.7\nval = 0.3\ntest = 0.0\n",
    )
    .expect("write");
    let out = mmcl(&["build-dataset", "--config", s(&root.join("build.toml"))]);
    assert!(out.status.success(), "build-dataset: {}", stderr(&out));

    let config = root.join("mae.toml");
    std::fs::write(&config, MAE_CONFIG).expect("write");
    let run = root.join("run");
    let out = mmcl(&["pretrain-mae", "--config", s(&config), "--output", s(&run)]);
    assert!(out.status.success(), "pretrain-mae: {}", stderr(&out));
    assert!(stderr(&out).contains("configuration:"), "{}", stderr(&out));
    let encoder = run.join("checkpoints/last/ecg_encoder.safetensors");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(s(&encoder)),
        "the encoder path is not announced"
    );
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        assert!(
            run.join("checkpoints/last").join(f).is_file(),
            "{f} missing"
        );
    }
    assert!(run.join("config.toml").is_file() && run.join("metrics.csv").is_file());

    // The exported encoder embeds through embed-ecg (released layout: no fc_norm).
    let ecg_config = root.join("ecg.json");
    std::fs::write(
        &ecg_config,
        r#"{"model": "vit_pluto_patchX", "img_size": [1, 12, 500], "patch_size": [1, 100],
            "global_pool": true}"#,
    )
    .expect("write");
    let ecgs = root.join("ecgs.npy");
    let values: Vec<f32> = (0..3 * 12 * 500).map(|i| (i as f32 * 0.02).cos()).collect();
    write_npy_f32(&ecgs, &[3, 12, 500], &values);
    let z = root.join("z.npy");
    let out = mmcl(&[
        "embed-ecg",
        "--checkpoint",
        s(&encoder),
        "--config",
        s(&ecg_config),
        "--input",
        s(&ecgs),
        "--output",
        s(&z),
    ]);
    assert!(out.status.success(), "embed-ecg: {}", stderr(&out));
    assert_eq!(read_npy_shape(&z)[0], 3);

    // Resume with one more epoch.
    let longer = root.join("mae2.toml");
    std::fs::write(
        &longer,
        MAE_CONFIG.replace("max_epochs = 1", "max_epochs = 2"),
    )
    .expect("write");
    let out = mmcl(&["pretrain-mae", "--resume", s(&run), "--config", s(&longer)]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert!(stderr(&out).contains("resumed from"), "{}", stderr(&out));
    let state = std::fs::read_to_string(run.join("checkpoints/last/state.json")).expect("state");
    assert!(
        state.contains("\"epoch\": 2") && state.contains("\"mae\""),
        "{state}"
    );

    // Mistakes fail clearly and leave nothing behind.
    let typo = root.join("typo.toml");
    std::fs::write(&typo, "mask_ration = 0.5\n").expect("write");
    let other = root.join("other");
    let out = mmcl(&["pretrain-mae", "--config", s(&typo), "--output", s(&other)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mask_ration"), "{}", stderr(&out));
    assert!(!other.join("checkpoints").exists());
    let out = mmcl(&["pretrain-mmcl", "--resume", s(&run)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("MAE trainer"), "{}", stderr(&out));
}

#[test]
fn printed_mae_defaults_are_the_paper_and_read_back() {
    let out = mmcl(&["pretrain-mae", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cfg: mmcl_train::MaeTrainConfig = toml::from_str(&text).expect("the printout parses");
    assert_eq!(cfg, mmcl_train::MaeTrainConfig::default());
    for needle in [
        "weight_decay = 0.15",
        "mask_ratio = 0.8",
        "mae_vit_tiny_patchX",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}
