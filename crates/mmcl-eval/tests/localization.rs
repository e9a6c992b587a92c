//! Localisation maps: parity with PyTorch on fixed encoder outputs, planted alignments that
//! must light up where they were planted, a whole model saved in the reference's key layout and
//! loaded back, and the figures.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use mmcl_cmr::{ProjectionHead, ResNetArch, ResNetConfig};
use mmcl_ecg::EcgVitConfig;
use mmcl_eval::Matrix;
use mmcl_eval::localization::{
    EncoderFeatures, LocalizationConfig, cls_attention_map, localization_maps, localize,
    similarity_map, upsample_tokens,
};
use mmcl_nn::{LoadOptions, ParamStore, StateDict};
use mmcl_testutil::{Fixture, Tolerance, assert_close};
use mmcl_train::{MmclArchitecture, MmclModel};

fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Fixture::from_path(&path)
}

/// A projection head loaded from `prefix.layers.{0,2}.*` of the fixture.
fn head_from(fx: &Fixture, prefix: &str) -> ProjectionHead {
    let w0 = fx.tensor(&format!("{prefix}.layers.0.weight"));
    let w2 = fx.tensor(&format!("{prefix}.layers.2.weight"));
    let (hidden, input) = w0.dims2().unwrap();
    let output = w2.dim(0).unwrap();
    let store = ParamStore::new(0);
    let head = ProjectionHead::new(
        input,
        hidden,
        output,
        store.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let state: StateDict = fx
        .tensors
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}."))
                .map(|rest| (rest.to_string(), v.clone()))
        })
        .collect();
    store
        .load_state_dict(&state, &LoadOptions::strict())
        .unwrap();
    head
}

#[test]
fn maps_match_pytorch() {
    let fx = fixture("localization_maps.safetensors");
    let grid: Vec<usize> = serde_json::from_value(fx.meta("grid").clone()).unwrap();
    let configs: Vec<LocalizationConfig> =
        serde_json::from_value(fx.meta("configs").clone()).unwrap();
    let features = EncoderFeatures {
        ecg_tokens: fx.tensor("ecg_tokens"),
        ecg_pooled: fx.tensor("ecg_pooled"),
        ecg_attention: fx.tensor("ecg_attention"),
        ecg_grid: (grid[0], grid[1]),
        feature_map: fx.tensor("feature_map"),
        image_pooled: fx.tensor("image_pooled"),
    };
    let ecg_head = head_from(&fx, "ecg_head");
    let image_head = head_from(&fx, "image_head");
    assert_eq!(configs.len(), 3);
    for (i, cfg) in configs.iter().enumerate() {
        let maps = localization_maps(&features, &ecg_head, &image_head, cfg).unwrap();
        let worst = [
            assert_close(
                &format!("cfg{i}.ecg_importance"),
                &maps.ecg_importance,
                &fx.tensor(&format!("cfg{i}.ecg_importance")),
                Tolerance::FORWARD,
            ),
            assert_close(
                &format!("cfg{i}.image_importance"),
                &maps.image_importance,
                &fx.tensor(&format!("cfg{i}.image_importance")),
                Tolerance::FORWARD,
            ),
            assert_close(
                &format!("cfg{i}.similarity"),
                &maps.similarity,
                &fx.tensor(&format!("cfg{i}.similarity")),
                Tolerance::FORWARD,
            ),
        ];
        eprintln!(
            "cfg{i}: max |Δ| ecg {:.2e}, image {:.2e}, similarity {:.2e}",
            worst[0].max_abs_diff, worst[1].max_abs_diff, worst[2].max_abs_diff
        );
        let worst = assert_close(
            "attention_map",
            &maps.attention,
            &fx.tensor("attention_map"),
            Tolerance::ATTENTION,
        );
        eprintln!("attention max |Δ| {:.2e}", worst.max_abs_diff);
    }
}

/// Identity heads `d → d → d` (ReLU passes non-negative inputs unchanged).
fn identity_head(d: usize) -> ProjectionHead {
    let store = ParamStore::new(0);
    let head = ProjectionHead::new(d, d, d, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu).unwrap();
    let zeros = Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    let state: StateDict = [
        ("layers.0.weight", eye.clone()),
        ("layers.0.bias", zeros.clone()),
        ("layers.2.weight", eye),
        ("layers.2.bias", zeros),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    store
        .load_state_dict(&state, &LoadOptions::strict())
        .unwrap();
    head
}

/// Non-negative noise without component `avoid`, as a `[rows, d]` matrix.
fn noise(rows: usize, d: usize, avoid: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..rows * d)
        .map(|k| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if k % d == avoid {
                0.0
            } else {
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 0.5
            }
        })
        .collect()
}

fn argmax2(m: &Matrix<f32>) -> (usize, usize) {
    let mut best = (0, 0);
    for i in 0..m.rows() {
        for j in 0..m.cols() {
            if m.get(i, j) > m.get(best.0, best.1) {
                best = (i, j);
            }
        }
    }
    best
}

#[test]
fn planted_alignment_produces_the_hot_spot() {
    let d = 16;
    let (rows, cols) = (12, 5);
    let (h, w) = (4, 3);
    let cpu = Device::Cpu;
    // ECG: the token of lead 7, patch 3 points exactly along axis 0, where the image's global
    // feature lies; every other token has no axis-0 component.
    let mut tokens = noise(rows * cols, d, 0, 1);
    let planted = 7 * cols + 3;
    for k in 0..d {
        tokens[planted * d + k] = if k == 0 { 2.0 } else { 0.0 };
    }
    // Image: location (2, 1) points along axis 1, where the ECG's global feature lies.
    let mut fmap_hw = noise(h * w, d, 1, 2); // [h·w, d]
    for k in 0..d {
        fmap_hw[(2 * w + 1) * d + k] = if k == 1 { 3.0 } else { 0.0 };
    }
    let fmap = Tensor::from_vec(fmap_hw, (1, h, w, d), &cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap(); // [1, d, h, w]
    let axis = |a: usize| {
        Tensor::from_vec(
            (0..d).map(|k| if k == a { 1f32 } else { 0.0 }).collect(),
            (1, d),
            &cpu,
        )
        .unwrap()
    };
    let attention = Tensor::ones((1, 2, 1 + rows * cols, 1 + rows * cols), DType::F32, &cpu)
        .unwrap()
        .affine(1.0 / (1 + rows * cols) as f64, 0.0)
        .unwrap();
    let features = EncoderFeatures {
        ecg_tokens: Tensor::from_vec(tokens, (1, rows * cols, d), &cpu).unwrap(),
        ecg_pooled: axis(1),
        ecg_attention: attention,
        ecg_grid: (rows, cols),
        feature_map: fmap,
        image_pooled: axis(0),
    };
    let head = identity_head(d);

    let cfg = LocalizationConfig {
        temperature: 0.5,
        upsample_factor_ecg: 1.0,
        upsample_factor_img: 1.0,
        use_softmax: false,
    };
    let maps = localization_maps(&features, &head, &head, &cfg)
        .unwrap()
        .subject(0)
        .unwrap();
    assert_eq!(
        (maps.ecg_importance.rows(), maps.ecg_importance.cols()),
        (rows, cols)
    );
    assert_eq!(argmax2(&maps.ecg_importance), (7, 3));
    assert!(
        (maps.ecg_importance.get(7, 3) - 2.0).abs() < 1e-5,
        "cos 1 / τ 0.5"
    );
    assert!(
        maps.ecg_importance.get(0, 0).abs() < 1e-6,
        "orthogonal tokens score 0"
    );
    assert_eq!(argmax2(&maps.image_importance), (2, 1));
    assert!((maps.image_importance.get(2, 1) - 2.0).abs() < 1e-5);
    assert!(
        maps.similarity.abs() < 1e-6,
        "the global embeddings are orthogonal"
    );

    // Upsampled ×2: the hot spot covers the two upsampled patches of patch 3 and the 2×2
    // block of location (2, 1).
    let cfg = LocalizationConfig {
        upsample_factor_ecg: 2.0,
        upsample_factor_img: 2.0,
        ..cfg
    };
    let maps = localization_maps(&features, &head, &head, &cfg)
        .unwrap()
        .subject(0)
        .unwrap();
    assert_eq!(maps.ecg_importance.cols(), 2 * cols);
    assert_eq!(
        (maps.image_importance.rows(), maps.image_importance.cols()),
        (2 * h, 2 * w)
    );
    let hot = argmax2(&maps.ecg_importance);
    assert!(hot == (7, 6) || hot == (7, 7), "ECG hot spot at {hot:?}");
    let hot = argmax2(&maps.image_importance);
    assert!(
        (4..6).contains(&hot.0) && (2..4).contains(&hot.1),
        "image hot spot at {hot:?}"
    );
    // Uniform attention: every patch gets 1 / (1 + L).
    let expected = 1.0 / (1 + rows * cols) as f32;
    assert!(
        maps.attention
            .as_slice()
            .iter()
            .all(|v| (v - expected).abs() < 1e-7)
    );

    // Softmax maps are distributions.
    let cfg = LocalizationConfig {
        use_softmax: true,
        ..cfg
    };
    let maps = localization_maps(&features, &head, &head, &cfg)
        .unwrap()
        .subject(0)
        .unwrap();
    let total: f32 = maps.ecg_importance.as_slice().iter().sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert_eq!(argmax2(&maps.ecg_importance).0, 7);
}

#[test]
fn building_blocks_check_their_inputs() {
    let cpu = Device::Cpu;
    let local = Tensor::ones((2, 5, 4), DType::F32, &cpu).unwrap();
    let global = Tensor::ones((2, 3), DType::F32, &cpu).unwrap();
    assert!(similarity_map(&local, &global, 0.6, false).is_err());
    let attention = Tensor::ones((1, 2, 10, 10), DType::F32, &cpu).unwrap();
    assert!(cls_attention_map(&attention, 12, 2).is_err());
    assert_eq!(
        cls_attention_map(&attention, 3, 3).unwrap().dims(),
        &[1, 3, 3]
    );
    let x = Tensor::ones((1, 7, 2), DType::F32, &cpu).unwrap();
    assert_eq!(upsample_tokens(&x, 1.5).unwrap().dims(), &[1, 10, 2]);
}

fn tiny_ecg_config() -> EcgVitConfig {
    serde_json::from_str(
        r#"{"img_size": [1, 12, 400], "patch_size": [1, 100], "embed_dim": 32, "depth": 2,
            "num_heads": 4, "global_pool": true}"#,
    )
    .unwrap()
}

/// A freshly initialised model of the tiny ECG encoder and a ResNet18 on `channels`-channel
/// images, without an online classifier (projection heads `in → hidden → out`), and its two
/// encoders' configurations.
fn seeded(
    channels: usize,
    hidden: usize,
    out: usize,
    seed: u64,
) -> (EcgVitConfig, ResNetConfig, MmclModel) {
    let (ecg, imaging) = (
        tiny_ecg_config(),
        ResNetConfig::new(ResNetArch::ResNet18, channels),
    );
    let arch = MmclArchitecture::without_classifier(&ecg, &imaging, hidden, out);
    let model = MmclModel::new(&arch, seed, &Device::Cpu).unwrap();
    (ecg, imaging, model)
}

/// Writes `state` as `dir/name`; its path.
fn saved(state: &StateDict, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    state.write_safetensors(&path, None).unwrap();
    path
}

fn inputs(b: usize, channels: usize, side: usize) -> (Tensor, Tensor) {
    let ecg = mmcl_testutil::seeded_randn(1, &[b, 1, 12, 400]);
    let image = mmcl_testutil::seeded_rand(2, &[b, channels, side, side]);
    (ecg, image)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn a_model_in_the_reference_layout_loads_and_maps() {
    let dir = tempfile::tempdir().unwrap();
    let (ecg_cfg, imaging, model) = seeded(2, 64, 16, 3);
    let state = model.state_dict().unwrap();
    // The reference's names: Sequential indices for the trunk, lightly's head layout.
    for key in [
        "encoder_ecg.patch_embed.proj.weight",
        "encoder_ecg.blocks.1.attn.qkv.weight",
        "encoder_imaging.0.weight",
        "encoder_imaging.1.running_var",
        "encoder_imaging.7.1.conv2.weight",
        "projection_head_ecg.layers.0.weight",
        "projection_head_imaging.layers.2.bias",
    ] {
        assert!(state.contains(key), "{key} missing from the saved layout");
    }
    assert!(!state.keys().any(|k| k.starts_with("encoder_imaging.layer")));
    let path = saved(&state, dir.path(), "model.safetensors");

    let (loaded, summary) =
        MmclModel::from_reference_checkpoint(&path, &ecg_cfg, None, &Device::Cpu).unwrap();
    assert_eq!(
        summary.imaging, imaging,
        "variant and channels are inferred"
    );
    assert_eq!(summary.ecg_head, (32, 64, 16));
    assert_eq!(summary.imaging_head, (512, 64, 16));
    assert!(summary.ignored.is_empty());
    eprintln!("{summary}");

    let (ecg, image) = inputs(2, 2, 64);
    let cfg = LocalizationConfig::default();
    let a = localize(&model, &ecg, &image, &cfg).unwrap();
    let b = localize(&loaded, &ecg, &image, &cfg).unwrap();
    assert_eq!(
        a.ecg_importance.dims(),
        &[2, 12, 8],
        "4 patches per lead, upsampled ×2"
    );
    assert_eq!(
        a.image_importance.dims(),
        &[2, 4, 4],
        "a 2×2 map of a 64 px image, ×2"
    );
    assert_eq!(a.attention.dims(), &[2, 12, 4]);
    assert!(max_diff(&a.ecg_importance, &b.ecg_importance) < 1e-5);
    assert!(max_diff(&a.image_importance, &b.image_importance) < 1e-5);
    assert!(max_diff(&a.attention, &b.attention) < 1e-6);
    // The global similarity is the one of the two embedding methods.
    let z_ecg = loaded.forward_ecg(&ecg, false).unwrap();
    let z_img = loaded.forward_imaging(&image, false).unwrap();
    assert!(max_diff(&z_ecg, &a.z_ecg) < 1e-5);
    assert!(max_diff(&z_img, &a.z_image) < 1e-5);
    // Importance is a scaled cosine: bounded by 1/τ.
    let bound = (1.0 / cfg.temperature) as f32 + 1e-4;
    let m = a.subject(1).unwrap();
    assert!(m.ecg_importance.as_slice().iter().all(|v| v.abs() <= bound));
    assert!(
        m.image_importance
            .as_slice()
            .iter()
            .all(|v| v.abs() <= bound)
    );
    // A batch of one gives the same maps as its row in a batch of two.
    let single = localize(
        &loaded,
        &ecg.i(1..2).unwrap(),
        &image.i(1..2).unwrap(),
        &cfg,
    )
    .unwrap();
    assert!(max_diff(&single.ecg_importance, &b.ecg_importance.i(1..2).unwrap()) < 1e-5);

    // A Lightning checkpoint (everything under `state_dict.`, plus an online classifier).
    let mut lightning = state.add_prefix("state_dict.");
    lightning.insert(
        "state_dict.classifier.fc.weight",
        Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let ckpt = saved(&lightning, dir.path(), "lightning.safetensors");
    let (from_lightning, summary) =
        MmclModel::from_reference_checkpoint(&ckpt, &ecg_cfg, Some(&imaging), &Device::Cpu)
            .unwrap();
    assert_eq!(summary.ignored, vec!["state_dict.classifier.fc.weight"]);
    let c = localize(&from_lightning, &ecg, &image, &cfg).unwrap();
    assert!(max_diff(&c.ecg_importance, &b.ecg_importance) < 1e-6);
}

fn expect_error(
    path: &Path,
    ecg_cfg: &EcgVitConfig,
    imaging: Option<&ResNetConfig>,
    words: &[&str],
) {
    let err = MmclModel::from_reference_checkpoint(path, ecg_cfg, imaging, &Device::Cpu)
        .map(|_| ())
        .expect_err("loading should fail");
    let text = err.to_string();
    for w in words {
        assert!(text.contains(w), "error {text:?} does not mention {w:?}");
    }
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (ecg_cfg, _, model) = seeded(1, 32, 8, 5);
    let state = model.state_dict().unwrap();

    let missing = dir.path().join("nothing.safetensors");
    expect_error(&missing, &ecg_cfg, None, &["nothing.safetensors"]);

    let mut no_head = state.clone();
    no_head.remove("projection_head_imaging.layers.2.weight");
    let path = saved(&no_head, dir.path(), "no_head.safetensors");
    expect_error(
        &path,
        &ecg_cfg,
        None,
        &["no_head.safetensors", "projection_head_imaging"],
    );

    let path = saved(&state, dir.path(), "ok.safetensors");
    let other = ResNetConfig::new(ResNetArch::ResNet34, 1);
    expect_error(&path, &ecg_cfg, Some(&other), &["resnet34", "resnet18"]);
    let mut wide = ecg_cfg.clone();
    wide.embed_dim = 64;
    expect_error(&path, &wide, None, &["ok.safetensors"]);

    let ecg_only = state.strip_prefix("encoder_ecg.");
    let path = saved(&ecg_only, dir.path(), "encoder_only.safetensors");
    expect_error(&path, &ecg_cfg, None, &["not a multimodal checkpoint"]);

    let cfg = LocalizationConfig {
        upsample_factor_ecg: 1.5,
        ..Default::default()
    };
    let (ecg, image) = inputs(1, 1, 64);
    // 48 tokens × 1.5 = 72 = 12 × 6 is fine; 1.7 gives 81, which is not whole leads.
    assert!(localize(&model, &ecg, &image, &cfg).is_ok());
    let cfg = LocalizationConfig {
        upsample_factor_ecg: 1.7,
        ..Default::default()
    };
    let err = localize(&model, &ecg, &image, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("upsample_factor_ecg"), "{err}");
}

fn check_png(path: &Path) -> (u32, u32) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8();
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
    let total = (img.width() * img.height()) as usize;
    assert!(white * 10 < total * 9, "{}: almost blank", path.display());
    assert!(
        colours.len() >= 30,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
    img.dimensions()
}

#[test]
fn figures_render() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, model) = seeded(1, 32, 8, 9);
    let (ecg, image) = inputs(1, 1, 96);
    let maps = localize(&model, &ecg, &image, &LocalizationConfig::default())
        .unwrap()
        .subject(0)
        .unwrap();
    let signal = Matrix::new(
        12,
        400,
        ecg.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
    .unwrap();
    let slice = Matrix::new(
        96,
        96,
        image.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
    .unwrap();
    let files = maps
        .save_figures(
            dir.path(),
            mmcl_eval::localization::EcgTrace {
                signal: &signal,
                lead_names: None,
                sampling_rate: 500.0,
                millivolts: false,
            },
            &slice,
            &mmcl_eval::localization::SliceInfo {
                frame: "mid-systolic frame".into(),
                pixel_mm: Some(1.5),
            },
        )
        .unwrap();
    let (w1, h1) = check_png(&files.ecg_importance);
    let (w2, h2) = check_png(&files.ecg_attention);
    assert_eq!((w1, h1), (w2, h2), "both ECG figures share the layout");
    assert!(h1 > w1 / 4, "twelve rows");
    check_png(&files.cmr_importance);

    let json = maps.to_json();
    assert_eq!(json["ecg_importance"].as_array().unwrap().len(), 12);
    assert_eq!(
        json["ecg_importance_per_lead"].as_array().unwrap().len(),
        12
    );
    assert_eq!(json["image_importance"].as_array().unwrap().len(), 6);
    assert_eq!(json["attention"][0].as_array().unwrap().len(), 4);
    assert_eq!(json["temperature"], 0.6);
}
