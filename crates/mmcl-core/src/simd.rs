//! Runtime selection of vector instruction sets for the CPU kernels of every crate.
//!
//! The kernels are written as plain loops over slices that LLVM vectorises;
//! [`multiversion!`](crate::multiversion) compiles each one three times (AVX-512, AVX2+FMA,
//! baseline) and picks the best the running CPU supports, so the binary stays portable (the
//! crates are built for baseline x86-64, whose vectors are two doubles wide) while using the
//! full vector width where present. The three versions compute the same operations in the
//! same order: they give the same bits.
//!
//! ```
//! #[inline(always)]
//! fn sum_kernel(x: &[f64]) -> f64 {
//!     x.iter().sum()
//! }
//! mmcl_core::multiversion!(fn sum(x: &[f64]) -> f64 => sum_kernel);
//! assert_eq!(sum(&[1.0, 2.0, 3.0]), 6.0);
//! ```

/// The vector instruction level chosen for this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// x86-64-v4: AVX-512 F/BW/VL/DQ.
    V4,
    /// x86-64-v3: AVX2 and FMA.
    V3,
    /// Whatever the compilation target guarantees.
    Baseline,
}

/// The best level the running CPU supports (detected once).
pub fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Level::V4
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Level::V3
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// Defines `fn $name(args) -> ret` that runs the `#[inline(always)]` kernel `$kernel` compiled
/// for the best instruction set of the running CPU.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $kernel:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: the level was detected on the running CPU, so the instructions the
                    // function was compiled with exist.
                    $crate::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            $kernel($($arg),*)
        }
    };
}
