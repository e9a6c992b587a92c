//! The precision of the matrix products: f32 (the default, bit-compatible with the reference)
//! or bf16 products with f32 accumulation (mixed precision, as PyTorch's autocast runs `linear`,
//! `matmul` and convolutions).
//!
//! The setting belongs to the thread that runs a model: the kernels read it when an operation
//! starts (forward or backward) and hand it to their worker tasks, so two models on two threads
//! (or two tests) can use different precisions. Weights, activations, gradients and optimiser
//! state stay f32; only the operands of each matrix product are rounded to bf16 (round to
//! nearest even), and every product sums in f32. Under bf16 the CPU's element-wise kernels
//! whose results feed those products (the exact GELU and its derivative, the attention's
//! softmax) also evaluate their polynomials with fused multiply-adds where the CPU has them:
//! this moves only last bits of f32 values that are then rounded to bf16, and speeds those
//! kernels up by about a third; under f32 they keep their separate multiplies and adds.
//!
//! On CPUs with AMX (Intel Sapphire Rapids and later) the products run on the tile unit; on
//! other CPUs they are emulated exactly (operands rounded, then the f32 kernels), which gives
//! the same numbers up to summation order but no speed-up.
//!
//! Where the CPU kernels do not apply (CUDA tensors, and the composed fallbacks), the products
//! go through [`matmul`], [`broadcast_matmul`] and [`conv2d`] here: under bf16 these cast f32
//! operands to bf16, multiply with candle's bf16 kernels (cuBLAS on a GPU, whose bf16 products
//! accumulate in f32) and cast the product back to f32, as autocast does; the casts are
//! differentiable, so gradients reach the f32 weights. Normalisations, softmax and losses stay
//! f32.
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

use candle_core::{DType, Tensor};
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

/// Whether a composed product of `a` and `b` runs in bf16: the thread's precision is bf16
/// and both operands are f32 (other dtypes, such as the f64 of the exactness tests, keep
/// theirs).
fn composed_in_bf16(a: &Tensor, b: &Tensor) -> bool {
    matmul_precision() == Precision::Bf16 && a.dtype() == DType::F32 && b.dtype() == DType::F32
}

/// Runs `product` on `a` and `b` in the thread's precision (see the module notes).
fn in_precision(
    a: &Tensor,
    b: &Tensor,
    product: impl FnOnce(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if composed_in_bf16(a, b) {
        product(&a.to_dtype(DType::BF16)?, &b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)
    } else {
        product(a, b)
    }
}

/// candle's `a.matmul(b)` in the thread's precision.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    in_precision(a, b, |a, b| a.matmul(b))
}

/// candle's `a.broadcast_matmul(b)` in the thread's precision.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    in_precision(a, b, |a, b| a.broadcast_matmul(b))
}

/// candle's `x.conv2d(weight, padding, stride, 1, 1)` in the thread's precision.
///
/// On the CPU the product stays f32: candle's CPU convolution has no bf16 product, and f32
/// convolutions on the CPU take this crate's kernels ([`crate::conv::conv2d`]), which apply the
/// precision themselves; only other dtypes come here on the CPU.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let conv = |x: &Tensor, w: &Tensor| x.conv2d(w, padding, stride, 1, 1);
    if x.device().is_cpu() {
        return conv(x, weight);
    }
    in_precision(x, weight, conv)
}

/// How bf16 products run on this CPU: `"amx"` (the tile unit), `"avx512-bf16"` (AVX-512 BF16
/// pair dot products) or `"emulated"` (operands rounded to bf16, then the f32 kernels: the same
/// arithmetic, no speed-up).
pub fn bf16_backend() -> &'static str {
    crate::kernels::bf16::Engine::best().name()
}

/// What runs the f32 matrix products of the CPU kernels: `"openblas (<kernels>)"` with the
/// `openblas` feature, naming the kernel family OpenBLAS chose for this CPU; otherwise `"gemm
/// crate"`, with the feature saying why OpenBLAS is not used (`MMCL_OPENBLAS=0`, or its kernels
/// older than the CPU), and naming the packed AVX2 kernel that takes the large products of
/// short sums on CPUs with AVX2 but no AVX-512 (`MMCL_AVX2_GEMM=0` turns it off).
pub fn f32_backend() -> String {
    #[cfg(feature = "openblas")]
    fn backend() -> String {
        use crate::kernels::blas;
        let core = blas::core_name();
        if blas::enabled() {
            format!("openblas ({core})")
        } else {
            format!(
                "{} (OpenBLAS, whose kernels here are {core}, not used)",
                crate_backend()
            )
        }
    }
    #[cfg(not(feature = "openblas"))]
    fn backend() -> String {
        crate_backend().to_string()
    }
    backend()
}

/// The products' engines without OpenBLAS.
fn crate_backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::avx2_gemm::enabled() {
        return "gemm crate, and packed AVX2 6x16 tiles for large products of at most 384-term sums";
    }
    "gemm crate"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{self, randn};
    use candle_core::Var;

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        randn(seed, shape).expect("tensor")
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        test_support::max_abs_diff(a, b).expect("difference")
    }

    #[test]
    fn composed_products_round_their_operands_to_bf16_under_bf16() {
        let (a, b) = (seeded(&[2, 8, 64], 1), seeded(&[2, 64, 16], 2));
        let f32_product = matmul(&a, &b).expect("f32");
        let rounded = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let by_hand = rounded(
            &rounded(&a)
                .expect("a")
                .matmul(&rounded(&b).expect("b"))
                .expect("product"),
        )
        .expect("rounded product");
        let bf16_product = {
            let _bf16 = Precision::Bf16.enter();
            matmul(&a, &b).expect("bf16")
        };
        assert_eq!(bf16_product.dtype(), DType::F32);
        // Same function as rounding by hand (up to the order of the f32 sums), and not the f32
        // product.
        assert!(max_abs_diff(&bf16_product, &by_hand) < 0.07);
        assert!(max_abs_diff(&bf16_product, &f32_product) > 1e-3);
        assert_eq!(
            matmul(&a, &b).expect("f32 again").to_vec3::<f32>().ok(),
            f32_product.to_vec3::<f32>().ok()
        );
    }

    #[test]
    fn gradients_reach_the_f32_weights_through_the_casts() {
        let x = seeded(&[3, 16, 48], 3);
        let w = Var::from_tensor(&seeded(&[48, 8], 4)).expect("var");
        let loss_grad = || {
            let y = broadcast_matmul(&x, w.as_tensor()).expect("product");
            assert_eq!(y.dtype(), DType::F32);
            let grads = y
                .sqr()
                .and_then(|y| y.sum_all())
                .expect("loss")
                .backward()
                .expect("backward");
            grads.get(w.as_tensor()).expect("gradient").clone()
        };
        let f32_grad = loss_grad();
        let bf16_grad = {
            let _bf16 = Precision::Bf16.enter();
            loss_grad()
        };
        assert_eq!(bf16_grad.dtype(), DType::F32);
        let scale = f32_grad
            .abs()
            .and_then(|g| g.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("scale");
        let error = max_abs_diff(&bf16_grad, &f32_grad) / scale;
        assert!(error > 0.0 && error < 0.05, "relative error {error}");
    }

    #[test]
    fn other_dtypes_keep_their_precision() {
        let a = seeded(&[4, 32], 5).to_dtype(DType::F64).expect("f64");
        let b = seeded(&[32, 4], 6).to_dtype(DType::F64).expect("f64");
        let exact = a.matmul(&b).expect("f64 product");
        let _bf16 = Precision::Bf16.enter();
        let product = broadcast_matmul(&a, &b).expect("product");
        assert_eq!(product.dtype(), DType::F64);
        assert_eq!(product.to_vec2::<f64>().ok(), exact.to_vec2::<f64>().ok());
    }
}
