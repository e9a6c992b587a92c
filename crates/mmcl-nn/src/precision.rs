//! The precision of the CPU matrix products: f32 (the default, bit-compatible with the
//! reference) or bf16 products with f32 accumulation (mixed precision, as PyTorch's CPU
//! autocast runs `linear` and convolutions).
//!
//! The setting belongs to the thread that runs a model: the kernels read it when an operation
//! starts (forward or backward) and hand it to their worker tasks, so two models on two threads
//! (or two tests) can use different precisions. Weights, activations, gradients and optimiser
//! state stay f32; only the operands of each matrix product are rounded to bf16 (round to
//! nearest even), and every product sums in f32.
//!
//! On CPUs with AMX (Intel Sapphire Rapids and later) the products run on the tile unit; on
//! other CPUs they are emulated exactly (operands rounded, then the f32 kernels), which gives
//! the same numbers up to summation order but no speed-up.
//!
//! ```
//! use mmcl_nn::precision::{Precision, matmul_precision};
//!
//! assert_eq!(matmul_precision(), Precision::F32);
//! {
//!     let _bf16 = Precision::Bf16.enter();
//!     assert_eq!(matmul_precision(), Precision::Bf16);
//! }
//! assert_eq!(matmul_precision(), Precision::F32);
//! assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
//! ```

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The arithmetic of the CPU matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and accumulation (the reference's arithmetic).
    #[default]
    F32,
    /// bf16 operands (rounded to nearest even), f32 accumulation.
    Bf16,
}

impl Precision {
    /// Makes this the precision of the current thread until the guard is dropped (which
    /// restores the previous one).
    #[must_use = "the precision reverts when the guard is dropped"]
    pub fn enter(self) -> PrecisionGuard {
        let previous = CURRENT.with(|c| c.replace(self));
        PrecisionGuard { previous }
    }

    /// The setting's name in configurations (`"f32"`, `"bf16"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!(
                "unknown precision {other:?} (expected \"f32\" or \"bf16\")"
            )),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The matrix-product precision of the current thread.
pub fn matmul_precision() -> Precision {
    CURRENT.with(Cell::get)
}

/// Restores the previous precision of its thread when dropped (see [`Precision::enter`]).
#[derive(Debug)]
pub struct PrecisionGuard {
    previous: Precision,
}

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// How bf16 products run on this CPU: `"amx"` (the tile unit) or `"emulated"` (operands
/// rounded to bf16, then the f32 kernels: the same arithmetic, no speed-up).
pub fn bf16_backend() -> &'static str {
    if crate::kernels::bf16::amx_available() {
        "amx"
    } else {
        "emulated"
    }
}
