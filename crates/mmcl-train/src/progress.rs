//! How a trainer reports its progress: a trait, a silent implementation for tests and
//! libraries, and a terminal progress bar showing the loss and the throughput.

use std::time::Instant;

/// Receives the events of a training run.
pub trait Progress {
    /// A phase (`train` or `val`) of `epoch` with `batches` batches begins.
    fn start_phase(&mut self, epoch: usize, phase: &str, batches: usize) {
        let _ = (epoch, phase, batches);
    }

    /// A batch of `samples` samples finished with this loss.
    fn batch(&mut self, loss: f64, samples: usize) {
        let _ = (loss, samples);
    }

    /// The phase ended.
    fn finish_phase(&mut self) {}

    /// A line for the user (epoch summaries, checkpoint notes).
    fn message(&mut self, text: &str) {
        let _ = text;
    }
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A progress bar on stderr (hidden when stderr is not a terminal) with the running mean loss
/// and samples per second; messages are printed above it.
#[derive(Debug)]
pub struct BarProgress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    samples: usize,
    loss_sum: f64,
    batches: usize,
    label: String,
}

impl Default for BarProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl BarProgress {
    /// A reporter that has not started a phase yet.
    pub fn new() -> Self {
        Self {
            bar: None,
            started: Instant::now(),
            samples: 0,
            loss_sum: 0.0,
            batches: 0,
            label: String::new(),
        }
    }
}

impl Progress for BarProgress {
    fn start_phase(&mut self, epoch: usize, phase: &str, batches: usize) {
        let bar = indicatif::ProgressBar::new(batches as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        self.label = format!("epoch {epoch} {phase}");
        bar.set_prefix(self.label.clone());
        self.bar = Some(bar);
        self.started = Instant::now();
        self.samples = 0;
        self.loss_sum = 0.0;
        self.batches = 0;
    }

    fn batch(&mut self, loss: f64, samples: usize) {
        self.samples += samples;
        self.loss_sum += loss;
        self.batches += 1;
        if let Some(bar) = &self.bar {
            let rate = self.samples as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4}  {rate:.1} samples/s",
                self.loss_sum / self.batches as f64
            ));
            bar.inc(1);
        }
    }

    fn finish_phase(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}
