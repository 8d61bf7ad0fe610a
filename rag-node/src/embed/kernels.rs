//! CPU kernels for the two element-wise hot spots of BERT inference that candle runs as scalar
//! libm calls: the exponential in softmax and `erf` in GELU (together ~30% of embedding time in
//! a profile). Both are branch-free polynomial approximations that the compiler vectorises; each
//! loop is compiled for AVX-512, AVX2+FMA and baseline and picked at run time ([`crate::simd`]).
//! Accuracy: exp < 5e-7 relative, erf < 1e-6 absolute; the reference-vector test checks the
//! end result against sentence-transformers.

use crate::simd::dispatch;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2^23 trick: the integer lands in the low mantissa bits, so
    // neither a rounding instruction nor a (saturating, hence scalar) float→int cast is needed.
    let shifted = x * LOG2E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let ni = shifted.to_bits().wrapping_sub(0x4B40_0000);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    p * scale
}

/// erf by Abramowitz & Stegun 7.1.26.
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - t * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))))
            * exp_approx(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    // Unlike f32::max this has no NaN special case, so it compiles to one vector max.
    if a > b {
        a
    } else {
        b
    }
}

const LANES: usize = 16;

#[inline(always)]
fn softmax_rows(data: &mut [f32], width: usize) {
    for row in data.chunks_exact_mut(width) {
        // Lane-wise accumulators: float reductions only vectorise when split by hand.
        let mut m = [f32::NEG_INFINITY; LANES];
        let split = width - width % LANES;
        for c in row[..split].chunks_exact(LANES) {
            for i in 0..LANES {
                m[i] = fmax(m[i], c[i]);
            }
        }
        let mut max = m.iter().copied().fold(f32::NEG_INFINITY, fmax);
        for &v in &row[split..] {
            max = fmax(max, v);
        }
        let mut acc = [0f32; LANES];
        for c in row[..split].chunks_exact_mut(LANES) {
            for i in 0..LANES {
                let e = exp_approx(c[i] - max);
                c[i] = e;
                acc[i] += e;
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for v in &mut row[split..] {
            *v = exp_approx(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[inline(always)]
fn gelu_inner(data: &mut [f32]) {
    for v in data.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn add_inner(data: &mut [f32], other: &[f32]) {
    for (v, o) in data.iter_mut().zip(other) {
        *v += o;
    }
}

// Serial: the GEMM's epilogues, called from its own parallel tasks.
dispatch!(pub(super) fn gelu_in_place => gelu_inner(data: &mut [f32]));
dispatch!(pub(super) fn add_in_place => add_inner(data: &mut [f32], other: &[f32]));
dispatch!(pub(super) fn layer_norm_in_place => layer_norm_inner(data: &mut [f32], weight: &[f32], bias: &[f32], eps: f32));

/// Layer normalization of each row (width = `weight.len()`), in place: two passes, as the
/// reference does (mean, then the variance of the centred values).
#[inline(always)]
fn layer_norm_inner(data: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let w = weight.len();
    for row in data.chunks_exact_mut(w) {
        let mut acc = [0f32; LANES];
        for c in row.chunks_exact(LANES) {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        let split = w - w % LANES;
        let mean = (acc.iter().sum::<f32>() + row[split..].iter().sum::<f32>()) / w as f32;
        let mut acc = [0f32; LANES];
        for c in row.chunks_exact(LANES) {
            for i in 0..LANES {
                let d = c[i] - mean;
                acc[i] += d * d;
            }
        }
        let tail: f32 = row[split..].iter().map(|v| (v - mean) * (v - mean)).sum();
        let inv = 1.0 / ((acc.iter().sum::<f32>() + tail) / w as f32 + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}
// Serial, for attention's per-head scores (their texts run in parallel).
dispatch!(pub(super) fn softmax_rows_in_place => softmax_rows(data: &mut [f32], width: usize));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp: f32 = 0.0;
        let mut worst_erf: f32 = 0.0;
        for i in -20_000..20_000 {
            let x = i as f32 / 1000.0;
            worst_exp = worst_exp.max(((exp_approx(x) - x.exp()) / x.exp()).abs());
            let e = libm_erf(x as f64) as f32;
            worst_erf = worst_erf.max((erf_approx(x) - e).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert_eq!(exp_approx(-1000.0), exp_approx(-87.0));
    }

    /// erf from its series/continued fraction in f64, as an independent reference.
    fn libm_erf(x: f64) -> f64 {
        // Abramowitz & Stegun 7.1.5 series for |x| < 3, else 1 - erfc asymptotic (erfc < 3e-5)
        let a = x.abs();
        let v = if a < 3.0 {
            let mut sum = 0.0;
            let mut term = a;
            let mut n = 0.0;
            while term.abs() > 1e-17 || n < 5.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -a * a / n;
                if n > 200.0 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * (1.0 - 1.0 / (2.0 * a * a))
        };
        v.copysign(x)
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut v: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 10.0).collect();
        softmax_rows_in_place(&mut v, 16);
        for row in v.chunks(16) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
