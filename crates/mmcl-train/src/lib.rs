//! Trainers for MAE pre-training, multimodal contrastive (MMCL) training and fine-tuning:
//! loops, validation, logging, atomic checkpoints and exact resumption.
