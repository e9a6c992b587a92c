//! The masked-data-modelling stage (`mmcl pretrain-mae`): the training step and the epoch loop,
//! as the mae repo's `main_pretrain.py` / `engine_pretrain.py` do them.
//!
//! One batch: two random maskings of the (augmented) ECGs drawn from the trainer's masking
//! stream, the masked autoencoder's reconstruction loss (normalised-pixel squared error over all
//! patches + NCC term) plus `cos_weight` × the SimSiam term of the two views, backward, AdamW
//! (betas 0.9/0.95, decoupled weight decay except on biases and 1-D tensors). The learning rate
//! is set at the first batch of every accumulation group from the per-step warm-up cosine at the
//! fractional epoch `epoch + batch / batches` (`util/lr_sched.py`); with
//! `accumulate_grad_batches` > 1 each loss counts `1/accumulate` and an incomplete group at the
//! end of an epoch is dropped (the reference zeroes the gradients when the next epoch starts).
//!
//! Each epoch ends with validation (evaluation mode, ECGs cropped from sample 0, maskings from a
//! stream seeded afresh for every validation so that epochs compare on the same masks), one
//! record per split in `metrics.jsonl`/`metrics.csv`, and a checkpoint (see
//! [`crate::checkpoint`]): `model.safetensors` under the mae repo's keys (what
//! [`mmcl_ecg::mae::MaskedAutoencoder::load_checkpoint`] reads), `optimizer.safetensors`, `state.json`, and
//! `ecg_encoder.safetensors` (the encoder alone in the released `signal_encoder` layout).

mod metrics;
mod stage;
mod step;

pub use metrics::MaeEpochMetrics;
pub use stage::{MaeStage, MaeTrainer};
pub use step::{MaeStep, MaeStepReport};

use mmcl_nn::rng::hash_str;

/// The `format` metadata of an MAE `model.safetensors`.
pub const MAE_MODEL_FORMAT: &str = "mmcl-mae";

/// The seed of the training masking stream of a run seeded with `seed`.
fn masking_seed(seed: u64) -> u64 {
    seed ^ hash_str("mae-masking")
}

/// The seed of the validation maskings (the same at every validation).
fn validation_seed(seed: u64) -> u64 {
    seed ^ hash_str("mae-validation")
}
