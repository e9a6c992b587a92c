//! The MAE trainer end to end on a cache built here from a tiny synthetic cohort: run-directory
//! layout and exports, exact resumption, non-finite losses, gradient coverage, and the
//! multimodal stage initialised from the exported encoder.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{
    assert_non_finite_loss_stops, assert_same_last_checkpoints, assert_two_epoch_layout,
    one_epoch_then_resume,
};
use mmcl_ecg::mae::MaskedAutoencoder;
use mmcl_losses::mae::MaeLoss;
use mmcl_nn::StateDict;
use mmcl_nn::rng::SharedRng;
use mmcl_testutil::tensor_bits as bits;
use mmcl_train::checkpoint;
use mmcl_train::config::OnlineClassifier;
use mmcl_train::{MaeTrainConfig, MaeTrainer, MmclTrainer, NoProgress};

/// 12 synthetic subjects (about 8 train, 4 val), 12×1000 ECGs and small CMR images.
fn cohort_cache(dir: &Path) -> PathBuf {
    common::cohort_cache_of(dir, 12, 3)
}

fn tiny_config(cache: &Path) -> MaeTrainConfig {
    common::config_reading(
        cache,
        r#"
        max_epochs = 2
        warmup_epochs = 1
        batch_size = 4
        lr = 1e-3
        model = { model = "mae_vit_pluto_patchX", img_size = [1, 12, 200], patch_size = [1, 50] }
        data = { threads = 2, prefetch = 1 }
        "#,
    )
}

#[test]
fn mae_runs_write_the_layout_resume_bit_for_bit_and_initialise_mmcl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let cfg = tiny_config(&cache);

    // Two epochs in one run.
    let straight = tmp.path().join("straight");
    let (mut trainer, notes) = MaeTrainer::new(cfg.clone(), &straight, &Device::Cpu).expect("new");
    assert!(
        notes.iter().any(|n| n.contains("learning rate")),
        "{notes:?}"
    );
    let initial = trainer.store().state_dict().expect("weights");
    trainer.fit(&mut NoProgress).expect("fit");
    let steps = trainer.steps_taken();
    assert_eq!(trainer.epochs_done(), 2);
    assert!(steps >= 4, "{steps} steps");
    assert_eq!(
        trainer.encoder_path(),
        checkpoint::ecg_encoder_path(&straight)
    );
    // Training moved the weights.
    let after = trainer.store().state_dict().expect("weights");
    let key = "blocks.0.attn.qkv.weight";
    assert!(bits(initial.get(key).expect("qkv")) != bits(after.get(key).expect("qkv")));
    drop(trainer);

    // One epoch, a fresh trainer, then the second epoch.
    let resumed = tmp.path().join("resumed");
    let second: MaeTrainer = one_epoch_then_resume(cfg.clone(), &resumed);
    assert_eq!(second.steps_taken(), steps);
    drop(second);

    let last = checkpoint::last_dir;
    let (s1, _) = assert_same_last_checkpoints(
        &straight,
        &resumed,
        &[
            checkpoint::MODEL_FILE,
            checkpoint::OPTIMIZER_FILE,
            checkpoint::ECG_ENCODER_FILE,
        ],
    );
    assert_eq!(s1.kind, checkpoint::TrainerKind::Mae);

    // The layout and the logs.
    let log = assert_two_epoch_layout(&straight, &resumed);
    let names = log.metric_names();
    for m in ["loss", "ncc", "loss_cos", "lr", "samples_per_s"] {
        assert!(names.contains(&m.to_string()), "{m} not logged: {names:?}");
    }

    // model.safetensors reloads into the reference model; the export is the released layout.
    let (_, _, report) = MaskedAutoencoder::from_checkpoint(
        &cfg.model,
        &last(&straight).join(checkpoint::MODEL_FILE),
        &Device::Cpu,
    )
    .expect("the MAE checkpoint reloads");
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    let export = StateDict::read(&checkpoint::ecg_encoder_path(&straight)).expect("export");
    assert!(export.contains("model.patch_embed.proj.weight"));
    assert!(
        export
            .keys()
            .all(|k| !k.contains("decoder") && !k.contains("mask_token"))
    );

    // The multimodal stage starts from the exported encoder: the weights really arrive.
    let mut mmcl = common::small_mmcl_config(&cache);
    mmcl.classifier.online_classifier = OnlineClassifier::None;
    mmcl.ecg.pretrain_checkpoint = Some(checkpoint::ecg_encoder_path(&straight));
    let (mmcl_trainer, notes) =
        MmclTrainer::new(mmcl, &tmp.path().join("mmcl"), &Device::Cpu).expect("mmcl");
    assert!(
        notes.iter().any(|n| n.starts_with("ECG encoder")),
        "{notes:?}"
    );
    let weights = mmcl_trainer.model().state_dict().expect("weights");
    for key in [
        "blocks.1.mlp.fc1.weight",
        "patch_embed.proj.weight",
        "cls_token",
    ] {
        let ours = weights
            .get(&format!("encoder_ecg.{key}"))
            .expect("mmcl tensor");
        let mae = export
            .get(&format!("model.{key}"))
            .expect("exported tensor");
        assert!(
            bits(ours) == bits(mae),
            "{key} was not loaded from the MAE export"
        );
    }

    // A fresh run refuses a directory that holds one; an MMCL resume refuses an MAE run.
    assert!(MaeTrainer::new(cfg, &straight, &Device::Cpu).is_err());
    let err = MmclTrainer::resume(&straight, None, None, &Device::Cpu).expect_err("kind");
    assert!(err.to_string().contains("MAE trainer"), "{err}");
}

#[test]
fn a_non_finite_mae_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cohort_cache(tmp.path());
    let mut cfg = tiny_config(&cache);
    cfg.loss.cos_weight = 0.0;
    // An absurd learning rate blows the weights up after one step: a later loss is not finite.
    assert_non_finite_loss_stops::<MaeTrainer>(cfg, &tmp.path().join("run"), |exploding| {
        exploding.lr = Some(1e30);
        exploding.warmup_epochs = 0;
    });
}

#[test]
fn every_trainable_mae_variable_receives_a_gradient() {
    let cfg = tiny_config(Path::new("unused"));
    let (model, store) = MaskedAutoencoder::from_seed(&cfg.model, 5, &Device::Cpu).expect("model");
    let objective = MaeLoss::new(cfg.loss).expect("loss");
    let ecgs = mmcl_testutil::seeded_randn(1, &[4, 1, 12, 200]);
    let out = objective
        .forward_random(&model, &ecgs, &SharedRng::new(2), true)
        .expect("forward");
    // Nothing is exempt: encoder, decoder, mask token and both SimSiam heads all learn.
    let failing = store
        .vars_without_gradient(&out.total, &[])
        .expect("backward");
    assert!(failing.is_empty(), "no gradient: {failing:?}");
}

#[test]
fn configurations_default_to_the_paper_and_reject_mistakes() {
    let cfg = MaeTrainConfig::default();
    assert_eq!(cfg.model, mmcl_ecg::mae::MaeConfig::paper());
    assert_eq!(
        (
            cfg.loss.mask_ratio,
            cfg.loss.ncc_weight,
            cfg.loss.cos_weight
        ),
        (0.8, 0.1, 0.1)
    );
    assert_eq!((cfg.weight_decay, cfg.betas), (0.15, (0.9, 0.95)));
    assert_eq!(cfg.effective_lr(), 1e-3 * 64.0 / 4.0);
    let back: MaeTrainConfig = toml::from_str(&cfg.to_toml()).expect("round trip");
    assert_eq!(back, cfg);
    let accumulated: MaeTrainConfig =
        toml::from_str("accum_iter = 4\nblr = 1e-4\nepochs = 3").expect("reference names");
    assert_eq!(accumulated.max_epochs, 3);
    assert!((accumulated.effective_lr() - 1e-4 * 256.0 / 4.0).abs() < 1e-12);

    let tmp = tempfile::tempdir().expect("tmp");
    for (name, text, needle) in [
        ("typo.toml", "mask_ratio = 0.5\n", "mask_ratio"),
        ("range.toml", "[loss]\nmask_ratio = 1.5\n", "mask_ratio"),
        (
            "leads.toml",
            "[model]\nmodel = \"mae_vit_tiny_patchX\"\nimg_size = [3, 12, 2500]\npatch_size = [1, 100]\n",
            "img_size",
        ),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).expect("write");
        let err = MaeTrainConfig::from_file(&path)
            .expect_err(name)
            .to_string();
        assert!(err.contains(needle) && err.contains(name), "{name}: {err}");
    }
}
