//! `mmcl pretrain-mmcl` end to end: synthetic cohort → dataset cache → one epoch → the exported
//! encoders embed through `embed-ecg` / `embed-cmr` → resume for a second epoch; bad
//! configurations fail clearly and leave nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{mmcl, read_npy, run_with_config, s, stderr, write_npy_f32};
use mmcl_train::Trainer;
use mmcl_train::mae::MaeStage;

fn read_npy_shape(path: &Path) -> Vec<u64> {
    read_npy(path).0
}

/// A temporary folder holding a synthetic cohort and its cache at `cache`, 70 % train and 30 %
/// validation.
fn temp_cohort_and_cache(subjects: usize, seed: u64) -> tempfile::TempDir {
    common::temp_cohort_and_cache(subjects, seed, [0.7, 0.3, 0.0])
}

/// Runs `command` (`pretrain-mmcl`, `pretrain-mae`) with the configuration `text` written to
/// `root/name` into `root/run` and checks that it succeeds and prints its configuration;
/// returns the configuration's path, the run directory and the command's output.
fn first_run(root: &Path, command: &str, name: &str, text: &str) -> (PathBuf, PathBuf, Output) {
    let (config, run, out) = run_with_config(root, command, name, text, "run", &[]);
    assert!(out.status.success(), "{command}: {}", stderr(&out));
    assert!(stderr(&out).contains("configuration:"), "{}", stderr(&out));
    (config, run, out)
}

/// Embeds `values` (ECGs of 12×500) with the exported ECG encoder `encoder` through
/// `mmcl embed-ecg` and `extra` arguments; returns the embeddings' file.
fn embed_with_exported_encoder(
    root: &Path,
    encoder: &Path,
    values: &[f32],
    output: &str,
    extra: &[&str],
) -> PathBuf {
    let ecg_config = root.join("ecg.json");
    std::fs::write(
        &ecg_config,
        r#"{"model": "vit_pluto_patchX", "img_size": [1, 12, 500], "patch_size": [1, 100],
            "global_pool": true}"#,
    )
    .expect("write");
    let ecgs = root.join("ecgs.npy");
    write_npy_f32(&ecgs, &[(values.len() / 6000) as u64, 12, 500], values);
    let z = root.join(output);
    let mut args = vec![
        "embed-ecg",
        "--checkpoint",
        s(encoder),
        "--config",
        s(&ecg_config),
        "--input",
        s(&ecgs),
        "--output",
        s(&z),
    ];
    args.extend_from_slice(extra);
    let out = mmcl(&args);
    assert!(out.status.success(), "embed-ecg: {}", stderr(&out));
    z
}

/// Resumes the run `run` of `command` (`pretrain-mmcl`, `pretrain-mae`) with `config` run for
/// two epochs instead of one; returns the checkpoint's `state.json`.
fn resume_for_a_second_epoch(command: &str, run: &Path, config: &Path, text: &str) -> String {
    std::fs::write(config, text.replace("max_epochs = 1", "max_epochs = 2")).expect("write");
    let out = mmcl(&[command, "--resume", s(run), "--config", s(config)]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert!(stderr(&out).contains("resumed from"), "{}", stderr(&out));
    std::fs::read_to_string(run.join("checkpoints/last/state.json")).expect("state")
}

/// One epoch of the small multimodal model on the cache.
fn train_config() -> String {
    common::one_epoch_small_mmcl_toml("", "threads = 2\n", "")
}

#[test]
fn pretrain_mmcl_trains_exports_and_resumes() {
    let tmp = temp_cohort_and_cache(12, 3);
    let root = tmp.path();

    let (config, run, _) = first_run(root, "pretrain-mmcl", "train.toml", &train_config());
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
    let values: Vec<f32> = (0..2 * 12 * 500).map(|i| (i as f32 * 0.01).sin()).collect();
    let z = embed_with_exported_encoder(
        root,
        &last.join("ecg_encoder.safetensors"),
        &values,
        "z_ecg.npy",
        &["--pooling", "global"],
    );
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
    let state = resume_for_a_second_epoch(
        "pretrain-mmcl",
        &run,
        &root.join("train2.toml"),
        &train_config(),
    );
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
        let (_, run, out) = run_with_config(root, "pretrain-mmcl", name, text, "run", &[]);
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

/// `mmcl <command> --print-config` prints a configuration that reads back as the defaults `C`
/// and holds each of `needles` (the paper's values).
fn assert_printed_defaults<C>(command: &str, needles: &[&str])
where
    C: serde::de::DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let out = mmcl(&[command, "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cfg: C = toml::from_str(&text).expect("the printout parses");
    assert_eq!(cfg, C::default());
    for needle in needles {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}

#[test]
fn printed_defaults_are_the_paper_and_read_back() {
    assert_printed_defaults::<mmcl_train::MmclConfig>(
        "pretrain-mmcl",
        &[
            "lr = 0.003",
            "temperature = 0.1",
            "batch_size = 256",
            "max_epochs = 300",
        ],
    );
}

/// One epoch of the small MAE on the cache.
fn mae_config() -> String {
    format!(
        "max_epochs = 1\nwarmup_epochs = 0\nbatch_size = 4\nlr = 1e-3\n\n{}",
        common::SMALL_MAE_TOML
    )
}

#[test]
fn pretrain_mae_trains_exports_and_resumes() {
    let tmp = temp_cohort_and_cache(10, 5);
    let root = tmp.path();

    let (_, run, out) = first_run(root, "pretrain-mae", "mae.toml", &mae_config());
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
    let values: Vec<f32> = (0..3 * 12 * 500).map(|i| (i as f32 * 0.02).cos()).collect();
    let z = embed_with_exported_encoder(root, &encoder, &values, "z.npy", &[]);
    assert_eq!(read_npy_shape(&z)[0], 3);

    // Resume with one more epoch.
    let state =
        resume_for_a_second_epoch("pretrain-mae", &run, &root.join("mae2.toml"), &mae_config());
    assert!(
        state.contains("\"epoch\": 2") && state.contains("\"mae\""),
        "{state}"
    );

    // Mistakes fail clearly and leave nothing behind.
    let typo = "mask_ration = 0.5\n";
    let (_, other, out) = run_with_config(root, "pretrain-mae", "typo.toml", typo, "other", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mask_ration"), "{}", stderr(&out));
    assert!(!other.join("checkpoints").exists());
    let out = mmcl(&["pretrain-mmcl", "--resume", s(&run)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("MAE trainer"), "{}", stderr(&out));
}

#[test]
fn printed_mae_defaults_are_the_paper_and_read_back() {
    assert_printed_defaults::<mmcl_train::MaeTrainConfig>(
        "pretrain-mae",
        &[
            "weight_decay = 0.15",
            "mask_ratio = 0.8",
            "mae_vit_tiny_patchX",
        ],
    );
}

/// Started by a launcher as one of several processes, the training commands refuse before
/// reading or writing anything — the trainers in a build without the MPI backend, the
/// reproduction always (it does not train data-parallel) — and `mmcl info` says why.
#[test]
fn training_as_one_of_several_launched_processes_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let config = dir.path().join("missing.toml");
    for command in ["pretrain-mae", "pretrain-mmcl", "finetune", "reproduce"] {
        let mut args = vec![command, "--config", s(&config), "--output", s(&run)];
        if command == "reproduce" {
            args = vec![command, "--output", s(&run)];
        }
        let out = common::mmcl_command()
            .env("OMPI_COMM_WORLD_RANK", "1")
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .args(&args)
            .output()
            .expect("the mmcl binary runs");
        assert!(!out.status.success(), "{command} trained as rank 1 of 2");
        let err = stderr(&out);
        assert!(err.contains("rank 1 of 2"), "{command}: {err}");
        // The trainers train data-parallel, but only with the MPI backend built in.
        if command != "reproduce" && !cfg!(feature = "mpi") {
            assert!(err.contains("--features mpi"), "{command}: {err}");
        }
        assert!(!run.exists(), "{command} wrote {}", run.display());
    }
    let info = common::mmcl_command()
        .env("PMI_RANK", "0")
        .env("PMI_SIZE", "3")
        .arg("info")
        .output()
        .expect("the mmcl binary runs");
    let text = common::stdout(&info);
    assert!(info.status.success(), "{}", stderr(&info));
    if !cfg!(feature = "mpi") {
        assert!(text.contains("rank 0 of 3"), "{text}");
        assert!(text.contains("without the mpi feature"), "{text}");
    }
}

#[test]
fn precision_flag_replaces_the_configured_precision() {
    let tmp = temp_cohort_and_cache(10, 6);
    let root = tmp.path();
    let bf16 = ["--precision", "bf16"];
    let (config, run, out) = run_with_config(
        root,
        "pretrain-mae",
        "mae.toml",
        &mae_config(),
        "run",
        &bf16,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = std::fs::read_to_string(run.join("config.toml")).expect("config");
    assert!(saved.contains("precision = \"bf16\""), "{saved}");

    let state = || std::fs::read_to_string(run.join("checkpoints/last/state.json")).expect("state");
    assert!(state().contains("\"precision\": \"bf16\""), "{}", state());

    // A resumed run takes the flag over its configuration file's precision (f32 by default)...
    let two_epochs = root.join("mae2.toml");
    std::fs::write(
        &two_epochs,
        mae_config().replace("max_epochs = 1", "max_epochs = 2"),
    )
    .expect("write");
    let out = mmcl(&[
        "pretrain-mae",
        "--resume",
        s(&run),
        "--config",
        s(&two_epochs),
        "--precision",
        "bf16",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(state().contains("\"epoch\": 2"), "{}", state());
    assert!(state().contains("\"precision\": \"bf16\""), "{}", state());
    // ... and, without a file, over the saved configuration, which is read back whole.
    let saved = Trainer::<MaeStage>::saved_config(&run).expect("saved configuration");
    assert_eq!((saved.max_epochs, saved.batch_size), (2, 4));
    let out = mmcl(&["pretrain-mae", "--resume", s(&run), "--precision", "f32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resumed from"), "{}", stderr(&out));

    for (args, needle) in [
        (
            vec!["pretrain-mae", "--precision", "bf16"],
            "--config is required",
        ),
        (
            vec!["pretrain-mae", "--config", s(&config), "--precision", "fp8"],
            "unknown precision",
        ),
    ] {
        let out = mmcl(&args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
}
