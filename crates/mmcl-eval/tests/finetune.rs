//! Fine-tuning: the criteria against PyTorch and hand-computed values, gradient coverage,
//! pre-trained and fine-tuned checkpoints, and short runs on tiny caches with a planted signal
//! (the validation metric must improve on the initial model; inverted training labels must
//! trigger early stopping).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use mmcl_data::cache::{CacheWriter, EcgLayout, SubjectMeta};
use mmcl_data::tables::Split;
use mmcl_ecg::{EcgVit, EcgVitConfig};
use mmcl_eval::finetune::{FinetuneConfig, FinetuneModel, FinetuneOutcome, finetune};
use mmcl_eval::metrics::{Bootstrap, Task};
use mmcl_eval::runlog::{RunLog, RunLogWriter};
use mmcl_losses::classification::{masked_bce_with_logits, masked_mse, smoothed_cross_entropy};
use mmcl_nn::precision::{Precision, matmul_precision};
use mmcl_testutil::{Fixture, Tolerance, assert_close, flat};
use mmcl_train::{NoProgress, Progress};

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The largest element-wise `|a − b|` of two tensors of one shape; NaN if any difference is.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    flat(a)
        .iter()
        .zip(flat(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d > m || d.is_nan() { d } else { m })
}

#[test]
fn criteria_match_pytorch() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/finetune_losses.safetensors");
    let fx = Fixture::from_path(&path);
    let t = |name: &str| fx.tensor(name);
    let ones = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
    let ce = |mask: &Tensor| smoothed_cross_entropy(&t("ce_logits"), &t("ce_labels"), mask, 0.1);
    let all = ce(&ones).unwrap();
    let masked = ce(&t("ce_mask")).unwrap();
    let bce = masked_bce_with_logits(&t("bce_logits"), &t("bce_labels"), &t("bce_mask"), 0.1);
    let mse = masked_mse(&t("reg_pred"), &t("reg_target"), &t("reg_mask")).unwrap();
    for (name, got, want) in [
        ("ce_loss_all", all, "ce_loss_all"),
        ("ce_loss_masked", masked, "ce_loss_masked"),
        ("bce_loss_masked", bce.unwrap(), "bce_loss_masked"),
        ("mse_masked", mse, "mse_masked"),
    ] {
        let w = assert_close(
            name,
            &got.reshape(1).unwrap(),
            &fx.tensor(want),
            Tolerance::LOSS,
        );
        eprintln!("{name}: |Δ| {:.2e}", w.max_abs_diff);
    }
}

#[test]
fn criteria_match_hand_computed_values() {
    let cpu = Device::Cpu;
    // Logits (0, ln 3) give p = (1/4, 3/4). Label 1 smoothed by 0.1 over two classes is
    // (0.05, 0.95): loss = −0.05·ln ¼ − 0.95·ln ¾. Label 0: −0.95·ln ¼ − 0.05·ln ¾.
    let logits = Tensor::new(&[[0f32, 3f32.ln()], [0.0, 3f32.ln()]], &cpu).unwrap();
    let labels = Tensor::new(&[1f32, 0.0], &cpu).unwrap();
    let l1 = -0.05 * 0.25f64.ln() - 0.95 * 0.75f64.ln();
    let l0 = -0.95 * 0.25f64.ln() - 0.05 * 0.75f64.ln();
    let both = Tensor::new(&[1f32, 1.0], &cpu).unwrap();
    let first = Tensor::new(&[1f32, 0.0], &cpu).unwrap();
    let got = scalar(&smoothed_cross_entropy(&logits, &labels, &both, 0.1).unwrap());
    assert!((got - (l1 + l0) / 2.0).abs() < 1e-6, "{got}");
    let got = scalar(&smoothed_cross_entropy(&logits, &labels, &first, 0.1).unwrap());
    assert!(
        (got - l1).abs() < 1e-6,
        "a masked row is left out of the mean: {got}"
    );
    // Without smoothing it is the plain cross-entropy −ln ¾.
    let got = scalar(&smoothed_cross_entropy(&logits, &labels, &first, 0.0).unwrap());
    assert!((got + 0.75f64.ln()).abs() < 1e-6);

    // The same binary problem through one logit z = ln 3 (σ(z) = ¾) gives the same loss:
    // two-class softmax cross-entropy equals BCE on the logit difference.
    let z = Tensor::new(&[[3f32.ln()]], &cpu).unwrap();
    let y = Tensor::new(&[[1f32]], &cpu).unwrap();
    let m = Tensor::new(&[[1f32]], &cpu).unwrap();
    let got = scalar(&masked_bce_with_logits(&z, &y, &m, 0.1).unwrap());
    assert!((got - l1).abs() < 1e-6, "{got} vs {l1}");
    // Large logits stay finite.
    let z = Tensor::new(&[[200f32, -200.0]], &cpu).unwrap();
    let y = Tensor::new(&[[0f32, 1.0]], &cpu).unwrap();
    let m = Tensor::new(&[[1f32, 1.0]], &cpu).unwrap();
    let got = scalar(&masked_bce_with_logits(&z, &y, &m, 0.0).unwrap());
    assert!((got - 200.0).abs() < 1e-3, "{got}");

    // Masked MSE: errors 1 and 3 where present, a huge error where missing.
    let pred = Tensor::new(&[[1f32, 5.0], [0.0, 100.0]], &cpu).unwrap();
    let target = Tensor::new(&[[0f32, 2.0], [0.0, 0.0]], &cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1.0], [1.0, 0.0]], &cpu).unwrap();
    let got = scalar(&masked_mse(&pred, &target, &mask).unwrap());
    assert!((got - (1.0 + 9.0 + 0.0) / 3.0).abs() < 1e-6, "{got}");
    // Nothing present: 0, not NaN.
    let none = Tensor::zeros((2, 2), DType::F32, &cpu).unwrap();
    assert_eq!(scalar(&masked_mse(&pred, &target, &none).unwrap()), 0.0);
    // Shapes are checked.
    assert!(masked_mse(&pred, &labels, &mask).is_err());
}

const ENCODER: &str = r#"{"img_size": [1, 12, 200], "patch_size": [1, 50], "embed_dim": 32,
    "depth": 2, "num_heads": 4, "attention_pool": true, "drop_path_rate": 0.2}"#;

fn encoder() -> EcgVitConfig {
    serde_json::from_str(ENCODER).unwrap()
}

#[test]
fn every_parameter_receives_a_gradient() {
    let model = FinetuneModel::new(&encoder(), 3, 0.01, true, 1, &Device::Cpu).unwrap();
    assert_eq!(model.unused_parameters(), vec!["norm.bias", "norm.weight"]);
    let x = mmcl_testutil::seeded_randn(1, &[4, 1, 12, 200]);
    let logits = model.forward_t(&x, true).unwrap();
    assert_eq!(logits.dims(), &[4, 3]);
    let targets = Tensor::new(&[[1f32, 0.0, 1.0]; 4], &Device::Cpu).unwrap();
    let mask = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
    let loss = masked_bce_with_logits(&logits, &targets, &mask, 0.1).unwrap();
    let failing = model
        .store()
        .vars_without_gradient(&loss, &["norm.*"])
        .unwrap();
    assert!(failing.is_empty(), "no gradient: {failing:?}");
    // The saved model has the reference's keys and no unused norm.
    let state = model.state_dict().unwrap();
    for key in [
        "attention_pool.in_proj_weight",
        "attention_pool.out_proj.weight",
        "fc_norm.weight",
        "head.weight",
        "head.bias",
        "blocks.1.mlp.fc2.weight",
    ] {
        assert!(state.contains(key), "{key}");
    }
    assert!(!state.contains("norm.weight"));
    assert_eq!(state.get("head.weight").unwrap().dims(), &[3, 32]);
}

#[test]
fn pretrained_and_finetuned_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    // A pre-trained encoder with global pooling and no attention pool (as MAE / MMCL give).
    let mut pre_cfg = encoder();
    pre_cfg.attention_pool = false;
    pre_cfg.global_pool = true;
    let (_, pre_store) = EcgVit::from_seed(&pre_cfg, 42, &Device::Cpu).unwrap();
    let pre_path = dir.path().join("pretrained.safetensors");
    mmcl_ecg::checkpoint::encoder_state_dict(&pre_store)
        .unwrap()
        .add_prefix("model.")
        .write_safetensors(&pre_path, None)
        .unwrap();

    let model = FinetuneModel::new(&encoder(), 2, 0.01, true, 5, &Device::Cpu).unwrap();
    let head_before = model
        .store()
        .get("head.weight")
        .unwrap()
        .as_tensor()
        .copy()
        .unwrap();
    let summary = model.load_pretrained(&pre_path).unwrap();
    assert!(
        summary
            .report
            .missing
            .iter()
            .any(|k| k.starts_with("attention_pool")),
        "{summary}"
    );
    let loaded = model.store().get("blocks.0.attn.qkv.weight").unwrap();
    let original = pre_store.get("blocks.0.attn.qkv.weight").unwrap();
    assert_eq!(max_abs_diff(loaded.as_tensor(), original.as_tensor()), 0.0);
    let head_after = model.store().get("head.weight").unwrap();
    assert_eq!(
        max_abs_diff(head_after.as_tensor(), &head_before),
        0.0,
        "the head is drawn from the seed, before and after loading"
    );

    // Save the fine-tuning model, load it strictly into a fresh one: same logits.
    let ft_path = dir.path().join("finetuned.safetensors");
    model
        .state_dict()
        .unwrap()
        .write_safetensors(&ft_path, None)
        .unwrap();
    let other = FinetuneModel::new(&encoder(), 2, 0.01, true, 99, &Device::Cpu).unwrap();
    other.load_finetuned(&ft_path).unwrap();
    let x = mmcl_testutil::seeded_randn(2, &[3, 1, 12, 200]);
    let a = model.forward_t(&x, false).unwrap();
    let b = other.forward_t(&x, false).unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-6, "{diff}");
    // A pre-trained encoder is not a fine-tuned model.
    let err = other.load_finetuned(&pre_path).unwrap_err().to_string();
    assert!(err.contains("pretrained.safetensors"), "{err}");
}

/// A tiny cache: 12 × 300 ECGs, the label `y` planted as a 10 Hz oscillation on leads II and V2,
/// a phenotype proportional to the amplitude of lead V5, a second phenotype partly missing.
/// `invert_train` flips the training labels. The cache lies in a fresh temporary folder,
/// returned with it (the tests put their other files there too).
fn tiny_cache(invert_train: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join(if invert_train { "inverted" } else { "cache" });
    let layout = EcgLayout {
        leads: 12,
        samples: 300,
        sample_rate: 100.0,
    };
    let mut writer = CacheWriter::create(&path, Some(layout), None, 64, true).unwrap();
    let mut state = 12345u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for i in 0..144u64 {
        let split = match i % 6 {
            0 => Split::Val,
            1 => Split::Test,
            _ => Split::Train,
        };
        let y = (uniform() < 0.5) as u8;
        let second = (uniform() < 0.4) as u8;
        let a = uniform();
        let mut ecg = vec![0f32; 12 * 300];
        for (k, v) in ecg.iter_mut().enumerate() {
            let (lead, t) = (k / 300, k % 300);
            let mut x = (uniform() - 0.5) * 1.0;
            if y == 1 && (lead == 1 || lead == 7) {
                x += 1.2 * (t as f64 * 2.0 * std::f64::consts::PI / 10.0).sin();
            }
            if second == 1 && lead == 3 {
                x += 1.0;
            }
            if lead == 10 {
                x += 2.0 * a * (t as f64 * 2.0 * std::f64::consts::PI / 25.0).sin();
            }
            *v = x as f32;
        }
        let label = if invert_train && split == Split::Train {
            1 - y
        } else {
            y
        };
        let missing = i % 5 == 0;
        writer
            .push(
                SubjectMeta {
                    eid: 1000 + i,
                    split,
                    labels: vec![Some(label), Some(second)],
                    phenotypes: vec![
                        60.0 + 40.0 * a,
                        if missing { f64::NAN } else { 3.0 * a + 1.0 },
                    ],
                },
                Some(&ecg),
                None,
            )
            .unwrap();
    }
    writer
        .finish(
            vec!["CAD".into(), "AF".into()],
            vec!["LVEDV".into(), "LVEF".into()],
            serde_json::json!({}),
            serde_json::json!({}),
        )
        .unwrap();
    (dir, path)
}

fn quick_config(cache: PathBuf, task: Task, targets: &[&str]) -> FinetuneConfig {
    FinetuneConfig {
        cache,
        encoder: encoder(),
        task,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        epochs: 6,
        batch_size: 16,
        lr: Some(1e-3),
        warmup_epochs: 1,
        early_stopping: false,
        augment: None,
        loader_threads: 1,
        bootstrap: Bootstrap {
            resamples: 100,
            seed: 0,
            confidence: 0.95,
        },
        ..FinetuneConfig::default()
    }
}

/// Counts the batches of the training phases.
#[derive(Default)]
struct TrainSteps {
    training: bool,
    steps: usize,
}

impl Progress for TrainSteps {
    fn start_phase(&mut self, _epoch: usize, phase: &str, _batches: usize) {
        self.training = phase == "train";
    }

    fn batch(&mut self, _loss: f64, _samples: usize) {
        self.steps += usize::from(self.training);
    }
}

#[test]
fn a_short_run_learns_the_planted_label() {
    let (dir, cache) = tiny_cache(false);
    let mut cfg = quick_config(cache, Task::Classification, &["CAD"]);
    // A zero head makes the initial model uninformed (constant predictions, AUROC ½): a random
    // head on random features already ranks this strong signal well, which would say nothing
    // about the training.
    cfg.head_init_std = 0.0;
    let mut log = RunLogWriter::open(&dir.path().join("run")).unwrap();
    let mut steps = TrainSteps::default();
    let outcome = finetune(&cfg, &Device::Cpu, Some(&mut log), &mut steps).unwrap();
    let steps = steps.steps;
    eprintln!(
        "CAD: val AUROC {:.3} → best {:.3} at epoch {}; test {:.3}",
        outcome.initial_val_metric,
        outcome.best_val_metric,
        outcome.best_epoch,
        outcome.test.average_of("auroc").unwrap().value
    );
    assert_eq!(
        steps,
        6 * 6,
        "96 training subjects in batches of 16, six epochs"
    );
    assert_eq!(outcome.epochs_run, 6);
    assert!(!outcome.stopped_early);
    assert_eq!(outcome.initial_val_metric, 0.5);
    assert!(
        outcome.best_val_metric > 0.85,
        "no improvement: {:.3} → {:.3}",
        outcome.initial_val_metric,
        outcome.best_val_metric
    );
    let auroc = outcome.test.average_of("auroc").unwrap();
    assert!(auroc.value > 0.8, "test AUROC {:.3}", auroc.value);
    assert!(auroc.ci_low.unwrap() <= auroc.value && auroc.value <= auroc.ci_high.unwrap());
    assert_eq!(outcome.test_truth.rows(), 24);
    assert_eq!(outcome.test_eids.len(), 24);
    assert!(
        outcome
            .test_predictions
            .as_slice()
            .iter()
            .all(|p| (0.0..=1.0).contains(p))
    );
    // The best epoch's metric is the history's best.
    let best = outcome
        .history
        .iter()
        .map(|r| r.val_metric)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(best, outcome.best_val_metric);
    assert_eq!(
        outcome.model.outputs(),
        2,
        "one binary target: two logits, as the reference"
    );
    // The run log holds a train and a val line per epoch.
    let read = RunLog::read(log.path()).unwrap();
    assert_eq!(read.records.len(), 12);
    assert!(read.metric_names().contains(&"auroc".to_string()));
}

/// `precision = "bf16"` runs the matrix products in bf16: the same learning, other arithmetic,
/// and the thread's precision is f32 again afterwards.
#[test]
fn a_bf16_run_learns_as_the_f32_run_does() {
    let (_dir, cache) = tiny_cache(false);
    let run = |precision: Precision| {
        let mut cfg = quick_config(cache.clone(), Task::Classification, &["CAD"]);
        cfg.head_init_std = 0.0;
        cfg.precision = precision;
        let outcome = finetune(&cfg, &Device::Cpu, None, &mut TrainSteps::default()).unwrap();
        assert_eq!(
            matmul_precision(),
            Precision::F32,
            "the run restores the precision"
        );
        outcome
    };
    let (f32_run, bf16_run) = (run(Precision::F32), run(Precision::Bf16));
    let losses = |o: &FinetuneOutcome| o.history.iter().map(|r| r.train_loss).collect::<Vec<_>>();
    assert_ne!(losses(&f32_run), losses(&bf16_run), "bf16 changed nothing");
    for (a, b) in losses(&f32_run).iter().zip(losses(&bf16_run)) {
        assert!((a - b).abs() <= 0.05 * a.abs().max(0.1), "{a} vs {b}");
    }
    assert!(
        bf16_run.best_val_metric > 0.85,
        "{}",
        bf16_run.best_val_metric
    );
}

#[test]
fn regression_and_multi_label_runs_improve() {
    let (_dir, cache) = tiny_cache(false);
    // Regression needs outputs of the targets' scale, not just a ranking: a larger rate.
    let mut cfg = quick_config(cache.clone(), Task::Regression, &["LVEDV", "LVEF"]);
    cfg.epochs = 12;
    cfg.lr = Some(1e-2);
    let outcome = finetune(&cfg, &Device::Cpu, None, &mut NoProgress).unwrap();
    eprintln!(
        "regression: val R² {:.3} → {:.3}; test R² {:.3}",
        outcome.initial_val_metric,
        outcome.best_val_metric,
        outcome.test.average_of("r2").unwrap().value
    );
    assert!(outcome.initial_val_metric < 0.1);
    assert!(outcome.best_val_metric > 0.5);
    // Predictions are in the phenotypes' units (LVEDV 60–100), missing truth stays NaN.
    let lvedv: Vec<f64> = (0..outcome.test_predictions.rows())
        .map(|i| outcome.test_predictions.get(i, 0))
        .collect();
    let mean = lvedv.iter().sum::<f64>() / lvedv.len() as f64;
    assert!(
        (50.0..110.0).contains(&mean),
        "mean LVEDV prediction {mean}"
    );
    assert!((0..outcome.test_truth.rows()).any(|i| outcome.test_truth.get(i, 1).is_nan()));

    let mut cfg = quick_config(cache, Task::Classification, &["CAD", "AF"]);
    cfg.head_init_std = 0.0;
    let outcome = finetune(&cfg, &Device::Cpu, None, &mut NoProgress).unwrap();
    eprintln!(
        "multi-label: val AUROC {:.3} → {:.3}",
        outcome.initial_val_metric, outcome.best_val_metric
    );
    assert_eq!(outcome.model.outputs(), 2, "one logit per label");
    assert_eq!(outcome.initial_val_metric, 0.5);
    assert!(outcome.best_val_metric > 0.75);
    assert_eq!(outcome.test.targets.len(), 2);
}

#[test]
fn early_stopping_triggers_when_validation_gets_worse() {
    let (_dir, cache) = tiny_cache(true);
    let mut cfg = quick_config(cache, Task::Classification, &["CAD"]);
    cfg.epochs = 20;
    cfg.early_stopping = true;
    cfg.patience = 1;
    cfg.max_delta = 0.0;
    let outcome = finetune(&cfg, &Device::Cpu, None, &mut NoProgress).unwrap();
    let metrics: Vec<f64> = outcome.history.iter().map(|r| r.val_metric).collect();
    eprintln!("inverted labels: val AUROC per epoch {metrics:?}");
    assert!(
        outcome.stopped_early,
        "ran all {} epochs: {metrics:?}",
        outcome.epochs_run
    );
    assert!(outcome.epochs_run < 20);
    // The kept weights are the best epoch's, not the last one's.
    assert_eq!(
        outcome.best_val_metric,
        metrics.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    assert!(outcome.best_epoch < outcome.epochs_run - 1);
}

#[test]
fn bad_setups_are_clear_errors() {
    let (dir, cache) = tiny_cache(false);
    let run = |cfg: &FinetuneConfig| {
        finetune(cfg, &Device::Cpu, None, &mut NoProgress)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = run(&quick_config(cache.clone(), Task::Classification, &["HCM"]));
    assert!(err.contains("HCM") && err.contains("CAD, AF"), "{err}");
    let err = run(&quick_config(
        dir.path().join("nowhere"),
        Task::Classification,
        &[],
    ));
    assert!(err.contains("nowhere"), "{err}");
    // An encoder whose input is longer than the cached recordings.
    let mut cfg = quick_config(cache.clone(), Task::Classification, &["CAD"]);
    cfg.encoder.img_size = [1, 12, 400];
    let err = run(&cfg);
    assert!(err.contains("400"), "{err}");
    // A missing pre-trained checkpoint.
    let mut cfg = quick_config(cache, Task::Regression, &[]);
    cfg.checkpoint = Some(dir.path().join("mae.pth"));
    let err = run(&cfg);
    assert!(err.contains("mae.pth"), "{err}");
}

/// The fine-tuning model on the reference encoder's weights (shared `ecg_vit_small`) with a
/// seeded attention pool: logits as mae's `models_vit` computes them (`fc_norm` twice), and
/// with one `fc_norm` when the reference quirk is turned off.
#[test]
fn the_head_path_matches_pytorch() {
    let (Some(io), Some(weights)) = (
        Fixture::load("ecg_vit_small.io"),
        Fixture::load("ecg_vit_small.weights"),
    ) else {
        return;
    };
    let local = Fixture::from_path(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/finetune_head.safetensors"),
    );
    let cfg: EcgVitConfig = serde_json::from_str(
        r#"{"img_size": [1, 12, 500], "patch_size": [1, 50], "embed_dim": 64, "depth": 2,
            "num_heads": 4, "attention_pool": true}"#,
    )
    .unwrap();
    let mut state: mmcl_nn::StateDict = weights.tensors.clone().into_iter().collect();
    for (k, v) in &local.tensors {
        if k.starts_with("attention_pool.") {
            state.insert(k.clone(), v.clone());
        }
    }
    for (double, expected) in [(true, "logits_double_norm"), (false, "logits_single_norm")] {
        let model = FinetuneModel::new(&cfg, 3, 0.01, double, 0, &Device::Cpu).unwrap();
        model
            .store()
            .load_state_dict(&state, &mmcl_nn::LoadOptions::strict())
            .unwrap();
        let input = io.tensor("input");
        let features = model.features(&input, false).unwrap();
        let w = assert_close(
            "features",
            &features,
            &local.tensor("features"),
            Tolerance::FORWARD,
        );
        eprintln!("features: max |Δ| {:.2e}", w.max_abs_diff);
        let logits = model.forward_t(&input, false).unwrap();
        let w = assert_close(
            expected,
            &logits,
            &local.tensor(expected),
            Tolerance::FORWARD,
        );
        eprintln!("{expected}: max |Δ| {:.2e}", w.max_abs_diff);
    }
}

/// Every tensor of a state dict, flattened, by name.
fn tensors(state: &mmcl_nn::StateDict) -> Vec<(String, Vec<f32>)> {
    state
        .iter()
        .map(|(k, t)| {
            (
                k.to_string(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn three_replicas_fine_tune_what_one_process_does() {
    use mmcl_eval::finetune::finetune_in_group;
    use mmcl_nn::distributed::ThreadGroup;

    let (_dir, cache) = tiny_cache(false);
    // Regression with a partly missing target (the replicas' shares of the known values
    // differ), batches of 10 over three replicas (shares of 3, 3 and 4; the last batch of 6 in
    // shares of 2), no drop-path (its masks follow each replica's rows).
    let mut cfg = quick_config(cache, Task::Regression, &["LVEDV", "LVEF"]);
    cfg.epochs = 2;
    cfg.batch_size = 10;
    cfg.lr = Some(1e-2);
    cfg.clip_grad = Some(1.0);
    cfg.encoder.drop_path_rate = 0.0;
    let single = finetune(&cfg, &Device::Cpu, None, &mut NoProgress).unwrap();
    let handles: Vec<_> = ThreadGroup::new(3)
        .unwrap()
        .into_iter()
        .map(|comm| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                finetune_in_group(&cfg, &Device::Cpu, None, &mut NoProgress, &comm).unwrap()
            })
        })
        .collect();
    let group: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let reference = tensors(&single.model.state_dict().unwrap());
    let replicas: Vec<_> = group
        .iter()
        .map(|o| tensors(&o.model.state_dict().unwrap()))
        .collect();
    for other in &replicas[1..] {
        assert_eq!(other, &replicas[0], "the replicas differ");
    }
    // The attention biases of the keys (`qkv.bias`, the pool's `in_proj_bias`) have an exact
    // gradient of zero (softmax ignores a shift of the keys): Adam turns the rounding noise of
    // either run into steps of ±lr there, so they are held to the whole model's bound only.
    let key_bias = |name: &str| name.ends_with("qkv.bias") || name.ends_with("in_proj_bias");
    let relative = |with_key_biases: bool| -> f64 {
        let (mut diff, mut norm) = (0f64, 0f64);
        for ((name, a), (_, b)) in replicas[0].iter().zip(&reference) {
            assert_eq!(a.len(), b.len(), "{name}");
            if key_bias(name) && !with_key_biases {
                continue;
            }
            for (x, y) in a.iter().zip(b) {
                diff += f64::from(x - y).powi(2);
                norm += f64::from(*y).powi(2);
            }
        }
        (diff / norm).sqrt()
    };
    let (all, rest) = (relative(true), relative(false));
    eprintln!(
        "fine-tuning, three replicas vs one process: relative norm of the weight difference \
         {all:.3e} ({rest:.3e} without the attention key biases); val R² {:.4} vs {:.4}",
        group[0].best_val_metric, single.best_val_metric
    );
    assert!(rest < 1e-5, "relative difference {rest:.3e}");
    assert!(all < 1e-4, "relative difference {all:.3e}");
    assert!((group[0].best_val_metric - single.best_val_metric).abs() < 1e-4);
    assert_eq!(group[0].best_epoch, single.best_epoch);
}
