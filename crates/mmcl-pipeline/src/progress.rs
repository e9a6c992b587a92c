//! Progress of a pipeline run: stages, counted work (subjects synthesised, cached, embedded)
//! and the trainers' epochs.

use mmcl_train::{BarProgress, NoProgress, Progress};

/// Receives the events of a pipeline run; the training stages report through the
/// [`Progress`] supertrait.
pub trait PipelineProgress: Progress {
    /// Stage `index` (1-based) of `total` begins.
    fn stage(&mut self, index: usize, total: usize, name: &str) {
        self.message(&format!("[{index}/{total}] {name}"));
    }

    /// `done` of `total` items of counted work (`what`) are finished; called repeatedly with
    /// growing `done`, last with `done == total`.
    fn count(&mut self, what: &str, done: usize, total: usize) {
        let _ = (what, done, total);
    }
}

impl PipelineProgress for NoProgress {}

impl PipelineProgress for BarProgress {}

/// A terminal display: a line per stage, a bar for counted work, the trainers' bars
/// ([`BarProgress`]) for the epochs. Bars are hidden when stderr is not a terminal.
#[derive(Debug, Default)]
pub struct TerminalProgress {
    trainer: BarProgress,
    counter: Option<(String, indicatif::ProgressBar)>,
}

impl TerminalProgress {
    /// A display that has not started a stage yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Progress for TerminalProgress {
    fn start_phase(&mut self, epoch: usize, phase: &str, batches: usize) {
        self.trainer.start_phase(epoch, phase, batches);
    }

    fn batch(&mut self, loss: f64, samples: usize) {
        self.trainer.batch(loss, samples);
    }

    fn finish_phase(&mut self) {
        self.trainer.finish_phase();
    }

    fn message(&mut self, text: &str) {
        match &self.counter {
            Some((_, bar)) => bar.println(text),
            None => self.trainer.message(text),
        }
    }
}

impl PipelineProgress for TerminalProgress {
    fn count(&mut self, what: &str, done: usize, total: usize) {
        let fresh = !matches!(&self.counter, Some((w, _)) if w == what);
        if fresh {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(what.to_string());
            if let Some((_, old)) = self.counter.take() {
                old.finish_and_clear();
            }
            self.counter = Some((what.to_string(), bar));
        }
        if let Some((_, bar)) = &self.counter {
            bar.set_position(done as u64);
            if done >= total {
                bar.finish_and_clear();
                self.counter = None;
            }
        }
    }
}
