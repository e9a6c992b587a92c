//! The configuration of a fine-tuning run.

use std::path::{Path, PathBuf};

use mmcl_data::ecg::augment::EcgAugmentConfig;
use mmcl_ecg::EcgVitConfig;
use mmcl_nn::precision::Precision;
use serde::{Deserialize, Serialize};

use crate::metrics::{Bootstrap, Task};
use crate::{Error, Result};

fn default_encoder() -> EcgVitConfig {
    for_finetuning(EcgVitConfig::paper())
}

/// `architecture` with the fine-tuning recipe's head settings: attention pooling (the paper's
/// fine-tuned models), drop-path 0.2, no classifier of the encoder's own.
fn for_finetuning(mut architecture: EcgVitConfig) -> EcgVitConfig {
    architecture.attention_pool = true;
    architecture.global_pool = false;
    architecture.drop_path_rate = 0.2;
    architecture.num_classes = 0;
    architecture
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
    /// released `signal_encoder*.pth`, a fine-tuned model); `None` trains from scratch. In a
    /// file, a run or checkpoint folder names its exported encoder.
    pub checkpoint: Option<PathBuf>,
    /// The encoder (the reference's argument names or a preset `model`). A file without an
    /// `encoder` table takes the architecture the checkpoint's export carries (with attention
    /// pooling and drop-path 0.2), or the paper's when it carries none.
    pub encoder: EcgVitConfig,
    /// Classification (disease labels) or regression (phenotypes).
    pub task: Task,
    /// Label or phenotype names of the cache to predict; empty: all of them.
    pub targets: Vec<String>,
    /// Training epochs at most (`max_epochs` as in the pre-training configurations; the
    /// older spelling `epochs` is still read).
    #[serde(rename = "max_epochs", alias = "epochs")]
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
    /// The arithmetic of the matrix products: `f32`, or `bf16` operands with f32 sums and f32
    /// weights, gradients and optimiser (mixed precision; [`mmcl_nn::precision`]).
    pub precision: Precision,
    /// Loader worker threads (0: half the cores); `threads` is read too, as in the
    /// pre-training configurations' `data.threads`.
    #[serde(alias = "threads")]
    pub loader_threads: usize,
    /// Threshold of F1 / balanced accuracy / accuracy.
    pub threshold: f64,
    /// Bootstrap of the test metrics.
    pub bootstrap: Bootstrap,
    /// Where `mmcl finetune` writes the run (not used by [`finetune`](super::finetune) itself).
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
            precision: Precision::F32,
            loader_threads: 0,
            threshold: crate::metrics::DEFAULT_THRESHOLD,
            bootstrap: Bootstrap::default(),
            output: None,
        }
    }
}

/// Whether a configuration's `text` sets `encoder` (already known to parse).
fn names_encoder(text: &str, path: &Path) -> bool {
    #[derive(Deserialize)]
    struct Keys {
        encoder: Option<serde::de::IgnoredAny>,
    }
    mmcl_core::config::parse_config_text::<Keys>(text, path).is_ok_and(|k| k.encoder.is_some())
}

impl FinetuneConfig {
    /// Reads a JSON or TOML configuration; relative paths are relative to the file. A
    /// `checkpoint` naming a run or checkpoint folder becomes its exported encoder's file; a
    /// file without an `encoder` table takes the architecture that export carries
    /// ([`EcgVitConfig::from_export`]), so that an encoder of any size fine-tunes without
    /// restating it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = mmcl_core::config::read_config_text(path)?;
        let mut cfg: FinetuneConfig = mmcl_core::config::parse_config_text(&text, path)
            .map_err(|reason| Error::format(path, reason))?;
        let base = path.parent().unwrap_or(Path::new("."));
        mmcl_core::config::rebase_path(&mut cfg.cache, base);
        for p in [cfg.checkpoint.as_mut(), cfg.output.as_mut()]
            .into_iter()
            .flatten()
        {
            mmcl_core::config::rebase_path(p, base);
        }
        if let Some(model) = &cfg.checkpoint {
            let file = mmcl_train::checkpoint::find_ecg_encoder(model)?;
            if !names_encoder(&text, path)
                && let Some(architecture) = EcgVitConfig::from_export(&file)?
            {
                cfg.encoder = for_finetuning(architecture);
            }
            cfg.checkpoint = Some(file);
        }
        cfg.validate()
            .map_err(|e| Error::format(path, e.to_string()))?;
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
        self.bootstrap.check()?;
        self.encoder.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
