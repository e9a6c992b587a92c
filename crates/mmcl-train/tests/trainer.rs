//! The multimodal trainer end to end on a tiny cache built here: run-directory layout and
//! exports, exact resumption, non-finite losses, gradient coverage.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{
    assert_non_finite_loss_stops, assert_same_last_checkpoints, assert_two_epoch_layout,
    file_bytes, one_epoch_then_resume, small_mmcl_config as tiny_config,
};
use mmcl_data::cache::{CacheWriter, EcgLayout, ImageLayout, SubjectMeta};
use mmcl_data::tables::Split;
use mmcl_nn::StateDict;
use mmcl_nn::rng::SplitMix64;
use mmcl_train::checkpoint;
use mmcl_train::mmcl::{contrastive_gradients, contrastive_loss};
use mmcl_train::{MmclArchitecture, MmclModel, MmclTrainer, NoProgress};

/// A cache of 14 subjects (10 train, 4 val): 12×400 ECGs, 3×40×40 images, a CAD label.
fn tiny_cache(dir: &Path) -> PathBuf {
    let path = dir.join("cache");
    let ecg = EcgLayout {
        leads: 12,
        samples: 400,
        sample_rate: 500.0,
    };
    let image = ImageLayout {
        channels: 3,
        height: 40,
        width: 40,
    };
    let mut writer = CacheWriter::create(&path, Some(ecg), Some(image), 8, false).expect("writer");
    let mut rng = SplitMix64::new(11);
    for i in 0..14u64 {
        let split = if i < 10 { Split::Train } else { Split::Val };
        let label = (i % 3 == 0) as u8;
        let ecg: Vec<f32> = (0..12 * 400)
            .map(|t| (t as f32 * 0.05 + i as f32).sin() + 0.3 * rng.next_normal() as f32)
            .collect();
        let img: Vec<f32> = (0..3 * 40 * 40)
            .map(|_| (rng.next_f64() as f32) + 0.2 * label as f32)
            .collect();
        writer
            .push(
                SubjectMeta {
                    eid: 1000 + i,
                    split,
                    labels: vec![Some(label)],
                    phenotypes: vec![],
                },
                Some(&ecg),
                Some(&img),
            )
            .expect("push");
    }
    writer
        .finish(
            vec!["CAD".into()],
            vec![],
            serde_json::json!({}),
            serde_json::json!({}),
        )
        .expect("finish");
    path
}

#[test]
fn runs_write_the_documented_layout_and_resume_bit_for_bit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tiny_cache(tmp.path());
    let cfg = tiny_config(&cache);

    // Two epochs in one run.
    let straight = tmp.path().join("straight");
    let (mut trainer, notes) = MmclTrainer::new(cfg.clone(), &straight, &Device::Cpu).expect("new");
    assert!(notes.iter().any(|n| n.contains("10 subjects")), "{notes:?}");
    trainer.fit(&mut NoProgress).expect("fit");
    assert_eq!((trainer.epochs_done(), trainer.steps_taken()), (2, 6));
    drop(trainer);

    // One epoch, a fresh process state, then the second epoch.
    let resumed = tmp.path().join("resumed");
    let second: MmclTrainer = one_epoch_then_resume(cfg.clone(), &resumed);
    drop(second);

    let last = |run: &Path| checkpoint::checkpoints_dir(run).join("last");
    assert_same_last_checkpoints(
        &straight,
        &resumed,
        &[
            checkpoint::MODEL_FILE,
            checkpoint::OPTIMIZER_FILE,
            checkpoint::CLASSIFIER_OPTIMIZER_FILE,
            checkpoint::ECG_ENCODER_FILE,
            checkpoint::IMAGE_ENCODER_FILE,
        ],
    );

    // The layout.
    let log = assert_two_epoch_layout(&straight, &resumed);
    assert_eq!(log.splits(), vec!["train".to_string(), "val".to_string()]);
    assert!(log.metric_names().contains(&"classifier_auc".to_string()));

    // model.safetensors: reference names, the architecture as metadata.
    let model_path = last(&straight).join(checkpoint::MODEL_FILE);
    let weights = StateDict::read(&model_path).expect("model");
    for key in [
        "encoder_imaging.0.weight",
        "encoder_imaging.1.running_var",
        "encoder_imaging.7.1.bn2.weight",
        "projection_head_imaging.layers.2.bias",
        "encoder_ecg.blocks.1.attn.qkv.weight",
        "projection_head_ecg.layers.0.weight",
        "classifier.model.weight",
    ] {
        assert!(
            weights.contains(key),
            "{key} missing from model.safetensors"
        );
    }
    let rebuilt = MmclModel::from_checkpoint(&model_path, &Device::Cpu).expect("rebuild");
    assert_eq!(rebuilt.architecture().imaging.in_channels, 3);

    // The exports load where the embedding commands load them.
    let arch = MmclArchitecture::from_config(&cfg, 3).expect("arch");
    let (_, _, summary) = mmcl_ecg::EcgVit::from_checkpoint(
        &arch.ecg,
        &last(&straight).join(checkpoint::ECG_ENCODER_FILE),
        mmcl_ecg::Pooling::Global,
        &Device::Cpu,
    )
    .expect("ECG encoder export loads");
    assert!(summary.report.missing.is_empty(), "{summary}");
    let image =
        StateDict::read(&last(&straight).join(checkpoint::IMAGE_ENCODER_FILE)).expect("read");
    let found = mmcl_cmr::checkpoint::extract_encoder(&image, None).expect("image encoder export");
    assert_eq!(found.prefix, "encoder_imaging.");

    // A fresh run refuses a directory that holds one.
    assert!(MmclTrainer::new(cfg, &straight, &Device::Cpu).is_err());
    let _ = file_bytes(&model_path);
}

#[test]
fn a_per_step_schedule_warms_up_within_the_first_epoch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tiny_cache(tmp.path());
    // Three steps per epoch; the rate logged for an epoch is that of its last step.
    let rates = |schedule: &str| {
        let mut cfg = tiny_config(&cache);
        cfg.warmup_epochs = 1;
        cfg.schedule = serde_json::from_value(serde_json::json!(schedule)).expect("schedule");
        let run = tmp.path().join(schedule);
        let (mut trainer, _) = MmclTrainer::new(cfg, &run, &Device::Cpu).expect("new");
        trainer.fit(&mut NoProgress).expect("fit");
        let log = mmcl_core::runlog::RunLog::read(&run.join("metrics.jsonl")).expect("log");
        log.records
            .iter()
            .filter(|r| r.split == "train")
            .map(|r| r.values["lr"])
            .collect::<Vec<f64>>()
    };
    let lr = tiny_config(&cache).lr;
    // The reference's per-epoch warm-up spends the first epoch at rate 0.
    assert_eq!(rates("epoch"), vec![0.0, lr]);
    // Per step: 0, lr/3, 2lr/3 in the warm-up epoch; the second epoch's last step sits 2/3 of
    // the way along the cosine.
    let step = rates("step");
    assert!((step[0] - 2.0 * lr / 3.0).abs() < 1e-12 * lr, "{step:?}");
    let cosine_at_two_thirds = lr * 0.5 * (1.0 + (std::f64::consts::PI * (2.0 / 3.0)).cos());
    assert!(
        (step[1] - cosine_at_two_thirds).abs() < 1e-12 * lr,
        "{step:?}"
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tiny_cache(tmp.path());
    let cfg = tiny_config(&cache);
    // An absurd learning rate blows the weights up after one step: the next loss is not finite.
    assert_non_finite_loss_stops::<MmclTrainer>(cfg, &tmp.path().join("run"), |exploding| {
        exploding.lr = 1e30;
    });
}

#[test]
fn every_trainable_variable_receives_a_gradient() {
    let cfg = tiny_config(Path::new("unused"));
    for attention_pool in [false, true] {
        let mut cfg = cfg.clone();
        cfg.ecg.attention_pool = attention_pool;
        cfg.ecg.drop_path = 0.0;
        let arch = MmclArchitecture::from_config(&cfg, 3).expect("arch");
        let model = MmclModel::new(&arch, 3, &Device::Cpu).expect("model");
        let clip = mmcl_losses::clip::ClipLoss::new(0.1, 0.5).expect("clip");
        let images = mmcl_testutil::seeded_randn(1, &[4, 3, 32, 32]);
        let ecgs = mmcl_testutil::seeded_randn(2, &[4, 1, 12, 200]);
        let out = contrastive_loss(&model, &clip, &images, &ecgs, true, false).expect("loss");
        // `norm` serves the class-token pooling only, as in the reference; the classifier has
        // its own loss (below).
        let failing = model
            .store()
            .vars_without_gradient(&out.loss, &["encoder_ecg.norm.*", "classifier.*"])
            .expect("backward");
        assert!(failing.is_empty(), "no gradient: {failing:?}");
        let features = model.ecg_features(&ecgs, true).expect("features").detach();
        let logits = model.classifier_logits(&features).expect("logits");
        let loss = mmcl_losses::classification::weighted_cross_entropy(
            &logits,
            &[Some(0), Some(1), None, Some(1)],
            [0.55, 10.0],
        )
        .expect("ce")
        .expect("some labels");
        let failing = model
            .store()
            .vars_without_gradient(&loss, &["encoder_*", "projection_head_*"])
            .expect("backward");
        assert!(failing.is_empty(), "no gradient: {failing:?}");
    }
}

#[test]
fn an_image_encoder_is_named_by_its_run_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tiny_cache(tmp.path());
    let mut cfg = tiny_config(&cache);
    cfg.max_epochs = 1;
    let first = tmp.path().join("first");
    let (mut trainer, _) = MmclTrainer::new(cfg.clone(), &first, &Device::Cpu).expect("new");
    trainer.fit(&mut NoProgress).expect("fit");
    drop(trainer);

    // The run directory names its latest checkpoint's image encoder, as for the ECG encoder.
    let mut frozen = cfg.clone();
    frozen.imaging.pretrain_checkpoint = Some(first.clone());
    frozen.imaging.frozen = true;
    let (_, notes) = MmclTrainer::new(frozen, &tmp.path().join("second"), &Device::Cpu)
        .expect("a run directory as the image encoder");
    let export = checkpoint::find_image_encoder(&first).expect("export");
    assert!(
        notes.iter().any(|n| n.starts_with("image encoder:")
            && n.contains("tensors loaded")
            && n.contains(&export.display().to_string())),
        "{notes:?}"
    );

    // A folder without one is an error naming it.
    let mut wrong = cfg;
    wrong.imaging.pretrain_checkpoint = Some(cache.clone());
    let err = MmclTrainer::new(wrong, &tmp.path().join("third"), &Device::Cpu)
        .expect_err("the cache holds no image encoder");
    assert!(
        err.to_string().contains(&cache.display().to_string()),
        "{err}"
    );
}

/// With gradient accumulation the online classifier steps once per group, on the group's last
/// batch as the contrastive optimiser does: not early at the contrastive step, with one batch
/// of its group missing.
#[test]
fn the_online_classifier_steps_once_per_accumulation_group() {
    let mut architecture = common::small_architecture();
    architecture.classifier = mmcl_train::config::OnlineClassifier::Ecg;
    let model = MmclModel::new(&architecture, 0, &Device::Cpu).expect("model");
    let mut cfg = mmcl_train::MmclConfig {
        accumulate_grad_batches: 2,
        ..Default::default()
    };
    cfg.classifier.lr_classifier = 1e-2;
    let mut step = mmcl_train::MmclStep::new(model, &cfg).expect("step");
    let classifier = |step: &mmcl_train::MmclStep| -> Vec<f32> {
        step.model()
            .classifier_vars()
            .iter()
            .flat_map(|(_, v)| v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>()))
            .flatten()
            .collect()
    };
    let batch = |seed: u64| mmcl_train::mmcl::MmclBatch {
        images: mmcl_testutil::seeded_randn(3, &[4, 3, 32, 32]),
        ecgs: mmcl_testutil::seeded_randn(4, &[4, 1, 12, 200]),
        images_orig: None,
        ecgs_orig: None,
        targets: Some(vec![Some(0), Some(1), Some((seed % 2) as u32), Some(1)]),
    };
    let mut weights = vec![classifier(&step)];
    for seed in 0..4 {
        step.train_batch(&batch(seed), 1e-3).expect("train");
        weights.push(classifier(&step));
    }
    assert!(!weights[0].is_empty(), "the classifier has weights");
    let moved: Vec<bool> = weights.windows(2).map(|w| w[0] != w[1]).collect();
    assert_eq!(
        moved,
        [false, true, false, true],
        "the classifier moved after batches {moved:?}"
    );
}

/// The towers side by side (`contrastive_gradients`, what a single process's training step
/// runs) give the loss and every gradient of the composed loss's backward pass bit for bit,
/// drop-path draws included, with the image tower trained or frozen.
#[test]
fn towers_side_by_side_give_the_composed_gradients() {
    let mut architecture = common::small_architecture();
    architecture.ecg.drop_path_rate = 0.2;
    let clip = mmcl_losses::clip::ClipLoss::new(0.1, 0.5).expect("clip");
    let images = mmcl_testutil::seeded_randn(3, &[4, 3, 32, 32]);
    let ecgs = mmcl_testutil::seeded_randn(4, &[4, 1, 12, 200]);
    let bits = mmcl_testutil::bits;
    for frozen in [false, true] {
        let composed = MmclModel::new(&architecture, 5, &Device::Cpu).expect("model");
        let side_by_side = MmclModel::new(&architecture, 5, &Device::Cpu).expect("model");
        let out = contrastive_loss(&composed, &clip, &images, &ecgs, true, frozen).expect("loss");
        let expected = out.loss.backward().expect("backward");
        let (out2, grads) =
            contrastive_gradients(&side_by_side, &clip, &images, &ecgs, frozen).expect("towers");
        let grads = grads.expect("a finite loss has gradients");
        assert_eq!(bits(&out.loss), bits(&out2.loss), "frozen {frozen}");
        let vars = composed.contrastive_vars(!frozen);
        let vars2 = side_by_side.contrastive_vars(!frozen);
        assert!(vars.len() > 10, "{} variables", vars.len());
        for ((name, a), (_, b)) in vars.iter().zip(&vars2) {
            let (ga, gb) = (expected.get(a.as_tensor()), grads.get(b.as_tensor()));
            match (ga, gb) {
                (Some(ga), Some(gb)) => assert_eq!(bits(ga), bits(gb), "{name}, frozen {frozen}"),
                (None, None) => {}
                _ => panic!("{name}: a gradient on one side only (frozen {frozen})"),
            }
        }
    }
}
