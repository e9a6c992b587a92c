//! Adam with L2 weight decay (`torch.optim.Adam`) and AdamW (`torch.optim.AdamW`), parameter
//! groups, layer-wise learning-rate decay, gradient accumulation, gradient-norm clipping, and
//! optimiser state that can be saved and restored.
//!
//! The two pre-training stages of the paper use different optimisers, and the difference
//! matters: the multimodal stage uses `torch.optim.Adam(weight_decay=1e-4)`, where the decay is
//! **added to the gradient** (L2), while the MAE stage uses AdamW, where the decay shrinks the
//! weights directly (decoupled).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use mmcl_nn::optim::{Adam, AdamConfig, ParamGroup};
//! use mmcl_nn::ParamStore;
//!
//! # fn main() -> mmcl_nn::Result<()> {
//! let store = ParamStore::new(0);
//! let vb = store.var_builder(DType::F32, &Device::Cpu);
//! let layer = candle_nn::linear(3, 1, vb.pp("fc"))?;
//! let groups = ParamGroup::weight_decay_groups(&store, 1e-4, &[]);
//! let mut adam = Adam::new(groups, AdamConfig::adam_l2())?;
//! let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
//! let loss = candle_core::Module::forward(&layer, &x)?.sqr()?.mean_all()?;
//! adam.step(&loss.backward()?, 1e-3)?;
//! assert_eq!(adam.steps_taken(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{StateDict, glob_match};
use crate::{Error, ParamStore, Result};

/// Names that never receive weight decay besides 1-D tensors (biases, norm weights):
/// the same list as the reference models' `no_weight_decay()`.
pub const NO_DECAY_NAMES: [&str; 4] = ["pos_embed", "cls_token", "mask_token", "dist_token"];

/// A set of parameters sharing a learning-rate scale and a weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// A label for logs and saved state.
    pub name: String,
    /// The parameters, by `state_dict` name.
    pub vars: Vec<(String, Var)>,
    /// Multiplies the scheduled learning rate (layer-wise decay sets it below 1).
    pub lr_scale: f64,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub weight_decay: f64,
}

impl ParamGroup {
    /// One group of every trainable variable of `store`.
    pub fn all(store: &ParamStore, weight_decay: f64) -> Self {
        Self {
            name: "all".into(),
            vars: store.trainable_vars(),
            lr_scale: 1.0,
            weight_decay,
        }
    }

    /// Whether a parameter is exempt from weight decay: 1-D tensors (biases, norm weights),
    /// names ending in `.bias`, the [`NO_DECAY_NAMES`], and names matching `extra_no_decay`.
    pub fn is_no_decay(name: &str, var: &Var, extra_no_decay: &[&str]) -> bool {
        let last = name.rsplit('.').next().unwrap_or(name);
        var.as_tensor().rank() <= 1
            || name.ends_with(".bias")
            || NO_DECAY_NAMES.contains(&last)
            || NO_DECAY_NAMES.contains(&name)
            || extra_no_decay.iter().any(|p| glob_match(p, name))
    }

    /// Two groups, `decay` and `no_decay`, as the reference's `add_weight_decay`
    /// (timm `optim_factory`): no decay on biases, norms, position embeddings and tokens.
    pub fn weight_decay_groups(
        store: &ParamStore,
        weight_decay: f64,
        extra_no_decay: &[&str],
    ) -> Vec<Self> {
        let (no_decay, decay): (Vec<_>, Vec<_>) = store
            .trainable_vars()
            .into_iter()
            .partition(|(n, v)| Self::is_no_decay(n, v, extra_no_decay));
        vec![
            Self {
                name: "decay".into(),
                vars: decay,
                lr_scale: 1.0,
                weight_decay,
            },
            Self {
                name: "no_decay".into(),
                vars: no_decay,
                lr_scale: 1.0,
                weight_decay: 0.0,
            },
        ]
    }

    /// Groups for fine-tuning a ViT with layer-wise learning-rate decay, as the reference's
    /// `param_groups_lrd`: layer 0 is the patch embedding, class token and position embedding,
    /// layer `i + 1` is `blocks.i`, and everything else (norms, head, pooling) is layer
    /// `num_blocks + 1`; a parameter of layer `l` gets `lr_scale = decay^(num_blocks + 1 - l)`.
    /// Weight decay as in [`Self::weight_decay_groups`]. `prefix` is prepended to the ViT's keys
    /// (e.g. `encoder_ecg.`); parameters outside it count as the last layer.
    pub fn layer_decay_groups(
        store: &ParamStore,
        prefix: &str,
        num_blocks: usize,
        weight_decay: f64,
        layer_decay: f64,
    ) -> Vec<Self> {
        let num_layers = num_blocks + 1;
        let layer_of = |name: &str| -> usize {
            let Some(rest) = name.strip_prefix(prefix) else {
                return num_layers;
            };
            if rest.starts_with("cls_token")
                || rest.starts_with("pos_embed")
                || rest.starts_with("patch_embed")
            {
                0
            } else if let Some(after) = rest.strip_prefix("blocks.") {
                after
                    .split('.')
                    .next()
                    .and_then(|i| i.parse::<usize>().ok())
                    .map_or(num_layers, |i| i + 1)
            } else {
                num_layers
            }
        };
        let mut groups: BTreeMap<(usize, bool), ParamGroup> = BTreeMap::new();
        for (name, var) in store.trainable_vars() {
            let layer = layer_of(&name);
            let no_decay = Self::is_no_decay(&name, &var, &[]);
            let group = groups
                .entry((layer, no_decay))
                .or_insert_with(|| ParamGroup {
                    name: format!(
                        "layer_{layer}_{}",
                        if no_decay { "no_decay" } else { "decay" }
                    ),
                    vars: Vec::new(),
                    lr_scale: layer_decay.powi((num_layers - layer) as i32),
                    weight_decay: if no_decay { 0.0 } else { weight_decay },
                });
            group.vars.push((name, var));
        }
        groups.into_values().collect()
    }
}

/// Hyper-parameters of [`Adam`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Coefficients of the running averages of the gradient and its square.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// `true`: AdamW (decay shrinks weights, `p -= lr·wd·p`); `false`: Adam with L2 (decay added
    /// to the gradient, `g += wd·p`).
    pub decoupled_weight_decay: bool,
}

impl AdamConfig {
    /// `torch.optim.Adam` defaults: betas (0.9, 0.999), eps 1e-8, L2 weight decay (MMCL stage).
    pub fn adam_l2() -> Self {
        Self {
            betas: (0.9, 0.999),
            eps: 1e-8,
            decoupled_weight_decay: false,
        }
    }

    /// AdamW with betas (0.9, 0.95), eps 1e-8 (MAE stage).
    pub fn adamw_mae() -> Self {
        Self {
            betas: (0.9, 0.95),
            eps: 1e-8,
            decoupled_weight_decay: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam / AdamW over parameter groups, numerically as PyTorch's single-tensor implementation.
#[derive(Debug)]
pub struct Adam {
    groups: Vec<ParamGroup>,
    config: AdamConfig,
    steps: u64,
    moments: HashMap<String, Moments>,
}

impl Adam {
    /// An optimiser over `groups`; a parameter may appear in one group only.
    pub fn new(groups: Vec<ParamGroup>, config: AdamConfig) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for g in &groups {
            for (n, _) in &g.vars {
                if !seen.insert(n.clone()) {
                    return Err(Error::InvalidArgument(format!(
                        "parameter {n} appears in two optimiser groups"
                    )));
                }
            }
        }
        if !(0.0..1.0).contains(&config.betas.0) || !(0.0..1.0).contains(&config.betas.1) {
            return Err(Error::InvalidArgument(format!(
                "Adam betas must lie in [0, 1), got {:?}",
                config.betas
            )));
        }
        Ok(Self {
            groups,
            config,
            steps: 0,
            moments: HashMap::new(),
        })
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamConfig {
        self.config
    }

    /// Number of steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr` (scaled per group by `lr_scale`). Parameters without a
    /// gradient in `grads` are left untouched (as PyTorch does for `grad is None`).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (beta1, beta2) = self.config.betas;
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for group in &self.groups {
            let lr = lr * group.lr_scale;
            let wd = group.weight_decay;
            for (name, var) in &group.vars {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let param = var.as_tensor().detach();
                let mut grad = grad.to_dtype(param.dtype())?.detach();
                if wd != 0.0 {
                    if self.config.decoupled_weight_decay {
                        var.set(&param.affine(1.0 - lr * wd, 0.0)?)?;
                    } else {
                        grad = (grad + param.affine(wd, 0.0)?)?;
                    }
                }
                let moments = match self.moments.remove(name) {
                    Some(m) => m,
                    None => Moments {
                        exp_avg: param.zeros_like()?,
                        exp_avg_sq: param.zeros_like()?,
                    },
                };
                // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
                let exp_avg =
                    (moments.exp_avg.affine(beta1, 0.0)? + grad.affine(1.0 - beta1, 0.0)?)?;
                let exp_avg_sq = (moments.exp_avg_sq.affine(beta2, 0.0)?
                    + grad.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                let step_size = lr / bias_correction1;
                let denom = exp_avg_sq
                    .sqrt()?
                    .affine(1.0 / bias_correction2_sqrt, self.config.eps)?;
                let update = exp_avg.div(&denom)?.affine(step_size, 0.0)?;
                let current = var.as_tensor().detach();
                var.set(&(current - update)?)?;
                self.moments.insert(
                    name.clone(),
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        Ok(())
    }

    /// The optimiser state: `exp_avg.<name>` and `exp_avg_sq.<name>` tensors, and the step count
    /// as metadata (`steps`).
    pub fn state(&self) -> (StateDict, HashMap<String, String>) {
        let mut sd = StateDict::default();
        for (name, m) in &self.moments {
            sd.insert(format!("exp_avg.{name}"), m.exp_avg.clone());
            sd.insert(format!("exp_avg_sq.{name}"), m.exp_avg_sq.clone());
        }
        let mut meta = HashMap::new();
        meta.insert("steps".to_string(), self.steps.to_string());
        meta.insert(
            "config".to_string(),
            serde_json::to_string(&self.config).unwrap_or_default(),
        );
        (sd, meta)
    }

    /// Restores a state produced by [`Self::state`] (moments are moved to each parameter's
    /// device and dtype). Moments of unknown parameters are an error.
    pub fn load_state(&mut self, state: &StateDict, steps: u64) -> Result<()> {
        let mut by_name: HashMap<&str, &Var> = HashMap::new();
        for g in &self.groups {
            for (n, v) in &g.vars {
                by_name.insert(n.as_str(), v);
            }
        }
        let mut moments = HashMap::new();
        for (key, tensor) in state.iter() {
            let (kind, name) = if let Some(n) = key.strip_prefix("exp_avg_sq.") {
                ("sq", n)
            } else if let Some(n) = key.strip_prefix("exp_avg.") {
                ("avg", n)
            } else {
                return Err(Error::BadCheckpoint {
                    path: state.source().to_path_buf(),
                    reason: format!("unexpected optimiser state entry {key}"),
                });
            };
            let var = by_name.get(name).ok_or_else(|| Error::BadCheckpoint {
                path: state.source().to_path_buf(),
                reason: format!("optimiser state for unknown parameter {name}"),
            })?;
            if tensor.dims() != var.dims() {
                return Err(Error::BadCheckpoint {
                    path: state.source().to_path_buf(),
                    reason: format!(
                        "optimiser state {key} has shape {:?}, the parameter {:?}",
                        tensor.dims(),
                        var.dims()
                    ),
                });
            }
            let t = tensor.to_dtype(var.dtype())?.to_device(var.device())?;
            let entry = moments.entry(name.to_string()).or_insert((None, None));
            if kind == "sq" {
                entry.1 = Some(t);
            } else {
                entry.0 = Some(t);
            }
        }
        let mut complete = HashMap::new();
        for (name, pair) in moments {
            match pair {
                (Some(exp_avg), Some(exp_avg_sq)) => {
                    complete.insert(
                        name,
                        Moments {
                            exp_avg,
                            exp_avg_sq,
                        },
                    );
                }
                _ => {
                    return Err(Error::BadCheckpoint {
                        path: state.source().to_path_buf(),
                        reason: format!("optimiser state for {name} lacks one of its moments"),
                    });
                }
            }
        }
        self.moments = complete;
        self.steps = steps;
        Ok(())
    }

    /// Writes the state to a safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (sd, meta) = self.state();
        sd.write_safetensors(path, Some(meta))
    }

    /// Reads a state written by [`Self::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| Error::BadCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("damaged optimiser state: {e}")))?;
        let steps = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("steps"))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("the optimiser state has no step count".into()))?;
        let state = StateDict::read(path)?;
        self.load_state(&state, steps)
    }
}

/// Sums gradients over several micro-batches (gradient accumulation).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sums: HashMap<candle_core::TensorId, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of `vars` from one micro-batch.
    pub fn add(&mut self, vars: &[(String, Var)], grads: &GradStore) -> Result<()> {
        for (_, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                let id = var.as_tensor().id();
                let sum = match self.sums.remove(&id) {
                    Some(s) => (s + g)?,
                    None => g,
                };
                self.sums.insert(id, sum);
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Number of micro-batches added.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The accumulated gradients, each divided by `divisor` (the number of micro-batches when
    /// every micro-batch loss was a mean), as a `GradStore` for [`Adam::step`]; resets.
    pub fn take(&mut self, vars: &[(String, Var)], divisor: f64) -> Result<GradStore> {
        let mut store = GradStore::default();
        for (_, var) in vars {
            if let Some(sum) = self.sums.remove(&var.as_tensor().id()) {
                store.insert(var.as_tensor(), sum.affine(1.0 / divisor, 0.0)?);
            }
        }
        self.sums.clear();
        self.micro_batches = 0;
        Ok(store)
    }
}

/// The global L2 norm of the gradients of `vars`.
pub fn grad_norm(vars: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64;
        }
    }
    Ok(total.sqrt())
}

/// Scales the gradients so their global norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` (coefficient `max_norm / (norm + 1e-6)`, applied only when
/// below 1). Returns the norm before clipping.
pub fn clip_grad_norm(vars: &[(String, Var)], grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(vars, grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), g.affine(coef, 0.0)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

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
            let c =
                Tensor::new(&[1.0f32, -0.5, 2.0, 0.25], &dev)?.affine(1.0 + step as f64, 0.0)?;
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
}
