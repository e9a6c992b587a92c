//! The element-wise formulas of the exact GELU, its gradient and the softmax's exponentials on
//! CPUs with AVX2 but without AVX-512, four vectors of 8 values side by side.
//!
//! Each value's GELU is a dependent chain of about fifty operations (the erfc fit, then an
//! exponential); the vectorised loop over one vector at a time kept the out-of-order core
//! waiting on that chain, at 76 cycles per 8 values of the fused bias and GELU on a Zen 3
//! (the FP pipes would take about 15). Written over four vectors, every step issues four
//! independent operations: the GELU forward ran 1.7× faster there, the softmax 1.3×. The
//! formulas themselves are written once, over [`Arith`]; this module supplies the four-vector
//! arithmetic, each operation the same IEEE one per value, so the bits are those of the scalar
//! loops (the values past the last whole group run there). On AVX-512 CPUs the compiler's
//! 16-wide loops stay.

use std::arch::x86_64::{
    __m256, _CMP_GE_OQ, _CMP_LT_OQ, _mm256_add_epi32, _mm256_add_ps, _mm256_andnot_ps,
    _mm256_blendv_ps, _mm256_castps_si256, _mm256_castsi256_ps, _mm256_cmp_ps, _mm256_div_ps,
    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps, _mm256_mul_ps,
    _mm256_set1_epi32, _mm256_set1_ps, _mm256_slli_epi32, _mm256_storeu_ps, _mm256_sub_epi32,
    _mm256_sub_ps, _mm256_xor_ps,
};
use std::mem::MaybeUninit;

use super::simd::{Arith, Formula, LANES, ROUND_MAGIC, exp_of};

/// Vectors side by side.
pub(crate) const VECTORS: usize = 4;
/// Values per group.
const GROUP: usize = 8 * VECTORS;

/// Whether the formulas run here: AVX2 and FMA, no AVX-512, and `MMCL_AVX2_LANES` not `0` (the
/// switch compares the two paths' speed; their bits are the same); decided once.
pub(crate) fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        mmcl_core::simd::level() == mmcl_core::simd::Level::V3
            && !std::env::var("MMCL_AVX2_LANES").is_ok_and(|v| v.trim() == "0")
    })
}

/// `out[j] = formula(inputs[0][j], inputs[1][j], …)` for each `j` below the shortest input's
/// length (and `out`'s), written without reading `out`; `false` (nothing written) where
/// [`available`] is not.
pub(crate) fn map<const K: usize>(
    out: &mut [MaybeUninit<f32>],
    inputs: [&[f32]; K],
    formula: &impl Formula<K>,
) -> bool {
    if !available() {
        return false;
    }
    // SAFETY: the CPU has AVX2 and FMA (`available`).
    unsafe { map_groups(out, inputs, formula) };
    true
}

/// [`map`] on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
fn map_groups<const K: usize>(
    out: &mut [MaybeUninit<f32>],
    inputs: [&[f32]; K],
    formula: &impl Formula<K>,
) {
    let len = inputs.iter().fold(out.len(), |n, x| n.min(x.len()));
    let whole = len / GROUP * GROUP;
    for (at, group) in (0..whole)
        .step_by(GROUP)
        .zip(out[..whole].chunks_exact_mut(GROUP))
    {
        let mut args = [Lanes::splat(0.0); K];
        for (arg, input) in args.iter_mut().zip(&inputs) {
            *arg = Lanes::load(&input[at..at + GROUP]);
        }
        formula.eval(args).store(group);
    }
    for (j, o) in out.iter_mut().enumerate().take(len).skip(whole) {
        o.write(formula.eval(inputs.map(|x| x[j])));
    }
}

/// `formula` on four vectors of each input at once, as [`map`] computes it for a group of 32
/// values (the same bits): for a caller that holds its values in registers, the matrix
/// products' tiles finishing their sums (`avx2_gemm`).
///
/// # Safety
/// The CPU has AVX2 and FMA (the caller is compiled for them and checked the CPU).
#[inline(always)]
pub(crate) unsafe fn eval_vectors<const K: usize>(
    args: [[__m256; VECTORS]; K],
    formula: &impl Formula<K>,
) -> [__m256; VECTORS] {
    formula.eval(args.map(Lanes)).0
}

/// [`VECTORS`] vectors of 8 values. Values exist only on CPUs with AVX2 and FMA: the type is
/// private to this module, whose entry points ([`map`], [`exp_shifted`] and
/// [`exp_shifted_in_place`]) check the CPU first.
#[derive(Clone, Copy)]
struct Lanes([__m256; VECTORS]);

impl Lanes {
    /// The first [`GROUP`] values of `from`.
    #[inline(always)]
    fn load(from: &[f32]) -> Self {
        let from = &from[..GROUP];
        let mut v = Self::splat(0.0).0;
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: 8 values at 8·i of the group (the slice is GROUP long); AVX (type note).
            *v = unsafe { _mm256_loadu_ps(from.as_ptr().add(8 * i)) };
        }
        Lanes(v)
    }

    /// Writes the values into the first [`GROUP`] places of `to`.
    #[inline(always)]
    fn store(self, to: &mut [MaybeUninit<f32>]) {
        let to = &mut to[..GROUP];
        for (i, v) in self.0.iter().enumerate() {
            // SAFETY: 8 places at 8·i of the group; AVX (type note).
            unsafe { _mm256_storeu_ps(to.as_mut_ptr().add(8 * i).cast::<f32>(), *v) };
        }
    }

    /// `f` on each vector.
    #[inline(always)]
    fn each(self, f: impl Fn(__m256) -> __m256) -> Self {
        let mut v = self.0;
        for v in v.iter_mut() {
            *v = f(*v);
        }
        Lanes(v)
    }

    /// `f` on each pair of vectors of `self` and `o`.
    #[inline(always)]
    fn with(self, o: Self, f: impl Fn(__m256, __m256) -> __m256) -> Self {
        let mut v = self.0;
        for (v, o) in v.iter_mut().zip(o.0) {
            *v = f(*v, o);
        }
        Lanes(v)
    }
}

// SAFETY (every block below): the intrinsics need AVX, AVX2 or FMA, which the CPU has wherever
// a `Lanes` exists (its type note).
impl Arith for Lanes {
    #[inline(always)]
    fn splat(c: f32) -> Self {
        Lanes([unsafe { _mm256_set1_ps(c) }; VECTORS])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.with(o, |a, b| unsafe { _mm256_add_ps(a, b) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.with(o, |a, b| unsafe { _mm256_sub_ps(a, b) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.with(o, |a, b| unsafe { _mm256_mul_ps(a, b) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self.with(o, |a, b| unsafe { _mm256_div_ps(a, b) })
    }
    #[inline(always)]
    fn mul_add<const FMA: bool>(self, x: Self, c: Self) -> Self {
        if FMA {
            let mut v = self.0;
            for ((v, x), c) in v.iter_mut().zip(x.0).zip(c.0) {
                *v = unsafe { _mm256_fmadd_ps(*v, x, c) };
            }
            Lanes(v)
        } else {
            self.mul(x).add(c)
        }
    }
    #[inline(always)]
    fn neg(self) -> Self {
        let sign = unsafe { _mm256_set1_ps(-0.0) };
        self.each(|a| unsafe { _mm256_xor_ps(a, sign) })
    }
    #[inline(always)]
    fn abs(self) -> Self {
        let sign = unsafe { _mm256_set1_ps(-0.0) };
        self.each(|a| unsafe { _mm256_andnot_ps(sign, a) })
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> Self {
        // `max(lo, a)` and `min(hi, a)` return their second operand when either is NaN: a NaN
        // is kept, as `f32::clamp` keeps it.
        let (lo, hi) = unsafe { (_mm256_set1_ps(lo), _mm256_set1_ps(hi)) };
        self.each(|a| unsafe { _mm256_min_ps(hi, _mm256_max_ps(lo, a)) })
    }
    #[inline(always)]
    fn zero_below(self, bound: f32, value: Self) -> Self {
        let bound = unsafe { _mm256_set1_ps(bound) };
        self.with(value, |a, v| unsafe {
            _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(a, bound), v)
        })
    }
    #[inline(always)]
    fn by_sign(self, nonneg: Self, negative: Self) -> Self {
        let zero = unsafe { _mm256_set1_ps(0.0) };
        let mut v = self.0;
        for ((v, p), n) in v.iter_mut().zip(nonneg.0).zip(negative.0) {
            *v = unsafe { _mm256_blendv_ps(n, p, _mm256_cmp_ps::<_CMP_GE_OQ>(*v, zero)) };
        }
        Lanes(v)
    }
    #[inline(always)]
    fn times_two_to(self, shifted: Self) -> Self {
        let (magic, bias) = unsafe {
            (
                _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32),
                _mm256_set1_epi32(127),
            )
        };
        self.with(shifted, |a, s| unsafe {
            let n = _mm256_sub_epi32(_mm256_castps_si256(s), magic);
            let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n, bias));
            _mm256_mul_ps(a, _mm256_castsi256_ps(scale))
        })
    }
}

// The accumulators of `simd::exp_shifted` are two of our vectors.
const _: () = assert!(LANES == 16);

/// `e^(v − shift)` for the values of `x` in whole groups, written back into `x`, and added into
/// `acc` as [`super::simd::exp_shifted_in_place`] adds them (lane `i` takes the values at
/// positions `i`, `i + 16`, … in order); returns how many values it did (a multiple of 32: 0
/// where [`available`] is not).
pub(crate) fn exp_shifted_in_place<const FMA: bool>(
    x: &mut [f32],
    shift: f32,
    acc: &mut [f32; LANES],
) -> usize {
    if !available() {
        return 0;
    }
    let at = x.as_mut_ptr();
    // SAFETY: `x` holds `x.len()` values, read and written in place; AVX2 and FMA (`available`).
    unsafe { exp_groups::<FMA>((at, at), x.len(), shift, acc) }
}

/// [`exp_shifted_in_place`] from `x` into `out`, over the values both have.
pub(crate) fn exp_shifted<const FMA: bool>(
    x: &[f32],
    out: &mut [f32],
    shift: f32,
    acc: &mut [f32; LANES],
) -> usize {
    if !available() {
        return 0;
    }
    let len = x.len().min(out.len());
    // SAFETY: both hold `len` values; AVX2 and FMA (`available`).
    unsafe { exp_groups::<FMA>((x.as_ptr(), out.as_mut_ptr()), len, shift, acc) }
}

/// The groups of [`exp_shifted`], from `from` to `to` (which may be the same values).
///
/// # Safety
/// `from` and `to` address `len` valid values; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_groups<const FMA: bool>(
    (from, to): (*const f32, *mut f32),
    len: usize,
    shift: f32,
    acc: &mut [f32; LANES],
) -> usize {
    let whole = len / GROUP * GROUP;
    // SAFETY: 8 values each of the 16 accumulators.
    let mut sums = unsafe {
        [
            _mm256_loadu_ps(acc.as_ptr()),
            _mm256_loadu_ps(acc.as_ptr().add(8)),
        ]
    };
    let shift = Lanes::splat(shift);
    for at in (0..whole).step_by(GROUP) {
        // SAFETY: the group's values, below `len` (caller's contract).
        let group = unsafe { std::slice::from_raw_parts(from.add(at), GROUP) };
        let e = exp_of::<Lanes, FMA>(Lanes::load(group).sub(shift));
        // SAFETY: as above; the group's values are read already.
        e.store(unsafe { std::slice::from_raw_parts_mut(to.add(at).cast(), GROUP) });
        for (i, v) in e.0.iter().enumerate() {
            sums[i % 2] = _mm256_add_ps(sums[i % 2], *v);
        }
    }
    // SAFETY: as above.
    unsafe {
        _mm256_storeu_ps(acc.as_mut_ptr(), sums[0]);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), sums[1]);
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{exp_f32, normal_cdf_of, normal_pdf_of};

    /// Arguments across every branch of the formulas: both signs, the exponential's clamp and
    /// flush bounds, huge, tiny and subnormal values, infinities, NaN, zeros (first, so that
    /// they fall in whole groups).
    fn arguments() -> Vec<f32> {
        let mut x = vec![
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            -87.3,
            -87.29999,
            -87.30001,
            88.0,
            88.00001,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        x.extend((0..4000).map(|i| (i as f32 - 2000.0) * 0.0137));
        x.extend((0..400).map(|i| (i as f32 - 200.0) * 0.9));
        x
    }

    struct Exp<const FMA: bool>;
    impl<const FMA: bool> Formula<1> for Exp<FMA> {
        fn eval<T: Arith>(&self, [x]: [T; 1]) -> T {
            exp_of::<T, FMA>(x)
        }
    }

    /// `Φ(x)·y + φ(x)`: both of the GELU's functions, and two inputs.
    struct CdfPdf<const FMA: bool>;
    impl<const FMA: bool> Formula<2> for CdfPdf<FMA> {
        fn eval<T: Arith>(&self, [x, y]: [T; 2]) -> T {
            normal_cdf_of::<T, FMA>(x)
                .mul(y)
                .add(normal_pdf_of::<T, FMA>(x))
        }
    }

    fn same_bits(got: &[MaybeUninit<f32>], want: impl Iterator<Item = f32>, what: &str) {
        // SAFETY: `map` wrote every value.
        let got = got.iter().map(|v| unsafe { v.assume_init() });
        for (j, (g, w)) in got.zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{what}, value {j}: {g} against {w}"
            );
        }
    }

    /// The four-vector arithmetic gives the scalar formulas' bits for every argument, with and
    /// without fused multiply-adds, in whole groups and the tail.
    #[test]
    fn formulas_keep_the_bits_of_the_scalar_ones() {
        if !available() {
            eprintln!("no AVX2 without AVX-512 here: the four-vector path does not run");
            return;
        }
        let x = arguments();
        let y: Vec<f32> = x.iter().map(|v| v * 0.5 - 1.0).collect();
        for len in [x.len(), GROUP - 1, 3 * GROUP + 5] {
            let mut out = vec![MaybeUninit::new(f32::NAN); len];
            assert!(map(&mut out, [&x[..len]], &Exp::<false>));
            same_bits(&out, x.iter().map(|&v| exp_f32::<false>(v)), "exp");
            assert!(map(&mut out, [&x[..len]], &Exp::<true>));
            same_bits(&out, x.iter().map(|&v| exp_f32::<true>(v)), "fused exp");
            assert!(map(&mut out, [&x[..len], &y], &CdfPdf::<false>));
            let want = x
                .iter()
                .zip(&y)
                .map(|(&x, &y)| CdfPdf::<false>.eval([x, y]));
            same_bits(&out, want, "cdf, pdf");
            assert!(map(&mut out, [&x[..len], &y], &CdfPdf::<true>));
            let want = x.iter().zip(&y).map(|(&x, &y)| CdfPdf::<true>.eval([x, y]));
            same_bits(&out, want, "fused cdf, pdf");
        }
        // The shortest input decides the length; the rest of `out` is left alone.
        let mut out = vec![MaybeUninit::new(7.0); 40];
        assert!(map(&mut out, [&x[..40], &y[..35]], &CdfPdf::<false>));
        // SAFETY: initialised above.
        assert!(out[35..].iter().all(|v| unsafe { v.assume_init() } == 7.0));
    }
}
