//! Fine-tuning the ECG encoder with a head, as the reference's mae `main_finetune.py` /
//! `engine_finetune.py` (the repository's fine-tuning stage of the paper).
//!
//! - **Model** ([`FinetuneModel`]): the ECG ViT with attention pooling (an
//!   `nn.MultiheadAttention` whose query is the token mean, then `fc_norm`; the reference's
//!   `attention_pool`) and a linear `head`. As the reference's `models_vit.VisionTransformer`,
//!   the pooled features go through `fc_norm` a second time before the head (its
//!   `forward_features` ends with `fc_norm` and timm's `forward_head` applies it again);
//!   [`FinetuneConfig::reference_head_norm`] turns that off. Keys are the reference's
//!   (`blocks.…`, `attention_pool.…`, `fc_norm.…`, `head.…`; no `norm.…`), so a fine-tuned
//!   model loads in both implementations. The head's weight is drawn from
//!   `trunc_normal(std = 0.01)` after the pre-trained weights are loaded, as the reference does.
//! - **Losses**: one binary target → two logits, cross-entropy with label smoothing
//!   ([`smoothed_cross_entropy`], `nn.CrossEntropyLoss(label_smoothing=0.1)`); several binary
//!   targets (multi-label) → one logit each, binary cross-entropy on smoothed targets
//!   `y·(1 − ε) + ε/2` ([`masked_bce_with_logits`]); regression on standardised targets →
//!   [`masked_mse`]. Missing labels and values are masked: they add nothing to the loss and are
//!   not counted in its mean (the reference multiplies them by 0 but still counts them).
//! - **Optimisation**: AdamW (β = 0.9, 0.999) over layer-wise-decayed parameter groups
//!   ([`mmcl_nn::optim::ParamGroup::layer_decay_groups`], decay 0.5; weight decay 0.2 except
//!   biases, norms, tokens and the position embedding), learning rate `blr · batch / 4` unless
//!   given, per-step linear warm-up then half cosine ([`WarmupCosine::per_step`]), drop-path
//!   0.2, optional gradient clipping.
//! - **Selection**: after every epoch the validation split is evaluated
//!   ([`crate::metrics::evaluate`]); the monitored metric (AUROC for classification, R² for
//!   regression, averaged over targets) selects the best weights, and early stopping ends the
//!   run when the metric has not come within `max_delta` of its best for more than `patience`
//!   epochs (the reference's `EarlyStop`). The best weights are then evaluated on the test split
//!   with bootstrap intervals.
//!
//! Data come from a dataset cache through [`mmcl_data::loader::Loader`]: training batches are
//! shuffled, randomly cropped to the encoder's input length and augmented as the reference's
//! fine-tuning (FT surrogate 0.075 with probability 0.5, jitter 0.2, rescaling 0.5); validation
//! and test batches are cropped from sample 0, unaugmented.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{D, DType, Device, Module, Tensor};
use mmcl_data::cache::Cache;
use mmcl_data::ecg::augment::EcgAugmentConfig;
use mmcl_data::loader::{Batch, Loader, LoaderConfig};
use mmcl_data::tables::Split;
use mmcl_ecg::{EcgVit, EcgVitConfig, Pooling};
use mmcl_nn::layers::Linear;
use mmcl_nn::optim::{Adam, AdamConfig, ParamGroup};
use mmcl_nn::rng::SharedRng;
use mmcl_nn::schedule::WarmupCosine;
use mmcl_nn::{ParamStore, StateDict};
use serde::{Deserialize, Serialize};

use crate::metrics::{Bootstrap, Evaluation, Task};
use crate::runlog::RunLogWriter;
use crate::{Error, Matrix, Result};

// ---------------------------------------------------------------------------------------------
// Losses.
// ---------------------------------------------------------------------------------------------

/// `Σ values·mask / max(Σ mask, 1)`.
fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let count = mask.sum_all()?.clamp(1.0, f64::MAX)?;
    Ok((values * mask)?.sum_all()?.div(&count)?)
}

/// `log_softmax` over the last dimension, stable (the maximum is subtracted, as a constant).
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach(); // [N, 1]
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [N, 1]
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// Cross-entropy with label smoothing `ε`, as `nn.CrossEntropyLoss(label_smoothing=ε)`: the
/// target distribution is `(1 − ε)·onehot + ε/C`; rows whose `mask` is 0 are left out of the
/// mean.
///
/// # Shapes
/// `logits`: `[N, C]`, `labels`: `[N]` (class indices as floats), `mask`: `[N]` → scalar.
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    if labels.dims() != [n] || mask.dims() != [n] {
        return Err(Error::InvalidInput(format!(
            "cross-entropy: logits {:?}, labels {:?} and mask {:?} do not fit",
            logits.dims(),
            labels.dims(),
            mask.dims()
        )));
    }
    let classes = Tensor::arange(0u32, c as u32, logits.device())?
        .to_dtype(labels.dtype())?
        .unsqueeze(0)?; // [1, C]
    let onehot = labels
        .unsqueeze(1)?
        .broadcast_eq(&classes)?
        .to_dtype(logits.dtype())?; // [N, C]
    let target = onehot.affine(1.0 - smoothing, smoothing / c as f64)?; // [N, C]
    let per_row = (target * log_softmax(logits)?)?.sum(1)?.neg()?; // [N]
    masked_mean(&per_row, &mask.to_dtype(logits.dtype())?)
}

/// Binary cross-entropy with logits on smoothed targets `y·(1 − ε) + ε/2`, averaged over the
/// entries whose `mask` is 1 (computed stably as `max(z, 0) − z·y + log(1 + e^{−|z|})`).
///
/// # Shapes
/// `logits`, `labels`, `mask`: `[N, K]` → scalar.
pub fn masked_bce_with_logits(
    logits: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    if labels.dims() != logits.dims() || mask.dims() != logits.dims() {
        return Err(Error::InvalidInput(format!(
            "binary cross-entropy: logits {:?}, labels {:?} and mask {:?} differ",
            logits.dims(),
            labels.dims(),
            mask.dims()
        )));
    }
    let y = labels
        .to_dtype(logits.dtype())?
        .affine(1.0 - smoothing, smoothing / 2.0)?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_entry = ((logits.relu()? - (logits * y)?)? + softplus)?;
    masked_mean(&per_entry, &mask.to_dtype(logits.dtype())?)
}

/// Mean squared error over the entries whose `mask` is 1.
///
/// # Shapes
/// `prediction`, `target`, `mask`: `[N, K]` → scalar.
pub fn masked_mse(prediction: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if target.dims() != prediction.dims() || mask.dims() != prediction.dims() {
        return Err(Error::InvalidInput(format!(
            "mean squared error: prediction {:?}, target {:?} and mask {:?} differ",
            prediction.dims(),
            target.dims(),
            mask.dims()
        )));
    }
    let diff = (prediction - target.to_dtype(prediction.dtype())?)?;
    masked_mean(&diff.sqr()?, &mask.to_dtype(prediction.dtype())?)
}

// ---------------------------------------------------------------------------------------------
// Early stopping.
// ---------------------------------------------------------------------------------------------

/// The reference's `EarlyStop` (mae `util/callbacks.py`): an epoch whose metric reaches the
/// best so far, or comes within `max_delta` of it, resets the counter; any other epoch
/// increments it, and training stops once the counter exceeds `patience`.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    patience: Option<usize>,
    max_delta: f64,
    higher_is_better: bool,
    best: Option<f64>,
    counter: usize,
}

impl EarlyStopping {
    /// `patience = None` never stops.
    pub fn new(patience: Option<usize>, max_delta: f64, higher_is_better: bool) -> Self {
        Self {
            patience,
            max_delta,
            higher_is_better,
            best: None,
            counter: 0,
        }
    }

    /// Records an epoch's metric; `true` when training should stop.
    pub fn update(&mut self, metric: f64) -> bool {
        let Some(patience) = self.patience else {
            return false;
        };
        // Compare as an increasing metric.
        let sign = if self.higher_is_better { 1.0 } else { -1.0 };
        let v = sign * metric;
        if v.is_nan() {
            self.counter += 1;
        } else {
            match self.best {
                Some(best) if v < best - self.max_delta => self.counter += 1,
                Some(best) if v < best => self.counter = 0,
                _ => {
                    self.best = Some(v);
                    self.counter = 0;
                }
            }
        }
        self.counter > patience
    }

    /// Epochs since the metric last came within `max_delta` of its best.
    pub fn counter(&self) -> usize {
        self.counter
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------------

fn default_encoder() -> EcgVitConfig {
    let mut cfg = EcgVitConfig::paper();
    cfg.attention_pool = true;
    cfg.global_pool = false;
    cfg.drop_path_rate = 0.2;
    cfg
}

/// Everything a fine-tuning run needs. Defaults: the paper's encoder with attention pooling
/// and drop-path 0.2, and the fine-tuning recipe of the reference's scripts (batch 32,
/// 400 epochs with 5 of warm-up, `blr` 1e-5, layer decay 0.5, weight decay 0.2, label
/// smoothing 0.1, patience 25 with a tolerance of 0.0025).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The dataset cache (`mmcl build-dataset`) with train, val and test splits.
    pub cache: PathBuf,
    /// The pre-trained encoder (any layout [`mmcl_ecg::checkpoint`] reads: MAE, MMCL export,
    /// released `signal_encoder*.pth`, a fine-tuned model); `None` trains from scratch.
    pub checkpoint: Option<PathBuf>,
    /// The encoder (the reference's argument names or a preset `model`).
    pub encoder: EcgVitConfig,
    /// Classification (disease labels) or regression (phenotypes).
    pub task: Task,
    /// Label or phenotype names of the cache to predict; empty: all of them.
    pub targets: Vec<String>,
    /// Training epochs at most.
    pub epochs: usize,
    /// Samples per optimisation step.
    pub batch_size: usize,
    /// Absolute learning rate; `None`: `blr · batch_size / 4`.
    pub lr: Option<f64>,
    /// Base learning rate.
    pub blr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Linear warm-up, in epochs.
    pub warmup_epochs: usize,
    /// Layer-wise learning-rate decay.
    pub layer_decay: f64,
    /// AdamW weight decay (not on biases, norms, tokens, position embedding).
    pub weight_decay: f64,
    /// Label smoothing of classification targets.
    pub smoothing: f64,
    /// Stop early when the validation metric stalls (else every epoch runs).
    pub early_stopping: bool,
    /// Early stopping: epochs without improvement tolerated.
    pub patience: usize,
    /// Early stopping: an epoch within this much of the best counts as no worse.
    pub max_delta: f64,
    /// The validation metric that selects the best weights (`auroc`, `auprc`, `r2`,
    /// `pearson_r`, `mae`, …, or `loss`); default AUROC / R².
    pub monitor: Option<String>,
    /// Clip the gradients' global norm to this value.
    pub clip_grad: Option<f64>,
    /// Training augmentation; `None` (or `apply_prob = 0`) for none.
    pub augment: Option<EcgAugmentConfig>,
    /// Random crop start in training (else from sample 0).
    pub random_crop: bool,
    /// Standard deviation of the head's initial weights.
    pub head_init_std: f64,
    /// Apply `fc_norm` a second time before the head, as the reference's fine-tuning model.
    pub reference_head_norm: bool,
    /// Seed of initialisation, shuffling, augmentation and drop-path.
    pub seed: u64,
    /// Loader worker threads (0: half the cores).
    pub loader_threads: usize,
    /// Threshold of F1 / balanced accuracy / accuracy.
    pub threshold: f64,
    /// Bootstrap of the test metrics.
    pub bootstrap: Bootstrap,
    /// Where `mmcl finetune` writes the run (not used by [`finetune`] itself).
    pub output: Option<PathBuf>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            cache: PathBuf::new(),
            checkpoint: None,
            encoder: default_encoder(),
            task: Task::Classification,
            targets: Vec::new(),
            epochs: 400,
            batch_size: 32,
            lr: None,
            blr: 1e-5,
            min_lr: 0.0,
            warmup_epochs: 5,
            layer_decay: 0.5,
            weight_decay: 0.2,
            smoothing: 0.1,
            early_stopping: true,
            patience: 25,
            max_delta: 0.0025,
            monitor: None,
            clip_grad: None,
            augment: Some(EcgAugmentConfig::mae()),
            random_crop: true,
            head_init_std: 0.01,
            reference_head_norm: true,
            seed: 0,
            loader_threads: 0,
            threshold: crate::metrics::DEFAULT_THRESHOLD,
            bootstrap: Bootstrap::default(),
            output: None,
        }
    }
}

impl FinetuneConfig {
    /// Reads a JSON or TOML configuration; relative paths are relative to the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let mut cfg: FinetuneConfig = match ext.as_deref() {
            Some("json") => serde_json::from_str(&text).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                line: None,
                source,
            })?,
            Some("toml") => toml::from_str(&text).map_err(|source| Error::Toml {
                path: path.to_path_buf(),
                source,
            })?,
            _ => {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    reason: "the configuration must be a .json or .toml file".into(),
                });
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.cache.is_relative() {
            cfg.cache = base.join(&cfg.cache);
        }
        for p in [cfg.checkpoint.as_mut(), cfg.output.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate().map_err(|e| Error::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// The learning rate before scheduling.
    pub fn learning_rate(&self) -> f64 {
        self.lr.unwrap_or(self.blr * self.batch_size as f64 / 4.0)
    }

    /// The monitored validation metric and whether larger is better.
    pub fn monitored(&self) -> (String, bool) {
        let name = self.monitor.clone().unwrap_or_else(|| {
            match self.task {
                Task::Classification => "auroc",
                Task::Regression => "r2",
            }
            .to_string()
        });
        let higher = name != "loss" && Task::higher_is_better(&name);
        (name, higher)
    }

    /// Checks that the numbers are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidInput(why));
        if self.cache.as_os_str().is_empty() {
            return bad("no dataset cache given (`cache`)".into());
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("epochs and batch_size must be positive".into());
        }
        let lr = self.learning_rate();
        let usable = |v: f64| v.is_finite() && v >= 0.0;
        if !usable(lr) || !usable(self.min_lr) {
            return bad(format!(
                "learning rates must be finite and non-negative, got {lr} and min_lr {}",
                self.min_lr
            ));
        }
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return bad(format!(
                "layer_decay {} must lie in (0, 1]",
                self.layer_decay
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay {} must be non-negative",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            return bad(format!("smoothing {} must lie in [0, 1)", self.smoothing));
        }
        if !(self.max_delta.is_finite() && self.max_delta >= 0.0) {
            return bad(format!("max_delta {} must be non-negative", self.max_delta));
        }
        if self.clip_grad.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("clip_grad must be positive".into());
        }
        if !(self.head_init_std.is_finite() && self.head_init_std >= 0.0) {
            return bad("head_init_std must be non-negative".into());
        }
        let (monitor, _) = self.monitored();
        if monitor != "loss" && !self.task.metric_names().contains(&monitor.as_str()) {
            return bad(format!(
                "monitor {monitor:?} is not a {} metric (use loss or one of {})",
                self.task,
                self.task.metric_names().join(", ")
            ));
        }
        self.encoder.validate()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Model.
// ---------------------------------------------------------------------------------------------

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
            return Err(Error::Format {
                path: path.to_path_buf(),
                reason: format!("not a fine-tuned model: {missing} is missing"),
            });
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

    fn restore(&self, state: &StateDict) -> Result<()> {
        for (name, var) in self.store.named_vars() {
            if let Some(t) = state.get(&name) {
                var.set(&t.to_device(var.device())?)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Training.
// ---------------------------------------------------------------------------------------------

/// How the task's targets are learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Objective {
    /// One binary target, two logits, softmax cross-entropy.
    Softmax,
    /// Several binary targets, one logit each.
    MultiLabel,
    /// Standardised continuous targets.
    Regression,
}

/// What happens during a run, for progress displays.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// An epoch starts.
    EpochStart {
        /// The epoch (0-based).
        epoch: usize,
        /// Epochs at most.
        epochs: usize,
        /// Optimisation steps in it.
        steps: usize,
    },
    /// A step was taken.
    Step {
        /// The step within the epoch (1-based count).
        step: usize,
        /// Its training loss.
        loss: f64,
    },
    /// The validation split was evaluated.
    Validated {
        /// The epoch, `None` for the model before training.
        epoch: Option<usize>,
        /// The monitored metric.
        metric: f64,
        /// The validation loss.
        loss: f64,
        /// Whether this is the best epoch so far.
        best: bool,
    },
    /// The test split is being evaluated.
    Testing,
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRecord {
    /// The epoch (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Learning rate at the end of the epoch (before layer scaling).
    pub lr: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// The monitored validation metric.
    pub val_metric: f64,
}

/// What a run produced.
#[derive(Debug)]
pub struct FinetuneOutcome {
    /// The model with the best validation weights.
    pub model: FinetuneModel,
    /// The predicted targets.
    pub target_names: Vec<String>,
    /// The monitored metric.
    pub monitor: String,
    /// Its value before training.
    pub initial_val_metric: f64,
    /// The epoch of the best weights.
    pub best_epoch: usize,
    /// The monitored metric at that epoch.
    pub best_val_metric: f64,
    /// Epochs run.
    pub epochs_run: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Per-epoch figures.
    pub history: Vec<EpochRecord>,
    /// Test metrics of the best weights, with bootstrap intervals.
    pub test: Evaluation,
    /// Test truth (original units for regression; NaN where missing), `N × K`.
    pub test_truth: Matrix<f64>,
    /// Test predictions (probabilities, or original units), `N × K`.
    pub test_predictions: Matrix<f64>,
    /// Participant ids of the test rows.
    pub test_eids: Vec<u64>,
    /// What loading the pre-trained encoder did.
    pub load_summary: Option<String>,
}

/// The prepared data of a run.
struct Data {
    cache: Arc<Cache>,
    train: Arc<Loader>,
    val: Arc<Loader>,
    test: Arc<Loader>,
    columns: Vec<usize>,
    names: Vec<String>,
}

fn open_data(cfg: &FinetuneConfig, device: &Device) -> Result<Data> {
    let cache = Arc::new(Cache::open(&cfg.cache)?);
    let index = cache.index();
    let available = match cfg.task {
        Task::Classification => &index.label_names,
        Task::Regression => &index.phenotype_names,
    };
    let what = match cfg.task {
        Task::Classification => "label",
        Task::Regression => "phenotype",
    };
    let names: Vec<String> = if cfg.targets.is_empty() {
        available.clone()
    } else {
        cfg.targets.clone()
    };
    if names.is_empty() {
        return Err(Error::Format {
            path: cfg.cache.clone(),
            reason: format!("the cache has no {what} to predict"),
        });
    }
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        let j = available
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| Error::Format {
                path: cfg.cache.clone(),
                reason: format!(
                    "no {what} named {name:?}; the cache has: {}",
                    available.join(", ")
                ),
            })?;
        columns.push(j);
    }
    // Each target must be learnable and measurable in every split: checked now, not after
    // hours of training.
    for split in [Split::Train, Split::Val, Split::Test] {
        let rows = cache.split_indices(split);
        if rows.is_empty() {
            return Err(Error::Format {
                path: cfg.cache.clone(),
                reason: format!(
                    "the {split:?} split is empty; fine-tuning needs train, val and test"
                ),
            });
        }
        for (name, &j) in names.iter().zip(&columns) {
            let subjects = rows.iter().map(|&i| &index.subjects[i]);
            let ok = match cfg.task {
                Task::Classification => {
                    let values: Vec<u8> = subjects
                        .filter_map(|s| s.labels.get(j).copied().flatten())
                        .collect();
                    values.contains(&0) && values.contains(&1)
                }
                Task::Regression => {
                    let values: Vec<f64> = subjects
                        .filter_map(|s| s.phenotypes.get(j).copied().flatten())
                        .collect();
                    values.len() >= 2 && values.iter().any(|&v| v != values[0])
                }
            };
            if !ok {
                return Err(Error::Format {
                    path: cfg.cache.clone(),
                    reason: format!(
                        "{what} {name:?} cannot be {} on the {split:?} split: {}",
                        if split == Split::Train {
                            "learnt"
                        } else {
                            "evaluated"
                        },
                        match cfg.task {
                            Task::Classification => "it needs both classes",
                            Task::Regression => "it needs at least two different values",
                        }
                    ),
                });
            }
        }
    }
    let t = cfg.encoder.img_size[2];
    let train_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        shuffle: true,
        drop_last: false,
        seed: cfg.seed,
        ecg: true,
        ecg_crop: Some(t),
        ecg_random_crop: cfg.random_crop,
        ecg_augment: cfg.augment.clone(),
        image: false,
        image_augment: None,
        image_size: None,
        originals: false,
        prefetch: 2,
        threads: cfg.loader_threads,
    };
    let eval_cfg = LoaderConfig {
        seed: cfg.seed,
        ecg_crop: Some(t),
        threads: cfg.loader_threads,
        ..LoaderConfig::ecg_eval(cfg.batch_size)
    };
    let loader = |split, lc: &LoaderConfig| -> Result<Arc<Loader>> {
        Ok(Arc::new(Loader::new(
            cache.clone(),
            cache.split_indices(split),
            lc.clone(),
            device.clone(),
        )?))
    };
    Ok(Data {
        train: loader(Split::Train, &train_cfg)?,
        val: loader(Split::Val, &eval_cfg)?,
        test: loader(Split::Test, &eval_cfg)?,
        cache: cache.clone(),
        columns,
        names,
    })
}

/// The run's targets of a batch: values and mask `[B, K]` (standardised for regression).
fn batch_targets(batch: &Batch, task: Task, columns: &Tensor) -> Result<(Tensor, Tensor)> {
    let (values, mask) = match task {
        Task::Classification => (&batch.labels, &batch.label_mask),
        Task::Regression => (&batch.phenotypes, &batch.phenotype_mask),
    };
    Ok((
        values.index_select(columns, 1)?,
        mask.index_select(columns, 1)?,
    ))
}

fn loss_of(
    objective: Objective,
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    match objective {
        Objective::Softmax => {
            smoothed_cross_entropy(logits, &targets.squeeze(1)?, &mask.squeeze(1)?, smoothing)
        }
        Objective::MultiLabel => masked_bce_with_logits(logits, targets, mask, smoothing),
        Objective::Regression => masked_mse(logits, targets, mask),
    }
}

/// Predictions `[B, K]` from logits: probabilities, or standardised values.
fn predictions_of(objective: Objective, logits: &Tensor) -> Result<Tensor> {
    Ok(match objective {
        Objective::Softmax => mmcl_nn::ops::softmax_last_dim(logits)?.narrow(1, 1, 1)?,
        Objective::MultiLabel => candle_nn::ops::sigmoid(logits)?,
        Objective::Regression => logits.clone(),
    })
}

/// Predictions and truth of a whole split.
struct SplitResult {
    loss: f64,
    truth: Matrix<f64>,
    predictions: Matrix<f64>,
    eids: Vec<u64>,
}

fn run_split(
    model: &FinetuneModel,
    loader: &Arc<Loader>,
    data: &Data,
    cfg: &FinetuneConfig,
    objective: Objective,
    columns: &Tensor,
) -> Result<SplitResult> {
    let k = data.columns.len();
    let index = data.cache.index();
    let standardiser = &index.phenotype_standardiser;
    let (mut truth, mut predictions, mut eids) = (Vec::new(), Vec::new(), Vec::new());
    let (mut loss_sum, mut loss_weight) = (0.0, 0.0);
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let ecg = batch
            .ecg
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
        let logits = model.forward_t(ecg, false)?;
        let (targets, mask) = batch_targets(&batch, cfg.task, columns)?;
        let loss = loss_of(objective, &logits, &targets, &mask, cfg.smoothing)?;
        let present = mask.sum_all()?.to_scalar::<f32>()? as f64;
        loss_sum += loss.to_scalar::<f32>()? as f64 * present;
        loss_weight += present;
        let pred: Vec<f32> = predictions_of(objective, &logits)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        for (row, &pos) in batch.indices.iter().enumerate() {
            let subject = &index.subjects[pos];
            eids.push(subject.eid);
            for (c, &j) in data.columns.iter().enumerate() {
                let p = pred[row * k + c] as f64;
                match cfg.task {
                    Task::Classification => {
                        truth.push(
                            subject
                                .labels
                                .get(j)
                                .copied()
                                .flatten()
                                .map_or(f64::NAN, f64::from),
                        );
                        predictions.push(p);
                    }
                    Task::Regression => {
                        truth.push(
                            subject
                                .phenotypes
                                .get(j)
                                .copied()
                                .flatten()
                                .unwrap_or(f64::NAN),
                        );
                        predictions.push(p * standardiser.std[j] + standardiser.mean[j]);
                    }
                }
            }
        }
    }
    let n = eids.len();
    Ok(SplitResult {
        loss: if loss_weight > 0.0 {
            loss_sum / loss_weight
        } else {
            f64::NAN
        },
        truth: Matrix::new(n, k, truth)?,
        predictions: Matrix::new(n, k, predictions)?,
        eids,
    })
}

fn monitored_value(
    result: &SplitResult,
    cfg: &FinetuneConfig,
    names: &[String],
    monitor: &str,
) -> Result<f64> {
    if monitor == "loss" {
        return Ok(result.loss);
    }
    let eval = crate::metrics::evaluate(
        cfg.task,
        &result.truth,
        &result.predictions,
        names,
        cfg.threshold,
        &Bootstrap {
            resamples: 0,
            ..cfg.bootstrap
        },
    )?;
    eval.average_of(monitor)
        .map(|e| e.value)
        .ok_or_else(|| Error::InvalidInput(format!("the evaluation has no metric {monitor}")))
}

/// Fine-tunes as `cfg` says, on `device`; appends per-epoch records to `log` when given and
/// reports progress through `progress`.
///
/// # Errors
/// A bad configuration, cache or checkpoint (naming the file), a target that cannot be learnt
/// or evaluated on some split, a non-finite training loss.
pub fn finetune(
    cfg: &FinetuneConfig,
    device: &Device,
    mut log: Option<&mut RunLogWriter>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<FinetuneOutcome> {
    cfg.validate()?;
    let data = open_data(cfg, device)?;
    let k = data.columns.len();
    let objective = match (cfg.task, k) {
        (Task::Classification, 1) => Objective::Softmax,
        (Task::Classification, _) => Objective::MultiLabel,
        (Task::Regression, _) => Objective::Regression,
    };
    let outputs = if objective == Objective::Softmax {
        2
    } else {
        k
    };
    let model = FinetuneModel::new(
        &cfg.encoder,
        outputs,
        cfg.head_init_std,
        cfg.reference_head_norm,
        cfg.seed,
        device,
    )?;
    let load_summary = match &cfg.checkpoint {
        Some(path) => Some(model.load_pretrained(path)?.to_string()),
        None => None,
    };
    let columns = Tensor::from_vec(
        data.columns.iter().map(|&j| j as u32).collect::<Vec<_>>(),
        k,
        device,
    )?;

    let unused = model.unused_parameters();
    let mut groups = ParamGroup::layer_decay_groups(
        model.store(),
        "",
        cfg.encoder.depth,
        cfg.weight_decay,
        cfg.layer_decay,
    );
    for g in &mut groups {
        g.vars.retain(|(name, _)| !unused.contains(name));
    }
    groups.retain(|g| !g.vars.is_empty());
    let trainable: Vec<(String, candle_core::Var)> =
        groups.iter().flat_map(|g| g.vars.iter().cloned()).collect();
    let mut adam = Adam::new(
        groups,
        AdamConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            decoupled_weight_decay: true,
        },
    )?;
    let lr = cfg.learning_rate();
    let schedule = WarmupCosine::per_step(lr, cfg.warmup_epochs, cfg.epochs, cfg.min_lr);
    let (monitor, higher_is_better) = cfg.monitored();
    let better = |a: f64, b: f64| if higher_is_better { a > b } else { a < b };

    let initial = run_split(&model, &data.val, &data, cfg, objective, &columns)?;
    let initial_val_metric = monitored_value(&initial, cfg, &data.names, &monitor)?;
    progress(&Progress::Validated {
        epoch: None,
        metric: initial_val_metric,
        loss: initial.loss,
        best: false,
    });

    let mut stopper = EarlyStopping::new(
        cfg.early_stopping.then_some(cfg.patience),
        cfg.max_delta,
        higher_is_better,
    );
    let mut best: Option<(usize, f64, StateDict)> = None;
    let mut history = Vec::new();
    let mut stopped_early = false;
    let steps = data.train.num_batches();
    for epoch in 0..cfg.epochs {
        progress(&Progress::EpochStart {
            epoch,
            epochs: cfg.epochs,
            steps,
        });
        let (mut loss_sum, mut lr_now) = (0.0, 0.0);
        for (step, batch) in data.train.epoch(epoch as u64, 0).enumerate() {
            let batch = batch?;
            let ecg = batch
                .ecg
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("the loader returned no ECGs".into()))?;
            lr_now = schedule.lr(epoch, step, steps);
            let (targets, mask) = batch_targets(&batch, cfg.task, &columns)?;
            let logits = model.forward_t(ecg, true)?;
            let loss = loss_of(objective, &logits, &targets, &mask, cfg.smoothing)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::InvalidInput(format!(
                    "the training loss became {value} at epoch {epoch}, step {step}; lower the \
                     learning rate or enable clip_grad"
                )));
            }
            let mut grads = loss.backward()?;
            if let Some(max_norm) = cfg.clip_grad {
                mmcl_nn::optim::clip_grad_norm(&trainable, &mut grads, max_norm)?;
            }
            adam.step(&grads, lr_now)?;
            loss_sum += value;
            progress(&Progress::Step {
                step: step + 1,
                loss: value,
            });
        }
        let train_loss = loss_sum / steps.max(1) as f64;
        let val = run_split(&model, &data.val, &data, cfg, objective, &columns)?;
        let metric = monitored_value(&val, cfg, &data.names, &monitor)?;
        // A NaN metric is never best; the last epoch stands in when no epoch had a number.
        let is_best = match &best {
            None => true,
            Some((_, b, _)) => !metric.is_nan() && (b.is_nan() || better(metric, *b)),
        };
        if is_best {
            best = Some((epoch, metric, model.state_dict()?));
        }
        progress(&Progress::Validated {
            epoch: Some(epoch),
            metric,
            loss: val.loss,
            best: is_best,
        });
        if let Some(log) = log.as_deref_mut() {
            let step = (epoch + 1) * steps;
            log.append(
                "train",
                epoch,
                step,
                &[("loss", train_loss), ("lr", lr_now)],
            )?;
            log.append(
                "val",
                epoch,
                step,
                &[("loss", val.loss), (monitor.as_str(), metric)],
            )?;
        }
        history.push(EpochRecord {
            epoch,
            train_loss,
            lr: lr_now,
            val_loss: val.loss,
            val_metric: metric,
        });
        if stopper.update(metric) {
            stopped_early = true;
            break;
        }
    }
    let Some((best_epoch, best_val_metric, best_state)) = best else {
        return Err(Error::InvalidInput("no epoch was run".into()));
    };
    model.restore(&best_state)?;

    progress(&Progress::Testing);
    let test = run_split(&model, &data.test, &data, cfg, objective, &columns)?;
    let evaluation = crate::metrics::evaluate(
        cfg.task,
        &test.truth,
        &test.predictions,
        &data.names,
        cfg.threshold,
        &cfg.bootstrap,
    )?;
    Ok(FinetuneOutcome {
        epochs_run: history.len(),
        model,
        target_names: data.names.clone(),
        monitor,
        initial_val_metric,
        best_epoch,
        best_val_metric,
        stopped_early,
        history,
        test: evaluation,
        test_truth: test.truth,
        test_predictions: test.predictions,
        test_eids: test.eids,
        load_summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_follows_the_reference() {
        // patience 2: the third epoch in a row below the best stops.
        let mut s = EarlyStopping::new(Some(2), 0.0, true);
        assert!(!s.update(0.70));
        assert!(!s.update(0.72));
        assert!(!s.update(0.72), "a tie counts as reaching the best");
        assert!(!s.update(0.71));
        assert!(!s.update(0.71));
        assert!(s.update(0.60));
        // A tolerance keeps near-best epochs from counting.
        let mut s = EarlyStopping::new(Some(0), 0.01, true);
        assert!(!s.update(0.80));
        assert!(!s.update(0.795));
        assert!(s.update(0.78));
        // Decreasing metrics (loss, MAE).
        let mut s = EarlyStopping::new(Some(0), 0.0, false);
        assert!(!s.update(1.0));
        assert!(!s.update(0.9));
        assert!(s.update(1.1));
        // Without patience it never stops.
        let mut s = EarlyStopping::new(None, 0.0, true);
        assert!((0..10).all(|i| !s.update(1.0 - i as f64 * 0.1)));
    }

    #[test]
    fn defaults_are_valid_and_checked() {
        let cfg = FinetuneConfig {
            cache: "cache".into(),
            ..Default::default()
        };
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.learning_rate(), 1e-5 * 32.0 / 4.0);
        assert_eq!(cfg.monitored(), ("auroc".into(), true));
        let bad = FinetuneConfig {
            monitor: Some("r2".into()),
            ..cfg.clone()
        };
        assert!(bad.validate().is_err(), "R² is no classification metric");
        let bad = FinetuneConfig {
            layer_decay: 0.0,
            ..cfg.clone()
        };
        assert!(bad.validate().is_err());
        let reg = FinetuneConfig {
            task: Task::Regression,
            monitor: Some("mae".into()),
            ..cfg
        };
        assert_eq!(reg.monitored(), ("mae".into(), false));
    }
}
