//! Downstream evaluation of ECG (and CMR) representations: metrics with bootstrap confidence
//! intervals, linear probes on frozen embeddings, fine-tuning, localisation maps, figures and run
//! reports.
//!
//! - [`metrics`]: AUROC, average precision, F1 / balanced accuracy / accuracy at a threshold,
//!   R², Pearson r, MAE (scikit-learn's definitions), per target and averaged, with seeded
//!   percentile-bootstrap intervals ([`metrics::evaluate`]).
//! - [`paired`]: the difference of a metric between two encoders on the same subjects, with a
//!   paired bootstrap interval ([`paired::compare`]).
//! - [`probe`]: standardisation fitted on the training rows, L2 logistic regression with
//!   balanced class weights (L-BFGS) and multi-target ridge regression with missing values,
//!   regularisation chosen on a validation split ([`probe::LinearProbe`]).
//! - [`plot`]: the 12-lead ECG on the clinical grid with per-patch importance, a CMR slice with
//!   a heat map, ROC curves, predicted-vs-true scatter plots, training curves ([`runlog`]).
//! - [`report`]: plain-text and Markdown metrics tables, the Markdown run report.
//! - [`localization`]: the reference's localisation maps of a multimodal model (ECG patch and
//!   CMR region importance, class-token attention), from weights in its key layout.
//! - [`finetune`]: fine-tuning the ECG encoder with attention pooling and a head (label
//!   smoothing, masked regression, layer-wise lr decay, early stopping on the validation metric).
//!
//! ```
//! use mmcl_eval::{Matrix, metrics::{Bootstrap, Task, evaluate}, probe::{LinearProbe, ProbeConfig}};
//!
//! # fn main() -> mmcl_eval::Result<()> {
//! // Embeddings (N × D, f32) and a binary target (N × 1, NaN where missing).
//! let x = Matrix::new(60, 2, (0..120).map(|k| ((k * 37) % 17) as f32 + (k % 2) as f32 * (k / 60) as f32).collect())?;
//! let y = Matrix::column_vector((0..60).map(|i| if i % 13 == 0 { f64::NAN } else { (i % 2) as f64 }).collect());
//! let probe = LinearProbe::fit(Task::Classification, &x, &y, None, &ProbeConfig::default())?;
//! let probabilities = probe.predict(&x)?;
//! let eval = evaluate(Task::Classification, &y, &probabilities, &["AF".into()], 0.5, &Bootstrap::default())?;
//! let auroc = eval.targets[0].metrics["auroc"];
//! assert!(auroc.ci_low.unwrap() <= auroc.value && auroc.value <= auroc.ci_high.unwrap());
//! print!("{}", mmcl_eval::report::text_table(&eval));
//! # Ok(())
//! # }
//! ```

mod error;
pub mod finetune;
mod linalg;
pub mod localization;
mod matrix;
pub mod metrics;
pub mod paired;
pub mod plot;
pub mod probe;
pub mod report;

pub use error::{Error, Result};
pub use matrix::Matrix;
/// The run-log format trainers write and the training-curve figures read (`mmcl-core`).
pub use mmcl_core::runlog;
