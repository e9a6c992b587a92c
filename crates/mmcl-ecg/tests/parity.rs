//! Parity with the reference implementation (MMCL's `ECGEncoder` on the timm 0.6.8 fork): every
//! stored output of `ecg_vit_small` and `ecg_vit_tiny`, within the fixture README's tolerances.

mod support;

use candle_core::Device;
use mmcl_ecg::{EcgVit, Pooling};
use mmcl_testutil::{Fixture, Tolerance, assert_close, device_name, devices, parity_file};
use support::vit_config_of as config_of;

/// Every stored output of fixture `name`, on each of [`devices`].
fn check(name: &str) {
    let Some(io) = Fixture::load(&format!("{name}.io")) else {
        return;
    };
    let Some(weights) = parity_file(&format!("{name}.weights")) else {
        return;
    };
    for device in devices() {
        check_on(
            &format!("{name} on {}", device_name(&device)),
            &io,
            &weights,
            &device,
        );
    }
}

fn check_on(name: &str, io: &Fixture, weights: &std::path::Path, device: &Device) {
    let cfg = config_of(io);
    let (model, _store, summary) =
        EcgVit::from_checkpoint(&cfg, weights, Pooling::Global, device).expect("loads");
    assert!(
        summary.report.missing.is_empty() && summary.ignored.is_empty(),
        "{summary}"
    );
    let input = io
        .tensor("input")
        .to_device(device)
        .expect("input on the device");
    let out = model
        .forward_tokens(&input, false, Some(-1))
        .expect("forward");
    let global = model.pool(&out.tokens, Pooling::Global).expect("global");
    let cls = model.pool(&out.tokens, Pooling::Cls).expect("cls");
    let tokens = model.pool(&out.tokens, Pooling::Tokens).expect("tokens");
    let logits = model.logits(&global).expect("head");
    let attention = out.attention.expect("attention map");
    let f = Tolerance::FORWARD;
    for (key, ours, tolerance) in [
        ("features_global_pool", &global, f),
        ("features_cls_token", &cls, f),
        ("patch_tokens", &tokens, f),
        ("head_logits", &logits, f),
        ("last_block_attention", &attention, Tolerance::ATTENTION),
    ] {
        assert_close(&format!("{name} {key}"), ours, &io.tensor(key), tolerance);
    }
    // The same through the embedding entry point.
    let embedded = model.embed(&input, Pooling::Global).expect("embed");
    assert_close(
        &format!("{name} embed"),
        &embedded,
        &io.tensor("features_global_pool"),
        f,
    );
}

#[test]
fn ecg_vit_small_matches_the_reference() {
    check("ecg_vit_small");
}

#[test]
fn ecg_vit_tiny_matches_the_reference() {
    check("ecg_vit_tiny");
}
