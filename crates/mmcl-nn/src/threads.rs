//! How candle's own element-wise CPU operations share the cores with this crate's kernels.
//!
//! This crate's kernels run on rayon's current pool, so a program (or the reproduction's two
//! stages side by side, each inside a pool of its own) decides their threads. candle's
//! element-wise operations on 64 Ki elements or more (its additions, the zero-filled gradients
//! of its backward pass) run instead on one process-wide pool of candle's own, sized once from
//! `CANDLE_NUM_THREADS`: its workers spin for a while after every operation, and two stages
//! calling it at once take turns behind its lock. On 2-core machines that costs more than
//! the second thread gains. Measured on an AMD EPYC (Zen 4, 2 cores, `docs/performance.md`):
//! the two contrastive stages of the reproduction side by side ran 1.21× faster with candle
//! kept on the calling thread (same results, byte for byte), a single MAE or reduced MMCL
//! step on two threads 1.06× faster, the paper-shape steps and embeddings within noise.

/// The environment variable candle sizes its element-wise pool from.
pub const CANDLE_THREADS_VARIABLE: &str = "CANDLE_NUM_THREADS";

/// The largest number of threads per stage at which candle's element-wise operations are
/// better run on the calling thread (the largest count measured).
pub const MAX_THREADS_FOR_INLINE_CANDLE: usize = 2;

/// The `CANDLE_NUM_THREADS` a program whose stages each run on `stage_threads` threads
/// should give candle: 1 (candle's operations on the calling thread) up to
/// [`MAX_THREADS_FOR_INLINE_CANDLE`], candle's own default (`None`) above it.
///
/// ```
/// use mmcl_nn::threads::candle_threads_for;
/// assert_eq!(candle_threads_for(1), Some(1));
/// assert_eq!(candle_threads_for(2), Some(1));
/// assert_eq!(candle_threads_for(16), None);
/// ```
pub fn candle_threads_for(stage_threads: usize) -> Option<usize> {
    (stage_threads <= MAX_THREADS_FOR_INLINE_CANDLE).then_some(1)
}

/// Sets `CANDLE_NUM_THREADS` as [`candle_threads_for`] says, unless the user has set it
/// (their value wins). Returns the value set, if any.
///
/// It acts only if candle has not yet run an element-wise operation of 64 Ki elements or more
/// (candle reads the variable once); call it at the start of `main`.
///
/// # Safety
/// It writes the process environment: no other thread may read or write the environment
/// while it runs (call it before the program starts threads of its own; rayon's idle workers
/// do not touch the environment).
pub unsafe fn share_cores_with_candle(stage_threads: usize) -> Option<usize> {
    if std::env::var_os(CANDLE_THREADS_VARIABLE).is_some() {
        return None;
    }
    let threads = candle_threads_for(stage_threads)?;
    // SAFETY: the caller guarantees that no other thread uses the environment meanwhile.
    unsafe { std::env::set_var(CANDLE_THREADS_VARIABLE, threads.to_string()) };
    Some(threads)
}
