//! One module per subcommand, plus what they share.

pub mod build_dataset;
pub mod common;
pub mod convert;
pub mod embed_cmr;
pub mod embed_ecg;
pub mod explain;
pub mod finetune;
pub mod info;
pub mod preprocess_ecg;
pub mod pretrain;
pub mod print_config;
pub mod probe;
pub mod report;
pub mod reproduce;
pub mod synth;
