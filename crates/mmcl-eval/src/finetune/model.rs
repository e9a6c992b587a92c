//! The fine-tuning model: the ECG encoder with attention pooling and a linear head.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};
use mmcl_nn::layers::Linear;
use mmcl_nn::rng::SharedRng;
use mmcl_nn::{ParamStore, StateDict};

use crate::{Error, Result};

/// The ECG encoder with a linear head, for fine-tuning (see the module docs).
#[derive(Debug, Clone)]
pub struct FinetuneModel {
    encoder: EcgVit,
    head: Linear,
    pooling: Pooling,
    head_norm: bool,
    outputs: usize,
    store: ParamStore,
    seed: u64,
    head_init_std: f64,
}

impl FinetuneModel {
    /// A freshly initialised model with `outputs` logits, on `device`. `encoder.num_classes`
    /// is ignored (the head is built here); `reference_head_norm` applies `fc_norm` twice.
    pub fn new(
        encoder: &EcgVitConfig,
        outputs: usize,
        head_init_std: f64,
        reference_head_norm: bool,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if outputs == 0 {
            return Err(Error::InvalidInput(
                "the head needs at least one output".into(),
            ));
        }
        let mut cfg = encoder.clone();
        cfg.num_classes = 0;
        let store = ParamStore::new(seed);
        let vb = store.var_builder(DType::F32, device);
        let model = EcgVit::new(&cfg, SharedRng::new(seed), vb.clone())?;
        let head = Linear::new(
            cfg.embed_dim,
            outputs,
            Some(mmcl_nn::init::ZEROS),
            mmcl_nn::init::trunc_normal(head_init_std),
            vb.pp("head"),
        )?;
        let pooling = cfg.pooling();
        Ok(Self {
            head_norm: reference_head_norm && cfg.has_fc_norm(),
            encoder: model,
            head,
            pooling,
            outputs,
            store,
            seed,
            head_init_std,
        })
    }

    /// Loads a pre-trained encoder (any layout of [`mmcl_ecg::checkpoint`]); components the
    /// file lacks (attention pooling, `fc_norm`, the head) keep their initialisation, and the
    /// head's weight is redrawn afterwards, as the reference does.
    pub fn load_pretrained(&self, path: &Path) -> Result<mmcl_ecg::LoadSummary> {
        // Global pooling's rules: `norm` and `attention_pool` may be absent.
        let summary =
            mmcl_ecg::load_encoder(&self.store, self.encoder.config(), path, Pooling::Global)?;
        self.reset_head_weight()?;
        Ok(summary)
    }

    /// Loads a fine-tuned model saved by [`Self::state_dict`] (or the reference's fine-tuned
    /// checkpoint), strictly: every key must be there, the head included.
    pub fn load_finetuned(&self, path: &Path) -> Result<mmcl_ecg::LoadSummary> {
        let summary =
            mmcl_ecg::load_encoder(&self.store, self.encoder.config(), path, self.pooling)?;
        if let Some(missing) = summary
            .report
            .missing
            .iter()
            .find(|k| k.starts_with("head.") || k.starts_with("fc_norm."))
        {
            return Err(Error::format(
                path,
                format!("not a fine-tuned model: {missing} is missing"),
            ));
        }
        Ok(summary)
    }

    fn reset_head_weight(&self) -> Result<()> {
        let Some(var) = self.store.get("head.weight") else {
            return Ok(());
        };
        // The same seeded draw as at construction (the store derives it from seed and name).
        let fresh = ParamStore::new(self.seed);
        let value = fresh.var_builder(DType::F32, var.device()).get_with_hints(
            var.as_tensor().dims(),
            "head.weight",
            mmcl_nn::init::trunc_normal(self.head_init_std),
        )?;
        var.set(&value)?;
        Ok(())
    }

    /// The parameters.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The encoder.
    pub fn encoder(&self) -> &EcgVit {
        &self.encoder
    }

    /// Number of logits.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Names of the trainable parameters the forward pass does not use (`norm.*` when the
    /// encoder pools: the reference deletes that norm).
    pub fn unused_parameters(&self) -> Vec<String> {
        if self.pooling == Pooling::Cls {
            return Vec::new();
        }
        self.store
            .trainable_vars()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("norm."))
            .collect()
    }

    /// The pooled features (before the head's extra norm).
    ///
    /// # Shapes
    /// `[B, 1, leads, T]` → `[B, D]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.encoder.forward_features(x, self.pooling, train)?)
    }

    /// The logits; dropout and drop-path when `train`.
    ///
    /// # Shapes
    /// `[B, 1, leads, T]` (or `[B, leads, T]`) → `[B, outputs]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut features = self.features(x, train)?; // [B, D]
        if self.head_norm
            && let Some(norm) = self.encoder.fc_norm()
        {
            features = norm.forward(&features)?;
        }
        Ok(self.head.forward(&features)?) // [B, outputs]
    }

    /// The weights under the reference's names, without the unused `norm.*`, on the CPU.
    pub fn state_dict(&self) -> Result<StateDict> {
        let unused = self.unused_parameters();
        let mut out = StateDict::default();
        for (name, var) in self.store.named_vars() {
            if !unused.contains(&name) {
                // A real copy: on the CPU `to_device` would share the variable's storage, which
                // the optimiser keeps updating.
                let t = var.as_tensor().detach();
                let t = if t.device().is_cpu() {
                    t.copy()?
                } else {
                    t.to_device(&Device::Cpu)?
                };
                out.insert(name, t);
            }
        }
        Ok(out)
    }

    /// Sets the weights of `state` (names as [`Self::state_dict`]); others stay as they are.
    pub(super) fn restore(&self, state: &StateDict) -> Result<()> {
        for (name, var) in self.store.named_vars() {
            if let Some(t) = state.get(&name) {
                var.set(&t.to_device(var.device())?)?;
            }
        }
        Ok(())
    }
}
