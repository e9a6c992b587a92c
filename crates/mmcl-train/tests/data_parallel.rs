//! Data-parallel MAE pre-training with the in-process thread group as the test double of the
//! MPI backend: two replicas on a global batch train the weights one process trains, only rank
//! 0 writes, and a group run resumes exactly (and only with the same group size).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;

use candle_core::Device;
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_nn::distributed::{GradSync, SingleProcess, ThreadGroup};
use mmcl_synth::{Cohort, SynthConfig, WriteOptions};
use mmcl_train::checkpoint;
use mmcl_train::{MaeTrainConfig, MaeTrainer, NoProgress};

/// Trainable weights by name, as host values.
type Weights = BTreeMap<String, Vec<f32>>;

/// 24 synthetic subjects (about 16 train, 8 val), 12×1000 ECGs and small CMR images.
fn cohort_cache(dir: &Path) -> PathBuf {
    let mut synth = SynthConfig {
        subjects: 24,
        seed: 5,
        ..SynthConfig::default()
    };
    synth.cmr.image_size = 32;
    synth.cmr.slices = 4;
    synth.cmr.frames = 3;
    let cohort_dir = dir.join("cohort");
    Cohort::new(synth)
        .expect("cohort")
        .write(&cohort_dir, WriteOptions { overwrite: true }, &|| {})
        .expect("write cohort");
    let mut build: BuildConfig = toml::from_str(
        "ecg_samples = 1000\n[cmr]\nsize = 40\n[split]\ntrain = 0.7\nval = 0.3\ntest = 0.0\n",
    )
    .expect("build config");
    build.root = cohort_dir;
    build.output = dir.join("cache");
    build_dataset(&build, &|_, _| {}).expect("build the cache");
    build.output
}

/// A tiny MAE, global batch 8, two epochs, no SimSiam term (whose BatchNorm is per replica).
fn tiny_config(cache: &Path) -> MaeTrainConfig {
    let mut cfg: MaeTrainConfig = toml::from_str(
        r#"
        max_epochs = 2
        warmup_epochs = 1
        batch_size = 8
        lr = 1e-3
        gradient_clip_val = 1.0
        loss = { cos_weight = 0.0 }
        model = { model = "mae_vit_pluto_patchX", img_size = [1, 12, 200], patch_size = [1, 50] }
        data = { threads = 1, prefetch = 1, drop_last = true }
        "#,
    )
    .expect("config");
    cfg.data.cache = cache.to_path_buf();
    cfg
}

fn weights(trainer: &MaeTrainer) -> Weights {
    trainer
        .store()
        .trainable_vars()
        .into_iter()
        .map(|(name, var)| {
            let values = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("weights");
            (name, values)
        })
        .collect()
}

/// How one replica starts: a new run in its directory, or a resume of a checkpoint.
#[derive(Clone)]
enum Start {
    New(PathBuf),
    Resume { checkpoint: PathBuf, run: PathBuf },
}

fn train(cfg: MaeTrainConfig, start: Start, epochs: usize, comm: Box<dyn GradSync>) -> Weights {
    let (mut trainer, _) = match start {
        Start::New(run) => MaeTrainer::new_in_group(cfg, &run, &Device::Cpu, comm).expect("new"),
        Start::Resume { checkpoint, run } => {
            MaeTrainer::resume_in_group(&checkpoint, None, Some(&run), &Device::Cpu, comm)
                .expect("resume")
        }
    };
    trainer.fit_until(epochs, &mut NoProgress).expect("fit");
    weights(&trainer)
}

/// Trains one replica per thread, replica `r` started by `starts[r]`; their final weights.
fn train_group(cfg: &MaeTrainConfig, starts: Vec<Start>, epochs: usize) -> Vec<Weights> {
    let replicas = ThreadGroup::new(starts.len()).expect("group");
    let handles: Vec<_> = replicas
        .into_iter()
        .zip(starts)
        .map(|(comm, start)| {
            let cfg = cfg.clone();
            thread::spawn(move || train(cfg, start, epochs, Box::new(comm)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("replica thread"))
        .collect()
}

/// The largest `max |a − b| / max |b|` over the tensors.
fn max_relative_difference(a: &Weights, b: &Weights) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            let diff = x
                .iter()
                .zip(y)
                .map(|(p, q)| f64::from((p - q).abs()))
                .fold(0.0, f64::max);
            let scale = y.iter().map(|q| f64::from(q.abs())).fold(1e-12, f64::max);
            diff / scale
        })
        .fold(0.0, f64::max)
}

/// `‖a − b‖ / ‖b‖` over all the weights together, and the tensor with the largest
/// `max |a − b| / max |b|`.
fn relative_norm_difference(a: &Weights, b: &Weights) -> (f64, String) {
    let (mut diff, mut norm, mut worst) = (0.0, 0.0, (0.0, String::new()));
    for (name, x) in a {
        let y = &b[name];
        let one = BTreeMap::from([(name.clone(), x.clone())]);
        let rel = max_relative_difference(&one, &BTreeMap::from([(name.clone(), y.clone())]));
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        for (p, q) in x.iter().zip(y) {
            diff += f64::from(p - q).powi(2);
            norm += f64::from(*q).powi(2);
        }
    }
    ((diff / norm).sqrt(), worst.1)
}

fn assert_bit_equal(a: &Weights, b: &Weights, what: &str) {
    assert_eq!(a.len(), b.len());
    for (name, x) in a {
        let same = x
            .iter()
            .zip(&b[name])
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: {name} differs");
    }
}

#[test]
fn two_replicas_train_what_one_process_trains_and_resume_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let cfg = tiny_config(&cache);
    let run = |name: &str| tmp.path().join(name);

    // (a) One process on the global batch.
    let single = train(
        cfg.clone(),
        Start::New(run("single")),
        2,
        Box::new(SingleProcess),
    );

    // (b) Two replicas; rank 1 is given a directory of its own, which must stay unwritten.
    let group = train_group(
        &cfg,
        vec![Start::New(run("group-0")), Start::New(run("group-1"))],
        2,
    );
    assert_bit_equal(&group[0], &group[1], "replicas");
    // Equal up to rounding: the replicas sum their shares in another order than one process.
    // Adam divides each gradient by its own magnitude, which turns the rounding noise of a
    // gradient that is zero in exact arithmetic — the attention key biases, to which softmax is
    // invariant — into steps of ±lr; those tensors are held to the whole model's bound only.
    let (norm_rel, worst) = relative_norm_difference(&group[0], &single);
    let exact_gradient = |w: &Weights| -> Weights {
        w.iter()
            .filter(|(name, _)| !name.ends_with("attn.qkv.bias"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    let rel = max_relative_difference(&exact_gradient(&group[0]), &exact_gradient(&single));
    eprintln!(
        "two replicas vs one process: relative norm of the weight difference {norm_rel:.3e} \
         (largest per-tensor max-relative difference in {worst}); max relative difference \
         outside the attention qkv biases {rel:.3e}"
    );
    assert!(
        norm_rel < 1e-5,
        "relative norm of the difference {norm_rel:.3e}"
    );
    assert!(rel < 1e-5, "max relative difference {rel:.3e}");
    let (moved, _) = relative_norm_difference(&group[0], &{
        let (t, _) = MaeTrainer::new(cfg.clone(), &run("init"), &Device::Cpu).expect("init");
        weights(&t)
    });
    eprintln!("training moved the weights by {moved:.3e} (relative norm)");
    assert!(
        moved > 1e-4,
        "training did not move the weights: {moved:.3e}"
    );
    for f in ["config.toml", "metrics.jsonl", "metrics.csv"] {
        assert!(run("group-0").join(f).is_file(), "{f} missing");
    }
    assert!(checkpoint::last_dir(&run("group-0")).is_dir());
    assert!(!run("group-1").exists(), "rank 1 wrote its run directory");
    let state =
        checkpoint::TrainState::read(&checkpoint::last_dir(&run("group-0"))).expect("state");
    assert_eq!(state.world_size, 2);

    // (c) One epoch in a group, then a fresh group resumes for the second.
    let _ = train_group(
        &cfg,
        vec![Start::New(run("resume-0")), Start::New(run("resume-1"))],
        1,
    );
    let ckpt = run("resume-0");
    let resumed = train_group(
        &cfg,
        vec![
            Start::Resume {
                checkpoint: ckpt.clone(),
                run: ckpt.clone(),
            },
            Start::Resume {
                checkpoint: ckpt.clone(),
                run: run("resume-1"),
            },
        ],
        2,
    );
    assert_bit_equal(&resumed[0], &group[0], "resumed group run");
    assert_bit_equal(&resumed[1], &group[0], "resumed group run, rank 1");
    assert!(!run("resume-1").exists(), "rank 1 wrote its run directory");

    // A world-2 checkpoint does not resume in one process.
    let err = MaeTrainer::resume(&ckpt, None, None, &Device::Cpu).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("2 data-parallel") && text.contains("has 1"),
        "{text}"
    );
}

#[test]
fn with_the_simsiam_term_replicas_stay_identical_and_uneven_batches_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let mut cfg = tiny_config(&cache);
    cfg.loss.cos_weight = 0.1;
    let group = train_group(
        &cfg,
        vec![
            Start::New(tmp.path().join("cos-0")),
            Start::New(tmp.path().join("cos-1")),
        ],
        1,
    );
    assert_bit_equal(&group[0], &group[1], "replicas with the SimSiam term");

    // A global batch of 9 does not split over two replicas: every replica refuses to start.
    let mut uneven = tiny_config(&cache);
    uneven.batch_size = 9;
    let replicas = ThreadGroup::new(2).expect("group");
    for (rank, comm) in replicas.into_iter().enumerate() {
        let run = tmp.path().join(format!("uneven-{rank}"));
        let err = MaeTrainer::new_in_group(uneven.clone(), &run, &Device::Cpu, Box::new(comm))
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("batch_size 9") && text.contains("2 data-parallel"),
            "{text}"
        );
        assert!(!run.exists());
    }
}
