use super::*;
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};

/// Plain-f64 PyTorch Adam on a vector, for comparison.
fn reference_adam(p: &mut [f64], grads: &[Vec<f64>], lr: f64, wd: f64, cfg: AdamConfig) {
    let (b1, b2) = cfg.betas;
    let mut m = vec![0.0; p.len()];
    let mut v = vec![0.0; p.len()];
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..p.len() {
            let mut gi = g[i];
            if cfg.decoupled_weight_decay {
                p[i] *= 1.0 - lr * wd;
            } else {
                gi += wd * p[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + cfg.eps;
            p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
        }
    }
}

fn run_both(cfg: AdamConfig, wd: f64) -> Result<()> {
    let dev = Device::Cpu;
    let store = ParamStore::new(5);
    let vb = store.var_builder(DType::F32, &dev);
    let w = vb.get_with_hints(
        (4,),
        "w",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )?;
    let mut expected: Vec<f64> = w.to_vec1::<f32>()?.iter().map(|&x| x as f64).collect();
    let mut adam = Adam::new(vec![ParamGroup::all(&store, wd)], cfg)?;
    let mut seen_grads = Vec::new();
    let lr = 0.01;
    for step in 0..5 {
        // loss = sum(c * w^2) -> grad = 2 c w
        let c = Tensor::new(&[1.0f32, -0.5, 2.0, 0.25], &dev)?.affine(1.0 + step as f64, 0.0)?;
        let loss = w.sqr()?.mul(&c)?.sum_all()?;
        let grads = loss.backward()?;
        let g = grads
            .get(&w)
            .ok_or(Error::InvalidArgument("no grad".into()))?;
        seen_grads.push(g.to_vec1::<f32>()?.iter().map(|&x| x as f64).collect());
        adam.step(&grads, lr)?;
    }
    reference_adam(&mut expected, &seen_grads, lr, wd, cfg);
    let got = w.to_vec1::<f32>()?;
    for (a, e) in got.iter().zip(&expected) {
        assert!((*a as f64 - e).abs() < 1e-5, "{a} vs {e}");
    }
    Ok(())
}

#[test]
fn adam_l2_and_adamw_match_the_pytorch_update() -> Result<()> {
    run_both(AdamConfig::adam_l2(), 0.1)?;
    run_both(AdamConfig::adamw_mae(), 0.1)?;
    run_both(AdamConfig::adam_l2(), 0.0)
}

#[test]
fn weight_decay_groups_skip_biases_norms_and_tokens() -> Result<()> {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let _ = candle_nn::linear(3, 2, vb.pp("blocks.0.mlp.fc1"))?;
    let _ = vb.get((1, 1, 3), "cls_token")?;
    let _ = vb.get((1, 5, 3), "pos_embed")?;
    let _ = vb.get(3, "norm.weight")?;
    let groups = ParamGroup::weight_decay_groups(&store, 0.05, &[]);
    let names = |g: &ParamGroup| g.vars.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&groups[0]), vec!["blocks.0.mlp.fc1.weight"]);
    assert_eq!(
        names(&groups[1]),
        vec![
            "blocks.0.mlp.fc1.bias",
            "cls_token",
            "norm.weight",
            "pos_embed"
        ]
    );
    assert_eq!(groups[1].weight_decay, 0.0);
    Ok(())
}

#[test]
fn layer_decay_scales_follow_depth() -> Result<()> {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let _ = vb.get((1, 5, 3), "pos_embed")?;
    let _ = candle_nn::linear(3, 3, vb.pp("blocks.0.attn.qkv"))?;
    let _ = candle_nn::linear(3, 3, vb.pp("blocks.1.attn.qkv"))?;
    let _ = candle_nn::linear(3, 2, vb.pp("head"))?;
    let groups = ParamGroup::layer_decay_groups(&store, "", 2, 0.05, 0.5);
    let scale_of = |name: &str| {
        groups
            .iter()
            .find(|g| g.vars.iter().any(|(n, _)| n == name))
            .map(|g| g.lr_scale)
    };
    assert_eq!(scale_of("pos_embed"), Some(0.125));
    assert_eq!(scale_of("blocks.0.attn.qkv.weight"), Some(0.25));
    assert_eq!(scale_of("blocks.1.attn.qkv.weight"), Some(0.5));
    assert_eq!(scale_of("head.weight"), Some(1.0));
    Ok(())
}

#[test]
fn state_round_trip_continues_identically() -> Result<()> {
    let dev = Device::Cpu;
    let make = || -> Result<(ParamStore, candle_nn::Linear)> {
        let store = ParamStore::new(9);
        let vb = store.var_builder(DType::F32, &dev);
        let l = candle_nn::linear(3, 2, vb.pp("fc"))?;
        Ok((store, l))
    };
    let x = Tensor::new(&[[1.0f32, 2.0, -1.0], [0.5, -0.3, 0.2]], &dev)?;
    let step = |adam: &mut Adam, l: &candle_nn::Linear| -> Result<()> {
        let loss = l.forward(&x)?.sqr()?.mean_all()?;
        adam.step(&loss.backward()?, 0.05)
    };
    // Three steps straight.
    let (s1, l1) = make()?;
    let mut a1 = Adam::new(vec![ParamGroup::all(&s1, 0.01)], AdamConfig::adam_l2())?;
    for _ in 0..3 {
        step(&mut a1, &l1)?;
    }
    // One step, save, restore into a fresh optimiser, two more steps.
    let (s2, l2) = make()?;
    let mut a2 = Adam::new(vec![ParamGroup::all(&s2, 0.01)], AdamConfig::adam_l2())?;
    step(&mut a2, &l2)?;
    let dir = std::env::temp_dir().join(format!("mmcl-optim-{}", std::process::id()));
    let path = dir.join("opt.safetensors");
    a2.save(&path)?;
    let mut a3 = Adam::new(vec![ParamGroup::all(&s2, 0.01)], AdamConfig::adam_l2())?;
    a3.load(&path)?;
    assert_eq!(a3.steps_taken(), 1);
    for _ in 0..2 {
        step(&mut a3, &l2)?;
    }
    let w1 = s1.state_dict()?;
    let w2 = s2.state_dict()?;
    for (name, t) in w1.iter() {
        let other = w2.get(name).ok_or(Error::InvalidArgument(name.into()))?;
        let diff = (t - other)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name} differs after resume");
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn accumulation_and_clipping() -> Result<()> {
    let dev = Device::Cpu;
    let store = ParamStore::new(1);
    let vb = store.var_builder(DType::F32, &dev);
    let w = vb.get_with_hints(3, "w", candle_nn::Init::Const(1.0))?;
    let vars = store.trainable_vars();
    let mut acc = GradAccumulator::new();
    for k in 1..=2 {
        let loss = w.affine(k as f64, 0.0)?.sum_all()?;
        acc.add(&vars, &loss.backward()?)?;
    }
    assert_eq!(acc.micro_batches(), 2);
    let mut grads = acc.take(&vars, 2.0)?;
    let g = grads
        .get(&w)
        .ok_or(Error::InvalidArgument("no grad".into()))?;
    assert_eq!(g.to_vec1::<f32>()?, vec![1.5, 1.5, 1.5]);
    let norm = clip_grad_norm(&vars, &mut grads, 1.0)?;
    assert!((norm - (3.0f64 * 2.25).sqrt()).abs() < 1e-6);
    let clipped = grad_norm(&vars, &grads)?;
    assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    Ok(())
}

/// The fused CPU kernel and the composed candle operations give bit-identical parameters and
/// moments, for each kind of weight decay, over several chunks and steps.
#[test]
fn fused_update_is_bit_identical_to_the_composed_one() -> Result<()> {
    use super::update::{self, Moments, UpdateScalars};
    use crate::kernels::test_support::bits;
    let dev = Device::Cpu;
    let n = 3 * crate::kernels::CHUNK + 17;
    let mut rng = mmcl_core::rng::SplitMix64::new(11);
    let mut values = |scale: f32| -> Vec<f32> {
        (0..n)
            .map(|i| match i % 97 {
                0 => 0.0,
                1 => -0.0,
                _ => (rng.next_f64() as f32 - 0.5) * scale,
            })
            .collect()
    };
    let start = values(2.0);
    let modes = [(0.0, None), (0.05, None), (0.0, Some(1.0 - 1e-3 * 0.05))];
    for (l2_decay, decoupled_shrink) in modes {
        let fused = Var::from_tensor(&Tensor::new(start.as_slice(), &dev)?)?;
        let composed = Var::from_tensor(&Tensor::new(start.as_slice(), &dev)?)?;
        let mut fused_moments = Moments::zeros_like(fused.as_tensor())?;
        let mut composed_moments = Moments::zeros_like(composed.as_tensor())?;
        for t in 1..=3 {
            let grad = Tensor::new(values(1e-2).as_slice(), &dev)?;
            let s = UpdateScalars {
                beta1: 0.9,
                beta2: 0.999,
                l2_decay,
                decoupled_shrink,
                step_size: 1e-3 / (1.0 - 0.9f64.powi(t)),
                inv_bias_correction2_sqrt: 1.0 / (1.0 - 0.999f64.powi(t)).sqrt(),
                eps: 1e-8,
            };
            update::apply(&fused, &grad, &mut fused_moments, s)?;
            composed_moments = update::apply_composed(&composed, &grad, &composed_moments, s)?;
        }
        assert_eq!(bits(fused.as_tensor())?, bits(composed.as_tensor())?);
        assert_eq!(
            bits(&fused_moments.exp_avg)?,
            bits(&composed_moments.exp_avg)?
        );
        assert_eq!(
            bits(&fused_moments.exp_avg_sq)?,
            bits(&composed_moments.exp_avg_sq)?
        );
    }
    Ok(())
}

/// A layer `fc`, an input, and an Adam over the layer that has taken one step: an optimiser
/// with moments to save. The store is kept so that the layer's variables stay registered.
struct SteppedLayer {
    _store: ParamStore,
    layer: candle_nn::Linear,
    x: Tensor,
    adam: Adam,
}

impl SteppedLayer {
    fn new() -> Result<SteppedLayer> {
        let dev = Device::Cpu;
        let store = ParamStore::new(3);
        let vb = store.var_builder(DType::F32, &dev);
        let layer = candle_nn::linear(3, 2, vb.pp("fc"))?;
        let x = Tensor::new(&[[1.0f32, 2.0, -1.0]], &dev)?;
        let adam = Adam::new(vec![ParamGroup::all(&store, 0.0)], AdamConfig::adam_l2())?;
        let mut stepped = SteppedLayer {
            _store: store,
            layer,
            x,
            adam,
        };
        stepped.step()?;
        Ok(stepped)
    }

    /// One more Adam step on `sum((fc x)^2)`.
    fn step(&mut self) -> Result<()> {
        let loss = self.layer.forward(&self.x)?.sqr()?.sum_all()?;
        self.adam.step(&loss.backward()?, 0.1)
    }
}

/// A saved state does not change when training continues (the moments are updated in place).
#[test]
fn saved_state_is_a_snapshot() -> Result<()> {
    let mut stepped = SteppedLayer::new()?;
    let (saved, _) = stepped.adam.state()?;
    let before = saved.get("exp_avg.fc.weight").map(|t| t.to_vec2::<f32>());
    stepped.step()?;
    let after = saved.get("exp_avg.fc.weight").map(|t| t.to_vec2::<f32>());
    assert!(before.is_some());
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
    Ok(())
}

/// A checkpoint's moments that Adam cannot have written are refused, naming the entry.
#[test]
fn impossible_moments_are_refused() -> Result<()> {
    let mut stepped = SteppedLayer::new()?;
    let adam = &mut stepped.adam;
    let (saved, _) = adam.state()?;
    let steps = adam.steps_taken();
    let key = "exp_avg_sq.fc.weight";
    let good = saved
        .get(key)
        .cloned()
        .ok_or(Error::InvalidArgument("no moment".into()))?;
    let cases = [
        (good.affine(-1.0, -1.0)?, "negative"),
        (good.affine(0.0, f64::NAN)?, "non-finite"),
        (good.to_dtype(DType::U8)?, "not a float"),
    ];
    for (bad, why) in cases {
        let mut state = saved.clone();
        state.insert(key, bad);
        let err = adam.load_state(&state, steps);
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains(key) && e.to_string().contains(why)),
            "{why}: {err:?}"
        );
    }
    // A moment saved in another float width still loads.
    let mut wider = saved.clone();
    wider.insert(key, good.to_dtype(DType::F64)?);
    adam.load_state(&wider, steps)?;
    Ok(())
}
