//! The whole workspace under one name, for the examples and benchmarks (and for users who want a
//! single dependency): ECG–cardiac-MRI representation learning after Turgut et al.,
//! *Unlocking the Diagnostic Potential of ECG through Knowledge Transfer from Cardiac MRI*.
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`core`] | `mmcl-core` | atomic output, bounded reads, RNG, configuration, `.npy`, run logs, metrics |
//! | [`nn`] | `mmcl-nn` | differentiable building blocks, optimisers, checkpoint I/O |
//! | [`ecg`] | `mmcl-ecg` | the ECG Vision Transformer and its masked autoencoder |
//! | [`cmr`] | `mmcl-cmr` | ResNet CMR encoders and projection heads |
//! | [`losses`] | `mmcl-losses` | CLIP, NT-Xent, MAE reconstruction losses |
//! | [`data`] | `mmcl-data` | UK-Biobank-style I/O, preprocessing, augmentation, loader |
//! | [`synth`] | `mmcl-synth` | the synthetic paired ECG–CMR cohort |
//! | [`eval`] | `mmcl-eval` | metrics, probes, fine-tuning, localisation, plots |
//! | [`train`] | `mmcl-train` | the multimodal model and the training loop (MAE, MMCL) |

pub use mmcl_cmr as cmr;
pub use mmcl_core as core;
pub use mmcl_data as data;
pub use mmcl_ecg as ecg;
pub use mmcl_eval as eval;
pub use mmcl_losses as losses;
pub use mmcl_nn as nn;
pub use mmcl_pipeline as pipeline;
pub use mmcl_synth as synth;
pub use mmcl_train as train;
