//! A census of the CPU kernels' matrix products inside a real workload.
//!
//! Benchmarks of single products (`cargo bench --bench kernels`) time them on operands that a
//! loop keeps in cache. Inside a training step the same shapes read operands that an earlier
//! layer left in memory, and many products are small (one attention head, one image's band of
//! a convolution): their rates differ, and which of them hold the time is what decides where
//! work pays. With `MMCL_PRODUCT_CENSUS=1` in the environment every product of the CPU kernels
//! (the one entry point of the f32 and bf16 engines) and every image of the direct 3×3
//! convolution is timed and counted by kernel, shape, operand layout and threading; [`rows`]
//! returns the table and [`report`] formats it. Without the variable the cost is one cached
//! flag read per product.
//!
//! ```
//! // A program (or benchmark) run with MMCL_PRODUCT_CENSUS=1 prints where its products went:
//! if mmcl_nn::census::enabled() {
//!     eprintln!("{}", mmcl_nn::census::report(30));
//! }
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The environment variable that turns the census on (any value but `0`).
pub const CENSUS_VARIABLE: &str = "MMCL_PRODUCT_CENSUS";

/// What a census row counts: one kernel at one shape and operand layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProductKey {
    /// The kernel: `"f32"` or `"bf16"` for matrix products (by the precision they ran in),
    /// `"direct 3x3"` for the direct convolution (one image).
    pub kernel: &'static str,
    /// `(m, n, k)`: the output's rows and columns and the length of each sum. For the direct
    /// convolution: output channels, output pixels, input channels × 9.
    pub dims: (usize, usize, usize),
    /// The left operand's (row, column) strides (zeros for the direct convolution).
    pub lhs_strides: (usize, usize),
    /// The right operand's (row, column) strides (zeros for the direct convolution).
    pub rhs_strides: (usize, usize),
    /// The threads the call itself used: 1 for a product that runs inside a parallel task,
    /// the pool's size for one split over the pool.
    pub threads: usize,
}

/// One row of the census: a key, its calls and their total time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CensusRow {
    /// The kernel, shape and layout counted.
    pub key: ProductKey,
    /// Calls counted.
    pub calls: u64,
    /// Their summed wall-clock time, in seconds (per calling thread: calls that run at the
    /// same time on different threads each count their own).
    pub seconds: f64,
}

impl CensusRow {
    /// The multiply-adds of all calls, counted as two floating-point operations each.
    pub fn flops(&self) -> f64 {
        let (m, n, k) = self.key.dims;
        2.0 * (m as f64) * (n as f64) * (k as f64) * self.calls as f64
    }

    /// GFLOP/s per thread the calls used: comparable with one core's peak.
    pub fn gflops_per_thread(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.flops() / self.seconds / self.key.threads.max(1) as f64 / 1e9
    }
}

/// Whether the census is on (`MMCL_PRODUCT_CENSUS` set to anything but `0`, read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(CENSUS_VARIABLE).is_some_and(|v| v != "0"))
}

type Table = HashMap<ProductKey, (u64, f64)>;

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The start of a call to count, when the census is on.
pub(crate) fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Counts one call that began at `started` (from [`start`]) under the key `key()` builds (only
/// when counting: the products' hot path builds nothing with the census off).
pub(crate) fn record(started: Option<Instant>, key: impl FnOnce() -> ProductKey) {
    let Some(started) = started else {
        return;
    };
    let seconds = started.elapsed().as_secs_f64();
    let key = key();
    // A poisoned lock only means another thread panicked while counting: the counts are
    // still counts.
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    let entry = table.entry(key).or_insert((0, 0.0));
    entry.0 += 1;
    entry.1 += seconds;
}

/// The rows counted so far, the most time first.
pub fn rows() -> Vec<CensusRow> {
    let table = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<CensusRow> = table
        .iter()
        .map(|(&key, &(calls, seconds))| CensusRow {
            key,
            calls,
            seconds,
        })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    rows
}

/// Forgets every count (for instance after a warm-up).
pub fn reset() {
    table().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The census as a Markdown table of its `limit` most expensive rows: kernel, `(m, n, k)`,
/// strides, threads, calls, share of the counted time, GFLOP/s per thread; then the totals.
pub fn report(limit: usize) -> String {
    use std::fmt::Write;
    let rows = rows();
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let mut out = String::from(
        "| kernel | m | n | k | lhs strides | rhs strides | threads | calls | share | GFLOP/s per thread |\n\
         |---|---:|---:|---:|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows.iter().take(limit) {
        let k = r.key;
        let (m, n, depth) = k.dims;
        let share = if total > 0.0 { r.seconds / total } else { 0.0 };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "| {} | {m} | {n} | {depth} | {:?} | {:?} | {} | {} | {:.1} % | {:.1} |",
            k.kernel,
            k.lhs_strides,
            k.rhs_strides,
            k.threads,
            r.calls,
            100.0 * share,
            r.gflops_per_thread()
        );
    }
    let thread_seconds: f64 = rows.iter().map(|r| r.seconds * r.key.threads as f64).sum();
    let flops: f64 = rows.iter().map(CensusRow::flops).sum();
    let rate = if thread_seconds > 0.0 {
        flops / thread_seconds / 1e9
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "\n{} kinds of call, {:.2} s counted ({thread_seconds:.2} thread-seconds), \
         {:.1} GFLOP, {rate:.1} GFLOP/s per thread overall",
        rows.len(),
        total,
        flops / 1e9
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_calls_and_rates_per_thread() {
        let key = ProductKey {
            kernel: "test",
            dims: (2, 3, 4),
            lhs_strides: (4, 1),
            rhs_strides: (3, 1),
            threads: 2,
        };
        let row = CensusRow {
            key,
            calls: 10,
            seconds: 1e-6,
        };
        assert_eq!(row.flops(), 480.0);
        assert!((row.gflops_per_thread() - 0.24).abs() < 1e-9);
        // Counting is a no-op without a start (the census off).
        record(None, || key);
        assert!(rows().iter().all(|r| r.key != key));
        record(Some(Instant::now()), || key);
        record(Some(Instant::now()), || key);
        let counted = rows().into_iter().find(|r| r.key == key).map(|r| r.calls);
        assert_eq!(counted, Some(2));
        assert!(report(100).contains("| test | 2 | 3 | 4 | (4, 1) | (3, 1) | 2 | 2 |"));
    }
}
