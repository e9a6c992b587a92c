//! What the trainer tests share (`mod common;` in each): checkpoints compared to the bit, the
//! run directory's documented layout, the checks of a run stopped by a non-finite loss, and
//! the synthetic cohort, tiny configurations and weight comparisons of the data-parallel tests,
//! and the small multimodal architecture of the parity and frozen-tower tests.

// Each test binary compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use mmcl_cmr::{ResNetArch, ResNetConfig};
use mmcl_core::runlog::RunLog;
use mmcl_data::build::{BuildConfig, build_dataset};
use mmcl_ecg::EcgVitConfig;
use mmcl_nn::StateDict;
use mmcl_nn::init::WeightInit;
use mmcl_synth::{Cohort, SynthConfig, WriteOptions};
use mmcl_testutil::tensor_bits;
use mmcl_train::checkpoint::{self, TrainState};
use mmcl_train::config::{ClassifierInit, OnlineClassifier};
use mmcl_train::{
    Error, MaeTrainConfig, MaeTrainer, MmclArchitecture, MmclConfig, MmclTrainer, NoProgress,
    Result,
};

/// What the MAE and the multimodal trainers share, on the CPU and without progress output,
/// for the checks both must pass.
pub trait Trainer: Sized {
    /// The trainer's configuration.
    type Config: Clone;
    /// A fresh run of `cfg` in `run`, and its notes.
    fn create(cfg: Self::Config, run: &Path) -> Result<(Self, Vec<String>)>;
    /// The run in `run` resumed from its last checkpoint (with `cfg` when given), and its notes.
    fn resume_from(run: &Path, cfg: Option<Self::Config>) -> Result<(Self, Vec<String>)>;
    /// Trains until the configuration's last epoch.
    fn fit_all(&mut self) -> Result<()>;
    /// Trains until `epochs` epochs are done.
    fn fit_epochs(&mut self, epochs: usize) -> Result<()>;
    /// Optimiser steps taken.
    fn steps(&self) -> u64;
}

macro_rules! impl_trainer {
    ($trainer:ty, $config:ty) => {
        impl Trainer for $trainer {
            type Config = $config;
            fn create(cfg: $config, run: &Path) -> Result<(Self, Vec<String>)> {
                <$trainer>::new(cfg, run, &Device::Cpu)
            }
            fn resume_from(run: &Path, cfg: Option<$config>) -> Result<(Self, Vec<String>)> {
                <$trainer>::resume(run, cfg, None, &Device::Cpu)
            }
            fn fit_all(&mut self) -> Result<()> {
                self.fit(&mut NoProgress)
            }
            fn fit_epochs(&mut self, epochs: usize) -> Result<()> {
                self.fit_until(epochs, &mut NoProgress)
            }
            fn steps(&self) -> u64 {
                self.steps_taken()
            }
        }
    };
}

impl_trainer!(MaeTrainer, MaeTrainConfig);
impl_trainer!(MmclTrainer, MmclConfig);

/// Trains `cfg` in `run` for one epoch, then, in a fresh trainer resumed from that checkpoint,
/// for the rest; returns the resumed trainer.
pub fn one_epoch_then_resume<T: Trainer>(cfg: T::Config, run: &Path) -> T {
    let (mut first, _) = T::create(cfg, run).expect("new");
    first.fit_epochs(1).expect("first epoch");
    drop(first);
    let (mut second, notes) = T::resume_from(run, None).expect("resume");
    assert!(notes[0].contains("after epoch 1"), "{notes:?}");
    second.fit_all().expect("second epoch");
    second
}

/// A run of `cfg` in `run` trained one epoch, then resumed with the configuration `explode`
/// makes of it (a learning rate that blows the weights up), stops at the first non-finite
/// loss and keeps the first epoch's checkpoint.
pub fn assert_non_finite_loss_stops<T: Trainer>(
    cfg: T::Config,
    run: &Path,
    explode: impl FnOnce(&mut T::Config),
) {
    let (mut trainer, _) = T::create(cfg.clone(), run).expect("new");
    trainer.fit_epochs(1).expect("first epoch");
    drop(trainer);
    let last = checkpoint::last_dir(run);
    let before = file_bytes(&last.join(checkpoint::MODEL_FILE));

    let mut exploding = cfg;
    explode(&mut exploding);
    let (mut trainer, _) = T::resume_from(run, Some(exploding)).expect("resume");
    let err = trainer.fit_all().expect_err("must stop");
    assert_stopped_at_non_finite_loss(&err, &last, &before);
}

/// The bytes of a file, panicking with its path.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tensor by tensor: names and bits.
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let (sa, sb) = (
        StateDict::read(a).expect("a"),
        StateDict::read(b).expect("b"),
    );
    let ka: Vec<&str> = sa.keys().collect();
    let kb: Vec<&str> = sb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    for (k, t) in sa.iter() {
        let u = sb.get(k).expect("present");
        assert!(
            tensor_bits(t) == tensor_bits(u),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The last checkpoints of two runs hold the same `files`, to the bit, and the same epoch,
/// step and random state; returns both states.
pub fn assert_same_last_checkpoints(
    straight: &Path,
    resumed: &Path,
    files: &[&str],
) -> (TrainState, TrainState) {
    let last = checkpoint::last_dir;
    for file in files {
        assert_same_tensors(&last(straight).join(file), &last(resumed).join(file));
    }
    let (s1, s2) = (
        TrainState::read(&last(straight)).expect("state"),
        TrainState::read(&last(resumed)).expect("state"),
    );
    assert_eq!((s1.epoch, s1.step, s1.rng), (s2.epoch, s2.step, s2.rng));
    (s1, s2)
}

/// The documented layout of a two-epoch run `straight` (configuration, logs, the best
/// checkpoint) and four log records (train and val of two epochs) in it and in `resumed`;
/// returns the log of `straight`.
pub fn assert_two_epoch_layout(straight: &Path, resumed: &Path) -> RunLog {
    for f in ["config.toml", "metrics.jsonl", "metrics.csv"] {
        assert!(straight.join(f).is_file(), "{f} missing");
    }
    assert!(
        checkpoint::checkpoints_dir(straight)
            .join("best")
            .join("model.safetensors")
            .is_file()
    );
    let log = RunLog::read(&straight.join("metrics.jsonl")).expect("log");
    assert_eq!(log.records.len(), 4);
    let resumed_log = RunLog::read(&resumed.join("metrics.jsonl")).expect("log");
    assert_eq!(resumed_log.records.len(), 4);
    log
}

/// `err` is the stop of a run at a non-finite loss in its second epoch, naming the last good
/// checkpoint `last`, which still holds the model `model_before` of the first epoch.
pub fn assert_stopped_at_non_finite_loss(err: &Error, last: &Path, model_before: &[u8]) {
    match err {
        Error::NonFiniteLoss {
            epoch, last_good, ..
        } => {
            assert_eq!(*epoch, 1);
            assert_eq!(last_good.as_deref(), Some(last));
        }
        other => panic!("expected a non-finite loss, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("non-finite") && message.contains("last good checkpoint"),
        "{message}"
    );
    assert_eq!(file_bytes(&last.join(checkpoint::MODEL_FILE)), model_before);
    assert_eq!(TrainState::read(last).expect("state").epoch, 1);
}

// ---- shared by the data-parallel tests (thread replicas and `mpirun` jobs) ----

/// Trainable weights by name, as host values.
pub type Weights = BTreeMap<String, Vec<f32>>;

/// 24 synthetic subjects (about 16 train, 8 val), 12×1000 ECGs and small CMR images.
pub fn cohort_cache(dir: &Path) -> PathBuf {
    cohort_cache_of(dir, 24, 5)
}

/// A cache in `dir/cache` of `subjects` synthetic subjects of `seed` (70 % train, 30 % val),
/// 12×1000 ECGs and 40² CMR images.
pub fn cohort_cache_of(dir: &Path, subjects: usize, seed: u64) -> PathBuf {
    let mut synth = SynthConfig {
        subjects,
        seed,
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

/// The configuration (of either trainer) that `toml` sets, the rest defaulted, reading the
/// cache `cache`: the cache path is put in the `data` table, which `toml` may also set.
pub fn config_reading<C: serde::de::DeserializeOwned>(cache: &Path, toml: &str) -> C {
    let mut table: toml::Table = toml.parse().expect("config");
    let data = table
        .entry("data")
        .or_insert_with(|| toml::Table::new().into());
    let cache = cache.to_str().expect("a UTF-8 cache path");
    data.as_table_mut()
        .expect("data is a table")
        .insert("cache".into(), cache.into());
    table.try_into().expect("config")
}

/// The small multimodal trainer of the trainer tests (ResNet18 at 32², the two-block
/// `vit_pluto_patchX` on 12×200 ECGs, heads 32 → 16), two epochs without warm-up in batches
/// of 4, two loader threads, reading `cache`.
pub fn small_mmcl_config(cache: &Path) -> MmclConfig {
    config_reading(
        cache,
        r#"
        max_epochs = 2
        warmup_epochs = 0
        batch_size = 4
        embedding_dim = 32
        projection_dim = 16
        imaging = { model = "resnet18", img_size = 32, augment = { size = 32 } }
        ecg = { model = "vit_pluto_patchX", input_size = [1, 12, 200], patch_size = [1, 50] }
        data = { threads = 2, prefetch = 1 }
        "#,
    )
}

/// What the data-parallel configurations share: global batch 8, two epochs with one of
/// warm-up, clipped gradients, one loader thread and only whole batches.
const DATA_PARALLEL_SCHEDULE: &str = r#"
        max_epochs = 2
        warmup_epochs = 1
        batch_size = 8
        lr = 1e-3
        gradient_clip_val = 1.0
        data = { threads = 1, prefetch = 1, drop_last = true }
"#;

/// A tiny MAE, global batch 8, two epochs, no SimSiam term (whose BatchNorm is per replica).
pub fn tiny_mae_config(cache: &Path) -> MaeTrainConfig {
    let model = r#"
        loss = { cos_weight = 0.0 }
        model = { model = "mae_vit_pluto_patchX", img_size = [1, 12, 200], patch_size = [1, 50] }
        "#;
    config_reading(cache, &[DATA_PARALLEL_SCHEDULE, model].concat())
}

/// A tiny multimodal model (ResNet18 at 32², the two-block `vit_pluto_patchX`), global batch 8,
/// two epochs, the online ECG classifier of CAD, no drop-path (whose masks follow each
/// replica's rows).
pub fn tiny_mmcl_config(cache: &Path, frozen_imaging: bool) -> MmclConfig {
    let model = r#"
        embedding_dim = 32
        projection_dim = 16
        imaging = { model = "resnet18", img_size = 32, augment = { size = 32 } }
        ecg = { model = "vit_pluto_patchX", input_size = [1, 12, 200], patch_size = [1, 50], drop_path = 0.0 }
        "#;
    let mut cfg: MmclConfig = config_reading(cache, &[DATA_PARALLEL_SCHEDULE, model].concat());
    cfg.imaging.frozen = frozen_imaging;
    cfg
}

/// The largest `max |a − b| / max |b|` over the tensors.
pub fn max_relative_difference(a: &Weights, b: &Weights) -> f64 {
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
pub fn relative_norm_difference(a: &Weights, b: &Weights) -> (f64, String) {
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

pub fn assert_bit_equal(a: &Weights, b: &Weights, what: &str) {
    assert_eq!(a.len(), b.len());
    for (name, x) in a {
        let same = x
            .iter()
            .zip(&b[name])
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: {name} differs");
    }
}

/// The trainable entries only (BatchNorm buffers left out).
pub fn trainable(w: &Weights) -> Weights {
    w.iter()
        .filter(|(name, _)| !mmcl_nn::params::is_buffer(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Every entry of `store` (weights and buffers), as host `f32` values.
pub fn store_tensors(store: &mmcl_nn::ParamStore) -> Weights {
    store
        .named_vars()
        .into_iter()
        .map(|(name, var)| {
            let values = var
                .as_tensor()
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("tensor");
            (name, values)
        })
        .collect()
}

/// Asserts that a data-parallel group's trainable weights equal one process's within 1e-5: the
/// relative norm of the difference, and every tensor's max-relative difference outside the
/// attention key biases. (The replicas sum their shares in another order than one process;
/// Adam divides each gradient by its own magnitude, which turns the rounding noise of a
/// gradient that is zero in exact arithmetic — the key biases, to which softmax is invariant —
/// into steps of ±lr, so those tensors are held to the whole model's bound only.)
pub fn assert_equals_one_process(group: &Weights, single: &Weights, what: &str) {
    assert_equals_one_process_within(group, single, what, 1e-5);
}

/// [`assert_equals_one_process`] with a bound of `per_tensor` on every tensor's max-relative
/// difference (the relative norm still within 1e-5): for runs in which Adam amplifies rounding
/// in more tensors with small gradients (BatchNorm shifts under `sync_batch_norm`).
pub fn assert_equals_one_process_within(
    group: &Weights,
    single: &Weights,
    what: &str,
    per_tensor: f64,
) {
    let (norm_rel, worst) = relative_norm_difference(&trainable(group), &trainable(single));
    let exact_gradient = |w: &Weights| -> Weights {
        trainable(w)
            .into_iter()
            .filter(|(name, _)| !name.ends_with("attn.qkv.bias"))
            .collect()
    };
    let rel = max_relative_difference(&exact_gradient(group), &exact_gradient(single));
    println!(
        "{what} vs one process: relative norm of the weight difference {norm_rel:.3e} (largest \
         per-tensor difference in {worst}); max relative difference outside the attention qkv \
         biases {rel:.3e}"
    );
    assert!(norm_rel < 1e-5, "{what}: relative norm {norm_rel:.3e}");
    assert!(
        rel < per_tensor,
        "{what}: max relative difference {rel:.3e}"
    );
}

// ---- the small multimodal architecture of the parity fixture (`mmcl_step_small`) ----

/// ResNet18 on 3-channel images and a one-block ViT on 1×12×200 ECGs (1×50 patches, 32 wide,
/// two heads, no drop-path), projected to 32 through a 256 hidden layer, without an online
/// classifier: the reference step's model, and a small model for any other check.
pub fn small_architecture() -> MmclArchitecture {
    MmclArchitecture {
        imaging: ResNetConfig::new(ResNetArch::ResNet18, 3),
        ecg: EcgVitConfig {
            model: None,
            img_size: [1, 12, 200],
            patch_size: [1, 50],
            embed_dim: 32,
            depth: 1,
            num_heads: 2,
            drop_path_rate: 0.0,
            num_classes: 2,
            weight_init: WeightInit::Timm,
            // mlp_ratio 4, qkv bias, no dropout, global pooling, LayerNorm eps 1e-6.
            ..EcgVitConfig::paper()
        },
        embedding_dim: 256,
        projection_dim: 32,
        classifier: OnlineClassifier::None,
        classifier_init: ClassifierInit::Kaiming,
    }
}
