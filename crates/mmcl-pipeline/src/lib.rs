//! The paper's pipeline end to end, as one library call: what `mmcl reproduce` and
//! `cargo run --release --example reproduce` run.
//!
//! [`reproduce::run`] generates a synthetic paired ECG–CMR cohort (`mmcl-synth`), builds the
//! dataset cache (`mmcl-data`), pre-trains the ECG encoder as a masked autoencoder, trains the
//! multimodal contrastive (MMCL) model twice — from random initialisation and from the MAE
//! encoder — (`mmcl-train`), then fits ECG-only linear probes for diseases (AUROC) and cardiac
//! phenotypes (R²) on five encoders (random init, MAE, MMCL, MAE + MMCL, and the CMR encoder as
//! the upper bound) with bootstrap confidence intervals (`mmcl-eval`). It writes
//! `results.json` ([`results`], a stable contract), a Markdown report with the paper's table
//! layout, training curves and localisation maps.
//!
//! [`ReproduceConfig::default`] is a reduced configuration for a 2-core CPU (minutes);
//! [`ReproduceConfig::paper`] the paper's, for a GPU.
//!
//! ```
//! use mmcl_pipeline::ReproduceConfig;
//!
//! # fn main() -> mmcl_pipeline::Result<()> {
//! // A tiny run's configuration: every key not given keeps the reduced default.
//! let cfg = ReproduceConfig::from_toml_str(
//!     "[cohort]\nsubjects = 60\n[mae]\nmax_epochs = 1\n[mmcl]\nmax_epochs = 1\n",
//!     None,
//! )?;
//! assert_eq!(cfg.cohort.subjects, 60);
//! assert_eq!(cfg.mmcl.ecg.input_size, [1, 8, 500]);
//! assert_eq!(ReproduceConfig::paper().mmcl, mmcl_train::MmclConfig::default());
//! // mmcl_pipeline::reproduce::run(&cfg, "out".as_ref(), &candle_core::Device::Cpu,
//! //                                &mut mmcl_pipeline::TerminalProgress::new())?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod embeddings;
mod error;
pub mod progress;
pub mod reproduce;
pub mod results;

pub use config::ReproduceConfig;
pub use error::{Error, Result};
pub use progress::{PipelineProgress, TerminalProgress};
pub use reproduce::{Outputs, run};
pub use results::Results;
