//! Linear probes on frozen embeddings: L2-regularised logistic regression with balanced class
//! weights and multi-target ridge regression with missing values, regularisation chosen on a
//! validation split.
//!
//! The recipe is scikit-learn's `StandardScaler` (fitted on the training rows only) followed by
//! `LogisticRegression(C, class_weight="balanced")` or `Ridge(alpha)` per target, fitted on the
//! rows where that target is present; each target picks its own `C` / `alpha` from a grid by
//! the validation AUROC / R² (the first best on ties, so the strongest regularisation). All
//! arithmetic is f64; embeddings stay f32 in memory and are standardised on the fly, so
//! `N = 100 000, D = 2048` needs no copy of them.
//!
//! - Logistic regression minimises `Σᵢ sᵢ·ℓ(yᵢ, wᵀx̃ᵢ + b) + ‖w‖²/(2C)` (intercept not
//!   penalised, `sᵢ = n / (2·n_class(yᵢ))`) with L-BFGS and a backtracking Armijo line search,
//!   one parallel pass over the embeddings per evaluation, warm-started along the `C` grid.
//! - Ridge regression solves `(X̃ᵀX̃ + αI) w = X̃ᵀ(y − ȳ)` with `X̃` centred on the target's
//!   present rows, by Cholesky; targets sharing a missing-value pattern share one Gram matrix.
//!
//! `linear`: the standardiser and the linear model on standardised features; `logistic`: the
//! logistic objective and its L-BFGS solver; `ridge`: the ridge path; `fit`: the probe, its
//! settings and the regularisation search; `targets`: one probe per target, skipping (with a
//! note) a target that cannot be fitted, such as a rare disease without cases in the split.

mod fit;
mod linear;
mod logistic;
mod ridge;
mod targets;

pub use fit::{LinearProbe, ProbeConfig, ProbeHead, SelectionPoint};
pub use linear::{LinearModel, Standardizer};
pub use logistic::{FitReport, SolverOptions, logistic_regression};
pub use ridge::ridge_path;
pub use targets::{ProbeOutcome, Selection, Split, TargetProbe, TargetProbes, probe_and_evaluate};
