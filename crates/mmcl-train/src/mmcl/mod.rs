//! The multimodal contrastive stage (`mmcl pretrain-mmcl`): the training step and the epoch loop.
//!
//! One training batch, as the reference's Lightning module with two optimisers does it:
//! 1. contrastive: augmented images → ResNet (train mode) → head; augmented ECGs → ViT
//!    (drop-path) → head; CLIP loss; backward; Adam with L2 weight decay over the four parameter
//!    groups (every parameter decayed, biases and norms included), learning rate from the
//!    per-epoch warm-up cosine;
//! 2. online classifier (optional): the *updated* encoder's pooled features of the original
//!    (un-augmented) ECGs (or images), detached, → `nn.Linear(D, 2)` → class-weighted cross-entropy
//!    over the subjects whose label is known; its own Adam at a constant rate.
//!
//! Each epoch ends with validation on the original views (loss, retrieval top-1/top-5 within
//! each batch, the classifier's loss, AUROC and accuracy), one record per split in
//! `metrics.jsonl`/`metrics.csv`, and a checkpoint (see [`crate::checkpoint`]).

mod metrics;
mod stage;
mod step;

pub use metrics::ValMetrics;
pub use stage::{MmclStage, MmclTrainer};
pub use step::{
    ClassifierTargets, MmclBatch, MmclStep, StepReport, contrastive_gradients, contrastive_loss,
    contrastive_loss_in_group,
};
