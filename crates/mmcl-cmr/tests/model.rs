//! Properties of the encoder that need no reference: gradient coverage, batch independence in
//! eval mode, seeded initialisation, checkpoint round trips and error reports.

use candle_core::{DType, Device, IndexOp, Tensor};
use mmcl_cmr::checkpoint::{
    EncoderLayout, RELEASED_PREFIX, extract_encoder, load_encoder, released_state_dict,
};
use mmcl_cmr::{ProjectionHead, ResNet, ResNetArch, ResNetConfig};
use mmcl_nn::{Error as NnError, ParamStore, StateDict};
use mmcl_testutil::flat;

fn images(seed: u64, shape: (usize, usize, usize, usize)) -> Tensor {
    let mut rng = mmcl_nn::rng::SplitMix64::new(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n).map(|_| rng.next_normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("images")
}

/// A freshly initialised f32 CPU encoder of `config` in a store seeded with `seed`.
fn resnet(seed: u64, config: &ResNetConfig) -> (ParamStore, ResNet) {
    let store = ParamStore::new(seed);
    let model = ResNet::new(config, store.var_builder(DType::F32, &Device::Cpu)).expect("model");
    (store, model)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    flat(a)
        .iter()
        .zip(flat(b))
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A random-weighted loss: every output element matters, none cancels by construction.
fn weighted_sum(t: &Tensor, seed: u64) -> Tensor {
    let w = images(seed, (1, 1, 1, t.elem_count()))
        .reshape(t.shape())
        .expect("weights");
    (t * w).and_then(|p| p.sum_all()).expect("sum")
}

fn check_gradient_coverage(arch: ResNetArch, in_channels: usize, hw: (usize, usize)) {
    let store = ParamStore::new(3);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let config = ResNetConfig::new(arch, in_channels);
    let model = ResNet::new(&config, vb.pp("encoder_imaging")).expect("model");
    let head = ProjectionHead::new(
        config.feature_dim(),
        64,
        16,
        vb.pp("projection_head_imaging"),
    )
    .expect("head");
    let x = images(1, (2, in_channels, hw.0, hw.1));
    let out = model.forward_t(&x, true).expect("forward");
    let z = head.forward(&out.pooled).expect("head");
    let loss = (weighted_sum(&z, 7) + weighted_sum(&out.feature_map, 8)).expect("loss");
    let failing = store.vars_without_gradient(&loss, &[]).expect("backward");
    assert!(failing.is_empty(), "{arch}: no gradient for {failing:?}");
    // The stem is the part candle's own pooling would have cut off.
    assert!(store.get("encoder_imaging.conv1.weight").is_some());
}

#[test]
fn every_trainable_variable_of_resnet18_receives_a_gradient() {
    check_gradient_coverage(ResNetArch::ResNet18, 3, (64, 64));
}

#[test]
fn every_trainable_variable_of_resnet50_receives_a_gradient() {
    // Non-square, with height and width of different parity, and two input channels.
    check_gradient_coverage(ResNetArch::ResNet50, 2, (64, 45));
}

#[test]
fn eval_mode_is_independent_of_the_batch() {
    let (store, model) = resnet(5, &ResNetConfig::resnet18().with_in_channels(1));
    let x = images(2, (3, 1, 48, 48));
    let batch = model.embed(&x).expect("batch");
    let folded = model.fold().expect("fold");
    let batch_folded = folded.embed(&x).expect("batch folded");
    for i in 0..3 {
        let single = model.embed(&x.i(i..i + 1).expect("slice")).expect("single");
        let row = batch.i(i..i + 1).expect("row");
        assert!(max_abs_diff(&single, &row) < 1e-5, "sample {i}");
        let single_folded = folded
            .embed(&x.i(i..i + 1).expect("slice"))
            .expect("single folded");
        assert!(
            max_abs_diff(&single_folded, &row) < 1e-4,
            "folded sample {i}"
        );
    }
    assert!(max_abs_diff(&batch_folded, &batch) < 1e-4);
    // Eval mode leaves the running statistics alone; train mode changes them.
    let before = flat(store.get("bn1.running_mean").expect("stat").as_tensor());
    model.embed(&x).expect("eval");
    assert_eq!(
        before,
        flat(store.get("bn1.running_mean").expect("stat").as_tensor())
    );
    model.forward_t(&x, true).expect("train");
    assert_ne!(
        before,
        flat(store.get("bn1.running_mean").expect("stat").as_tensor())
    );
}

#[test]
fn initialisation_is_seeded_and_follows_torchvision() {
    let build = |seed: u64| resnet(seed, &ResNetConfig::resnet34()).0;
    let (a, b, c) = (build(9), build(9), build(10));
    assert_eq!(a.len(), b.len());
    for (name, var) in a.named_vars() {
        let other = b.get(&name).expect("same names");
        assert_eq!(flat(var.as_tensor()), flat(other.as_tensor()), "{name}");
    }
    let conv = flat(a.get("layer3.1.conv2.weight").expect("conv").as_tensor());
    assert_ne!(
        conv,
        flat(c.get("layer3.1.conv2.weight").expect("conv").as_tensor())
    );
    // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (256 * 3 * 3)).
    let mean = conv.iter().sum::<f32>() / conv.len() as f32;
    let std = (conv.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / conv.len() as f32).sqrt();
    let expected = (2.0f32 / (256.0 * 9.0)).sqrt();
    assert!(mean.abs() < 0.05 * expected, "mean {mean}");
    assert!(
        (std / expected - 1.0).abs() < 0.02,
        "std {std} vs {expected}"
    );
    assert!(
        flat(a.get("layer2.0.bn1.weight").expect("w").as_tensor())
            .iter()
            .all(|&v| v == 1.0)
    );
    assert!(
        flat(a.get("layer2.0.bn1.bias").expect("b").as_tensor())
            .iter()
            .all(|&v| v == 0.0)
    );
    assert!(
        flat(a.get("bn1.running_var").expect("v").as_tensor())
            .iter()
            .all(|&v| v == 1.0)
    );
    // Buffers are not trainable.
    assert!(
        a.trainable_vars()
            .iter()
            .all(|(k, _)| !k.contains("running") && !k.contains("num_batches"))
    );
}

#[test]
fn released_layout_round_trips_through_a_safetensors_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image_encoder.safetensors");
    // A trained-looking source: one train step moves the running statistics.
    let source = ParamStore::new(1);
    let config = ResNetConfig::resnet18().with_in_channels(2);
    let vb = source.var_builder(DType::F32, &Device::Cpu);
    let model = ResNet::new(&config, vb.pp("encoder_imaging")).expect("model");
    let x = images(4, (2, 2, 40, 40));
    model.forward_t(&x, true).expect("train step");
    let exported = released_state_dict(&source.state_dict().expect("state"), "encoder_imaging.")
        .expect("export");
    assert!(exported.contains("encoder_imaging.0.weight"));
    assert!(exported.contains("encoder_imaging.7.1.bn2.running_var"));
    assert!(exported.contains("encoder_imaging.4.0.bn1.num_batches_tracked"));
    assert!(exported.keys().all(|k| k.starts_with(RELEASED_PREFIX)));
    // Lightning checkpoints carry other modules beside the trunk.
    let mut file = exported.add_prefix("state_dict.");
    file.insert(
        "state_dict.projection_head_imaging.layers.0.weight",
        Tensor::zeros((4, 512), DType::F32, &Device::Cpu).expect("zeros"),
    );
    file.write_safetensors(&path, None).expect("write");

    let target = ParamStore::new(2);
    let loaded = ResNet::new(&config, target.var_builder(DType::F32, &Device::Cpu)).expect("model");
    let state = StateDict::read(&path).expect("read");
    let encoder = extract_encoder(&state, None).expect("found");
    assert_eq!(encoder.layout, EncoderLayout::Sequential);
    assert_eq!(encoder.prefix, "state_dict.encoder_imaging.");
    assert_eq!(encoder.ignored.len(), 1);
    let report = load_encoder(&target, "", &encoder).expect("load");
    assert!(report.missing.is_empty() && report.unexpected.is_empty());
    assert_eq!(report.loaded.len(), target.len());
    let expected = model.embed(&x).expect("source");
    let actual = loaded.embed(&x).expect("target");
    assert_eq!(flat(&expected), flat(&actual));
}

#[test]
fn mismatches_are_reported_by_name() {
    let source = ParamStore::new(1);
    let config = ResNetConfig::resnet18();
    ResNet::new(&config, source.var_builder(DType::F32, &Device::Cpu)).expect("model");
    let mut state = source.state_dict().expect("state");
    state.remove("layer2.1.bn1.running_var");
    state.insert(
        "layer5.0.conv1.weight",
        Tensor::zeros((1, 1, 1, 1), DType::F32, &Device::Cpu).expect("zeros"),
    );
    state.insert(
        "layer1.0.conv2.weight",
        Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).expect("zeros"),
    );
    let before = flat(source.get("conv1.weight").expect("conv").as_tensor());
    let target = ParamStore::new(2);
    ResNet::new(&config, target.var_builder(DType::F32, &Device::Cpu)).expect("model");
    let untouched = flat(target.get("conv1.weight").expect("conv").as_tensor());
    let encoder = extract_encoder(&state, None).expect("found");
    let err = load_encoder(&target, "", &encoder).expect_err("must fail");
    let message = err.to_string();
    for name in [
        "layer2.1.bn1.running_var",
        "layer5.0.conv1.weight",
        "layer1.0.conv2.weight",
    ] {
        assert!(message.contains(name), "{name} not named in: {message}");
    }
    assert!(matches!(
        err,
        mmcl_cmr::Error::Nn(NnError::CheckpointMismatch { .. })
    ));
    // Nothing was changed by the failed load.
    assert_eq!(
        untouched,
        flat(target.get("conv1.weight").expect("conv").as_tensor())
    );
    assert_ne!(before, untouched);
}

#[test]
fn wrong_inputs_are_errors_not_panics() {
    let (_store, model) = resnet(0, &ResNetConfig::resnet18().with_in_channels(2));
    assert!(model.embed(&images(0, (1, 3, 32, 32))).is_err());
    let x3 = Tensor::zeros((2, 32, 32), DType::F32, &Device::Cpu).expect("zeros");
    assert!(model.embed(&x3).is_err());
    let x64 = Tensor::zeros((1, 2, 32, 32), DType::F64, &Device::Cpu).expect("zeros");
    assert!(model.embed(&x64).is_err());
    // One image of 32x32 leaves one value per channel in layer4: train mode must refuse.
    assert!(model.forward_t(&images(0, (1, 2, 32, 32)), true).is_err());
    assert!(model.embed(&images(0, (1, 2, 1, 1))).is_ok());
}

#[test]
fn localized_features_and_projection_head() {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let model = ResNet::new(&ResNetConfig::resnet18(), vb.pp("encoder_imaging")).expect("model");
    let head = ProjectionHead::new(512, 32, 8, vb.pp("projection_head_imaging")).expect("head");
    for key in [
        "layers.0.weight",
        "layers.0.bias",
        "layers.2.weight",
        "layers.2.bias",
    ] {
        assert!(
            store
                .get(&format!("projection_head_imaging.{key}"))
                .is_some()
        );
    }
    let x = images(3, (2, 3, 96, 64));
    let local = model.forward_localized(&x, 2.0, false).expect("local");
    assert_eq!(local.dims(), &[2, 6, 4, 512]);
    let z = head.forward(&local).expect("projected");
    assert_eq!(z.dims(), &[2, 6, 4, 8]);
    // Without upsampling, the per-location features are the feature map, channels last.
    let plain = model.forward_localized(&x, 1.0, false).expect("plain");
    let map = model.forward_features(&x, false).expect("map");
    let map_last = map.permute((0, 2, 3, 1)).expect("permute");
    assert_eq!(flat(&plain), flat(&map_last));
    // The average of the per-location map (factor 1) is the pooled embedding.
    let pooled = plain.mean(1).and_then(|t| t.mean(1)).expect("mean");
    let embedding = model.embed(&x).expect("embed");
    assert!(max_abs_diff(&pooled, &embedding) < 1e-5);
    let folded = model.fold().expect("fold");
    let local_folded = folded.forward_localized(&x, 2.0).expect("folded local");
    assert!(max_abs_diff(&local_folded, &local) < 1e-4);
    assert!(
        head.forward(&embedding.i((.., 0..100)).expect("narrow"))
            .is_err()
    );
}
