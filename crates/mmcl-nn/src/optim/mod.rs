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

mod accumulate;
mod adam;
mod update;

pub use accumulate::{GradAccumulator, clip_grad_norm, grad_norm};
pub use adam::{Adam, AdamConfig};

use std::collections::BTreeMap;

use candle_core::Var;

use crate::ParamStore;
use crate::checkpoint::glob_match;

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

#[cfg(test)]
mod tests;
