//! Learning-rate schedules of the reference trainers.
//!
//! - [`WarmupCosine::per_epoch`]: PyTorch Lightning Bolts' `LinearWarmupCosineAnnealingLR`, used
//!   by the multimodal stage: the rate changes once per epoch, starts at `warmup_start_lr`
//!   (0 by default, so the first epoch trains at rate 0 exactly as the reference does), rises
//!   linearly to the base rate at epoch `warmup_epochs - 1`, then follows a half cosine to
//!   `eta_min` at `max_epochs`.
//! - [`WarmupCosine::per_step`]: the MAE repo's `adjust_learning_rate`, called every iteration
//!   with a fractional epoch `epoch + step / steps_per_epoch`: linear from 0 over the warm-up,
//!   then half cosine to `min_lr`.
//!
//! ```
//! use mmcl_nn::schedule::WarmupCosine;
//! let s = WarmupCosine::per_epoch(3e-3, 30, 300);
//! assert_eq!(s.lr_at_epoch(0), 0.0);
//! assert!((s.lr_at_epoch(29) - 3e-3).abs() < 1e-12);
//! ```

use serde::{Deserialize, Serialize};

/// How the schedule advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// Once per epoch (`LinearWarmupCosineAnnealingLR`).
    Epoch,
    /// Every optimisation step, with fractional epochs (MAE's `adjust_learning_rate`).
    Step,
}

/// Linear warm-up followed by cosine annealing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// The rate reached at the end of the warm-up.
    pub base_lr: f64,
    /// Warm-up length in epochs.
    pub warmup_epochs: usize,
    /// Total length in epochs.
    pub max_epochs: usize,
    /// Rate at the start of the warm-up (epoch granularity only).
    pub warmup_start_lr: f64,
    /// Rate at the end of the cosine.
    pub min_lr: f64,
    /// Per epoch or per step.
    pub granularity: Granularity,
}

impl WarmupCosine {
    /// `LinearWarmupCosineAnnealingLR(warmup_epochs, max_epochs)` with its defaults
    /// (`warmup_start_lr = 0`, `eta_min = 0`).
    pub fn per_epoch(base_lr: f64, warmup_epochs: usize, max_epochs: usize) -> Self {
        Self {
            base_lr,
            warmup_epochs,
            max_epochs,
            warmup_start_lr: 0.0,
            min_lr: 0.0,
            granularity: Granularity::Epoch,
        }
    }

    /// The MAE repo's per-iteration schedule.
    pub fn per_step(base_lr: f64, warmup_epochs: usize, max_epochs: usize, min_lr: f64) -> Self {
        Self {
            base_lr,
            warmup_epochs,
            max_epochs,
            warmup_start_lr: 0.0,
            min_lr,
            granularity: Granularity::Step,
        }
    }

    /// The rate for optimisation step `step` of epoch `epoch` (0-based), with
    /// `steps_per_epoch` steps in an epoch.
    pub fn lr(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        match self.granularity {
            Granularity::Epoch => self.lr_at_epoch(epoch),
            Granularity::Step => {
                let fraction = step as f64 / steps_per_epoch.max(1) as f64;
                self.lr_at_fractional_epoch(epoch as f64 + fraction)
            }
        }
    }

    /// Closed form of `LinearWarmupCosineAnnealingLR` at an integer epoch.
    pub fn lr_at_epoch(&self, epoch: usize) -> f64 {
        let e = epoch as f64;
        let warmup = self.warmup_epochs as f64;
        if epoch < self.warmup_epochs {
            let span = (warmup - 1.0).max(1.0);
            self.warmup_start_lr + e * (self.base_lr - self.warmup_start_lr) / span
        } else {
            let span = (self.max_epochs as f64 - warmup).max(1.0);
            self.min_lr
                + 0.5
                    * (self.base_lr - self.min_lr)
                    * (1.0 + (std::f64::consts::PI * (e - warmup) / span).cos())
        }
    }

    /// The MAE schedule at a fractional epoch.
    pub fn lr_at_fractional_epoch(&self, epoch: f64) -> f64 {
        let warmup = self.warmup_epochs as f64;
        if epoch < warmup {
            self.base_lr * epoch / warmup
        } else {
            let span = (self.max_epochs as f64 - warmup).max(f64::MIN_POSITIVE);
            self.min_lr
                + (self.base_lr - self.min_lr)
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * (epoch - warmup) / span).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_schedule_matches_lightning_bolts() {
        // Values of LinearWarmupCosineAnnealingLR(warmup_epochs=3, max_epochs=10), base 1.0.
        let s = WarmupCosine::per_epoch(1.0, 3, 10);
        let expected = [
            0.0,
            0.5,
            1.0,
            1.0,
            0.9504844339512095,
            0.8117449009293668,
            0.6112604669781572,
            0.3887395330218428,
            0.18825509907063323,
            0.04951556604879043,
        ];
        for (e, want) in expected.iter().enumerate() {
            assert!((s.lr_at_epoch(e) - want).abs() < 1e-12, "epoch {e}");
        }
    }

    #[test]
    fn step_schedule_matches_mae() {
        let s = WarmupCosine::per_step(1e-3, 2, 10, 1e-5);
        assert_eq!(s.lr(0, 0, 100), 0.0);
        assert!((s.lr(1, 0, 100) - 5e-4).abs() < 1e-15);
        assert!((s.lr(1, 50, 100) - 7.5e-4).abs() < 1e-15);
        assert!((s.lr(2, 0, 100) - 1e-3).abs() < 1e-15);
        let end = s.lr_at_fractional_epoch(10.0);
        assert!((end - 1e-5).abs() < 1e-15);
    }
}
