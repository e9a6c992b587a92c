//! Runtime selection of vector instruction sets for the CPU kernels, and the branch-free scalar
//! math (exp, Gaussian CDF) they are built from.
//!
//! The kernels are written as plain loops over slices that LLVM vectorises; [`multiversion!`]
//! compiles each one three times (AVX-512, AVX2+FMA, baseline) and picks the best the running
//! CPU supports, so the binary stays portable while using the full vector width where present.

use std::mem::MaybeUninit;

pub(crate) use mmcl_core::multiversion;

/// Independent accumulators per reduction: a float sum in one accumulator is a sequential chain
/// the compiler may not reorder (no fast-math), so it would not vectorise; 16 lanes fill an
/// AVX-512 register (two AVX2 ones).
pub(crate) const LANES: usize = 16;

/// Sum of `x` (lane-parallel, vectorisable).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// `acc += row` for every row of `rows` (rows of `acc.len()` values, a partial last row
/// ignored), each element summed in row order, so every vector width gives the same bits.
fn add_rows_kernel(acc: &mut [f32], rows: &[f32]) {
    if acc.is_empty() {
        return;
    }
    let width = acc.len();
    for row in rows.chunks_exact(width) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

multiversion!(
    /// `acc += row` for every row of `rows` in order (bias gradients, ordered sums of
    /// partial results): [`add_rows_kernel`] at the CPU's vector width. Compiled for the
    /// baseline alone, the loop ran 4 lanes wide and took 2 % of a bf16 MAE step.
    pub(crate) fn add_rows(acc: &mut [f32], rows: &[f32]) => add_rows_kernel
);

/// The mask of the first `count` of 16 vector lanes (all of them from 16 on): the AVX-512
/// kernels' partial loads and stores.
#[inline(always)]
pub(crate) fn first_lanes(count: usize) -> u16 {
    if count >= 16 { !0 } else { (1u16 << count) - 1 }
}

/// `dst[j] = src[j·stride]` for every `j` of `dst` (`src` must hold the last one read); stride 2
/// reads whole pairs, so that its loads vectorise as shuffles.
#[inline(always)]
fn gather_strided_kernel(dst: &mut [f32], src: &[f32], stride: usize) {
    let Some((last, head)) = dst.split_last_mut() else {
        return;
    };
    *last = src[head.len() * stride];
    match stride {
        1 => head.copy_from_slice(&src[..head.len()]),
        // Whole chunks: no bounds check per value, so the loads vectorise.
        2 => {
            for (d, pair) in head.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
        }
        _ => {
            for (d, &v) in head.iter_mut().zip(src.iter().step_by(stride)) {
                *d = v;
            }
        }
    }
}

/// `dst[j·stride] += src[j]` for every `j` of `src` (`dst` must hold the last one written), in
/// order of `j`; stride 2 as in [`gather_strided_kernel`].
#[inline(always)]
fn scatter_add_strided_kernel(dst: &mut [f32], src: &[f32], stride: usize) {
    let Some((last, head)) = src.split_last() else {
        return;
    };
    match stride {
        1 => add_rows_kernel(&mut dst[..head.len()], head),
        // Whole chunks, as in `gather_strided_kernel`.
        2 => {
            for (pair, &g) in dst.chunks_exact_mut(2).zip(head) {
                pair[0] += g;
            }
        }
        _ => {
            for (d, &g) in dst.iter_mut().step_by(stride).zip(head) {
                *d += g;
            }
        }
    }
    dst[head.len() * stride] += last;
}

multiversion!(
    /// `dst[j] = src[j·stride]`: a strided convolution's patch row ([`gather_strided_kernel`]
    /// at the CPU's vector width).
    ///
    /// # Panics
    /// When `src` is shorter than the last value read (a bug in the caller).
    pub(crate) fn gather_strided(dst: &mut [f32], src: &[f32], stride: usize)
        => gather_strided_kernel
);

multiversion!(
    /// `dst[j·stride] += src[j]`: the adjoint of [`gather_strided`] (a strided convolution's
    /// input gradient), the same additions in the same order at any vector width.
    ///
    /// # Panics
    /// When `dst` is shorter than the last value written (a bug in the caller).
    pub(crate) fn scatter_add_strided(dst: &mut [f32], src: &[f32], stride: usize)
        => scatter_add_strided_kernel
);

/// Dot product of `x` and `y` (lane-parallel, vectorisable).
#[inline(always)]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let cx = x.chunks_exact(LANES);
    let cy = y.chunks_exact(LANES);
    let rest: f32 = cx
        .remainder()
        .iter()
        .zip(cy.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in cx.zip(cy) {
        for ((s, &u), &v) in acc.iter_mut().zip(a).zip(b) {
            *s += u * v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `Σ a·b·(c − shift)` (lane-parallel, vectorisable).
#[inline(always)]
pub(crate) fn dot3_centered(a: &[f32], b: &[f32], c: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((&x, &y), &z)| x * y * (z - shift))
        .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for (((s, &u), &v), &w) in acc.iter_mut().zip(x).zip(y).zip(z) {
            *s += u * v * (w - shift);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Sum of squared deviations from `mean` (lane-parallel, vectorisable).
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Maximum of `x` (`-inf` when empty; NaNs are skipped here and surface in what follows).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Writes `e^(v − shift)` for each `v` of `x` into `out` and returns their sum (vectorisable;
/// `FMA` as in [`exp_f32`]).
#[inline(always)]
pub(crate) fn exp_shifted<const FMA: bool>(x: &[f32], out: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    #[cfg(target_arch = "x86_64")]
    let (x, out) = {
        let done = super::avx2_lanes::exp_shifted::<FMA>(x, out, shift, &mut acc);
        (&x[done..], &mut out[done..])
    };
    let mut co = out.chunks_exact_mut(LANES);
    let mut cx = x.chunks_exact(LANES);
    for (o, c) in (&mut co).zip(&mut cx) {
        for ((a, v), &u) in acc.iter_mut().zip(o.iter_mut()).zip(c) {
            *v = exp_f32::<FMA>(u - shift);
            *a += *v;
        }
    }
    let rest = cx.remainder();
    let mut tail = [0f32; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    let total = exp_shifted_tail::<FMA>(&tail, co.into_remainder(), shift);
    acc.iter().sum::<f32>() + total
}

/// Replaces each `v` of `x` by `e^(v − shift)` and returns their sum (vectorisable; `FMA` as in
/// [`exp_f32`]).
#[inline(always)]
pub(crate) fn exp_shifted_in_place<const FMA: bool>(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    #[cfg(target_arch = "x86_64")]
    let x = {
        let done = super::avx2_lanes::exp_shifted_in_place::<FMA>(x, shift, &mut acc);
        &mut x[done..]
    };
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = exp_f32::<FMA>(*v - shift);
            *a += *v;
        }
    }
    let rest = chunks.into_remainder();
    let mut tail = [0f32; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    let total = exp_shifted_tail::<FMA>(&tail, rest, shift);
    acc.iter().sum::<f32>() + total
}

/// The tail of [`exp_shifted`] and [`exp_shifted_in_place`]: `out[i] = e^(x[i] − shift)` for
/// the `out.len() < LANES` values, computed as one padded vector rather than one value at a
/// time (a row of 301 attention scores spent a third of its exponentials in its 13-value tail),
/// with the same arithmetic per value and summed in the same order, so the bits are unchanged.
#[inline(always)]
fn exp_shifted_tail<const FMA: bool>(x: &[f32; LANES], out: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    for (e, &v) in lanes.iter_mut().zip(x) {
        *e = exp_f32::<FMA>(v - shift);
    }
    let mut total: f32 = 0.0;
    for (o, &e) in out.iter_mut().zip(&lanes) {
        *o = e;
        total += e;
    }
    total
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in a part with few mantissa bits (exact products with small integers) and the rest.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Below this, `exp` underflows to (sub)normal numbers we flush to zero.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.0;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// Whether the element-wise kernels of a pass in `precision` evaluate their polynomials with
/// fused multiply-adds (the `FMA` parameter of [`exp_f32`] and its kin).
///
/// Only under bf16, and only where the CPU has them: there the values end up rounded to bf16
/// (8 significant bits) before the products, so the last bits an FMA changes do not matter,
/// and it halves the dependent chain of each polynomial (the exact GELU forward and backward
/// ran about 1.3× faster with it on an Emerald Rapids Xeon). Under f32 the kernels keep the
/// separate multiply and add they were validated with, bit for bit.
pub(crate) fn fused_arithmetic(precision: crate::precision::Precision) -> bool {
    precision == crate::precision::Precision::Bf16 && hardware_fma()
}

/// Whether `f32::mul_add` is one instruction in the kernels (otherwise it is a slow call).
fn hardware_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        mmcl_core::simd::level() != mmcl_core::simd::Level::Baseline
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        cfg!(any(target_arch = "aarch64", target_feature = "fma"))
    }
}

/// The arithmetic that the element-wise formulas below are written in, once for both: one
/// `f32` (in loops that LLVM vectorises) and, on AVX2 CPUs, several vectors side by side
/// ([`super::avx2_lanes`]), whose dependent chains then overlap. Every method is one IEEE
/// operation per value (or a selection), so both give the same bits.
pub(crate) trait Arith: Copy {
    /// `c` in every lane.
    fn splat(c: f32) -> Self;
    /// `self + o`.
    fn add(self, o: Self) -> Self;
    /// `self − o`.
    fn sub(self, o: Self) -> Self;
    /// `self · o`.
    fn mul(self, o: Self) -> Self;
    /// `self / o`.
    fn div(self, o: Self) -> Self;
    /// `self · x + c`: fused (one rounding) when `FMA`, else a product and a sum, each rounded.
    fn mul_add<const FMA: bool>(self, x: Self, c: Self) -> Self;
    /// `−self` (the sign flipped).
    fn neg(self) -> Self;
    /// `|self|`.
    fn abs(self) -> Self;
    /// `self.clamp(lo, hi)`, a NaN kept.
    fn clamp(self, lo: f32, hi: f32) -> Self;
    /// `value`, or 0 where `self < bound`.
    fn zero_below(self, bound: f32, value: Self) -> Self;
    /// `nonneg` where `self >= 0`, else `negative` (a NaN's).
    fn by_sign(self, nonneg: Self, negative: Self) -> Self;
    /// `self · 2ⁿ`, `n` the integer that [`ROUND_MAGIC`] rounding left in the low mantissa
    /// bits of `shifted` (in [-126, 127]).
    fn times_two_to(self, shifted: Self) -> Self;
}

impl Arith for f32 {
    #[inline(always)]
    fn splat(c: f32) -> Self {
        c
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self / o
    }
    #[inline(always)]
    fn mul_add<const FMA: bool>(self, x: Self, c: Self) -> Self {
        if FMA {
            f32::mul_add(self, x, c)
        } else {
            self * x + c
        }
    }
    #[inline(always)]
    fn neg(self) -> Self {
        -self
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> Self {
        f32::clamp(self, lo, hi)
    }
    #[inline(always)]
    fn zero_below(self, bound: f32, value: Self) -> Self {
        if self < bound { 0.0 } else { value }
    }
    #[inline(always)]
    fn by_sign(self, nonneg: Self, negative: Self) -> Self {
        if self >= 0.0 { nonneg } else { negative }
    }
    #[inline(always)]
    fn times_two_to(self, shifted: Self) -> Self {
        // The exponent bits built with integer arithmetic, which vectorises (a saturating
        // `as i32` would not).
        let n = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
        self * f32::from_bits(n.wrapping_add(127) << 23)
    }
}

/// An element-wise formula of `K` inputs, written once for every [`Arith`].
pub(crate) trait Formula<const K: usize> {
    /// The formula's value at `args`, one per input.
    fn eval<T: Arith>(&self, args: [T; K]) -> T;
}

/// Runs `formula` over `inputs` into `out` (as [`super::avx2_lanes::map`]) where the CPU takes
/// the four-vector path: AVX2 without AVX-512; `false`, nothing written, elsewhere.
#[inline]
pub(crate) fn side_by_side<const K: usize>(
    out: &mut [MaybeUninit<f32>],
    inputs: [&[f32]; K],
    formula: &impl Formula<K>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx2_lanes::map(out, inputs, formula)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, inputs, formula);
        false
    }
}

/// `e^x` in f32 without branches (vectorisable): relative error below 2e-7 on the normal range;
/// 0 below -87.3, and saturating at `e^88` above 88. `FMA`: see [`fused_arithmetic`].
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    exp_of::<f32, FMA>(x)
}

/// [`exp_f32`] in any [`Arith`].
#[inline(always)]
pub(crate) fn exp_of<T: Arith, const FMA: bool>(x: T) -> T {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    // x = n ln2 + r with |r| <= ln2 / 2. Adding the magic number rounds x·log2(e) to an integer
    // held in the low mantissa bits of `shifted`.
    let shifted = xc.mul_add::<FMA>(T::splat(LOG2_E), T::splat(ROUND_MAGIC));
    let n = shifted.sub(T::splat(ROUND_MAGIC));
    let r = n.neg().mul_add::<FMA>(
        T::splat(LN2_LO),
        n.neg().mul_add::<FMA>(T::splat(LN2_HI), xc),
    );
    // Taylor series of e^r to degree 7: truncation error < 5e-9 on |r| <= 0.347.
    let mut p = T::splat(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add::<FMA>(r, T::splat(c));
    }
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp.
    x.zero_below(EXP_MIN, p.times_two_to(shifted))
}

/// `erfc(z)` for `z >= 0` in f32 without branches: relative error below ~2e-6 for z < 3.5
/// (growing slowly beyond, as x² itself is rounded to f32).
///
/// Chebyshev-fitted exponent of the complementary error function (the classic Numerical Recipes
/// `erfcc` fit, fractional error < 1.2e-7 in exact arithmetic).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the fit's published coefficients
fn erfc_nonneg_of<T: Arith, const FMA: bool>(z: T) -> T {
    let one = T::splat(1.0);
    let t = one.div(one.add(T::splat(0.5).mul(z)));
    let mut p = T::splat(0.170_872_77);
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = p.mul_add::<FMA>(t, T::splat(c));
    }
    t.mul(exp_of::<T, FMA>(z.neg().mul_add::<FMA>(z, p)))
}

/// The standard normal CDF `Φ(x) = ½(1 + erf(x/√2))`, accurate in relative terms in both tails.
#[inline(always)]
pub(crate) fn normal_cdf_of<T: Arith, const FMA: bool>(x: T) -> T {
    let z = x.abs().mul(T::splat(std::f32::consts::FRAC_1_SQRT_2));
    let half_erfc = T::splat(0.5).mul(erfc_nonneg_of::<T, FMA>(z));
    x.by_sign(T::splat(1.0).sub(half_erfc), half_erfc)
}

/// The standard normal density `φ(x) = e^{-x²/2} / √(2π)`.
#[inline(always)]
pub(crate) fn normal_pdf_of<T: Arith, const FMA: bool>(x: T) -> T {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let e = exp_of::<T, FMA>(T::splat(-0.5).mul(x).mul(x));
    T::splat(INV_SQRT_2PI).mul(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strided copies and their adjoint against index arithmetic, for the constant and the
    /// general strides, on slices exactly as long as the last value touched.
    #[test]
    fn strided_copies_and_additions_touch_every_stride_th_value() {
        for stride in [1, 2, 3, 5] {
            for len in [0, 1, 2, 7, 33] {
                let span = len.max(1) * stride - stride + 1;
                let src: Vec<f32> = (0..span).map(|i| i as f32 * 0.5 - 3.0).collect();
                let mut dst = vec![f32::NAN; len];
                gather_strided(&mut dst, &src, stride);
                let expected: Vec<f32> = (0..len).map(|j| src[j * stride]).collect();
                assert_eq!(dst, expected, "gather, stride {stride}, {len} values");

                let grad: Vec<f32> = (0..len).map(|j| j as f32 + 0.25).collect();
                let mut acc: Vec<f32> = (0..span).map(|i| i as f32 * 0.1).collect();
                let mut expected = acc.clone();
                for (j, &g) in grad.iter().enumerate() {
                    expected[j * stride] += g;
                }
                scatter_add_strided(&mut acc, &grad, stride);
                assert_eq!(acc, expected, "scatter, stride {stride}, {len} values");
            }
        }
    }

    /// Every row added in order, each element as the scalar loop adds it (the same bits at any
    /// vector width), a partial last row ignored, an empty accumulator left alone.
    #[test]
    fn rows_are_added_in_order() {
        for width in [1, 5, 16, 33, 100] {
            let rows: Vec<f32> = (0..width * 7 + 3)
                .map(|i| ((i * 7919) % 1013) as f32 / 7.0 - 70.0)
                .collect();
            let mut expected: Vec<f32> = (0..width).map(|i| i as f32 * 0.1).collect();
            let mut acc = expected.clone();
            for row in rows.chunks_exact(width) {
                for (e, &v) in expected.iter_mut().zip(row) {
                    *e += v;
                }
            }
            add_rows(&mut acc, &rows);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&acc), bits(&expected), "width {width}");
        }
        add_rows(&mut [], &[1.0, 2.0]);
    }

    /// erf in f64 by its series / continued fraction, precise enough to judge the f32 kernels.
    fn erfc_f64(z: f64) -> f64 {
        // Integrate exp(-t^2) from z to z + 10 with Simpson's rule on a fine grid.
        let n = 200_000;
        let h = 10.0 / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(z) + f(z + 10.0);
        for i in 1..n {
            let t = z + i as f64 * h;
            s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(t);
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// The padded-vector tail gives the bits of one exponential at a time summed in order (what
    /// the kernels computed before it, and what the reproduction's figures were taken with).
    #[test]
    fn exponential_tails_keep_the_bits_of_the_scalar_loop() {
        for n in (0..=3 * LANES + 5).chain([7 * LANES + 3, 301]) {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 113) as f32 - 80.0) * 0.37)
                .collect();
            let shift = 3.25;
            let values: Vec<f32> = x.iter().map(|&v| exp_f32::<false>(v - shift)).collect();
            let whole = n / LANES * LANES;
            let mut lanes = [0f32; LANES];
            for c in values[..whole].chunks_exact(LANES) {
                for (a, &v) in lanes.iter_mut().zip(c) {
                    *a += v;
                }
            }
            let tail = values[whole..].iter().fold(0f32, |t, &v| t + v);
            let sum = lanes.iter().sum::<f32>() + tail;

            let mut out = vec![0f32; n];
            let got = exp_shifted::<false>(&x, &mut out, shift);
            let mut in_place = x.clone();
            let got_in_place = exp_shifted_in_place::<false>(&mut in_place, shift);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&values), "n = {n}");
            assert_eq!(bits(&in_place), bits(&values), "n = {n}");
            assert_eq!(got.to_bits(), sum.to_bits(), "n = {n}");
            assert_eq!(got_in_place.to_bits(), sum.to_bits(), "n = {n}");
        }
    }

    #[test]
    fn reductions_agree_with_sequential_ones() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let y: Vec<f32> = (0..1003).map(|i| ((i * 13 % 7) as f32) * 0.5).collect();
        let close = |a: f32, b: f64| ((a as f64) - b).abs() <= 1e-4 * (1.0 + b.abs());
        assert!(close(sum(&x), x.iter().map(|&v| v as f64).sum()));
        assert!(close(
            dot(&x, &y),
            x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum()
        ));
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let ss: f64 = x.iter().map(|&v| (v as f64 - m) * (v as f64 - m)).sum();
        assert!(close(sum_sq_dev(&x, m as f32), ss));
        assert_eq!(max(&x), 0.5);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut e = x.clone();
        let total = exp_shifted_in_place::<false>(&mut e, 0.5);
        let want: f64 = x.iter().map(|&v| (v as f64 - 0.5).exp()).sum();
        assert!(close(total, want));
        assert!((e[3] as f64 - ((x[3] - 0.5) as f64).exp()).abs() < 1e-6);
    }

    fn exp_error<const FMA: bool>() -> f64 {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32::<FMA>(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.01;
        }
        assert_eq!(exp_f32::<FMA>(-100.0), 0.0);
        assert_eq!(exp_f32::<FMA>(0.0), 1.0);
        assert!(exp_f32::<FMA>(f32::NEG_INFINITY) == 0.0);
        worst
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        for (fused, worst) in [(false, exp_error::<false>()), (true, exp_error::<true>())] {
            assert!(worst < 3e-7, "fused {fused}: worst relative error {worst}");
        }
    }

    #[test]
    fn normal_cdf_is_accurate_in_both_tails() {
        normal_cdf_error::<false>();
        normal_cdf_error::<true>();
    }

    fn normal_cdf_error<const FMA: bool>() {
        // In the far tail, rounding x² to f32 alone costs a few 1e-6 of relative accuracy.
        for (lo, hi, bound) in [(-2.0, 2.0, 5e-7), (-5.0, 5.0, 2e-6), (-9.0, 9.0, 1e-5)] {
            let mut worst = (0f64, 0f64);
            for i in 0..=200 {
                let x: f64 = lo + (hi - lo) * i as f64 / 200.0;
                let x = x as f32 as f64;
                let z = x.abs() / std::f64::consts::SQRT_2;
                let tail = 0.5 * erfc_f64(z);
                let want = if x >= 0.0 { 1.0 - tail } else { tail };
                let got = normal_cdf_of::<f32, FMA>(x as f32) as f64;
                let err = ((got - want) / want).abs();
                if err > worst.0 {
                    worst = (err, x);
                }
            }
            assert!(
                worst.0 < bound,
                "fused {FMA}: worst relative error {} at {}",
                worst.0,
                worst.1
            );
        }
    }
}
