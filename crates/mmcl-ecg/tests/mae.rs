//! The masked autoencoder: parity with the mae repo's `MaskedAutoencoderViT` (`mae_small`), the
//! fixed position tables, checkpoint round trips and the encoder export, batch independence.

mod support;

use candle_core::{DType, Device, IndexOp, Tensor};
use mmcl_ecg::mae::{MaeConfig, MaskedAutoencoder, Masking};
use mmcl_ecg::{EcgVit, Pooling};
use mmcl_nn::rng::SharedRng;
use mmcl_testutil::{Fixture, Tolerance, assert_close, flat, parity_file};
use support::{mae_config_of as config_of, mae_small, randn};

fn mask_ratio(io: &Fixture) -> f64 {
    io.meta("mask_ratio").as_f64().expect("mask_ratio")
}

#[test]
fn mae_small_matches_the_reference() {
    let Some((io, model, store, report)) = mae_small() else {
        return;
    };
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(report.loaded.len(), store.len());

    let masking = Masking::from_noise(&io.tensor("noise"), mask_ratio(&io)).expect("masking");
    let out = model
        .forward(&io.tensor("input"), &masking, false)
        .expect("forward");
    let f = Tolerance::FORWARD;
    assert_close("mae_small latent", &out.latent, &io.tensor("latent"), f);
    assert_close("mae_small pred", &out.pred, &io.tensor("pred"), f);
    let exact = Tolerance { abs: 0.0, rel: 0.0 };
    assert_close("mae_small mask", &out.mask, &io.tensor("mask"), exact);
    assert_close(
        "mae_small ids_restore",
        &out.ids_restore.to_dtype(DType::F32).expect("f32"),
        &io.tensor("ids_restore"),
        exact,
    );
}

#[test]
fn fixed_position_tables_are_the_reference_ones() {
    let Some(io) = Fixture::load("mae_small.io") else {
        return;
    };
    let cfg = config_of(&io);
    // Freshly initialised: the tables come from our sin-cos code, not from a checkpoint.
    let (model, store) = MaskedAutoencoder::from_seed(&cfg, 5, &Device::Cpu).expect("model");
    let f = Tolerance::FORWARD;
    assert_close(
        "mae_small pos_embed",
        model.encoder().pos_embed(),
        &io.tensor("pos_embed"),
        f,
    );
    assert_close(
        "mae_small decoder_pos_embed",
        model.decoder_pos_embed(),
        &io.tensor("decoder_pos_embed"),
        f,
    );
    assert_eq!(
        store.frozen_names(),
        vec!["decoder_pos_embed".to_string(), "pos_embed".to_string()]
    );
    assert!(
        store
            .trainable_vars()
            .iter()
            .all(|(n, _)| !n.ends_with("pos_embed"))
    );
}

fn small_config() -> MaeConfig {
    support::small_mae(1)
}

#[test]
fn every_key_is_the_reference_name() {
    let (_, store) = MaskedAutoencoder::from_seed(&small_config(), 0, &Device::Cpu).expect("model");
    let names: Vec<String> = store.named_vars().into_iter().map(|(n, _)| n).collect();
    let Some(weights) = parity_file("mae_small.weights") else {
        return;
    };
    let reference = mmcl_nn::StateDict::read(&weights).expect("reads");
    let expected: Vec<&str> = reference.keys().collect();
    assert_eq!(names, expected);
}

#[test]
fn patchify_and_unpatchify_are_inverse_and_follow_the_reference_order() {
    let cfg = MaeConfig {
        img_size: [2, 4, 6],
        patch_size: [2, 3],
        ..small_config()
    };
    let (model, _) = MaskedAutoencoder::from_seed(&cfg, 0, &Device::Cpu).expect("model");
    let x = Tensor::arange(0f32, 96., &Device::Cpu)
        .and_then(|t| t.reshape((2, 2, 4, 6)))
        .expect("input");
    let p = model.patchify(&x).expect("patchify");
    assert_eq!(p.dims(), &[2, 4, 12]);
    // Patch (row 0, column 1) of sample 0: pixels (r, c) in 0..2 × 3..6, channel last.
    let first: Vec<f32> = flat(&p.i((0, 1)).expect("patch"));
    let expect: Vec<f32> = [(0, 3), (0, 4), (0, 5), (1, 3), (1, 4), (1, 5)]
        .iter()
        .flat_map(|&(r, c)| (0..2).map(move |ch| (ch * 24 + r * 6 + c) as f32))
        .collect();
    assert_eq!(first, expect);
    let back = model.unpatchify(&p).expect("unpatchify");
    assert_eq!(flat(&back), flat(&x));
}

#[test]
fn latents_do_not_depend_on_the_rest_of_the_batch() {
    let cfg = small_config();
    let (model, _) = MaskedAutoencoder::from_seed(&cfg, 1, &Device::Cpu).expect("model");
    let l = cfg.num_patches();
    let x = randn(&[3, 1, 12, 200], 1);
    let noise = randn(&[3, l], 99); // any real noise: only its order matters
    let batch = Masking::from_noise(&noise, 0.75).expect("masking");
    let all = model.forward(&x, &batch, true).expect("batch");
    for i in 0..3 {
        let one = Masking::from_noise(&noise.narrow(0, i, 1).expect("row"), 0.75).expect("m");
        let single = model
            .forward(&x.narrow(0, i, 1).expect("sample"), &one, true)
            .expect("single");
        for (name, a, b) in [
            ("latent", &all.latent, &single.latent),
            ("pred", &all.pred, &single.pred),
        ] {
            let a = flat(&a.narrow(0, i, 1).expect("row"));
            let b = flat(b);
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst < 1e-5, "{name} of sample {i}: {worst}");
        }
    }
}

#[test]
fn seeded_masking_and_forward_are_deterministic() {
    let cfg = small_config();
    let l = cfg.num_patches();
    let x = randn(&[2, 1, 12, 200], 2);
    let run = |seed: u64| {
        let (model, _) = MaskedAutoencoder::from_seed(&cfg, 7, &Device::Cpu).expect("model");
        let masking = Masking::random(&SharedRng::new(seed), 2, l, 0.8).expect("masking");
        let out = model.forward(&x, &masking, true).expect("forward");
        (masking, flat(&out.pred))
    };
    let (m1, p1) = run(11);
    let (m2, p2) = run(11);
    let (m3, _) = run(12);
    assert_eq!(m1, m2);
    assert_eq!(p1, p2);
    assert_ne!(m1, m3);
    // int(48 * 0.2) kept patches per sample.
    assert_eq!(m1.len_keep(), 9);
}

#[test]
fn checkpoints_round_trip_and_the_encoder_exports_in_the_released_layout() {
    let cfg = small_config();
    let dir = tempfile::tempdir().expect("temp dir");
    let (model, store) = MaskedAutoencoder::from_seed(&cfg, 3, &Device::Cpu).expect("model");

    // The mae repo's layout: {"model": state_dict} (nested keys read as `model.…`).
    let full = dir.path().join("checkpoint-0.safetensors");
    store
        .state_dict()
        .expect("state")
        .add_prefix("model.")
        .write_safetensors(&full, None)
        .expect("write");
    let (loaded, _, report) =
        MaskedAutoencoder::from_checkpoint(&cfg, &full, &Device::Cpu).expect("loads");
    assert_eq!(report.loaded.len(), store.len());
    let x = randn(&[2, 1, 12, 200], 3);
    let masking = Masking::random(&SharedRng::new(0), 2, cfg.num_patches(), 0.5).expect("m");
    let a = model.forward(&x, &masking, false).expect("forward");
    let b = loaded.forward(&x, &masking, false).expect("forward");
    assert_eq!(flat(&a.pred), flat(&b.pred));

    // An encoder alone is refused with a clear message.
    let encoder_file = dir.path().join("signal_encoder.safetensors");
    MaskedAutoencoder::save_encoder(&store, &encoder_file, None).expect("export");
    let err = MaskedAutoencoder::from_checkpoint(&cfg, &encoder_file, &Device::Cpu)
        .expect_err("no decoder");
    assert!(err.to_string().contains("no masked autoencoder"), "{err}");

    // The export holds exactly the encoder under `model.` and loads into the ViT used by
    // embed-ecg; its embedding of all patches equals the MAE encoder's with nothing masked.
    let exported = mmcl_nn::StateDict::read(&encoder_file).expect("reads");
    assert!(exported.keys().all(|k| k.starts_with("model.")));
    assert!(exported.contains("model.pos_embed") && exported.contains("model.norm.weight"));
    assert!(!exported.keys().any(|k| k.contains("decoder")
        || k.contains("mask_token")
        || k.contains("projector")
        || k.contains("predictor")));
    let enc_cfg = cfg.encoder_config();
    let (vit, _, summary) =
        EcgVit::from_checkpoint(&enc_cfg, &encoder_file, Pooling::Cls, &Device::Cpu)
            .expect("encoder loads");
    assert!(summary.report.missing.is_empty(), "{summary}");
    let l = cfg.num_patches();
    let keep_all = Masking::from_noise_values(
        &(0..2 * l).map(|i| (i % l) as f64).collect::<Vec<_>>(),
        2,
        l,
        0.0,
    )
    .expect("identity masking");
    let latent = model
        .forward_encoder(&x, &keep_all, false)
        .expect("encoder");
    let cls_mae = latent.i((.., 0)).expect("cls");
    let cls_vit = vit.embed(&x, Pooling::Cls).expect("embed");
    let diff = flat(&(cls_mae - cls_vit).expect("diff").abs().expect("abs"))
        .into_iter()
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = small_config();
    let (model, _) = MaskedAutoencoder::from_seed(&cfg, 0, &Device::Cpu).expect("model");
    let x = Tensor::zeros((2, 1, 12, 100), DType::F32, &Device::Cpu).expect("input");
    let m = Masking::random(&SharedRng::new(0), 2, cfg.num_patches(), 0.5).expect("m");
    assert!(model.forward(&x, &m, false).is_err());
    let x = Tensor::zeros((3, 1, 12, 200), DType::F32, &Device::Cpu).expect("input");
    let err = model.forward(&x, &m, false).expect_err("batch mismatch");
    assert!(err.to_string().contains("masking"), "{err}");
    let dir = tempfile::tempdir().expect("dir");
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").expect("write");
    let err = MaskedAutoencoder::from_checkpoint(&cfg, &empty, &Device::Cpu).expect_err("empty");
    assert!(err.to_string().contains("empty.pth"), "{err}");
}
