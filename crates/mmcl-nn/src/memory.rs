//! Allocator tuning for programs that run large models on the CPU.
//!
//! Every tensor operation allocates its output. glibc serves allocations above 32 MiB (the
//! activations of a batch: 64 ECGs × 301 tokens × 1536 features are 118 MB) with fresh `mmap`s
//! and returns them to the system on free, so each forward pass page-faults and zeroes its
//! whole working set again: 15 % of the time of the paper's embedding benchmark.
//! [`keep_freed_memory`] makes the allocator keep and reuse freed memory instead.
//!
//! It also keeps every thread on the one heap that can: glibc gives other threads arenas of
//! at most 64 MiB, and serves a larger block there by a fresh `mmap` whatever the settings
//! above, so a model run on rayon's threads (the two towers of a contrastive step side by side)
//! page-faulted its large activations again on every pass (3–5× the system time, about 10 % of
//! the step's throughput on a 2-core Zen 4, `docs/performance.md`).

/// Asks the C allocator to serve large blocks from its heap and to keep freed memory for reuse,
/// from one arena for every thread (glibc: `M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD = INT_MAX`,
/// `M_ARENA_MAX = 1`). The process then holds on to its peak memory until it exits; its threads
/// take turns at the allocator's lock, which costs little where, as here, the allocations are
/// few and large.
///
/// Call it once, early in `main` (before threads start allocating); libraries should leave the
/// choice to the program. Returns whether the setting was applied (only on Linux with glibc).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes glibc's allocator parameters (it takes the arena lock);
        // every parameter and value is valid for it.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
