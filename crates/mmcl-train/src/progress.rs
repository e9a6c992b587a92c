//! How a trainer reports its progress: a trait, a silent implementation for tests and
//! libraries, and a terminal progress bar showing the loss and the throughput.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

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

/// How often a line of progress is printed when stderr is not a terminal (batch jobs,
/// `| tee log`), where the bar is hidden.
const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// A progress bar on stderr with the running mean loss and samples per second, epochs
/// numbered from 1 (`epoch 3/10 train`) and, from the second epoch on, the estimated time left
/// for the whole run; messages are printed above it. When stderr is not a terminal the bar is
/// hidden and a progress line is printed every 30 seconds instead.
#[derive(Debug)]
pub struct BarProgress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    samples: usize,
    loss_sum: f64,
    batches: usize,
    batches_in_phase: usize,
    label: String,
    total_epochs: Option<usize>,
    /// The first training epoch of this process and when it started (for the run's ETA).
    run_start: Option<(usize, Instant)>,
    interactive: bool,
    last_line: Instant,
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
            batches_in_phase: 0,
            label: String::new(),
            total_epochs: None,
            run_start: None,
            interactive: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
        }
    }

    /// The same, for a run of `total` epochs: labels read `epoch x/total` and show the run's
    /// estimated time left.
    pub fn with_epochs(mut self, total: usize) -> Self {
        self.total_epochs = Some(total);
        self
    }

    /// The phase's label: `epoch 3/10 train · run ETA 4m 10s`.
    fn label_for(&mut self, epoch: usize, phase: &str) -> String {
        let mut label = match self.total_epochs {
            Some(total) => format!("epoch {}/{total} {phase}", epoch + 1),
            None => format!("epoch {} {phase}", epoch + 1),
        };
        if phase == "train" {
            let (first, since) = *self.run_start.get_or_insert((epoch, Instant::now()));
            if let Some(total) = self.total_epochs
                && epoch > first
            {
                let per_epoch = since.elapsed().as_secs_f64() / (epoch - first) as f64;
                let left = per_epoch * total.saturating_sub(epoch) as f64;
                label.push_str(&format!(" · run ETA {}", format_duration(left)));
            }
        }
        label
    }
}

/// `2h 05m`, `4m 10s`, `12s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m {sec:02}s"),
        (h, min, _) => format!("{h}h {min:02}m"),
    }
}

impl Progress for BarProgress {
    fn start_phase(&mut self, epoch: usize, phase: &str, batches: usize) {
        let bar = if self.interactive {
            indicatif::ProgressBar::new(batches as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        self.label = if phase == "test" {
            phase.to_string()
        } else {
            self.label_for(epoch, phase)
        };
        bar.set_prefix(self.label.clone());
        self.bar = Some(bar);
        self.started = Instant::now();
        self.samples = 0;
        self.loss_sum = 0.0;
        self.batches = 0;
        self.batches_in_phase = batches;
        if !self.interactive {
            eprintln!("{}: {batches} batches", self.label);
            self.last_line = Instant::now();
        }
    }

    fn batch(&mut self, loss: f64, samples: usize) {
        self.samples += samples;
        self.loss_sum += loss;
        self.batches += 1;
        let rate = self.samples as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mean = self.loss_sum / self.batches as f64;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {mean:.4}  {rate:.1} samples/s"));
            bar.inc(1);
        }
        if !self.interactive && self.last_line.elapsed() >= LOG_INTERVAL {
            eprintln!(
                "{}: {}/{} batches, loss {mean:.4}, {rate:.1} samples/s",
                self.label, self.batches, self.batches_in_phase
            );
            self.last_line = Instant::now();
        }
    }

    fn finish_phase(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) if self.interactive => bar.println(text),
            _ => eprintln!("{text}"),
        }
    }
}
