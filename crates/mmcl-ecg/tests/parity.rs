//! Parity with the reference implementation (MMCL's `ECGEncoder` on the timm 0.6.8 fork): every
//! stored output of `ecg_vit_small` and `ecg_vit_tiny`, within the fixture README's tolerances.

use candle_core::Device;
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};
use mmcl_testutil::{Fixture, Tolerance, assert_close, parity_file};

/// The configuration written in a fixture's metadata.
fn config_of(io: &Fixture) -> EcgVitConfig {
    let json = serde_json::json!({
        "img_size": io.meta("img_size"),
        "patch_size": io.meta("patch_size"),
        "embed_dim": io.meta("embed_dim"),
        "depth": io.meta("depth"),
        "num_heads": io.meta("num_heads"),
        "mlp_ratio": io.meta("mlp_ratio"),
        "qkv_bias": io.meta("qkv_bias"),
        "layer_norm_eps": io.meta("layer_norm_eps"),
        "num_classes": io.meta("num_classes"),
        "global_pool": true,
    });
    serde_json::from_value(json).expect("fixture metadata is a valid configuration")
}

fn check(name: &str) {
    let Some(io) = Fixture::load(&format!("{name}.io")) else {
        return;
    };
    let Some(weights) = parity_file(&format!("{name}.weights")) else {
        return;
    };
    let cfg = config_of(&io);
    let (model, _store, summary) =
        EcgVit::from_checkpoint(&cfg, &weights, Pooling::Global, &Device::Cpu).expect("loads");
    assert!(
        summary.report.missing.is_empty() && summary.ignored.is_empty(),
        "{summary}"
    );
    let input = io.tensor("input");
    let out = model
        .forward_tokens(&input, false, Some(-1))
        .expect("forward");
    let global = model.pool(&out.tokens, Pooling::Global).expect("global");
    let cls = model.pool(&out.tokens, Pooling::Cls).expect("cls");
    let tokens = model.pool(&out.tokens, Pooling::Tokens).expect("tokens");
    let logits = model.logits(&global).expect("head");
    let attention = out.attention.expect("attention map");
    let f = Tolerance::FORWARD;
    assert_close(
        &format!("{name} features_global_pool"),
        &global,
        &io.tensor("features_global_pool"),
        f,
    );
    assert_close(
        &format!("{name} features_cls_token"),
        &cls,
        &io.tensor("features_cls_token"),
        f,
    );
    assert_close(
        &format!("{name} patch_tokens"),
        &tokens,
        &io.tensor("patch_tokens"),
        f,
    );
    assert_close(
        &format!("{name} head_logits"),
        &logits,
        &io.tensor("head_logits"),
        f,
    );
    assert_close(
        &format!("{name} last_block_attention"),
        &attention,
        &io.tensor("last_block_attention"),
        Tolerance::ATTENTION,
    );
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
