//! The encoder's checkpoint layouts, attention pooling, gradients, batching and determinism.
//! Checkpoints come from `fixtures/make_checkpoint_fixtures.py` (real `torch.save`).

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, ModuleT, Tensor};
use mmcl_ecg::{CheckpointLayout, EcgVit, EcgVitConfig, Error, Pooling};
use mmcl_nn::ParamStore;
use mmcl_testutil::{Fixture, Tolerance, assert_close, flat};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The toy encoder of the checkpoint fixtures.
fn toy_config() -> EcgVitConfig {
    serde_json::from_value(serde_json::json!({
        "img_size": [1, 2, 20], "patch_size": [1, 5], "embed_dim": 8, "depth": 1,
        "num_heads": 2, "num_classes": 2, "global_pool": true, "attention_pool": true
    }))
    .expect("valid configuration")
}

/// The toy encoder loaded from the checkpoint fixture `file` for `pooling`.
fn load_toy(
    file: &str,
    pooling: Pooling,
) -> mmcl_ecg::Result<(EcgVit, ParamStore, mmcl_ecg::LoadSummary)> {
    EcgVit::from_checkpoint(&toy_config(), &fixture(file), pooling, &Device::Cpu)
}

/// Asserts that loading the toy checkpoint `file` for `pooling` fails with an error naming the
/// file and the missing `key`.
fn assert_load_fails_naming(file: &str, pooling: Pooling, key: &str) {
    let err = load_toy(file, pooling)
        .map(|_| ())
        .expect_err("the checkpoint lacks a weight")
        .to_string();
    assert!(err.contains(file) && err.contains(key), "{err}");
}

fn expected() -> Fixture {
    Fixture::from_path(&fixture("tiny_expected.safetensors"))
}

fn assert_weights_equal(store: &ParamStore, tol: Tolerance, what: &str) {
    let fx = expected();
    let mut checked = 0;
    for (name, var) in store.named_vars() {
        let want = fx.tensor(&format!("weights.{name}"));
        assert_close(&format!("{what} {name}"), var.as_tensor(), &want, tol);
        checked += 1;
    }
    assert_eq!(checked, 26, "{what}: every tensor of the toy encoder");
}

#[test]
fn every_layout_and_dtype_loads_the_same_weights() {
    let cfg = toy_config();
    let exact = Tolerance { abs: 0.0, rel: 0.0 };
    for (file, layout, tol) in [
        ("tiny_plain.pth", CheckpointLayout::Plain, exact),
        ("tiny_f16.pth", CheckpointLayout::Plain, exact),
        ("tiny_f64.pth", CheckpointLayout::Plain, exact),
        (
            "tiny_bf16.pth",
            CheckpointLayout::Plain,
            Tolerance {
                abs: 1e-2,
                rel: 1e-2,
            },
        ),
        ("tiny_lightning.ckpt", CheckpointLayout::Lightning, exact),
    ] {
        let (_, store, summary) =
            EcgVit::from_checkpoint(&cfg, &fixture(file), Pooling::Attention, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(summary.layout, layout, "{file}");
        assert!(summary.report.missing.is_empty(), "{file}: {summary}");
        assert!(summary.ignored.is_empty(), "{file}: {summary}");
        assert_weights_equal(&store, tol, file);
    }
}

#[test]
fn mae_checkpoint_without_head_and_fc_norm() {
    let (_, store, summary) = load_toy("tiny_model_mae.pth", Pooling::Global).expect("loads");
    assert_eq!(summary.layout, CheckpointLayout::Model);
    let mut missing = summary.report.missing.clone();
    missing.sort();
    assert_eq!(
        missing,
        vec![
            "attention_pool.in_proj_bias",
            "attention_pool.in_proj_weight",
            "attention_pool.out_proj.bias",
            "attention_pool.out_proj.weight",
            "fc_norm.bias",
            "fc_norm.weight",
            "head.bias",
            "head.weight",
        ]
    );
    for k in [
        "decoder_embed.weight",
        "mask_token",
        "projector.0.weight",
        "predictor.0.weight",
    ] {
        assert!(
            summary.ignored.iter().any(|i| i == k),
            "{k} not ignored: {summary}"
        );
    }
    let text = summary.to_string();
    assert!(
        text.contains("fc_norm.weight") && text.contains("left at initialisation"),
        "{text}"
    );
    // fc_norm starts as the identity, as in the reference.
    let values = |name: &str| flat(store.get(name).expect(name).as_tensor());
    let (w, b) = (values("fc_norm.weight"), values("fc_norm.bias"));
    assert!(w.iter().all(|&v| v == 1.0) && b.iter().all(|&v| v == 0.0));
    // Attention pooling needs its weights: an error naming them.
    assert_load_fails_naming(
        "tiny_model_mae.pth",
        Pooling::Attention,
        "attention_pool.in_proj_weight",
    );
}

#[test]
fn position_embedding_of_another_length_is_interpolated() {
    let (_, store, summary) = load_toy("tiny_long_pos.pth", Pooling::Global).expect("loads");
    assert_eq!(summary.pos_embed_resized, Some((17, 9)));
    let pos = store.get("pos_embed").expect("pos_embed");
    assert_close(
        "resized pos_embed",
        pos.as_tensor(),
        &expected().tensor("pos_embed_resized"),
        Tolerance::FORWARD,
    );
}

#[test]
fn missing_keys_are_named() {
    assert_load_fails_naming(
        "tiny_missing_block.pth",
        Pooling::Global,
        "blocks.0.mlp.fc2.weight",
    );
}

#[test]
fn attention_pooling_matches_torch_multihead_attention() {
    let (model, _, _) = load_toy("tiny_plain.pth", Pooling::Attention).expect("loads");
    let fx = expected();
    let pooled = model
        .pool(&fx.tensor("attention_pool.tokens"), Pooling::Attention)
        .expect("pools");
    assert_close(
        "attention pooling",
        &pooled,
        &fx.tensor("attention_pool.out"),
        Tolerance::FORWARD,
    );
}

fn paper_like(seed: u64) -> (EcgVit, ParamStore, EcgVitConfig) {
    let mut cfg = EcgVitConfig::paper();
    cfg.img_size = [1, 12, 500];
    cfg.attention_pool = true;
    cfg.num_classes = 3;
    cfg.drop_path_rate = 0.2;
    let (model, store) = EcgVit::from_seed(&cfg, seed, &Device::Cpu).expect("builds");
    (model, store, cfg)
}

fn ecg(batch: usize, seed: u64) -> Tensor {
    let dev = Device::Cpu;
    // A deterministic pseudo-signal (sums of sines with per-sample phases).
    let t = 500usize;
    let values: Vec<f32> = (0..batch * 12 * t)
        .map(|i| {
            let (s, rest) = (i / (12 * t), i % (12 * t));
            let (lead, k) = (rest / t, rest % t);
            let phase = (seed as f32 + s as f32 * 0.7 + lead as f32 * 0.3).sin();
            (k as f32 * 0.05 + phase).sin() + 0.3 * (k as f32 * 0.31 + lead as f32).cos()
        })
        .collect();
    Tensor::from_vec(values, (batch, 1, 12, t), &dev).expect("tensor")
}

/// Training runs each block as one fused autograd node; it must agree with the per-layer
/// blocks, values and gradients, with the same drop-path draws (`paper_like` drops paths).
#[test]
fn training_blocks_agree_with_the_per_layer_blocks() {
    let x = ecg(3, 2);
    let run = |fused: bool| {
        let (model, store, _) = paper_like(5);
        let mut tokens = if fused {
            model
                .forward_tokens(&x, true, None)
                .expect("forward")
                .tokens
        } else {
            model.embed_tokens(&x, true).expect("tokens")
        };
        if !fused {
            for block in model.blocks() {
                tokens = block.forward_t(&tokens, true).expect("block");
            }
        }
        let loss = (tokens.sqr().and_then(|t| t.sum_all()).expect("loss")
            + tokens.sum_all().expect("sum"))
        .expect("loss");
        let grads = loss.backward().expect("backward");
        let named: Vec<(String, Tensor)> = store
            .trainable_vars()
            .into_iter()
            .filter_map(|(name, var)| grads.get(var.as_tensor()).map(|g| (name, g.clone())))
            .collect();
        (tokens, named)
    };
    let (fused, fused_grads) = run(true);
    let (layered, layered_grads) = run(false);
    assert_close("tokens", &fused, &layered, Tolerance::FORWARD);
    assert_eq!(fused_grads.len(), layered_grads.len());
    assert!(fused_grads.len() > 30);
    for ((name, g), (other, want)) in fused_grads.iter().zip(&layered_grads) {
        assert_eq!(name, other);
        assert_close(name, g, want, Tolerance::FORWARD);
    }
}

#[test]
fn every_trainable_variable_receives_a_gradient() {
    let (model, store, _) = paper_like(1);
    let x = ecg(3, 0);
    let out = model.forward_tokens(&x, true, None).expect("forward");
    let attn = model
        .pool(&out.tokens, Pooling::Attention)
        .expect("attention pooling");
    let cls = model.pool(&out.tokens, Pooling::Cls).expect("cls pooling");
    let logits = model.logits(&attn).expect("head");
    let loss = (logits.sqr().and_then(|t| t.sum_all()).expect("loss")
        + cls.sqr().and_then(|t| t.sum_all()).expect("loss"))
    .expect("loss");
    let failing = store.vars_without_gradient(&loss, &[]).expect("backward");
    assert!(failing.is_empty(), "no gradient for {failing:?}");
    assert!(store.trainable_vars().len() > 30);
}

#[test]
fn batch_and_single_inputs_agree() {
    let (model, _, _) = paper_like(2);
    let x = ecg(4, 1);
    for pooling in [
        Pooling::Global,
        Pooling::Cls,
        Pooling::Attention,
        Pooling::Tokens,
    ] {
        let batch = model.embed(&x, pooling).expect("batch");
        for i in 0..4 {
            let single = model
                .embed(&x.narrow(0, i, 1).expect("slice"), pooling)
                .expect("single");
            let diff = (batch.narrow(0, i, 1).expect("row") - &single)
                .and_then(|d| d.abs())
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(D::Minus1))
                .and_then(|d| d.to_scalar::<f32>())
                .expect("diff");
            assert!(diff <= 1e-5, "{pooling} sample {i}: {diff}");
        }
    }
}

#[test]
fn seeded_initialisation_and_training_randomness_are_deterministic() {
    let x = ecg(4, 2);
    let run = |seed: u64, train: bool| -> Vec<f32> {
        let (model, _, _) = paper_like(seed);
        model
            .forward_t(&x, train)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("forward")
    };
    assert_eq!(run(5, false), run(5, false));
    assert_eq!(run(5, true), run(5, true));
    assert_ne!(run(5, true), run(5, false), "drop-path acts in training");
    assert_ne!(run(5, false), run(6, false));
}

#[test]
fn wrong_inputs_are_errors() {
    let (model, _, _) = paper_like(3);
    let dev = Device::Cpu;
    for dims in [
        vec![2, 1, 12, 400],
        vec![2, 1, 8, 500],
        vec![2, 2, 12, 500],
        vec![12, 500],
    ] {
        let x = Tensor::zeros(dims.as_slice(), DType::F32, &dev).expect("tensor");
        match model.embed(&x, Pooling::Global) {
            Err(Error::InputShape { got, expected }) => {
                assert_eq!(got, dims);
                assert!(expected.contains("12, 500"), "{expected}");
            }
            other => panic!("{dims:?}: {other:?}"),
        }
    }
    // [N, leads, T] is accepted for single-channel inputs, any float dtype.
    let x = Tensor::zeros((2, 12, 500), DType::F64, &dev).expect("tensor");
    assert_eq!(
        model.embed(&x, Pooling::Global).expect("3-D input").dims(),
        &[2, 384]
    );
    // An empty batch gives an empty result (or an error), never a panic.
    let empty = Tensor::zeros((0, 1, 12, 500), DType::F32, &dev).expect("tensor");
    if let Ok(e) = model.embed(&empty, Pooling::Global) {
        assert_eq!(e.dims(), &[0, 384]);
    }
    assert!(model.forward_tokens(&x, false, Some(3)).is_err());
    assert!(model.forward_tokens(&x, false, Some(-4)).is_err());

    let plain = EcgVitConfig::preset("vit_pluto_patchX", [1, 12, 500], [1, 100]).expect("preset");
    let (cls_only, _) = EcgVit::from_seed(&plain, 0, &dev).expect("builds");
    let err = cls_only.embed(&x, Pooling::Global).expect_err("no fc_norm");
    assert!(err.to_string().contains("fc_norm"), "{err}");
    assert!(cls_only.embed(&x, Pooling::Attention).is_err());
    assert_eq!(
        cls_only.embed(&x, Pooling::Cls).expect("cls").dims(),
        &[2, 256]
    );
}

/// The device-generic path (composed candle operations, taken for every dtype but CPU f32 and
/// for every non-CPU device) against the CPU fast path: same outputs and same gradients.
#[test]
fn generic_path_matches_the_fast_path() {
    use mmcl_nn::rng::SharedRng;
    let cfg = toy_config();
    let build = |dtype: DType| {
        let store = ParamStore::new(0);
        let model = EcgVit::new(
            &cfg,
            SharedRng::new(0),
            store.var_builder(dtype, &Device::Cpu),
        )
        .expect("builds");
        mmcl_ecg::load_encoder(&store, &cfg, &fixture("tiny_plain.pth"), Pooling::Attention)
            .expect("loads");
        (model, store)
    };
    let (fast, fast_store) = build(DType::F32);
    let (generic, generic_store) = build(DType::F64);
    let x = Tensor::from_vec(
        (0..4 * 2 * 20)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.2)
            .collect::<Vec<f32>>(),
        (4, 1, 2, 20),
        &Device::Cpu,
    )
    .expect("input");
    let run = |model: &EcgVit| {
        let out = model.forward_tokens(&x, false, Some(0)).expect("forward");
        let attn = model.pool(&out.tokens, Pooling::Attention).expect("pool");
        let global = model.pool(&out.tokens, Pooling::Global).expect("pool");
        let cls = model.pool(&out.tokens, Pooling::Cls).expect("pool");
        let loss = [&attn, &global, &cls]
            .iter()
            .map(|t| t.sqr().and_then(|t| t.sum_all()).expect("loss"))
            .reduce(|a, b| (a + b).expect("sum"))
            .expect("loss");
        (out, attn, loss)
    };
    let (out_f, attn_f, loss_f) = run(&fast);
    let (out_g, attn_g, loss_g) = run(&generic);
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32).expect("cast");
    let tol = Tolerance {
        abs: 1e-5,
        rel: 1e-5,
    };
    assert_close("tokens", &out_f.tokens, &f32_of(&out_g.tokens), tol);
    assert_close("attention pooling", &attn_f, &f32_of(&attn_g), tol);
    let (af, ag) = (out_f.attention.expect("map"), out_g.attention.expect("map"));
    assert_close("attention map", &af, &f32_of(&ag), Tolerance::ATTENTION);
    let grads_f = loss_f.backward().expect("backward");
    let grads_g = loss_g.backward().expect("backward");
    for ((name, vf), (_, vg)) in fast_store
        .trainable_vars()
        .iter()
        .zip(generic_store.trainable_vars())
    {
        if name.starts_with("head.") {
            continue;
        }
        let gf = grads_f
            .get(vf.as_tensor())
            .unwrap_or_else(|| panic!("no fast gradient for {name}"));
        let gg = grads_g
            .get(vg.as_tensor())
            .unwrap_or_else(|| panic!("no generic gradient for {name}"));
        mmcl_testutil::assert_grad_close(name, gf, &f32_of(gg), 1e-4);
    }
}
