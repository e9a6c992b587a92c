//! `mpirun -np 2 mmcl pretrain-mmcl` end to end (crate feature `mpi`; needs OpenMPI's
//! `mpirun`): the command a user types joins the launcher's group, only rank 0 reports and
//! writes the run, and with `sync_batch_norm` the two ranks train the weights one process
//! trains on the same global batches (trainable ResNet18 image tower, one epoch).
#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::{run_with_config, s, stderr};

/// One epoch of the small multimodal model with synchronised BatchNorm, dropping the last
/// partial batch and without drop-path (whose masks follow each rank's rows).
fn mmcl_config() -> String {
    common::one_epoch_small_mmcl_toml(
        "lr = 1e-3\ngradient_clip_val = 1.0\nsync_batch_norm = true\n",
        "threads = 1\ndrop_last = true\n",
        "drop_path = 0.0\n",
    )
}

fn last_model(run: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(run.join("checkpoints/last/model.safetensors"), &Device::Cpu)
        .expect("the run's last model")
}

#[test]
fn pretrain_mmcl_under_mpirun_trains_what_one_process_trains() {
    let tmp = common::temp_cohort_and_cache(12, 3, [0.7, 0.3, 0.0]);
    let root = tmp.path();
    let (config, single, out) = run_with_config(
        root,
        "pretrain-mmcl",
        "mmcl.toml",
        &mmcl_config(),
        "single",
        &[],
    );
    assert!(out.status.success(), "one process: {}", stderr(&out));

    let group = root.join("group");
    let out = mmcl_testutil::mpirun(2)
        .env("RAYON_NUM_THREADS", "1")
        .arg(env!("CARGO_BIN_EXE_mmcl"))
        .args([
            "pretrain-mmcl",
            "--config",
            s(&config),
            "--output",
            s(&group),
        ])
        .output()
        .expect("mpirun starts (install OpenMPI: openmpi-bin)");
    let text = stderr(&out);
    assert!(out.status.success(), "mpirun -np 2: {text}");
    assert!(text.contains("data-parallel: rank 0 of 2 (mpi)"), "{text}");
    assert!(!text.contains("rank 1 of 2"), "rank 1 reported: {text}");
    assert_eq!(
        text.matches("configuration:").count(),
        1,
        "only rank 0 prints the configuration: {text}"
    );

    let (a, b) = (last_model(&group), last_model(&single));
    assert_eq!(a.len(), b.len());
    let (mut diff, mut norm, mut moved) = (0f64, 0f64, 0f64);
    let initial = {
        // The start, from a run at learning rate 0: how far training moved the weights (two
        // runs that did not train would agree too).
        let text = mmcl_config().replace("lr = 1e-3", "lr = 0.0");
        let (_, run, out) = run_with_config(
            root,
            "pretrain-mmcl",
            "untrained.toml",
            &text,
            "untrained",
            &[],
        );
        assert!(out.status.success(), "lr 0: {}", stderr(&out));
        last_model(&run)
    };
    for (name, t) in &b {
        // Buffers are compared by the trainers' tests; the attention key biases have a zero
        // gradient in exact arithmetic, which Adam turns into steps of ±lr from rounding noise
        // (see mmcl-train's `data_parallel.rs`).
        if name.contains("running_") || name.contains("num_batches") || name.ends_with("qkv.bias") {
            continue;
        }
        let flat = |t: &Tensor| {
            t.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32")
        };
        let (x, y, z) = (flat(&a[name]), flat(t), flat(&initial[name]));
        for ((p, q), r) in x.iter().zip(&y).zip(&z) {
            diff += f64::from(p - q).powi(2);
            norm += f64::from(*q).powi(2);
            moved += f64::from(q - r).powi(2);
        }
    }
    let (rel, moved) = ((diff / norm).sqrt(), (moved / norm).sqrt());
    println!("mpirun -np 2 vs one process: relative norm {rel:.3e} (training moved {moved:.3e})");
    assert!(
        moved > 1e-4,
        "training did not move the weights: {moved:.3e}"
    );
    assert!(rel < 1e-5, "two ranks differ from one process by {rel:.3e}");
}
