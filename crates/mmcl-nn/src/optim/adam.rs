//! The Adam / AdamW optimiser: hyper-parameters, the step over parameter groups, and its state.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use candle_core::Var;
use candle_core::backprop::GradStore;
use serde::{Deserialize, Serialize};

use super::ParamGroup;
use super::update::{self, Moments, UpdateScalars};
use crate::checkpoint::StateDict;
use crate::{Error, Result};

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
            let decoupled = self.config.decoupled_weight_decay && wd != 0.0;
            let scalars = UpdateScalars {
                beta1,
                beta2,
                l2_decay: if decoupled { 0.0 } else { wd },
                decoupled_shrink: decoupled.then_some(1.0 - lr * wd),
                step_size: lr / bias_correction1,
                inv_bias_correction2_sqrt: 1.0 / bias_correction2_sqrt,
                eps: self.config.eps,
            };
            for (name, var) in &group.vars {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let moments = match self.moments.entry(name.clone()) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(Moments::zeros_like(var.as_tensor())?),
                };
                update::apply(var, grad, moments, scalars)?;
            }
        }
        Ok(())
    }

    /// The optimiser state: `exp_avg.<name>` and `exp_avg_sq.<name>` tensors, and the step count
    /// as metadata (`steps`).
    pub fn state(&self) -> Result<(StateDict, HashMap<String, String>)> {
        let mut sd = StateDict::default();
        for (name, m) in &self.moments {
            // Copies: the live moments change in place at the next step.
            let m = m.deep_copy()?;
            sd.insert(format!("exp_avg.{name}"), m.exp_avg);
            sd.insert(format!("exp_avg_sq.{name}"), m.exp_avg_sq);
        }
        let mut meta = HashMap::new();
        meta.insert("steps".to_string(), self.steps.to_string());
        meta.insert(
            "config".to_string(),
            serde_json::to_string(&self.config).unwrap_or_default(),
        );
        Ok((sd, meta))
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
            // A moment of another float width converts; integers, non-finite values or a
            // negative second moment cannot come from Adam and would train on NaN silently.
            let bad = |reason: String| Error::BadCheckpoint {
                path: state.source().to_path_buf(),
                reason: format!("optimiser state {key} {reason}"),
            };
            if !tensor.dtype().is_float() {
                return Err(bad(format!("is {:?}, not a float tensor", tensor.dtype())));
            }
            let t = tensor.to_dtype(var.dtype())?.to_device(var.device())?;
            let finite = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            if let Some(v) = finite.iter().find(|v| !v.is_finite()) {
                return Err(bad(format!("holds the non-finite value {v}")));
            }
            if kind == "sq"
                && let Some(v) = finite.iter().find(|&&v| v < 0.0)
            {
                return Err(bad(format!(
                    "holds the negative value {v} (a second moment is a mean of squares)"
                )));
            }
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
                    // Copies: the update writes the moments in place, and the state's tensors
                    // may be the caller's.
                    let moments = Moments {
                        exp_avg,
                        exp_avg_sq,
                    };
                    complete.insert(name, moments.deep_copy()?);
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
        let (sd, meta) = self.state()?;
        sd.write_safetensors(path, Some(meta))
    }

    /// Reads a state written by [`Self::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let steps = crate::checkpoint::read_safetensors_metadata(path)?
            .get("steps")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Error::BadCheckpoint {
                path: path.to_path_buf(),
                reason: "the optimiser state has no step count".into(),
            })?;
        let state = StateDict::read(path)?;
        self.load_state(&state, steps)
    }
}
