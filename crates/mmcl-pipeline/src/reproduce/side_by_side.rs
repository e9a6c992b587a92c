//! Two independent stages run at the same time, each on its own share of the threads.
//!
//! Why: at the reduced shapes one training step scales poorly across threads (its matrix
//! products are small, and every parallel region ends in a barrier), while two runs of one
//! thread each keep both cores busy. Measured on a 2-core AMD EPYC with the reduced defaults:
//! the two contrastive stages took 468.7 s side by side against 523.8 s one after the other,
//! the six probes 71.0 s against 79.7 s (`docs/reproduce.md`, "Run time").
//!
//! Each stage runs on a scoped thread inside its own rayon pool, so every kernel it calls
//! (they all use rayon's current pool) stays on its share. Its progress events travel over a
//! channel to the caller's thread, which owns the user's display: the first stage drives the
//! progress bar, and both stages' messages are printed with the stage's name in front.

use std::sync::mpsc::{Sender, channel};

use candle_core::Device;
use mmcl_train::Progress;

use crate::progress::PipelineProgress;
use crate::{Error, ReproduceConfig, Result};

/// A progress event of a stage running on another thread.
enum Event {
    Phase {
        epoch: usize,
        phase: String,
        batches: usize,
    },
    Batch {
        loss: f64,
        samples: usize,
    },
    Finish,
    Message(String),
    Count {
        what: String,
        done: usize,
        total: usize,
    },
}

/// A stage's progress, sent to the thread that owns the display, tagged with the stage.
struct Forward {
    stage: usize,
    to: Sender<(usize, Event)>,
}

impl Forward {
    fn send(&self, event: Event) {
        // The receiver outlives both stages (it is drained until they end); a failed send
        // would only lose a display line.
        let _ = self.to.send((self.stage, event));
    }
}

impl Progress for Forward {
    fn start_phase(&mut self, epoch: usize, phase: &str, batches: usize) {
        self.send(Event::Phase {
            epoch,
            phase: phase.to_string(),
            batches,
        });
    }
    fn batch(&mut self, loss: f64, samples: usize) {
        self.send(Event::Batch { loss, samples });
    }
    fn finish_phase(&mut self) {
        self.send(Event::Finish);
    }
    fn message(&mut self, text: &str) {
        self.send(Event::Message(text.to_string()));
    }
}

impl PipelineProgress for Forward {
    fn count(&mut self, what: &str, done: usize, total: usize) {
        self.send(Event::Count {
            what: what.to_string(),
            done,
            total,
        });
    }
}

/// How `threads` threads are shared between two stages: as evenly as possible, the first
/// stage taking the odd one; `None` when there are fewer than two (the stages then run one
/// after the other).
pub(super) fn split_threads(threads: usize) -> Option<[usize; 2]> {
    (threads >= 2).then(|| [threads.div_ceil(2), threads / 2])
}

/// The threads each training stage or probe of a run of `cfg` on `device` gets: half of
/// rayon's when stages run side by side (the smaller half), all of them otherwise. Programs
/// size candle's own element-wise pool from it
/// ([`mmcl_nn::threads::share_cores_with_candle`]).
pub fn threads_per_stage(cfg: &ReproduceConfig, device: &Device) -> usize {
    match shares(cfg, device) {
        Some([_, smaller]) => smaller,
        None => rayon::current_num_threads(),
    }
}

/// How rayon's threads are shared between two stages of a run of `cfg` on `device`, or `None`
/// when its stages run one after the other (`concurrent_stages` off, a GPU, one thread).
pub(super) fn shares(cfg: &ReproduceConfig, device: &Device) -> Option<[usize; 2]> {
    split_threads(rayon::current_num_threads()).filter(|_| cfg.concurrent_stages && device.is_cpu())
}

/// A stage of [`run_pair`]: it reports through the progress it is given.
pub(super) type Stage<'a, T> = Box<dyn FnOnce(&mut dyn PipelineProgress) -> Result<T> + Send + 'a>;

/// Runs `stages` at the same time, stage `i` inside a rayon pool of `threads[i]` threads,
/// reporting to `progress` as described in the module docs (`names` prefix their messages
/// unless empty).
/// Returns both results once both have ended: the first stage's error when it failed, the
/// second's otherwise.
///
/// # Errors
/// A stage's error; a rayon pool that cannot be started.
///
/// # Panics
/// Resumes a stage's panic on the caller's thread.
pub(super) fn run_pair<'a, A: Send, B: Send>(
    stages: (Stage<'a, A>, Stage<'a, B>),
    threads: [usize; 2],
    names: [&str; 2],
    progress: &mut dyn PipelineProgress,
) -> Result<(A, B)> {
    let pool = |k: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads[k])
            .thread_name(move |i| format!("mmcl-side-{k}-{i}"))
            .build()
    };
    let pools = [pool(0), pool(1)];
    let [Ok(pool_a), Ok(pool_b)] = pools else {
        return Err(Error::Insufficient {
            stage: "training",
            reason: "cannot start the thread pools of two stages side by side".into(),
        });
    };
    let (to, events) = channel();
    let (mut fwd_a, mut fwd_b) = (
        Forward {
            stage: 0,
            to: to.clone(),
        },
        Forward { stage: 1, to },
    );
    let (first, second) = stages;
    std::thread::scope(|s| {
        let a = s.spawn(move || pool_a.install(move || first(&mut fwd_a)));
        let b = s.spawn(move || pool_b.install(move || second(&mut fwd_b)));
        // Ends when both stages have ended and dropped their senders.
        for (stage, event) in events {
            match (stage, event) {
                (_, Event::Message(text)) if names[stage].is_empty() => progress.message(&text),
                (_, Event::Message(text)) => {
                    progress.message(&format!("{}: {text}", names[stage]));
                }
                (
                    0,
                    Event::Phase {
                        epoch,
                        phase,
                        batches,
                    },
                ) => progress.start_phase(epoch, &phase, batches),
                (0, Event::Batch { loss, samples }) => progress.batch(loss, samples),
                (0, Event::Finish) => progress.finish_phase(),
                (0, Event::Count { what, done, total }) => progress.count(&what, done, total),
                // The second stage's batches are not drawn (one bar); its epoch summaries
                // arrive as messages.
                _ => {}
            }
        }
        let a = a.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let b = b.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        Ok((a?, b?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmcl_train::NoProgress;

    /// Collects what reaches the display.
    #[derive(Default)]
    struct Seen {
        messages: Vec<String>,
        batches: usize,
    }
    impl Progress for Seen {
        fn batch(&mut self, _: f64, _: usize) {
            self.batches += 1;
        }
        fn message(&mut self, text: &str) {
            self.messages.push(text.to_string());
        }
    }
    impl PipelineProgress for Seen {}

    #[test]
    fn threads_are_shared_evenly_and_one_thread_is_not_split() {
        assert_eq!(split_threads(0), None);
        assert_eq!(split_threads(1), None);
        assert_eq!(split_threads(2), Some([1, 1]));
        assert_eq!(split_threads(5), Some([3, 2]));
    }

    #[test]
    fn a_stage_side_by_side_gets_the_smaller_half_of_the_threads() {
        let mut cfg = ReproduceConfig::default();
        let on_five = |cfg: &ReproduceConfig, device: &Device| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(5).build();
            pool.map(|pool| pool.install(|| threads_per_stage(cfg, device)))
                .ok()
        };
        assert_eq!(on_five(&cfg, &Device::Cpu), Some(2));
        cfg.concurrent_stages = false;
        assert_eq!(on_five(&cfg, &Device::Cpu), Some(5));
    }

    #[test]
    fn each_stage_runs_on_its_own_pool_and_reports_through_the_caller() {
        let mut seen = Seen::default();
        let stage = |tag: &'static str| -> Stage<'_, usize> {
            Box::new(move |p: &mut dyn PipelineProgress| {
                p.batch(1.0, 4);
                p.message(tag);
                Ok(rayon::current_num_threads())
            })
        };
        let (a, b) = run_pair(
            (stage("a"), stage("b")),
            [3, 2],
            ["first", "second"],
            &mut seen,
        )
        .expect("both stages succeed");
        assert_eq!((a, b), (3, 2));
        // Only the first stage draws batches; both stages' messages arrive, named.
        assert_eq!(seen.batches, 1);
        seen.messages.sort();
        assert_eq!(seen.messages, ["first: a", "second: b"]);
    }

    #[test]
    fn a_failing_stage_fails_the_pair_after_both_ended() {
        let ok: Stage<'_, ()> = Box::new(|_| Ok(()));
        let failing: Stage<'_, ()> = Box::new(|_| Err(Error::config("the second stage failed")));
        let err = run_pair((ok, failing), [1, 1], ["a", "b"], &mut NoProgress)
            .expect_err("the second stage's error");
        assert!(err.to_string().contains("the second stage failed"), "{err}");
    }
}
