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
//! - **Losses** ([`mmcl_losses::classification`]): one binary target → two logits,
//!   cross-entropy with label smoothing ([`smoothed_cross_entropy`](mmcl_losses::classification::smoothed_cross_entropy),
//!   `nn.CrossEntropyLoss(label_smoothing=0.1)`); several binary targets (multi-label) → one
//!   logit each, binary cross-entropy on smoothed targets `y·(1 − ε) + ε/2`
//!   ([`mmcl_losses::classification::masked_bce_with_logits`]); regression on standardised
//!   targets → [`mmcl_losses::classification::masked_mse`]. Missing labels and values are masked: they add nothing to the loss and are
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
//!   epochs (the reference's `EarlyStop`, [`EarlyStopping`]). The epochs run in the shared
//!   training loop ([`mmcl_train::engine::EpochLoop`]). The best weights are then evaluated on
//!   the test split with bootstrap intervals.
//!
//! Data come from a dataset cache through [`mmcl_data::loader::Loader`]: training batches are
//! shuffled, randomly cropped to the encoder's input length and augmented as the reference's
//! fine-tuning (FT surrogate 0.075 with probability 0.5, jitter 0.2, rescaling 0.5); validation
//! and test batches are cropped from sample 0, unaugmented.

mod config;
mod data;
mod model;
mod train;

pub use config::FinetuneConfig;
pub use model::FinetuneModel;

use candle_core::{Device, Tensor};
use mmcl_data::loader::Shard;
use mmcl_nn::distributed::{GradSync, SingleProcess};
use mmcl_nn::optim::{Adam, AdamConfig, ParamGroup};
use mmcl_nn::schedule::WarmupCosine;
use mmcl_train::engine::{EpochEnd, EpochLoop, LoopState};
use mmcl_train::{EarlyStopping, Progress};
use serde::Serialize;

use crate::metrics::{Evaluation, Task};
use crate::runlog::RunLogWriter;
use crate::{Error, Matrix, Result};
use data::{Objective, open_data, run_split};
use train::FinetuneStep;

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

/// Fine-tunes as `cfg` says, on `device`; appends per-epoch records to `log` when given and
/// reports progress through `progress` (a `train` phase per epoch, a line per validation).
///
/// # Errors
/// A bad configuration, cache or checkpoint (naming the file), a target that cannot be learnt
/// or evaluated on some split, a non-finite training loss.
pub fn finetune(
    cfg: &FinetuneConfig,
    device: &Device,
    log: Option<&mut RunLogWriter>,
    progress: &mut dyn Progress,
) -> Result<FinetuneOutcome> {
    finetune_in_group(cfg, device, log, progress, &SingleProcess)
}

/// [`finetune`] as one replica of the data-parallel group `comm` (every replica calls it with
/// the same configuration): the weights start as rank 0's, each replica trains on its rows of
/// every global batch with the gradients averaged over the group (weighted so that the step is
/// the one a single process takes on the global batch, up to rounding and drop-path), and every
/// replica validates, stops and evaluates alike. Only the caller decides who writes: pass `log`
/// on rank 0 only.
///
/// # Errors
/// As [`finetune`], and a failed collective (a replica that left the group).
pub fn finetune_in_group(
    cfg: &FinetuneConfig,
    device: &Device,
    log: Option<&mut RunLogWriter>,
    progress: &mut dyn Progress,
    comm: &dyn GradSync,
) -> Result<FinetuneOutcome> {
    cfg.validate()?;
    // Every matrix product of the run (training and evaluation) in the configured arithmetic.
    let _precision = cfg.precision.enter();
    let mut data = open_data(cfg, device)?;
    // Each replica loads and trains on its rows of every global training batch.
    if comm.world_size() > 1 {
        let shard = Shard::new(comm.rank(), comm.world_size())?;
        data.train = std::sync::Arc::new(data.train.sharded(shard));
    }
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

    comm.broadcast_vars(&model.store().named_vars(), 0)?;

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
    let adam = Adam::new(
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
    let mut step = FinetuneStep {
        cfg,
        data: &data,
        model: &model,
        comm,
        objective,
        columns: &columns,
        adam,
        trainable,
        schedule,
        monitor,
        higher_is_better,
        best: None,
        history: Vec::new(),
        train: (0.0, 0.0),
        val: (f64::NAN, f64::NAN),
    };

    let (initial_loss, initial_val_metric) = step.validate(&data.val)?;
    progress.message(&format!(
        "before training: val {} {initial_val_metric:.4}, loss {initial_loss:.4}",
        step.monitor
    ));

    let mut epochs = EpochLoop::new(LoopState::default(), cfg.epochs, 1);
    epochs.early_stopping = Some(EarlyStopping::new(
        cfg.early_stopping.then_some(cfg.patience),
        cfg.max_delta,
        higher_is_better,
    ));
    let stopped_early = epochs.run_until(&mut step, cfg.epochs, log, progress)? == EpochEnd::Stop;
    let FinetuneStep {
        monitor,
        best,
        history,
        ..
    } = step;
    let Some((best_epoch, best_val_metric, best_state)) = best else {
        return Err(Error::InvalidInput("no epoch was run".into()));
    };
    model.restore(&best_state)?;

    progress.start_phase(history.len(), "test", data.test.num_batches());
    let test = run_split(&model, &data.test, &data, cfg, objective, &columns)?;
    progress.finish_phase();
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
