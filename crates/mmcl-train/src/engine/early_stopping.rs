//! Early stopping on a validation metric.

/// The reference's `EarlyStop` (mae `util/callbacks.py`): an epoch whose metric reaches the
/// best so far, or comes within `max_delta` of it, resets the counter; any other epoch
/// increments it, and training stops once the counter exceeds `patience`.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    patience: Option<usize>,
    max_delta: f64,
    higher_is_better: bool,
    best: Option<f64>,
    counter: usize,
}

impl EarlyStopping {
    /// `patience = None` never stops.
    pub fn new(patience: Option<usize>, max_delta: f64, higher_is_better: bool) -> Self {
        Self {
            patience,
            max_delta,
            higher_is_better,
            best: None,
            counter: 0,
        }
    }

    /// Records an epoch's metric; `true` when training should stop.
    pub fn update(&mut self, metric: f64) -> bool {
        let Some(patience) = self.patience else {
            return false;
        };
        // Compare as an increasing metric.
        let sign = if self.higher_is_better { 1.0 } else { -1.0 };
        let v = sign * metric;
        if v.is_nan() {
            self.counter += 1;
        } else {
            match self.best {
                Some(best) if v < best - self.max_delta => self.counter += 1,
                Some(best) if v < best => self.counter = 0,
                _ => {
                    self.best = Some(v);
                    self.counter = 0;
                }
            }
        }
        self.counter > patience
    }

    /// Epochs since the metric last came within `max_delta` of its best.
    pub fn counter(&self) -> usize {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_follows_the_reference() {
        // patience 2: the third epoch in a row below the best stops.
        let mut s = EarlyStopping::new(Some(2), 0.0, true);
        assert!(!s.update(0.70));
        assert!(!s.update(0.72));
        assert!(!s.update(0.72), "a tie counts as reaching the best");
        assert!(!s.update(0.71));
        assert!(!s.update(0.71));
        assert!(s.update(0.60));
        // A tolerance keeps near-best epochs from counting.
        let mut s = EarlyStopping::new(Some(0), 0.01, true);
        assert!(!s.update(0.80));
        assert!(!s.update(0.795));
        assert!(s.update(0.78));
        // Decreasing metrics (loss, MAE).
        let mut s = EarlyStopping::new(Some(0), 0.0, false);
        assert!(!s.update(1.0));
        assert!(!s.update(0.9));
        assert!(s.update(1.1));
        // Without patience it never stops.
        let mut s = EarlyStopping::new(None, 0.0, true);
        assert!((0..10).all(|i| !s.update(1.0 - i as f64 * 0.1)));
    }
}
