//! The masked-autoencoder objective: parity of both reconstruction losses with the reference
//! (`mae_small`), gradient coverage of the training loss, determinism, the two views side by
//! side.

// The masked-autoencoder tests' support: seeded inputs, the fixture's configuration.
#[path = "../../mmcl-ecg/tests/support/mod.rs"]
mod support;

use candle_core::{DType, Device, Tensor};
use mmcl_ecg::mae::{MaeConfig, MaskedAutoencoder, Masking};
use mmcl_losses::mae::{MaeLoss, MaeLossConfig, ReconstructionTarget};
use mmcl_nn::rng::SharedRng;
use mmcl_testutil::{Fixture, Tolerance, assert_close, bits, flat};
use support::{mae_small, randn};

fn loss_config(io: &Fixture, target: ReconstructionTarget) -> MaeLossConfig {
    MaeLossConfig {
        mask_ratio: io.meta("mask_ratio").as_f64().expect("mask_ratio"),
        norm_pix_loss: io.meta("norm_pix_loss").as_bool().expect("norm_pix_loss"),
        ncc_weight: io.meta("ncc_weight").as_f64().expect("ncc_weight"),
        cos_weight: 0.0,
        target,
    }
}

#[test]
fn both_reconstruction_losses_match_the_reference() {
    let Some((io, model, _, _)) = mae_small() else {
        return;
    };
    let input = io.tensor("input");
    for (target, key) in [
        (ReconstructionTarget::AllPatches, "loss_reference"),
        (ReconstructionTarget::MaskedPatches, "loss_masked_patches"),
    ] {
        let lc = loss_config(&io, target);
        let masking = Masking::from_noise(&io.tensor("noise"), lc.mask_ratio).expect("masking");
        let objective = MaeLoss::new(lc).expect("objective");
        let out = objective
            .forward(&model, &input, &masking, None, false)
            .expect("loss");
        assert!(out.loss_cos.is_none());
        assert_close(
            &format!("mae_small {key}"),
            &out.loss.reshape(1).expect("1-D"),
            &io.tensor(key),
            Tolerance::LOSS,
        );
        // The reconstruction is the reference's pred in both cases.
        assert_close(
            "mae_small pred (loss path)",
            &out.output.pred,
            &io.tensor("pred"),
            Tolerance::FORWARD,
        );
    }
}

fn small() -> MaeConfig {
    support::small_mae(2)
}

#[test]
fn every_trainable_variable_gets_a_gradient_from_the_training_loss() {
    let cfg = small();
    // Several inputs and maskings: in this narrow test model a sample's predictor output can be
    // exactly zero (all ReLUs off), which must still give finite gradients.
    for seed in 0..8 {
        let (model, store) = MaskedAutoencoder::from_seed(&cfg, seed, &Device::Cpu).expect("model");
        let x = randn(&[4, 1, 12, 200], 100 + seed);
        let objective = MaeLoss::new(MaeLossConfig::paper()).expect("objective");
        let out = objective
            .forward_random(&model, &x, &SharedRng::new(seed), true)
            .expect("loss");
        // No exemptions: the fixed position tables are frozen, so not among the trainable ones.
        let failing = store
            .vars_without_gradient(&out.total, &[])
            .expect("backward");
        assert!(
            failing.is_empty(),
            "seed {seed}: no gradient for {failing:?}"
        );
        let trainable: Vec<String> = store.trainable_vars().into_iter().map(|(n, _)| n).collect();
        assert!(trainable.iter().any(|n| n == "mask_token"));
        assert!(trainable.iter().any(|n| n == "projector.3.weight"));
        assert!(!trainable.iter().any(|n| n.ends_with("pos_embed")));
        // And the frozen tables receive none (they are detached in the forward pass).
        let grads = out.total.backward().expect("backward");
        for name in ["pos_embed", "decoder_pos_embed"] {
            let var = store.get(name).expect("stored");
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{name} got a gradient"
            );
        }
    }
}

#[test]
fn the_objective_is_deterministic_per_seed_and_reports_its_parts() {
    let cfg = small();
    let x = randn(&[4, 1, 12, 200], 2);
    let run = |seed: u64| {
        let (model, _) = MaskedAutoencoder::from_seed(&cfg, 2, &Device::Cpu).expect("model");
        let objective = MaeLoss::new(MaeLossConfig::paper()).expect("objective");
        objective
            .forward_random(&model, &x, &SharedRng::new(seed), true)
            .expect("loss")
            .metrics()
            .expect("metrics")
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a, run(6));
    let loss_cos = a.loss_cos.expect("cos term");
    assert!((-1.0..=1.0).contains(&loss_cos));
    assert!((a.total - (a.loss + 0.1 * loss_cos)).abs() < 1e-6);
    assert!((a.loss - (0.9 * a.mse + 0.1 * (1.0 - a.ncc))).abs() < 1e-6);
    assert!(a.cos_embed.is_some_and(|c| (-1.0..=1.0).contains(&c)));
    assert!(a.z_std.is_some_and(|z| z > 0.0));
}

#[test]
fn a_perfect_reconstruction_scores_zero_error_and_full_correlation() {
    // With norm_pix_loss off, predicting the patches themselves gives MSE 0 and NCC 1.
    let cfg = small();
    let (model, _) = MaskedAutoencoder::from_seed(&cfg, 0, &Device::Cpu).expect("model");
    let x = randn(&[2, 1, 12, 200], 3);
    let objective = MaeLoss::new(MaeLossConfig {
        norm_pix_loss: false,
        ..MaeLossConfig::paper()
    })
    .expect("objective");
    let pred = model.patchify(&x).expect("patches");
    let mask = Tensor::ones((2, cfg.num_patches()), DType::F32, &Device::Cpu).expect("mask");
    let rec = objective
        .reconstruction(&model, &x, &pred, &mask)
        .expect("loss");
    assert!(flat(&rec.mse)[0].abs() < 1e-7);
    assert!((flat(&rec.ncc)[0] - 1.0).abs() < 1e-5);
    assert!(flat(&rec.loss)[0].abs() < 1e-5);
}

#[test]
fn a_missing_second_view_is_an_error() {
    let cfg = small();
    let (model, _) = MaskedAutoencoder::from_seed(&cfg, 0, &Device::Cpu).expect("model");
    let x = randn(&[2, 1, 12, 200], 4);
    let m = Masking::random(&SharedRng::new(0), 2, cfg.num_patches(), 0.8).expect("m");
    let objective = MaeLoss::new(MaeLossConfig::paper()).expect("objective");
    let err = objective
        .forward(&model, &x, &m, None, true)
        .expect_err("needs a second view");
    assert!(err.to_string().contains("second view"), "{err}");
}

/// The whole training objective, SimSiam term and gradients included, against the reference's
/// `MaskedAutoencoderViT.forward` run by `tests/fixtures/gen_mae_training_loss.py`.
#[test]
fn the_training_objective_and_its_gradients_match_the_reference() {
    let Some((io, model, store, _)) = mae_small() else {
        return;
    };
    let expected = Fixture::from_path(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mae_training_loss.safetensors"),
    );
    let lc = MaeLossConfig {
        cos_weight: expected.meta("cos_weight").as_f64().expect("cos_weight"),
        ..loss_config(&io, ReconstructionTarget::AllPatches)
    };
    let first = Masking::from_noise(&io.tensor("noise"), lc.mask_ratio).expect("masking");
    let second = Masking::from_noise(&expected.tensor("noise2"), lc.mask_ratio).expect("masking");
    let out = MaeLoss::new(lc)
        .expect("objective")
        .forward(&model, &io.tensor("input"), &first, Some(&second), true)
        .expect("loss");
    let scalar = |t: &Tensor| t.reshape(1).expect("1-D");
    for (name, ours) in [
        ("loss", Some(&out.loss)),
        ("loss_cos", out.loss_cos.as_ref()),
        ("cos_embed", out.cos_embed.as_ref()),
        ("z_std", out.z_std.as_ref()),
        ("total", Some(&out.total)),
    ] {
        let ours = ours.unwrap_or_else(|| panic!("{name} is computed"));
        // The cosine term is a difference of near-equal similarities: compare it absolutely.
        let tol = if name == "loss_cos" {
            Tolerance {
                abs: 1e-6,
                rel: 0.0,
            }
        } else {
            Tolerance::LOSS
        };
        assert_close(
            &format!("mae_small {name}"),
            &scalar(ours),
            &expected.tensor(name),
            tol,
        );
    }
    let grads = out.total.backward().expect("backward");
    let mut checked = 0;
    let mut keys: Vec<&String> = expected.tensors.keys().collect();
    keys.sort();
    for key in keys {
        if let Some(name) = key.strip_prefix("grad.") {
            let var = store
                .get(name)
                .unwrap_or_else(|| panic!("{name} in the model"));
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} gradient"));
            mmcl_testutil::assert_grad_close(name, grad, &expected.tensor(key), 1e-3);
            checked += 1;
        } else if let Some(name) = key.strip_prefix("after.") {
            let var = store
                .get(name)
                .unwrap_or_else(|| panic!("{name} in the model"));
            assert_close(
                &format!("{name} after the forward"),
                &var.as_tensor().to_dtype(DType::F32).expect("f32"),
                &expected.tensor(key),
                Tolerance::FORWARD,
            );
        }
    }
    assert!(checked >= 20, "{checked} gradients compared");
}

/// The loss, its parts and every parameter's gradient equal the composed objective's bit for
/// bit, with the SimSiam term (two views) and without it (one view).
#[test]
fn the_views_side_by_side_give_the_composed_gradients() {
    let cfg = MaeConfig::preset("mae_vit_pluto_patchX", [1, 12, 500], [1, 100]).expect("preset");
    let ecgs = mmcl_testutil::seeded_randn(7, &[6, 1, 12, 500]);
    for cos_weight in [0.1, 0.0] {
        let objective = MaeLoss::new(MaeLossConfig {
            cos_weight,
            ..MaeLossConfig::paper()
        })
        .expect("objective");
        let (composed, store) = MaskedAutoencoder::from_seed(&cfg, 3, &Device::Cpu).expect("mae");
        let (side_by_side, store2) =
            MaskedAutoencoder::from_seed(&cfg, 3, &Device::Cpu).expect("mae");
        let l = cfg.num_patches();
        let rng = SharedRng::new(11);
        let first = Masking::random(&rng, 6, l, 0.8).expect("masking");
        let second = Masking::random(&rng, 6, l, 0.8).expect("masking");
        let second = (cos_weight > 0.0).then_some(&second);

        let out = objective
            .forward(&composed, &ecgs, &first, second, true)
            .expect("forward");
        let expected = out.total.backward().expect("backward");
        let (out2, grads) = objective
            .forward_backward(&side_by_side, &ecgs, &first, second)
            .expect("side by side");
        let what = format!("cos_weight {cos_weight}");
        assert_eq!(bits(&out.total), bits(&out2.total), "total, {what}");
        assert_eq!(bits(&out.output.pred), bits(&out2.output.pred), "{what}");
        assert_eq!(
            out.loss_cos.as_ref().map(bits),
            out2.loss_cos.as_ref().map(bits),
            "{what}"
        );
        let (vars, vars2) = (store.trainable_vars(), store2.trainable_vars());
        assert!(vars.len() > 20, "{} variables", vars.len());
        let mut compared = 0;
        for ((name, a), (_, b)) in vars.iter().zip(&vars2) {
            match (expected.get(a.as_tensor()), grads.get(b.as_tensor())) {
                (Some(ga), Some(gb)) => {
                    assert_eq!(bits(ga), bits(gb), "{name}, {what}");
                    compared += 1;
                }
                (None, None) => {}
                _ => panic!("{name}: a gradient on one side only ({what})"),
            }
        }
        assert!(compared > 20, "{compared} gradients compared ({what})");
    }
}
