//! Counted work reported while it runs: the work on a scoped thread, its counter polled for
//! the progress display.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::progress::PipelineProgress;

/// Runs `work` on a scoped thread while reporting the counter it advances as `what`.
pub(super) fn counted<T: Send>(
    progress: &mut dyn PipelineProgress,
    what: &str,
    total: usize,
    work: impl FnOnce(&AtomicUsize) -> T + Send,
) -> T {
    let counter = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handle = s.spawn(|| work(&counter));
        progress.count(what, 0, total);
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            progress.count(what, counter.load(Ordering::Relaxed).min(total), total);
        }
        progress.count(what, total, total);
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
