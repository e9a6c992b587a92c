//! What the model benchmarks share (`mod common;` in each): the devices they run on, a
//! criterion group at the paper's batch set up as the `mmcl` binary runs, and the workloads
//! themselves ([`workloads`]).

pub mod workloads;

use std::time::Duration;

use anyhow::Result;
use candle_core::Device;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};

/// The CPU, and the first CUDA device when built with `--features cuda` and one is present
/// (`mmcl_testutil::devices`), each with its name in benchmark ids.
pub fn devices() -> Vec<(&'static str, Device)> {
    mmcl_testutil::devices()
        .into_iter()
        .map(|device| (mmcl_testutil::device_name(&device), device))
        .collect()
}

/// Calls `run(name, state)` with what `setup` builds on each of [`devices`], one device at a
/// time (the previous device's state is dropped first); a device whose setup fails is skipped
/// with a note on stderr.
pub fn on_each_device<T>(
    mut setup: impl FnMut(&Device) -> Result<T>,
    mut run: impl FnMut(&str, T),
) {
    for (name, device) in devices() {
        match setup(&device) {
            Ok(state) => run(name, state),
            Err(e) => eprintln!("skipping {name}: {e:#}"),
        }
    }
}

/// What `criterion_main!` does for the group `benches`, then, with `MMCL_PRODUCT_CENSUS=1`,
/// the census of the CPU kernels' products over everything the run benchmarked, warm-up
/// included ([`mmcl_suite::nn::census`]); select one benchmark for the table of one workload:
///
/// ```sh
/// MMCL_PRODUCT_CENSUS=1 cargo bench --bench mae_step -- 'b32_mask0.8/cpu$'
/// ```
pub fn main_with_census(benches: fn()) {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if mmcl_suite::nn::census::enabled() {
        let threads = rayon::current_num_threads();
        eprintln!(
            "\nThe CPU kernels' products in this run ({threads} threads, `mmcl_nn::census`):\n\n{}",
            mmcl_suite::nn::census::report(40)
        );
    }
}

/// A group whose throughput is `batch` samples per iteration, 10 samples over `seconds` (or
/// over criterion's `--measurement-time` when the command line gives one). Freed activations
/// are reused first, instead of being page-faulted anew on every step, and candle's
/// element-wise pool is sized for the threads, as the `mmcl` binary does.
pub fn batch_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    batch: usize,
    seconds: u64,
) -> BenchmarkGroup<'a, WallTime> {
    mmcl_suite::nn::memory::keep_freed_memory();
    // SAFETY: criterion runs the benchmarks on this thread and has started no other.
    unsafe { mmcl_suite::nn::threads::share_cores_with_candle(rayon::current_num_threads()) };
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(batch as u64));
    group.sample_size(10);
    // A group's own setting overrides the command line's, so it is set only when the command
    // line has none.
    if !measurement_time_on_command_line() {
        group.measurement_time(Duration::from_secs(seconds));
    }
    group
}

/// Whether the benchmark's command line sets criterion's `--measurement-time`.
fn measurement_time_on_command_line() -> bool {
    std::env::args()
        .any(|arg| arg == "--measurement-time" || arg.starts_with("--measurement-time="))
}
