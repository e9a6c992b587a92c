//! What the encoder and masked-autoencoder tests share: seeded inputs, the configurations
//! written in the parity fixtures' metadata, and small test models. `mod support;` here; the
//! masked-autoencoder objective's tests in `mmcl-losses` include this file by its path, since
//! they test the same models on the same fixtures.

// Each test binary compiles this module on its own and uses only its part of it.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use mmcl_ecg::EcgVitConfig;
use mmcl_ecg::mae::{MaeConfig, MaskedAutoencoder};
use mmcl_nn::{LoadReport, ParamStore};
use mmcl_testutil::{Fixture, parity_file};

/// A seeded standard-normal tensor (tests must not depend on candle's unseeded generator).
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = mmcl_nn::rng::SplitMix64::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// The transformer keys every fixture's metadata holds.
const VIT_KEYS: [&str; 7] = [
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "layer_norm_eps",
];

/// The metadata values of the transformer's keys and of `more` as one JSON object.
fn meta_object(io: &Fixture, more: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    VIT_KEYS
        .iter()
        .chain(more)
        .map(|&k| (k.to_string(), io.meta(k).clone()))
        .collect()
}

/// The encoder configuration written in a fixture's metadata (global pooling).
pub fn vit_config_of(io: &Fixture) -> EcgVitConfig {
    let mut json = meta_object(io, &["qkv_bias", "num_classes"]);
    json.insert("global_pool".into(), true.into());
    serde_json::from_value(json.into()).expect("fixture metadata is a valid configuration")
}

/// The masked-autoencoder configuration written in a fixture's metadata.
pub fn mae_config_of(io: &Fixture) -> MaeConfig {
    let json = meta_object(
        io,
        &["decoder_embed_dim", "decoder_depth", "decoder_num_heads"],
    );
    serde_json::from_value(json.into()).expect("fixture metadata is a valid configuration")
}

/// The `mae_small` fixture: its inputs and outputs, and the model of its configuration loaded
/// from its weights (with the store and the load report); `None` when skipped.
pub fn mae_small() -> Option<(Fixture, MaskedAutoencoder, ParamStore, LoadReport)> {
    let io = Fixture::load("mae_small.io")?;
    let weights = parity_file("mae_small.weights")?;
    let (model, store, report) =
        MaskedAutoencoder::from_checkpoint(&mae_config_of(&io), &weights, &Device::Cpu)
            .expect("the mae_small weights load");
    Some((io, model, store, report))
}

/// A small masked autoencoder on 1×12×200 inputs (1×50 patches, 32 wide, 2 blocks of 4 heads)
/// with a decoder of `decoder_depth` blocks, 16 wide.
pub fn small_mae(decoder_depth: usize) -> MaeConfig {
    serde_json::from_value(serde_json::json!({
        "img_size": [1, 12, 200], "patch_size": [1, 50],
        "embed_dim": 32, "depth": 2, "num_heads": 4,
        "decoder_embed_dim": 16, "decoder_depth": decoder_depth, "decoder_num_heads": 2,
        "proj_dim": 24, "pred_dim": 8,
    }))
    .expect("config")
}
