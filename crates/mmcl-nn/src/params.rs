//! A parameter store with deterministic, seeded initialisation.
//!
//! Models are built from a [`candle_nn::VarBuilder`] whose `vb.pp(..)` paths are exactly the
//! PyTorch `state_dict` keys. [`ParamStore`] is the backend of that builder: every tensor a model
//! asks for becomes a named [`Var`]. Unlike candle's `VarMap` it
//! - initialises from a seed, per name, so a model's initial weights do not depend on the order
//!   in which layers are built, nor on the global RNG;
//! - keeps names sorted, so optimisers and checkpoints iterate in a stable order;
//! - knows which entries are buffers (BatchNorm running statistics), not trainable parameters;
//! - can freeze entries (fixed position embeddings): [`ParamStore::freeze`] keeps them in the
//!   store and its checkpoints but out of [`ParamStore::trainable_vars`], hence out of the
//!   optimiser, as PyTorch's `requires_grad=False`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, init::NormalOrUniform};

use crate::checkpoint::{self, LoadOptions, LoadReport, StateDict};
use crate::{Error, Result};

/// Names that PyTorch keeps as buffers rather than parameters.
const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// Whether a `state_dict` key names a buffer (not trained by the optimiser).
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BUFFER_SUFFIXES.contains(&last)
}

/// A named, seeded collection of variables; cheap to clone (shared).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<BTreeMap<String, Var>>>,
    frozen: Arc<Mutex<BTreeSet<String>>>,
    seed: u64,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("seed", &self.seed)
            .field("len", &self.lock().len())
            .field("frozen", &self.frozen_names())
            .finish()
    }
}

impl ParamStore {
    /// An empty store whose random initialisations derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
            frozen: Arc::new(Mutex::new(BTreeSet::new())),
            seed,
        }
    }

    /// The seed of the initialisations.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked while holding it; the map is intact.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A builder creating (or reusing) variables of `dtype` on `device` in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every entry, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The trainable entries (buffers and frozen entries excluded), sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let frozen = self.lock_frozen().clone();
        self.lock()
            .iter()
            .filter(|(k, _)| !is_buffer(k) && !frozen.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn lock_frozen(&self) -> MutexGuard<'_, BTreeSet<String>> {
        // As for `lock`: a poisoned set is still intact.
        self.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the entries `names` as frozen (PyTorch's `requires_grad=False`): they stay in the
    /// store, its state dicts and checkpoints, but [`Self::trainable_vars`] (and so every
    /// optimiser group built from it) leaves them out. Models should also detach them in their
    /// forward pass, so that no gradient is computed for them.
    ///
    /// # Errors
    /// When a name is not in the store (nothing is frozen then).
    pub fn freeze(&self, names: &[&str]) -> Result<()> {
        let map = self.lock();
        if let Some(missing) = names.iter().find(|n| !map.contains_key(**n)) {
            return Err(Error::InvalidArgument(format!(
                "cannot freeze {missing}: the store has no such variable"
            )));
        }
        drop(map);
        self.lock_frozen()
            .extend(names.iter().map(|n| n.to_string()));
        Ok(())
    }

    /// Makes frozen entries trainable again (names that are not frozen are ignored).
    pub fn unfreeze(&self, names: &[&str]) {
        let mut frozen = self.lock_frozen();
        for n in names {
            frozen.remove(*n);
        }
    }

    /// Whether the entry `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.lock_frozen().contains(name)
    }

    /// The frozen entries, sorted.
    pub fn frozen_names(&self) -> Vec<String> {
        self.lock_frozen().iter().cloned().collect()
    }

    /// The variable `name`, if present.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Total number of scalar elements of the trainable entries.
    pub fn num_trainable_elements(&self) -> usize {
        self.trainable_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    /// The current values as a state dict (tensors detached from the variables, same device).
    pub fn state_dict(&self) -> Result<StateDict> {
        let mut sd = StateDict::default();
        for (name, var) in self.named_vars() {
            sd.insert(name, var.as_tensor().detach().copy()?);
        }
        Ok(sd)
    }

    /// Copies values from `state` into the matching variables, checking names and shapes against
    /// `options`. Nothing is changed when the check fails.
    pub fn load_state_dict(&self, state: &StateDict, options: &LoadOptions) -> Result<LoadReport> {
        let vars = self.named_vars();
        let report = checkpoint::match_keys(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_tensor().dims())),
            state,
        );
        report
            .check(options)
            .map_err(|report| Error::CheckpointMismatch {
                path: state.source().to_path_buf(),
                report: Box::new(report),
            })?;
        for (name, var) in &vars {
            if let Some(value) = state.get(name) {
                let value = value.to_dtype(var.dtype())?.to_device(var.device())?;
                var.set(&value)?;
            }
        }
        Ok(report)
    }

    /// Reads a checkpoint file (see [`StateDict::read`]) and loads it with [`Self::load_state_dict`].
    pub fn load_file(&self, path: &Path, options: &LoadOptions) -> Result<LoadReport> {
        let state = StateDict::read(path)?;
        self.load_state_dict(&state, options)
    }

    /// Writes every entry to a safetensors file, atomically (temporary name, then rename).
    pub fn save_safetensors(
        &self,
        path: &Path,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<()> {
        self.state_dict()?.write_safetensors(path, metadata)
    }

    /// Deterministic per-name stream: the same (seed, name) always gives the same values.
    fn init_values(&self, shape: &Shape, name: &str, init: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = crate::rng::SplitMix64::new(self.seed ^ crate::rng::hash_str(name));
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n)
                .map(|_| (lo + (up - lo) * rng.next_f64()) as f32)
                .collect(),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * rng.next_normal()) as f32)
                .collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n)
                            .map(|_| (-bound + 2.0 * bound * rng.next_f64()) as f32)
                            .collect()
                    }
                    NormalOrUniform::Normal => {
                        (0..n).map(|_| (std * rng.next_normal()) as f32).collect()
                    }
                }
            }
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut map = self.lock();
        if let Some(var) = map.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "parameter {name} requested with shape {s:?} but it exists with {:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self.init_values(&s, name, h);
        let tensor = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        map.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(var) => var.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("parameter {name} does not exist in the store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_is_seeded_per_name_and_order_free() -> Result<()> {
        let a = ParamStore::new(7);
        let b = ParamStore::new(7);
        let dev = Device::Cpu;
        let va = a.var_builder(DType::F32, &dev);
        let vb = b.var_builder(DType::F32, &dev);
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        };
        let a1 = va.get_with_hints((3, 4), "x.weight", init)?;
        let _ = va.get_with_hints(5, "y.weight", init)?;
        let _ = vb.get_with_hints(5, "y.weight", init)?;
        let b1 = vb.get_with_hints((3, 4), "x.weight", init)?;
        let diff = (a1 - b1)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        let c = ParamStore::new(8);
        let c1 = c
            .var_builder(DType::F32, &dev)
            .get_with_hints((3, 4), "x.weight", init)?;
        let a1 = a.get("x.weight").map(|v| v.as_tensor().clone());
        let diff = (a1.ok_or(Error::InvalidArgument("missing".into()))? - c1)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert!(diff > 0.0);
        Ok(())
    }

    #[test]
    fn buffers_are_told_apart() {
        assert!(is_buffer("layer1.0.bn1.running_mean"));
        assert!(is_buffer("bn1.num_batches_tracked"));
        assert!(!is_buffer("bn1.weight"));
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let _ = vb.pp("bn").get_with_hints(4, "weight", Init::Const(1.0));
        let _ = vb
            .pp("bn")
            .get_with_hints(4, "running_var", Init::Const(1.0));
        let names: Vec<_> = store.trainable_vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["bn.weight".to_string()]);
    }

    #[test]
    fn frozen_entries_are_kept_but_not_trained() -> Result<()> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let _ = vb.get_with_hints(4, "pos_embed", Init::Const(0.5))?;
        let _ = vb.get_with_hints(4, "w", Init::Const(1.0))?;
        assert!(store.freeze(&["pos_embed", "typo"]).is_err());
        assert!(!store.is_frozen("pos_embed"));
        store.freeze(&["pos_embed"])?;
        assert!(store.clone().is_frozen("pos_embed"));
        let names: Vec<_> = store.trainable_vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["w".to_string()]);
        assert_eq!(store.num_trainable_elements(), 4);
        // Still saved and loaded with the rest.
        assert!(store.state_dict()?.contains("pos_embed"));
        assert_eq!(store.frozen_names(), vec!["pos_embed".to_string()]);
        store.unfreeze(&["pos_embed"]);
        assert_eq!(store.trainable_vars().len(), 2);
        Ok(())
    }

    #[test]
    fn statistics_of_randn_init_are_right() -> Result<()> {
        let store = ParamStore::new(3);
        let t = store.var_builder(DType::F32, &Device::Cpu).get_with_hints(
            20_000,
            "w",
            Init::Randn {
                mean: 1.0,
                stdev: 0.5,
            },
        )?;
        let mean = t.mean_all()?.to_scalar::<f32>()?;
        let var = t
            .broadcast_sub(&t.mean_all()?)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "std {}", var.sqrt());
        Ok(())
    }
}
